"""Sharpness-aware minimization family: one driver, pluggable perturbation policies.

Every method here evaluates a second gradient. At the current point ``w`` with gradient
``g``, a *policy* picks a point ``w'`` (SAM: ``w + rho g / ||g||``), the driver evaluates
``g' = grad_fn(w')``, the policy combines ``(g, g')`` into a direction ``d`` (SAM:
``d = g'``), and the base optimizer is applied to ``d`` at the *unperturbed* ``w``.
:func:`sharpness_aware` is that driver and :class:`PerturbationPolicy` the protocol;
:func:`sam`, :func:`asam`, :func:`gsam`, :func:`fisher_sam`, :func:`masked_sam`,
:func:`looksam`, :func:`multistep_sam`, :func:`random_sam` and :func:`unnormalized_sam`
are thin calls of it with a built-in policy. So are the other methods that take their
gradient at a transformed point: :func:`awp_sam`, :func:`gradnorm_sam`, :func:`rwp`
(random weight perturbation), :func:`extragradient` (a look-ahead), :func:`xgrad` (the
weights predicted by the optimizer's own last update) and :func:`o2nc` (a random point
of the last step).

The second gradient comes from the keyword argument ``grad_fn(params) -> grads`` of
``update`` (the library-wide protocol), so one call is one full step::

    grad_fn = jax.grad(lambda p: loss(p, batch))
    updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)

Flax: ``nnx.Optimizer.update(model, grads, grad_fn=...)`` forwards the keyword; build
``grad_fn`` with :func:`optlab.nnx_grad_fn` (BatchNorm and Dropout handled). Linen:
:class:`optlab.TrainState` forwards it from ``apply_gradients``.

Loops that cannot pass a function (one gradient per ``update`` call, parameters moved
to the perturbed point in between): use ``optax.contrib.sam(inner,
optax.chain(optax.contrib.normalize(), optax.sgd(rho)))``, which is SAM in that style
(``sync_period=2``, tested equal to :func:`sam`). optlab has no such mode: it needs the
unperturbed point, its gradient and a phase counter in the state of every policy, and
the perturbed weights become visible to the rest of the loop (BatchNorm statistics,
weight averages, checkpoints and evaluations taken between the two calls).

m-sharpness and data parallelism
--------------------------------
*Global SAM*: average the gradients over the data axis yourself, in ``grads`` and inside
``grad_fn`` (``jax.lax.pmean``), and leave ``axis_name=None``: every device then uses the
same perturbation. *m-SAM* (m = per-device batch): pass local (per-shard) gradients and
a local ``grad_fn`` with ``axis_name="data"``: each shard perturbs by its own gradient and
the gradients handed to ``combine`` (at ``w`` and at the perturbed point) are
``pmean``-ed over the axis, so the replicated parameters and optimizer state stay
identical. Under ``jax.shard_map`` with ``check_vma=True``, a gradient with respect to
replicated (invariant) parameters is summed over the axis by the transpose rule: compute
the local ``grads`` at ``jax.lax.pcast(params, "data", to="varying")`` (or use
``check_vma=False``). The driver calls ``grad_fn`` at points it marks as varying, so
``grad_fn = lambda p: jax.grad(loss)(p, local_batch)`` returns local gradients::

    def step(params, opt_state, x, y):  # inside jax.shard_map, x and y sharded on "data"
        grad_fn = lambda p: jax.grad(loss)(p, x, y)
        grads = grad_fn(jax.lax.pcast(params, "data", to="varying"))
        updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
        return optax.apply_updates(params, updates), opt_state  # replicated: out_specs P()
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _base, _tree

__all__ = [
    "PerturbationPolicy",
    "SharpnessAwareState",
    "asam",
    "asam_policy",
    "fisher_policy",
    "fisher_sam",
    "gsam",
    "gsam_policy",
    "looksam",
    "looksam_policy",
    "masked_sam",
    "multistep_policy",
    "multistep_sam",
    "norm_layer_mask",
    "random_policy",
    "random_sam",
    "sam",
    "sam_policy",
    "sharpness_aware",
    "sharpness_diagnostics",
    "unnormalized_policy",
    "unnormalized_sam",
]

# ---------------------------------------------------------------------------
# The policy protocol
# ---------------------------------------------------------------------------


def _perturbed_grads_only(grads, perturbed_grads, state, step):
    del grads, step
    return perturbed_grads, state


class PerturbationPolicy(NamedTuple):
    """Where a sharpness-aware method takes its second gradient, and what it does with it.

    A policy is three plain functions on pytrees and a period; :func:`sharpness_aware`
    drives them. Each step, at parameters ``w`` with gradient ``g`` and step count
    ``step`` (int32, from 0)::

        point, state = perturb(g, w, state, step, grad_fn=...)
        g_p = grad_fn(point)                  # the driver's only gradient call
        d, state = combine(g, g_p, state, step)
        updates = inner.update(d, inner_state, w)

    Hyperparameters live in the policy (closures); a schedule is evaluated at ``step``.
    The driver hands over float trees in at least float32 (bfloat16 leaves upcast), casts
    ``point`` to the parameters' dtypes and ``d`` to the gradients', and keeps the dtypes
    of the floating leaves of ``state``. Everything is traced: no Python control flow on
    values.

    Attributes:
      init: ``params -> state``: any pytree of arrays (``()`` if stateless: SAM; a PRNG
        key: random perturbations; moments or the previous iterate: weight prediction,
        random points on the segment from the last iterate).
      perturb: ``(grads, params, state, step, *, grad_fn) -> (point, state)``. ``point``
        has the structure of ``params``: ``params + e`` for a perturbation ``e`` (SAM,
        ASAM, Fisher, layer-wise radii, random noise), a look-ahead point (extragradient
        ``w - lr g``, weight prediction) or any other point (a random point between the
        last iterate and ``w``). Under the driver's ``mask`` the unselected leaves are
        ``None`` in ``grads``, ``params`` and ``point`` (``jax.tree.map`` and
        ``optax.tree.*`` skip them; norms are then over the selected leaves; a state
        shaped like ``params`` that ``perturb`` rewrites must keep its other leaves).
        ``grad_fn(point) -> grads`` (same convention) is for multi-step ascents; most
        policies ignore it (``**unused``).
      combine: ``(grads, perturbed_grads, state, step) -> (direction, state)`` on full
        trees: the descent direction from ``g`` and ``g_p`` (default ``g_p``). Mixtures
        such as ``(1 - a) g + a g_p`` (finite-difference gradient-norm penalty, mixed
        random perturbation) or projections (GSAM) go here; so do state updates that
        need ``g_p`` (moments of weight prediction).
      every_k: perturb only when ``step % every_k == 0`` (``grad_fn`` is then not called on
        the other steps, under ``lax.cond``); there ``combine`` gets
        ``perturbed_grads=None`` and must give a direction from ``g`` and its state.

    Example:
      A sign-SAM (``e = rho sign(g) / sqrt(n)``) as a new policy:

      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> def perturb(grads, params, state, step, **unused):
      ...     n = optax.tree.size(grads)
      ...     e = jax.tree.map(lambda g: 0.05 * jnp.sign(g) / n**0.5, grads)
      ...     return optax.tree.add(params, e), state
      >>> policy = optlab.PerturbationPolicy(init=lambda params: (), perturb=perturb)
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), policy)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> grad_fn = jax.grad(lambda p: jnp.sum(p["w"] ** 2))
      >>> updates, state = tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)
    """

    init: Callable[[Any], Any]
    perturb: Callable[..., tuple[Any, Any]]
    combine: Callable[[Any, Any, Any, jax.Array], tuple[Any, Any]] = _perturbed_grads_only
    every_k: int = 1


class SharpnessAwareState(NamedTuple):
    """State of :func:`sharpness_aware` and the SAM family.

    Attributes:
      count: steps taken (int32), the ``step`` handed to the policy.
      inner_state: state of the wrapped optimizer ``inner``.
      policy_state: state of the policy (LookSAM's ``g_v``, the random key, or ``()``).
    """

    count: jax.Array
    inner_state: optax.OptState
    policy_state: Any


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------

_GRAD_FN_HOW = (
    "a function `params -> grads` evaluating the loss gradient at any point, e.g."
    " `tx.update(g, s, p, grad_fn=jax.grad(loss))`; with Flax NNX,"
    " `optimizer.update(model, grads, grad_fn=optlab.nnx_grad_fn(model, loss_fn))`."
)


def _acc_floats(tree: Any) -> Any:
    """Floating leaves in their accumulation dtype (bfloat16 -> float32); others kept."""
    return jax.tree.map(
        lambda x: _tree.to_acc(x) if jnp.issubdtype(x.dtype, jnp.inexact) else x, tree
    )


def _floats_like(tree: Any, like: Any) -> Any:
    """Floating leaves of ``tree`` cast to the dtypes of ``like``'s; others kept."""
    return jax.tree.map(
        lambda x, y: x.astype(y.dtype) if jnp.issubdtype(y.dtype, jnp.inexact) else x, tree, like
    )


def _as_varying(tree: Any, axis_name: Any) -> Any:
    """Mark leaves as device-varying over ``axis_name`` (``shard_map`` with ``check_vma``).

    ``jax.grad`` at a varying point gives the local (per-shard) gradient; at an invariant
    one, the transpose rule sums it over the axis. Without varying-axis tracking (``pmap``,
    ``check_vma=False``) gradients are local already and nothing changes.
    """
    if axis_name is None:
        return tree
    names = tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)

    def cast(x):
        vma = getattr(jax.typeof(x), "vma", None)
        missing = () if vma is None else tuple(n for n in names if n not in vma)
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree.map(cast, tree)


