"""Offline model merging: soups, interpolation, SLERP, Model Stock, task arithmetic, weight
matching (Git Re-Basin), RegMean.

Functions on any pytrees of arrays (Flax ``params``, ``nnx.State``, dicts ...): every
model passed must have the same tree structure and leaf shapes, else a
``ValueError`` names the first difference. Arithmetic runs in at least float32 and
each result leaf is cast back to the dtype of the corresponding leaf of the first
(or anchor / base) model. ``None`` leaves are kept.

Several published merging schemes are instances of :func:`weighted_average`:

* **uniform soup** (Wortsman et al., 2022): equal weights over fine-tuned models,
  :func:`uniform_soup`;
* **DiWA**, Diverse Weight Averaging (Rame et al., 2022): the uniform soup of models
  fine-tuned from a shared initialisation with diverse hyperparameters;
* **WARM**, Weight Averaged Reward Models (Rame et al., 2024): the uniform soup of
  reward models fine-tuned from a shared pre-trained model;
* **rewarded soups** (Rame et al., 2023): ``weighted_average(models, lambdas)`` of
  models fine-tuned on different rewards, with user preference weights ``lambdas``
  on the simplex.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optlab import _base, _tree

__all__ = [
    "uniform_soup",
    "weighted_average",
    "greedy_soup",
    "interpolate",
    "slerp",
    "model_stock",
    "task_arithmetic",
]


# ---------------------------------------------------------------------------
# Checks and helpers
# ---------------------------------------------------------------------------


def _check_models(fn: str, models: Sequence[Any], arg: str = "models", min_count: int = 1) -> list:
    if not isinstance(models, (list, tuple)):
        raise TypeError(
            f"`optlab.{fn}`: `{arg}` must be a list or tuple of parameter trees, got"
            f" {type(models).__name__}."
        )
    if len(models) < min_count:
        raise ValueError(
            f"`optlab.{fn}`: `{arg}` must hold at least {min_count} model(s), got {len(models)}."
        )
    return list(models)


def _check_compatible(fn: str, ref: Any, other: Any, ref_name: str, other_name: str) -> None:
    """Same tree structure and leaf shapes, else a ValueError naming the first difference."""
    _base.check_same_structure(fn, ref, other, ref_name, other_name)
    ref_leaves = jax.tree_util.tree_leaves_with_path(ref)
    other_leaves = jax.tree.leaves(other)
    for (path, a), b in zip(ref_leaves, other_leaves):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(
                f"`optlab.{fn}`: `{ref_name}` and `{other_name}` have different shapes at"
                f" {jax.tree_util.keystr(path) or '<root>'}: {jnp.shape(a)} and {jnp.shape(b)}."
            )


def _check_all(fn: str, ref: Any, models: Sequence[Any], ref_name: str, arg: str) -> None:
    _check_float(fn, ref, ref_name)
    for i, m in enumerate(models):
        _check_compatible(fn, ref, m, ref_name, f"{arg}[{i}]")


def _check_float(fn: str, tree: Any, name: str) -> None:
    """Integer (or bool) leaves are refused: their average would be truncated silently
    (the result keeps the first model's dtypes). Cast them, or merge the float subtree."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"`optlab.{fn}`: every leaf of `{name}` must be floating point (a merge of"
                f" integers would be truncated), got dtype {dtype} at"
                f" {jax.tree_util.keystr(path) or '<root>'}; cast it or merge only the float"
                " leaves."
            )


