"""Workers on one shared Optuna study (`jaxnn.sweep.workers`): budget slots claimed once,
stale trials retried, a worker killed with SIGKILL losing nothing, and the study's report."""

import ast
import importlib.util
import os
import pathlib
import subprocess
import sys
import time

import optuna
import pytest

from jaxnn import cli, config, run, sweep
from jaxnn.sweep import make_plan, search, workers

SCENARIO_PATH = pathlib.Path(__file__).parents[1] / "experiments" / "shared_study.py"
_spec = importlib.util.spec_from_file_location("shared_study", SCENARIO_PATH)
scenario = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scenario)

TPE = ("sweep.search='tpe'", "sweep.trials=6", "sweep.batch=3", "sweep.grid={width = [4, 9]}",
       "sweep.random={learning_rate = {distribution = 'log_uniform', low = 0.01, high = 1.0}}")


def setup(tmp_path, *overrides):
    cfg = config.load(scenario.sweep_config(str(tmp_path / "sweep.toml"),
                                            [*scenario.SWEEP, *overrides]))
    run.enable_precision(cfg)
    plan = make_plan(cfg, run.prepare(cfg))
    storage = workers.open_storage(str(tmp_path / "study.journal"), heartbeat=60)
    return cfg, plan, storage


def test_slots_are_claimed_once_in_order_until_the_budget_is_spent(tmp_path):
    cfg, plan, storage = setup(tmp_path)
    study = workers.join(storage, "s", cfg, plan)
    assert workers.join(storage, "s", cfg, plan) is not study  # a second worker joins it
    first = workers.claim(study, storage, plan.space, 3)
    rest = workers.claim(study, storage, plan.space, 10)
    assert [c.slot for c in first + rest] == list(range(8))
    assert all(c.values == plan.trials[c.slot].values for c in first + rest)
    assert workers.claim(study, storage, plan.space, 10) == []


def test_a_stale_trial_is_retried_with_its_slot_and_values(tmp_path, monkeypatch):
    cfg, plan, storage = setup(tmp_path, *TPE)
    study = workers.join(storage, "s", cfg, plan)
    held = workers.claim(study, storage, plan.space, 3)
    assert len({c.values["learning_rate"] for c in held}) == 3  # asked of the sampler
    later = workers.time.time() + 600  # no heartbeat for ten minutes: the worker died
    monkeypatch.setattr(workers.time, "time", lambda: later)
    again = workers.claim(study, storage, plan.space, 6)
    assert [c.slot for c in again] == [3, 4, 5, 0, 1, 2]  # fresh slots first, then retries
    assert [c.values for c in again[3:]] == [c.values for c in held]
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states.count(optuna.trial.TrialState.FAIL) == 3


def test_a_trial_failed_as_stale_just_before_its_tell_is_one_finished_meanwhile(
        tmp_path, monkeypatch):
    """Failed by another worker between its last attribute and its tell, a trial's tell
    raised ValueError("Cannot tell a FAIL trial"), which ended the worker (its retry is the
    one that reports it: `run_worker` passes over UpdateFinishedTrialError)."""
    cfg, plan, storage = setup(tmp_path)
    study = workers.join(storage, "s", cfg, plan)
    [claimed] = workers.claim(study, storage, plan.space, 1)
    row = {"trial": claimed.slot, "values": claimed.values, "status": "completed",
           "epochs": 1, "curves": {plan.metric: [0.5]}, plan.metric: 0.5}
    set_attr = optuna.trial.Trial.set_user_attr

    def set_then_failed_as_stale(trial, key, value):
        set_attr(trial, key, value)
        if key == "row":  # the last one `tell` sets
            storage.set_trial_state_values(claimed.trial_id, optuna.trial.TrialState.FAIL)

    monkeypatch.setattr(optuna.trial.Trial, "set_user_attr", set_then_failed_as_stale)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        workers.search.tell(study, claimed.trial_id, row, plan.metric, {"row": row})


