"""The training engine: vmapped trials, resume, determinism, divergence, data parallelism."""

import io
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fresh import fresh_python
from numerics import assert_close, tolerance

from jaxnn import checkpoint, config, run
from jaxnn.train import default_hparams, make_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.toml")


def tiny(*overrides):
    return config.load(TINY, ["output.plots=false", *overrides])


def assert_trees_close(a, b, rtol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=0)


def test_vmapped_learning_rates_equal_separate_runs():
    cfg = tiny("training.precision='float64'", "training.epochs=3")
    dataset = run.prepare(cfg)
    trainer = make_train(cfg, dataset, mesh=None)
    base = default_hparams(cfg, jnp.float64)
    rates = jnp.array([0.01, 0.03, 0.1, 0.3])
    hparams = {**base, "learning_rate": rates}
    axes = {name: (0 if name == "learning_rate" else None) for name in hparams}
    key = jax.random.key(0)
    final, metrics = jax.jit(jax.vmap(trainer, in_axes=(None, axes)))(key, hparams)
    params = final.params
    assert metrics["train_loss"].shape == (4, 3)
    for i, rate in enumerate(rates):
        alone, alone_metrics = trainer(key, {**base, "learning_rate": rate})
        alone_params = alone.params
        assert_trees_close(jax.tree.map(lambda p, i=i: p[i], params), alone_params, 1e-9)
        np.testing.assert_allclose(metrics["val_loss"][i], alone_metrics["val_loss"], rtol=1e-9)
    # Different rates really trained differently.
    assert len({float(v) for v in metrics["train_loss"][:, -1]}) == 4


def test_chunked_run_equals_one_scan():
    cfg = tiny("training.precision='float64'", "training.epochs=4")
    trainer = make_train(cfg, run.prepare(cfg), mesh=None)
    hparams = default_hparams(cfg, jnp.float64)
    key = jax.random.key(3)
    whole, _ = trainer.run_epochs(trainer.init(key, hparams), hparams, 4)
    state = trainer.init(key, hparams)
    for _ in range(4):
        state, _ = trainer.run_epochs(state, hparams, 1)
    assert_trees_close(state.params, whole.params, 1e-12)



def test_minibatch_order_drawn_apart_equals_drawn_inside():
    cfg = tiny("training.precision='float64'", "training.epochs=4")
    trainer = make_train(cfg, run.prepare(cfg), mesh=None)
    hparams = default_hparams(cfg, jnp.float64)
    inside, inside_metrics = trainer.run_epochs(trainer.init(jax.random.key(5), hparams),
                                                hparams, 4)
    state = trainer.init(jax.random.key(5), hparams)
    for first in (0, 2):  # Two chunks: the order of epochs 2 and 3 follows the epoch count.
        state, metrics = trainer.run_epochs(state, hparams, 2,
                                            batches=trainer.batches(state.key, first, 2))
        np.testing.assert_array_equal(metrics["train_loss"],
                                      inside_metrics["train_loss"][first:first + 2])
    assert_trees_close(state.params, inside.params, 0)
    wrong = trainer.batches(state.key, 0, 3)
    with pytest.raises(ValueError, match="2 epochs need"):
        trainer.run_epochs(state, hparams, 2, batches=wrong)

def test_run_directory_contents(tmp_path):
    summary = run.train_and_evaluate(tiny("output.plots=true"), tmp_path)
    assert summary["status"] == "completed"
    assert summary["epochs_run"] == 4
    assert 0.5 < summary["test_accuracy"] <= 1
    for name in ("config.toml", "metrics.jsonl", "checkpoint.npz", "summary.json",
                 "loss.png", "accuracy.png"):
        assert (tmp_path / name).exists(), name
    rows = run.read_metrics(str(tmp_path))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "wall_time_s", "steps_per_s", "compile_time_s"):
        assert on_disk[key] is not None
    # The resolved config is runnable and equal to the one trained.
    assert config.load(tmp_path / "config.toml").replace(source="x") == \
        tiny("output.plots=true").replace(source="x")
    with pytest.raises(run.RunError, match="already holds a run"):
        run.train_and_evaluate(tiny(), tmp_path)