def _flatten_like(fn_name: str, what: str, tree: Any, treedef) -> list:
    try:
        return treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"`optlab.{fn_name}`: {what} must have the tree structure of `params`: {err}"
        ) from None


def _mask_flags(fn_name: str, mask: Any, params: Any, treedef) -> list[bool]:
    flags = _flatten_like(fn_name, "`mask`", mask(params) if callable(mask) else mask, treedef)
    for f in flags:
        if not isinstance(f, (bool, np.bool_)):
            raise TypeError(
                f"`optlab.{fn_name}`: `mask` leaves must be Python bools (one per parameter"
                f" leaf), got {f!r}."
            )
    return [bool(f) for f in flags]


def _sharpness_aware(
    fn_name: str, inner: Any, policy: PerturbationPolicy, mask: Any, axis_name: Any
) -> optax.GradientTransformationExtraArgs:
    """The driver; ``fn_name`` is the public function that errors name."""
    if not hasattr(inner, "init") or not hasattr(inner, "update"):
        raise TypeError(
            f"`optlab.{fn_name}`: `inner` must be an optax GradientTransformation, got {inner!r}."
        )
    base = optax.with_extra_args_support(inner)

    def pmean(tree):
        return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

    def init_fn(params):
        _base.check_float_tree(fn_name, params)
        zero = jnp.zeros([], jnp.int32)
        return SharpnessAwareState(zero, base.init(params), policy.init(params))

    def update_fn(updates, state, params=None, *, grad_fn=None, **extra_args):
        _base.require_params(params)
        grad_fn = _base.require_extra_arg(fn_name, "grad_fn", grad_fn, _GRAD_FN_HOW)
        p_leaves, treedef = jax.tree.flatten(params)
        _flatten_like(fn_name, "`updates`", updates, treedef)
        _base.check_shapes(fn_name, updates, params, "`updates`")
        flags = (
            [True] * len(p_leaves) if mask is None else _mask_flags(fn_name, mask, params, treedef)
        )

        def select(tree):  # unselected leaves -> None
            return treedef.unflatten(
                [x if f else None for x, f in zip(treedef.flatten_up_to(tree), flags)]
            )

        def grad_at(point):  # the full gradient at a (selected) point, accumulation dtype
            sel = iter(jax.tree.leaves(point))
            full = treedef.unflatten([next(sel) if f else p for p, f in zip(p_leaves, flags)])
            g = grad_fn(_as_varying(_tree.tree_cast_like(full, params), axis_name))
            _flatten_like(fn_name, "`grad_fn(params)`", g, treedef)
            _base.check_shapes(fn_name, g, params, "the output of `grad_fn`")
            return _acc_floats(g)

        step, g = state.count, _acc_floats(updates)

        def perturbed_step(pstate):
            point, pstate = policy.perturb(
                select(g),
                select(_acc_floats(params)),
                pstate,
                step,
                grad_fn=lambda p: select(grad_at(p)),
            )
            return policy.combine(pmean(g), pmean(grad_at(point)), pstate, step)

        def plain_step(pstate):
            return policy.combine(pmean(g), None, pstate, step)

        def casted(branch):
            def run(pstate):
                d, new = branch(_acc_floats(pstate))
                return _tree.tree_cast_like(d, updates), _floats_like(new, pstate)

            return run

        if policy.every_k == 1:
            d, pstate = casted(perturbed_step)(state.policy_state)
        else:
            d, pstate = jax.lax.cond(
                step % policy.every_k == 0,
                casted(perturbed_step),
                casted(plain_step),
                state.policy_state,
            )
        new_updates, inner_state = base.update(d, state.inner_state, params, **extra_args)
        return new_updates, SharpnessAwareState(optax.safe_increment(step), inner_state, pstate)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sharpness_aware(
    inner: optax.GradientTransformation,
    policy: PerturbationPolicy,
    *,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Sharpness-aware wrapper of ``inner`` with a pluggable perturbation policy.

    One step at ``w`` with gradient ``g``: ``point = policy.perturb(g, w, ...)``,
    ``g_p = grad_fn(point)``, ``d = policy.combine(g, g_p, ...)`` and the update is
    ``inner.update(d, inner_state, w)`` (see :class:`PerturbationPolicy`; policies with
    ``every_k > 1`` call ``grad_fn`` every ``every_k`` steps only).

    Args:
      inner: the base optimizer (any optax transformation), applied to ``d``.
      policy: a :class:`PerturbationPolicy` (``optlab.sam_policy(rho)`` ...).
      mask: which parameter leaves are perturbed: a pytree of Python bools with the
        structure of ``params`` (``True`` = perturbed) or a callable ``params -> mask``
        (e.g. :func:`optlab.norm_layer_mask`); ``None`` perturbs every leaf. Norms are
        taken over the perturbed leaves only; the descent covers all leaves. The same
        argument of every ``*_sam`` function.
      axis_name: m-sharpness: a mapped axis name (``shard_map`` / ``pmap``); each shard
        perturbs by its local gradient and the gradients passed to ``combine`` are
        ``pmean``-ed over the axis. ``None``: no collective (global SAM if the caller
        averages). The same argument of every ``*_sam`` function; see the module notes.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose ``update`` needs the keyword
      ``grad_fn(params) -> grads``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum(p["w"] ** 2)
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.gsam_policy(rho=0.05, alpha=0.1))
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> state = tx.init(params)
      >>> grad_fn = jax.grad(loss)
      >>> updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
      >>> params = optax.apply_updates(params, updates)

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, policy_state)``.

    References:
      Foret et al., `Sharpness-Aware Minimization for Efficiently Improving
      Generalization <https://arxiv.org/abs/2010.01412>`_, 2021
    """
    if not isinstance(policy, PerturbationPolicy):
        raise TypeError(
            "`optlab.sharpness_aware`: `policy` must be a PerturbationPolicy (e.g."
            f" `optlab.sam_policy()`), got {policy!r}."
        )
    _base.check_int("sharpness_aware", every_k=policy.every_k)
    return _sharpness_aware("sharpness_aware", inner, policy, mask, axis_name)


# ---------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------

_NORM_LAYER_PATTERN = r"(?i)(norm|(^|_)(bn|ln|gn)\d*($|_))"


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def norm_layer_mask(
    params: Any,
    *,
    layer_pattern: str = _NORM_LAYER_PATTERN,
    leaf_names: tuple[str, ...] = ("scale", "bias"),
) -> Any:
    """Mask selecting the parameters of normalization layers (SAM-ON).

    A leaf is selected when its own name is in ``leaf_names`` and the name of one of its
    ancestors matches ``layer_pattern`` (by default: contains "norm", or is ``bn``,
    ``ln``, ``gn`` possibly numbered or joined by ``_``). This covers Flax linen's
    ``BatchNorm_0`` / ``LayerNorm_1`` and NNX attributes such as ``self.norm1`` or
    ``self.bn``. Pass it as ``mask`` (it is the default of :func:`masked_sam`).

    Args:
      params: a pytree of parameters (dict, Flax ``nnx.State`` ...).
      layer_pattern: regular expression searched in each ancestor name.
      leaf_names: names of the selectable leaves.

    Returns:
      A pytree of Python bools with the structure of ``params`` (``None`` kept).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> params = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
      ...           "LayerNorm_0": {"scale": jnp.ones(2), "bias": jnp.ones(2)}}
      >>> optlab.norm_layer_mask(params)
      {'Dense_0': {'bias': False, 'kernel': False}, 'LayerNorm_0': {'bias': True, 'scale': True}}

    References:
      Mueller et al., `Normalization Layers Are All That Sharpness-Aware Minimization
      Needs <https://arxiv.org/abs/2306.04226>`_, 2023
    """
    if not isinstance(layer_pattern, str):
        raise TypeError(
            "`optlab.norm_layer_mask`: `layer_pattern` must be a regular expression string, got"
            f" layer_pattern={layer_pattern!r} of type {type(layer_pattern).__name__}."
        )
    try:
        regex = re.compile(layer_pattern)
    except re.error as e:
        raise ValueError(
            "`optlab.norm_layer_mask`: `layer_pattern` is not a valid regular expression,"
            f" got layer_pattern={layer_pattern!r}: {e}."
        ) from None

    def flag(path, leaf):
        del leaf
        names = [_key_name(k) for k in path]
        if not names or names[-1] not in leaf_names:
            return False
        return any(regex.search(n) for n in names[:-1])

    return jax.tree_util.tree_map_with_path(flag, params)


# ---------------------------------------------------------------------------
# Built-in policies: the math, on float32 trees (hyperparameters checked by the callers)
# ---------------------------------------------------------------------------


def _at(value: Any, step: jax.Array) -> jax.Array:
    """A hyperparameter or schedule at ``step``, as a float32 scalar."""
    return jnp.asarray(value(step) if callable(value) else value, jnp.float32)


def _no_state(params: Any) -> tuple:
    del params
    return ()


def _vdot(a: Any, b: Any) -> jax.Array:
    """``<a, b>`` as a sum of products: ``optax.tree.vdot``'s ``jnp.vdot`` contracts the
    sharded axes, which explicit sharding refuses."""
    return optax.tree.sum(optax.tree.mul(a, b))


def _along(tree: Any, length: jax.Array) -> Any:
    """``length * tree / ||tree||`` (zero for a zero tree)."""
    return optax.tree.scale(_tree.safe_div(length, _tree.global_norm(tree)), tree)


def _sam(rho):
    def perturb(grads, params, state, step, **unused):
        return optax.tree.add(params, _along(grads, _at(rho, step))), state

    return PerturbationPolicy(_no_state, perturb)


def _unnormalized(rho):
    def perturb(grads, params, state, step, **unused):
        return optax.tree.add_scale(params, _at(rho, step), grads), state

    return PerturbationPolicy(_no_state, perturb)


def _asam(rho, eta):
    def perturb(grads, params, state, step, **unused):
        t = jax.tree.map(lambda w: jnp.abs(w) + eta, params)
        e = optax.tree.mul(t, _along(optax.tree.mul(t, grads), _at(rho, step)))
        return optax.tree.add(params, e), state

    return PerturbationPolicy(_no_state, perturb)


def _fisher(rho, eta):
    def perturb(grads, params, state, step, **unused):
        finv_g = jax.tree.map(lambda g: g / (1.0 + eta * g * g), grads)
        s = _tree.safe_div(_at(rho, step), jnp.sqrt(_vdot(finv_g, grads)))
        return optax.tree.add_scale(params, s, finv_g), state

    return PerturbationPolicy(_no_state, perturb)


def _gsam(rho, alpha):
    def combine(grads, perturbed_grads, state, step):
        del step
        coef = _tree.safe_div(
            _vdot(grads, perturbed_grads),
            _vdot(perturbed_grads, perturbed_grads),
        )
        g_perp = optax.tree.add_scale(grads, -coef, perturbed_grads)
        return optax.tree.add_scale(perturbed_grads, -alpha, g_perp), state

    return _sam(rho)._replace(combine=combine)


def _looksam(rho, every_k, alpha):
    def combine(grads, perturbed_grads, g_v, step):
        del step
        if perturbed_grads is None:  # no perturbation this step: re-use g_v
            s = alpha * _tree.safe_div(_tree.global_norm(grads), _tree.global_norm(g_v))
            return optax.tree.add_scale(grads, s, g_v), g_v
        coef = _tree.safe_div(_vdot(grads, perturbed_grads), _vdot(grads, grads))
        return perturbed_grads, optax.tree.add_scale(perturbed_grads, -coef, grads)

    return PerturbationPolicy(optax.tree.zeros_like, _sam(rho).perturb, combine, every_k=every_k)


def _multistep(rho, num_steps, step_size, normalize):
    def perturb(grads, params, state, step, *, grad_fn, **unused):
        radius = _at(rho, step)
        size = radius if step_size is None else _at(step_size, step)

        def ascend(e, g):  # e <- P_rho(e + size * u(g))
            e = optax.tree.add(e, _along(g, size) if normalize else optax.tree.scale(size, g))
            n = _tree.global_norm(e)
            return optax.tree.scale(jnp.where(n > radius, _tree.safe_div(radius, n), 1.0), e)

        def more(i, e):
            del i
            return ascend(e, grad_fn(optax.tree.add(params, e)))

        e = ascend(optax.tree.zeros_like(params), grads)
        e = jax.lax.fori_loop(1, num_steps, more, e) if num_steps > 1 else e
        return optax.tree.add(params, e), state

    return PerturbationPolicy(_no_state, perturb)


def _random(rho, seed):
    def perturb(grads, params, key, step, **unused):
        del grads
        key, sub = jax.random.split(key)
        z = optax.tree.random_like(sub, params)
        return optax.tree.add(params, _along(z, _at(rho, step))), key

    return PerturbationPolicy(lambda params: jax.random.PRNGKey(seed), perturb)


# ---------------------------------------------------------------------------
# Public policies (for sharpness_aware) and methods: validate, then build
# ---------------------------------------------------------------------------


def sam_policy(rho: optax.ScalarOrSchedule = 0.05) -> PerturbationPolicy:
    """SAM's policy: the point ``w + rho g / ||g||``, descent along its gradient.

    See :func:`sam`. ``rho``: radius (>= 0) or a schedule.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.sam_policy(rho=0.05))
    """
    _base.check_nonnegative("sam_policy", rho=rho)
    return _sam(rho)


def unnormalized_policy(rho: optax.ScalarOrSchedule = 0.05) -> PerturbationPolicy:
    """USAM's policy: the point ``w + rho g`` (see :func:`unnormalized_sam`).

    ``rho``: scale (>= 0) or a schedule.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.unnormalized_policy(rho=0.05))
    """
    _base.check_nonnegative("unnormalized_policy", rho=rho)
    return _unnormalized(rho)


def asam_policy(
    rho: optax.ScalarOrSchedule = 0.5, eta: jax.typing.ArrayLike = 0.01
) -> PerturbationPolicy:
    """ASAM's policy: ``e = rho T^2 g / ||T g||``, ``T = |w| + eta`` (see :func:`asam`).

    ``rho``: radius (>= 0) or a schedule; ``eta``: offset of ``T`` (>= 0).

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.asam_policy(rho=0.5, eta=0.01))
    """
    _base.check_nonnegative("asam_policy", rho=rho, eta=eta)
    return _asam(rho, eta)


def fisher_policy(
    rho: optax.ScalarOrSchedule = 0.1, eta: jax.typing.ArrayLike = 1.0
) -> PerturbationPolicy:
    """Fisher SAM's policy: ``e = rho f^-1 g / sqrt(g^T f^-1 g)``, ``f = 1 + eta g^2``.

    See :func:`fisher_sam`. ``rho``: radius (>= 0) or a schedule; ``eta`` >= 0.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.fisher_policy(rho=0.1, eta=1.0))
    """
    _base.check_nonnegative("fisher_policy", rho=rho, eta=eta)
    return _fisher(rho, eta)


def gsam_policy(
    rho: optax.ScalarOrSchedule = 0.05, alpha: jax.typing.ArrayLike = 0.1
) -> PerturbationPolicy:
    """GSAM's policy: SAM's point, descent ``g_p - alpha g_perp`` (see :func:`gsam`).

    ``rho``: radius (>= 0) or a schedule; ``alpha``: weight of ``g_perp`` (>= 0).

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.gsam_policy(rho=0.05, alpha=0.1))
    """
    _base.check_nonnegative("gsam_policy", rho=rho, alpha=alpha)
    return _gsam(rho, alpha)


def looksam_policy(
    rho: optax.ScalarOrSchedule = 0.05, every_k: int = 5, alpha: jax.typing.ArrayLike = 0.7
) -> PerturbationPolicy:
    """LookSAM's policy: SAM every ``every_k`` steps, ``g_v`` re-used in between.

    See :func:`looksam`. ``rho``: radius (>= 0) or a schedule; ``every_k``: period (int
    >= 1); ``alpha`` >= 0. Its state is ``g_v`` (shapes and dtypes of the params).

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.looksam_policy(rho=0.05, every_k=5))
    """
    _base.check_nonnegative("looksam_policy", rho=rho, alpha=alpha)
    _base.check_int("looksam_policy", every_k=every_k)
    return _looksam(rho, every_k, alpha)


def multistep_policy(
    rho: optax.ScalarOrSchedule = 0.05,
    num_steps: int = 3,
    step_size: jax.typing.ArrayLike | None = None,
    *,
    normalize: bool = True,
) -> PerturbationPolicy:
    """Multi-step ascent (AMP) projected onto the ``rho`` ball (see :func:`multistep_sam`).

    ``rho``: radius (>= 0) or a schedule; ``num_steps``: ascent steps (int >= 1);
    ``step_size``: ascent step (> 0, ``None`` = ``rho``); ``normalize``: normalize each
    ascent gradient.

    Example:
      >>> import optax, optlab
      >>> policy = optlab.multistep_policy(rho=0.05, num_steps=3, step_size=0.02)
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), policy)
    """
    _base.check_nonnegative("multistep_policy", rho=rho)
    _base.check_int("multistep_policy", num_steps=num_steps)
    if step_size is not None:
        _base.check_positive("multistep_policy", step_size=step_size)
    return _multistep(rho, num_steps, step_size, normalize)


def random_policy(rho: optax.ScalarOrSchedule = 0.05, seed: int = 0) -> PerturbationPolicy:
    """Random-direction policy: ``e = rho z / ||z||``, ``z ~ N(0, I)`` (see :func:`random_sam`).

    ``rho``: radius (>= 0) or a schedule; ``seed`` (int >= 0) of the key in its state.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.random_policy(rho=0.05, seed=0))
    """
    _base.check_nonnegative("random_policy", rho=rho)
    _base.check_int("random_policy", minimum=0, seed=seed)
    return _random(rho, seed)


def sam(
    inner: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.05,
    *,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Sharpness-Aware Minimization: ``inner`` applied to the gradient at ``w + e``.

    ``e = rho g / ||g||``, the first-order solution of ``max_{||e|| <= rho} L(w + e)``;
    the update is ``inner`` of ``grad_fn(w + e)``, taken at ``w``. ``rho = 0`` is
    exactly ``inner``. For loops that cannot pass ``grad_fn`` (two ``update`` calls per
    step), use ``optax.contrib.sam`` (see the module notes).

    Args:
      inner: the base optimizer.
      rho: perturbation radius (>= 0) or a schedule.
      mask: the perturbed leaves (see :func:`sharpness_aware`).
      axis_name: m-sharpness axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum((p - 1.0) ** 2)
      >>> tx = optlab.sam(optax.sgd(0.1), rho=0.05)
      >>> params = jnp.zeros(3)
      >>> state = tx.init(params)
      >>> for _ in range(50):
      ...     grads = jax.grad(loss)(params)
      ...     updates, state = tx.update(grads, state, params, grad_fn=jax.grad(loss))
      ...     params = optax.apply_updates(params, updates)
      >>> bool(jnp.allclose(params, 1.0, atol=0.05))
      True

      With Flax NNX (BatchNorm and Dropout handled: see :func:`optlab.nnx_grad_fn`)::

        optimizer = nnx.Optimizer(model, optlab.sam(optax.sgd(0.1)), wrt=nnx.Param)
        grads = nnx.grad(loss_fn)(model)
        optimizer.update(model, grads, grad_fn=optlab.nnx_grad_fn(model, loss_fn))

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, ())``.

    References:
      Foret et al., `Sharpness-Aware Minimization for Efficiently Improving
      Generalization <https://arxiv.org/abs/2010.01412>`_, 2021
    """
    _base.check_nonnegative("sam", rho=rho)
    return _sharpness_aware("sam", inner, _sam(rho), mask, axis_name)


