"""A sweep over two processes joined by `jax.distributed` on this machine (loopback, gloo
collectives on CPU) equals the one-process sweep, and only process 0 writes."""

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxnn import cli, config, rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.toml")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rows(workdir):
    with open(os.path.join(workdir, "results.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def launch(tmp_path, argvs, devices_per_process=1, expect=0, extra_env=None):
    """Runs ``jaxnn ARGV`` in one process of a `jax.distributed` run per ARGV; returns each
    one's ``(stdout, stderr)`` once every one has exited with status ``expect``."""
    port = free_port()
    processes = []
    for process_id, argv in enumerate(argvs):
        cwd = tmp_path / f"cwd{process_id}"
        cwd.mkdir(exist_ok=True)  # (a test may have put files there)
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
               + f" --xla_force_host_platform_device_count={devices_per_process}",
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
               "JAX_NUM_PROCESSES": str(len(argvs)), "JAX_PROCESS_ID": str(process_id),
               "PYTHONPATH": ROOT, **(extra_env or {})}
        processes.append(subprocess.Popen([sys.executable, "-m", "jaxnn.cli", *argv], cwd=cwd,
                                          env=env, text=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE))
    outputs = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=300)
        finally:
            for other in processes:
                if other.poll() is None and process.returncode is None:
                    other.kill()
        assert process.returncode == expect, err[-3000:]
        outputs.append((out, err))
    return outputs


GRID = ("sweep.grid={learning_rate = [0.02, 0.05, 0.1, 0.2, 0.4], width = [4, 9]}",)
# Process 0 asks the sampler; the others take its answer.
TPE = ("sweep.search='tpe'", "sweep.trials=10", "sweep.batch=5",
       "sweep.random={learning_rate = {distribution = 'log_uniform', low = 0.01, high = 1.0}, "
       "width = {distribution = 'int', low = 3, high = 12}}")


@pytest.mark.parametrize(("devices_per_process", "search"), [(1, GRID), (2, GRID), (1, TPE)])
def test_two_processes_equal_one(tmp_path, devices_per_process, search):
    path = tmp_path / "sweep.toml"
    path.write_text(config.dumps(config.load(TINY, [
        "output.plots=false", "training.epochs=2", "training.precision='float64'",
        "training.progress=false", "model.hidden=[6, 6]",
        "sweep.pruning={eta = 3, min_epochs = 1}", *search])))
    outputs = [out for out, _ in launch(tmp_path, [
        ["sweep", str(path), "--no-compile-cache", "--workdir", str(tmp_path / "multi"),
         "--distributed"]] * 2, devices_per_process)]
    assert "best: trial" in outputs[0]  # process 0 reports, process 1 does not
    assert "best: trial" not in outputs[1] and "sweep directory" not in outputs[1]
    assert not os.listdir(tmp_path / "cwd0") and not os.listdir(tmp_path / "cwd1")
    assert cli.main(["sweep", str(path), "--no-compile-cache",
                     "--workdir", str(tmp_path / "single")]) == 0
    multi, single = rows(tmp_path / "multi"), rows(tmp_path / "single")
    assert sorted(r["trial"] for r in multi) == list(range(10))  # each once: one writer
    by_trial = {r["trial"]: r for r in single}
    for row in multi:
        alone = by_trial[row["trial"]]
        assert (row["values"], row["status"], row["epochs"]) == \
            (alone["values"], alone["status"], alone["epochs"])
        assert row["val_loss"] == pytest.approx(alone["val_loss"], rel=1e-9)
        assert row["curves"]["val_loss"] == pytest.approx(alone["curves"]["val_loss"],
                                                          rel=1e-9)
    assert (tmp_path / "multi" / "table.txt").read_text() == \
        (tmp_path / "single" / "table.txt").read_text()


