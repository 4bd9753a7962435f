"""optlab: gradient transformations from the literature, as optax combinators.

Everything public is re-exported here flat (``optlab.sam``, ``optlab.swa`` ...).
Implementation modules are private and grouped by concern:

=====================  ==================================================
module                 concern
=====================  ==================================================
``_clipping``          gradient clipping family
``_normalization``     normalization and projection (sign, Newton-Schulz, LARS/LAMB, AdamP ...)
``_momentum``          momentum and adaptive moments (Adam family, Lion, diffGrad, MARS ...)
``_second_order``      curvature: Hessian diagonal (Sophia, AdaHessian, OASIS), M-FAC
``_averaging``         weight averaging inside the optimizer (SWA, EMA, LAWA, Lookahead)
``_sharpness``         sharpness-aware minimization family
``_privacy``           differential privacy (DP-SGD)
``_multi_objective``   combining per-objective gradients (UPGrad, PCGrad, MGDA, Aligned-MTL)
``_merging``           offline model merging (soups, SLERP, Model Stock)
``_memory_efficient``  memory-efficient state (Subset-Norm, GaLore, FRUGAL, BAdam, 8-bit)
``_combinators``       generic wrappers (skip non-finite steps ...)
``_replicas``          training across replicas (DiLoCo, FedAvg/FedOpt, NoLoCo, gossip)
``_communication``     compressed communication with error feedback, bytes on the wire
``_schedules``         learning-rate schedules (WSD, 1cycle, refinement ...) and scaling rules
``_step_sizes``        step-size rules (Polyak, AdaGrad-norm, AdaGO) and parameter-free methods
``_aliases``           named optimizers: chains of the above (and DP-SGD)
``_registry``          ``optlab.get``, ``optlab.available``, ``optlab.describe``: the top
                       floor, a table of ``_aliases``; nothing below imports it
``_flax_utils``        Flax helpers (BatchNorm statistics, SAM's ``grad_fn`` for NNX, Linen
                       ``apply_gradients``, named-chain states in ``flax.serialization``)
=====================  ==================================================
"""

import types as _types

from optlab._aliases import *  # noqa: F401,F403
from optlab._averaging import *  # noqa: F401,F403
from optlab._clipping import *  # noqa: F401,F403
from optlab._combinators import *  # noqa: F401,F403
from optlab._communication import *  # noqa: F401,F403
from optlab._flax_utils import *  # noqa: F401,F403
from optlab._memory_efficient import *  # noqa: F401,F403
from optlab._merging import *  # noqa: F401,F403
from optlab._momentum import *  # noqa: F401,F403
from optlab._multi_objective import *  # noqa: F401,F403
from optlab._normalization import *  # noqa: F401,F403
from optlab._privacy import *  # noqa: F401,F403
from optlab._registry import *  # noqa: F401,F403
from optlab._replicas import *  # noqa: F401,F403
from optlab._schedules import *  # noqa: F401,F403
from optlab._second_order import *  # noqa: F401,F403
from optlab._sharpness import *  # noqa: F401,F403
from optlab._step_sizes import *  # noqa: F401,F403

__version__ = "0.1.0"

# Each `from optlab._x import *` above also bound the submodule `_x` here (Python binds a
# loaded submodule in its package): the modules that export names are those with an `__all__`.
_MODULES = tuple(
    module
    for name, module in sorted(vars().items())
    if isinstance(module, _types.ModuleType)
    and module.__name__ == f"{__name__}.{name}"
    and getattr(module, "__all__", None)
)
__all__ = sorted({name for module in _MODULES for name in module.__all__})


def _check_unique_exports() -> None:
    seen: dict[str, str] = {}
    for module in _MODULES:
        for name in module.__all__:
            if name in seen:
                raise ImportError(
                    f"optlab: `{name}` is exported by both {seen[name]} and {module.__name__}"
                )
            if globals().get(name) is not getattr(module, name):
                raise ImportError(f"optlab: `{name}` of {module.__name__} is not re-exported")
            seen[name] = module.__name__


_check_unique_exports()
del _check_unique_exports