def unnormalized_sam(
    inner: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.05,
    *,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Unnormalized SAM (USAM): the gradient at ``w + rho g`` (no normalization).

    Args:
      inner: the base optimizer.
      rho: perturbation scale (>= 0) or a schedule.
      mask: the perturbed leaves (see :func:`sharpness_aware`).
      axis_name: m-sharpness axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import optax, optlab
      >>> tx = optlab.unnormalized_sam(optax.sgd(0.1), rho=0.05)

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, ())``.

    References:
      Andriushchenko and Flammarion, `Towards Understanding Sharpness-Aware Minimization
      <https://arxiv.org/abs/2206.06232>`_, 2022
    """
    _base.check_nonnegative("unnormalized_sam", rho=rho)
    return _sharpness_aware("unnormalized_sam", inner, _unnormalized(rho), mask, axis_name)


def asam(
    inner: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.5,
    eta: jax.typing.ArrayLike = 0.01,
    *,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Adaptive SAM: the perturbation ``e = rho T^2 g / ||T g||``, ``T = |w| + eta``.

    Element-wise adaptive radius: large weights are perturbed more. With ``eta = 0`` the
    perturbed point is invariant to element-wise rescalings: for ``v = a * w``
    (``a > 0``) and ``L'(v) = L(v / a)``, ASAM at ``v`` perturbs to ``a * (w + e_w)``
    (e.g. one ReLU layer scaled by ``c`` and the next by ``1 / c``).

    Args:
      inner: the base optimizer.
      rho: perturbation radius (>= 0; the paper uses about 10x SAM's) or a schedule.
      eta: offset of ``T`` so that zero weights are still perturbed (>= 0).
      mask: the perturbed leaves (see :func:`sharpness_aware`).
      axis_name: m-sharpness axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import optax, optlab
      >>> tx = optlab.asam(optax.sgd(0.1), rho=0.5, eta=0.01)

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, ())``.

    References:
      Kwon et al., `ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
      Learning of Deep Neural Networks <https://arxiv.org/abs/2102.11600>`_, 2021
    """
    _base.check_nonnegative("asam", rho=rho, eta=eta)
    return _sharpness_aware("asam", inner, _asam(rho, eta), mask, axis_name)