def test_distributed_needs_a_shared_directory(capsys):
    assert cli.main(["sweep", TINY, "--distributed"]) == 2
    assert "--distributed needs --workdir" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--distributed", "--num-processes", "0", "--process-id", "0"],
     "--num-processes 0: must be >= 1"),
    (["--distributed", "--num-processes", "2", "--process-id", "5"],
     "--process-id 5: must be >= 0 and below --num-processes (2)"),
    (["--distributed", "--coordinator", "notanaddress"], "expected HOST:PORT"),
    # A port that is not one segfaulted in JAX's runtime; ":" hung.
    (["--distributed", "--coordinator", "127.0.0.1:abc"], "a port from 1 to 65535"),
    (["--distributed", "--coordinator", ":"], "a port from 1 to 65535"),
    (["--num-processes", "2"], "--num-processes: only with --distributed"),
    (["--join-timeout", "5"], "--join-timeout: only with --distributed"),
    (["--distributed", "--join-timeout", "0"], "--join-timeout 0: must be >= 1 second"),
    (["--storage", "STORAGE", "--study", "s", "--heartbeat", "0"], "--heartbeat 0: must be >= 1"),
])
def test_bad_distributed_flags_are_one_error(tmp_path, capsys, flags, fragment):
    """Checked before JAX's runtime is joined (JAX raised a ValueError or an IndexError)."""
    flags = [str(tmp_path / "study.journal") if flag == "STORAGE" else flag for flag in flags]
    workdir = [] if "--storage" in flags else ["--workdir", str(tmp_path / "run")]
    assert cli.main(["sweep", TINY, *flags, *workdir]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "study.journal").exists()


