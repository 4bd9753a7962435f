"""Sharpness-aware minimization family: one driver, pluggable perturbation policies.

Every method here follows the same two-gradient recipe. At the current point ``w``
with gradient ``g``, a *policy* builds a perturbation ``e`` (SAM: ``rho g / ||g||``),
the gradient ``g_p`` is evaluated at ``w + e``, the policy turns ``(g, g_p)`` into a
descent direction ``d`` (SAM: ``d = g_p``) and the base optimizer is applied to ``d``
at the *unperturbed* point ``w``. :func:`sharpness_aware` is that driver;
:func:`sam`, :func:`asam`, :func:`gsam`, :func:`fisher_sam`, :func:`masked_sam`,
:func:`looksam`, :func:`multistep_sam`, :func:`random_sam` and
:func:`unnormalized_sam` are thin calls of it with a built-in policy.

Two ways to obtain the second gradient
--------------------------------------
``mode="grad_fn"`` (default): ``update(grads, state, params, *, grad_fn)`` where
``grad_fn(params) -> grads`` evaluates the loss gradient at any point (the library-wide
protocol, shared with the other ``grad_fn`` users). One call is one full SAM step::

    grad_fn = jax.grad(lambda p: loss(p, batch))
    updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)

With Flax NNX, ``nnx.Optimizer.update(model, grads, grad_fn=...)`` forwards the keyword
to ``tx.update``; ``params`` is then the ``nnx.State`` of the ``wrt`` variables (plain
arrays), so ``grad_fn`` takes and returns such a state (see :func:`sam`).

``mode="two_call"``: for loops that cannot pass a function. Calls alternate, like
``optax.contrib.sam``'s default mode: the *ascent* call receives the gradient at ``w``
and returns the perturbation as the update (the parameters move to ``w + e``); the
*descent* call receives the gradient at ``w + e`` and returns ``w - (w + e) + u`` (the
perturbation is undone and the base update ``u`` of the perturbed gradient is applied).
Multi-step policies take ``num_steps`` ascent calls. The state keeps ``w`` and its
gradient; its layout is the same in every phase.

m-sharpness and data parallelism
--------------------------------
*Global SAM*: average the gradients over the data axis yourself, in ``grads`` and inside
``grad_fn`` (``jax.lax.pmean``), and leave ``axis_name=None``: every device then uses the
same perturbation. *m-SAM* (m = per-device batch): pass local (per-shard) gradients and
a local ``grad_fn`` with ``axis_name="data"``: each shard perturbs by its own gradient and
the perturbed gradients (and the unperturbed ones, where a policy uses them) are
``pmean``-ed over the axis before the base optimizer, so the replicated parameters and
optimizer state stay identical. Under ``jax.shard_map`` with ``check_vma=True``, a
gradient with respect to replicated (invariant) parameters is summed over the axis by
the transpose rule: compute the local ``grads`` at
``jax.lax.pcast(params, "data", to="varying")`` (or use ``check_vma=False``). The driver
calls ``grad_fn`` at points it marks as varying, so ``grad_fn = lambda p:
jax.grad(loss)(p, local_batch)`` returns local gradients::

    def step(params, opt_state, x, y):  # inside jax.shard_map, x and y sharded on "data"
        grad_fn = lambda p: jax.grad(loss)(p, x, y)
        grads = grad_fn(jax.lax.pcast(params, "data", to="varying"))
        updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
        return optax.apply_updates(params, updates), opt_state  # replicated: out_specs P()
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _base, _tree

__all__ = [
    "PerturbationPolicy",
    "SharpnessAwareState",
    "sharpness_aware",
    "sam",
    "asam",
    "gsam",
    "fisher_sam",
    "masked_sam",
    "looksam",
    "multistep_sam",
    "random_sam",
    "unnormalized_sam",
    "sam_policy",
    "asam_policy",
    "fisher_policy",
    "gsam_policy",
    "looksam_policy",
    "multistep_policy",
    "random_policy",
    "unnormalized_policy",
    "norm_layer_mask",
    "sharpness_diagnostics",
]

GradFn = Callable[[Any], Any]
_MODES = ("grad_fn", "two_call")

# ---------------------------------------------------------------------------
# Tree math (float32 accumulation, ``None`` leaves skipped)
# ---------------------------------------------------------------------------


_f32 = _tree.to_acc


def _vdot(a: Any, b: Any) -> jax.Array:
    total = jnp.zeros((), jnp.float32)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        total = total + jnp.sum(_f32(x) * _f32(y))
    return total


def _norm(a: Any) -> jax.Array:
    return jnp.sqrt(_vdot(a, a))


def _scale(tree: Any, s: jax.Array) -> Any:
    return jax.tree.map(lambda x: _f32(x) * s, tree)


_cast_like = _tree.tree_cast_like


def _pmean(tree: Any, axis_name: Any) -> Any:
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


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
        if vma is None:
            return x
        missing = tuple(n for n in names if n not in vma)
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree.map(cast, tree)


# ---------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------


class PerturbationPolicy(NamedTuple):
    """How a sharpness-aware method perturbs the weights and combines the two gradients.

    A policy is plain functions; :func:`sharpness_aware` drives them. Custom methods
    build one directly.

    Attributes:
      init: ``params -> policy_state`` (any pytree of arrays; ``()`` if stateless).
      ascent: ``(e, g, params, rho, policy_state) -> (e, policy_state)``: one ascent
        step. ``g`` is the gradient at ``params + e``; ``e`` is the current perturbation
        (zeros, float32, at the first step). The three trees hold only the *perturbed*
        leaves (those selected by the driver's ``mask``), as lists. Return float32.
      descent: ``(g, g_p, policy_state) -> (d, policy_state)``: the descent direction
        from the gradient ``g`` at ``w`` and ``g_p`` at ``w + e`` (full trees). ``None``
        means ``d = g_p``.
      num_steps: ascent steps per update (``grad_fn`` is called ``num_steps`` times).
      every: perturb only when ``count % every == 0``; other steps use ``reuse``.
      reuse: ``(g, policy_state) -> d`` on steps without perturbation (``every > 1``).
      name: a label for error messages and ``repr``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> def ascent(e, g, params, rho, state):  # sign-SAM: e = rho * sign(g) / sqrt(n)
      ...     n = sum(x.size for x in g)
      ...     return [rho * jnp.sign(x) / max(n, 1) ** 0.5 for x in g], state
      >>> policy = optlab.PerturbationPolicy(init=lambda p: (), ascent=ascent)
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), policy, rho=0.05)
    """

    init: Callable[[Any], Any]
    ascent: Callable[..., tuple[Any, Any]]
    descent: Callable[..., tuple[Any, Any]] | None = None
    num_steps: int = 1
    every: int = 1
    reuse: Callable[[Any, Any], Any] | None = None
    name: str = "custom"


def _no_state(params: Any) -> tuple:
    del params
    return ()


def _sam_ascent(e, g, params, rho, state):
    del e, params
    return _scale(g, _tree.safe_div(rho, _norm(g))), state


def sam_policy() -> PerturbationPolicy:
    """The SAM perturbation ``e = rho g / ||g||`` and descent ``d = g_p``.

    The first-order solution of ``max_{||e|| <= rho} L(w + e)``.

    Returns:
      A :class:`PerturbationPolicy` for :func:`sharpness_aware`.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.sam_policy(), rho=0.05)

    References:
      Foret et al., `Sharpness-Aware Minimization for Efficiently Improving
      Generalization <https://arxiv.org/abs/2010.01412>`_, 2021
    """
    return PerturbationPolicy(init=_no_state, ascent=_sam_ascent, name="sam")


def unnormalized_policy() -> PerturbationPolicy:
    """Unnormalized SAM (USAM): ``e = rho g`` and ``d = g_p``.

    Returns:
      A :class:`PerturbationPolicy` for :func:`sharpness_aware`.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.unnormalized_policy(), rho=0.05)

    References:
      Andriushchenko and Flammarion, `Towards Understanding Sharpness-Aware Minimization
      <https://arxiv.org/abs/2206.06232>`_, 2022
    """

    def ascent(e, g, params, rho, state):
        del e, params
        return _scale(g, jnp.asarray(rho, jnp.float32)), state

    return PerturbationPolicy(init=_no_state, ascent=ascent, name="unnormalized")


def asam_policy(eta: jax.typing.ArrayLike = 0.01) -> PerturbationPolicy:
    """Adaptive SAM: ``e = rho T^2 g / ||T g||`` with ``T = |w| + eta`` element-wise.

    With ``eta = 0`` the perturbed point is invariant to element-wise rescalings: for
    ``v = a * w`` (``a > 0``) and a loss ``L'(v) = L(v / a)``, ASAM at ``v`` perturbs to
    ``a * (w + e_w)``, the image of the perturbed point at ``w``.

    Args:
      eta: offset added to ``|w|`` so zero weights are still perturbed (>= 0).

    Returns:
      A :class:`PerturbationPolicy` for :func:`sharpness_aware`.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.asam_policy(0.01), rho=0.5)

    References:
      Kwon et al., `ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
      Learning of Deep Neural Networks <https://arxiv.org/abs/2102.11600>`_, 2021
    """
    _base.check_nonnegative("asam_policy", eta=eta)

    def ascent(e, g, params, rho, state):
        del e
        t = [jnp.abs(_f32(p)) + eta for p in params]
        tg = [ti * _f32(gi) for ti, gi in zip(t, g)]
        s = _tree.safe_div(rho, _norm(tg))
        return [ti * tgi * s for ti, tgi in zip(t, tg)], state

    return PerturbationPolicy(init=_no_state, ascent=ascent, name="asam")


def fisher_policy(eta: jax.typing.ArrayLike = 1.0) -> PerturbationPolicy:
    """Fisher SAM: the SAM ball replaced by the diagonal-Fisher ellipsoid.

    ``f = 1 + eta g^2`` (empirical diagonal Fisher from the batch gradient) and
    ``e = rho f^{-1} g / sqrt(g^T f^{-1} g)``, the maximizer of the linearized loss over
    ``e^T diag(f) e <= rho^2``. ``eta = 0`` is SAM.

    Args:
      eta: weight of the squared gradient in the Fisher approximation (>= 0).

    Returns:
      A :class:`PerturbationPolicy` for :func:`sharpness_aware`.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.fisher_policy(1.0), rho=0.1)

    References:
      Kim et al., `Fisher SAM: Information Geometry and Sharpness Aware Minimisation
      <https://arxiv.org/abs/2206.04920>`_, 2022
    """
    _base.check_nonnegative("fisher_policy", eta=eta)

    def ascent(e, g, params, rho, state):
        del e, params
        g32 = [_f32(x) for x in g]
        finv_g = [x / (1.0 + eta * x * x) for x in g32]
        denom = jnp.sqrt(_vdot(finv_g, g32))
        s = _tree.safe_div(rho, denom)
        return [x * s for x in finv_g], state

    return PerturbationPolicy(init=_no_state, ascent=ascent, name="fisher")


def gsam_policy(alpha: jax.typing.ArrayLike = 0.1) -> PerturbationPolicy:
    """GSAM: SAM perturbation, descent ``d = g_p - alpha g_perp``.

    ``g`` (the gradient at ``w``) is split into its component along ``g_p`` and the
    orthogonal rest ``g_perp = g - (<g, g_p> / ||g_p||^2) g_p``; descending along
    ``-g_perp`` lowers the surrogate gap ``L(w + e) - L(w)`` without changing the
    perturbed loss to first order. ``alpha = 0`` is SAM.

    Args:
      alpha: weight of the orthogonal component (>= 0).

    Returns:
      A :class:`PerturbationPolicy` for :func:`sharpness_aware`.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.gsam_policy(0.1), rho=0.05)

    References:
      Zhuang et al., `Surrogate Gap Guided Sharpness-Aware Minimization
      <https://arxiv.org/abs/2203.08065>`_, 2022
    """
    _base.check_nonnegative("gsam_policy", alpha=alpha)

    def descent(g, g_p, state):
        coef = _tree.safe_div(_vdot(g, g_p), _vdot(g_p, g_p))
        d = jax.tree.map(
            lambda gi, pi: _f32(pi) - alpha * (_f32(gi) - coef * _f32(pi)), g, g_p
        )
        return d, state

    return PerturbationPolicy(init=_no_state, ascent=_sam_ascent, descent=descent, name="gsam")


def looksam_policy(k: int = 5, alpha: jax.typing.ArrayLike = 0.7) -> PerturbationPolicy:
    """LookSAM: a full SAM step every ``k`` steps, a cheap re-use in between.

    On a perturbation step (``count % k == 0``) the descent is ``g_s = g_p`` and the
    component of ``g_s`` orthogonal to ``g``, ``g_v = g_s - (<g, g_s> / ||g||^2) g``, is
    stored. Other steps skip the second gradient and descend along
    ``g + alpha (||g|| / ||g_v||) g_v``. ``k = 1`` is SAM.

    Args:
      k: perturbation period (int >= 1).
      alpha: weight of the re-used orthogonal component (>= 0).

    Returns:
      A :class:`PerturbationPolicy` whose state is ``g_v`` (params' shapes and dtypes).

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.looksam_policy(k=5), rho=0.05)

    References:
      Liu et al., `Towards Efficient and Scalable Sharpness-Aware Minimization
      <https://arxiv.org/abs/2203.02714>`_, 2022
    """
    _base.check_int("looksam_policy", k=k)
    _base.check_nonnegative("looksam_policy", alpha=alpha)

    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def descent(g, g_p, state):
        coef = _tree.safe_div(_vdot(g, g_p), _vdot(g, g))
        g_v = jax.tree.map(lambda gi, si: _f32(si) - coef * _f32(gi), g, g_p)
        return g_p, _cast_like(g_v, state)

    def reuse(g, state):
        s = alpha * _tree.safe_div(_norm(g), _norm(state))
        return jax.tree.map(lambda gi, vi: _f32(gi) + s * _f32(vi), g, state)

    return PerturbationPolicy(
        init=init, ascent=_sam_ascent, descent=descent, every=k, reuse=reuse, name="looksam"
    )


def multistep_policy(
    num_steps: int = 3,
    step_size: jax.typing.ArrayLike | None = None,
    *,
    normalize: bool = True,
) -> PerturbationPolicy:
    """Multi-step ascent (adversarial model perturbation), projected onto the rho ball.

    ``e_0 = 0``; for ``i < num_steps``: ``e <- P_rho(e + step_size * u_i)`` with
    ``u_i = g_i / ||g_i||`` (``normalize=True``) or ``g_i`` (AMP's plain gradient step),
    ``g_i`` the gradient at ``w + e`` and ``P_rho`` the projection onto ``||e|| <= rho``.
    With ``normalize=True`` and ``step_size = rho``, one step is SAM.

    Args:
      num_steps: ascent steps (int >= 1); ``grad_fn`` is called ``num_steps`` times.
      step_size: ascent step size (> 0); ``None`` means ``rho``.
      normalize: normalize each ascent gradient.

    Returns:
      A :class:`PerturbationPolicy` for :func:`sharpness_aware`.

    Example:
      >>> import optax, optlab
      >>> policy = optlab.multistep_policy(num_steps=3, step_size=0.02)
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), policy, rho=0.05)

    References:
      Zheng et al., `Regularizing Neural Networks via Adversarial Model Perturbation
      <https://arxiv.org/abs/2010.04925>`_, 2021
    """
    _base.check_int("multistep_policy", num_steps=num_steps)
    if step_size is not None:
        _base.check_positive("multistep_policy", step_size=step_size)

    def ascent(e, g, params, rho, state):
        del params
        size = rho if step_size is None else step_size
        s = _tree.safe_div(size, _norm(g)) if normalize else jnp.asarray(size, jnp.float32)
        e = [ei + s * _f32(gi) for ei, gi in zip(e, g)]
        n = _norm(e)
        factor = jnp.where(n > rho, _tree.safe_div(rho, n), 1.0)
        return [ei * factor for ei in e], state

    return PerturbationPolicy(init=_no_state, ascent=ascent, num_steps=num_steps, name="multistep")


def random_policy(seed: int = 0) -> PerturbationPolicy:
    """Random-direction perturbation ``e = rho z / ||z||``, ``z ~ N(0, I)``.

    The gradient is not used for the ascent. The PRNG key (``uint32[2]``) lives in the
    policy state and is split at every perturbation. Under ``axis_name`` every device
    draws the same direction.

    Args:
      seed: seed of the PRNG key (int >= 0).

    Returns:
      A :class:`PerturbationPolicy` whose state is the key.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.random_policy(seed=0), rho=0.05)

    References:
      Liu et al., `Random Sharpness-Aware Minimization
      <https://openreview.net/forum?id=htUvh7xPoa>`_, 2022
    """
    _base.check_int("random_policy", minimum=0, seed=seed)

    def init(params):
        del params
        return jax.random.PRNGKey(seed)

    def ascent(e, g, params, rho, key):
        del e, params
        key, sub = jax.random.split(key)
        keys = jax.random.split(sub, max(len(g), 1))
        z = [jax.random.normal(k, jnp.shape(x), jnp.float32) for k, x in zip(keys, g)]
        return _scale(z, _tree.safe_div(rho, _norm(z))), key

    return PerturbationPolicy(init=init, ascent=ascent, name="random")


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
    regex = re.compile(layer_pattern)

    def flag(path, leaf):
        del leaf
        names = [_key_name(k) for k in path]
        if not names or names[-1] not in leaf_names:
            return False
        return any(regex.search(n) for n in names[:-1])

    return jax.tree_util.tree_map_with_path(flag, params)


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------


class SharpnessAwareState(NamedTuple):
    """State of :func:`sharpness_aware` and the SAM family.

    Attributes:
      count: descent steps taken (int32).
      phase: ``mode="two_call"``: ascent calls made in the current step (int32,
        always 0 in ``grad_fn`` mode).
      base_state: state of the base optimizer.
      policy_state: state of the policy (LookSAM's ``g_v``, the random key, or ``()``).
      anchor: ``mode="two_call"``: the unperturbed parameters ``w``; ``()`` otherwise.
      anchor_grad: ``mode="two_call"``: the gradient at ``w``; ``()`` otherwise.
    """

    count: jax.Array
    phase: jax.Array
    base_state: optax.OptState
    policy_state: Any
    anchor: Any
    anchor_grad: Any


def _mask_flags(fn_name: str, mask: Any, params: Any, treedef) -> list[bool]:
    n = treedef.num_leaves
    if mask is None:
        return [True] * n
    tree = mask(params) if callable(mask) else mask
    try:
        flags = treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"`optlab.{fn_name}`: `mask` must have the structure of `params` (one bool per"
            f" leaf): {err}"
        ) from None
    out = []
    for f in flags:
        if not isinstance(f, (bool, np.bool_)):
            raise TypeError(
                f"`optlab.{fn_name}`: `mask` leaves must be Python bools (one per parameter"
                f" leaf), got {f!r}."
            )
        out.append(bool(f))
    return out


def _make_sharpness_aware(
    fn_name: str,
    base_tx: optax.GradientTransformation,
    policy: PerturbationPolicy,
    rho: optax.ScalarOrSchedule,
    *,
    mask: Any = None,
    mode: str = "grad_fn",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    if not callable(rho):
        _base.check_nonnegative(fn_name, rho=rho)
    if not isinstance(policy, PerturbationPolicy):
        raise TypeError(
            f"`optlab.{fn_name}`: `policy` must be a PerturbationPolicy (e.g."
            f" `optlab.sam_policy()`), got {policy!r}."
        )
    if mode not in _MODES:
        raise ValueError(f"`optlab.{fn_name}`: `mode` must be one of {_MODES}, got mode={mode!r}.")
    _base.check_int(fn_name, num_steps=policy.num_steps, every=policy.every)
    if policy.every > 1 and policy.reuse is None:
        raise ValueError(f"`optlab.{fn_name}`: a policy with every > 1 needs `reuse`.")
    if not hasattr(base_tx, "init") or not hasattr(base_tx, "update"):
        raise TypeError(
            f"`optlab.{fn_name}`: `base_tx` must be an optax GradientTransformation, got"
            f" {base_tx!r}."
        )
    base = optax.with_extra_args_support(base_tx)
    two_call = mode == "two_call"
    n_steps = policy.num_steps

    def init_fn(params):
        _base.check_float_tree(fn_name, params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return SharpnessAwareState(
            count=jnp.zeros([], jnp.int32),
            phase=jnp.zeros([], jnp.int32),
            base_state=base.init(params),
            policy_state=policy.init(params),
            anchor=params if two_call else (),
            anchor_grad=zeros if two_call else (),
        )

    def rho_at(count):
        return jnp.asarray(rho(count) if callable(rho) else rho, jnp.float32)

    def select(leaves, flags):
        return [x for x, f in zip(leaves, flags) if f]

    def scatter(sel, flags, fill):
        """Full leaf list: ``sel`` on selected leaves, ``fill[i]`` elsewhere."""
        it = iter(sel)
        return [next(it) if f else x for x, f in zip(fill, flags)]

    def shift(p_leaves, e_sel, flags):
        """Parameter leaves ``w + e`` (``e`` zero on unselected leaves)."""
        it = iter(e_sel)
        return [(_f32(p) + next(it)).astype(p.dtype) if f else p for p, f in zip(p_leaves, flags)]

    def grad_leaves(fn, g, n):
        leaves = jax.tree.leaves(g)
        if len(leaves) != n:
            raise ValueError(
                f"`optlab.{fn_name}`: {fn} must have the tree structure of `params`"
                f" ({n} array leaves), got {len(leaves)} leaves."
            )
        return leaves

    # ---- grad_fn mode ----------------------------------------------------------------

    def grad_fn_update(updates, state, params, grad_fn, extra_args):
        grad_fn = _base.require_extra_arg(
            fn_name,
            "grad_fn",
            grad_fn,
            "a function `params -> grads` evaluating the loss gradient at any point, e.g."
            " `tx.update(g, s, p, grad_fn=jax.grad(loss))`; with Flax NNX,"
            " `optimizer.update(model, grads, grad_fn=...)`; or build the transform with"
            " `mode='two_call'`.",
        )
        p_leaves, p_def = jax.tree.flatten(params)
        g_leaves = grad_leaves("`updates`", updates, len(p_leaves))
        flags = _mask_flags(fn_name, mask, params, p_def)
        rho_t = rho_at(state.count)
        p_sel = select(p_leaves, flags)

        def perturbed_grad(pstate):
            e = [jnp.zeros(jnp.shape(x), jnp.float32) for x in p_sel]
            e, pstate = policy.ascent(e, select(g_leaves, flags), p_sel, rho_t, pstate)

            def more(i, carry):
                del i
                e, pstate = carry
                point = jax.tree.unflatten(p_def, shift(p_leaves, e, flags))
                gi = grad_fn(_as_varying(point, axis_name))
                gi = select(grad_leaves("`grad_fn(params)`", gi, len(p_leaves)), flags)
                return policy.ascent(e, gi, p_sel, rho_t, pstate)

            if n_steps > 1:
                e, pstate = jax.lax.fori_loop(1, n_steps, more, (e, pstate))
            point = jax.tree.unflatten(p_def, shift(p_leaves, e, flags))
            g_p = grad_fn(_as_varying(point, axis_name))
            grad_leaves("`grad_fn(params)`", g_p, len(p_leaves))
            return g_p, pstate

        def full_step(pstate):
            g_p, pstate = perturbed_grad(pstate)
            g_p = _pmean(g_p, axis_name)
            if policy.descent is None:
                return _cast_like(g_p, updates), pstate
            d, pstate = policy.descent(_pmean(updates, axis_name), g_p, pstate)
            return _cast_like(d, updates), pstate

        def cheap_step(pstate):
            d = policy.reuse(_pmean(updates, axis_name), pstate)
            return _cast_like(d, updates), pstate

        if policy.every > 1:
            d, pstate = jax.lax.cond(
                state.count % policy.every == 0, full_step, cheap_step, state.policy_state
            )
        else:
            d, pstate = full_step(state.policy_state)
        new_updates, base_state = base.update(d, state.base_state, params, **extra_args)
        return new_updates, state._replace(
            count=optax.safe_increment(state.count),
            base_state=base_state,
            policy_state=pstate,
        )

    # ---- two-call mode ---------------------------------------------------------------

    def two_call_update(updates, state, params, extra_args):
        p_leaves, p_def = jax.tree.flatten(params)
        g_leaves, g_def = jax.tree.flatten(updates)
        grad_leaves("`updates`", updates, len(p_leaves))
        flags = _mask_flags(fn_name, mask, params, p_def)
        a_leaves = p_def.flatten_up_to(state.anchor)
        rho_t = rho_at(state.count)

        def as_updates(leaves):
            return jax.tree.unflatten(
                g_def, [x.astype(g.dtype) for x, g in zip(leaves, g_leaves)]
            )

        def start(state):  # phase 0 at w: first ascent step, remember w and g
            p_sel = select(p_leaves, flags)
            e0 = [jnp.zeros(jnp.shape(x), jnp.float32) for x in p_sel]
            e, pstate = policy.ascent(e0, select(g_leaves, flags), p_sel, rho_t, state.policy_state)
            zeros = [jnp.zeros(jnp.shape(x), jnp.float32) for x in p_leaves]
            out = as_updates(scatter(e, flags, zeros))
            return out, state._replace(
                phase=jnp.ones([], jnp.int32),
                policy_state=pstate,
                anchor=params,
                anchor_grad=_cast_like(updates, state.anchor_grad),
            )

        def more(state):  # 0 < phase < num_steps, at w + e: one more ascent step
            a_sel = select(a_leaves, flags)
            p_sel = select(p_leaves, flags)
            e_cur = [_f32(p) - _f32(a) for p, a in zip(p_sel, a_sel)]
            e, pstate = policy.ascent(e_cur, select(g_leaves, flags), a_sel, rho_t,
                                      state.policy_state)
            delta = [_f32(a) + ei - _f32(p) for a, ei, p in zip(a_sel, e, p_sel)]
            zeros = [jnp.zeros(jnp.shape(x), jnp.float32) for x in p_leaves]
            out = as_updates(scatter(delta, flags, zeros))
            return out, state._replace(phase=state.phase + 1, policy_state=pstate)

        def descend(state):  # phase == num_steps, at w + e: undo e, base step on g_p
            g_p = _pmean(updates, axis_name)
            pstate = state.policy_state
            if policy.descent is None:
                d = g_p
            else:
                g = _pmean(jax.tree.unflatten(g_def, p_def.flatten_up_to(state.anchor_grad)),
                           axis_name)
                d, pstate = policy.descent(g, g_p, pstate)
            d = _cast_like(d, updates)
            anchor = jax.tree.unflatten(p_def, a_leaves)
            u, base_state = base.update(d, state.base_state, anchor, **extra_args)
            u_leaves = jax.tree.leaves(u)
            out = as_updates([_f32(a) - _f32(p) + _f32(ui)
                              for a, p, ui in zip(a_leaves, p_leaves, u_leaves)])
            return out, state._replace(
                count=optax.safe_increment(state.count),
                phase=jnp.zeros([], jnp.int32),
                base_state=base_state,
                policy_state=pstate,
            )

        def reuse(state):  # phase 0, not a perturbation step (every > 1)
            d = _cast_like(policy.reuse(_pmean(updates, axis_name), state.policy_state), updates)
            u, base_state = base.update(d, state.base_state, params, **extra_args)
            return _cast_like(u, updates), state._replace(
                count=optax.safe_increment(state.count), base_state=base_state
            )

        branches = [start, more, descend]
        if policy.every > 1:
            branches.append(reuse)
            perturb_now = state.count % policy.every == 0
            first = jnp.where(perturb_now, 0, 3)
        else:
            first = 0
        index = jnp.where(state.phase == 0, first, jnp.where(state.phase >= n_steps, 2, 1))
        return jax.lax.switch(index, branches, state)

    def update_fn(updates, state, params=None, *, grad_fn: GradFn | None = None, **extra_args):
        _base.require_params(params)
        if two_call:
            return two_call_update(updates, state, params, extra_args)
        return grad_fn_update(updates, state, params, grad_fn, extra_args)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_COMMON_ARGS_DOC = """
      mask: which parameter leaves are perturbed: a pytree of Python bools with the
        structure of ``params`` (``True`` = perturbed) or a callable ``params -> mask``
        (e.g. :func:`optlab.norm_layer_mask`); ``None`` perturbs every leaf. Norms are
        taken over the perturbed leaves only; the descent gradient covers all leaves.
      mode: ``"grad_fn"`` (one call per step, ``update(..., grad_fn=...)``) or
        ``"two_call"`` (alternating ascent and descent calls, no ``grad_fn``).
      axis_name: m-sharpness: a mapped axis name (``shard_map`` / ``pmap``); each shard
        perturbs by its local gradient and the perturbed gradients are ``pmean``-ed
        over the axis. ``None``: no collective (global SAM if the caller averages)."""


def _common_args_doc(fn):
    """Insert the shared ``mask`` / ``mode`` / ``axis_name`` argument docs."""
    fn.__doc__ = fn.__doc__.replace("\n      __COMMON_ARGS__", _COMMON_ARGS_DOC)
    return fn


@_common_args_doc
def sharpness_aware(
    base_tx: optax.GradientTransformation,
    policy: PerturbationPolicy,
    rho: optax.ScalarOrSchedule = 0.05,
    *,
    mask: Any = None,
    mode: str = "grad_fn",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Sharpness-aware wrapper of ``base_tx`` with a pluggable perturbation policy.

    One step, at parameters ``w`` with gradient ``g``: the policy's ascent builds the
    perturbation ``e`` (``num_steps`` ascent steps, each with the gradient at
    ``w + e``), ``g_p = grad_fn(w + e)``, the policy's descent gives ``d`` (``g_p`` by
    default), and the update is ``base_tx.update(d, base_state, w)``. Policies with
    ``every = k > 1`` (LookSAM) perturb only every ``k`` steps and call ``grad_fn``
    only then. See the module notes for ``mode`` and m-sharpness.

    Args:
      base_tx: the base optimizer (any optax transformation), applied to ``d``.
      policy: a :class:`PerturbationPolicy` (``optlab.sam_policy()`` ...).
      rho: perturbation radius (>= 0) or a schedule of the step count.
      __COMMON_ARGS__

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose ``update`` takes the keyword
      ``grad_fn(params) -> grads`` (``mode="grad_fn"``). State:
      :class:`SharpnessAwareState` (step count, phase, base state, policy state and, in
      two-call mode, ``w`` and its gradient).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum(p["w"] ** 2)
      >>> tx = optlab.sharpness_aware(optax.sgd(0.1), optlab.gsam_policy(0.1), rho=0.05)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> state = tx.init(params)
      >>> grad_fn = jax.grad(loss)
      >>> updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
      >>> params = optax.apply_updates(params, updates)

    References:
      Foret et al., `Sharpness-Aware Minimization for Efficiently Improving
      Generalization <https://arxiv.org/abs/2010.01412>`_, 2021
    """
    return _make_sharpness_aware(
        "sharpness_aware", base_tx, policy, rho, mask=mask, mode=mode, axis_name=axis_name
    )


@_common_args_doc
def sam(
    base_tx: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.05,
    *,
    mask: Any = None,
    mode: str = "grad_fn",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Sharpness-Aware Minimization: ``base_tx`` applied to the gradient at ``w + e``.

    ``e = rho g / ||g||`` and the update is ``base_tx`` of ``grad_fn(w + e)``, taken at
    ``w``. ``rho = 0`` is exactly ``base_tx``.

    Args:
      base_tx: the base optimizer.
      rho: perturbation radius (>= 0) or a schedule.
      __COMMON_ARGS__

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``);
      state :class:`SharpnessAwareState`.

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

      Two-call mode (each step is two calls, each with the gradient at the current
      point): ``optlab.sam(optax.sgd(0.1), mode="two_call")``.

      With Flax NNX, ``grad_fn`` maps the ``nnx.State`` of the parameters to its
      gradient::

        graphdef, _, rest = nnx.split(model, nnx.Param, ...)
        def grad_fn(param_state):
            return jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest)))(param_state)
        optimizer = nnx.Optimizer(model, optlab.sam(optax.sgd(0.1)), wrt=nnx.Param)
        optimizer.update(model, nnx.grad(loss_fn)(model), grad_fn=grad_fn)

    References:
      Foret et al., `Sharpness-Aware Minimization for Efficiently Improving
      Generalization <https://arxiv.org/abs/2010.01412>`_, 2021
    """
    return _make_sharpness_aware(
        "sam", base_tx, sam_policy(), rho, mask=mask, mode=mode, axis_name=axis_name
    )


@_common_args_doc
def unnormalized_sam(
    base_tx: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.05,
    *,
    mask: Any = None,
    mode: str = "grad_fn",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Unnormalized SAM (USAM): the gradient at ``w + rho g`` (no normalization).

    Args:
      base_tx: the base optimizer.
      rho: perturbation scale (>= 0) or a schedule.
      __COMMON_ARGS__

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``);
      state :class:`SharpnessAwareState`.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.unnormalized_sam(optax.sgd(0.1), rho=0.05)

    References:
      Andriushchenko and Flammarion, `Towards Understanding Sharpness-Aware Minimization
      <https://arxiv.org/abs/2206.06232>`_, 2022
    """
    return _make_sharpness_aware(
        "unnormalized_sam", base_tx, unnormalized_policy(), rho, mask=mask, mode=mode,
        axis_name=axis_name,
    )