def gsam(
    inner: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.05,
    alpha: jax.typing.ArrayLike = 0.1,
    *,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Surrogate-gap guided SAM: SAM's point, descent ``g_p - alpha g_perp``.

    ``g_perp = g - (<g, g_p> / ||g_p||^2) g_p`` is the component of the gradient at ``w``
    orthogonal to the perturbed gradient ``g_p``; descending along ``-g_perp`` lowers the
    surrogate gap ``L(w + e) - L(w)`` without changing the perturbed loss to first order.
    ``alpha = 0`` is SAM. The paper schedules ``rho`` with the learning rate: pass a
    schedule.

    Args:
      inner: the base optimizer.
      rho: perturbation radius (>= 0) or a schedule.
      alpha: weight of the orthogonal component (>= 0).
      mask: the perturbed leaves (see :func:`sharpness_aware`).
      axis_name: m-sharpness axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import optax, optlab
      >>> tx = optlab.gsam(optax.sgd(0.1), rho=0.05, alpha=0.1)

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, ())``.

    References:
      Zhuang et al., `Surrogate Gap Guided Sharpness-Aware Minimization
      <https://arxiv.org/abs/2203.08065>`_, 2022
    """
    _base.check_nonnegative("gsam", rho=rho, alpha=alpha)
    return _sharpness_aware("gsam", inner, _gsam(rho, alpha), mask, axis_name)


def fisher_sam(
    inner: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.1,
    eta: jax.typing.ArrayLike = 1.0,
    *,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Fisher SAM: the SAM ball replaced by the diagonal-Fisher ellipsoid.

    ``f = 1 + eta g^2`` (empirical diagonal Fisher from the batch gradient) and
    ``e = rho f^-1 g / sqrt(g^T f^-1 g)``, the maximizer of the linearized loss over
    ``e^T diag(f) e <= rho^2``. ``eta = 0`` is SAM.

    Args:
      inner: the base optimizer.
      rho: perturbation radius (>= 0) or a schedule.
      eta: weight of the squared gradient in the Fisher (>= 0).
      mask: the perturbed leaves (see :func:`sharpness_aware`).
      axis_name: m-sharpness axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import optax, optlab
      >>> tx = optlab.fisher_sam(optax.sgd(0.1), rho=0.1, eta=1.0)

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, ())``.

    References:
      Kim et al., `Fisher SAM: Information Geometry and Sharpness Aware Minimisation
      <https://arxiv.org/abs/2206.04920>`_, 2022
    """
    _base.check_nonnegative("fisher_sam", rho=rho, eta=eta)
    return _sharpness_aware("fisher_sam", inner, _fisher(rho, eta), mask, axis_name)