@pytest.mark.parametrize("count", ["0", "2147483648"])
def test_a_device_count_beyond_what_xla_starts_is_a_usage_error(tmp_path, capsys, count):
    """2**31 devices failed to start JAX's CPU backend (a traceback); 10,000 aborted."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sweep", TINY, "--plan", "--cpu-devices", count])
    assert exit_.value.code == 2
    assert f"--cpu-devices: '{count}' is not a device count (1 to 1024)" in \
        capsys.readouterr().err


def sweep_file(path, *overrides):
    path.write_text(config.dumps(config.load(TINY, [
        "output.plots=false", "training.epochs=1", "training.progress=false",
        "sweep.grid={learning_rate = [0.1, 0.2]}", *overrides])))
    return str(path)


def bad_copy(path, copy):
    copy.write_text(pathlib.Path(path).read_text().replace("\nepochs = 1\n", "\nepochs = 0\n"))
    return str(copy)


def unreadable_results(path, workdir):
    """A sweep directory to resume whose results file the system will not read."""
    workdir.mkdir()
    (workdir / "sweep.toml").write_text(pathlib.Path(path).read_text())
    (workdir / "results.jsonl").mkdir()  # reading it: IsADirectoryError, an OSError
    return path


def data_per_process(tmp_path, path):
    """A sweep whose data file is each process's own: the same path (as a host's local
    disk), other numbers."""
    for process_id in range(2):
        (tmp_path / f"cwd{process_id}").mkdir()
        rng = np.random.default_rng(process_id)
        np.savez(tmp_path / f"cwd{process_id}" / "d.npz", x=rng.normal(size=(120, 4)),
                 y=np.arange(120) % 3)
    with contextlib.chdir(tmp_path / "cwd0"):  # (the config's checks look for the file)
        return sweep_file(path, 'data={name = "npz", path = "/proc/self/cwd/d.npz"}')


@pytest.mark.parametrize("case", ["another config", "a bad config", "a held directory",
                                  "a file the system will not read", "other data"])
def test_one_process_refused_is_refused_in_every_one(tmp_path, case):
    """Process 1 given another sweep, or other data under the same path, recorded its trials
    as process 0's (exit 0); a config only process 1 refused, a lock only process 0 found
    held, or a file only process 0 read and could not, left the other waiting in a
    collective until a backend timeout ended it with a traceback."""
    first = (data_per_process(tmp_path, tmp_path / "a.toml") if case == "other data"
             else sweep_file(tmp_path / "a.toml"))
    workdir = tmp_path / "multi"
    second = {"another config": lambda: sweep_file(tmp_path / "b.toml", "training.epochs=3"),
              "other data": lambda: first,
              "a bad config": lambda: bad_copy(first, tmp_path / "b.toml"),
              "a held directory": lambda: first,
              "a file the system will not read": lambda: unreadable_results(first, workdir),
              }[case]()
    with rundir.locked(workdir) if case == "a held directory" else contextlib.nullcontext():
        where = (["--resume", str(workdir)] if case == "a file the system will not read"
                 else [path, "--workdir", str(workdir)] for path in (first, second))
        outputs = launch(tmp_path, [["sweep", *argv, "--no-compile-cache", "--distributed"]
                                    for argv in where], expect=2)
    fragment = {"another config": "process 1 of 2: " + second + ": the config differs from "
                "process 0's at line",
                "a bad config": "process 1 of 2: " + second + ": training.epochs",
                "a held directory": "process 0 of 2: " + str(workdir) + " is in use",
                "a file the system will not read": str(workdir / "results.jsonl")
                + ": Is a directory; stopped here",
                "other data": f"process 1 of 2: {first}: data set npz (/proc/self/cwd/d.npz) "
                "differs from process 0's at line 7: 'contents: "}[case]
    for index, (out, err) in enumerate(outputs):
        refusal = [line for line in err.splitlines() if line.startswith("jaxnn: error:")]
        assert len(refusal) == 1 and fragment in refusal[0], err[-3000:]
        if case == "a file the system will not read":  # process 0's own, the others' named
            assert ("process 0 of 2: " in refusal[0]) == (index > 0)
        assert "Traceback" not in err
        assert all(line.startswith("[Gloo]") for line in out.splitlines())  # the runtime's
    if case == "another config":
        assert "'epochs = 3' where process 0 has 'epochs = 1'" in outputs[0][1]
    if case == "a file the system will not read":
        assert sorted(os.listdir(workdir)) == [".lock", "results.jsonl", "sweep.toml"]
        assert not os.listdir(workdir / "results.jsonl")
    else:
        assert os.listdir(workdir) == [".lock"] if case == "a held directory" else \
            not workdir.exists()


@pytest.mark.parametrize("started", [1, 2])
def test_processes_that_never_all_join_stop_with_one_line(tmp_path, started):
    """Fewer processes started than ``--num-processes`` (3) waited five minutes in JAX's
    runtime, which then aborted them (a C++ check failure and its stack)."""
    argv = ["sweep", sweep_file(tmp_path / "a.toml"), "--workdir", str(tmp_path / "multi"),
            "--distributed", "--join-timeout", "5"]
    outputs = launch(tmp_path, [argv] * started, expect=2, extra_env={"JAX_NUM_PROCESSES": "3"})
    for index, (_, err) in enumerate(outputs):
        lines = [line for line in err.splitlines() if "jaxnn" in line or "Check failure" in line]
        assert lines == [f"jaxnn: error: --distributed: process {index}: not all 3 processes "
                         "joined within 5 s; start every one with the same --num-processes and "
                         "--coordinator and its own --process-id (a process that stopped said "
                         "why; --join-timeout waits longer)"], err[-3000:]
    assert not (tmp_path / "multi").exists()



def test_every_process_plans_with_the_smallest_hosts_memory(monkeypatch):
    """A host with less memory chunked the trials into other programs than the others ran,
    and each process waited for the others' forever: every one now plans with the smallest
    budget (the other process's, room for two trials, here)."""
    from jaxnn import processes, run
    from jaxnn.sweep import execute, plan

    sweep = config.load(TINY, ["sweep.grid={learning_rate = [0.1, 0.2, 0.3, 0.4]}"])
    dataset = run.prepare(sweep)
    alone = plan.make_plan(sweep, dataset)
    small = 2 * alone.bytes_per_trial + plan.order_bytes(alone.groups[0].config, dataset)
    monkeypatch.setattr(processes.jax, "process_count", lambda: 2)
    monkeypatch.setattr(processes, "same_as_process_0", lambda text, what: None)
    monkeypatch.setattr(processes, "gathered",
                        lambda value: [value, small if isinstance(value, int) else None])
    _, shared = execute.planned(sweep, dataset)
    assert shared.budget == small
    assert [g.chunks for g in shared.groups] == [((0, 1), (2, 3))] != [
        g.chunks for g in alone.groups]
