"""Sweeps: trials equal lone runs (packed widths included), sharding, resume, divergence."""

import itertools
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fresh import fresh_python
from interrupts import interrupt_on_call
from numerics import assert_close

from jaxnn import cli, config, run, sweep
from jaxnn.sweep import execute, packing, spec
from jaxnn.train import default_hparams, make_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.toml")


def small_sweep(*overrides, grid="{learning_rate = [0.02, 0.2], width = [4, 9]}"):
    return config.load(TINY, ["output.plots=false", "training.epochs=2",
                              "training.precision='float64'", "model.hidden=[6, 6]",
                              f"sweep.grid={grid}", *overrides])


@pytest.mark.parametrize(("pack", "grid"), [
    ("true", "{learning_rate = [0.02, 0.2], width = [4, 9]}"),
    ("false", "{learning_rate = [0.02, 0.2], width = [4, 9]}"),
    # Trials with different seeds: per-trial keys instead of the one shared key.
    ("true", "{learning_rate = [0.2], seed = [0, 7], width = [4, 9]}"),
    # Seeds listed out of order, each drawn once and given to its trials.
    ("false", "{learning_rate = [0.2], seed = [7, 0, 3], width = [4, 9]}"),
])
def test_every_trial_equals_the_config_trained_alone(tmp_path, pack, grid):
    cfg = small_sweep(f"sweep.pack_widths={pack}", "model.activation='sigmoid'", grid=grid)
    out = sweep.run_sweep(cfg, tmp_path, return_params=True)
    assert out["programs_compiled"] == (1 if pack == "true" else 2)
    dataset = run.prepare(cfg)
    plan = sweep.make_plan(cfg, dataset)
    for trial, row in zip(plan.trials, out["results"], strict=True):
        # The trial's own config, as `jaxnn train` would run it.
        alone_cfg = trial.config
        trainer = make_train(alone_cfg, dataset, mesh=None)
        final, metrics = trainer(jax.random.key(alone_cfg.training.seed),
                                 default_hparams(alone_cfg, jnp.float64))
        params = final.params
        got = sweep.trial_params_unpadded(out["params"][trial.index], trial, dataset)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14)
        assert row["val_loss"] == pytest.approx(float(metrics["val_loss"][-1]), rel=1e-9)
    # The lone run through the command line gives the same test loss for a packed trial.
    best = sweep.rank(plan, out["results"])[0]
    summary = run.train_and_evaluate(plan.trials[best["trial"]].config, tmp_path / "alone")
    assert summary["test_loss"] == pytest.approx(best["test_loss"], rel=1e-9)


def test_a_program_recompiles_when_a_later_batch_widens_the_draw():
    """A width-4 program trains a first batch from a draw at width 4; a later batch with a
    width-9 trial widens the draw, and the same program compiles again for the wider
    arguments (keyed by their shapes): every trial still equals its lone run."""
    cfg = small_sweep("sweep.pack_widths=false")
    run.enable_precision(cfg)
    dataset = run.prepare(cfg)
    plan = sweep.make_plan(cfg, dataset)
    by = {(t.values["learning_rate"], t.values["width"]): t for t in plan.trials}
    rows = []
    trainer = execute.Sweep(cfg, plan, dataset, {}, rows.extend)
    for batch in ([by[0.02, 4]], [by[0.2, 4], by[0.02, 9]]):
        trainer.train_batch(sweep.make_plan(cfg, dataset, batch))
    narrow = next(p for p in trainer.programs.values() if p.config.model.hidden == (4, 4))
    widths = [key for key in narrow.compiled if key[0] != "init"]
    assert len(widths) == 2  # the width-4 program, for a width-4 draw and a width-9 one
    assert sorted(row["trial"] for row in rows) == sorted(t.index for t in by.values()
                                                          if t is not by[0.2, 9])
    for row in rows:
        alone = plan.trials[row["trial"]].config
        _, metrics = make_train(alone, dataset, mesh=None)(
            jax.random.key(alone.training.seed), default_hparams(alone, jnp.float64))
        assert row["val_loss"] == pytest.approx(float(metrics["val_loss"][-1]), rel=1e-9)


def test_packed_initial_params_do_not_depend_on_padding(tmp_path):
    a = sweep.run_sweep(small_sweep("sweep.pack_widths=true"), tmp_path / "a",
                        return_params=True)
    b = sweep.run_sweep(small_sweep("sweep.pack_widths=true",
                                    grid="{learning_rate = [0.02, 0.2], width = [4, 9, 30]}"),
                        tmp_path / "b", return_params=True)
    cfg = small_sweep()
    dataset = run.prepare(cfg)
    plan_a = sweep.make_plan(cfg, dataset)
    for trial in plan_a.trials:  # Same trial indices in both (width 30 comes last).
        pa = sweep.trial_params_unpadded(a["params"][trial.index], trial, dataset)
        index_b = next(t for t in sweep.trials(small_sweep(
            grid="{learning_rate = [0.02, 0.2], width = [4, 9, 30]}"))
            if t.values == trial.values).index
        pb = sweep.trial_params_unpadded(b["params"][index_b], trial, dataset)
        for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-14)


