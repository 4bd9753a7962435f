"""Test configuration.

* An error on implicit rank promotion catches shape bugs. Dtype promotion stays
  "standard": optax's own ``MultiSteps`` fails under "strict" (it mixes int32 and
  float32), so silent upcasts are caught instead by the bfloat16 runs of the
  property suite, which require updates and state to keep their dtypes.
* x64 stays off globally so float32 / bfloat16 defaults are the real ones; tests
  that need float64 use the ``x64`` fixture.
* ``tests/`` is on ``sys.path`` (pytest's rootdir import mode), so tests import
  ``helpers`` and the ``cases`` registry package directly.
* Hypothesis profiles, chosen with ``HYPOTHESIS_PROFILE`` (default ``fast``):

  - ``fast``: one example per test that does not set ``max_examples`` itself (the shared
    property suite): hypothesis' simplest example, which ``helpers.pytrees`` makes a fixed
    tree with leaves of rank 0-3 (``helpers.rich_tree``) and every hyperparameter
    strategy at its simplest value. Derandomized, so every run checks the same inputs.
  - ``thorough`` (nightly-style): 20 examples per such test, random trees, values, scales
    and hyperparameters, a fresh seed every run (hypothesis prints how to reproduce a
    failure).
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

_HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile(
    "fast", max_examples=1, derandomize=True, deadline=None, suppress_health_check=_HEALTH
)
settings.register_profile(
    "thorough", max_examples=20, derandomize=False, deadline=None, suppress_health_check=_HEALTH
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


@pytest.fixture
def x64():
    """Enable float64 for one test."""
    with jax.enable_x64(True):
        yield