def _as_weights(fn: str, name: str, values: Any, n: int | None) -> Any:
    """``values`` as a real array (one per model when ``n`` is given), or a clear error."""
    if isinstance(values, jax.core.Tracer):
        return values
    if values is None or isinstance(values, (str, bytes, dict, set)):
        raise TypeError(
            f"`optlab.{fn}`: `{name}` must be a sequence or 1-D array of real numbers, got"
            f" {name}={values!r} of type {type(values).__name__}."
        )
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as e:
        raise TypeError(f"`optlab.{fn}`: `{name}` must hold real numbers, got {values!r}.") from e
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(
            f"`optlab.{fn}`: `{name}` must hold real numbers, got {name}={values!r} (dtype"
            f" {arr.dtype})."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`optlab.{fn}`: `{name}` must be finite, got {name}={values!r}.")
    if n is not None and (arr.ndim != 1 or arr.shape[0] != n):
        raise ValueError(
            f"`optlab.{fn}`: `{name}` must hold one weight per model ({n}), got shape {arr.shape}."
        )
    return arr


def _check_scalar(fn: str, **values: Any) -> None:
    for name, v in values.items():
        if jnp.ndim(v) != 0:
            raise ValueError(f"`optlab.{fn}`: `{name}` must be a scalar, got shape {jnp.shape(v)}.")
    _base.check_finite(fn, **values)


# Per-leaf kernels, jitted once per leaf shape/dtype (a model's many same-shape layers
# share one compilation). Arithmetic in at least float32, result in the first leaf's dtype.


@jax.jit
def _weighted_kernel(total, w, ref, *others):
    r = _tree.to_acc(ref)
    out = total.astype(r.dtype) * r
    for i, o in enumerate(others, start=1):
        out = out + w[i].astype(r.dtype) * (_tree.to_acc(o) - r)
    return out.astype(ref.dtype)


@jax.jit
def _uniform_kernel(ref, *others):
    r = _tree.to_acc(ref)
    delta = sum(_tree.to_acc(o) - r for o in others)
    return (r + delta / (len(others) + 1)).astype(ref.dtype)


@jax.jit
def _lerp_kernel(x, y, t):
    x32, y32 = _tree.to_acc(x), _tree.to_acc(y)
    tt = t.astype(x32.dtype)
    return ((1 - tt) * x32 + tt * y32).astype(x.dtype)


@jax.jit
def _slerp_kernel(x, y, t, threshold):
    x32, y32 = _tree.to_acc(x), _tree.to_acc(y)
    tt = t.astype(x32.dtype)
    nx = jnp.sqrt(jnp.sum(x32 * x32))
    ny = jnp.sqrt(jnp.sum(y32 * y32))
    denom = nx * ny
    ok = denom > 0
    cos = jnp.where(ok, jnp.sum(x32 * y32) / jnp.where(ok, denom, 1.0), 1.0)
    cos = jnp.clip(cos, -1.0, 1.0)
    linear = (~ok) | (jnp.abs(cos) > threshold)
    omega = jnp.arccos(jnp.where(linear, 0.0, cos))
    sin_omega = jnp.where(linear, 1.0, jnp.sin(omega))
    ca = jnp.where(linear, 1 - tt, jnp.sin((1 - tt) * omega) / sin_omega)
    cb = jnp.where(linear, tt, jnp.sin(tt * omega) / sin_omega)
    return (ca * x32 + cb * y32).astype(x.dtype)


@jax.jit
def _stock_ratio_kernel(eps, w0, *ws):
    k = len(ws)
    r = _tree.to_acc(w0)
    deltas = [(_tree.to_acc(w) - r).ravel() for w in ws]
    norms = [jnp.sqrt(jnp.sum(d * d)) for d in deltas]
    cos_sum = jnp.zeros([], r.dtype)
    for i in range(k):
        for j in range(i + 1, k):
            den = norms[i] * norms[j]
            ok = den > eps * eps
            c = jnp.where(ok, jnp.sum(deltas[i] * deltas[j]) / jnp.where(ok, den, 1.0), 0.0)
            cos_sum = cos_sum + c
    cos = jnp.clip(cos_sum / (k * (k - 1) / 2), 0.0, 1.0)
    return (k * cos / (1 + (k - 1) * cos)).astype(jnp.float32)


@jax.jit
def _stock_merge_kernel(w0, ratio, *ws):
    r = _tree.to_acc(w0)
    mean = r + sum(_tree.to_acc(w) - r for w in ws) / len(ws)
    t = ratio.astype(r.dtype)
    return (t * mean + (1 - t) * r).astype(w0.dtype)


@jax.jit
def _task_kernel(scaling, b, *ws):
    r = _tree.to_acc(b)
    out = r + sum(scaling[i].astype(r.dtype) * (_tree.to_acc(w) - r) for i, w in enumerate(ws))
    return out.astype(b.dtype)


# ---------------------------------------------------------------------------
# Averages
# ---------------------------------------------------------------------------


def weighted_average(models: Sequence[Any], weights: Any, normalize: bool = True) -> Any:
    """Weighted average ``sum_i w_i * theta_i / sum_i w_i`` of models with the same structure.

    Computed as ``theta_0 + sum_i (w_i / W) (theta_i - theta_0)``, so the average of
    identical models is exactly that model. DiWA and WARM are the uniform case
    (:func:`uniform_soup`); rewarded soups use the user's preference weights.

    Args:
      models: a list of parameter trees.
      weights: one weight per model (a sequence or 1-D array).
      normalize: divide by ``W = sum_i w_i`` (default); with ``False`` ``W = 1`` and
        the result is ``theta_0 + sum_i w_i (theta_i - theta_0)``, an affine
        combination only when the weights sum to one.

    Returns:
      The merged tree, with the dtypes of ``models[0]``.

    Raises:
      ValueError: on an empty list, mismatched structures or shapes, a number of
        weights different from the number of models, non-finite weights, or
        (concrete) weights summing to zero with ``normalize=True``. Concrete weights
        are normalized in float64 after dividing by the largest ``|w_i|``, so tiny
        weights (``[1e-45, 1e-45]``) give the mean.
      TypeError: on integer leaves (their average would be truncated) or weights that
        are not real numbers.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> a, b = {"w": jnp.array([0.0, 2.0])}, {"w": jnp.array([4.0, 2.0])}
      >>> optlab.weighted_average([a, b], [3.0, 1.0])
      {'w': Array([1., 2.], dtype=float32)}

    References:
      Wortsman et al., `Model soups <https://arxiv.org/abs/2203.05482>`_, 2022;
      Rame et al., `Diverse Weight Averaging for Out-of-Distribution Generalization
      <https://arxiv.org/abs/2205.09739>`_, 2022; Rame et al., `Rewarded soups
      <https://arxiv.org/abs/2306.04488>`_, 2023; Rame et al., `WARM: On the Benefits
      of Weight Averaged Reward Models <https://arxiv.org/abs/2401.12187>`_, 2024.
    """
    fn = "weighted_average"
    models = _check_models(fn, models)
    _check_all(fn, models[0], models[1:], "models[0]", "models[1:]")
    w = _as_weights(fn, "weights", weights, len(models))
    if isinstance(w, np.ndarray):  # concrete: normalized in float64 (tiny weights are fine)
        w64 = w.astype(np.float64)
        if normalize:
            w64 = w64 / np.max(np.abs(w64)) if np.any(w64) else w64
            total = float(np.sum(w64))
            if not np.isfinite(total) or total == 0.0:
                raise ValueError(
                    f"`optlab.{fn}`: `weights` must have a finite, nonzero sum, got"
                    f" weights={weights!r}."
                )
            w64 = w64 / total
        w = jnp.asarray(w64, jnp.result_type(float))  # float32 unless x64 is enabled
    else:  # traced: scaled by the largest |w_i| before summing (no under/overflow)
        if w.ndim != 1 or w.shape[0] != len(models):
            raise ValueError(
                f"`optlab.{fn}`: `weights` must hold one weight per model ({len(models)}), got"
                f" shape {w.shape}."
            )
        w = w.astype(jnp.promote_types(w.dtype, jnp.float32))
        if normalize:
            w = w / jnp.max(jnp.abs(w))
            w = w / jnp.sum(w)

    # sum_i w_i theta_i = W theta_0 + sum_{i>=1} w_i (theta_i - theta_0), with W = 1 exactly
    # after normalisation (so identical models average to themselves exactly).
    total = jnp.ones([], w.dtype) if normalize else jnp.sum(w)
    return _tree.tree_map(lambda ref, *others: _weighted_kernel(total, w, ref, *others), *models)


def uniform_soup(models: Sequence[Any]) -> Any:
    """Uniform soup: the mean of models fine-tuned from the same initialisation.

    Computed as ``theta_0 + mean_i (theta_i - theta_0)``, so the soup of identical
    models is exactly the model. DiWA (diverse runs) and WARM (reward models) are
    uniform soups.

    Args:
      models: a non-empty list of parameter trees with the same structure and shapes,
        with floating-point leaves (integer leaves raise a ``TypeError``: their mean
        would be truncated to the integer dtype).

    Returns:
      The averaged tree, with the dtypes of ``models[0]``.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> optlab.uniform_soup([{"w": jnp.array(1.0)}, {"w": jnp.array(3.0)}])
      {'w': Array(2., dtype=float32)}

    References:
      Wortsman et al., `Model soups: averaging weights of multiple fine-tuned models
      improves accuracy without increasing inference time
      <https://arxiv.org/abs/2203.05482>`_, 2022.
    """
    models = _check_models("uniform_soup", models)
    _check_all("uniform_soup", models[0], models[1:], "models[0]", "models[1:]")
    if len(models) == 1:
        return _tree.tree_map(jnp.asarray, models[0])
    return _tree.tree_map(_uniform_kernel, *models)


def greedy_soup(
    models: Sequence[Any],
    eval_fn: Callable[[Any], Any],
    scores: Sequence[float] | None = None,
) -> tuple[Any, list[int]]:
    """Greedy soup: add models, best first, while the held-out score does not drop.

    Sorts the models by their individual held-out score (``eval_fn(model)``, higher is
    better; pass ``lambda p: -loss(p)`` for a loss), starts the soup with the best one,
    and adds each next model when the uniform soup of the chosen models and it scores
    at least as well as the current soup. The result therefore never scores below
    the best single model. Runs eagerly (one ``eval_fn`` call per model and per
    candidate soup); ``eval_fn`` may be jitted.

    Args:
      models: a non-empty list of parameter trees fine-tuned from the same model.
      eval_fn: ``params -> score`` on held-out data (a Python float or a scalar array;
        a non-scalar or non-finite score raises a ``ValueError``).
      scores: the individual scores, if already known (skips those evaluations);
        finite real numbers, one per model.

    Returns:
      ``(soup, indices)``: the uniform soup of the chosen models and their indices in
      ``models``, in the order they were added.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> models = [{"w": jnp.array(x)} for x in (1.0, 0.0, 5.0)]
      >>> soup, chosen = optlab.greedy_soup(models, lambda p: -abs(float(p["w"]) - 0.4))
      >>> chosen, soup["w"]
      ([1, 0], Array(0.5, dtype=float32))

    References:
      Wortsman et al., `Model soups: averaging weights of multiple fine-tuned models
      improves accuracy without increasing inference time
      <https://arxiv.org/abs/2203.05482>`_, 2022 (Recipe 1).
    """
    fn = "greedy_soup"
    models = _check_models(fn, models)
    _check_all(fn, models[0], models[1:], "models[0]", "models[1:]")
    if not callable(eval_fn):
        raise TypeError(
            f"`optlab.{fn}`: `eval_fn` must be a callable params -> score, got"
            f" eval_fn={eval_fn!r} of type {type(eval_fn).__name__}."
        )

    def score_of(model: Any, what: str) -> float:
        return _as_score(fn, eval_fn(model), f"eval_fn({what})")

    if scores is None:
        scores = [score_of(m, f"models[{i}]") for i, m in enumerate(models)]
    else:
        scores = list(_as_weights(fn, "scores", scores, len(models)))
    scores = [float(s) for s in scores]
    order = sorted(range(len(models)), key=lambda i: -scores[i])
    chosen = [order[0]]
    soup, best = models[order[0]], scores[order[0]]
    for i in order[1:]:
        candidate = uniform_soup([models[j] for j in chosen + [i]])
        score = score_of(candidate, "soup")
        if score >= best:
            chosen.append(i)
            soup, best = candidate, score
    return soup, chosen


def _as_score(fn: str, score: Any, what: str) -> float:
    if np.ndim(score) != 0:
        raise ValueError(
            f"`optlab.{fn}`: `eval_fn` must return a scalar score, got shape"
            f" {np.shape(score)} from {what}."
        )
    try:
        value = _base.as_concrete_scalar(fn, "eval_fn", score)
    except TypeError as e:
        raise TypeError(f"{e} (the score returned by {what})") from None
    if value is None or not np.isfinite(value):
        raise ValueError(
            f"`optlab.{fn}`: `eval_fn` must return a finite concrete score, got {score!r}"
            f" from {what}."
        )
    return value


# ---------------------------------------------------------------------------
# Interpolation
# ---------------------------------------------------------------------------


def interpolate(a: Any, b: Any, t: float) -> Any:
    """Linear interpolation ``(1 - t) * a + t * b`` (``t`` outside ``[0, 1]`` extrapolates).

    ``t=0`` gives ``a`` and ``t=1`` gives ``b`` exactly.

    Args:
      a: a parameter tree.
      b: a tree with the same structure and shapes.
      t: the interpolation coefficient (a scalar; may be traced).

    Returns:
      The interpolated tree with the dtypes of ``a``.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> optlab.interpolate({"w": jnp.array(0.0)}, {"w": jnp.array(4.0)}, 0.25)
      {'w': Array(1., dtype=float32)}

    References:
      Wortsman et al., `Robust fine-tuning of zero-shot models (WiSE-FT)
      <https://arxiv.org/abs/2109.01903>`_, 2022.
    """
    _check_scalar("interpolate", t=t)
    _check_compatible("interpolate", a, b, "a", "b")
    tt = jnp.asarray(t)
    return _tree.tree_map(lambda x, y: _lerp_kernel(jnp.asarray(x), jnp.asarray(y), tt), a, b)


def slerp(a: Any, b: Any, t: float, colinear_threshold: float = 0.9995) -> Any:
    """Spherical linear interpolation, per leaf.

    Each leaf is treated as one vector. With ``omega`` the angle between ``a`` and
    ``b`` (``cos omega = <a, b> / (|a| |b|)``)::

        slerp(a, b, t) = sin((1 - t) omega) / sin(omega) * a + sin(t omega) / sin(omega) * b

    It follows the great circle: for equal-norm leaves the result keeps the norm,
    and ``t=0`` / ``t=1`` give ``a`` / ``b`` exactly. When the leaves are nearly
    colinear (``|cos omega| > colinear_threshold``, which includes scalars and
    anti-parallel leaves, where the arc is undefined) or one of them is zero, the
    leaf falls back to linear interpolation, like mergekit's SLERP merge.

    Args:
      a: a parameter tree.
      b: a tree with the same structure and shapes.
      t: the interpolation coefficient in ``[0, 1]`` (a scalar; may be traced; a
        concrete value outside ``[0, 1]`` raises a ``ValueError``: the arc does not
        extrapolate).
      colinear_threshold: ``|cos omega|`` above which the leaf is interpolated
        linearly.

    Returns:
      The interpolated tree with the dtypes of ``a``.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> out = optlab.slerp({"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.0, 1.0])}, 0.5)
      >>> out["w"]  # on the unit circle, not at (0.5, 0.5)
      Array([0.70710677, 0.70710677], dtype=float32)

    References:
      Shoemake, `Animating rotation with quaternion curves
      <https://doi.org/10.1145/325165.325242>`_, 1985; White, `Sampling Generative
      Networks <https://arxiv.org/abs/1609.04468>`_, 2016.
    """
    fn = "slerp"
    _check_scalar(fn, t=t)
    _base.check_unit_interval(fn, t=t, colinear_threshold=colinear_threshold)
    _check_compatible(fn, a, b, "a", "b")
    tt = jnp.asarray(t)
    thr = jnp.asarray(colinear_threshold, jnp.float32)
    return _tree.tree_map(lambda x, y: _slerp_kernel(jnp.asarray(x), jnp.asarray(y), tt, thr), a, b)


# ---------------------------------------------------------------------------
# Model Stock and task arithmetic
# ---------------------------------------------------------------------------


def model_stock(
    anchor: Any, finetuned: Sequence[Any], return_ratios: bool = False, eps: float = 1e-12
) -> Any:
    """Model Stock: move the fine-tuned average towards the anchor by the angle of the deltas.

    Per leaf ("layer"), with ``w_0`` the anchor (the pre-trained model), ``w_i`` the
    ``k >= 2`` fine-tuned models and ``cos`` the mean over pairs ``i < j`` of the
    cosine between the deltas ``w_i - w_0`` and ``w_j - w_0``::

        t   = k cos / (1 + (k - 1) cos)
        w_H = t * mean_i(w_i) + (1 - t) * w_0

    ``cos`` is clipped to ``[0, 1]``, so ``t`` lies in ``[0, 1]`` (``t = 1`` for
    parallel deltas: the plain average; ``t = 0`` for orthogonal ones: the anchor).
    A leaf whose deltas include a zero one (a layer left unchanged) gets ``cos = 0``,
    i.e. the anchor's value.

    Args:
      anchor: the pre-trained model ``w_0``.
      finetuned: a list of at least two models fine-tuned from ``anchor``.
      return_ratios: also return the tree of per-leaf ratios ``t``.
      eps: norms below ``eps`` count as zero.

    Returns:
      The merged tree (dtypes of ``anchor``), or ``(merged, ratios)`` with
      ``return_ratios=True`` (ratios are float32 scalars per leaf).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> w0 = {"w": jnp.zeros(2)}
      >>> fts = [{"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.0, 1.0])}]
      >>> optlab.model_stock(w0, fts)  # orthogonal deltas: t = 0
      {'w': Array([0., 0.], dtype=float32)}

    References:
      Jang, Yun and Han, `Model Stock: All we need is just a few fine-tuned models
      <https://arxiv.org/abs/2403.19522>`_, 2024.
    """
    fn = "model_stock"
    finetuned = _check_models(fn, finetuned, "finetuned", min_count=2)
    _check_all(fn, anchor, finetuned, "anchor", "finetuned")
    _base.check_nonnegative(fn, eps=eps)
    eps_arr = jnp.asarray(eps, jnp.float32)
    ratios = _tree.tree_map(
        lambda w0, *ws: _stock_ratio_kernel(eps_arr, w0, *ws), anchor, *finetuned
    )
    merged = _tree.tree_map(_stock_merge_kernel, anchor, ratios, *finetuned)
    return (merged, ratios) if return_ratios else merged


def task_arithmetic(base: Any, finetuned: Sequence[Any], scaling: Any = 1.0) -> Any:
    """Task arithmetic: add scaled task vectors ``tau_i = theta_i - theta_base`` to the base.

    ``theta = theta_base + sum_i lambda_i * (theta_i - theta_base)`` with one scaling
    ``lambda`` for all tasks (a scalar) or one per task (a sequence). A negative
    scaling subtracts a task ("forgetting"). With every ``lambda_i = 1 / n`` it is the
    uniform soup.

    Args:
      base: the pre-trained model.
      finetuned: a non-empty list of models fine-tuned from ``base``.
      scaling: a scalar or one scalar per fine-tuned model.

    Returns:
      The edited tree with the dtypes of ``base``.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> base = {"w": jnp.array([1.0, 1.0])}
      >>> fts = [{"w": jnp.array([2.0, 1.0])}, {"w": jnp.array([1.0, 3.0])}]
      >>> optlab.task_arithmetic(base, fts, scaling=0.5)
      {'w': Array([1.5, 2. ], dtype=float32)}

    References:
      Ilharco et al., `Editing Models with Task Arithmetic
      <https://arxiv.org/abs/2212.04089>`_, 2023.
    """
    fn = "task_arithmetic"
    finetuned = _check_models(fn, finetuned, "finetuned")
    _check_all(fn, base, finetuned, "base", "finetuned")
    s = jnp.asarray(_as_weights(fn, "scaling", scaling, None))
    if s.ndim == 0:
        _base.check_finite(fn, scaling=scaling)
        s = jnp.broadcast_to(s, (len(finetuned),))
    elif s.shape != (len(finetuned),):
        raise ValueError(
            f"`optlab.{fn}`: `scaling` must be a scalar or hold one value per fine-tuned"
            f" model ({len(finetuned)}), got shape {s.shape}."
        )
    s = s.astype(jnp.promote_types(s.dtype, jnp.float32))
    return _tree.tree_map(lambda b, *ws: _task_kernel(s, b, *ws), base, *finetuned)


# ---------------------------------------------------------------------------
# Issue 12: weight matching (Git Re-Basin) and RegMean
# ---------------------------------------------------------------------------

__all__ += [
    "mlp_permutation_spec",
    "weight_matching",
    "apply_permutation",
    "align_and_interpolate",
    "regmean",
]


def _linear_sum_assignment(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost perfect matching of a square matrix: ``col[i]`` for each row ``i``.

    The shortest-augmenting-path Hungarian algorithm with potentials (Kuhn-Munkres in the
    O(n^3) form of Jonker and Volgenant): rows are added one at a time, each by a
    Dijkstra-like search over reduced costs ``cost[i, j] - u[i] - v[j] >= 0``; the inner
    loop over columns is vectorized with NumPy. Exact for finite costs.
    """
    n = cost.shape[0]
    u = np.zeros(n + 1)
    v = np.zeros(n + 1)
    row_of = np.zeros(n + 1, np.int64)  # row_of[j]: 1-based row matched to column j (0: free)
    way = np.zeros(n + 1, np.int64)
    for i in range(1, n + 1):
        row_of[0] = i
        j0 = 0
        minv = np.full(n + 1, np.inf)
        used = np.zeros(n + 1, bool)
        while True:
            used[j0] = True
            i0 = row_of[j0]
            free = ~used[1:]
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (reduced < minv[1:])
            minv[1:][better] = reduced[better]
            way[1:][better] = j0
            masked = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(masked)) + 1
            delta = masked[j1 - 1]
            done = np.nonzero(used)[0]
            u[row_of[done]] += delta
            v[done] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if row_of[j0] == 0:
                break
        while j0:  # augment along the alternating path
            j1 = way[j0]
            row_of[j0] = row_of[j1]
            j0 = j1
    col = np.empty(n, np.int64)
    col[row_of[1:] - 1] = np.arange(n)
    return col


def mlp_permutation_spec(layers: Sequence[str], kernel: str = "kernel", bias: str = "bias") -> dict:
    """The permutation spec of an MLP ``{layer: {kernel: (in, out), bias: (out,)}}``.

    Hidden layer ``i`` (every layer but the last) gets the permutation ``"P_<layer>"`` of
    its output units: on its kernel's axis 1 and bias, and on the next kernel's axis 0.
    The input of the first layer and the output of the last are not permuted. This is
    the layout of Flax ``nn.Dense`` / ``nnx.Linear`` parameters (kernel ``(in, out)``).

    Args:
      layers: the layer names in order (at least two).
      kernel: the name of each layer's weight matrix.
      bias: the name of each layer's bias (``None``: layers without bias).

    Returns:
      A spec tree for :func:`optlab.weight_matching`: per leaf, a tuple with one
      permutation name (or ``None``) per axis.

    Example:
      >>> import optlab
      >>> spec = optlab.mlp_permutation_spec(["Dense_0", "Dense_1"])
      >>> spec["Dense_0"], spec["Dense_1"]["kernel"]
      ({'kernel': (None, 'P_Dense_0'), 'bias': ('P_Dense_0',)}, ('P_Dense_0', None))
    """
    fn = "mlp_permutation_spec"
    if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or len(layers) < 2:
        raise ValueError(
            f"`optlab.{fn}`: `layers` must be a list of at least two layer names, got"
            f" layers={layers!r}."
        )
    spec = {}
    for i, name in enumerate(layers):
        p_in = f"P_{layers[i - 1]}" if i > 0 else None
        p_out = f"P_{name}" if i < len(layers) - 1 else None
        spec[name] = {kernel: (p_in, p_out)}
        if bias is not None:
            spec[name][bias] = (p_out,)
    return spec


def _parse_spec(fn: str, params: Any, spec: Any):
    """Flatten ``spec`` against ``params``: per leaf its axes' permutation names; and, per
    permutation, its size and the ``(leaf index, axis)`` pairs it acts on."""
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    try:
        axes = treedef.flatten_up_to(spec)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"`optlab.{fn}`: `spec` must have the structure of the parameters, with one tuple"
            f" of permutation names (or None) per leaf: {e}"
        ) from None
    perm_axes: dict[str, list[tuple[int, int]]] = {}
    sizes: dict[str, int] = {}
    for k, ((path, leaf), ax) in enumerate(zip(leaves_with_path, axes)):
        where = jax.tree_util.keystr(path) or "<root>"
        if ax is None:
            continue
        ndim = jnp.ndim(leaf)
        if not isinstance(ax, (tuple, list)) or len(ax) != ndim:
            raise ValueError(
                f"`optlab.{fn}`: `spec` at {where} must be a tuple of {ndim} permutation"
                f" names or None (one per axis of the leaf of shape {jnp.shape(leaf)}), got"
                f" {ax!r}."
            )
        for axis, p in enumerate(ax):
            if p is None:
                continue
            if not isinstance(p, str):
                raise TypeError(
                    f"`optlab.{fn}`: permutation names in `spec` must be strings, got {p!r}"
                    f" at {where}."
                )
            n = jnp.shape(leaf)[axis]
            if sizes.setdefault(p, n) != n:
                raise ValueError(
                    f"`optlab.{fn}`: permutation {p!r} acts on axes of different sizes"
                    f" ({sizes[p]} and {n} at {where} axis {axis})."
                )
            perm_axes.setdefault(p, []).append((k, axis))
    if not perm_axes:
        raise ValueError(f"`optlab.{fn}`: `spec` names no permutation.")
    return treedef, axes, perm_axes, sizes


def _check_perms(fn: str, perms: Any, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    if not isinstance(perms, dict) or set(perms) != set(sizes):
        got = sorted(perms) if isinstance(perms, dict) else type(perms).__name__
        raise ValueError(
            f"`optlab.{fn}`: `perms` must be a dict with one permutation per name in the"
            f" spec {sorted(sizes)}, got {got}."
        )
    out = {}
    for p, n in sizes.items():
        q = np.asarray(perms[p])
        if (
            q.shape != (n,)
            or not np.issubdtype(q.dtype, np.integer)
            or set(q.tolist()) != set(range(n))
        ):
            raise ValueError(
                f"`optlab.{fn}`: `perms[{p!r}]` must be a permutation of range({n}), got"
                f" {perms[p]!r}."
            )
        out[p] = q
    return out


def _permute_leaf(x, ax, perms, except_axis=None):
    for axis, p in enumerate(ax or ()):
        if p is not None and axis != except_axis:
            x = np.take(x, perms[p], axis=axis)
    return x


def apply_permutation(params: Any, spec: Any, perms: dict[str, Any]) -> Any:
    """Permutes ``params`` by ``perms``: ``x -> take(x, perms[p], axis)`` on every spec axis.

    For a network this reorders hidden units consistently (a unit's incoming and outgoing
    weights move together), so the permuted network computes the same function.

    Args:
      params: a parameter tree.
      spec: the permutation spec (see :func:`optlab.weight_matching`).
      perms: a dict mapping each permutation name of ``spec`` to an integer array, a
        permutation of ``range(size)``.

    Returns:
      The permuted tree (same dtypes; arrays stay where they are).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> params = {"w": jnp.array([[1.0, 2.0]]), "b": jnp.array([10.0, 20.0])}
      >>> spec = {"w": (None, "P"), "b": ("P",)}
      >>> optlab.apply_permutation(params, spec, {"P": jnp.array([1, 0])})
      {'b': Array([20., 10.], dtype=float32), 'w': Array([[2., 1.]], dtype=float32)}
    """
    fn = "apply_permutation"
    treedef, axes, _, sizes = _parse_spec(fn, params, spec)
    perms = _check_perms(fn, perms, sizes)
    leaves = treedef.flatten_up_to(params)
    out = []
    for x, ax in zip(leaves, axes):
        for axis, p in enumerate(ax or ()):
            if p is not None:
                x = jnp.take(x, jnp.asarray(perms[p]), axis=axis)
        out.append(x)
    return treedef.unflatten(out)


def weight_matching(
    params_a: Any,
    params_b: Any,
    spec: Any,
    *,
    max_iter: int = 100,
    seed: int = 0,
    init_perms: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Git Re-Basin weight matching: permutations of ``params_b``'s units that match ``params_a``.

    Maximizes ``sum_leaves <a, pi(b)>`` over the permutations ``pi`` described by ``spec``
    (hidden units of a network can be reordered without changing its function) by
    coordinate descent: for each permutation ``p`` in a random order, with all the others
    fixed, the best ``p`` solves the linear assignment problem with the similarity matrix
    ``S = sum_{(leaf, axis) of p} A_(axis) B_(axis)^T`` (``A_(axis)``: the leaf of ``a``
    with ``axis`` first, flattened to ``(n, -1)``; ``B``: the leaf of ``b`` permuted on its
    other axes), solved exactly (Hungarian algorithm in NumPy). Stops when a sweep
    improves nothing, or after ``max_iter`` sweeps. Runs on the host in float64.

    ``spec`` has the structure of the parameters; each leaf is a tuple with one entry per
    axis, the name of the permutation acting on that axis or ``None`` (or ``None`` for a
    leaf never permuted), like the paper's ``PermutationSpec``. For an MLP see
    :func:`optlab.mlp_permutation_spec`.

    Args:
      params_a: the reference model.
      params_b: the model to align (same structure and shapes).
      spec: the permutation spec.
      max_iter: the maximum number of sweeps (a Python int >= 1).
      seed: seed of the random order of the permutations in each sweep.
      init_perms: the starting permutations (default: identities).

    Returns:
      A dict ``{name: int64 NumPy permutation}``; ``optlab.apply_permutation(params_b,
      spec, perms)`` is the aligned ``b``.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> a = {"w1": jnp.array([[1.0, 2.0, 3.0]]), "w2": jnp.array([[1.0], [0.0], [-1.0]])}
      >>> spec = {"w1": (None, "H"), "w2": ("H", None)}
      >>> b = optlab.apply_permutation(a, spec, {"H": jnp.array([2, 0, 1])})
      >>> perms = optlab.weight_matching(a, b, spec)
      >>> perms["H"]
      array([1, 2, 0])
      >>> optlab.apply_permutation(b, spec, perms)["w1"]
      Array([[1., 2., 3.]], dtype=float32)

    References:
      Ainsworth, Hayase and Srinivasa, `Git Re-Basin: Merging Models modulo Permutation
      Symmetries <https://arxiv.org/abs/2209.04836>`_, 2023 (Algorithm 1).
    """
    fn = "weight_matching"
    _check_compatible(fn, params_a, params_b, "params_a", "params_b")
    _base.check_int(fn, max_iter=max_iter)
    treedef, axes, perm_axes, sizes = _parse_spec(fn, params_a, spec)
    leaves_a = [np.asarray(x, np.float64) for x in treedef.flatten_up_to(params_a)]
    leaves_b = [np.asarray(x, np.float64) for x in treedef.flatten_up_to(params_b)]
    for name, leaves in (("params_a", leaves_a), ("params_b", leaves_b)):
        if not all(np.all(np.isfinite(x)) for x in leaves):
            raise ValueError(f"`optlab.{fn}`: `{name}` has non-finite values.")
    if init_perms is None:
        perms = {p: np.arange(n) for p, n in sizes.items()}
    else:
        perms = {p: q.copy() for p, q in _check_perms(fn, init_perms, sizes).items()}
    names = sorted(perm_axes)
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        progress = False
        for i in rng.permutation(len(names)):
            p, n = names[i], sizes[names[i]]
            sim = np.zeros((n, n))
            for k, axis in perm_axes[p]:
                wa = np.moveaxis(leaves_a[k], axis, 0).reshape(n, -1)
                wb = _permute_leaf(leaves_b[k], axes[k], perms, except_axis=axis)
                sim += wa @ np.moveaxis(wb, axis, 0).reshape(n, -1).T
            new = _linear_sum_assignment(-sim)
            old_score = sim[np.arange(n), perms[p]].sum()
            new_score = sim[np.arange(n), new].sum()
            if new_score > old_score + 1e-12 * max(1.0, abs(old_score)):
                progress = True
                perms[p] = new
        if not progress:
            break
    return perms


def align_and_interpolate(
    params_a: Any,
    params_b: Any,
    spec: Any,
    t: float = 0.5,
    *,
    max_iter: int = 100,
    seed: int = 0,
) -> Any:
    """Merges two models after permutation alignment: ``(1 - t) a + t pi(b)`` (Git Re-Basin).

    Aligns ``params_b`` to ``params_a`` with :func:`optlab.weight_matching`, applies the
    permutations (:func:`optlab.apply_permutation`) and interpolates linearly
    (:func:`optlab.interpolate`). Without alignment, the midpoint of two independently
    trained networks usually has a high loss; after it, often a low one.

    Args:
      params_a: the reference model.
      params_b: the model to align and merge.
      spec: the permutation spec (see :func:`optlab.weight_matching`).
      t: the interpolation coefficient (0 gives ``a``, 1 the aligned ``b``).
      max_iter: weight matching's maximum number of sweeps.
      seed: weight matching's seed.

    Returns:
      The merged tree, with the dtypes of ``params_a``.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> a = {"w1": jnp.array([[1.0, 2.0]]), "w2": jnp.array([[1.0], [-1.0]])}
      >>> spec = {"w1": (None, "H"), "w2": ("H", None)}
      >>> b = optlab.apply_permutation(a, spec, {"H": jnp.array([1, 0])})
      >>> optlab.align_and_interpolate(a, b, spec)["w1"]  # b is a up to a permutation
      Array([[1., 2.]], dtype=float32)

    References:
      Ainsworth, Hayase and Srinivasa, `Git Re-Basin: Merging Models modulo Permutation
      Symmetries <https://arxiv.org/abs/2209.04836>`_, 2023.
    """
    fn = "align_and_interpolate"
    _check_scalar(fn, t=t)
    perms = weight_matching(params_a, params_b, spec, max_iter=max_iter, seed=seed)
    return interpolate(params_a, apply_permutation(params_b, spec, perms), t)


@jax.jit
def _regmean_kernel(alpha, grams, ws):
    """``(sum_i G~_i)^-1 sum_i G~_i W_i`` with ``G~ = alpha G + (1 - alpha) diag(G)``."""
    acc = jnp.promote_types(ws[0].dtype, jnp.float32)
    d = ws[0].shape[0]
    a = alpha.astype(acc)
    lhs = jnp.zeros((d, d), acc)
    rhs = jnp.zeros((d, ws[0].size // max(d, 1)), acc)
    for g, w in zip(grams, ws):
        g = g.astype(acc)
        g = a * g + (1 - a) * jnp.diag(jnp.diag(g))
        lhs = lhs + g
        rhs = rhs + g @ w.astype(acc).reshape(d, -1)
    return jnp.linalg.solve(lhs, rhs).reshape(ws[0].shape).astype(ws[0].dtype)


def regmean(
    models: Sequence[Any], grams: Sequence[Any], *, alpha: float = 1.0, input_axis: int = 0
) -> Any:
    """RegMean: merge linear layers by the closed-form least-squares fit to every model.

    For a linear layer ``y = x W`` (``W``: ``(d_in, ...)``) fine-tuned into ``W_i`` on
    inputs ``X_i`` with Gram matrix ``G_i = X_i^T X_i``, the merged weight minimizing
    ``sum_i ||X_i W - X_i W_i||^2`` is::

        W = (sum_i G~_i)^{-1} sum_i G~_i W_i,    G~_i = alpha G_i + (1 - alpha) diag(G_i)

    (the paper scales the off-diagonal entries of each Gram matrix by ``alpha``; ``alpha
    = 1`` is the exact least-squares merge, ``alpha = 0`` a per-input-feature weighted
    mean, smaller ``alpha`` regularizes a poorly conditioned sum). Only the Gram
    matrices are needed, not the data. Leaves without Gram matrices (biases,
    normalization scales, embeddings...) are averaged uniformly.

    Args:
      models: a non-empty list of parameter trees with the same structure and shapes.
      grams: one tree per model, with the parameters' structure, holding at each leaf
        the ``(d_in, d_in)`` Gram matrix of that layer's inputs (``d_in`` the leaf's size
        along ``input_axis``) or ``None``; a leaf has Gram matrices in all models or in
        none.
      alpha: the off-diagonal scaling, in ``[0, 1]``.
      input_axis: the leaf axis contracted with the inputs (0 for Flax kernels
        ``(in, out)``; 1 for PyTorch-style ``(out, in)`` weights).

    Returns:
      The merged tree, with the dtypes of ``models[0]``.

    Raises:
      ValueError: on mismatched models or Gram trees, Gram matrices of the wrong shape,
        a leaf with Gram matrices in some models only, or a singular sum of Gram
        matrices (then use ``alpha < 1`` or more data).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> m1 = {"kernel": jnp.array([[1.0], [0.0]]), "bias": jnp.array([1.0])}
      >>> m2 = {"kernel": jnp.array([[0.0], [1.0]]), "bias": jnp.array([3.0])}
      >>> g1 = {"kernel": jnp.diag(jnp.array([3.0, 1.0])), "bias": None}
      >>> g2 = {"kernel": jnp.diag(jnp.array([1.0, 3.0])), "bias": None}
      >>> optlab.regmean([m1, m2], [g1, g2])
      {'bias': Array([2.], dtype=float32), 'kernel': Array([[0.75],
             [0.75]], dtype=float32)}

    References:
      Jin, Ren, Preotiuc-Pietro and Cheng, `Dataless Knowledge Fusion by Merging Weights
      of Language Models <https://arxiv.org/abs/2212.09849>`_, 2023.
    """
    fn = "regmean"
    models = _check_models(fn, models)
    _check_all(fn, models[0], models[1:], "models[0]", "models[1:]")
    _base.check_unit_interval(fn, alpha=alpha)
    if isinstance(input_axis, bool) or not isinstance(input_axis, int):
        raise TypeError(f"`optlab.{fn}`: `input_axis` must be an int, got {input_axis!r}.")
    if not isinstance(grams, (list, tuple)) or len(grams) != len(models):
        raise ValueError(
            f"`optlab.{fn}`: `grams` must be a list with one tree per model ({len(models)}),"
            f" got {type(grams).__name__}"
            + (f" of length {len(grams)}." if isinstance(grams, (list, tuple)) else ".")
        )
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(models[0])
    per_model = []
    for i, g in enumerate(grams):
        try:
            per_model.append(treedef.flatten_up_to(g))
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"`optlab.{fn}`: `grams[{i}]` must have the structure of the parameters"
                f" (a Gram matrix or None per leaf): {e}"
            ) from None
    model_leaves = [treedef.flatten_up_to(m) for m in models]
    alpha_arr = jnp.asarray(alpha, jnp.float32)
    out = []
    for k, (path, leaf) in enumerate(leaves_with_path):
        where = jax.tree_util.keystr(path) or "<root>"
        gs = [pm[k] for pm in per_model]
        ws = [jnp.asarray(ml[k]) for ml in model_leaves]
        present = [g is not None for g in gs]
        if not any(present):
            out.append(ws[0] if len(ws) == 1 else _uniform_kernel(*ws))
            continue
        if not all(present):
            raise ValueError(
                f"`optlab.{fn}`: the leaf at {where} has Gram matrices in some models only"
                f" (models {[i for i, h in enumerate(present) if h]})."
            )
        ndim = jnp.ndim(leaf)
        if ndim < 2 or not -ndim <= input_axis < ndim:
            raise ValueError(
                f"`optlab.{fn}`: a Gram matrix at {where} needs a leaf with at least two axes"
                f" and input_axis={input_axis}, got shape {jnp.shape(leaf)}."
            )
        ws = [jnp.moveaxis(w, input_axis, 0) for w in ws]
        d = ws[0].shape[0]
        for i, g in enumerate(gs):
            if jnp.shape(g) != (d, d):
                raise ValueError(
                    f"`optlab.{fn}`: `grams[{i}]` at {where} must have shape ({d}, {d}) (the"
                    f" leaf's size along input_axis={input_axis}), got {jnp.shape(g)}."
                )
        merged = _regmean_kernel(alpha_arr, [jnp.asarray(g) for g in gs], ws)
        if not bool(jnp.all(jnp.isfinite(merged))):
            raise ValueError(
                f"`optlab.{fn}`: the sum of Gram matrices at {where} is singular or the"
                " inputs are not finite; use alpha < 1 or Gram matrices of more data."
            )
        out.append(jnp.moveaxis(merged, 0, input_axis))
    return treedef.unflatten(out)
