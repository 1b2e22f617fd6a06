"""Strict numerics for every test (as Equinox's suite does), one XLA compilation cache for
the run, and a PRNG key fixture."""

import os
import shutil
import tempfile

# Many tests compile the same programs (the tiny configs' training runs, the layer table in
# each dtype, the CLI's subprocesses): XLA's persistent compilation cache compiles each once
# per run (22% off test_train + test_config_cli, measured from an empty cache). One directory
# per run, shared by the xdist workers and the jaxnn processes the tests start (they inherit
# the environment), removed at the end, so no test depends on an earlier run's entries.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the controlling process: workers inherit
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxnn-tests-xla-cache-")
    os.environ["JAXNN_TESTS_OWN_CACHE"] = "1"
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The suite compiles thousands of small programs and runs each once or twice: most of its
# time is LLVM optimizing machine code. Without those passes it takes ~40% less time. What
# the tests check is unchanged: XLA's operations keep their semantics (no fast math), and
# float32 tolerances come from the dtype's eps, not from one code generator's rounding.
# Benchmarks and users run at XLA's default level. Workers and the jaxnn processes tests
# start inherit the flags; a test that sets XLA_FLAGS itself appends to them.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                        "--xla_backend_optimization_level=0",
                                        "--xla_llvm_disable_expensive_passes=true"]).strip()

import jax  # after the environment it reads
import pytest

# float64 is enabled so tests can claim exactness; float32 tests build float32 arrays and
# parameters explicitly, and strict promotion turns any silent mixing into an error.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_sessionfinish(session):
    # The controlling process ends last; a cache the user set up is left alone.
    if not hasattr(session.config, "workerinput") and os.environ.get("JAXNN_TESTS_OWN_CACHE"):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def key():
    return jax.random.key(0)