def test_a_worker_with_another_config_is_refused(tmp_path, capsys):
    path = scenario.sweep_config(str(tmp_path / "a.toml"))
    storage = str(tmp_path / "study.journal")
    cfg = config.load(path)
    run.enable_precision(cfg)
    workers.join(workers.open_storage(storage), "s", cfg, make_plan(cfg, run.prepare(cfg)))
    other = scenario.sweep_config(str(tmp_path / "b.toml"), [*scenario.SWEEP,
                                                             "training.epochs=7"])
    assert cli.main(["sweep", other, "--storage", storage, "--study", "s"]) == 2
    err = capsys.readouterr().err
    assert "training.epochs = 7" in err and "created with 6" in err and "b.toml" in err
    assert cli.main(["sweep", "--report", "--storage", storage, "--study", "t"]) == 2
    assert "holds no study named 't'" in capsys.readouterr().err
    for missing in (str(tmp_path / "none.journal"), f"sqlite:///{tmp_path}/none.db"):
        # a report reads: it makes no empty journal or database in the missing one's place
        assert cli.main(["sweep", "--report", "--storage", missing, "--study", "s"]) == 2
        assert "none." in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["a.toml", "b.toml", "study.journal"]
    assert cli.main(["sweep", path, "--storage", storage]) == 2
    assert "--study NAME go together" in capsys.readouterr().err


# A worker that joins the study, says it is ready, waits for the go file, then claims one
# slot at a time until none is left, printing the trials it claimed.
CLAIMER = """
import os, sys, time
from jaxnn import config, run
from jaxnn.sweep import make_plan, search, workers
path, url, go, ready = sys.argv[1:]
cfg = config.load(path)
run.enable_precision(cfg)
plan = make_plan(cfg, run.prepare(cfg))
storage = workers.open_storage(url, heartbeat=1000)
study = workers.join(storage, "s", cfg, plan)
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
claimed = []
while batch := workers.claim(study, storage, plan.space, 1):
    claimed += [claim.trial_id for claim in batch]
print(claimed)
"""


def test_workers_on_a_plain_sweeps_study_are_refused_at_once(tmp_path, capsys):
    """A `jaxnn sweep` with ``[sweep] storage`` makes a study without a trial budget;
    workers joining it waited for one and then blamed its creator's death."""
    storage = str(tmp_path / "study.journal")
    path = scenario.sweep_config(str(tmp_path / "a.toml"),
                                 [*scenario.SWEEP, "training.epochs=1",
                                  "sweep.grid={learning_rate = [0.1]}",
                                  f"sweep.storage='{storage}'"])
    assert cli.main(["sweep", path, "--workdir", str(tmp_path / "plain")]) == 0
    started = time.monotonic()
    assert cli.main(["sweep", path, "--storage", storage, "--study", "plain"]) == 2
    assert time.monotonic() - started < workers.READY_TIMEOUT_S
    err = capsys.readouterr().err
    assert f"jaxnn sweep --resume {tmp_path / 'plain'}" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_worker_beating_at_another_interval_is_refused(tmp_path, capsys, kind):
    """Workers started with different ``--heartbeat`` failed each other's live trials as
    stale: each judged the others by its own interval."""
    path = scenario.sweep_config(str(tmp_path / "a.toml"))
    url = (str(tmp_path / "study.journal") if kind == "journal"
           else f"sqlite:///{tmp_path / 'study.db'}")
    cfg = config.load(path)
    run.enable_precision(cfg)
    plan = make_plan(cfg, run.prepare(cfg))
    workers.join(workers.open_storage(url, heartbeat=60), "s", cfg, plan)
    assert workers.join(workers.open_storage(url, heartbeat=60), "s", cfg, plan) is not None
    assert cli.main(["sweep", path, "--storage", url, "--study", "s", "--heartbeat", "5"]) == 2
    err = capsys.readouterr().err
    assert "--heartbeat 5: study 's' was created by a worker beating every 60 s" in err
    assert "give --heartbeat 60" in err and err.count("\n") == 1
    report = workers.open_storage(url, None)  # a reader has no interval: it is not judged
    assert workers.join(report, "s", cfg, plan) is not None


