"""Diagonal Hessian preconditioning: Hutchinson's estimator, Sophia, AdaHessian.

Every transform here needs a Hessian-vector product, passed to ``update`` as the
keyword extra argument ``hvp_fn(params, v) -> H @ v`` (``H`` the Hessian of the loss
at ``params``; ``v`` and the result have the structure of ``params``). For a loss
``loss(params) -> scalar``, forward-over-reverse is the cheapest::

    hvp_fn = lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]
    updates, state = tx.update(grads, state, params, hvp_fn=hvp_fn)

With Flax NNX, ``optimizer.update(model, grads, hvp_fn=hvp_fn)`` forwards it (the
``params`` passed to ``hvp_fn`` are then the ``nnx.Param`` state of the model, so
build ``loss`` on that state with ``nnx.merge``). For a mini-batch loss, close over
the current batch: ``hvp_fn = lambda p, v: jax.jvp(jax.grad(lambda q: loss(q, batch)),
(p,), (v,))[1]``.

The random probes come from a PRNG key kept in the state (seeded by ``seed``), so the
transforms are deterministic and jit-friendly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.extend.random  # noqa: F401  (threefry2x32_p)
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _base, _tree

__all__ = [
    "HutchinsonState",
    "ScaleBySophiaState",
    "ScaleByAdaHessianState",
    "hutchinson_diag_hessian",
    "scale_by_sophia",
    "scale_by_adahessian",
]

HVP_HOW = (
    "a function `hvp_fn(params, v) -> H @ v`, e.g."
    " `hvp_fn = lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]`, passed as"
    " `tx.update(grads, state, params, hvp_fn=hvp_fn)`; with Flax NNX,"
    " `optimizer.update(model, grads, hvp_fn=hvp_fn)`."
)


def _cast_tree_like(tree: Any, like: Any) -> Any:
    return _tree.tree_map(lambda x, y: x.astype(jnp.result_type(y)), tree, like)


# ---------------------------------------------------------------------------
# Hutchinson's estimator
# ---------------------------------------------------------------------------


def _rademacher_like(key: jax.Array, tree: Any) -> Any:
    """float32 Rademacher probes shaped like ``tree``, bit-identical to
    ``optax.tree.random_like(key, tree, jax.random.rademacher, dtype=jnp.float32)``.

    ``optax.tree.random_like`` draws every leaf with its own ``jax.random`` call, i.e.
    one Threefry kernel per leaf, and XLA compiles each separately (on CPU ~0.1-0.2 s a
    leaf: 8 s at 50 leaves, 30+ s at 200). Here the per-leaf keys are the same
    (``jax.random.split(key, n_leaves)``) and the per-leaf counters the same (the flat
    index within the leaf), but the hash runs as ONE ``threefry2x32`` over all
    elements, which is what ``jax.random.bits`` computes leaf by leaf with the
    (default) partitionable Threefry. ``rademacher`` is ``2 * (uniform < 0.5) - 1``,
    and ``uniform < 0.5`` is "top random bit clear" (of ``bits1 ^ bits2`` for float32
    uniforms, of ``bits1`` for the 64-bit ones under ``jax_enable_x64``). Falls back
    to optax's per-leaf draw for other PRNG setups or trees of 2**32 elements or more.
    """
    leaves, treedef = jax.tree.flatten(tree)
    sizes = [int(np.prod(np.shape(x), dtype=np.int64)) for x in leaves]
    total = sum(sizes)
    if (
        not leaves
        or total >= 2**32
        or jnp.shape(key) != (2,)
        or not jax.config.jax_threefry_partitionable
        or jax.config.jax_default_prng_impl != "threefry2x32"
    ):
        return optax.tree.random_like(key, tree, jax.random.rademacher, dtype=jnp.float32)
    keys = jax.random.split(key, len(leaves))  # == optax.tree.split_key_like
    # Per-leaf keys broadcast and per-leaf counters concatenated (elementwise, fused into
    # the hash): a ``jnp.repeat`` by constant sizes lowers to a cumsum + gather that XLA
    # constant-folds for seconds at compile time and gathers at run time (issue 13).
    k1 = jnp.concatenate([jnp.broadcast_to(keys[i, 0], (n,)) for i, n in enumerate(sizes)])
    k2 = jnp.concatenate([jnp.broadcast_to(keys[i, 1], (n,)) for i, n in enumerate(sizes)])
    counts = jnp.concatenate([jax.lax.iota(jnp.uint32, n) for n in sizes])
    k1, k2, counts = jax.lax.optimization_barrier((k1, k2, counts))
    bits1, bits2 = jax.extend.random.threefry2x32_p.bind(k1, k2, jnp.zeros_like(counts), counts)
    x64 = jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64
    bits = bits1 if x64 else bits1 ^ bits2
    signs = jnp.where(bits < np.uint32(2**31), 1.0, -1.0).astype(jnp.float32)
    # Materialize the signs once: otherwise XLA fuses the whole hash into every leaf's
    # slice below, one copy of the Threefry rounds per leaf (compile time ~0.2 s a leaf).
    signs = jax.lax.optimization_barrier(signs)
    out, start = [], 0
    for x, size in zip(leaves, sizes):
        out.append(jax.lax.slice(signs, (start,), (start + size,)).reshape(np.shape(x)))
        start += size
    return jax.tree.unflatten(treedef, out)


class HutchinsonState(NamedTuple):
    """State for :func:`optlab.hutchinson_diag_hessian`.

    Attributes:
      key: the raw PRNG key (``uint32[2]``) of the Rademacher probes, split at every
        call.
    """

    key: jax.Array  # shape=(2,), dtype=uint32: raw PRNG key, split at every call


def _hutchinson(seed: int) -> optax.GradientTransformationExtraArgs:
    """Unchecked builder of :func:`hutchinson_diag_hessian` (its callers check ``hvp_fn``)."""

    def init_fn(params):
        return HutchinsonState(key=jax.random.PRNGKey(seed))

    def update_fn(updates, state, params=None, *, hvp_fn=None, **extra_args):
        del extra_args
        _base.require_params(params)
        key, subkey = jax.random.split(state.key)  # the probes of optax's estimator
        z = _cast_tree_like(_rademacher_like(subkey, params), params)
        hz = hvp_fn(params, z)
        diag = _tree.tree_map(lambda zi, hzi: zi * hzi.astype(zi.dtype), z, hz)
        return _cast_tree_like(diag, updates), HutchinsonState(key=key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def hutchinson_diag_hessian(*, seed: int = 0) -> optax.GradientTransformationExtraArgs:
    r"""Replaces the updates by Hutchinson's estimate of the Hessian diagonal.

    With Rademacher probes :math:`z` (entries :math:`\pm 1` with probability 1/2),
    :math:`\mathbb{E}[z \odot Hz] = \operatorname{diag}(H)`, so each call returns

    .. math::
      \hat D = z \odot (H z),

    an unbiased estimate of the diagonal of the Hessian at ``params``. For an exactly
    diagonal Hessian the estimate is exact (:math:`z_i^2 = 1`). The incoming updates
    are ignored except for their structure and dtypes. It is the estimator inside
    :func:`optlab.scale_by_sophia` and :func:`optlab.scale_by_adahessian`, and can be
    passed to them as ``hessian_diagonal_fn``.

    ``update`` needs ``params`` and the keyword extra argument
    ``hvp_fn(params, v) -> H @ v`` (see the module docstring), called once per step
    with a fresh probe (chain ``optax.ema`` after it to average the estimates over
    steps).

    Args:
      seed: seed of the PRNG key kept in the state; the key is split at every call.

    Returns:
      A ``GradientTransformationExtraArgs`` whose state is
      :class:`HutchinsonState` (one PRNG key).

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> loss = lambda p: jnp.sum(jnp.array([1.0, 2.0, 3.0]) * p["x"] ** 2)
      >>> hvp_fn = lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]
      >>> params = {"x": jnp.ones(3)}
      >>> tx = optlab.hutchinson_diag_hessian(seed=0)
      >>> diag, _ = tx.update(params, tx.init(params), params, hvp_fn=hvp_fn)
      >>> diag["x"]
      Array([2., 4., 6.], dtype=float32)

    References:
      Hutchinson, `A stochastic estimator of the trace of the influence matrix for
      Laplacian smoothing splines`, 1989.

      Bekas, Kokiopoulou and Saad, `An estimator for the diagonal of a matrix`, 2007.
    """
    _base.check_int_unless_traced("hutchinson_diag_hessian", 0, seed=seed)
    return _base.public("hutchinson_diag_hessian", _hutchinson(seed), hvp_fn=HVP_HOW)


def _resolve_hessian_fn(hessian_diagonal_fn, seed):
    if hessian_diagonal_fn is None:
        return _hutchinson(seed)
    return optax.with_extra_args_support(hessian_diagonal_fn)


def hessian_needs(hessian_diagonal_fn) -> dict[str, str]:
    """The default estimator needs ``hvp_fn``; a custom one checks its own inputs."""
    return {"hvp_fn": HVP_HOW} if hessian_diagonal_fn is None else {}


# ---------------------------------------------------------------------------
# Sophia
# ---------------------------------------------------------------------------


class ScaleBySophiaState(NamedTuple):
    """State for :func:`optlab.scale_by_sophia`.

    Attributes:
      count: number of steps taken (int32 scalar).
      mu: EMA of the gradients (``mu_dtype`` or the parameters' dtype).
      nu: EMA of the Hessian-diagonal estimates, refreshed every ``update_interval``.
      hessian_state: the estimator's state (a :class:`HutchinsonState` by default).
    """

    count: jax.Array  # shape=(), dtype=int32
    mu: optax.Updates  # EMA of the gradients
    nu: optax.Updates  # EMA of the Hessian-diagonal estimates
    hessian_state: Any  # state of the Hessian-diagonal estimator (a PRNG key by default)


def scale_by_sophia(
    b1: jax.typing.ArrayLike = 0.965,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    gamma: jax.typing.ArrayLike = 0.01,
    clip_threshold: jax.typing.ArrayLike | None = 1.0,
    update_interval: int = 10,
    *,
    seed: int = 0,
    hessian_diagonal_fn: optax.GradientTransformation | None = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Rescales updates with Sophia's clipped diagonal-Hessian preconditioner (Sophia-H).

    With gradient :math:`g_t` and a Hessian-diagonal estimate :math:`\hat h` (Hutchinson,
    :func:`optlab.hutchinson_diag_hessian`, by default):

    .. math::
      m_t = b_1 m_{t-1} + (1 - b_1) g_t, \qquad \hat m_t = m_t / (1 - b_1^t), \\
      u_t = \operatorname{clip}\big(\hat m_t / \max(\gamma h_{t-1}, \epsilon),
            \; [-c, c]\big),

    and every ``update_interval`` steps (steps 0, k, 2k, ...; selected with
    ``lax.cond`` on the step counter, so the Hessian-vector product only runs on those
    steps) :math:`h \leftarrow b_2 h + (1 - b_2) \hat h`, evaluated at the current
    ``params``. Between refreshes ``h`` is kept.

    Parametrization: this matches :func:`optax.contrib.sophia` (and Levanter) exactly
    (``gamma``, ``eps``, ``clip_threshold``, bias-corrected :math:`m`, the refreshed
    :math:`h` is used from the next step on, as in the authors' code, which refreshes
    after the parameter step), so results agree with optax's given the same probes.
    The paper's Algorithm 3 writes :math:`\max(\gamma h, \epsilon)` with
    :math:`\gamma = 0.01` and does not bias-correct :math:`m`; the authors' code writes
    the same ratio as ``m / (rho * h + eps)`` clipped to 1. At step 0 :math:`h = 0`,
    so the first update is :math:`c \cdot \operatorname{sign}(m)` as in both. A
    non-finite :math:`m` (from an inf or NaN gradient) is passed through unclipped, so
    that it shows in the updates instead of becoming :math:`\pm c` forever.
    Note the effective Hessian decay is about :math:`1 - (1 - b_2)/k`.

    ``update`` needs ``params`` and the keyword extra argument
    ``hvp_fn(params, v) -> H @ v`` (module docstring), or whatever extra arguments a
    custom ``hessian_diagonal_fn`` needs.

    Args:
      b1: decay of the gradient EMA, in [0, 1).
      b2: decay of the Hessian-diagonal EMA (per refresh), in [0, 1).
      eps: floor of the denominator, > 0.
      gamma: scale of the Hessian in the denominator (the paper's :math:`\gamma`), > 0.
      clip_threshold: per-coordinate clip :math:`c` of the ratio, > 0; ``None`` for no
        clipping.
      update_interval: refresh the Hessian estimate every this many steps (Python int).
      seed: seed of the Hutchinson probes (ignored with ``hessian_diagonal_fn``).
      hessian_diagonal_fn: a transformation mapping (grads, state, params, **extra)
        to a Hessian-diagonal estimate; default :func:`optlab.hutchinson_diag_hessian`.
      mu_dtype: dtype of :math:`m`; default the parameter dtype.

    Returns:
      A ``GradientTransformationExtraArgs`` whose state is
      :class:`ScaleBySophiaState`: step count, :math:`m`, :math:`h` (one copy of the
      parameters each) and the estimator's state (a PRNG key).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum(jnp.array([1.0, 10.0]) * p["x"] ** 2)
      >>> hvp_fn = lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]
      >>> tx = optax.chain(optlab.scale_by_sophia(b1=0.9),
      ...                  optax.scale_by_learning_rate(0.02))
      >>> @jax.jit
      ... def step(params, state):
      ...     grads = jax.grad(loss)(params)
      ...     updates, state = tx.update(grads, state, params, hvp_fn=hvp_fn)
      ...     return optax.apply_updates(params, updates), state
      >>> params = {"x": jnp.array([1.0, 1.0])}
      >>> state = tx.init(params)
      >>> for _ in range(200):
      ...     params, state = step(params, state)
      >>> bool(loss(params) < 1e-4)
      True

    References:
      Liu, Li, Hall, Liang and Ma, `Sophia: A Scalable Stochastic Second-order
      Optimizer for Language Model Pre-training <https://arxiv.org/abs/2305.14342>`_,
      2023.
    """
    name = "scale_by_sophia"
    _base.check_decay(name, b1=b1, b2=b2)
    _base.check_positive(name, eps=eps, gamma=gamma)
    if clip_threshold is not None:
        _base.check_positive(name, clip_threshold=clip_threshold)
    _base.check_int_unless_traced(name, 1, update_interval=update_interval)
    if hessian_diagonal_fn is None:
        _base.check_int_unless_traced(name, 0, seed=seed)
    tx = _scale_by_sophia(
        b1, b2, eps, gamma, clip_threshold, update_interval, seed, hessian_diagonal_fn, mu_dtype
    )
    return _base.public(name, tx, real=True, **hessian_needs(hessian_diagonal_fn))


def _scale_by_sophia(
    b1, b2, eps, gamma, clip_threshold, update_interval, seed, hessian_diagonal_fn, mu_dtype
):
    hessian_fn = _resolve_hessian_fn(hessian_diagonal_fn, seed)

    def init_fn(params):
        return ScaleBySophiaState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params, dtype=mu_dtype),
            nu=optax.tree.zeros_like(params),
            hessian_state=hessian_fn.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        _base.require_params(params)
        grads = updates
        count_inc = optax.safe_increment(state.count)
        mu = _cast_tree_like(optax.tree.update_moment(grads, state.mu, b1, 1), state.mu)
        mu_hat = optax.tree.bias_correction(mu, b1, count_inc)
        ratio = _tree.tree_map(lambda m, h: m / jnp.maximum(gamma * h, eps), mu_hat, state.nu)
        if clip_threshold is not None:
            # A non-finite momentum (from an inf/NaN gradient) stays visible instead of
            # being clipped to +-c forever.
            ratio = _tree.tree_map(
                lambda r, m: jnp.where(
                    jnp.isfinite(m), jnp.clip(r, -clip_threshold, clip_threshold), m
                ),
                ratio,
                mu_hat,
            )

        def refresh(hessian_state, nu):
            diag, hessian_state = hessian_fn.update(grads, hessian_state, params, **extra_args)
            nu_new = optax.tree.update_moment(diag, nu, b2, 1)
            return hessian_state, _cast_tree_like(nu_new, nu)

        hessian_state, nu = jax.lax.cond(
            state.count % update_interval == 0,
            refresh,
            lambda h, n: (h, n),
            state.hessian_state,
            state.nu,
        )
        new_state = ScaleBySophiaState(count=count_inc, mu=mu, nu=nu, hessian_state=hessian_state)
        return _cast_tree_like(ratio, updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# AdaHessian
# ---------------------------------------------------------------------------


class ScaleByAdaHessianState(NamedTuple):
    """State for :func:`optlab.scale_by_adahessian`.

    Attributes:
      count: number of steps taken (int32 scalar).
      mu: EMA of the gradients.
      nu: EMA of the squared (spatially averaged) Hessian-diagonal estimates.
      hessian_state: the estimator's state (a :class:`HutchinsonState` by default).
    """

    count: jax.Array  # shape=(), dtype=int32
    mu: optax.Updates  # EMA of the gradients
    nu: optax.Updates  # EMA of the squared (spatially averaged) Hessian-diagonal estimates
    hessian_state: Any  # state of the Hessian-diagonal estimator (a PRNG key by default)


def _spatial_average(d: jax.Array) -> jax.Array:
    """Average |d| over the leading (spatial) axes of a rank >= 3 kernel, keep the shape."""
    if d is None or d.ndim < 3:
        return d
    axes = tuple(range(d.ndim - 2))
    d32 = jnp.abs(d.astype(jnp.promote_types(d.dtype, jnp.float32)))
    return jnp.broadcast_to(jnp.mean(d32, axis=axes, keepdims=True), d.shape).astype(d.dtype)


def _check_spatial_average(fn_name: str, spatial_average: Any) -> None:
    if spatial_average is True:
        raise ValueError(
            f"`optlab.{fn_name}`: `spatial_average=True` is ambiguous (a rank >= 3 leaf may"
            " be an attention kernel (embed, heads, head_dim), not a conv kernel): pass a tree"
            " of booleans or a function `params -> tree of booleans` marking the conv kernels,"
            " e.g. `spatial_average=lambda p: jax.tree.map(lambda x: x.ndim == 4, p)`, got"
            " spatial_average=True."
        )
    scalar = (str, bytes, int, float, complex)
    if isinstance(spatial_average, scalar) and spatial_average is not False:
        raise TypeError(
            f"`optlab.{fn_name}`: `spatial_average` must be False, a tree of booleans or a"
            f" function params -> tree of booleans, got spatial_average={spatial_average!r}."
        )


def _apply_spatial_average(spatial_average: Any, diag: Any, params: Any) -> Any:
    """Spatially average the leaves of ``diag`` marked True by the mask ``spatial_average``."""
    mask = spatial_average(params) if callable(spatial_average) else spatial_average

    def per_subtree(marked, sub):
        if marked is None:  # a frozen (None) parameter: nothing to average
            return sub
        if isinstance(marked, (bool, np.bool_)):
            return _tree.tree_map(_spatial_average, sub) if marked else sub
        raise TypeError(
            "`optlab.scale_by_adahessian`: every leaf of the `spatial_average` mask must be a"
            f" Python bool, got {marked!r}."
        )

    return jax.tree.map(per_subtree, mask, diag, is_leaf=lambda x: x is None)


def scale_by_adahessian(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-4,
    hessian_power: jax.typing.ArrayLike = 1.0,
    *,
    spatial_average: bool | optax.MaskOrFn = False,
    seed: int = 0,
    hessian_diagonal_fn: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Rescales updates like Adam, with the squared Hessian diagonal as second moment.

    With gradient :math:`g_t`, a Hessian-diagonal estimate :math:`D_t` computed at
    every step (Hutchinson, :func:`optlab.hutchinson_diag_hessian`, by default) and
    :math:`k` = ``hessian_power``:

    .. math::
      m_t = b_1 m_{t-1} + (1 - b_1) g_t, \qquad v_t = b_2 v_{t-1} + (1 - b_2) D_t^2, \\
      u_t = \frac{m_t / (1 - b_1^t)}{\big(\sqrt{v_t / (1 - b_2^t)}\big)^{k} + \epsilon}.

    Spatial averaging (off by default): the paper averages :math:`|D|` of a conv kernel
    over its window (PyTorch's ``(out, in, kh, kw)`` over ``kh, kw``). The shape alone
    cannot tell a conv kernel from another rank >= 3 leaf (a Flax attention kernel is
    ``(embed, heads, head_dim)``), so say which leaves are conv kernels:
    ``spatial_average`` is a tree of booleans like the params (or a prefix of it), or a
    function ``params -> tree``, ``True`` at the conv kernels, e.g.
    ``spatial_average=lambda p: jax.tree.map(lambda x: x.ndim == 4, p)`` for a CNN
    whose only rank-4 leaves are 2-D convolutions. A marked leaf, in Flax's
    ``(*spatial, in, out)`` layout, has :math:`|D|` averaged over its leading
    ``ndim - 2`` (spatial) axes; marked leaves of rank <= 2 and unmarked leaves use the
    raw estimate. ``spatial_average=True`` is refused (it used to average every
    rank >= 3 leaf, attention kernels included). ``hessian_power=0`` gives
    (bias-corrected) momentum SGD.

    ``update`` needs ``params`` and the keyword extra argument
    ``hvp_fn(params, v) -> H @ v`` (module docstring), called once per step.

    Args:
      b1: decay of the gradient EMA, in [0, 1).
      b2: decay of the EMA of :math:`D^2`, in [0, 1).
      eps: added to the denominator, > 0 (the paper uses 1e-4).
      hessian_power: exponent :math:`k` of the denominator, in [0, 1].
      spatial_average: ``False`` (default), or which leaves are conv kernels whose
        estimate is averaged over the spatial axes: a tree of booleans like the params
        (or a prefix), or a function ``params -> tree of booleans``.
      seed: seed of the Hutchinson probes (ignored with ``hessian_diagonal_fn``).
      hessian_diagonal_fn: a transformation returning a Hessian-diagonal estimate;
        default :func:`optlab.hutchinson_diag_hessian`.

    Returns:
      A ``GradientTransformationExtraArgs`` whose state is
      :class:`ScaleByAdaHessianState`: step count, :math:`m`, :math:`v` (one copy of
      the parameters each) and the estimator's state (a PRNG key).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum(jnp.array([1.0, 10.0]) * p["x"] ** 2)
      >>> hvp_fn = lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]
      >>> tx = optax.chain(optlab.scale_by_adahessian(), optax.scale_by_learning_rate(0.1))
      >>> params = {"x": jnp.array([1.0, 1.0])}
      >>> g = jax.grad(loss)(params)
      >>> updates, _ = tx.update(g, tx.init(params), params, hvp_fn=hvp_fn)
      >>> print([f"{u:.4f}" for u in updates["x"]])  # g / |diag H| = [2, 20] / [2, 20]
      ['-0.1000', '-0.1000']

    References:
      Yao, Gholami, Shen, Mustafa, Keutzer and Mahoney, `ADAHESSIAN: An Adaptive Second
      Order Optimizer for Machine Learning <https://arxiv.org/abs/2006.00719>`_, 2021
      (AAAI; arXiv 2020).
    """
    name = "scale_by_adahessian"
    _base.check_decay(name, b1=b1, b2=b2)
    _base.check_positive(name, eps=eps)
    _base.check_unit_interval(name, hessian_power=hessian_power)
    _check_spatial_average(name, spatial_average)
    if hessian_diagonal_fn is None:
        _base.check_int_unless_traced(name, 0, seed=seed)
    tx = _scale_by_adahessian(
        b1, b2, eps, hessian_power, spatial_average, seed, hessian_diagonal_fn
    )
    return _base.public(name, tx, **hessian_needs(hessian_diagonal_fn))


def _scale_by_adahessian(b1, b2, eps, hessian_power, spatial_average, seed, hessian_diagonal_fn):
    hessian_fn = _resolve_hessian_fn(hessian_diagonal_fn, seed)

    def init_fn(params):
        return ScaleByAdaHessianState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params),
            nu=optax.tree.zeros_like(params),
            hessian_state=hessian_fn.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        _base.require_params(params)
        diag, hessian_state = hessian_fn.update(updates, state.hessian_state, params, **extra_args)
        if spatial_average is not False and spatial_average is not None:
            diag = _apply_spatial_average(spatial_average, diag, params)
        count_inc = optax.safe_increment(state.count)
        mu = _cast_tree_like(optax.tree.update_moment(updates, state.mu, b1, 1), state.mu)
        nu = _cast_tree_like(optax.tree.update_moment(diag, state.nu, b2, 2), state.nu)
        mu_hat = optax.tree.bias_correction(mu, b1, count_inc)
        nu_hat = optax.tree.bias_correction(nu, b2, count_inc)
        new_updates = _tree.tree_map(
            lambda m, v: m / (jnp.sqrt(v) ** hessian_power + eps), mu_hat, nu_hat
        )
        new_state = ScaleByAdaHessianState(
            count=count_inc, mu=mu, nu=nu, hessian_state=hessian_state
        )
        return _cast_tree_like(new_updates, updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ===========================================================================
# Issue 12 (part A): M-FAC and OASIS
# ===========================================================================

__all__ += [
    "ScaleByMFACState",
    "ScaleByOASISState",
    "scale_by_m_fac",
    "scale_by_oasis",
]


def _replicated_sharding(x: jax.Array) -> Any:
    """A replicated ``NamedSharding`` on the mesh of ``x`` when ``x`` is explicitly sharded
    over a mesh axis (for the output of a contraction over its sharded axes), else ``None``."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    explicit = set(getattr(mesh, "explicit_axes", ()) or ())
    used = set()
    for entry in getattr(sharding, "spec", None) or ():
        if entry is not None:
            used.update(entry if isinstance(entry, tuple) else (entry,))
    if not used & explicit:
        return None
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


class ScaleByMFACState(NamedTuple):
    """State for :func:`optlab.scale_by_m_fac`.

    Attributes:
      count: number of steps taken (int32 scalar).
      grads: the last ``num_grads`` gradients, a ring buffer: each leaf has a leading
        axis of size ``num_grads`` (slot ``count % num_grads`` is overwritten next).
      gram: their float32 Gram matrix :math:`G G^\\top`, ``(num_grads, num_grads)``.
    """

    count: jax.Array  # shape=(), dtype=int32
    grads: optax.Updates  # like params with a leading (num_grads,) axis
    gram: jax.Array  # shape=(num_grads, num_grads), float32


def scale_by_m_fac(
    num_grads: int = 16,
    damping: jax.typing.ArrayLike = 1e-3,
) -> optax.GradientTransformationExtraArgs:
    r"""M-FAC: the inverse empirical Fisher of the last ``num_grads`` gradients, applied.

    With the last :math:`m` gradients stacked as the rows of :math:`G` (the current
    gradient included) and the damped empirical Fisher
    :math:`F = \lambda I + \frac1m G^\top G`, the output is :math:`F^{-1} g`, computed by
    the Woodbury identity without ever forming :math:`F`:

    .. math::
        F^{-1} x = \frac{1}{\lambda}\Big(x - G^\top \big(m\lambda I + G G^\top\big)^{-1}
        G x\Big).

    The :math:`m \times m` Gram matrix :math:`G G^\top` is kept in the state and updated
    in :math:`O(m d)` per step (one new row and column: the dot products of the new
    gradient with the window, which are also :math:`G g`), plus an :math:`m \times m`
    solve. The sum runs over all leaves (one global Fisher, the paper's dense variant),
    in float32. Before the window is full the empty slots are zero gradients (they add
    nothing; the weight stays :math:`1/m`). Memory: ``num_grads`` copies of the params.
    Chain momentum, weight decay and a learning rate after it (:func:`optlab.m_fac`).

    Args:
      num_grads: window size :math:`m`, a Python int >= 1.
      damping: :math:`\lambda > 0`; directions are about :math:`g / \lambda` along
        directions the window has not seen.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    State:
      :class:`ScaleByMFACState` ``(count, grads, gram)``: ``num_grads`` copies of the
      params and an ``(m, m)`` float32 matrix.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.scale_by_m_fac(num_grads=1, damping=1.0)
      >>> g = jnp.array([3.0, 4.0])  # F = I + g g^T, F^{-1} g = g / (1 + |g|^2)
      >>> d, state = tx.update(g, tx.init(g))
      >>> print([f"{x:.4f}" for x in d])
      ['0.1154', '0.1538']

    References:
      Frantar, Kurtic and Alistarh, `M-FAC: Efficient Matrix-Free Approximations of
      Second-Order Information <https://arxiv.org/abs/2107.03356>`_, 2021.
    """
    name = "scale_by_m_fac"
    _base.check_buffer_size(name, "a copy of the gradients", _base.MAX_COPIES, num_grads=num_grads)
    _base.check_positive(name, damping=damping)
    return _base.public(name, _scale_by_m_fac(num_grads, damping))


def _scale_by_m_fac(m, damping):
    def init_fn(params):
        return ScaleByMFACState(
            count=jnp.zeros([], jnp.int32),
            # stacked zeros_like: each slot carries the params' sharding (explicit mode too)
            grads=_tree.tree_map(lambda p: jnp.stack([jnp.zeros_like(p)] * m), params),
            gram=jnp.zeros((m, m), jnp.float32),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        slot = state.count % m
        grads = _tree.tree_map(
            lambda g, buf: jax.lax.dynamic_update_index_in_dim(buf, g.astype(buf.dtype), slot, 0),
            updates,
            state.grads,
        )

        def dots(g, buf):  # G g for one leaf, float32
            # No reshape of (possibly sharded) axes; with explicit sharding the contraction
            # over sharded axes needs its (replicated) output sharding spelled out.
            return jnp.einsum(
                "m...,...->m",
                _tree.to_acc(buf),
                _tree.to_acc(g),
                out_sharding=_replicated_sharding(buf),
            )

        per_leaf = [x for x in jax.tree.leaves(_tree.tree_map(dots, updates, grads))]
        gx = sum(per_leaf) if per_leaf else jnp.zeros((m,), jnp.float32)
        gram = state.gram.at[slot, :].set(gx).at[:, slot].set(gx)
        lam = jnp.asarray(damping, jnp.float32)
        coef = jnp.linalg.solve(m * lam * jnp.eye(m, dtype=jnp.float32) + gram, gx)

        def apply(g, buf):
            out = (_tree.to_acc(g) - jnp.einsum("m,m...->...", coef, _tree.to_acc(buf))) / lam
            return out.astype(g.dtype)

        new_updates = _tree.tree_map(apply, updates, grads)
        new_state = ScaleByMFACState(
            count=optax.safe_increment(state.count), grads=grads, gram=gram
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleByOASISState(NamedTuple):
    """State for :func:`optlab.scale_by_oasis`.

    Attributes:
      count: number of steps taken (int32 scalar).
      diag: the EMA :math:`D_k` of Hessian-diagonal estimates.
      prev_params: :math:`w_{k-1}` (the params at the previous call).
      prev_grad: :math:`\\nabla F(w_{k-1})`.
      step_scale: :math:`\\eta_{k-1} / \\eta_0` (float32 scalar, 1 before the first step).
      theta: :math:`\\theta_{k-1} = \\eta_{k-1} / \\eta_{k-2}` (float32, +inf at first).
      hessian_state: the estimator's state (a :class:`HutchinsonState` by default).
    """

    count: jax.Array  # shape=(), dtype=int32
    diag: optax.Updates  # D_k
    prev_params: optax.Updates  # w_{k-1}
    prev_grad: optax.Updates  # grad F(w_{k-1})
    step_scale: jax.Array  # shape=(), float32: eta_{k-1} / eta_0
    theta: jax.Array  # shape=(), float32
    hessian_state: Any


def scale_by_oasis(
    learning_rate: jax.typing.ArrayLike = 1.0,
    b2: jax.typing.ArrayLike = 0.99,
    alpha: jax.typing.ArrayLike = 1e-5,
    *,
    adaptive: bool = True,
    seed: int = 0,
    hessian_diagonal_fn: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""OASIS: a Hutchinson diagonal preconditioner with a Malitsky-Mishchenko step size.

    With :math:`D_k = b_2 D_{k-1} + (1-b_2)\, z \odot H z` (Hutchinson,
    :func:`optlab.hutchinson_diag_hessian`; :math:`D_0` is the first estimate itself) and
    :math:`\hat D_k = \max(|D_k|, \alpha)`, the step is
    :math:`w_{k+1} = w_k - \eta_k \hat D_k^{-1} \nabla F(w_k)` with the adaptive rate

    .. math::
        \eta_k = \min\Big\{\sqrt{1 + \theta_{k-1}}\, \eta_{k-1},\;
        \frac{\|w_k - w_{k-1}\|_{\hat D_k}}
             {2\, \|\nabla F(w_k) - \nabla F(w_{k-1})\|^*_{\hat D_k}}\Big\}, \qquad
        \theta_k = \frac{\eta_k}{\eta_{k-1}},

    :math:`\|x\|_D^2 = x^\top D x`, :math:`\|x\|^{*2}_D = x^\top D^{-1} x` (norms over
    all leaves), :math:`\theta_0 = +\infty` and :math:`\eta_0` = ``learning_rate``. The
    rate is a local inverse-Lipschitz estimate in the metric of :math:`\hat D`, so no
    schedule is needed. Where the second term is undefined (the params or the gradient
    did not change, e.g. at an exact minimum) the rate stays :math:`\eta_{k-1}`: the
    paper's rule would then grow it by :math:`\sqrt{1+\theta}` at every such step, without
    bound (an overflow to inf, then NaN, in float32).

    This transform returns :math:`(\eta_k/\eta_0)\, \hat D_k^{-1} \nabla F(w_k)`: chain
    ``optax.scale_by_learning_rate(learning_rate)`` after it with the *same* rate
    (:func:`optlab.oasis` does). ``adaptive=False`` is the fixed-rate variant
    (:math:`\eta_k = \eta_0`; the output is :math:`\hat D_k^{-1} \nabla F(w_k)` and
    ``learning_rate`` is unused here, so a schedule can be chained). ``update`` needs
    ``params`` and ``hvp_fn(params, v) -> H v`` (module docstring), called once a step.

    Args:
      learning_rate: :math:`\eta_0 > 0`, the rate chained after (adaptive mode).
      b2: decay of the Hessian-diagonal EMA, in ``[0, 1)``.
      alpha: truncation :math:`\alpha > 0` of :math:`|D|` (guards against tiny or
        negative curvature).
      adaptive: use the adaptive rate (True) or a fixed one.
      seed: seed of the Hutchinson probes (ignored with ``hessian_diagonal_fn``).
      hessian_diagonal_fn: a transformation returning a Hessian-diagonal estimate;
        default :func:`optlab.hutchinson_diag_hessian`.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    State:
      :class:`ScaleByOASISState`: :math:`D`, the previous params and gradient (three
      copies of the params), two scalars and the estimator's PRNG key.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum(jnp.array([1.0, 100.0]) * p ** 2)
      >>> hvp_fn = lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]
      >>> tx = optax.chain(optlab.scale_by_oasis(0.5), optax.scale_by_learning_rate(0.5))
      >>> x = jnp.array([1.0, 1.0])
      >>> state = tx.init(x)
      >>> for _ in range(20):
      ...     u, state = tx.update(jax.grad(loss)(x), state, x, hvp_fn=hvp_fn)
      ...     x = optax.apply_updates(x, u)
      >>> bool(loss(x) < 1e-6)
      True

    References:
      Jahani, Rusakov, Shi, Richtarik, Mahoney and Takac, `Doubly Adaptive Scaled
      Algorithm for Machine Learning Using Second-Order Information
      <https://arxiv.org/abs/2109.05198>`_, 2021.
    """
    name = "scale_by_oasis"
    _base.check_decay(name, b2=b2)
    _base.check_positive(name, alpha=alpha)
    if adaptive:
        if callable(learning_rate):
            raise TypeError(
                f"`optlab.{name}`: with `adaptive=True`, `learning_rate` is the initial rate"
                f" eta_0 (a number), got the schedule learning_rate={learning_rate!r}; use"
                " `adaptive=False` to follow a schedule."
            )
        _base.check_positive(name, learning_rate=learning_rate)
    if hessian_diagonal_fn is None:
        _base.check_int_unless_traced(name, 0, seed=seed)
    tx = _scale_by_oasis(learning_rate, b2, alpha, adaptive, seed, hessian_diagonal_fn)
    return _base.public(name, tx, **hessian_needs(hessian_diagonal_fn))


def _scale_by_oasis(learning_rate, b2, alpha, adaptive, seed, hessian_diagonal_fn):
    hessian_fn = _resolve_hessian_fn(hessian_diagonal_fn, seed)

    def init_fn(params):
        return ScaleByOASISState(
            count=jnp.zeros([], jnp.int32),
            diag=optax.tree.zeros_like(params),
            prev_params=optax.tree.zeros_like(params),
            prev_grad=optax.tree.zeros_like(params),
            step_scale=jnp.ones([], jnp.float32),
            theta=jnp.full([], jnp.inf, jnp.float32),
            hessian_state=hessian_fn.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        _base.require_params(params)
        est, hessian_state = hessian_fn.update(updates, state.hessian_state, params, **extra_args)
        first = state.count == 0
        diag = _tree.tree_map(
            lambda e, d: jnp.where(
                first, _tree.to_acc(e), b2 * _tree.to_acc(d) + (1.0 - b2) * _tree.to_acc(e)
            ),
            est,
            state.diag,
        )
        dhat = _tree.tree_map(lambda d: jnp.maximum(jnp.abs(d), alpha), diag)
        if adaptive:

            def sq(tree):
                return sum((jnp.sum(x) for x in jax.tree.leaves(tree)), jnp.zeros([], jnp.float32))

            dw = sq(
                _tree.tree_map(
                    lambda p, q, d: d * jnp.square(_tree.to_acc(p) - _tree.to_acc(q)),
                    params,
                    state.prev_params,
                    dhat,
                )
            )
            dg = sq(
                _tree.tree_map(
                    lambda g, h, d: jnp.square(_tree.to_acc(g) - _tree.to_acc(h)) / d,
                    updates,
                    state.prev_grad,
                    dhat,
                )
            )
            eta0 = jnp.asarray(learning_rate, jnp.float32)
            # Both candidates relative to eta_0.
            # Undefined where nothing moved (dw = 0) or the gradient did not change (dg = 0):
            # then only the growth bound applies (the rate stays > 0).
            valid = (dg > 0) & (dw > 0)
            local = jnp.where(
                valid, jnp.sqrt(dw) / (2.0 * jnp.sqrt(jnp.where(valid, dg, 1.0)) * eta0), jnp.inf
            )
            grow = jnp.sqrt(1.0 + state.theta) * state.step_scale
            scale = jnp.where(valid, jnp.minimum(grow, local), state.step_scale)
            scale = jnp.where(jnp.isfinite(scale), scale, state.step_scale)
            scale = jnp.where(first, 1.0, scale).astype(jnp.float32)
            theta = jnp.where(first, jnp.inf, scale / state.step_scale).astype(jnp.float32)
        else:
            scale, theta = state.step_scale, state.theta
        new_updates = _tree.tree_map(
            lambda g, d: (scale * _tree.to_acc(g) / d).astype(g.dtype), updates, dhat
        )
        new_state = ScaleByOASISState(
            count=optax.safe_increment(state.count),
            diag=_cast_tree_like(diag, state.diag),
            prev_params=_cast_tree_like(params, state.prev_params),
            prev_grad=_cast_tree_like(updates, state.prev_grad),
            step_scale=scale,
            theta=theta,
            hessian_state=hessian_state,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
