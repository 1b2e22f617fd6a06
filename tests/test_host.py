"""`jaxnn.host.retain_freed_memory`: large freed blocks are reused without page faults."""

import os
import platform
import subprocess
import sys

import pytest
from fresh import fresh_python

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.toml")

# Allocates, touches and frees a 64 MB block, then does it again and prints the minor page
# faults of the second round: with glibc's defaults the block is a fresh mmap each time.
PROBE = """
import ctypes, resource, sys
from jaxnn import host
applied = host.retain_freed_memory() if sys.argv[1] == "retain" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
def touch():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env={**os.environ, "GLIBC_TUNABLES": ""}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_freed_blocks_are_reused_without_page_faults():
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    _, default_faults = probe("default")
    if default_faults < pages // 2:  # e.g. transparent huge pages set to "always"
        pytest.skip(f"this kernel faults {default_faults} times for {pages} fresh pages")
    applied, retained_faults = probe("retain")
    assert applied == "True"
    assert retained_faults < pages // 20


SPLIT = """
import sys
from jaxnn import host
count = host.split_cpu(int(sys.argv[1]) or None)
import jax
print(count, jax.device_count(), host.split_cpu(5), host.split_count(), host.cpu_cores())
"""


def test_split_cpu_shows_a_device_per_core_unless_xla_flags_set_them():
    count, devices, again, recorded, cores = map(int, fresh_python(SPLIT, "3").split())
    assert (count, devices, again, recorded) == (3, 3, 0, 3)  # too late the second time
    count, devices, _, recorded, cores = map(int, fresh_python(SPLIT, "0").split())
    assert count == devices == recorded == cores >= 1
    count, devices, _, recorded, _ = map(int, fresh_python(SPLIT, "3", devices=2).split())
    assert (count, devices, recorded) == (0, 2, 0)  # the user's XLA_FLAGS win


# A sweep plan on a CPU split in two: the trial axis is sharded when the modelled training is
# long, kept on one device when sharding would cost more compiling than it saves; devices
# the user forced are always used.
PLAN = """
import sys
from jaxnn import host
if sys.argv[1] == "split":
    host.split_cpu(2)
from jaxnn import config, run, sweep
for epochs, hidden in ((2, [6]), (40, [512, 512])):
    cfg = config.load(sys.argv[2], ["output.plots=false", f"training.epochs={epochs}",
                                    f"model.hidden={hidden}",
                                    "sweep.grid={learning_rate = [0.02, 0.05, 0.1, 0.2]}"])
    plan = sweep.make_plan(cfg, run.prepare(cfg))
    print(plan.devices, [len(c) % 2 for g in plan.groups for c in g.chunks])
"""


def test_a_split_cpu_shards_only_sweeps_whose_training_outweighs_compiling():
    assert fresh_python(PLAN, "split", TINY).split() == ["1", "[0]", "2", "[0]"]
    assert fresh_python(PLAN, "forced", TINY, devices=2).split() == ["2", "[0]", "2", "[0]"]


def test_cli_cpu_devices(tmp_path):
    def jaxnn(*args):
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        return subprocess.run([sys.executable, "-m", "jaxnn.cli", "sweep", TINY, *args],
                              capture_output=True, text=True, timeout=300, env=env,
                              cwd=tmp_path)

    long_sweep = ["--plan", "--set", "training.epochs=40", "--set", "model.hidden=[512, 512]",
                  "--set", "sweep.grid={learning_rate = [0.02, 0.05, 0.1, 0.2]}"]
    assert "(3 device(s))" in jaxnn("--cpu-devices", "3", *long_sweep).stdout
    assert "(1 device(s))" in jaxnn("--cpu-devices", "1", *long_sweep).stdout
    # 4 trials shard over at most 4 devices: more would only pad the chunk
    assert "(4 device(s))" in jaxnn("--cpu-devices", "64", *long_sweep).stdout
    assert "(2 device(s))" in jaxnn("--cpu-devices", "64", "--set", "sweep.batch=2",
                                    *long_sweep).stdout  # a grid trains 2 at a time
    for bad in (["--cpu-devices", "0"], ["--cpu-devices", "2", "--distributed"]):
        result = jaxnn(*bad)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and "--cpu-devices" in result.stderr


# The `jaxnn` command with its objects frozen for the garbage collector: at exit, atexit
# functions and pending weakref finalizers still run, after the last freeze, and its files
# are whole.
COMMAND = """
import atexit, gc, sys, weakref
from jaxnn import cli

class Resource:
    pass

atexit.register(lambda: print("atexit", gc.get_freeze_count() > 10_000))
held = Resource()
weakref.finalize(held, print, "finalized")
sys.argv = ["jaxnn", *sys.argv[1:]]
cli.console_main()
"""


def test_the_command_freezes_its_objects_and_still_exits_cleanly(tmp_path):
    workdir = tmp_path / "run"
    out = fresh_python(COMMAND, "train", TINY, "--workdir", str(workdir), "--set",
                       "training.epochs=2", "--set", "output.plots=false",
                       "--no-compile-cache")
    assert out.splitlines()[-2:] == ["finalized", "atexit True"]
    assert (workdir / "metrics.jsonl").read_text().count("\n") == 2
    assert (workdir / "summary.json").stat().st_size > 0