def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    cfg = tiny("training.precision='float64'", "training.epochs=6", "training.chunk_epochs=2")
    whole, part = tmp_path / "whole", tmp_path / "part"
    run.train_and_evaluate(cfg, whole)

    # Kill the second run right after its second checkpoint (epoch 4 of 6).
    real_save, saves = checkpoint.save, []

    def save_then_die(path, tree, **kwargs):
        real_save(path, tree, **kwargs)
        saves.append(path)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run.train_and_evaluate(cfg, part)
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert [r["epoch"] for r in run.read_metrics(str(part))] == [1, 2, 3, 4]
    assert not (part / "summary.json").exists()

    # A resumed run draws no initial state: the checkpoint's template is its shapes.
    monkeypatch.setattr(run, "_initial_state", lambda *_: pytest.fail("drew an initial state"))
    summary = run.train_and_evaluate(config.load(part / "config.toml"), part, resume=True)
    assert summary["epochs_run"] == 6
    template = {"state": _state_template(cfg), "val_loss": np.float64(0),
                "epoch": np.int64(0), "stopped": np.int64(0)}
    a = checkpoint.load(whole / "checkpoint.npz", template)["state"]
    b = checkpoint.load(part / "checkpoint.npz", template)["state"]
    assert_trees_close(a, b, 1e-12)
    assert run.read_metrics(str(whole)) == run.read_metrics(str(part))
    whole_summary = json.loads((whole / "summary.json").read_text())
    assert summary["steps"] == whole_summary["steps"] == 6 * 9  # the run's, not the resumed 2


def test_a_finished_run_resumed_keeps_what_its_training_measured(tmp_path):
    """Re-reported, a finished run wrote steps 0, no speed, 0 s of compiling and training,
    and (with plots off) dropped its figures from the summary, though they stand."""
    run.train_and_evaluate(tiny("output.plots=true"), tmp_path / "done")
    before = json.loads((tmp_path / "done" / "summary.json").read_text())
    again = run.train_and_evaluate(tiny("output.plots=false"), tmp_path / "done", resume=True)
    for key in ("steps", "steps_per_s", "compile_time_s", "train_time_s", "wall_time_s",
                "plots", "test_loss"):
        assert again[key] == before[key], key


def _state_template(cfg):
    run.enable_precision(cfg)
    trainer = make_train(cfg, run.prepare(cfg), mesh=None)
    return trainer.init(jax.random.key(0), default_hparams(cfg, trainer.dtype))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "an array"])
def test_bad_checkpoint_is_a_clear_error(tmp_path, damage):
    run.train_and_evaluate(tiny(), tmp_path)
    path = tmp_path / "checkpoint.npz"
    data = path.read_bytes()
    array = io.BytesIO()
    np.save(array, np.zeros(3))  # a lone .npy array in its place
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00junk" * 100,
                      "empty": b"", "an array": array.getvalue()}[damage])
    with pytest.raises(checkpoint.CheckpointError, match="corrupted or truncated"):
        run.train_and_evaluate(tiny(), tmp_path, resume=True)


def test_checkpoint_must_fit_the_model(tmp_path):
    """Another model is refused for what changed, before the checkpoint's shapes are
    compared (`test_a_checkpoint_loads_into_the_shapes_of_its_tree`)."""
    run.train_and_evaluate(tiny(), tmp_path)
    with pytest.raises(run.RunError, match=r"model.hidden\[0\] is 8, but the run was trained "
                       "with 16"):
        run.train_and_evaluate(tiny("model.hidden=[8]"), tmp_path, resume=True)


