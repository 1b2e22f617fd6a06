"""Training networks with state (BatchNorm) and branches (Residual) from configs: resume is
bit-exact for params and state, a sweep vmaps them with one state per trial, and config
errors name the nested layer at fault."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import checkpoint, cli, config, run, sweep
from jaxnn.train import default_hparams, make_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.toml")
RESNET_LAYERS = (
    '[{type = "Conv2D", features = 4, kernel_size = 3, use_bias = false}, '
    '{type = "BatchNorm", momentum = 0.8}, {type = "Relu"}, '
    '{type = "Residual", layers = [{type = "Conv2D", features = 4, kernel_size = 3, '
    'use_bias = false}, {type = "BatchNorm", momentum = 0.8}]}, {type = "Relu"}, '
    '{type = "GlobalAvgPool"}, {type = "Dense", features = 10}]')


def tiny_resnet(*overrides):
    return config.load(TINY, ["output.plots=false", "training.precision='float64'",
                              "model.hidden=[]", "model.activation='relu'",
                              f"model.layers={RESNET_LAYERS}",
                              "data.limit=200",
                              "training.batch_size=50", *overrides])


def _state_template(cfg):
    run.enable_precision(cfg)
    trainer = make_train(cfg, run.prepare(cfg), mesh=None)
    state = trainer.init(jax.random.key(0), default_hparams(cfg, trainer.dtype))
    return {"state": state, "val_loss": np.float64(0), "epoch": np.int64(0),
            "stopped": np.int64(0)}


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = tiny_resnet("training.epochs=4", "training.chunk_epochs=2")
    whole, part = tmp_path / "whole", tmp_path / "part"
    run.train_and_evaluate(cfg, whole)
    real_save = checkpoint.save

    def save_then_die(path, tree, **kwargs):
        real_save(path, tree, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run.train_and_evaluate(cfg, part)
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert [r["epoch"] for r in run.read_metrics(str(part))] == [1, 2]
    run.train_and_evaluate(config.load(part / "config.toml"), part, resume=True)
    template = _state_template(cfg)
    a = checkpoint.load(whole / "checkpoint.npz", template)["state"]
    b = checkpoint.load(part / "checkpoint.npz", template)["state"]
    for x, y in zip(jax.tree.leaves((a.params, a.model_state)),
                    jax.tree.leaves((b.params, b.model_state)), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=0)
    # The running statistics were trained: the first BatchNorm's moved from (0, 1).
    first = a.model_state[1]
    assert float(jnp.max(jnp.abs(first["mean"]))) > 1e-3
    assert float(jnp.max(jnp.abs(first["var"] - 1))) > 1e-3
    assert run.read_metrics(str(whole)) == run.read_metrics(str(part))


def test_sweep_of_a_batchnorm_resnet_is_one_program_with_per_trial_state(tmp_path):
    cfg = tiny_resnet("training.epochs=2",
                      "sweep.grid={learning_rate = [0.01, 0.1], weight_decay = [0.0, 0.01]}")
    out = sweep.run_sweep(cfg, tmp_path)
    assert out["programs_compiled"] == 1
    plan = sweep.make_plan(cfg, run.prepare(cfg))
    dataset = run.prepare(cfg)
    losses = set()
    for row in out["results"]:
        alone = plan.trials[row["trial"]].config
        trainer = make_train(alone, dataset, mesh=None)
        final, metrics = trainer(jax.random.key(alone.training.seed),
                                 default_hparams(alone, jnp.float64))
        assert row["val_loss"] == pytest.approx(float(metrics["val_loss"][-1]), rel=1e-9)
        test = trainer.evaluate(final.params, final.model_state,
                                default_hparams(alone, jnp.float64),
                                jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test))
        assert row["test_loss"] == pytest.approx(float(test["loss"]), rel=1e-9)
        losses.add(round(row["val_loss"], 12))
    assert len(losses) == 4


@pytest.mark.parametrize(
    ("layers", "key", "fragment"),
    [
        ('[{type = "Conv2D", features = 4}, {type = "Residual", layers = [{type = "Conv2D", '
         'features = 4}, {type = "Dense", features = 3}]}]', "model.layers[1].layers[1]",
         "Dense(3)"),
        ('[{type = "Flatten"}, {type = "Residual", layers = [{type = "Dense", features = 64}, '
         '{type = "Bogus"}]}]', "model.layers[1].layers[1]", "unknown layer type 'Bogus'"),
        ('[{type = "Flatten"}, {type = "Residual", layers = [{type = "Dense", features = 8}]}, '
         '{type = "Dense", features = 10}]', "model.layers[1]",
         "layer 1 (Residual(Dense(8))): adds f(x) of shape (None, 8) and x of shape (None, 64)"),
        ('[{type = "Flatten"}, {type = "Residual", layers = [], shortcut = []}]',
         "model.layers[1].layers", "non-empty list"),
        ('[{type = "Flatten"}, {type = "Parallel", branches = [[{type = "Dense", '
         'features = 4}], [{type = "BatchNorm", momentum = 2.0}]]}]',
         "model.layers[1].branches[1][0].momentum", "momentum is the share"),
        ('[{type = "Flatten"}, {type = "Residual", layer = []}]', "model.layers[1].layer",
         "Residual takes only"),
    ],
)
def test_config_errors_name_the_nested_layer(layers, key, fragment, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(f'[model]\nlayers = {layers}\n[data]\nname = "digits"\nlimit = 100\n'
                    '[training]\nepochs = 1\nbatch_size = 20\nprogress = false\n')
    assert cli.main(["train", str(path), "--workdir", str(tmp_path / "run")]) == 2
    message = capsys.readouterr().err
    assert f"{path}: {key}: " in message, message
    assert fragment in message, message
    assert "Traceback" not in message
    assert not (tmp_path / "run").exists()


def test_a_batch_of_one_where_batchnorm_would_see_one_value_per_channel_is_refused(
        tmp_path, capsys):
    """With one example per batch a BatchNorm on (N, C) normalizes each channel's single
    value to 0: every output is its bias and the run learns nothing (it trained to 8%
    test accuracy, exit 0). Images keep H x W values per channel, so they may."""
    def train(layers, name):
        path = tmp_path / f"{name}.toml"
        path.write_text(f'[model]\nlayers = {layers}\n[data]\nname = "digits"\nlimit = 100\n'
                        '[training]\nepochs = 1\nbatch_size = 1\nprogress = false\n'
                        '[output]\nplots = false\n')
        return path, cli.main(["train", str(path), "--workdir", str(tmp_path / name)])

    path, status = train('[{type = "Flatten"}, {type = "Dense", features = 8}, {type = '
                         '"Residual", layers = [{type = "Dense", features = 8}, '
                         '{type = "BatchNorm"}]}, {type = "Dense", features = 10}]', "flat")
    assert status == 2
    assert capsys.readouterr().err.strip() == (
        f"jaxnn: error: {path}: training.batch_size: 1 gives layer 2.1.0.1 (BatchNorm("
        "momentum=0.99)) one value per channel to normalize in training (its input (None, "
        "8)): every output would be its bias; use batches of 2 or more")
    assert not (tmp_path / "flat").exists()
    _, status = train('[{type = "Conv2D", features = 4}, {type = "BatchNorm"}, '
                      '{type = "Flatten"}, {type = "Dense", features = 10}]', "images")
    assert status == 0, capsys.readouterr().err


def test_resnet_config_round_trips_and_summarizes(tmp_path, capsys):
    cfg = config.load(os.path.join(ROOT, "configs", "resnet_digits.toml"))
    again = config.from_dict(__import__("tomllib").loads(config.dumps(cfg)), "again")
    assert again.model.layers == cfg.model.layers
    assert cli.main(["summary", os.path.join(ROOT, "configs", "resnet_digits.toml")]) == 0
    text = capsys.readouterr().out
    assert "Residual" in text and "BatchNorm" in text and "state (not trained)" in text
