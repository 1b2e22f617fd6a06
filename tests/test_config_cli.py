"""Configs: validation with named errors, overrides, the default run, and the command line."""

import os
import re
import subprocess
import sys

import pytest

from jaxnn import cli, compile_cache, config, models, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def write(tmp_path, text, name="bad.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_CONFIGS = [
    ("[training]\nepoch = 3\n", "training.epoch", "unknown key"),
    ("[trainign]\nepochs = 3\n", "trainign", "unknown section"),
    ('[training]\nepochs = "ten"\n', "training.epochs", "expected an int"),
    ("[training]\nbatch_size = 1.5\n", "training.batch_size", "expected an int"),
    ("[optimizer]\nlearning_rate = -0.1\n", "optimizer.learning_rate", "must be > 0"),
    ('[optimizer]\nlearning_rate = "fast"\n', "optimizer.learning_rate", "expected a number"),
    ('[optimizer]\nname = "adagrad"\n', "optimizer.name", "not one of"),
    ('[schedule]\nname = "linear"\n', "schedule.name", "not one of"),
    ('[data]\nname = "mnist"\npath = "no/such/dir"\n', "data.path", "not found"),
    ('[data]\nname = "csv"\npath = "missing.csv"\n', "data.path", "not found"),
    ('[model]\nlayers = [{type = "Conv2D", features = 4}, {type = "Dense", features = 10}]\n',
     "model.layers[1]", "layer 1 (Dense(10)): expects input of rank 2"),
    ('[model]\nlayers = [{type = "Flatten"}, {type = "Dense", features = 10}, '
     '{type = "MaxPool2D"}]\n', "model.layers[2]", "layer 2 (MaxPool2D"),
    ('[model]\nlayers = [{type = "Dense", features = 7}]\n', "model.layers", "needs (None, 10)"),
    ('[model]\nlayers = [{type = "Dense2", features = 7}]\n', "model.layers[0]",
     "unknown layer type"),
    # Conv1D wants (batch, length, channels); the digits are images, given in their shape.
    ('[model]\nlayers = [{type = "Conv1D", features = 4}, {type = "Flatten"}, '
     '{type = "Dense", features = 10}]\n', "model.layers[0]",
     "expects input of rank 3 (batch, length, channels), got shape (None, 8, 8, 1) (data "
     "examples have shape (8, 8, 1))"),
    ('[model]\nlayers = [{type = "Conv2DTranspose", features = 4, stride = 0}]\n',
     "model.layers[0].stride", "Conv2DTranspose: stride must be a positive int"),
    ('[model]\nlayers = [{type = "Dense", units = 7}]\n', "model.layers[0].units", "units"),
    ('[model]\nlayers = [{type = "BatchNorm", momentum = 2}]\n', "model.layers[0].momentum",
     "BatchNorm: momentum is the share"),
    ('[model]\nlayers = [{type = "Conv2D", features = 4, padding = "bogus"}]\n',
     "model.layers[0].padding", "Conv2D: padding must be"),
    ('[model]\nactivation = "swish"\n', "model.activation", "unknown activation"),
    ("[training]\nbatch_size = 100000\n", "training.batch_size", "exceeds"),
    ("[model\nhidden = [3]\n", "", "not valid TOML"),
    ('[model]\nloss = "hinge"\n', "model.loss", "unknown loss 'hinge'"),
    # Values each optax transformation or layer would have taken, or failed on late.
    ('[optimizer]\nname = "adam"\nb1 = 1.5\n', "optimizer.b1", "must be in [0, 1), got 1.5"),
    ('[optimizer]\nname = "adam"\neps = -1\n', "optimizer.eps", "must be > 0"),
    ('[optimizer]\nname = "rmsprop"\ndecay = 2\n', "optimizer.decay", "must be in [0, 1)"),
    ('[schedule]\nname = "step"\nboundaries = [2]\nscales = [-0.5]\n', "schedule.scales",
     "factors must be >= 0, got [-0.5]"),
    ('[schedule]\nname = "step"\nboundaries = [-1]\nscales = [0.5]\n',
     "schedule.boundaries", "epochs must be >= 0"),
    # optax's piecewise schedule keeps one scale of a repeated boundary.
    ('[schedule]\nname = "step"\nboundaries = [4, 2, 2]\nscales = [0.5, 0.5, 0.1]\n',
     "schedule.boundaries", "epochs must increase, got [4.0, 2.0, 2.0]"),
    ('[schedule]\nname = "warmup_cosine"\nwarmup_epochs = -5\n', "schedule.warmup_epochs",
     "must be >= 0"),
    # A warmup as long as the run was cut to it (never decaying): refused.
    ('[schedule]\nname = "warmup_cosine"\nwarmup_epochs = 50\n[training]\nepochs = 2\n',
     "schedule.warmup_epochs", "50.0 is beyond the run's 2 epochs (training.epochs)"),
    # Under one step it rounded to no warmup, silently (the digits make 20 steps of 64).
    ('[schedule]\nname = "warmup_cosine"\nwarmup_epochs = 0.01\n', "schedule.warmup_epochs",
     "0.01 epochs of 20 steps round to no warmup step; give at least 0.05 (one step)"),
    ('[data]\nname = "moons"\nnum_examples = -5\n', "data.num_examples", "must be in [0, "),
    # Sizes past what the machine holds were tracebacks (numpy's allocation, XLA's compiler).
    ('[data]\nname = "spirals"\nnum_examples = 100000000000\n', "data.num_examples",
     "must be in [0, 10,000,000] (a synthetic set is made in memory)"),
    ('[model]\nlayers = [{type = "Conv2D", features = 4, stride = 1180591620717411303424}, '
     '{type = "Flatten"}, {type = "Dense", features = 10}]\n', "model.layers[0].stride",
     "Conv2D: stride must be a positive int (at most 2**31 - 1)"),
    ('[model]\nlayers = [{type = "MaxPool2D", window = 2, stride = 9223372036854775807}, '
     '{type = "Flatten"}, {type = "Dense", features = 10}]\n', "model.layers[0].stride",
     "at most 2**31 - 1"),
    ('[model]\nlayers = [{type = "Conv2D", features = 16, padding = 10000}, {type = "Relu"}, '
     '{type = "GlobalAvgPool"}, {type = "Dense", features = 10}]\n', "model",
     "GiB of activations (and ~0.0 GiB for the params), over the ~"),
    ('[model]\nlayers = [{type = "Conv2D", features = 4, padding = 1099511627776}, '
     '{type = "Flatten"}, {type = "Dense", features = 10}]\n', "model.layers[0].padding",
     "padding must be in [0, 2**31 - 1]"),
    # Keys a data set does not read were ignored: digits trained on its 10 classes and its
    # own images whatever data.path or data.num_classes said.
    ('[data]\nname = "digits"\npath = "mine.npz"\n', "data.path",
     "mine.npz' is not read by the 'digits' data set (only by mnist, fashion_mnist, npz, csv)"),
    ('[data]\nnum_classes = 5\n', "data.num_classes", "5 is not read by the 'digits' data set"),
    ('[data]\nname = "moons"\nlabel = "y"\n', "data.label", "not read by the 'moons'"),
    ('[data]\nnum_examples = 50\n', "data.num_examples", "(only by spirals, moons, regression)"),
    ('[data]\ntask = "regression"\n[model]\nloss = "mse"\n', "data.task",
     "the 'digits' data set is classification; only npz and csv data take a task"),
    ('[model]\nlayers = [{type = "Dense", features = 8}, {type = "LeakyRelu", '
     'negative_slope = "x"}, {type = "Dense", features = 10}]\n',
     "model.layers[1].negative_slope", "LeakyRelu: expected float, got 'x'"),
    ('[model]\nlayers = [{type = "Dense", features = 10, use_bias = "yes"}]\n',
     "model.layers[0].use_bias", "Dense: expected bool, got 'yes'"),
    ('[model]\nlayers = [{type = "Dense", features = 10, w_init = "normal(1e400)"}]\n',
     "model.layers[0].w_init", "standard deviation must be finite and > 0"),
    ('[model]\nlayers = [{type = "Dense", features = 10, b_init = "bogus"}]\n',
     "model.layers[0].b_init", "unknown initializer 'bogus'"),
    ('[model]\nlayers = [{type = "Residual", layers = [{type = "Gelu", approximate = "no"}]}, '
     '{type = "Dense", features = 10}]\n', "model.layers[0].layers[0].approximate",
     "Gelu: expected bool"),
    ('[model]\nlayers = [{type = "Conv2D", features = 4.0, kernel_size = [3, 3]}]\n',
     "model.layers[0].features", "Conv2D: expected int, got 4.0"),
    # An integer dtype trained BatchNorm on integer statistics; Dense's failed in its init.
    ('[model]\nlayers = [{type = "BatchNorm", dtype = "int32"}, {type = "Dense", '
     'features = 10}]\n', "model.layers[0].dtype",
     "BatchNorm: dtype must be a floating dtype such as float32, float64 or bfloat16 (or None, "
     "the default), got 'int32'"),
    ('[model]\nlayers = [{type = "Dense", features = 10, dtype = "int8"}]\n',
     "model.layers[0].dtype", "Dense: dtype must be a floating dtype"),
    ('[model]\nlayers = [{type = "Dense", features = 10}, {type = "Softmax", axis = 5}]\n',
     "model.layers[1]", "axis 5 is out of range for input of shape (None, 10)"),
    # Along the batch axis each prediction depended on the batch it sat in (it trained).
    ('[model]\nlayers = [{type = "Dense", features = 10}, {type = "LogSoftmax", axis = -2}]\n',
     "model.layers[1]", "axis -2 is the batch axis of input of shape (None, 10)"),
    # A single regression output under softmax: the loss is 0 whatever the weights.
    ('[data]\nname = "regression"\n', "model.loss",
     "softmax_cross_entropy needs class labels"),
    # Outputs against integer labels: mse ended in a broadcasting traceback.
    ('[model]\nloss = "mse"\n', "model.loss", 'class labels (data.task = "classification")'),
    ('[model]\nloss = "sigmoid_binary_cross_entropy"\n', "model.loss", "needs targets shaped"),
    # The MLP shorthand beside model.layers, or no layers at all: the default MLP trained.
    ("[model]\nlayers = []\n", "model.layers", "empty: no network to train"),
    ('[model]\nhidden = [32]\nlayers = [{type = "Flatten"}, {type = "Dense", features = 10}]\n',
     "model.hidden", "[32] is not used: model.layers gives the whole network"),
    # An MLP's activation beside model.layers was ignored: each layer names its own.
    ('[model]\nactivation = "tanh"\nlayers = [{type = "Dense", features = 10}]\n',
     "model.activation", "'tanh' is not used: model.layers names each layer's activation"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), BAD_CONFIGS)