def test_a_lock_left_on_a_relative_journal_path_does_not_stop_later_workers(tmp_path):
    """A worker killed while it held the lock of ``studies/study.journal`` left Optuna's
    link to that relative path, which resolves to nothing: every later worker waited for it
    forever."""
    relative = os.path.join("studies", "study.journal")
    (tmp_path / "studies").mkdir()
    optuna.create_study(study_name="s", storage=workers.open_storage(
        str(tmp_path / relative), heartbeat=60))
    os.symlink(relative, tmp_path / (relative + ".lock"))  # as the killed worker's lock was
    writer = ("import optuna; from jaxnn.sweep import workers; optuna.load_study(study_name="
              f"'s', storage=workers.open_storage({relative!r})).set_user_attr('go', 1)")
    subprocess.run([sys.executable, "-c", writer], cwd=tmp_path, check=True, timeout=120,
                   env={**os.environ, "JAX_PLATFORMS": "cpu"})
    study = optuna.load_study(study_name="s", storage=workers.open_storage(
        str(tmp_path / relative), None))
    assert study.user_attrs == {"go": 1}
    assert not os.path.lexists(tmp_path / (relative + ".lock"))


OPENER = """
import os, sys, time
from jaxnn.sweep import workers
url, go, ready = sys.argv[1:]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
workers.open_storage(url, heartbeat=60)
"""


def test_workers_started_together_on_a_new_database_all_open_it(tmp_path):
    """Of two workers opening a new SQLite study database at once, one failed: ``table
    studies already exists``, or a UNIQUE constraint on the schema's version (6 in 6)."""
    url, go = f"sqlite:///{tmp_path / 'new.db'}", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(3)]
    processes = [subprocess.Popen([sys.executable, "-c", OPENER, url, str(go), str(r)],
                                  stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "JAX_PLATFORMS": "cpu"}) for r in ready]
    deadline = time.monotonic() + 300
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_worker_makes_its_storages_directory(tmp_path, kind):
    """The README's ``sqlite:///runs/lr_width.db`` failed in a directory without ``runs/``
    ("unable to open database file"); a journal's directory was made."""
    path = tmp_path / "runs" / f"study.{'db' if kind == 'sqlite' else 'journal'}"
    url = f"sqlite:///{path}" if kind == "sqlite" else str(path)
    optuna.create_study(study_name="s", storage=workers.open_storage(url, heartbeat=60))
    assert path.exists()


@pytest.mark.parametrize(("message", "tries"), [
    ("(sqlite3.OperationalError) table studies already exists", 3),
    ("(psycopg.OperationalError) connection failed: password authentication failed", 1),
    ("(sqlite3.OperationalError) unable to open database file", 1)])