@_common_args_doc
def asam(
    base_tx: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.5,
    eta: jax.typing.ArrayLike = 0.01,
    *,
    mask: Any = None,
    mode: str = "grad_fn",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Adaptive SAM: the perturbation ``e = rho T^2 g / ||T g||``, ``T = |w| + eta``.

    Element-wise adaptive radius: large weights are perturbed more. With ``eta = 0`` the
    perturbed point is invariant to element-wise rescaling of the weights (see
    :func:`asam_policy`), e.g. to scaling one ReLU layer by ``c`` and the next by
    ``1 / c``.

    Args:
      base_tx: the base optimizer.
      rho: perturbation radius (>= 0; the paper uses about 10x SAM's) or a schedule.
      eta: offset of ``T`` (>= 0).
      __COMMON_ARGS__

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``);
      state :class:`SharpnessAwareState`.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.asam(optax.sgd(0.1), rho=0.5, eta=0.01)

    References:
      Kwon et al., `ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
      Learning of Deep Neural Networks <https://arxiv.org/abs/2102.11600>`_, 2021
    """
    _base.check_nonnegative("asam", eta=eta)
    return _make_sharpness_aware(
        "asam", base_tx, asam_policy(eta), rho, mask=mask, mode=mode, axis_name=axis_name
    )


@_common_args_doc
def gsam(
    base_tx: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.05,
    alpha: jax.typing.ArrayLike = 0.1,
    *,
    mask: Any = None,
    mode: str = "grad_fn",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Surrogate-gap guided SAM: descent ``g_p - alpha g_perp``.

    ``g_perp`` is the component of the gradient at ``w`` orthogonal to the perturbed
    gradient ``g_p`` (see :func:`gsam_policy`). ``alpha = 0`` is SAM. The paper schedules
    ``rho`` proportionally to the learning rate; pass a schedule as ``rho``.

    Args:
      base_tx: the base optimizer.
      rho: perturbation radius (>= 0) or a schedule.
      alpha: weight of the orthogonal component (>= 0).
      __COMMON_ARGS__

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``);
      state :class:`SharpnessAwareState`.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.gsam(optax.sgd(0.1), rho=0.05, alpha=0.1)

    References:
      Zhuang et al., `Surrogate Gap Guided Sharpness-Aware Minimization
      <https://arxiv.org/abs/2203.08065>`_, 2022
    """
    _base.check_nonnegative("gsam", alpha=alpha)
    return _make_sharpness_aware(
        "gsam", base_tx, gsam_policy(alpha), rho, mask=mask, mode=mode, axis_name=axis_name
    )


@_common_args_doc
def fisher_sam(
    base_tx: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.1,
    eta: jax.typing.ArrayLike = 1.0,
    *,
    mask: Any = None,
    mode: str = "grad_fn",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Fisher SAM: perturbation in the diagonal-Fisher ellipsoid.

    ``e = rho f^{-1} g / sqrt(g^T f^{-1} g)`` with ``f = 1 + eta g^2`` (see
    :func:`fisher_policy`). ``eta = 0`` is SAM.

    Args:
      base_tx: the base optimizer.
      rho: perturbation radius (>= 0) or a schedule.
      eta: weight of the squared gradient in the Fisher (>= 0).
      __COMMON_ARGS__

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``);
      state :class:`SharpnessAwareState`.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.fisher_sam(optax.sgd(0.1), rho=0.1, eta=1.0)

    References:
      Kim et al., `Fisher SAM: Information Geometry and Sharpness Aware Minimisation
      <https://arxiv.org/abs/2206.04920>`_, 2022
    """
    _base.check_nonnegative("fisher_sam", eta=eta)
    return _make_sharpness_aware(
        "fisher_sam", base_tx, fisher_policy(eta), rho, mask=mask, mode=mode,
        axis_name=axis_name,
    )


def masked_sam(
    base_tx: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.05,
    *,
    mask: Any = norm_layer_mask,
    mode: str = "grad_fn",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """SAM that perturbs only the leaves selected by ``mask`` (SAM-ON by default).

    ``e = rho m g / ||m g||`` with ``m`` the leaf mask: unselected leaves are evaluated
    at their current value. By default ``mask`` is :func:`norm_layer_mask`, which
    selects the scale and bias of normalization layers (SAM-ON); the descent still
    updates every parameter.

    Args:
      base_tx: the base optimizer.
      rho: perturbation radius (>= 0) or a schedule.
      mask: pytree of Python bools or callable ``params -> mask`` (``True`` =
        perturbed); defaults to :func:`norm_layer_mask`.
      mode: ``"grad_fn"`` or ``"two_call"`` (see :func:`sam`).
      axis_name: m-sharpness axis (see :func:`sam`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``);
      state :class:`SharpnessAwareState`.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.masked_sam(optax.sgd(0.1), rho=0.05)  # SAM-ON
      >>> only_w = optlab.masked_sam(optax.sgd(0.1), mask={"w": True, "b": False})

    References:
      Mueller et al., `Normalization Layers Are All That Sharpness-Aware Minimization
      Needs <https://arxiv.org/abs/2306.04226>`_, 2023
    """
    return _make_sharpness_aware(
        "masked_sam", base_tx, sam_policy(), rho, mask=mask, mode=mode, axis_name=axis_name
    )


@_common_args_doc
def looksam(
    base_tx: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.05,
    k: int = 5,
    alpha: jax.typing.ArrayLike = 0.7,
    *,
    mask: Any = None,
    mode: str = "grad_fn",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """LookSAM: SAM every ``k`` steps, the stored orthogonal gradient re-used in between.

    See :func:`looksam_policy`. ``grad_fn`` is called only on perturbation steps (under
    ``lax.cond``), so the cost is about ``1 + 1/k`` gradients per step. ``k = 1`` is SAM.

    Args:
      base_tx: the base optimizer.
      rho: perturbation radius (>= 0) or a schedule.
      k: perturbation period (int >= 1).
      alpha: weight of the re-used component (>= 0).
      __COMMON_ARGS__

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``);
      state :class:`SharpnessAwareState` (the policy state is ``g_v``).

    Example:
      >>> import optax, optlab
      >>> tx = optlab.looksam(optax.sgd(0.1), rho=0.05, k=5, alpha=0.7)

    References:
      Liu et al., `Towards Efficient and Scalable Sharpness-Aware Minimization
      <https://arxiv.org/abs/2203.02714>`_, 2022
    """
    _base.check_int("looksam", k=k)
    _base.check_nonnegative("looksam", alpha=alpha)
    return _make_sharpness_aware(
        "looksam", base_tx, looksam_policy(k, alpha), rho, mask=mask, mode=mode,
        axis_name=axis_name,
    )


@_common_args_doc
def multistep_sam(
    base_tx: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.05,
    num_steps: int = 3,
    step_size: jax.typing.ArrayLike | None = None,
    *,
    normalize: bool = True,
    mask: Any = None,
    mode: str = "grad_fn",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Multi-step ascent SAM (adversarial model perturbation), projected onto the rho ball.

    ``num_steps`` ascent steps ``e <- P_rho(e + step_size g(w + e) / ||g(w + e)||)``
    (AMP's plain gradient step with ``normalize=False``), then the base update of the
    gradient at ``w + e``. One step with the default ``step_size = rho`` is SAM. In
    two-call mode a step takes ``num_steps + 1`` calls.

    Args:
      base_tx: the base optimizer.
      rho: radius of the perturbation ball (>= 0) or a schedule.
      num_steps: ascent steps (int >= 1).
      step_size: ascent step size (> 0); ``None`` means ``rho``.
      normalize: normalize each ascent gradient.
      __COMMON_ARGS__

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``);
      state :class:`SharpnessAwareState`.

    Example:
      >>> import optax, optlab
      >>> tx = optlab.multistep_sam(optax.sgd(0.1), rho=0.05, num_steps=3, step_size=0.02)

    References:
      Zheng et al., `Regularizing Neural Networks via Adversarial Model Perturbation
      <https://arxiv.org/abs/2010.04925>`_, 2021
    """
    _base.check_int("multistep_sam", num_steps=num_steps)
    if step_size is not None:
        _base.check_positive("multistep_sam", step_size=step_size)
    return _make_sharpness_aware(
        "multistep_sam", base_tx, multistep_policy(num_steps, step_size, normalize=normalize),
        rho, mask=mask, mode=mode, axis_name=axis_name,
    )


