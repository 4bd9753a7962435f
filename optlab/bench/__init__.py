"""optlab's main job: named optimizers compared on two small tasks.

``python3 -m optlab.bench`` (``--task digits``, the default) trains a small MLP on
scikit-learn's digits (:mod:`optlab.bench.digits`); ``--task lm`` trains a byte-level
transformer on the Python standard library's source (:mod:`optlab.bench.lm`, with the
model in :mod:`optlab.bench.model` and the corpus in :mod:`optlab.bench.data`).
Other benchmarks call :func:`optlab.bench.lm.train`. The command line is
:mod:`optlab.bench.cli`.

The digits job's functions are re-exported here (``optlab.bench.run``, ...), as before
the job became a package. Importing this package does not import Flax or read the
corpus; the submodules do when used.
"""

from optlab.bench.cli import main, parse_learning_rates
from optlab.bench.common import SAM_RHO, UNSUPPORTED, check_names, tree_bytes
from optlab.bench.digits import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_OPTIMIZERS,
    DEFAULT_OUT,
    DEFAULT_SEEDS,
    DEFAULT_STEPS,
    FALLBACK_LR,
    LEARNING_RATES,
    Result,
    build_optimizer,
    format_table,
    learning_rate_for,
    load_data,
    make_mlp,
    plot_losses,
    run,
    train_one,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_OPTIMIZERS",
    "DEFAULT_OUT",
    "DEFAULT_SEEDS",
    "DEFAULT_STEPS",
    "FALLBACK_LR",
    "LEARNING_RATES",
    "SAM_RHO",
    "UNSUPPORTED",
    "Result",
    "build_optimizer",
    "check_names",
    "format_table",
    "learning_rate_for",
    "load_data",
    "main",
    "make_mlp",
    "parse_learning_rates",
    "plot_losses",
    "run",
    "train_one",
    "tree_bytes",
]