def test_a_checkpoint_loads_into_the_shapes_of_its_tree(tmp_path):
    """`checkpoint.load` takes `jax.eval_shape`'s template (a typed key included) as it
    takes the arrays themselves, and checks it the same way."""
    tree = {"key": jax.random.key(3), "w": jnp.arange(6.0).reshape(2, 3)}
    checkpoint.save(tmp_path / "c.npz", tree)
    shapes = jax.eval_shape(lambda: tree)
    for template in (tree, shapes):
        loaded = checkpoint.load(tmp_path / "c.npz", template)
        np.testing.assert_array_equal(jax.random.key_data(loaded["key"]),
                                      jax.random.key_data(tree["key"]))
        np.testing.assert_array_equal(loaded["w"], tree["w"])
    with pytest.raises(checkpoint.CheckpointError, match=r"\['w'\] has shape \(2, 3\)"):
        checkpoint.load(tmp_path / "c.npz", {**shapes, "w": jax.ShapeDtypeStruct((3, 2),
                                                                                  jnp.float32)})


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.ones(3)})
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError):
        checkpoint.save(path, {"w": np.zeros(3)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]
    monkeypatch.undo()
    # A writer killed mid-write leaves its temporary file: the next save removes it. The
    # checkpoint's mode is any new file's (the umask's), not a temporary file's 0o600.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / f".c.npz.tmp-{dead}-abcd").write_bytes(b"half a checkpoint")
    live = tmp_path / f".c.npz.tmp-{os.getpid()}-ef01"  # another save under way: kept
    live.write_bytes(b"being written")
    umask = os.umask(0o022)
    try:
        checkpoint.save(path, {"w": np.zeros(3)})
    finally:
        os.umask(umask)
    assert sorted(os.listdir(tmp_path)) == [live.name, "c.npz"]
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_same_seed_same_metrics(tmp_path):
    a = run.train_and_evaluate(tiny(), tmp_path / "a")
    b = run.train_and_evaluate(tiny(), tmp_path / "b")
    assert run.read_metrics(str(tmp_path / "a")) == run.read_metrics(str(tmp_path / "b"))
    assert a["test_loss"] == b["test_loss"]
    c = run.train_and_evaluate(tiny("training.seed=1"), tmp_path / "c")
    assert c["test_loss"] != a["test_loss"]


def test_divergence_stops_with_step_and_last_finite_loss(tmp_path):
    summary = run.train_and_evaluate(
        tiny("model.activation='relu'", "optimizer.learning_rate=1e3"),
        tmp_path)
    assert summary["status"] == "diverged"
    assert "non-finite at step" in summary["message"]
    assert "last finite loss" in summary["message"]


@pytest.mark.parametrize("diverging_after", [False, True])
@pytest.mark.parametrize("chunk", [0, 7])
def test_early_stopping(tmp_path, chunk, diverging_after, monkeypatch):
    """The same stop whatever the epochs per compiled chunk (with 7, the run went on to the
    chunk's end, and the best epoch moved past the stop), also when the loss turns
    non-finite later in the chunk that stops (the run was reported diverged)."""
    if diverging_after:
        rows_of = run._rows

        def diverging(metrics, first_epoch):
            rows = rows_of(metrics, first_epoch)
            for row in rows:
                if row["epoch"] >= 21:
                    row["nonfinite_step"] = 0
            return rows

        monkeypatch.setattr(run, "_rows", diverging)
    summary = run.train_and_evaluate(
        tiny("training.epochs=60", "training.patience=2", "optimizer.learning_rate=0.5",
             "optimizer.name='sgd'", "schedule.name='constant'",
             f"training.chunk_epochs={chunk}", "training.precision='float64'"), tmp_path)
    assert summary["status"] == "early_stopped"
    assert summary["epochs_run"] < 60
    assert summary["epochs_run"] - summary["best_val_epoch"] == 2
    assert (summary["epochs_run"], summary["best_val_epoch"]) == (20, 18)
    assert len(run.read_metrics(str(tmp_path))) == 20


def test_early_stopping_without_a_validation_split_is_refused(tmp_path):
    with pytest.raises(config.ConfigError, match=r"training\.patience: early stopping watches "
                                                 "the validation loss, and there is no "
                                                 "validation split"):
        run.train_and_evaluate(tiny("training.patience=2", "data.validation_fraction=0"),
                               tmp_path)


@pytest.mark.parametrize("backprop", ["autodiff", "manual"])
@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"])
def test_every_optimizer_learns(name, backprop, tmp_path):
    # Plain SGD at 0.05 reached 0.74 (3 examples above the bar): it gets a larger step.
    lr = {"sgd": 0.2, "momentum": 0.05, "nesterov": 0.05}.get(name, 0.005)
    summary = run.train_and_evaluate(
        tiny(f"optimizer.name='{name}'", f"optimizer.learning_rate={lr}",
             f"training.backprop='{backprop}'", "training.epochs=6", "output.checkpoint=false"),
        tmp_path)
    assert summary["test_accuracy"] > 0.7, summary


def test_a_regression_run_draws_no_accuracy_figure(tmp_path):
    """It drew an empty accuracy.png (and matplotlib warned of a legend with no entries)."""
    summary = run.train_and_evaluate(tiny("data.name='regression'", "model.loss='mse'",
                                          "output.plots=true"), tmp_path)
    assert [os.path.basename(p) for p in summary["plots"]] == ["loss.png"]
    assert not (tmp_path / "accuracy.png").exists()


def test_a_step_boundary_scales_from_the_first_step_of_the_next_epoch():
    """Epoch 0 scales from the start (as a step count of at least 1, it left the first step
    at the full rate); epoch 1 from the first step of epoch 2."""
    from jaxnn import optim

    cfg = config.ScheduleConfig(name="step", boundaries=(0.0, 1.0), scales=(0.5, 0.1))
    unit = optim.unit_schedule(cfg, steps_per_epoch=10, epochs=3)
    assert [float(unit(count)) for count in (0, 9, 10, 29)] == pytest.approx(
        [0.5, 0.5, 0.05, 0.05])


def test_exponential_and_warmup_schedules_follow_their_epochs_unrounded():
    """decay_epochs = 1.3 of 4 steps decayed every 5 steps (1.25 epochs), 0.1 every step;
    warmup_epochs = 0 warmed up for a step (the rate 0 at step 0) instead of none."""
    from jaxnn import optim

    for decay_epochs in (1.3, 0.1):
        unit = optim.unit_schedule(config.ScheduleConfig(
            name="exponential", decay_rate=0.5, decay_epochs=decay_epochs), 4, 20)
        epochs = np.array([1.0, 5.2, 13.0])
        np.testing.assert_allclose([float(unit(e * 4)) for e in epochs],
                                   0.5 ** (epochs / decay_epochs),
                                   rtol=tolerance(jnp.float32, 1.0))  # optax's float32
    cosine = optim.unit_schedule(config.ScheduleConfig(name="cosine", final_fraction=0.1), 4, 4)
    warm = optim.unit_schedule(config.ScheduleConfig(name="warmup_cosine", warmup_epochs=0,
                                                     final_fraction=0.1), 4, 4)
    assert [float(warm(step)) for step in range(16)] == pytest.approx(
        [float(cosine(step)) for step in range(16)], rel=tolerance(jnp.float32, 1.0))


@pytest.mark.parametrize("schedule", ["constant", "exponential", "step", "cosine",
                                      "warmup_cosine"])
def test_every_schedule_runs(schedule, tmp_path):
    extra = ["schedule.boundaries=[1, 2]", "schedule.scales=[0.5, 0.5]"] if schedule == "step" \
        else []
    summary = run.train_and_evaluate(
        tiny(f"schedule.name='{schedule}'", *extra, "output.checkpoint=false"), tmp_path)
    assert summary["test_accuracy"] > 0.7


def test_manual_backprop_trains_like_autodiff(tmp_path):
    a = run.train_and_evaluate(tiny("training.precision='float64'"), tmp_path / "a")
    b = run.train_and_evaluate(tiny("training.precision='float64'", "training.backprop='manual'"),
                               tmp_path / "b")
    assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-9)


