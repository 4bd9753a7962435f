"""Offline model merging: soups, interpolation, SLERP, Model Stock, task arithmetic.

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