def _program_widths(plan):
    return [sorted({t.config.model.hidden[0] for t in g.trials}) for g in plan.groups]


def test_auto_packing_splits_widths_by_the_cost_model(monkeypatch):
    cfg = small_sweep(grid="{learning_rate = [0.1], width = [4, 8, 300, 600]}")
    dataset = run.prepare(cfg)
    backend = jax.default_backend()
    # Compiling is free: every width alone (no padded FLOPs).
    monkeypatch.setitem(sweep.COMPILE_SCALE, backend, 0.0)
    assert _program_widths(sweep.make_plan(cfg, dataset)) == [[4], [8], [300], [600]]
    # Compiling is all that counts: one program.
    monkeypatch.setitem(sweep.COMPILE_SCALE, backend, 1e9)
    assert _program_widths(sweep.make_plan(cfg, dataset)) == [[4, 8, 300, 600]]
    # In between, the small widths share a program and the big ones do not pay for it;
    # the split is the cheapest of all runs of neighbouring widths (checked by brute force).
    monkeypatch.setattr(packing, "compile_seconds", lambda *_: 1e-3)
    got = _program_widths(sweep.make_plan(cfg, dataset))
    assert got[0] == [4, 8] and len(got) > 2
    steps = cfg.training.epochs * (len(dataset.x_train) // cfg.training.batch_size)

    def cost(runs):
        total = 0.0
        for widths in runs:
            padded = [max(widths)] * len(cfg.model.hidden)
            total += 1e-3 + len(widths) * steps * sweep.step_flops(
                cfg, padded, 64, 10) / sweep.FLOPS_PER_SECOND[backend]
        return total

    widths = [4, 8, 300, 600]
    splits = [[widths[a:b] for a, b in itertools.pairwise((0, *cuts, 4))]
              for k in range(4) for cuts in itertools.combinations(range(1, 4), k)]
    assert cost(got) == pytest.approx(min(cost(s) for s in splits))


def test_divergent_trial_is_marked_and_neighbours_finish(tmp_path):
    cfg = small_sweep("model.activation='relu'", "training.precision='float32'",
                      "model.hidden=[32]", "training.epochs=4",
                      grid="{learning_rate = [0.05, 0.2, 1000.0]}")
    out = sweep.run_sweep(cfg, tmp_path, return_params=True)
    by_lr = {r["values"]["learning_rate"]: r for r in out["results"]}
    assert by_lr[1000.0]["status"] == "diverged"
    assert by_lr[1000.0]["diverged_step"] >= 0
    # Its curves hold the epochs before the one it diverged in, and nothing computed after.
    steps = run.prepare(cfg).x_train.shape[0] // cfg.training.batch_size
    diverged_in = by_lr[1000.0]["diverged_step"] // steps + 1
    assert by_lr[1000.0]["epochs"] == diverged_in
    for curve in by_lr[1000.0]["curves"].values():
        assert len(curve) == 4 and curve[diverged_in - 1:] == [None] * (5 - diverged_in)
    for lr in (0.05, 0.2):
        assert by_lr[lr]["status"] == "completed"
        assert by_lr[lr]["test_accuracy"] > 0.7
    assert "diverged @ step" in out["table"]
    assert sweep.rank(sweep.make_plan(cfg, run.prepare(cfg)), out["results"])[-1] == by_lr[1000.0]
    # The neighbours are untouched: the same as a sweep without the divergent rate, up to
    # float32 rounding (a program vmapped over 2 trials may round unlike one over 3). The
    # sweep runs in float32 because in float64 a rate of 1000 takes twice the epochs to
    # overflow; float32 training lands within 8 eps of the float64 val_loss.
    calm = sweep.run_sweep(small_sweep("model.activation='relu'", "training.precision='float32'",
                                       "model.hidden=[32]", "training.epochs=4",
                                       grid="{learning_rate = [0.05, 0.2]}"), tmp_path / "calm")
    for row in calm["results"]:
        assert_close(row["val_loss"], by_lr[row["values"]["learning_rate"]]["val_loss"],
                     dtype=jnp.float32)


def test_outputs_table_csv_best_and_plots(tmp_path):
    cfg = small_sweep("output.plots=true")
    out = sweep.run_sweep(cfg, tmp_path)
    for name in ("results.jsonl", "results.csv", "table.txt", "best.toml", "metric_vs_lr.png",
                 "heatmap_lr_width.png", "top_curves.png"):
        assert (tmp_path / name).exists(), name
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0].startswith("trial,learning_rate,width,epochs,train_loss")
    assert len(lines) == 5
    best = config.load(tmp_path / "best.toml")
    assert best.sweep == {}
    assert best.model.hidden == (out["best"]["values"]["width"],) * 2
    assert best.optimizer.learning_rate == out["best"]["values"]["learning_rate"]
    accuracies = [r["val_accuracy"] for r in sweep.rank(sweep.make_plan(cfg, run.prepare(cfg)),
                                                        out["results"])]
    assert accuracies == sorted(accuracies, reverse=True)


