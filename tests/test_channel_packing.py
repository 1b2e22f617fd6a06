"""Channel packing: CNN trials that differ in conv or Dense features inside ``model.layers``
share one program, each trial equal to its lone run."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import cli, config, run, sweep
from jaxnn.sweep import channels, packing
from jaxnn.train import default_hparams, make_train

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                    "tiny.toml")

# Padded channels pass a BatchNorm, an activation with f(0) != 0 (Sigmoid, masked), a
# max-pool and a Flatten (whose Dense takes its rows from every position's channels).
LAYERS = """[
  {type = "Conv2D", features = 8, kernel_size = 3, use_bias = false},
  {type = "BatchNorm"},
  {type = "Silu"},
  {type = "Conv2D", features = 6, kernel_size = 3},
  {type = "Sigmoid"},
  {type = "MaxPool2D", window = 2},
  {type = "Flatten"},
  {type = "Dense", features = 16},
  {type = "Relu"},
  {type = "Dense", features = 10},
]"""


def cnn_sweep(grid, *overrides):
    return config.load(TINY, [
        "model.hidden=[]", "model.activation='relu'", f"model.layers={LAYERS}",
        "model.loss='softmax_cross_entropy'",
        "optimizer.name='adam'", "training.epochs=2", "training.precision='float64'",
        "output.plots=false", f"sweep.grid={grid}", *overrides])


@pytest.mark.parametrize("grid", [
    '{"model.layers[0].features" = [4, 8], "model.layers[3].features" = [3, 6], '
    "learning_rate = [0.01]}",
    # Trials with their own seeds: per-trial keys and per-trial initial draws.
    '{"model.layers[3].features" = [2, 6], seed = [0, 5], learning_rate = [0.003]}',
])
def test_every_packed_trial_equals_its_lone_run(tmp_path, grid):
    cfg = cnn_sweep(grid, "sweep.pack_widths=true")
    out = sweep.run_sweep(cfg, tmp_path, return_params=True)
    dataset = run.prepare(cfg)
    plan = sweep.make_plan(cfg, dataset)
    assert len(plan.groups) == 1 and plan.groups[0].packed_layers
    assert out["programs_compiled"] == 1
    for trial, row in zip(plan.trials, out["results"], strict=True):
        trainer = make_train(trial.config, dataset, mesh=None)
        alone, metrics = trainer(jax.random.key(trial.config.training.seed),
                                 default_hparams(trial.config, jnp.float64))
        got = sweep.trial_params_unpadded(out["params"][trial.index], trial, dataset)
        assert jax.tree.structure(got) == jax.tree.structure(alone.params)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(alone.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14)
        assert row["val_loss"] == pytest.approx(float(metrics["val_loss"][-1]), rel=1e-9)


def test_plan_describes_each_program_once():
    # A model.layers net left a blank for the MLP's activation: "10 layers,  adam/...".
    cnn = cnn_sweep("{learning_rate = [0.01]}")
    assert "; 10 layers, adam/cosine, " in sweep.make_plan(cnn, run.prepare(cnn)).describe()
    mlp = config.load(TINY, ["model.hidden=[8]", "sweep.grid={learning_rate = [0.01]}"])
    assert "; hidden=[8], tanh, momentum/" in sweep.make_plan(mlp, run.prepare(mlp)).describe()


def _program_features(plan):
    return [sorted({t.values["model.layers[3].features"] for t in g.trials})
            for g in plan.groups]


def test_auto_channel_packing_follows_the_cost_model(monkeypatch):
    cfg = cnn_sweep('{"model.layers[3].features" = [4, 8, 256], learning_rate = [0.01]}')
    dataset = run.prepare(cfg)
    backend = jax.default_backend()
    monkeypatch.setitem(sweep.COMPILE_SCALE, backend, 0.0)  # padding never pays
    plan = sweep.make_plan(cfg, dataset)
    assert _program_features(plan) == [[4], [8], [256]]
    assert all(not g.packed_layers for g in plan.groups)
    monkeypatch.setitem(sweep.COMPILE_SCALE, backend, 1e9)  # compiling is all that counts
    plan = sweep.make_plan(cfg, dataset)
    assert _program_features(plan) == [[4, 8, 256]]
    assert plan.groups[0].config.model.layers[3]["features"] == 256
    assert "features of model.layers [3] [[4], [8], [256]] packed to [256]" in plan.describe()
    # In between: a program costs more than padding 4 to 8 and less than padding 8 to 256
    # twice, so 4 and 8 share a program and 256 does not pay for their padding.
    flops = channels.step_flops_of(cfg, (3,), dataset.input_shape, dataset.output_size)
    steps = cfg.training.epochs * (len(dataset.x_train) // cfg.training.batch_size)
    seconds = {w: steps * flops((w,)) / sweep.FLOPS_PER_SECOND[backend] for w in (4, 8, 256)}
    assert seconds[4] < seconds[8] < seconds[256]
    compiling = np.sqrt((seconds[8] - seconds[4]) * 2 * (seconds[256] - seconds[8]))
    monkeypatch.setattr(packing, "compile_seconds", lambda *_: compiling)
    assert _program_features(sweep.make_plan(cfg, dataset)) == [[4, 8], [256]]


@pytest.mark.parametrize("layer", ['{type = "LayerNorm"}', '{type = "Dropout", rate = 0.1}'])
def test_networks_that_mix_or_draw_per_channel_are_not_packed(layer):
    layers = LAYERS.replace('{type = "Silu"},', f'{{type = "Silu"}}, {layer},')
    cfg = cnn_sweep('{"model.layers[0].features" = [4, 8]}', f"model.layers={layers}",
                    "sweep.pack_widths=true")
    plan = sweep.make_plan(cfg, run.prepare(cfg))
    assert [len(g.trials) for g in plan.groups] == [1, 1]
    assert all(not g.packed_layers for g in plan.groups)


# A Dropout after the Flatten: padded for layer 3 (up to the next Dense), not for layer 0.
DROPOUT_AFTER_FLATTEN = LAYERS.replace('{type = "Flatten"},',
                                       '{type = "Flatten"}, {type = "Dropout", rate = 0.3},')


def test_a_dropout_beyond_the_padded_channels_packs_and_each_trial_equals_its_lone_run(
        tmp_path):
    cfg = cnn_sweep('{"model.layers[0].features" = [4, 8], learning_rate = [0.01]}',
                    f"model.layers={DROPOUT_AFTER_FLATTEN}", "sweep.pack_widths=true")
    out = sweep.run_sweep(cfg, tmp_path, return_params=True)
    dataset = run.prepare(cfg)
    plan = sweep.make_plan(cfg, dataset)
    assert len(plan.groups) == 1 and plan.groups[0].packed_layers == (0,)
    for trial in plan.trials:
        trainer = make_train(trial.config, dataset, mesh=None)
        alone, _ = trainer(jax.random.key(trial.config.training.seed),
                           default_hparams(trial.config, jnp.float64))
        got = sweep.trial_params_unpadded(out["params"][trial.index], trial, dataset)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(alone.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14)
    # Sweeping layer 3, the Dropout is within its padded activations: one program per count.
    cfg = cnn_sweep('{"model.layers[3].features" = [3, 6]}',
                    f"model.layers={DROPOUT_AFTER_FLATTEN}", "sweep.pack_widths=true")
    assert [len(g.trials) for g in sweep.make_plan(cfg, dataset).groups] == [1, 1]


def test_a_missing_layer_is_named(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(config.dumps(cnn_sweep('{"model.layers[20].features" = [4, 8]}')))
    assert cli.main(["sweep", str(path), "--plan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jaxnn: error: {path}: sweep: ")
    assert "model.layers[20].features: the config has no model.layers[20]" in err