def masked_sam(
    inner: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.05,
    *,
    mask: Any = norm_layer_mask,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """SAM that perturbs only the leaves selected by ``mask`` (SAM-ON by default).

    ``e = rho m g / ||m g||`` with ``m`` the leaf mask: unselected leaves are evaluated
    at their current value. By default :func:`norm_layer_mask` selects the scale and
    bias of normalization layers (SAM-ON); the descent still updates every parameter.

    Args:
      inner: the base optimizer.
      rho: perturbation radius (>= 0) or a schedule.
      mask: pytree of Python bools or callable ``params -> mask`` (``True`` =
        perturbed); defaults to :func:`norm_layer_mask`.
      axis_name: m-sharpness axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import optax, optlab
      >>> tx = optlab.masked_sam(optax.sgd(0.1), rho=0.05)  # SAM-ON
      >>> only_w = optlab.masked_sam(optax.sgd(0.1), mask={"w": True, "b": False})

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, ())``.

    References:
      Mueller et al., `Normalization Layers Are All That Sharpness-Aware Minimization
      Needs <https://arxiv.org/abs/2306.04226>`_, 2023
    """
    _base.check_nonnegative("masked_sam", rho=rho)
    return _sharpness_aware("masked_sam", inner, _sam(rho), mask, axis_name)


def looksam(
    inner: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.05,
    every_k: int = 5,
    alpha: jax.typing.ArrayLike = 0.7,
    *,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """LookSAM: SAM every ``every_k`` steps, the stored orthogonal gradient re-used between.

    On a perturbation step (``count % every_k == 0``) the descent is SAM's ``g_s = g_p`` and
    ``g_v = g_s - (<g, g_s> / ||g||^2) g`` (the part of ``g_s`` orthogonal to ``g``) is
    stored. Other steps skip ``grad_fn`` (under ``lax.cond``) and descend along
    ``g + alpha (||g|| / ||g_v||) g_v``: about ``1 + 1/every_k`` gradients per step. ``every_k = 1``
    is SAM.

    Args:
      inner: the base optimizer.
      rho: perturbation radius (>= 0) or a schedule.
      every_k: perturbation period (int >= 1).
      alpha: weight of the re-used component (>= 0).
      mask: the perturbed leaves (see :func:`sharpness_aware`).
      axis_name: m-sharpness axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import optax, optlab
      >>> tx = optlab.looksam(optax.sgd(0.1), rho=0.05, every_k=5, alpha=0.7)

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, g_v)``, ``g_v`` like the params.

    References:
      Liu et al., `Towards Efficient and Scalable Sharpness-Aware Minimization
      <https://arxiv.org/abs/2203.02714>`_, 2022
    """
    _base.check_nonnegative("looksam", rho=rho, alpha=alpha)
    _base.check_int("looksam", every_k=every_k)
    return _sharpness_aware("looksam", inner, _looksam(rho, every_k, alpha), mask, axis_name)


def multistep_sam(
    inner: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.05,
    num_steps: int = 3,
    step_size: jax.typing.ArrayLike | None = None,
    *,
    normalize: bool = True,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Multi-step ascent SAM (adversarial model perturbation), projected onto the rho ball.

    ``e_0 = 0``, then ``num_steps`` ascent steps ``e <- P_rho(e + step_size u)`` with
    ``u = g(w + e) / ||g(w + e)||`` (AMP's plain ``u = g(w + e)`` with
    ``normalize=False``) and ``P_rho`` the projection onto ``||e|| <= rho``; then the base
    update of the gradient at ``w + e``. ``grad_fn`` is called ``num_steps`` times (in a
    ``lax.fori_loop``). One step with the default ``step_size = rho`` is SAM.

    Args:
      inner: the base optimizer.
      rho: radius of the perturbation ball (>= 0) or a schedule.
      num_steps: ascent steps (int >= 1).
      step_size: ascent step size (> 0); ``None`` means ``rho``.
      normalize: normalize each ascent gradient.
      mask: the perturbed leaves (see :func:`sharpness_aware`).
      axis_name: m-sharpness axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import optax, optlab
      >>> tx = optlab.multistep_sam(optax.sgd(0.1), rho=0.05, num_steps=3, step_size=0.02)

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, ())``.

    References:
      Zheng et al., `Regularizing Neural Networks via Adversarial Model Perturbation
      <https://arxiv.org/abs/2010.04925>`_, 2021
    """
    _base.check_nonnegative("multistep_sam", rho=rho)
    _base.check_int("multistep_sam", num_steps=num_steps)
    if step_size is not None:
        _base.check_positive("multistep_sam", step_size=step_size)
    policy = _multistep(rho, num_steps, step_size, normalize)
    return _sharpness_aware("multistep_sam", inner, policy, mask, axis_name)


def random_sam(
    inner: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.05,
    seed: int = 0,
    *,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Random-direction perturbation: the gradient at ``w + rho z / ||z||``, ``z ~ N(0, I)``.

    A baseline for SAM (and the perturbation of random weight perturbation methods). The
    PRNG key is in the state and split at every step; under ``axis_name`` every device
    draws the same direction.

    Args:
      inner: the base optimizer.
      rho: perturbation radius (>= 0) or a schedule.
      seed: PRNG seed (int >= 0).
      mask: the perturbed leaves (see :func:`sharpness_aware`).
      axis_name: m-sharpness axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import optax, optlab
      >>> tx = optlab.random_sam(optax.sgd(0.1), rho=0.05, seed=0)

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, key)``.

    References:
      Liu et al., `Random Sharpness-Aware Minimization
      <https://openreview.net/forum?id=htUvh7xPoa>`_, 2022
    """
    _base.check_nonnegative("random_sam", rho=rho)
    _base.check_int("random_sam", minimum=0, seed=seed)
    return _sharpness_aware("random_sam", inner, _random(rho, seed), mask, axis_name)


# ---------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------


def sharpness_diagnostics(
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    rho: jax.typing.ArrayLike = 0.05,
    *,
    key: jax.Array | None = None,
    num_power_iters: int = 20,
) -> dict[str, jax.Array]:
    """Sharpness measures at ``params``: SAM loss increase and top Hessian eigenvalue.

    ``sharpness = L(w + rho g / ||g||) - L(w)`` (the first-order SAM sharpness) and
    ``top_eigenvalue``, the Rayleigh quotient ``v^T H v`` after ``num_power_iters``
    power iterations ``v <- H v / ||H v||`` on Hessian-vector products (forward-over-
    reverse), started from a random ``v``. Power iteration finds the eigenvalue of
    largest magnitude, which is the top one near a minimum. Everything is traced
    (``lax.fori_loop``), with no host sync, so it can run inside ``jax.jit``.

    Args:
      loss_fn: ``params -> scalar loss``.
      params: where to measure.
      rho: SAM radius (>= 0).
      key: PRNG key of the power-iteration start (default ``PRNGKey(0)``).
      num_power_iters: power iterations (int >= 1).

    Returns:
      A dict of float32 scalars: ``loss``, ``perturbed_loss``, ``sharpness``,
      ``grad_norm``, ``top_eigenvalue``.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> loss = lambda p: 0.5 * (3.0 * p[0] ** 2 + p[1] ** 2)
      >>> d = optlab.sharpness_diagnostics(loss, jnp.array([1.0, 1.0]), rho=0.05)
      >>> round(float(d["top_eigenvalue"]), 3)
      3.0

    References:
      Foret et al., `Sharpness-Aware Minimization for Efficiently Improving
      Generalization <https://arxiv.org/abs/2010.01412>`_, 2021
    """
    _base.check_nonnegative("sharpness_diagnostics", rho=rho)
    _base.check_int("sharpness_diagnostics", num_power_iters=num_power_iters)
    if not callable(loss_fn):
        raise TypeError(
            "`optlab.sharpness_diagnostics`: `loss_fn` must be a callable params -> scalar loss,"
            f" got loss_fn={loss_fn!r} of type {type(loss_fn).__name__}."
        )
    out = jax.eval_shape(loss_fn, params)  # traced once, abstractly: no compute
    if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        raise ValueError(
            "`optlab.sharpness_diagnostics`: `loss_fn` must return a real scalar loss, got"
            f" {jax.tree.map(lambda x: f'{x.dtype}{list(x.shape)}', out)}."
        )
    if key is None:
        key = jax.random.PRNGKey(0)
    loss, g = jax.value_and_grad(loss_fn)(params)
    g = _acc_floats(g)
    g_norm = _tree.global_norm(g)
    perturbed = optax.tree.add(_acc_floats(params), _along(g, jnp.asarray(rho, jnp.float32)))
    perturbed_loss = loss_fn(_tree.tree_cast_like(perturbed, params))

    def hvp(v):  # H v (forward-over-reverse), float32 in and out
        tangent = _tree.tree_cast_like(v, params)
        return _acc_floats(jax.jvp(jax.grad(loss_fn), (params,), (tangent,))[1])

    def power_step(i, v):
        del i
        return _along(hvp(v), 1.0)

    v = _along(optax.tree.random_like(key, params, dtype=jnp.float32), 1.0)
    v = jax.lax.fori_loop(0, num_power_iters, power_step, v)
    eig = _tree.safe_div(_vdot(v, hvp(v)), _vdot(v, v))
    loss32 = jnp.asarray(loss, jnp.float32)
    perturbed32 = jnp.asarray(perturbed_loss, jnp.float32)
    return {
        "loss": loss32,
        "perturbed_loss": perturbed32,
        "sharpness": perturbed32 - loss32,
        "grad_norm": g_norm,
        "top_eigenvalue": eig,
    }


# ---------------------------------------------------------------------------
# Issue 12 (part B): more transformed-point methods on the one driver
# ---------------------------------------------------------------------------

__all__ += [
    "awp_policy",
    "awp_sam",
    "extragradient",
    "extragradient_policy",
    "gradnorm_policy",
    "gradnorm_sam",
]


def _awp(gamma):
    def perturb(grads, params, state, step, **unused):
        g = _at(gamma, step)
        e = jax.tree.map(
            lambda gl, wl: _tree.safe_div(g * jnp.linalg.norm(wl), jnp.linalg.norm(gl)) * gl,
            grads,
            params,
        )
        return optax.tree.add(params, e), state

    return PerturbationPolicy(_no_state, perturb)


def _gradnorm(gamma, eps):
    def combine(grads, perturbed_grads, state, step):
        c = _at(gamma, step) / eps
        return optax.tree.add_scale(optax.tree.scale(1.0 - c, grads), c, perturbed_grads), state

    return _unnormalized(eps)._replace(combine=combine)


def _neg(value):
    """``-value`` as a hyperparameter or schedule, for a look-ahead ``w - lr g``."""
    if callable(value):
        return lambda step: -_at(value, step)
    return -value


def awp_policy(gamma: optax.ScalarOrSchedule = 0.01) -> PerturbationPolicy:
    """AWP's policy: per leaf ``e_l = gamma ||w_l|| g_l / ||g_l||``. See :func:`awp_sam`.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.awp_policy(gamma=0.01))
    """
    _base.check_nonnegative("awp_policy", gamma=gamma)
    return _awp(gamma)


def awp_sam(
    inner: optax.GradientTransformation,
    gamma: optax.ScalarOrSchedule = 0.01,
    *,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Adversarial weight perturbation: a layer-wise radius relative to the weight's norm.

    Each leaf (layer) ``l`` is perturbed along its own gradient, by ``gamma`` times its
    weight norm: ``e_l = gamma ||w_l|| g_l / ||g_l||`` (a leaf with zero gradient or zero
    weights is not perturbed); the update is ``inner`` of ``grad_fn(w + e)``, taken at ``w``.
    ``gamma = 0`` is exactly ``inner``. This is the one-step form of AWP (the paper's
    adversarial *input* perturbation is outside the optimizer).

    Args:
      inner: the base optimizer.
      gamma: relative radius (>= 0) or a schedule.
      mask: the perturbed leaves (see :func:`sharpness_aware`).
      axis_name: m-sharpness axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum((p - 1.0) ** 2)
      >>> tx = optlab.awp_sam(optax.sgd(0.1), gamma=0.01)
      >>> params = jnp.zeros(3)
      >>> state = tx.init(params)
      >>> for _ in range(50):
      ...     grads = jax.grad(loss)(params)
      ...     updates, state = tx.update(grads, state, params, grad_fn=jax.grad(loss))
      ...     params = optax.apply_updates(params, updates)
      >>> bool(jnp.allclose(params, 1.0, atol=0.05))
      True

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, ())``.

    References:
      Wu, Xia and Wang, `Adversarial Weight Perturbation Helps Robust Generalization
      <https://arxiv.org/abs/2004.05884>`_, 2020
    """
    _base.check_nonnegative("awp_sam", gamma=gamma)
    return _sharpness_aware("awp_sam", inner, _awp(gamma), mask, axis_name)


def gradnorm_policy(gamma: optax.ScalarOrSchedule = 0.01, eps: float = 0.01) -> PerturbationPolicy:
    """Finite-difference gradient-norm penalty's policy. See :func:`gradnorm_sam`.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.gradnorm_policy(0.01, eps=0.01))
    """
    _base.check_nonnegative("gradnorm_policy", gamma=gamma)
    _base.check_positive("gradnorm_policy", eps=eps)
    return _gradnorm(gamma, eps)


def gradnorm_sam(
    inner: optax.GradientTransformation,
    gamma: optax.ScalarOrSchedule = 0.01,
    eps: float = 0.01,
    *,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Gradient-norm regularization by a forward finite difference.

    The gradient of ``L(w) + (gamma / 2) ||grad L(w)||^2`` is ``g + gamma H g``; ``H g`` is
    approximated by ``(grad L(w + eps g) - g) / eps``, so ``inner`` receives::

        d = g + (gamma / eps) (grad L(w + eps g) - g)

    (``gamma = eps`` is the unnormalized SAM gradient). ``gamma = 0`` is exactly ``inner``.

    Args:
      inner: the base optimizer.
      gamma: penalty strength (>= 0) or a schedule.
      eps: finite-difference step (> 0).
      mask: the perturbed leaves (see :func:`sharpness_aware`).
      axis_name: m-sharpness axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum((p - 1.0) ** 2)
      >>> tx = optlab.gradnorm_sam(optax.sgd(0.1), gamma=0.05, eps=0.01)
      >>> params, grad_fn = jnp.zeros(3), jax.grad(loss)
      >>> updates, _ = tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)
      >>> print(jnp.round(updates, 4))  # d = -2 + (0.05 / 0.01) (-2.04 + 2), times -0.1
      [0.22 0.22 0.22]

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, ())``.

    References:
      Karakida, Takase, Hayase and Osawa, `Understanding Gradient Regularization in Deep
      Learning: Efficient Finite-Difference Computation and Implicit Bias
      <https://arxiv.org/abs/2210.02720>`_, 2023
    """
    _base.check_nonnegative("gradnorm_sam", gamma=gamma)
    _base.check_positive("gradnorm_sam", eps=eps)
    return _sharpness_aware("gradnorm_sam", inner, _gradnorm(gamma, eps), mask, axis_name)


def extragradient_policy(learning_rate: optax.ScalarOrSchedule = 0.1) -> PerturbationPolicy:
    """Extragradient's policy: the look-ahead point ``w - lr g``. See :func:`extragradient`.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.extragradient_policy(0.1))
    """
    _base.check_nonnegative("extragradient_policy", learning_rate=learning_rate)
    return _unnormalized(_neg(learning_rate))


def extragradient(
    inner: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule = 0.1,
    *,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Extragradient: ``inner`` applied to the gradient at the look-ahead ``w - lr g``.

    The extrapolation step ``w_half = w - lr g`` is taken with its own ``learning_rate``;
    the update is ``inner`` of ``grad_fn(w_half)``, taken from ``w`` (with
    ``inner = optax.sgd(lr)`` this is Korpelevich's method). ``learning_rate = 0`` is
    exactly ``inner``.

    Args:
      inner: the base optimizer (the update step).
      learning_rate: extrapolation step (>= 0) or a schedule.
      mask: the extrapolated leaves (see :func:`sharpness_aware`).
      axis_name: m-sharpness axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum((p - 1.0) ** 2)
      >>> tx = optlab.extragradient(optax.sgd(0.1), learning_rate=0.1)
      >>> params, grad_fn = jnp.zeros(3), jax.grad(loss)
      >>> updates, _ = tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)
      >>> print(jnp.round(updates, 4))  # -0.1 * the gradient at the look-ahead 0 + 0.1 * 2
      [0.16 0.16 0.16]

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, ())``.

    References:
      Korpelevich, `The extragradient method for finding saddle points and other
      problems <https://cs.uwaterloo.ca/~y328yu/classics/extragrad.pdf>`_, 1976
    """
    _base.check_nonnegative("extragradient", learning_rate=learning_rate)
    return _sharpness_aware(
        "extragradient", inner, _unnormalized(_neg(learning_rate)), mask, axis_name
    )


# ---------------------------------------------------------------------------
# Issue 12: random weight perturbation, weight prediction, online-to-non-convex
# ---------------------------------------------------------------------------

__all__ += [
    "o2nc",
    "o2nc_policy",
    "rwp",
    "rwp_policy",
    "xgrad",
]


def _zip_selected(fn: Callable, selected: Any, full: Any) -> Any:
    """``fn(x, y)`` on the leaves ``x`` of ``selected`` that are not ``None`` (the driver's
    masked trees) and the matching leaves ``y`` of ``full`` (a state shaped like the
    params); ``None`` where ``selected`` is ``None``."""
    leaves, treedef = jax.tree.flatten(selected, is_leaf=lambda x: x is None)
    other = treedef.flatten_up_to(full)
    return treedef.unflatten([None if x is None else fn(x, y) for x, y in zip(leaves, other)])


def _keep_unselected(selected: Any, full: Any) -> Any:
    """``full`` with its selected leaves replaced by those of ``selected``."""
    leaves, treedef = jax.tree.flatten(selected, is_leaf=lambda x: x is None)
    other = treedef.flatten_up_to(full)
    return treedef.unflatten([y if x is None else x for x, y in zip(leaves, other)])


def _filter_sums(x: jax.Array) -> jax.Array:
    """ARWP's per-filter sum: over every axis but the last for kernels, per element else."""
    if x.ndim <= 1:
        return x
    return jnp.sum(x, axis=tuple(range(x.ndim - 1)), keepdims=True)


def _rwp(sigma, alpha, seed, eta=None, beta=0.9):
    adaptive = eta is not None

    def init(params):
        key = jax.random.PRNGKey(seed)
        return (key, optax.tree.zeros_like(params)) if adaptive else key

    def perturb(grads, params, state, step, **unused):
        del grads
        key, fisher = state if adaptive else (state, None)
        key, sub = jax.random.split(key)
        z = optax.tree.random_like(sub, params)
        s = _at(sigma, step)
        e = jax.tree.map(lambda w, zl: s * _tree.unitwise_norm(w) * zl, params, z)
        if adaptive:  # ARWP: less noise along filters with large accumulated g_p^2
            c = _at(eta, step)
            e = _zip_selected(lambda el, f: el / jnp.sqrt(1.0 + c * _filter_sums(f)), e, fisher)
        return optax.tree.add(params, e), ((key, fisher) if adaptive else key)

    def combine(grads, perturbed_grads, state, step):
        if adaptive:
            b = _at(beta, step)
            key, fisher = state
            fisher = jax.tree.map(lambda f, gp: b * f + gp * gp, fisher, perturbed_grads)
            state = (key, fisher)
        # (1 - alpha) g + alpha g_p, written so that g_p == g gives g exactly
        diff = optax.tree.sub(perturbed_grads, grads)
        return optax.tree.add_scale(grads, _at(alpha, step), diff), state

    return PerturbationPolicy(init, perturb, combine)


def _xgrad(prediction_steps):
    def perturb(grads, params, last_update, step, **unused):
        del grads
        s = _at(prediction_steps, step)
        return _zip_selected(lambda w, u: w + s * u, params, last_update), last_update

    return PerturbationPolicy(optax.tree.zeros_like, perturb)


def _o2nc(seed, uniform=jax.random.uniform):
    def init(params):  # a copy: the state must not alias (donated) parameter buffers
        return jax.random.PRNGKey(seed), jax.tree.map(jnp.copy, params)

    def perturb(grads, params, state, step, **unused):
        del grads, step
        key, previous = state
        key, sub = jax.random.split(key)
        s = jnp.asarray(uniform(sub, (), jnp.float32), jnp.float32)
        point = _zip_selected(lambda w, p: p + s * (w - p), params, previous)
        return point, (key, _keep_unselected(params, previous))

    return PerturbationPolicy(init, perturb)


def rwp_policy(
    sigma: optax.ScalarOrSchedule = 0.01,
    alpha: optax.ScalarOrSchedule = 0.5,
    seed: int = 0,
    *,
    eta: optax.ScalarOrSchedule | None = None,
    beta: optax.ScalarOrSchedule = 0.9,
) -> PerturbationPolicy:
    """Mixed random weight perturbation's policy (see :func:`rwp`).

    ``sigma``: relative noise scale (>= 0) or a schedule; ``alpha``: weight of the
    perturbed gradient, in ``[0, 1]``, or a schedule; ``seed`` (int >= 0) of the key in
    its state; ``eta`` (>= 0, ``None``: not adaptive) and ``beta`` (in ``[0, 1)``): the
    adaptive noise of m-ARWP.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.rwp_policy(sigma=0.01))
    """
    _base.check_nonnegative("rwp_policy", sigma=sigma)
    _base.check_unit_interval("rwp_policy", alpha=alpha)
    _base.check_int("rwp_policy", minimum=0, seed=seed)
    if eta is not None:
        _base.check_nonnegative("rwp_policy", eta=eta)
    _base.check_decay("rwp_policy", beta=beta)
    return _rwp(sigma, alpha, seed, eta, beta)


def rwp(
    inner: optax.GradientTransformation,
    sigma: optax.ScalarOrSchedule = 0.01,
    alpha: optax.ScalarOrSchedule = 0.5,
    seed: int = 0,
    *,
    eta: optax.ScalarOrSchedule | None = None,
    beta: optax.ScalarOrSchedule = 0.9,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Mixed random weight perturbation (m-RWP): a gradient at Gaussian-perturbed weights.

    The perturbation is filter-wise Gaussian, scaled by the weights' norm::

        e ~ N(0, sigma^2 ||w_f||^2)  for each filter (output unit) f
        d = (1 - alpha) grad L(w) + alpha grad L(w + e)

    and ``inner`` is applied to ``d`` at ``w``. ``||w_f||`` is the norm of the filter:
    over every axis but the last for kernels (the output axis in Flax's ``(..., in,
    out)`` layout; PyTorch's first axis), over the whole leaf for vectors and scalars
    (biases, norm scales); a zero filter is not perturbed. The PRNG key is in the state
    and split at every step; under ``axis_name`` every device draws the same noise.
    ``sigma = 0`` is exactly ``inner``, and so is ``alpha = 0`` (``alpha`` is the
    paper's mixing weight lambda). The mixture keeps the
    clean-loss gradient in the direction (RWP alone, ``alpha = 1``, converges slowly at
    the large ``sigma`` that helps generalization). The reference code takes the two
    gradients on the two halves of the batch: pass a ``grad_fn`` on the other half to
    do the same.

    With ``eta`` (m-ARWP, the paper's adaptive perturbation) the noise of each filter is
    divided by ``sqrt(1 + eta F_f)``, where ``F <- beta F + g_p^2`` accumulates the
    squared perturbed gradients (a sum, not an average, as in the reference code) and
    ``F_f`` is its sum over the filter (per element for vectors and scalars): directions
    of high curvature get less noise. The state then also holds ``F``.

    Args:
      inner: the base optimizer.
      sigma: noise scale relative to each filter's norm (>= 0) or a schedule.
      alpha: weight of the perturbed gradient, in ``[0, 1]``, or a schedule.
      seed: PRNG seed (int >= 0).
      eta: m-ARWP's strength (>= 0) or a schedule; ``None`` (default): m-RWP, no ``F``.
      beta: m-ARWP's decay of ``F``, in ``[0, 1)``.
      mask: the perturbed leaves (see :func:`sharpness_aware`).
      axis_name: m-sharpness axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum((p - 1.0) ** 2)
      >>> tx = optlab.rwp(optax.sgd(0.1), sigma=0.01, alpha=0.5)
      >>> params = jnp.full(3, 0.5)
      >>> state = tx.init(params)
      >>> for _ in range(50):
      ...     grads = jax.grad(loss)(params)
      ...     updates, state = tx.update(grads, state, params, grad_fn=jax.grad(loss))
      ...     params = optax.apply_updates(params, updates)
      >>> bool(jnp.allclose(params, 1.0, atol=0.05))
      True

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, key)``; with ``eta``,
      ``(count, inner_state, (key, F))``, ``F`` shaped like the params.

    References:
      Li et al., `Revisiting Random Weight Perturbation for Efficiently Improving
      Generalization <https://arxiv.org/abs/2404.00357>`_, 2024
    """
    _base.check_nonnegative("rwp", sigma=sigma)
    _base.check_unit_interval("rwp", alpha=alpha)
    _base.check_int("rwp", minimum=0, seed=seed)
    if eta is not None:
        _base.check_nonnegative("rwp", eta=eta)
    _base.check_decay("rwp", beta=beta)
    return _sharpness_aware("rwp", inner, _rwp(sigma, alpha, seed, eta, beta), mask, axis_name)


def xgrad(
    inner: optax.GradientTransformation,
    prediction_steps: optax.ScalarOrSchedule = 1.0,
    *,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """XGrad: ``inner`` applied to the gradient at the weights it predicts ``s`` steps ahead.

    Before the gradient is taken, the weights ``s`` steps ahead are predicted by the
    update rule of the optimizer, ``w_hat = w - s lr Delta_w``, with ``Delta_w`` the
    optimizer's direction from its state (SGD with momentum: the momentum; Adam:
    ``m_hat / (sqrt(v_hat) + eps)``). For any ``inner`` this is its last update ``u``
    (its rule on its current state, with the learning rate of the last step: the
    reference code's prediction for SGD with momentum and Adam at a constant learning
    rate; here the predicted step also carries ``inner``'s weight decay, if any)::

        w_hat = w + s u_{t-1},   g_hat = grad_fn(w_hat),   u_t = inner(g_hat) at w

    The gradient passed as ``update``'s first argument (at ``w``) is only checked, not
    used: XGrad takes one gradient per step, at ``w_hat`` (zeros shaped like the params
    may be passed instead). ``prediction_steps = 0`` is exactly ``inner``, and so is the
    first step (``u_{-1} = 0``).

    Args:
      inner: the base optimizer (whose update rule predicts the weights).
      prediction_steps: ``s``, the number of steps predicted (>= 0) or a schedule.
      mask: the predicted leaves (see :func:`sharpness_aware`).
      axis_name: data-parallel axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum((p - 1.0) ** 2)
      >>> tx = optlab.xgrad(optax.sgd(0.05, momentum=0.9), prediction_steps=1)
      >>> params = jnp.zeros(3)
      >>> state = tx.init(params)
      >>> for _ in range(100):
      ...     grads = jax.grad(loss)(params)
      ...     updates, state = tx.update(grads, state, params, grad_fn=jax.grad(loss))
      ...     params = optax.apply_updates(params, updates)
      >>> bool(jnp.allclose(params, 1.0, atol=0.01))
      True

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, last_update)``,
      ``last_update`` shaped like the params.

    References:
      Guan, Li, Shi and Meng, `XGrad: Boosting Gradient-Based Optimizers With Weight
      Prediction <https://arxiv.org/abs/2305.18240>`_, 2023
    """
    _base.check_nonnegative("xgrad", prediction_steps=prediction_steps)
    driver = _sharpness_aware("xgrad", inner, _xgrad(prediction_steps), mask, axis_name)

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, new_state = driver.update(updates, state, params, **extra_args)
        last = _tree.tree_cast_like(new_updates, state.policy_state)
        return new_updates, new_state._replace(policy_state=last)

    return optax.GradientTransformationExtraArgs(driver.init, update_fn)


def o2nc_policy(seed: int = 0) -> PerturbationPolicy:
    """Online-to-non-convex conversion's policy: a uniform point on the last segment.

    See :func:`o2nc`. ``seed`` (int >= 0) of the key in its state; the state is
    ``(key, previous_params)``.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.o2nc_policy(seed=0))
    """
    _base.check_int("o2nc_policy", minimum=0, seed=seed)
    return _o2nc(seed)


def o2nc(
    inner: optax.GradientTransformation,
    seed: int = 0,
    *,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Online-to-non-convex conversion (O2NC): the gradient at a random point of the last step.

    With ``x_{t-1}`` the previous iterate and ``x_t = w`` the current one, the gradient is
    taken at a uniformly random point of the segment between them::

        s ~ U[0, 1],   y = x_{t-1} + s (x_t - x_{t-1}),   g_hat = grad_fn(y)

    and ``inner`` (the online learner of the conversion, which outputs the next step
    ``x_{t+1} - x_t``) is applied to ``g_hat``. Then ``g_hat`` is an unbiased estimate of
    the average gradient along the step (``F(x_t) - F(x_{t-1}) = E <g_hat, x_t -
    x_{t-1}>``), which the conversion's guarantees for non-smooth non-convex losses rest
    on. The paper's learner is online gradient descent on the steps, projected on a ball
    ``||Delta|| <= D``. The first step (``x_{-1} = x_0``) is exactly ``inner``. The key
    is in the state and split at every step; under ``axis_name`` every device draws the
    same ``s``.

    Args:
      inner: the online learner producing the steps (any optax transformation).
      seed: PRNG seed (int >= 0).
      mask: the leaves evaluated on the segment (the others at ``x_t``; see
        :func:`sharpness_aware`).
      axis_name: data-parallel axis (see :func:`sharpness_aware`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum(jnp.abs(p - 1.0))  # non-smooth
      >>> tx = optlab.o2nc(optax.sgd(optax.linear_schedule(0.1, 0.0, 200), 0.9))
      >>> params = jnp.zeros(3)
      >>> state = tx.init(params)
      >>> for _ in range(200):
      ...     grads = jax.grad(loss)(params)
      ...     updates, state = tx.update(grads, state, params, grad_fn=jax.grad(loss))
      ...     params = optax.apply_updates(params, updates)
      >>> bool(jnp.allclose(params, 1.0, atol=0.1))
      True

    State:
      :class:`SharpnessAwareState` ``(count, inner_state, (key, previous_params))``.

    References:
      Cutkosky, Mehta and Orabona, `Optimal Stochastic Non-smooth Non-convex Optimization
      through Online-to-Non-convex Conversion <https://arxiv.org/abs/2302.03775>`_, 2023
    """
    _base.check_int("o2nc", minimum=0, seed=seed)
    return _sharpness_aware("o2nc", inner, _o2nc(seed), mask, axis_name)
