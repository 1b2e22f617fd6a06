"""Two workers on one shared study, one killed with SIGKILL mid-batch: nothing is lost and
nothing is counted twice, and the report equals one worker's.

    PYTHONPATH=. python experiments/shared_study.py --storage sqlite:///study.db
    PYTHONPATH=. python experiments/shared_study.py --storage postgresql+psycopg://postgres@localhost:5433/jaxnn

(for PostgreSQL, start a server with ``experiments/postgres_server.sh start``). Both workers
run ``jaxnn sweep CONFIG --storage URL --study NAME``; once the first holds running trials it
is killed, and the other fails them as stale (heartbeats), and trains their retries. The
same sweep is then run by one worker on a second study, and both reports are compared.
The tests run this scenario on a journal file and on SQLite (`tests/test_workers.py`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import optuna

from jaxnn import cli, experiment
from jaxnn import config as config_lib
from jaxnn.rundir import RunError
from jaxnn.sweep import workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.toml")
SWEEP = ("output.plots=false", "training.precision='float64'", "model.hidden=[6]",
         "training.epochs=6", "sweep.batch=2",
         "sweep.grid={learning_rate = [0.01, 0.05, 0.2, 0.6], width = [4, 9]}")


def sweep_config(path: str, overrides=SWEEP) -> str:
    """Writes the scenario's sweep (8 grid trials, batches of 2) to ``path``."""
    with open(path, "w") as handle:
        handle.write(config_lib.dumps(config_lib.load(TINY, list(overrides))))
    return path


def _worker(config_path: str, storage: str, study: str, heartbeat: int) -> subprocess.Popen:
    # Compiling afresh: a worker then holds its first batch for the ~1 s its program takes
    # to compile. With programs from a cache (the tests' one, warmed by the scenario run
    # before) its batches took milliseconds, and the first worker could end before it was
    # seen holding one.
    command = [sys.executable, "-m", "jaxnn.cli", "sweep", config_path, "--storage", storage,
               "--study", study, "--heartbeat", str(heartbeat), "--no-compile-cache"]
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _held_by(storage: str, study: str, worker: str) -> list[int]:
    """The slots ``worker`` is training now (none while the study does not exist yet)."""
    try:
        loaded = optuna.load_study(study_name=study, storage=workers.open_storage(storage, None))
    except (KeyError, RunError):  # no study, or no journal file, yet
        return []
    return [t.user_attrs["trial"] for t in loaded.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if t.user_attrs.get("worker") == worker]


def kill_one_of_two(config_path: str, storage: str, study: str, heartbeat: int = 1,
                    timeout: float = 300) -> dict:
    """Starts two workers at once, SIGKILLs the first while it trains, waits for the other.

    Returns:
      ``{"killed_slots": [...], "survivor": its output, "wall_time_s": ...}``.
    """
    if "://" in storage:
        optuna.storages.RDBStorage(storage)  # its tables, before two workers race to make them
    started = time.perf_counter()
    first = _worker(config_path, storage, study, heartbeat)
    second = _worker(config_path, storage, study, heartbeat)
    try:
        name = f"{socket.gethostname()}:{first.pid}"
        killed: list[int] = []
        while not killed:
            if first.poll() is not None:
                raise RuntimeError("the first worker ended before it could be killed:\n"
                                   + first.stderr.read()[-3000:])
            if time.perf_counter() - started > timeout:
                raise TimeoutError("the first worker never held a trial")
            if _held_by(storage, study, name):
                # Stopped, it holds still: between that read and a kill it could have told
                # its last trials and held none. The survivor fails what it holds as stale
                # only after the grace period (3 heartbeats), so they are still RUNNING.
                first.send_signal(signal.SIGSTOP)
                killed = _held_by(storage, study, name)
                if not killed:
                    first.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        out, err = second.communicate(timeout=timeout)
        if second.returncode != 0:
            raise RuntimeError(f"the surviving worker failed ({second.returncode}):\n"
                               + err[-3000:])
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
            process.wait()
    return {"killed_slots": sorted(killed), "survivor": out,
            "wall_time_s": time.perf_counter() - started}