def test_bad_config_gives_named_error_and_exit_2(tmp_path, capsys, text, key, fragment):
    path = write(tmp_path, text)
    status = cli.main(["train", path, "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"jaxnn: error: {path}: {key}")
    assert fragment in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not re.search(r"\b(\w+): \1\b", err)  # e.g. "BatchNorm: BatchNorm: momentum"
    assert not (tmp_path / "run").exists()  # Nothing was written.


def test_unreadable_config_files_are_one_error(tmp_path, capsys):
    """A directory, a file that is not UTF-8: one line naming the path, exit 2."""
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[training]\n")
    for path, fragment in ((folder, "cannot read the config"), (binary, "not UTF-8 text")):
        assert cli.main(["summary", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"jaxnn: error: {path}: {fragment}") and err.count("\n") == 1


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_new_run_never_overwrites_files_it_did_not_write(tmp_path, capsys, command):
    """``--workdir .`` in a folder holding the user's own commented config.toml (or a
    figure) replaced it with the generated one."""
    own = tmp_path / ("config.toml" if command == "train" else "sweep.toml")
    text = "# mine\n" + open(os.path.join(CONFIGS, "tiny.toml")).read() + (
        "[sweep]\ngrid = {learning_rate = [0.1, 0.2]}\n" if command == "sweep" else "")
    own.write_text(text)
    (tmp_path / "loss.png").write_bytes(b"mine")
    assert cli.main([command, str(own), "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} holds " in err and "would overwrite; choose an empty or new" in err
    assert own.read_text() == text and (tmp_path / "loss.png").read_bytes() == b"mine"


def test_directories_that_are_files_are_one_error(tmp_path, capsys, monkeypatch):
    """--workdir, --resume and the compile cache's directory given as an existing file."""
    tiny, taken = os.path.join(CONFIGS, "tiny.toml"), tmp_path / "a file"
    taken.write_text("kept")
    for argv, fragment in (
            (["train", tiny, "--workdir", str(taken)], "is a file, not a directory"),
            (["train", "--resume", str(taken)], "nothing to resume (not a directory)"),
            (["train", tiny, "--workdir", str(tmp_path / "run"), "--compile-cache", str(taken)],
             "cannot be the compile cache's directory (a file)"),
            # output.dir (where a new directory is made) was a FileExistsError traceback.
            (["train", tiny, "--set", f"output.dir={str(taken)!r}"],
             f"{tiny}: output.dir: {taken} is a file, not a directory"),
            (["sweep", tiny, "--set", "sweep.grid={learning_rate = [0.1]}", "--set",
              f"output.dir={str(taken / 'runs')!r}"],
             f"{tiny}: output.dir: {taken / 'runs'}: cannot create the directory")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1, err
    assert taken.read_text() == "kept" and not (tmp_path / "run").exists()
    # A run's new directory that cannot be made (a read-only output.dir: root ignores
    # permissions, so the refusal is simulated) was a PermissionError traceback.
    def refuse(path, *unused_args, **unused_kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "mkdir", refuse)
    assert cli.main(["train", tiny, "--set", f"output.dir={str(tmp_path)!r}"]) == 2
    err = capsys.readouterr().err
    assert f"output.dir: {tmp_path}: cannot create a directory in it (Permission denied)" \
        in err and err.count("\n") == 1, err


def test_flags_that_would_be_ignored_are_refused(tmp_path, capsys, monkeypatch):
    """An empty --workdir (or --resume, ...) read as the flag left out, and --workdir beside
    --resume was ignored: each is one error, before anything is written."""
    tiny = os.path.join(CONFIGS, "tiny.toml")
    monkeypatch.chdir(tmp_path)
    for argv, fragment in (
            (["train", tiny, "--workdir", ""], "--workdir: empty; give a value"),
            (["train", "--resume", ""], "--resume: empty; give a value"),
            (["sweep", tiny, "--workdir", ""], "--workdir: empty; give a value"),
            (["train", "--resume", "a", "--workdir", "b"], "--workdir: not with --resume"),
            (["sweep", "--resume", "a", "--workdir", "b"], "--workdir: not with --resume"),
            (["sweep", tiny, "--heartbeat", "5"], "--heartbeat is a worker's"),
            (["sweep", tiny, "--plan", "--workdir", "w"], "--workdir: not with --plan"),
            (["sweep", "--report", "--storage", "s.db", "--study", "x", "--heartbeat", "5"],
             "--heartbeat is a worker's"),
            (["sweep", "--report", "--storage", "s.db", "--study", "x", "--set",
              "training.epochs=3"], "--set: not with --report")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"jaxnn: error: {fragment}") and err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []


def test_a_run_and_a_sweep_never_share_a_directory(tmp_path, capsys):
    """Each kind refuses a directory holding the other's files, which stay as they were."""
    tiny = os.path.join(CONFIGS, "tiny.toml")
    sweep_flags = ["--set", "sweep.grid={learning_rate = [0.1]}", "--set", "output.plots=false"]
    run_dir, sweep_dir = tmp_path / "run", tmp_path / "sweep"
    assert cli.main(["train", tiny, "--workdir", str(run_dir), "--set",
                     "output.plots=false"]) == 0
    assert cli.main(["sweep", tiny, *sweep_flags, "--workdir", str(sweep_dir)]) == 0
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    capsys.readouterr()
    assert cli.main(["sweep", tiny, *sweep_flags, "--workdir", str(run_dir)]) == 2
    assert "holds a training run; a sweep needs another directory" in capsys.readouterr().err
    assert cli.main(["train", tiny, "--workdir", str(sweep_dir)]) == 2
    assert "holds a sweep; a training run needs another directory" in capsys.readouterr().err
    # Resumed by the other command: said so (it read "config.toml: config file not found").
    assert cli.main(["train", "--resume", str(sweep_dir)]) == 2
    assert (f"{sweep_dir} holds a sweep, not a training run; resume it with jaxnn sweep "
            f"--resume {sweep_dir}") in capsys.readouterr().err
    assert cli.main(["sweep", "--resume", str(run_dir)]) == 2
    assert f"{run_dir} holds a training run, not a sweep; resume it with jaxnn train" in \
        capsys.readouterr().err
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
    (run_dir / "config.toml").unlink()  # its own kind, its config lost: no circular advice
    assert cli.main(["train", "--resume", str(run_dir)]) == 2
    assert "config.toml: config file not found" in capsys.readouterr().err


def test_train_refuses_a_sweep_config_before_making_a_directory(tmp_path, capsys,
                                                                 monkeypatch):
    """`jaxnn train` on a sweep's config trained its base config, silently, as if the sweep
    were not there; its base config still trains with ``--set 'sweep={}'``."""
    monkeypatch.chdir(tmp_path)
    sweep_config = os.path.join(CONFIGS, "sweep_lr_width.toml")
    assert cli.main(["train", sweep_config]) == 2
    err = capsys.readouterr().err
    assert "sweep_lr_width.toml: sweep: this config describes a sweep" in err, err
    assert "jaxnn sweep" in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == []
    assert cli.main(["train", sweep_config, "--set", "sweep={}", "--set", "training.epochs=1",
                     "--set", "output.plots=false", "--set", "data.limit=200",
                     "--workdir", "run"]) == 0
    assert config.load(tmp_path / "run" / "config.toml").sweep == {}


def test_newer_layer_types_and_activations_build_from_a_config():
    layers = [{"type": "Conv2DTranspose", "features": 2, "stride": 2}, {"type": "Selu"},
              {"type": "SumPool2D", "window": [2, 2]}, {"type": "Conv2D", "features": 3},
              {"type": "Elu", "alpha": 0.5}, {"type": "GlobalAvgPool"},
              {"type": "Dense", "features": 10}, {"type": "Silu"}]
    cfg = config.from_dict({"model": {"layers": layers}})
    assert models.uses_images(cfg.model)
    assert run.prepare(cfg).input_shape == (8, 8, 1)  # digits as NHWC images
    assert models.uses_images(config.from_dict(  # sequences, in their (L, C) shape
        {"model": {"layers": [{"type": "Conv1D", "features": 4}]}}).model)
    for name in ("elu", "selu", "silu"):
        net = models.build(config.ModelConfig(hidden=(4,), activation=name), 3)
        assert net.children[1].name.lower().startswith(name)


def test_error_exit_status_of_the_installed_command(tmp_path):
    path = write(tmp_path, "[training]\nepochs = -1\n")
    result = subprocess.run([sys.executable, "-m", "jaxnn.cli", "train", path],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "training.epochs: must be >= 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file(capsys):
    assert cli.main(["train", "no_such.toml"]) == 2
    assert "no_such.toml: config file not found" in capsys.readouterr().err


def test_set_overrides_and_bad_override(tmp_path, capsys):
    cfg = config.load(os.path.join(CONFIGS, "tiny.toml"),
                      ["training.epochs=7", "optimizer.name=adam", "model.hidden=[4, 4]"])
    assert cfg.training.epochs == 7
    assert cfg.optimizer.name == "adam"
    assert cfg.model.hidden == (4, 4)
    assert cli.main(["train", "--set", "training.epochz=3"]) == 2
    assert "training.epochz: unknown key" in capsys.readouterr().err


def test_default_config_is_mlp_digits():
    shipped = config.load(os.path.join(CONFIGS, "mlp_digits.toml"))
    assert shipped.replace(source="") == config.Config().replace(source="")


SHIPPED = sorted(os.path.relpath(os.path.join(folder, name), CONFIGS)
                 for folder, _, names in os.walk(CONFIGS) for name in names
                 if name.endswith(".toml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_are_valid_and_round_trip(name, tmp_path):
    cfg = config.load(os.path.join(CONFIGS, name))
    again = config.load(write(tmp_path, config.dumps(cfg), "again.toml"))
    assert again.replace(source="") == cfg.replace(source="")


def test_cli_train_and_resume(tmp_path, capsys):
    workdir = tmp_path / "run"
    tiny = os.path.join(CONFIGS, "tiny.toml")
    assert cli.main(["train", tiny, "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "status: completed" in out and "test accuracy" in out
    assert cli.main(["train", tiny, "--workdir", str(workdir)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(workdir)]) == 0  # Already finished: re-reports.
    assert cli.main(["train", "--resume", str(tmp_path / "nothing")]) == 2


def test_a_relative_data_path_is_stored_absolute(tmp_path, capsys, monkeypatch):
    """A run's config.toml keeps the data path resolved (from the working directory, else
    beside the config), so --resume from another directory finds the data."""
    import numpy as np

    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "d.npz", x=np.random.default_rng(0).normal(size=(60, 3)),
             y=np.arange(60) % 2)
    tiny = os.path.join(CONFIGS, "tiny.toml")
    beside = write(tmp_path, '[data]\nname = "npz"\npath = "data/d.npz"\n', "beside.toml")
    assert config.load(beside).data.path == str(tmp_path / "data" / "d.npz")
    monkeypatch.chdir(tmp_path)
    flags = ["--set", 'data={name = "npz", path = "data/d.npz"}', "--set", "training.epochs=1",
             "--set", "output.plots=false"]
    assert cli.main(["train", tiny, *flags, "--workdir", "run"]) == 0
    stored = config.load(tmp_path / "run" / "config.toml")
    assert stored.data.path == str(tmp_path / "data" / "d.npz")
    monkeypatch.chdir(tmp_path)
    grid = ["--set", "sweep.grid={learning_rate = [0.05, 0.1]}"]
    assert cli.main(["sweep", tiny, *flags, *grid, "--workdir", "sweep"]) == 0
    for kept in ("sweep.toml", "best.toml"):  # (the study keeps sweep.toml's text)
        assert config.load(tmp_path / "sweep" / kept).data.path == stored.data.path, kept
    monkeypatch.chdir(tmp_path / "data")
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    assert cli.main(["train", str(tmp_path / "sweep" / "best.toml"), "--workdir", "best"]) == 0


def test_cli_summary(capsys):
    assert cli.main(["summary", os.path.join(CONFIGS, "cnn_digits.toml")]) == 0
    out = capsys.readouterr().out
    assert "Conv2D(16" in out and "total params: 71,754" in out


@pytest.mark.parametrize("value, megabytes", [("", compile_cache.DEFAULT_MAX_MB), ("7", 7),
                                               (" 0 ", 0), ("-1", None)])
def test_the_compile_cache_size_comes_from_the_environment(monkeypatch, value, megabytes):
    monkeypatch.setenv(compile_cache.MAX_MB_ENV, value)
    assert compile_cache.max_bytes() == (-1 if megabytes is None else megabytes << 20)


@pytest.mark.parametrize("value", ["1.5", "-2", "lots"])
def test_a_bad_compile_cache_size_is_one_error_naming_the_variable(tmp_path, capsys,
                                                                    monkeypatch, value):
    monkeypatch.setenv(compile_cache.MAX_MB_ENV, value)
    workdir = tmp_path / "run"
    assert cli.main(["train", os.path.join(CONFIGS, "tiny.toml"), "--workdir", str(workdir),
                     "--compile-cache", str(tmp_path / "xla")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"$JAXNN_COMPILE_CACHE_MAX_MB: {value!r}" in err
    assert not workdir.exists() and not (tmp_path / "xla").exists()


def test_a_second_run_of_a_config_compiles_nothing_new(tmp_path):
    """`jaxnn train` keeps XLA's compiled programs in the persistent cache: the first run
    fills it, a second run of the same config adds no entry (every program was a hit)."""
    cache = tmp_path / "xla"
    entries = []
    for attempt in range(2):
        subprocess.run([sys.executable, "-m", "jaxnn.cli", "train",
                        os.path.join(CONFIGS, "tiny.toml"), "--workdir",
                        str(tmp_path / f"run{attempt}"), "--compile-cache", str(cache)],
                       check=True, capture_output=True)
        entries.append(set(os.listdir(cache)))
    assert entries[0] and entries[1] == entries[0]
    # Another batch size compiles new programs: none is stored with the cache off, and
    # they are stored once it is on (here from the environment).
    for flags, grows in ((["--no-compile-cache"], False), ([], True)):
        subprocess.run([sys.executable, "-m", "jaxnn.cli", "train",
                        os.path.join(CONFIGS, "tiny.toml"), "--set", "training.batch_size=8",
                        "--workdir", str(tmp_path / f"other{grows}"), *flags], check=True,
                       capture_output=True, env={**os.environ, "JAXNN_COMPILE_CACHE": str(cache)})
        assert (set(os.listdir(cache)) != entries[0]) == grows



def test_strings_with_control_characters_round_trip_and_seeds_are_32_bit(tmp_path):
    """A stored config stays valid TOML whatever its strings hold (a run must resume from
    it); seeds past 32 bits were truncated (two "different" seeds, one run) or refused late."""
    tiny = os.path.join(ROOT, "configs", "tiny.toml")
    cfg = config.load(tiny, ['output.dir="a\\nb\\u0001c\\u007f\\"d\\\\"'])
    assert cfg.output.dir == 'a\nb\x01c\x7f"d\\'
    assert config.loads(config.dumps(cfg), "again.toml").output.dir == cfg.output.dir
    for key, value in (("training.seed", 2**32), ("data.seed", -1)):
        with pytest.raises(config.ConfigError, match=rf"{key}: must be in \[0, 2\*\*32 - 1\]"):
            config.load(tiny, [f"{key}={value}"])


def test_a_resume_change_names_the_nested_value_that_differs():
    """A refused resume over one layer option named all of model.layers (twice, ~2 KB)."""
    layers = ("model.layers=[{type = 'Dense', features = 8}, {type = 'BatchNorm', "
              "momentum = %s}, {type = 'Dense', features = 10}]")
    mlp_keys = ["model.hidden=[]", "model.activation='relu'"]  # tiny.toml's are an MLP's
    trained = config.load(os.path.join(CONFIGS, "tiny.toml"), [*mlp_keys, layers % 0.9])
    resumed = config.load(os.path.join(CONFIGS, "tiny.toml"), [*mlp_keys, layers % 0.8])
    assert config.resume_change(trained, resumed) == ("model.layers[1].momentum", 0.9, 0.8)
    fewer = config.load(os.path.join(CONFIGS, "tiny.toml"), mlp_keys)
    key, was, now = config.resume_change(trained, fewer)
    assert key == "model.layers" and len(was) == 3 and not now  # no narrower place


def test_a_layer_argument_written_at_its_default_is_no_resume_change():
    """``epsilon = 1e-5`` (BatchNorm's default) added to a layer's table, a nested one
    too, trains what the table without it trained: it was refused as a change. So does
    ``stride = [1, 1]`` for ``stride = 1`` (or the default)."""
    layers = ("model.layers=[{type = 'Dense', features = 8}, {type = 'BatchNorm'%s}, "
              "{type = 'Residual', layers = [{type = 'Dense', features = 8%s}]}, "
              "{type = 'Dropout'}, {type = 'Dense', features = 10}]")
    mlp_keys = ["model.hidden=[]", "model.activation='relu'"]
    tiny = os.path.join(CONFIGS, "tiny.toml")
    trained = config.load(tiny, [*mlp_keys, layers % ("", "")])
    for extra in ((", epsilon = 1e-5", ""), ("", ", use_bias = true")):
        assert config.resume_change(trained, config.load(tiny, [*mlp_keys, layers % extra])) \
            is None
    changed = config.load(tiny, [*mlp_keys, layers % (", epsilon = 1e-3", "")])
    assert config.resume_change(trained, changed) == ("model.layers[1].epsilon", 1e-5, 1e-3)
    # One int repeated is that int (a kernel size, stride or padding per axis).
    convs = ("model.layers=[{type = 'Conv2D', features = 4%s}, {type = 'MaxPool2D'%s}, "
             "{type = 'Flatten'}, {type = 'Dense', features = 10}]")
    for was, now in ((("", ""), (", stride = [1, 1], kernel_size = [3, 3]", ", window = [2, 2]")),
                     (("", ""), (", stride = 1", ", window = 2")),
                     ((", padding = 1", ""), (", padding = [[1, 1], [1, 1]]", ""))):
        assert config.resume_change(config.load(tiny, [*mlp_keys, convs % was]),
                                    config.load(tiny, [*mlp_keys, convs % now])) is None, now
    strided = config.load(tiny, [*mlp_keys, convs % (", stride = [1, 2]", "")])
    assert config.resume_change(config.load(tiny, [*mlp_keys, convs % ("", "")]), strided) \
        == ("model.layers[0].stride", 1, [1, 2])
    # A Dropout's missing rate is model.dropout's, not a default: writing one is a change.
    rated = config.load(tiny, [*mlp_keys, layers.replace("'Dropout'", "'Dropout', rate = 0.5")
                               % ("", "")])
    assert config.resume_change(trained, rated)[0] == "model.layers[3].rate"


def test_set_names_a_list_entry_by_its_index(capsys):
    """`--set model.layers[1].momentum=...` (as sweep grids name a layer's value) was
    "model.layers[1]: unknown key"."""
    resnet = os.path.join(CONFIGS, "resnet_digits.toml")
    loaded = config.load(resnet, ["model.layers[1].momentum=0.8"])
    assert loaded.model.layers[1]["momentum"] == 0.8
    assert config.load(os.path.join(CONFIGS, "mlp_digits.toml"),
                       ["model.hidden[1]=7"]).model.hidden[1] == 7
    for override, message in (("model.layers[99].features=3", "the config has no "
                               "model.layers[99]"),
                              ("model.layers[1].momentum=1.5", "model.layers[1].momentum: "),
                              ("training.epochs.x=3", "cannot set a key inside a value")):
        assert cli.main(["summary", resnet, "--set", override]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