def test_a_sweep_that_set_patience_resumes_with_it_at_0(tmp_path, capsys):
    """A sweep directory from before patience was refused (its trials trained without it)
    could not be resumed at all: refused for its patience, and `--set training.patience=0`
    refused as a change of what it trained."""
    path = tmp_path / "s.toml"
    path.write_text(config.dumps(small_sweep()))
    workdir = tmp_path / "run"
    assert cli.main(["sweep", str(path), "--workdir", str(workdir)]) == 0
    stored = workdir / sweep.SWEEP_CONFIG
    stored.write_text(stored.read_text().replace("patience = 0", "patience = 3"))
    capsys.readouterr()
    assert cli.main(["sweep", "--resume", str(workdir)]) == 2
    assert "--set training.patience=0 resumes a sweep that set it" in capsys.readouterr().err
    assert cli.main(["sweep", "--resume", str(workdir), "--set", "training.patience=0"]) == 0


def test_completed_trials_rank_by_the_metric_whatever_their_epochs():
    """A swept ``training.epochs``: the longest-trained trial came first whatever its
    score (its val_loss 1.539 above 0.953), and best.toml disagreed with the study's best.
    Pruned trials still rank after completed ones, the longest trained first."""
    cfg = small_sweep("sweep.metric='val_loss'", grid="{'training.epochs' = [1, 2, 3]}")
    plan = sweep.make_plan(cfg, run.prepare(cfg))

    def row(trial, status, epochs, loss):
        return {"trial": trial, "status": status, "epochs": epochs, "val_loss": loss}

    rows = [row(0, "completed", 3, 1.5), row(1, "completed", 2, 0.9), row(2, "pruned", 1, 0.1),
            row(3, "pruned", 2, 0.8), row(4, "completed", 1, 1.2)]
    assert [r["trial"] for r in sweep.rank(plan, rows)] == [1, 4, 0, 3, 2]


STALE_LOCK_TIMEOUT_S = 120  # far beyond the resume's few seconds


def test_resume_after_kill_gives_identical_table(tmp_path, monkeypatch):
    cfg = small_sweep("sweep.trials_per_chunk=1", "sweep.pack_widths=false")
    full = sweep.run_sweep(cfg, tmp_path / "full")
    real = interrupt_on_call(monkeypatch, execute, "result_rows", 3)  # the third chunk
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, tmp_path / "part")
    assert len(sweep.read_results(str(tmp_path / "part"))) == 2
    monkeypatch.setattr(execute, "result_rows", real)
    with pytest.raises(run.RunError, match="already holds a sweep"):
        sweep.run_sweep(cfg, tmp_path / "part")
    # A process killed while appending to the study leaves Optuna's lock beside it, a
    # symlink relative like the directory it was given: Optuna would wait for it forever.
    os.symlink(os.path.join("part", sweep.STUDY_FILE),
               tmp_path / "part" / f"{sweep.STUDY_FILE}.lock")
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the resume waited for a dead lock"))
    signal.alarm(STALE_LOCK_TIMEOUT_S)
    try:
        resumed = sweep.run_sweep(cfg, tmp_path / "part", resume=True)
    finally:
        signal.alarm(0)
    assert resumed["table"] == full["table"]
    assert (tmp_path / "part" / "results.csv").read_text() == \
        (tmp_path / "full" / "results.csv").read_text()


def test_a_resumed_sweep_trains_its_chunks_as_an_uninterrupted_one(tmp_path, monkeypatch):
    """float32, 3 trials in chunks of <= 2 (2, 1 padded to 2): killed after the first
    chunk, the resume trains the last trial in the uninterrupted sweep's program of 2 (not
    alone, in a program of 1, whose float32 results differ), so every result is the same
    to the bit."""
    cfg = small_sweep("sweep.trials_per_chunk=2", "sweep.pack_widths=false",
                      "training.precision='float32'", "training.epochs=6",
                      grid="{learning_rate = [0.05, 0.2, 0.5]}")
    sweep.run_sweep(cfg, tmp_path / "full")
    real = interrupt_on_call(monkeypatch, execute, "result_rows", 2)  # the second chunk
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, tmp_path / "part")
    assert len(sweep.read_results(str(tmp_path / "part"))) == 2
    monkeypatch.setattr(execute, "result_rows", real)
    sweep.run_sweep(cfg, tmp_path / "part", resume=True)
    full, part = (sweep.read_results(str(tmp_path / name)) for name in ("full", "part"))
    assert [r["values"] for r in part] == [r["values"] for r in full]
    assert part == full