def test_only_a_database_another_worker_is_making_is_opened_again(message, tries):
    """Every OperationalError was tried five times over: a wrong password or an unreachable
    server (each try waiting out its connection timeout) said so only after the fifth."""
    import sqlalchemy.exc

    calls = []

    def open_database():
        calls.append(1)
        if len(calls) < 3:
            raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception(message))
        return "opened"

    if tries == 1:
        with pytest.raises(sqlalchemy.exc.OperationalError, match=message.split(")")[0][1:]):
            workers._opened_together(open_database)
    else:
        assert workers._opened_together(open_database) == "opened"
    assert len(calls) == tries


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_workers_claiming_at_once_never_claim_one_trial_twice(tmp_path, kind):
    """Three processes claim the slots of one study at the same moment: each trial goes to
    one of them. (SQLite ignores the row lock Optuna takes: without `open_storage`'s
    ``BEGIN IMMEDIATE`` three such processes claimed 6 of 32 trials twice.)"""
    rates = ", ".join(str(0.01 * (i + 1)) for i in range(16))
    cfg, plan, _ = setup(tmp_path, f"sweep.grid={{learning_rate = [{rates}], width = [4, 9]}}")
    path = str(tmp_path / "sweep.toml")  # where `setup` wrote the config
    url = (str(tmp_path / "claims.journal") if kind == "journal"
           else f"sqlite:///{tmp_path / 'study.db'}")
    workers.join(workers.open_storage(url, heartbeat=1000), "s", cfg, plan)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(3)]
    processes = [subprocess.Popen([sys.executable, "-c", CLAIMER, path, url, str(go), str(r)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "JAX_PLATFORMS": "cpu"})
                 for r in ready]
    deadline = time.monotonic() + 300
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    claimed = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        claimed += ast.literal_eval(out.strip().splitlines()[-1])
    assert len(claimed) == 32 and len(set(claimed)) == 32


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_one_killed_lose_nothing_and_report_as_one(tmp_path, kind):
    """Two `jaxnn sweep --storage` processes at once; the first is SIGKILLed while it holds
    trials: every slot ends finished exactly once, the dead worker's trials are failed as
    stale and retried, and the report equals one worker's (float64, 1e-9)."""
    storage = (str(tmp_path / "study.journal") if kind == "journal"
               else f"sqlite:///{tmp_path / 'study.db'}")
    path = scenario.sweep_config(str(tmp_path / "sweep.toml"))
    killed = scenario.kill_one_of_two(path, storage, "shared")
    audit = scenario.audit(storage, "shared")
    assert killed["killed_slots"] and set(killed["killed_slots"]) <= set(audit["stale"])
    assert audit["states"] == {"COMPLETE": 8, "FAIL": len(audit["stale"])}
    assert "trained" in killed["survivor"]
    workers.run_worker(config.load(path), storage, "alone", heartbeat=1)
    shared = workers.write_report(storage, "shared", str(tmp_path / "shared"))
    alone = workers.write_report(storage, "alone", str(tmp_path / "alone"))
    assert shared["table"] == alone["table"]
    # ... and a one-process sweep's (a grid with ``batch`` trains in batches, in order).
    local = sweep.run_sweep(config.load(path), tmp_path / "local")
    assert local["table"] == alone["table"]
    by_slot = {row["trial"]: row for row in alone["results"]}
    for row in shared["results"]:
        twin = by_slot[row["trial"]]
        assert (row["values"], row["status"]) == (twin["values"], twin["status"])
        assert row["curves"]["val_loss"] == pytest.approx(twin["curves"]["val_loss"], rel=1e-9)
        assert row["test_loss"] == pytest.approx(twin["test_loss"], rel=1e-9)
    assert os.path.exists(tmp_path / "shared" / "best.toml")
    # A report replaces only the same study's report: never another study's, a sweep's
    # (here "local") or a run's, which stay as they were.
    assert workers.write_report(storage, "shared", str(tmp_path / "shared"))["table"] == \
        shared["table"]
    for other, held in (("alone", "another study's report"), ("local", "a sweep")):
        before = {p.name: p.read_bytes() for p in (tmp_path / other).iterdir() if p.is_file()}
        with pytest.raises(run.RunError, match=f"holds {held}; report into a new directory"):
            workers.write_report(storage, "shared", str(tmp_path / other))
        assert {p.name: p.read_bytes() for p in (tmp_path / other).iterdir()
                if p.is_file()} == before
    # ... and a report is neither resumed nor written into by a sweep or a run.
    before = {p.name: p.read_bytes() for p in (tmp_path / "shared").iterdir() if p.is_file()}
    for args in (["sweep", "--resume", str(tmp_path / "shared")],
                 ["sweep", path, "--workdir", str(tmp_path / "shared")],
                 ["train", path, "--workdir", str(tmp_path / "shared")]):
        assert cli.main(args) == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "shared").iterdir()
            if p.is_file()} == before


