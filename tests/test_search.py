"""Sweeps that search: Optuna samplers asked in batches, the study record, successive halving
and Hyperband inside the vmapped sweep, and their resume."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optuna
import pytest
from fresh import fresh_python
from interrupts import interrupt_on_call

from jaxnn import cli, config, run, sweep
from jaxnn.config import ConfigError
from jaxnn.sweep import execute, pruning, search
from jaxnn.sweep import spec as spec_lib
from jaxnn.train import default_hparams, make_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.toml")
SPACE = ("sweep.random={learning_rate = {distribution = 'log_uniform', low = 0.01, "
         "high = 1.0}, width = {distribution = 'int', low = 3, high = 12}}")


# A net whose GroupNorm must divide the channels of the Dense before it.
GROUPED = ("model.hidden=[]", "model.activation='relu'",
           "model.layers=[{type = 'Dense', features = 6}, "
           "{type = 'GroupNorm', num_groups = 1}, {type = 'Tanh'}, "
           "{type = 'Dense', features = 10}]")


def tiny(*overrides):
    return config.load(TINY, ["output.plots=false", "training.precision='float64'",
                              "model.hidden=[6]", "training.epochs=9", *overrides])


def halving_grid(*overrides):
    return tiny("sweep.grid={learning_rate = [0.01, 0.05, 0.2, 0.6], width = [4, 9]}",
                "sweep.pruning={eta = 3, min_epochs = 1}", "sweep.pack_widths=true",
                *overrides)


def load(workdir):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        os.path.join(workdir, sweep.STUDY_FILE)))
    return optuna.load_study(study_name=os.path.basename(workdir), storage=storage)


def test_rungs_and_brackets():
    sha = pruning.from_spec({"eta": 3, "min_epochs": 5}, 40, "c.toml")
    assert sha.rungs(0) == (5, 15) and sha.brackets == 1
    band = pruning.from_spec({"method": "hyperband", "eta": 3, "min_epochs": 1}, 9, "c.toml")
    assert [band.rungs(b) for b in range(band.brackets)] == [(1, 3), (3,), ()]
    assert [band.bracket_of(p) for p in range(5)] == [0, 1, 2, 0, 1]
    # Brackets past the last with a rung would train to the end like it: refused.
    assert pruning.from_spec({"method": "hyperband", "brackets": 3}, 9, "c.toml").brackets == 3
    with pytest.raises(ConfigError, match=r"sweep.pruning.brackets.*only 2 have a rung.*at "
                                          r"most 3"):
        pruning.from_spec({"method": "hyperband", "brackets": 10}, 9, "c.toml")
    # The best 1/eta of those that reached the rung; a diverged trial (None) never survives.
    assert pruning.survivors({0: 0.5, 1: 0.9, 2: None, 3: 0.7, 4: 0.1, 5: 0.2}, 3,
                             higher=True) == {1, 3}
    assert pruning.survivors({0: 0.5, 1: 0.9, 2: 0.3}, 3, higher=False) == {2}


@pytest.mark.parametrize("grid", [
    None,  # halving_grid's: one seed, packed widths
    "{learning_rate = [0.01, 0.05, 0.2, 0.6], seed = [5, 1]}",  # a draw per seed
])
def test_survivors_equal_lone_training_and_pruning_disturbs_nobody(tmp_path, grid):
    """A survivor of successive halving ends with exactly the params of its lone run
    (float64); every pruned trial's curve is its lone run's, up to the epoch it stopped."""
    cfg = halving_grid(*([f"sweep.grid={grid}"] if grid else []))
    out = sweep.run_sweep(cfg, tmp_path / "halving", return_params=True)
    by_status = {}
    for row in out["results"]:
        by_status.setdefault(row["status"], []).append(row)
    # 8 trials: 8 reach epoch 1, 2 continue to 3, and the best 1 of those 2 to the end.
    assert [r["epochs"] for r in by_status["pruned"]].count(1) == 6
    assert [r["epochs"] for r in by_status["pruned"]].count(3) == 1
    assert len(by_status["completed"]) == 1
    assert out["trial_epochs"] == 8 * 1 + 2 * 2 + 1 * 6
    dataset = run.prepare(cfg)
    for row in out["results"]:
        trial = sweep.make_trial(row["trial"], row["values"], cfg)
        trainer = make_train(trial.config, dataset, mesh=None)
        final, metrics = trainer(jax.random.key(trial.config.training.seed),
                                 default_hparams(trial.config, jnp.float64))
        np.testing.assert_allclose(row["curves"]["val_loss"],
                                   metrics["val_loss"][:row["epochs"]], rtol=1e-9)
        if row["status"] == "completed":
            got = sweep.trial_params_unpadded(out["params"][row["trial"]], trial, dataset)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(final.params), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14)


def test_finished_sweep_is_a_loadable_study(tmp_path):
    """``optuna.load_study`` returns every trial with the state, params and intermediate
    values of ``results.jsonl``."""
    workdir = str(tmp_path / "study")
    out = sweep.run_sweep(halving_grid("model.activation='relu'", "training.precision='float32'",
                                       "sweep.grid={learning_rate = [0.05, 0.2, 1e12], "
                                       "width = [4, 9]}"), workdir)
    rows = {r["trial"]: r for r in sweep.read_results(workdir)}
    trials = load(workdir).get_trials()
    assert sorted(t.user_attrs["trial"] for t in trials) == sorted(rows) == list(range(6))
    states = {"completed": optuna.trial.TrialState.COMPLETE,
              "pruned": optuna.trial.TrialState.PRUNED,
              "diverged": optuna.trial.TrialState.FAIL}
    seen = set()
    for trial in trials:
        row = rows[trial.user_attrs["trial"]]
        seen.add(row["status"])
        assert trial.state == states[row["status"]]
        assert trial.params == row["values"]
        curve = row["curves"]["val_accuracy"]
        assert trial.intermediate_values == {e: v for e, v in enumerate(curve, 1)
                                             if v is not None}
        if row["status"] == "completed":
            assert trial.value == row["val_accuracy"]
        if row["status"] == "pruned":
            assert trial.user_attrs["pruned_epoch"] == row["epochs"]
            # Its last intermediate value, as Optuna's `tell` and a worker's study keep it
            # (a grid's pruned trials held None).
            assert trial.value == curve[row["epochs"] - 1]
        if row["status"] == "diverged":
            assert trial.user_attrs["diverged_step"] == row["diverged_step"]
    assert seen == {"completed", "pruned", "diverged"}
    assert "pruned @ epoch 1" in out["table"] and "diverged @ step" in out["table"]


def test_resumed_halving_sweep_ends_with_the_same_table(tmp_path, monkeypatch):
    cfg = halving_grid("sweep.trials_per_chunk=2")
    full = sweep.run_sweep(cfg, tmp_path / "full")
    real = interrupt_on_call(monkeypatch, execute, "result_rows", 3)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, tmp_path / "part")
    written = sweep.read_results(str(tmp_path / "part"))
    assert 0 < len(written) < 8
    monkeypatch.setattr(execute, "result_rows", real)
    resumed = sweep.run_sweep(cfg, tmp_path / "part", resume=True)
    assert resumed["table"] == full["table"]
    rows = sweep.read_results(str(tmp_path / "part"))
    assert sorted(r["trial"] for r in rows) == list(range(8))  # none lost, none twice
    assert len(load(str(tmp_path / "part")).get_trials()) == 8


# Runs `halving_grid` in a fresh process: "part" stops it at its third batch of rows (as
# Ctrl-C would), "resume" continues it, "full" runs it whole; prints its table.
ELSEWHERE = """
import sys
sys.path.insert(0, sys.argv[1])
import jax, pytest
jax.config.update("jax_enable_x64", True)
from interrupts import interrupt_on_call
from jaxnn import sweep
from jaxnn.sweep import execute
from test_search import halving_grid
mode, workdir = sys.argv[2:]
cfg = halving_grid("sweep.trials_per_chunk=2")
if mode == "part":
    interrupt_on_call(pytest.MonkeyPatch(), execute, "result_rows", 3)
    try:
        sweep.run_sweep(cfg, workdir)
    except KeyboardInterrupt:
        print("INTERRUPTED", len(sweep.read_results(workdir)))