@pytest.mark.parametrize("backprop", ["autodiff", "manual"])
def test_mixed_precision_step_keeps_float32_master_weights(backprop, key):
    import optax

    import jaxnn
    from jaxnn.train import make_step

    net = jaxnn.serial(jaxnn.Dense(32), jaxnn.Relu(), jaxnn.Dense(10))
    _, params, state = net.init(key, (None, 16))
    params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    x = jax.random.normal(jax.random.fold_in(key, 1), (8, 16), jnp.float32)
    y = jnp.arange(8) % 10
    opt = optax.sgd(0.1)
    full = make_step(net, jaxnn.softmax_cross_entropy, opt, backprop=backprop)
    mixed = make_step(net, jaxnn.softmax_cross_entropy, opt, backprop=backprop,
                      compute_dtype=jnp.bfloat16)
    p32, _, _, loss32, pred32 = jax.jit(full)(params, state, opt.init(params), x, y)
    p16, _, _, loss16, pred16 = jax.jit(mixed)(params, state, opt.init(params), x, y)
    for leaf in jax.tree.leaves(p16):
        assert leaf.dtype == jnp.float32
    assert loss16.dtype == pred16.dtype == jnp.float32
    # bfloat16 keeps 8 bits of mantissa (eps 2**-7): the step agrees with float32 to a few
    # bfloat16 eps of each quantity's scale (measured: the loss 0.06 eps, the updates 0.6).
    assert_close(loss16, loss32, dtype=jnp.bfloat16, factor=2)

    def update(new):
        return jax.tree.map(lambda n, p: n - p, new, params)

    assert_close(update(p16), update(p32), dtype=jnp.bfloat16, factor=4)
    # The network really ran in bfloat16: its output is not the float32 one, even up to
    # float32 rounding.
    assert float(jnp.max(jnp.abs(pred16 - pred32))) > tolerance(
        jnp.float32, jnp.max(jnp.abs(pred32)))