@_common_args_doc
def random_sam(
    base_tx: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = 0.05,
    seed: int = 0,
    *,
    mask: Any = None,
    mode: str = "grad_fn",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Random-direction perturbation: the gradient at ``w + rho z / ||z||``, ``z ~ N(0, I)``.

    A baseline for SAM (and the perturbation of random weight perturbation methods); the
    key is in the state (see :func:`random_policy`).

    Args:
      base_tx: the base optimizer.
      rho: perturbation radius (>= 0) or a schedule.
      seed: PRNG seed (int >= 0).
      __COMMON_ARGS__

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` (``update`` takes ``grad_fn``);
      state :class:`SharpnessAwareState` (the policy state is the key).

    Example:
      >>> import optax, optlab
      >>> tx = optlab.random_sam(optax.sgd(0.1), rho=0.05, seed=0)

    References:
      Liu et al., `Random Sharpness-Aware Minimization
      <https://openreview.net/forum?id=htUvh7xPoa>`_, 2022
    """
    _base.check_int("random_sam", minimum=0, seed=seed)
    return _make_sharpness_aware(
        "random_sam", base_tx, random_policy(seed), rho, mask=mask, mode=mode,
        axis_name=axis_name,
    )


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
    if key is None:
        key = jax.random.PRNGKey(0)
    loss, g = jax.value_and_grad(loss_fn)(params)
    g_norm = _norm(g)
    s = _tree.safe_div(jnp.asarray(rho, jnp.float32), g_norm)
    perturbed = jax.tree.map(lambda p, gi: (_f32(p) + s * _f32(gi)).astype(p.dtype), params, g)
    perturbed_loss = loss_fn(perturbed)

    grad = jax.grad(loss_fn)

    def hvp(v):
        return jax.jvp(grad, (params,), (v,))[1]

    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    v0 = [jax.random.normal(k, jnp.shape(x), jnp.float32) for k, x in zip(keys, leaves)]
    v0_norm = _norm(v0)
    v0 = jax.tree.unflatten(
        treedef, [(x * _tree.safe_div(1.0, v0_norm)).astype(p.dtype) for x, p in zip(v0, leaves)]
    )

    def body(i, v):
        del i
        hv = hvp(v)
        inv = _tree.safe_div(1.0, _norm(hv))
        return jax.tree.map(lambda x, p: (_f32(x) * inv).astype(p.dtype), hv, v)

    v = jax.lax.fori_loop(0, num_power_iters, body, v0)
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