else:
    out = sweep.run_sweep(cfg, workdir, resume=mode == "resume")
    print("TABLE")
    print(out["table"])
"""


def test_a_sweep_stopped_on_one_device_resumes_on_two(tmp_path):
    """A pruned sweep stopped on one device and resumed on a CPU split in two (as `jaxnn
    sweep` now splits it) ends with the table of an uninterrupted run, no trial lost or
    run twice."""
    def elsewhere(mode, workdir, devices):
        return fresh_python(ELSEWHERE, os.path.dirname(__file__), mode, str(workdir),
                            devices=devices)

    written = int(elsewhere("part", tmp_path / "part", 1).split("INTERRUPTED")[1])
    assert 0 < written < 8
    resumed = elsewhere("resume", tmp_path / "part", 2).split("TABLE\n")[1]
    assert resumed == elsewhere("full", tmp_path / "full", 1).split("TABLE\n")[1]
    rows = sweep.read_results(str(tmp_path / "part"))
    assert sorted(r["trial"] for r in rows) == list(range(8))  # none lost, none twice


@pytest.mark.parametrize("sampler", ["random", "tpe", "cmaes"])
def test_adaptive_search_runs_batches_and_records_them(tmp_path, sampler):
    cfg = tiny(f"sweep.search='{sampler}'", "sweep.trials=6", "sweep.batch=3", "sweep.seed=1",
               SPACE)
    out = sweep.run_sweep(cfg, tmp_path / sampler)
    assert [r["trial"] for r in out["results"]] == list(range(6))
    values = [tuple(r["values"].values()) for r in out["results"]]
    assert len(set(values)) == 6
    for row in out["results"]:
        assert 0.01 <= row["values"]["learning_rate"] <= 1.0
        assert 3 <= row["values"]["width"] <= 12 and isinstance(row["values"]["width"], int)
        assert row["status"] == "completed"
    # Widths are packed to a bucket, so the second batch reuses the first one's programs.
    assert out["programs_compiled"] <= 2
    study = load(str(tmp_path / sampler))
    assert len(study.trials) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_a_batch_does_not_collapse_onto_one_point():
    """TPE asks a batch while its trials are running (constant liar): all distinct, even
    after the completed trials point at one region."""
    spec = spec_lib.spec_of(tiny("sweep.search='tpe'", "sweep.trials=40", SPACE))
    study = optuna.create_study(direction="maximize", sampler=search.sampler("tpe", 0))
    space = spec_lib.space_of(spec, "c.toml")
    for index in range(12):
        values = search.ask(study, space, index)
        study.tell(study.trials[-1].number, -abs(np.log(values["learning_rate"] / 0.1)))
    batch = [search.ask(study, space, 12 + i) for i in range(8)]
    assert len({v["learning_rate"] for v in batch}) == 8


def test_killed_adaptive_search_resumes_without_losing_or_repeating(tmp_path, monkeypatch):
    cfg = tiny("sweep.search='tpe'", "sweep.trials=6", "sweep.batch=3", SPACE,
               "sweep.pruning={eta = 3, min_epochs = 3}")
    workdir = tmp_path / "tpe"
    # Batch 1 writes rows at its rung (epoch 3) and at the end; batch 2 at its rung, then dies.
    real = interrupt_on_call(monkeypatch, execute, "result_rows", 4)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, workdir)
    before = {r["trial"]: r for r in sweep.read_results(str(workdir))}
    asked = {t.user_attrs["trial"]: t.params for t in load(str(workdir)).trials}
    assert set(before) < set(asked) == set(range(6))
    monkeypatch.setattr(execute, "result_rows", real)
    out = sweep.run_sweep(cfg, workdir, resume=True)
    rows = sweep.read_results(str(workdir))
    assert sorted(r["trial"] for r in rows) == list(range(6))
    for row in rows:  # the killed batch reran with the values its study had asked for
        assert row["values"] == asked[row["trial"]]
        if row["trial"] in before:
            assert row == before[row["trial"]]
    study = load(str(workdir))
    assert len(study.trials) == 6
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len(out["results"]) == 6


def test_a_resumed_search_asks_for_new_values_and_a_moved_one_keeps_its_study(tmp_path,
                                                                             monkeypatch):
    """Stopped in its second batch, a random search resumes with its sampler reseeded by
    the trials it holds: the third batch's values are new, not the first batch's again.
    Moved to another directory, the sweep still finds its study (and its config check)."""
    cfg = tiny("sweep.search='random'", "sweep.trials=6", "sweep.batch=2", SPACE,
               "training.epochs=2")
    workdir = tmp_path / "random"
    real = interrupt_on_call(monkeypatch, execute, "result_rows", 2)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, workdir)
    monkeypatch.setattr(execute, "result_rows", real)
    moved = tmp_path / "moved"
    os.rename(workdir, moved)
    edited = (moved / sweep.SWEEP_CONFIG).read_text().replace("epochs = 2", "epochs = 3")
    (moved / sweep.SWEEP_CONFIG).write_text(edited)
    assert cli.main(["sweep", "--resume", str(moved)]) == 2  # the study's config is checked
    (moved / sweep.SWEEP_CONFIG).write_text(edited.replace("epochs = 3", "epochs = 2"))
    assert cli.main(["sweep", "--resume", str(moved)]) == 0
    rows = sweep.read_results(str(moved))
    assert sorted(r["trial"] for r in rows) == list(range(6))
    assert len({tuple(sorted(r["values"].items())) for r in rows}) == 6
    assert optuna.get_all_study_names(
        optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(
            str(moved / sweep.STUDY_FILE)))) == ["random"]


def test_hyperband_brackets_prune_at_their_own_rungs(tmp_path):
    cfg = tiny("sweep.search='random'", "sweep.trials=6", "sweep.batch=6", SPACE,
               "sweep.pruning={method = 'hyperband', eta = 3, min_epochs = 1}",
               "output.plots=true")
    out = sweep.run_sweep(cfg, tmp_path / "band")
    epochs = {r["trial"]: r["epochs"] for r in out["results"]}
    # Brackets 0, 1, 2 get trials (0, 3), (1, 4), (2, 5): rungs (1, 3), (3,) and none.
    assert sorted([epochs[0], epochs[3]]) == [1, 9]
    assert sorted([epochs[1], epochs[4]]) == [3, 9]
    assert epochs[2] == epochs[5] == 9
    assert out["trial_epochs"] == sum(epochs.values())
    for name in ("search_history", "search_parallel_coordinates", "search_importances",
                 "search_intermediate_values"):
        assert (tmp_path / "band" / f"{name}.png").stat().st_size > 0, name


def test_study_in_a_storage_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    cfg = tiny("sweep.grid={learning_rate = [0.05, 0.2]}", f"sweep.storage='{url}'",
               "training.epochs=2")
    sweep.run_sweep(cfg, tmp_path / "first")
    study = optuna.load_study(study_name="first", storage=url)
    assert [t.params["learning_rate"] for t in study.trials] == [0.05, 0.2]
    assert not (tmp_path / "first" / sweep.STUDY_FILE).exists()
    # A second sweep of that name in the same storage is refused; another name is not.
    with pytest.raises(run.RunError, match="already holds a study named 'first'"):
        sweep.run_sweep(cfg, tmp_path / "other" / "first")
    # The refused sweep wrote nothing to resume: resumed, it would add its trials to the
    # other sweep's study.
    with pytest.raises(run.RunError, match="nothing to resume"):
        sweep.run_sweep(cfg, tmp_path / "other" / "first", resume=True)
    assert len(optuna.load_study(study_name="first", storage=url).trials) == 2
    sweep.run_sweep(cfg, tmp_path / "second")
    assert len(optuna.get_all_study_names(url)) == 2


@pytest.mark.parametrize("storage", ["{tmp}/missing/studies.journal", "notadialect://x",
                                     "sqlite:///{tmp}/missing/studies.db"])
def test_a_storage_that_cannot_be_opened_is_one_error_before_the_directory(tmp_path, capsys,
                                                                            storage):
    path = tmp_path / "sweep.toml"
    path.write_text(config.dumps(tiny("sweep.grid={learning_rate = [0.05, 0.2]}",
                                      f"sweep.storage='{storage.format(tmp=tmp_path)}'")))
    assert cli.main(["sweep", str(path), "--workdir", str(tmp_path / "s")]) == 2
    assert "sweep.storage" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "missing").exists()


def test_a_journal_path_as_the_storage(tmp_path):
    journal = tmp_path / "studies.journal"
    cfg = tiny("sweep.grid={learning_rate = [0.05, 0.2]}", f"sweep.storage='{journal}'",
               "training.epochs=2")
    sweep.run_sweep(cfg, tmp_path / "first")
    storage = optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))
    assert optuna.get_all_study_names(storage) == ["first"]


def test_a_lock_left_on_a_relative_journal_storage_does_not_stop_a_later_sweep(tmp_path):
    """A sweep killed while it held the lock of ``[sweep] storage = "studies/s.journal"``
    left Optuna's link to that relative path, which resolves to nothing: every later sweep
    on that storage retried it forever."""
    relative = os.path.join("studies", "s.journal")
    (tmp_path / "studies").mkdir()
    os.symlink(relative, tmp_path / (relative + ".lock"))  # as the killed sweep's lock was
    path = tmp_path / "sweep.toml"
    path.write_text(config.dumps(tiny("sweep.grid={learning_rate = [0.05, 0.2]}",
                                      f"sweep.storage={relative!r}", "training.epochs=1")))
    subprocess.run([sys.executable, "-m", "jaxnn.cli", "sweep", str(path), "--workdir", "s"],
                   cwd=tmp_path, check=True, timeout=120, capture_output=True,
                   env={**os.environ, "JAX_PLATFORMS": "cpu"})
    storage = optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / relative)))
    assert optuna.get_all_study_names(storage) == ["s"]
    assert not os.path.lexists(tmp_path / (relative + ".lock"))


@pytest.mark.parametrize(("override", "key"), [
    ("sweep.search='bayes'", "sweep.search"),
    ("sweep.search='tpe'", "sweep.trials"),
    (("sweep.search='tpe'", "sweep.trials=4", "sweep.batch=5"), "sweep.batch"),
    ("sweep.trials=4", "sweep.trials"),
    ("sweep.batch=0", "sweep.batch: expected an int >= 1, got 0"),
    ("sweep.pruning={eta = 1}", "sweep.pruning.eta"),
    ("sweep.pruning={min_epochs = 9}", "sweep.pruning.min_epochs"),
    ("sweep.pruning={rate = 2}", "sweep.pruning.rate"),
    ("sweep.pruning={method = 'median'}", "sweep.pruning.method"),
    (("sweep.pruning={}", "data.validation_fraction=0.0"), "sweep.pruning"),
    (("sweep.pruning={}", "sweep.batch=1"), "sweep.pruning: prunes nothing: a batch of 1"),
    ("sweep.pruning={method = 'hyperband'}", "sweep.pruning: prunes nothing"),
    ("data.validation_fraction=0.0", "data.validation_fraction"),
    (("data.name='regression'", "model.loss='mse'", "sweep.metric='val_accuracy'"),
     "sweep.metric: val_accuracy needs a classification task"),
    (("sweep.count=1", "sweep.random={width = {distribution = 'int', low = 2.5, high = 9}}"),
     "sweep.random.width"),
    # A distribution named by a list or a table was a TypeError traceback (unhashable).
    (("sweep.count=1", "sweep.random={momentum = {distribution = ['uniform'], low = 0, "
      "high = 1}}"), "sweep.random.momentum.distribution: ['uniform'] is not one of choice"),
    (("sweep.count=1", "sweep.random={momentum = {low = 0, high = 1}}"),
     "sweep.random.momentum.distribution: None is not one of"),
])
def test_bad_search_config_named(tmp_path, capsys, override, key):
    """(And a choice lists its empty option as ''.)"""
    with pytest.raises(ConfigError, match=r"training.compute_dtype: 'float16' is not one of "
                                          r"'', float32, bfloat16"):
        tiny("training.compute_dtype='float16'")
    path = tmp_path / "s.toml"
    overrides = override if isinstance(override, tuple) else (override,)
    path.write_text(config.dumps(tiny("sweep.grid={learning_rate = [0.1, 0.2]}", *overrides)))
    assert cli.main(["sweep", str(path), "--plan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jaxnn: error: {path}: {key}")


@pytest.mark.parametrize(("space", "fragment"), [
    ("{width = {distribution = 'int', low = 0, high = 8}}",
     "trial {'width': 0}: model.hidden: widths must be >= 1"),
    ("{learning_rate = {distribution = 'uniform', low = -1.0, high = 0.1}}",
     "trial {'learning_rate': -1.0}: optimizer.learning_rate: must be > 0"),
    ("{activation = ['relu', 'swish'], width = {distribution = 'int', low = 4, high = 8}}",
     "trial {'activation': 'swish', 'width': 4}: model.activation: unknown activation"),
    # Inside a short int range: every value is checked (1, 2, 3 and 6 divide 6 channels).
    (("{'model.layers[1].num_groups' = {distribution = 'int', low = 1, high = 6}}",
      *GROUPED), "trial {'model.layers[1].num_groups': 4}: model.layers[1]: layer 1 "
                "(GroupNorm(4)): 4 groups do not divide the 6 channels"),
])
def test_an_adaptive_search_checks_its_space_before_training(tmp_path, capsys, space,
                                                             fragment):
    """Each swept name at each end of its range (every choice), the others at their first:
    a value the sampler may ask for fails at once, not after other trials trained."""
    path = tmp_path / "s.toml"
    space, *net = space if isinstance(space, tuple) else (space,)
    path.write_text(config.dumps(tiny("sweep.search='random'", "sweep.trials=4",
                                      f"sweep.random={space}", *net)))
    for flags in (["--plan"], ["--workdir", str(tmp_path / "run")]):
        assert cli.main(["sweep", str(path), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"jaxnn: error: {path}: sweep: {fragment}"), err
    assert not (tmp_path / "run" / sweep.RESULTS).exists()


REFUSABLE = ("sweep.random={'model.layers[0].features' = [4, 6, 10, 14], "
             "'model.layers[1].num_groups' = [1, 4]}")


def test_values_no_trial_can_take_are_failed_trials_and_the_search_goes_on(tmp_path, capsys):
    """Checked at the ends of its ranges, a space may still hold combinations no trial can
    take (4 groups of 6, 10 or 14 channels). A batch asked with one is not the sweep's
    end (exit 2 after trials had trained, and a resume asked the same again): the study
    records the trial as failed, with the reason, and the sampler is asked again."""
    cfg = tiny(*GROUPED, "sweep.search='random'", "sweep.trials=16", "training.epochs=1",
               REFUSABLE)  # one batch of 16: the refused trials are asked again, not the 16
    out = sweep.run_sweep(cfg, tmp_path / "run")
    rows = out["results"]
    assert sorted(r["trial"] for r in rows) == list(range(16))
    for row in rows:
        values = row["values"]
        assert values["model.layers[0].features"] % values["model.layers[1].num_groups"] == 0
    study = load(str(tmp_path / "run"))
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed, "this seed's draws hold a refused combination"
    for trial in failed:
        assert trial.params["model.layers[1].num_groups"] == 4
        assert "groups do not divide the" in trial.user_attrs["refused"]
    assert capsys.readouterr().err.count("jaxnn: refused trial") == len(failed)
    assert len(study.trials) == 16 + len(failed)  # nothing asked and left running
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE,
                                               optuna.trial.TrialState.FAIL}


def test_a_space_of_values_no_trial_can_take_ends_the_search(tmp_path, capsys, monkeypatch):
    """`MAX_REFUSALS` refusals in a row: the space is a mistake, and the sweep stops with
    exit 2 naming the trial."""
    asked = search.ask
    monkeypatch.setattr(execute, "MAX_REFUSALS", 3)
    monkeypatch.setattr(search, "ask", lambda study, space, index: {
        **asked(study, space, index), "model.layers[0].features": 6,
        "model.layers[1].num_groups": 4})
    path = tmp_path / "s.toml"
    path.write_text(config.dumps(tiny(*GROUPED, "sweep.search='random'", "sweep.trials=4",
                                      "sweep.batch=2", REFUSABLE)))
    assert cli.main(["sweep", str(path), "--workdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("jaxnn: refused trial") == 6  # both trials, each drawn 3 times
    assert err.splitlines()[-1].startswith(f"jaxnn: error: {path}: sweep: trial {{")
    assert err.splitlines()[-1].endswith("(3 draws in a row refused for one trial)")


def test_a_missing_database_driver_names_what_to_install():
    """A plain ``postgresql://`` URL asks SQLAlchemy for psycopg2, which the ``postgres``
    extra (psycopg 3) does not install: the hint said to install the extra alone, and a
    MySQL URL got the PostgreSQL hint."""
    missing = ImportError("Failed to import DB access module")
    assert "postgresql+psycopg://" in search.storage_failure(missing, "postgresql://u@h/db")
    assert "jaxnn[postgres]" in search.storage_failure(missing, "postgresql://u@h/db")
    mysql = search.storage_failure(missing, "mysql://u@h/db")
    assert "PostgreSQL" not in mysql and "postgres" not in mysql and "driver" in mysql
