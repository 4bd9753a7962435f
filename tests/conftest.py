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
* Compilation, which is most of the suite's CPU time, is made cheaper twice over:

  - one persistent JAX compilation cache per test session (a temporary directory, removed
    at the end, shared by the pytest-xdist workers and the subprocesses they start), so a
    computation compiled by one test is a cache hit in every other test, worker or
    subprocess that builds the same program (the property suite's runs are written to
    build identical programs where they can);
  - ``JAX_DISABLE_MOST_OPTIMIZATIONS``: XLA skips its expensive optimization passes. The
    tiny programs of the tests run as fast, and numerical comparisons are made between
    runs compiled the same way. Set ``OPTLAB_TEST_OPTIMIZE=1`` to compile as users do.

  Both are plain environment variables set before jax is imported, so an outer setting
  wins (e.g. a CI cache directory kept between runs).
"""

import atexit
import os
import shutil
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # The first process to import this file (pytest's main process, before it starts the
    # xdist workers) creates the directory; the workers and subprocesses inherit it.
    _cache_dir = tempfile.mkdtemp(prefix="optlab-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
if os.environ.get("OPTLAB_TEST_OPTIMIZE", "0") in ("", "0"):
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
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
