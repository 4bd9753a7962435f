"""Test configuration.

* An error on implicit rank promotion catches shape bugs. Dtype promotion stays
  "standard": optax's own ``MultiSteps`` fails under "strict" (it mixes int32 and
  float32), so silent upcasts are caught instead by the bfloat16 runs of the
  property suite, which require updates and state to keep their dtypes.
* x64 stays off globally so float32 / bfloat16 defaults are the real ones; tests
  that need float64 use the ``x64`` fixture.
* ``tests/`` is on ``sys.path`` (pytest's rootdir import mode), so tests import
  ``helpers`` and the ``cases`` registry package directly.
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Enable float64 for one test."""
    with jax.enable_x64(True):
        yield
