"""`jaxnn.executable_cache`: a second `jaxnn sweep` loads its compiled programs instead of
tracing, lowering and compiling them, with the same results; anything that changes the
program misses; a damaged entry is compiled again; what JAX's own cache served is not
kept; beyond its size the least recently used entries go."""

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import executable_cache, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.toml")
# A pruned sweep: a prologue, an initial-state program and a segment program.
SWEEP = ["--set", "sweep.grid={learning_rate = [0.05, 0.4], width = [4, 9]}",
         "--set", "sweep.pruning={eta = 2, min_epochs = 1}", "--set", "output.plots=false"]
# The CLI as `jaxnn` runs it (owning its process), the cache's log on stderr.
CLI = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
logging.getLogger("jaxnn.executable_cache").setLevel(logging.DEBUG)
from jaxnn import cli
sys.exit(cli.main(sys.argv[1:], owns_process=True))
"""


def jaxnn_sweep(workdir, cache, *flags, env=None) -> list[str]:
    """Runs `jaxnn sweep` on the tiny config (with ``env`` added to the environment);
    returns the cache's log lines (checking that the closing line says how many programs
    were loaded)."""
    result = subprocess.run(
        [sys.executable, "-c", CLI, "sweep", TINY, *SWEEP, *flags, "--workdir", str(workdir),
         "--compile-cache", str(cache)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split()[1] for line in result.stderr.splitlines()
             if line.startswith("jaxnn.executable_cache ")]
    assert ("of them from the compile cache" in result.stdout) == ("loaded" in lines)
    return lines


def results(workdir) -> list[str]:
    return [json.dumps(row, sort_keys=True) for row in sweep.read_results(str(workdir))]


def test_a_second_sweep_loads_its_programs_and_trains_the_same(tmp_path):
    cache = tmp_path / "cache"
    first = jaxnn_sweep(tmp_path / "first", cache)
    assert first and set(first) == {"stored"}  # every program compiled and kept
    assert not [name for name in os.listdir(cache) if name != "executables"]  # no JAX cache
    second = jaxnn_sweep(tmp_path / "second", cache)
    assert second == ["loaded"] * len(first)
    assert results(tmp_path / "second") == results(tmp_path / "first")

    # Another number of epochs is another program: compiled and kept beside the others.
    other = jaxnn_sweep(tmp_path / "other", cache, "--set", "training.epochs=3")
    assert "stored" in other

    # Damaged entries (cut in half) are compiled again and replaced; same results.
    entries = cache / "executables"
    for name in os.listdir(entries):
        data = (entries / name).read_bytes()
        (entries / name).write_bytes(data[:len(data) // 2])
    damaged = jaxnn_sweep(tmp_path / "damaged", cache)
    assert damaged.count("recompiling") == len(first) and damaged.count("stored") == len(first)
    assert results(tmp_path / "damaged") == results(tmp_path / "first")
    assert jaxnn_sweep(tmp_path / "again", cache) == ["loaded"] * len(first)


@pytest.fixture
def cache_dir(tmp_path):
    executable_cache.enable(str(tmp_path / "executables"))
    yield tmp_path / "executables"
    executable_cache.enable(None)


def _program():
    return jax.jit(lambda w, x: jnp.tanh(x @ w).sum(0))


def _compile(lowered, options):
    return lowered.compile(compiler_options=options)


def test_a_kept_program_loads_and_computes_the_same(cache_dir):
    # Shapes no other test compiles: JAX's cache, shared by the suite, has not served it.
    args = (jnp.ones((13, 2)), jnp.arange(91.0).reshape(7, 13))
    compiled, loaded = executable_cache.compile_program(_program(), args, None, ("tanh",),
                                                        _compile)
    assert not loaded and len(os.listdir(cache_dir)) == 1
    again, loaded = executable_cache.compile_program(
        _program(), args, None, ("tanh",),
        lambda *_: pytest.fail("compiled instead of loaded"))
    assert loaded
    np.testing.assert_array_equal(again(*args), compiled(*args))


def test_a_program_lowered_here_compiles_on_another_thread(cache_dir):
    """`begin_program` lowers (or loads) at once and says what the program returns;
    its ``finish`` compiles (and keeps) the program, here on a worker thread."""
    import concurrent.futures

    x = jnp.arange(85.0).reshape(5, 17)
    args = (jax.ShapeDtypeStruct((17, 2), x.dtype), x)  # the weights not made yet
    finish, out_info = executable_cache.begin_program(_program(), args, None, ("tanh",),
                                                      _compile)
    assert (out_info.shape, out_info.dtype) == ((2,), x.dtype)
    assert not os.path.exists(cache_dir) or not os.listdir(cache_dir)  # not compiled yet
    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        compiled, loaded = worker.submit(finish).result()
    assert not loaded and len(os.listdir(cache_dir)) == 1
    np.testing.assert_array_equal(compiled(jnp.ones((17, 2)), x),
                                  jnp.tanh(x @ jnp.ones((17, 2))).sum(0))

    finish, again_info = executable_cache.begin_program(
        _program(), args, None, ("tanh",), lambda *_: pytest.fail("compiled, not loaded"))
    assert (again_info.shape, again_info.dtype) == ((2,), x.dtype)
    assert finish()[1]  # loaded


def test_what_jax_cache_served_is_not_kept(cache_dir):
    """XLA serializes an executable loaded from JAX's cache without its kernels: such a
    program (JAX reports a cache hit while compiling it) is not kept."""
    def served_by_jax(lowered, options):
        jax.monitoring.record_event("/jax/compilation_cache/cache_hits")
        return _compile(lowered, options)

    args = (jnp.ones((3, 2)), jnp.ones((4, 3)))
    executable_cache.compile_program(_program(), args, None, ("tanh",), served_by_jax)
    assert not os.path.exists(cache_dir) or not os.listdir(cache_dir)


def test_the_key_covers_identity_arguments_and_options():
    args = (jnp.ones((3, 2)), jnp.ones((4, 3)))
    base = executable_cache.key(("a",), args, None)
    assert base == executable_cache.key(("a",), (jnp.zeros((3, 2)), jnp.zeros((4, 3))), None)
    assert len({base,
                executable_cache.key(("b",), args, None),
                executable_cache.key(("a",), (jnp.ones((3, 2)), jnp.ones((5, 3))), None),
                executable_cache.key(("a",), (jnp.ones((3, 2)), np.ones((4, 3), np.int32)),
                                     None),
                executable_cache.key(("a",), [*args], None),
                executable_cache.key(("a",), (jax.ShapeDtypeStruct((3, 2), args[0].dtype),
                                              args[1]), None),

                executable_cache.key(("a",), args, {"xla_backend_optimization_level": 1}),
                }) == 7
    # A ShapeDtypeStruct keys as an array of its shape, dtype and layout does.
    laid_out = jax.ShapeDtypeStruct((3, 2), args[0].dtype, sharding=args[0].sharding)
    assert executable_cache.key(("a",), (laid_out, args[1]), None) == base
    with jax.default_matmul_precision("highest"):  # a JAX setting tracing reads
        assert executable_cache.key(("a",), args, None) != base


def test_a_cache_that_is_off_compiles_and_keeps_nothing(tmp_path):
    executable_cache.enable(None)
    args = (jnp.ones((3, 2)), jnp.ones((4, 3)))
    compiled, loaded = executable_cache.compile_program(_program(), args, None, ("tanh",),
                                                        _compile)
    assert compiled(*args).shape == (2,) and not loaded
    assert executable_cache.directory() is None


def test_a_cache_it_cannot_write_still_compiles(tmp_path):
    blocked = tmp_path / "a file"
    blocked.write_text("not a directory")
    executable_cache.enable(str(blocked / "executables"))
    try:
        args = (jnp.ones((17, 2)), jnp.ones((3, 17)))
        compiled, _ = executable_cache.compile_program(_program(), args, None, ("tanh",),
                                                       _compile)
        np.testing.assert_allclose(compiled(*args), _program()(*args))
    finally:
        executable_cache.enable(None)
    assert blocked.read_text() == "not a directory"


def _kept(rows: int) -> tuple[str, tuple]:
    """Compiles and keeps a program of shapes no other test compiles; returns its entry's
    path and its arguments."""
    args = (jnp.ones((rows, 5)), jnp.ones((3, rows)))
    _, loaded = executable_cache.compile_program(_program(), args, None, ("evict",), _compile)
    assert not loaded
    name = executable_cache.key(("evict",), args, None) + executable_cache.ENTRY_SUFFIX
    return os.path.join(executable_cache.directory(), name), args


def test_beyond_its_size_the_least_recently_used_entries_go(cache_dir):
    (old, _), (used, used_args) = _kept(41), _kept(43)
    an_hour_ago = time.time() - 3600
    for path in (old, used):
        os.utime(path, (an_hour_ago, an_hour_ago))
    _, loaded = executable_cache.compile_program(
        _program(), used_args, None, ("evict",), lambda *_: pytest.fail("not loaded"))
    assert loaded  # and now the most recently used
    abandoned, writing = cache_dir / "killed.partial", cache_dir / "writing.partial"
    abandoned.write_bytes(b"x" * 10)
    writing.write_bytes(b"x" * 10)
    os.utime(abandoned, (an_hour_ago - 1, an_hour_ago - 1))
    sizes = [os.path.getsize(path) for path in (old, used)]
    # Room for two entries, not three: storing one more deletes the least recently used.
    executable_cache.enable(str(cache_dir), max_bytes=sum(sizes) + min(sizes) // 2)
    new, _ = _kept(47)
    assert sorted(os.listdir(cache_dir)) == sorted(
        os.path.basename(path) for path in (used, new, writing))


def test_what_the_cache_did_not_write_is_left_alone(cache_dir):
    """A folder named like an entry (or an abandoned write) ended the sweep with an
    IsADirectoryError when the cache was cleaned."""
    (cache_dir / "junk.partial").mkdir(parents=True)
    (cache_dir / ("aaaa" + executable_cache.ENTRY_SUFFIX)).mkdir()
    an_hour_ago = time.time() - 3600
    os.utime(cache_dir / "junk.partial", (an_hour_ago, an_hour_ago))
    kept, _ = _kept(59)
    assert executable_cache.evict(str(cache_dir), 0, keep=kept) == []
    assert sorted(os.listdir(cache_dir)) == sorted(
        ["junk.partial", "aaaa" + executable_cache.ENTRY_SUFFIX, os.path.basename(kept)])


def test_an_entry_larger_than_the_cache_is_not_kept(cache_dir):
    executable_cache.enable(str(cache_dir), max_bytes=0)
    args = (jnp.ones((53, 5)), jnp.ones((3, 53)))
    compiled, loaded = executable_cache.compile_program(_program(), args, None, ("evict",),
                                                        _compile)
    assert not loaded and not (cache_dir.exists() and os.listdir(cache_dir))
    np.testing.assert_allclose(compiled(*args), _program()(*args))


def test_the_size_limit_reaches_the_sweep_command(tmp_path):
    """``$JAXNN_COMPILE_CACHE_MAX_MB`` of 0: `jaxnn sweep` compiles, keeps nothing."""
    cache = tmp_path / "cache"
    lines = jaxnn_sweep(tmp_path / "run", cache, env={"JAXNN_COMPILE_CACHE_MAX_MB": "0"})
    assert lines and set(lines) == {"not"}  # "not kept (... more than the cache's 0)"
    assert not (cache / "executables").exists()


def test_an_entry_of_another_program_under_this_key_is_compiled_over(cache_dir):
    """An entry copied or renamed by hand over this key's loaded, and failed when called."""
    args = (jnp.ones((11, 2)), jnp.arange(55.0).reshape(5, 11))
    executable_cache.compile_program(_program(), args, None, ("tanh",), _compile)
    other = (jnp.ones((19, 2)), jnp.ones((3, 19)))  # shapes no other test compiles
    executable_cache.compile_program(_program(), other, None, ("tanh",), _compile)
    mine, theirs = (os.path.join(cache_dir, executable_cache.key(("tanh",), a, None)
                                 + executable_cache.ENTRY_SUFFIX) for a in (args, other))
    os.replace(theirs, mine)
    compiled, loaded = executable_cache.compile_program(_program(), args, None, ("tanh",),
                                                        _compile)
    assert not loaded
    np.testing.assert_allclose(compiled(*args), _program()(*args), rtol=1e-6)