@pytest.mark.parametrize(("argument", "quoted"), [
    # An unknown backprop ran autodiff; an integer compute dtype cast the weights to 0.
    ({"backprop": "bogus"}, "backprop must be one of 'autodiff', 'manual', got 'bogus'"),
    ({"compute_dtype": jnp.int8}, "compute_dtype must be a floating dtype"),
    ({"compute_dtype": "complex64"}, "got 'complex64'")])
def test_make_step_refuses_unknown_backprop_and_compute_dtype(argument, quoted):
    import optax

    import jaxnn
    from jaxnn.train import make_step

    net = jaxnn.serial(jaxnn.Dense(3))
    with pytest.raises(ValueError, match=f"^make_step: .*{re.escape(quoted)}"):
        make_step(net, jaxnn.softmax_cross_entropy, optax.sgd(0.1), **argument)



def test_make_step_refuses_what_is_not_a_layer_or_a_loss():
    """optax's l2_loss as the loss failed in the step on a missing .value."""
    import optax

    import jaxnn
    from jaxnn.train import make_step

    with pytest.raises(TypeError, match=r"make_step: loss must be a jaxnn.losses.Loss .*l2_loss"):
        make_step(jaxnn.serial(jaxnn.Dense(3)), optax.l2_loss, optax.sgd(0.1))
    with pytest.raises(TypeError, match=r"make_step: net is not a Layer: .*Dense"):
        make_step(jaxnn.Dense, jaxnn.softmax_cross_entropy, optax.sgd(0.1))


def test_mixed_precision_training_from_config(tmp_path):
    summary = run.train_and_evaluate(
        tiny("training.compute_dtype='bfloat16'", "output.checkpoint=false"), tmp_path)
    assert summary["test_accuracy"] > 0.7, summary
    with pytest.raises(config.ConfigError, match=r"training\.compute_dtype"):
        tiny("training.compute_dtype='float16'")


def test_data_parallel_equals_one_device():
    """Four CPU devices (a fresh process) shard each batch; results equal one device."""
    script = f"""
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from jaxnn import config, run
from jaxnn.train import default_hparams, make_train
assert jax.device_count() == 4
cfg = config.load({TINY!r}, ["training.precision='float64'", "training.epochs=2"])
data = run.prepare(cfg)
key, results = jax.random.key(0), []
for mesh in ("auto", None):
    trainer = make_train(cfg, data, mesh=mesh)
    final, _ = trainer(key, default_hparams(cfg, jnp.float64))
    results.append(final.params)
for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(a, b, rtol=1e-9)
print("sharded == unsharded")
"""
    assert "sharded == unsharded" in fresh_python(script, devices=4)


@pytest.mark.parametrize("name", config.OPTIMIZERS)
def test_keys_read_are_what_each_optimizer_reads(name):
    """`optim.KEYS_READ`, which a sweep trusts to refuse sweeping a key no trial reads,
    against the optimizers themselves: changing a key changes the updates exactly when the
    optimizer is listed as reading it."""
    import dataclasses

    from jaxnn import optim
    from jaxnn.train import OPTAX_PROMOTION

    params = {"w": jnp.asarray([1.0, -2.0])}
    grads = [{"w": jnp.asarray(g)} for g in ([0.3, 0.1], [-0.6, 0.2], [0.1, -0.4])]
    hparams = {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.0, "b1": 0.9}

    def updates(cfg, values):
        opt = optim.optimizer(cfg, config.ScheduleConfig(),
                              {k: jnp.asarray(v) for k, v in values.items()}, 10, 1)
        with OPTAX_PROMOTION():  # as training runs optax (its int32 step counts)
            state, out = opt.init(params), []
            for grad in grads:
                update, state = opt.update(grad, state, params)
                out.append(update["w"])
        return np.asarray(out)

    base = config.OptimizerConfig(name=name)
    reference = updates(base, hparams)
    for key, other in (("momentum", 0.5), ("b1", 0.5), ("b2", 0.9), ("eps", 0.1),
                       ("decay", 0.5)):
        changed = updates(base, {**hparams, key: other}) if key in hparams else \
            updates(dataclasses.replace(base, **{key: other}), hparams)
        assert (not np.allclose(changed, reference)) == (key in optim.KEYS_READ[name]), key