@pytest.mark.parametrize("where", ["training", "telling"])
def test_an_interrupted_worker_gives_its_trials_back_at_once(tmp_path, monkeypatch, where):
    """Ctrl-C in a worker: its claimed trials are failed and enqueued again right away (not
    after the grace period), and the next worker finishes the study with nothing lost.
    (Ctrl-C while it told the study a result left that trial running until its grace
    period.)"""
    path = scenario.sweep_config(str(tmp_path / "sweep.toml"))
    storage = str(tmp_path / "study.journal")

    def interrupted(*unused_args, **unused_kwargs):
        del unused_args, unused_kwargs
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        if where == "training":
            patch.setattr(workers.Sweep, "train_batch", interrupted)
        else:
            patch.setattr(workers.search, "tell", interrupted)
        with pytest.raises(KeyboardInterrupt):
            workers.run_worker(config.load(path), storage, "s", heartbeat=60)
    study = optuna.load_study(study_name="s", storage=workers.open_storage(storage, None))
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    assert states.count("FAIL") == 2 and states.count("WAITING") == 8  # 6 fresh, 2 retries
    result = workers.run_worker(config.load(path), storage, "s", heartbeat=60)
    assert len(result["trained"]) == 8 and result["done"] == 8
    assert scenario.audit(storage, "s")["stale"] == [0, 1]


def test_a_worker_gives_back_values_no_trial_can_take_and_goes_on(
        tmp_path, capsys, monkeypatch):
    """A sampled combination no trial can take (4 groups of a swept 6, 10 or 14 channels)
    ended the worker with exit 2, and each retry of its slot, with the same values, the
    next worker too: the claim is failed with the reason, its slot enqueued afresh."""
    # Workers sample unseeded; seeded here so that a refused combination is surely drawn
    # (unseeded, 8 draws miss all three about once in 40 runs).
    monkeypatch.setattr(workers, "_sampler", lambda plan: search.sampler(plan.search, 0))
    cfg = config.load(str(pathlib.Path(__file__).parents[1] / "configs" / "tiny.toml"), [
        "output.plots=false", "training.precision='float64'", "training.epochs=1",
        "model.hidden=[]", "model.activation='relu'",
        "model.layers=[{type = 'Dense', features = 6}, {type = 'GroupNorm', num_groups = 1}, "
        "{type = 'Tanh'}, {type = 'Dense', features = 10}]",
        "sweep.search='random'", "sweep.trials=8", "sweep.batch=4",
        "sweep.random={'model.layers[0].features' = [4, 6, 10, 14], "
        "'model.layers[1].num_groups' = [1, 4]}"])
    storage = str(tmp_path / "study.journal")
    result = workers.run_worker(cfg, storage, "s", heartbeat=60)
    assert result["done"] == 8 and len(result["trained"]) == 8
    for row in result["trained"]:
        values = row["values"]
        assert values["model.layers[0].features"] % values["model.layers[1].num_groups"] == 0
    study = optuna.load_study(study_name="s", storage=workers.open_storage(storage, None))
    failed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"]
    assert failed, "the sampler drew a refused combination"
    assert all("groups do not divide" in t.user_attrs["refused"] for t in failed)
    assert {t.state.name for t in study.get_trials(deepcopy=False)} == {"COMPLETE", "FAIL"}
    assert capsys.readouterr().err.count("jaxnn: refused trial") == len(failed)


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--wall-times", "c.toml", "--repeats", "0"], "--repeats 0: must be >= 1"),
    (["--heartbeat", "0"], "--heartbeat 0: must be >= 1"),
    (["--storage", "bogus://x/y"], "bogus://x/y: cannot open it")])
def test_the_scenarios_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, argv,
                                                             fragment):
    """Each was a traceback with exit 1 (an IndexError, a worker's error inside a
    RuntimeError, SQLAlchemy's), after the scenario had started."""
    argv = ["--storage", str(tmp_path / "j.journal"), *argv]
    with pytest.raises(SystemExit) as exit_:
        scenario.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("experiments/shared_study.py: error: ") and err.count("\n") == 1
    assert fragment in err
    assert list(tmp_path.iterdir()) == []