def audit(storage: str, study: str) -> dict:
    """Checks that every slot of the study's budget finished exactly once (COMPLETE, PRUNED
    or FAIL with its row) and that every trial failed without a row was retried.

    Returns:
      ``{"budget": n, "states": {state: count}, "stale": [slots failed as stale]}``.

    Raises:
      AssertionError: a slot lost, finished twice, or a stale trial not retried.
    """
    loaded = optuna.load_study(study_name=study, storage=workers.open_storage(storage, None))
    budget = loaded.user_attrs[workers.BUDGET_ATTR]
    trials = loaded.get_trials(deepcopy=False)
    finished, stale, states = {}, [], {}
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    for trial in trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
        slot = trial.user_attrs["trial"]
        if trial.state in (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING):
            raise AssertionError(f"slot {slot} is still {trial.state.name}")
        if trial.number in retried:
            assert "row" not in trial.user_attrs or trial.state.name == "FAIL", slot
            stale.append(slot)
            continue
        assert "row" in trial.user_attrs, f"slot {slot}: trial {trial.number} has no row"
        assert slot not in finished, f"slot {slot} finished twice"
        finished[slot] = trial.state.name
    lost = set(range(budget)) - set(finished)
    assert not lost, f"slots lost: {sorted(lost)}"
    return {"budget": budget, "states": states, "stale": sorted(stale)}


def wall_times(config_path: str, storage: str, repeats: int) -> dict[str, list[float]]:
    """Seconds for the sweep as one ``jaxnn sweep`` process (no study sharing), one worker,
    and two workers at once, alternated ``repeats`` times, compiling everything afresh."""
    times: dict[str, list[float]] = {"one process": [], "1 worker": [], "2 workers": []}
    env = {**os.environ, "PYTHONPATH": ROOT}
    base = [sys.executable, "-m", "jaxnn.cli", "sweep", config_path, "--no-compile-cache"]
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory() as scratch:
            for name, commands in (
                    ("one process", [[*base, "--workdir", os.path.join(scratch, "local")]]),
                    ("1 worker", [[*base, "--storage", storage, "--study", f"one-{repeat}"]]),
                    ("2 workers", [[*base, "--storage", storage, "--study", f"two-{repeat}"]] * 2)):
                started = time.perf_counter()
                for process in [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL)
                                for c in commands]:
                    assert process.wait() == 0, name
                times[name].append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = experiment.argument_parser("shared_study", __doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="a database URL or a journal path")
    parser.add_argument("--heartbeat", type=int, default=1)
    parser.add_argument("--wall-times", metavar="CONFIG",
                        help="instead: time CONFIG's sweep in one process, one worker and two")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for flag, value in (("--heartbeat", args.heartbeat), ("--repeats", args.repeats)):
        if value < 1:  # (a worker's own refusal came wrapped in a traceback; 0 repeats
            raise SystemExit(cli.usage_error(f"{flag} {value}: must be >= 1", parser.prog))
    if "://" in args.storage:  # a bad URL was a traceback from the first worker's start
        try:
            workers.open_storage(args.storage, args.heartbeat)
        except RunError as error:
            raise SystemExit(cli.usage_error(error, parser.prog)) from None
    if args.wall_times:
        times = wall_times(args.wall_times, args.storage, args.repeats)
        for name, seconds in times.items():
            print(f"{name}: median {sorted(seconds)[len(seconds) // 2]:.1f} s "
                  f"({', '.join(f'{s:.1f}' for s in seconds)})")
        return times
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory() as scratch:
        config_path = sweep_config(os.path.join(scratch, "sweep.toml"))
        shared, alone = f"two-workers-{stamp}", f"one-worker-{stamp}"
        run = kill_one_of_two(config_path, args.storage, shared, args.heartbeat)
        checked = audit(args.storage, shared)
        print(f"2 workers, one SIGKILLed while it held slots {run['killed_slots']}: "
              f"{run['wall_time_s']:.1f} s; study {shared!r}: {checked}")
        config = config_lib.load(config_path)
        workers.run_worker(config, args.storage, alone, heartbeat=args.heartbeat)
        tables = [workers.write_report(args.storage, name, os.path.join(scratch, name))["table"]
                  for name in (shared, alone)]
        print(tables[0])
        print("report equals one worker's:", tables[0] == tables[1])
    return {**run, **checked, "equal": tables[0] == tables[1]}


if __name__ == "__main__":
    main()
