"""Strict numerics for every test (as Equinox's suite does), one XLA compilation cache for
the run, and a PRNG key fixture."""

import os
import shutil
import subprocess
import sys
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
# XLA's older CPU emitters compile the suite's many one-operation programs (eager ops) in
# ~30 ms against ~45 ms for its fusion emitters (layer and normalization tests: 149 -> 107 s).
# XLA aborts on a flag it does not know, so that one is added only where this jaxlib takes it.
FAST_COMPILE_FLAGS = ["--xla_backend_optimization_level=0",
                      "--xla_llvm_disable_expensive_passes=true"]
OPTIONAL_FLAGS = ["--xla_cpu_use_fusion_emitters=false"]


def _xla_accepts(flags: list[str]) -> bool:
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1)"],
                           env={**os.environ, "XLA_FLAGS": " ".join(flags),
                                "JAX_PLATFORMS": "cpu"}, capture_output=True, check=False)
    return probe.returncode == 0


if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    flags = [os.environ.get("XLA_FLAGS", ""), *FAST_COMPILE_FLAGS]
    if _xla_accepts([*flags, *OPTIONAL_FLAGS]):
        flags += OPTIONAL_FLAGS
    os.environ["XLA_FLAGS"] = " ".join(flags).strip()

import jax  # noqa: E402 (after the environment it reads)
import pytest  # noqa: E402

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