def test_a_batched_grid_resumes_a_half_recorded_chunk_in_its_own_places(tmp_path,
                                                                         monkeypatch):
    """float32, batches of 2 trials: a kill while a chunk's two rows were appended leaves
    the first; the resume trains the second in the uninterrupted program of 2, at its own
    place (not alone, in a program of 1), so its results are the same to the bit."""
    cfg = small_sweep("sweep.batch=2", "sweep.pack_widths=false", "training.epochs=6",
                      "training.precision='float32'",
                      grid="{learning_rate = [0.05, 0.2, 0.5, 0.7]}")
    sweep.run_sweep(cfg, tmp_path / "full")
    # Killed before the second batch's rows: the first batch's two remain, and the second of
    # them is then cut in half, as a kill while appending them would leave it.
    real = interrupt_on_call(monkeypatch, execute, "result_rows", 2)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, tmp_path / "part")
    monkeypatch.setattr(execute, "result_rows", real)
    results = tmp_path / "part" / execute.RESULTS
    first, second = results.read_text().splitlines()
    results.write_text(first + "\n" + second[:len(second) // 2])
    sweep.run_sweep(cfg, tmp_path / "part", resume=True)
    full, part = (sweep.read_results(str(tmp_path / name)) for name in ("full", "part"))
    assert part == full


def test_a_batched_grid_draws_its_params_at_the_whole_grids_widths(tmp_path):
    """The first batch holds the narrower widths; the second's wider trial needs no wider
    draw, which the program of the first batch's width 4, run again for the second's, would
    not take; every trial is as in one batch."""
    grid = "{learning_rate = [0.02, 0.2], width = [4, 6, 9]}"
    batched = sweep.run_sweep(small_sweep("sweep.batch=2", "sweep.pack_widths=false",
                                          grid=grid), tmp_path / "batched")
    whole = sweep.run_sweep(small_sweep("sweep.pack_widths=false", grid=grid),
                            tmp_path / "whole")
    assert [r["values"]["width"] for r in batched["results"]] == [4, 6, 9, 4, 6, 9]
    for a, b in zip(batched["results"], whole["results"], strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-9)


def test_compiles_once_per_structural_group(tmp_path):
    cfg = small_sweep(grid="{learning_rate = [0.01, 0.1, 0.3], activation = ['tanh', 'relu'], "
                           "momentum = [0.5, 0.9]}")
    out = sweep.run_sweep(cfg, tmp_path)
    assert len(out["results"]) == 12
    assert out["programs_compiled"] == 2  # one per activation, never one per trial


def test_the_next_program_compiles_while_one_trains_within_the_memory_budget(
        tmp_path, monkeypatch):
    events = []
    dispatch = execute.GroupProgram.dispatch

    def recorded(self, chunk, *args):
        width = chunk[0].config.model.hidden[0]
        events.append(("start", width))
        started = dispatch(self, chunk, *args)

        def collected():
            events.append(("collect", width))
            return started.collect()
        return execute.Started(collected, started.ready)

    monkeypatch.setattr(execute.GroupProgram, "dispatch", recorded)
    cfg = small_sweep("sweep.pack_widths=false")
    rows = {}
    for name, budget in (("overlapped", None), ("one at a time", 0)):
        class Budgeted(execute.InFlight):
            def __init__(self, bytes_per_trial, budget=budget, **chunk):
                super().__init__(bytes_per_trial, **chunk)
                self.budget = self.budget if budget is None else budget

        monkeypatch.setattr(execute, "InFlight", Budgeted)
        events.clear()
        out = sweep.run_sweep(cfg, tmp_path / name)
        assert out["programs_compiled"] == 2
        assert events == ([("start", 4), ("start", 9), ("collect", 4), ("collect", 9)]
                          if budget is None else
                          [("start", 4), ("collect", 4), ("start", 9), ("collect", 9)])
        rows[name] = [json.loads(line) for line in open(tmp_path / name / execute.RESULTS)]
    assert [r["trial"] for r in rows["overlapped"]] == [0, 2, 1, 3]  # width 4's, then 9's
    assert rows["overlapped"] == rows["one at a time"]


def test_chunks_in_flight_count_the_minibatch_order_they_hold(monkeypatch):
    """The chunks a sweep keeps in flight stay within the memory budget counting what each
    chunk holds besides its trials (the minibatch order its trials share): they were left
    out, so many chunks of few trials could overrun it."""
    monkeypatch.setattr(execute.host, "memory_budget", lambda: 100)
    collected = []
    running = execute.InFlight(10, bytes_per_chunk=40)
    for name, trials in (("a", 3), ("b", 2), ("c", 1)):
        running.start(trials, lambda name=name: (lambda: collected.append(name), lambda: True))
    # a: 30 + 40; with b: 50 + 80 > 100 (a is collected); with c: 30 + 80 > 100 (b is).
    assert collected == ["a", "b"]
    running.finish_all()
    assert collected == ["a", "b", "c"]


def test_an_interrupt_while_the_next_program_compiles_keeps_the_finished_chunk(
        tmp_path, monkeypatch):
    """Chunks are recorded when collected: Ctrl-C while the second program compiles still
    records the first, which has trained (the resume then trains only the rest)."""
    dispatch = execute.GroupProgram.dispatch
    started = []

    def second_interrupted(self, *args):
        if started:
            while not started[0].ready():  # the first has trained; the second compiles
                time.sleep(0.05)
            raise KeyboardInterrupt
        started.append(dispatch(self, *args))
        return started[0]

    monkeypatch.setattr(execute.GroupProgram, "dispatch", second_interrupted)
    cfg = small_sweep("sweep.pack_widths=false")
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, tmp_path / "part")
    assert [r["trial"] for r in sweep.read_results(str(tmp_path / "part"))] == [0, 2]
    monkeypatch.undo()
    resumed = sweep.run_sweep(cfg, tmp_path / "part", resume=True)
    assert resumed["trial_epochs"] == 2 * cfg.training.epochs  # width 9's two trials alone


def test_random_search_is_seeded(tmp_path):
    cfg = small_sweep("sweep.grid={}", "sweep.count=5", "sweep.seed=3",
                      "sweep.random={learning_rate = {distribution = 'log_uniform', "
                      "low = 0.001, high = 1.0}, activation = ['tanh', 'relu'], "
                      "momentum = {distribution = 'uniform', low = 0.5, high = 0.9}}")
    a, b = sweep.trials(cfg), sweep.trials(cfg)
    assert [t.values for t in a] == [t.values for t in b]
    assert len(a) == 5
    for trial in a:
        assert 0.001 <= trial.values["learning_rate"] <= 1.0
        assert 0.5 <= trial.values["momentum"] <= 0.9
        assert trial.values["activation"] in ("tanh", "relu")
    # ``log = true`` puts a uniform on a log scale (it was dropped without a word).
    logged = {"distribution": "uniform", "low": 0.001, "high": 0.1, "log": True}
    assert spec.space_of({"random": {"learning_rate": logged}}, "x")["learning_rate"].log


@pytest.mark.parametrize(("override", "key"), [
    ("sweep.grid={learning_rat = [0.1]}", "sweep.grid.learning_rat"),
    ("sweep.grid={learning_rate = [-0.1]}", "sweep"),
    ("sweep.pack_widths='maybe'", "sweep.pack_widths"),
    (("sweep.count=2", "sweep.random={momentum = {distribution = 'beta', low = 0.1, "
                       "high = 0.2}}"), "sweep.random.momentum"),
    ("sweep.colour=1", "sweep.colour"),
    ("sweep.pack_widths=0", "sweep.pack_widths"),  # 0 == False, but no switch
    ("sweep.count=3", "sweep.count"),  # no random table to draw from
    # What no trial may vary, and two names for one key (the last would silently win).
    ("sweep.grid={'data.limit' = [100, 400]}", "sweep.grid.data.limit"),
    ("sweep.grid={'training.precision' = ['float32', 'float64']}",
     "sweep.grid.training.precision"),
    ("sweep.grid={'optimizer.learning_rate' = [0.1], learning_rate = [0.2]}",
     "sweep.grid.learning_rate"),
    ("sweep.grid={width = [4, 8], 'model.hidden' = [[6]]}", "sweep.grid.model.hidden"),
    # One layer argument under two spellings: the table showed one value, trials the other.
    (("model.hidden=[]", "model.activation='relu'",
      "model.layers=[{type = 'Dense', features = 5}, {type = 'Dense', features = 10}]",
      "sweep.grid={'model.layers[0].features' = [3], 'model.layers[00].features' = [4, 6]}"),
     "sweep.grid.model.layers[00].features: sets model.layers[0].features, as "
     "'model.layers[0].features' does"),
    # An integer hyperparameter's range without an integer; keys a distribution lacks.
    (("sweep.count=2", "sweep.random={width = {distribution = 'uniform', low = 4.2, "
                       "high = 4.8}}"), "sweep.random.width"),
    (("sweep.count=2", "sweep.random={momentum = {distribution = 'uniform', lowe = 0.1, "
                       "low = 0.1, high = 0.2}}"), "sweep.random.momentum.lowe"),
    (("sweep.count=2", "sweep.random={momentum = {distribution = 'uniform', low = 0.1, "
                       "high = 0.2, log = 'yes'}}"), "sweep.random.momentum.log"),
    # Ranges no draw can span (1e400 reads as inf): numpy's OverflowError traceback.
    (("sweep.count=2", "sweep.random={weight_decay = {distribution = 'log_uniform', "
                       "low = 1e-4, high = 1e400}}"), "sweep.random.weight_decay: needs a finite"),
    (("sweep.count=2", "sweep.random={momentum = {distribution = 'uniform', low = -1e308, "
                       "high = 1e308}}"), "sweep.random.momentum: needs a finite range"),
    (("sweep.count=2", "sweep.random={seed = {distribution = 'int', low = 1, "
                       f"high = 1{'0' * 400}}}}}"), "sweep.random.seed: needs a finite range"),
    # What no trial reads: every value trained alike (tiny.toml's optimizer is momentum).
    ("sweep.grid={b1 = [0.9, 0.5]}",
     "sweep.grid.b1: b1 is read by none of this sweep's optimizers (momentum): every value"),
    ("sweep.grid={'optimizer.b2' = [0.9, 0.99], optimizer = ['sgd', 'momentum']}",
     "sweep.grid.optimizer.b2: b2 is read by none of this sweep's optimizers (momentum, sgd)"),
    ("sweep.grid={'training.progress' = [true, false]}",
     "sweep.grid.training.progress: cannot be swept"),
    # Early stopping is jaxnn train's: a sweep trained every trial on, and best.toml stopped.
    ("training.patience=2", "training.patience: 2: a sweep trains every trial its epochs"),
    ("sweep.grid={'training.patience' = [0, 1]}",
     "sweep.grid.training.patience: cannot be swept: a sweep trains every trial its epochs"),
    (("model.hidden=[]", "model.activation='relu'",
      "model.layers=[{type = 'Dense', features = 5}, {type = 'Relu'}, "
      "{type = 'Dense', features = 10}]", "sweep.grid={activation = ['relu', 'tanh']}"),
     "sweep.grid.activation: model.activation is not read by a model.layers net"),
    # Every Dropout of a model.layers net gives its own rate: model.dropout reaches none.
    (("model.hidden=[]", "model.activation='relu'",
      "model.layers=[{type = 'Dense', features = 5}, {type = 'Dropout', rate = 0.2}, "
      "{type = 'Dense', features = 10}]", "sweep.grid={dropout = [0.1, 0.5]}"),
     "sweep.grid.dropout: model.dropout is read by a model.layers net's Dropout layers that"),
])


def test_bad_sweep_config_named(tmp_path, capsys, override, key):
    path = tmp_path / "s.toml"
    overrides = override if isinstance(override, tuple) else (override,)
    path.write_text(config.dumps(small_sweep(*overrides)))
    assert cli.main(["sweep", str(path), "--plan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jaxnn: error: {path}: {key}")


def test_a_network_of_the_other_layout_is_named_as_such(tmp_path, capsys):
    """The data are prepared once, in the layout of the config's own network: a swept net
    that takes the other layout (images for flat rows) was refused as a shape error deep in
    its first layer, though it trains alone."""
    path = tmp_path / "s.toml"
    path.write_text(config.dumps(small_sweep(
        "model.hidden=[]", "model.activation='relu'",
        "model.layers=[{type = 'Dense', features = 10}]",
        grid="{'model.layers' = [[{type = 'Dense', features = 10}], [{type = 'Conv2D', "
             "features = 2}, {type = 'Flatten'}, {type = 'Dense', features = 10}]]}")))
    assert cli.main(["sweep", str(path), "--plan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jaxnn: error: {path}: sweep: trial {{'model.layers': [{{'type': "
                          "'Conv2D'"), err
    assert err.rstrip().endswith("its network takes images (examples in their shape), and the "
                                 "sweep's data are flat "
                                 "rows (prepared once, for the config's own network); sweep "
                                 "networks of each kind apart"), err


@pytest.mark.parametrize("whole_first", [True, False])
def test_a_swept_layer_list_takes_its_swept_arguments_in_any_order(whole_first):
    """``model.layers`` swept beside a layer argument: the argument is set on each list,
    whichever name the grid gives first (given first, the list overwrote it: both trials
    trained the list's value while the table showed 4 and 8)."""
    nets = ("'model.layers' = [[{type = 'Dense', features = 5}, {type = 'Relu'}, "
            "{type = 'Dense', features = 10}], [{type = 'Dense', features = 7}, "
            "{type = 'Tanh'}, {type = 'Dense', features = 10}]]")
    part = "'model.layers[0].features' = [4, 8]"
    grid = "{" + ", ".join([nets, part] if whole_first else [part, nets]) + "}"
    cfg = small_sweep("model.hidden=[]", "model.activation='relu'",
                      "model.layers=[{type = 'Dense', features = 10}]", grid=grid)
    got = {(t.config.model.layers[1]["type"], t.config.model.layers[0]["features"])
           for t in sweep.trials(cfg)}
    assert got == {("Relu", 4), ("Relu", 8), ("Tanh", 4), ("Tanh", 8)}
    # A nested list and an argument inside it: each trial's own copy too.
    nested = ("'model.layers[0].layers' = [[{type = 'Dense', features = 5}, {type = 'Relu'}], "
              "[{type = 'Dense', features = 7}, {type = 'Tanh'}]]")
    part = "'model.layers[0].layers[0].features' = [4, 8]"
    grid = "{" + ", ".join([nested, part] if whole_first else [part, nested]) + "}"
    cfg = small_sweep("model.hidden=[]", "model.activation='relu'",
                      "model.layers=[{type = 'Residual', layers = [{type = 'Dense', features = "
                      "6}]}, {type = 'Dense', features = 10}]", grid=grid)
    trials = sweep.trials(cfg)
    got = {(t.config.model.layers[0]["layers"][1]["type"],
            t.config.model.layers[0]["layers"][0]["features"]) for t in trials}
    assert got == {("Relu", 4), ("Relu", 8), ("Tanh", 4), ("Tanh", 8)}
    assert {t.values["model.layers[0].layers"][0]["features"] for t in trials} == {5, 7}


def test_dropout_swept_over_a_layers_net_reaches_its_unrated_dropout(tmp_path, capsys):
    """The refusal above spares a net with a Dropout that takes ``model.dropout``."""
    path = tmp_path / "s.toml"
    path.write_text(config.dumps(small_sweep(
        "model.hidden=[]", "model.activation='relu'",
        "model.layers=[{type = 'Dense', features = 5}, {type = 'Residual', layers = "
        "[{type = 'Dropout'}]}, {type = 'Dense', features = 10}]",
        "sweep.grid={dropout = [0.1, 0.5]}")))
    assert cli.main(["sweep", str(path), "--plan"]) == 0, capsys.readouterr().err


def test_cli_plan_and_run(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(config.dumps(small_sweep()))
    assert cli.main(["sweep", str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "4 trials in 1 compiled program (" in out and "packed to 9" in out
    assert cli.main(["sweep", str(path), "--workdir", str(tmp_path / "s")]) == 0
    assert "best: trial" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "s" / "results.jsonl").open()]
    assert len(rows) == 4


def test_sharded_trials_equal_unsharded():
    """Trials sharded over 4 devices, widths packed, pruned by successive halving: the same
    as on one device."""
    script = f"""
import jax, numpy as np, tempfile
jax.config.update("jax_enable_x64", True)
from jaxnn import config, sweep
assert jax.device_count() == 4
cfg = config.load({TINY!r}, ["output.plots=false", "training.epochs=2",
    "training.precision='float64'", "model.hidden=[6, 6]",
    "sweep.grid={{learning_rate = [0.02, 0.05, 0.1, 0.2, 0.4], width = [4, 9]}}",
    "sweep.pruning={{eta = 3, min_epochs = 1}}"])
sharded = sweep.run_sweep(cfg, tempfile.mkdtemp())
print("programs", sharded["programs_compiled"])
import json
print("RESULTS", json.dumps([[r["status"], r["epochs"], r["val_loss"]]
                             for r in sharded["results"]]))
"""
    outputs = []
    for devices in (4, 1):
        code = script if devices == 4 else script.replace("== 4", "== 1")
        stdout = fresh_python(code, devices=devices)
        line = next(x for x in stdout.splitlines() if x.startswith("RESULTS"))
        outputs.append(json.loads(line.split(" ", 1)[1]))
    # Successive halving: 10 trials (padded to 12 over 4 devices) to a rung at epoch 1, the
    # best 3 on to the end (padded to 4).
    assert [row[:2] for row in outputs[0]] == [row[:2] for row in outputs[1]]
    assert sorted(row[1] for row in outputs[0]) == [1] * 7 + [2] * 3
    np.testing.assert_allclose([row[2] for row in outputs[0]], [row[2] for row in outputs[1]],
                               rtol=1e-9)


def test_one_table_names_every_sweepable_value():
    """Sweep names, the trainer's traced leaves and their defaults all come from
    `jaxnn.hyperparameters.TABLE`, whose keys are real config keys."""
    from jaxnn import hyperparameters

    cfg = config.from_dict({"optimizer": {"learning_rate": 0.25, "weight_decay": 1e-3}})
    for row in hyperparameters.TABLE:
        section, key = row.key.split(".")
        assert hasattr(getattr(cfg, section), key), row
    defaults = default_hparams(cfg, jnp.float64)
    assert tuple(defaults) == hyperparameters.names(hyperparameters.TRACED)
    assert float(defaults["learning_rate"]) == 0.25 and float(defaults["weight_decay"]) == 1e-3
    assert {**sweep.NUMERIC, **sweep.STRUCTURAL} == {h.name: h.key for h in
                                                     hyperparameters.TABLE}
    drawn = sweep.trials(config.from_dict({"sweep": {"random": {
        "batch_size": {"distribution": "uniform", "low": 8, "high": 32}}, "count": 3}}))
    assert all(isinstance(t.values["batch_size"], int) for t in drawn)  # integer rows round


def test_adam_b1_is_traced_and_swept_in_one_program(tmp_path):
    """b1 became sweepable with a row of the table and one line of `jaxnn.optim`."""
    cfg = small_sweep("optimizer.name='adam'", grid="{b1 = [0.5, 0.9], learning_rate = [0.01]}")
    out = sweep.run_sweep(cfg, tmp_path)
    assert out["programs_compiled"] == 1
    dataset = run.prepare(cfg)
    losses = []
    for row in out["results"]:
        alone = sweep.make_trial(row["trial"], row["values"], cfg).config
        assert alone.optimizer.b1 == row["values"]["b1"]
        _, metrics = make_train(alone, dataset, mesh=None)(
            jax.random.key(0), default_hparams(alone, jnp.float64))
        assert row["val_loss"] == pytest.approx(float(metrics["val_loss"][-1]), rel=1e-9)
        losses.append(row["val_loss"])
    assert losses[0] != losses[1]


def test_short_programs_compile_with_the_older_emitters(monkeypatch):
    from jaxnn.sweep import programs

    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert programs.compiler_options() == {"xla_backend_optimization_level": 1}
    assert programs.compiler_options(use_older_emitters=True)[
        "xla_cpu_use_fusion_emitters"] is False
    assert programs.compiler_options(run_once=True) == {
        "xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert programs.compiler_options() == {"xla_gpu_enable_triton_gemm": False}
    assert programs.compiler_options(run_once=True) == {"xla_gpu_enable_triton_gemm": False}


@pytest.mark.parametrize("switch", ["xla_cpu_use_fusion_emitters", "xla_gpu_enable_triton_gemm"])
def test_a_jaxlib_without_an_optional_switch_compiles_without_it(switch):
    from jaxnn.sweep import programs

    lowered = jax.jit(lambda x: x * 2).lower(jnp.ones(3))
    seen = []

    class Lowered:  # refuses the switch as a jaxlib without it does
        def compile(self, compiler_options=None):
            seen.append(compiler_options)
            if switch in (compiler_options or {}):
                raise jax.errors.JaxRuntimeError(
                    f"INVALID_ARGUMENT: No such compile option: '{switch}'")
            return lowered.compile(compiler_options=compiler_options)

    compiled = programs.compile_lowered(Lowered(), {"xla_backend_optimization_level": 1,
                                                    switch: False})
    assert seen[-1] == {"xla_backend_optimization_level": 1}
    np.testing.assert_array_equal(compiled(jnp.ones(3)), 2 * np.ones(3))
    with pytest.raises(jax.errors.JaxRuntimeError):  # other errors are not swallowed
        programs.compile_lowered(lowered, {"xla_no_such_option": 1})


def test_seed_key_data_is_the_default_implementations_key():
    """The sweep's programs take each seed's key as host data (no small device programs
    to make, gather and lay out keys); it is `jax.random.key`'s, under whichever
    implementation is the default when it is asked for."""
    from jaxnn.sweep.programs import seed_key_data

    for seed in (0, 7, 2**31 - 1, 2**32 - 1):
        np.testing.assert_array_equal(seed_key_data(seed),
                                      jax.random.key_data(jax.random.key(seed)))
    default = jax.config.jax_default_prng_impl
    try:
        jax.config.update("jax_default_prng_impl", "rbg")
        np.testing.assert_array_equal(seed_key_data(7), jax.random.key_data(jax.random.key(7)))
    finally:
        jax.config.update("jax_default_prng_impl", default)
