"""Data loaders: IDX files written here, npz/csv columns, splits and standardisation."""

import gzip
import struct

import numpy as np
import pytest

from jaxnn import config, data, run


def write_idx(path, array, type_code=0x08, compress=False):
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(("dtype", "code"), [(np.uint8, 0x08), (np.int32, 0x0C),
                                             (np.float32, 0x0D)])
def test_idx_round_trip(tmp_path, compress, dtype, code):
    array = (np.arange(2 * 3 * 4) * 7 % 251).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / "a.idx"
    write_idx(path, array, code, compress)
    read = data.read_idx(path)
    assert read.shape == (2, 3, 4)
    np.testing.assert_array_equal(read, array)


def test_idx_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(data.DataError, match=r"bad\.idx: not an IDX file"):
        data.read_idx(path)
    write_idx(path, np.zeros((4, 5), np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(data.DataError, match=r"bad\.idx: IDX header promises"):
        data.read_idx(path)
    with pytest.raises(data.DataError, match=r"missing\.idx: file not found"):
        data.read_idx(tmp_path / "missing.idx")


def _mnist_dir(tmp_path, n_train=40, n_test=10, compress=True):
    tmp_path.mkdir()
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}",
                  rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), 0x08, compress)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}",
                  (np.arange(n) % 10).astype(np.uint8), 0x08, compress)
    return tmp_path


def test_mnist_directory_config(tmp_path):
    directory = _mnist_dir(tmp_path / "mnist")
    cfg = config.from_dict({"data": {"name": "mnist", "path": str(directory)},
                            "model": {"layers": [{"type": "Conv2D", "features": 2},
                                                 {"type": "Flatten"},
                                                 {"type": "Dense", "features": 10}]},
                            "training": {"batch_size": 8}})
    dataset = run.prepare(cfg)
    assert dataset.x_train.shape[1:] == (28, 28, 1)
    assert len(dataset.x_test) == 10  # MNIST's own test split
    assert len(dataset.x_train) + len(dataset.x_val) == 40
    assert dataset.num_classes == 10


def test_regression_targets_come_as_network_outputs(tmp_path):
    # The network gives (n, outputs): (n, 2, 3) targets met (n, 6) predictions in the loss.
    x = np.random.default_rng(0).normal(size=(20, 3))
    np.savez(tmp_path / "d.npz", x=x, y=np.stack([x[:, :2]] * 3, axis=-1))
    cfg = config.from_dict({"data": {"name": "npz", "path": str(tmp_path / "d.npz"),
                                     "task": "regression"}})
    dataset = data.load(cfg)
    assert dataset.output_size == 6
    assert dataset.y_train.shape[1:] == dataset.y_test.shape[1:] == (6,)


def test_mnist_missing_file_is_named(tmp_path):
    directory = _mnist_dir(tmp_path / "mnist")
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte"):
        data.load_idx_directory(directory)


def test_npz_and_csv_named_columns(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 3)), np.arange(50) % 3
    np.savez(tmp_path / "d.npz", feats=x, target=y)
    cfg = config.from_dict({"data": {"name": "npz", "path": str(tmp_path / "d.npz"),
                                     "features": ["feats"], "label": "target"}})
    dataset = data.load(cfg)
    assert dataset.num_classes == 3 and dataset.input_shape == (3,)
    lines = ["a,b,c,label"] + [f"{r[0]},{r[1]},{r[2]},{t}" for r, t in zip(x, y, strict=True)]
    (tmp_path / "d.csv").write_text("\n".join(lines))
    cfg = config.from_dict({"data": {"name": "csv", "path": str(tmp_path / "d.csv"),
                                     "features": ["c", "a"], "task": "regression"}})
    dataset = data.load(cfg)
    assert dataset.input_shape == (2,) and dataset.num_classes == 0
    assert dataset.y_train.shape[1:] == (1,)
    bad = config.from_dict({"data": {"name": "csv", "path": str(tmp_path / "d.csv"),
                                     "features": ["nope"]}})
    with pytest.raises(data.DataError, match="no column 'nope'"):
        data.load(bad)
    bad = config.from_dict({"data": {"name": "npz", "path": str(tmp_path / "d.npz")}})
    with pytest.raises(data.DataError, match="no array named 'x'"):
        data.load(bad)
    # Features that hold the label (or repeat a column), or none at all, are refused.
    for features, fragment in ((["a", "label"], "hold the label 'label'"),
                               (["a", "a"], "repeat a column")):
        with pytest.raises(data.DataError, match=fragment):
            data.load(cfg.replace(data={"features": tuple(features), "task": "regression"}))
    np.savez(tmp_path / "none.npz", x=np.zeros((9, 0)), y=np.arange(9) % 2)
    with pytest.raises(data.DataError, match=r"no features \(shape \(9, 0\)\)"):
        data.load(cfg.replace(data={"name": "npz", "path": str(tmp_path / "none.npz"),
                                    "features": ()}))
    for values in (np.ones((9, 2), np.complex64), np.full((9, 2), "a")):
        np.savez(tmp_path / "odd.npz", x=values, y=np.arange(9) % 2)
        with pytest.raises(data.DataError, match=f"array 'x' holds {values.dtype} values"):
            data.load(cfg.replace(data={"name": "npz", "path": str(tmp_path / "odd.npz"),
                                        "features": (), "task": "classification"}))
    # A 0-d array holds one value, not rows: len() of it was a TypeError traceback.
    for arrays, name in (({"x": np.array(3.0), "y": np.arange(9) % 2}, "x"),
                         ({"x": np.ones((9, 2)), "y": np.array(1.0)}, "y")):
        np.savez(tmp_path / "scalar.npz", **arrays)
        with pytest.raises(data.DataError, match=f"scalar.npz: array '{name}' is 0-d"):
            data.load(cfg.replace(data={"name": "npz", "path": str(tmp_path / "scalar.npz"),
                                        "features": (), "task": "regression"}))
    with pytest.raises(data.DataError, match="features and the labels are one array, 'y'"):
        data.load(cfg.replace(data={"name": "npz", "path": str(tmp_path / "none.npz"),
                                    "features": ("y",)}))
    # A short row and a non-number are named by their line in the file; blank lines pass.
    for row, fragment in (("3,4", "line 4 has 2 values, the header 4"),
                          ("x,1,2,0", "line 4, column 'a': 'x' is not a number"),
                          ("1,2,3,", "line 4, column 'label': '' is not a number")):
        (tmp_path / "d.csv").write_text("\n".join([*lines[:2], "", row, *lines[2:]]))
        with pytest.raises(data.DataError, match=fragment):
            data.load(cfg)


def test_bundled_digits_are_the_uci_test_set():
    x, y = data.load_digits_arrays()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float64 and y.dtype == np.int32
    assert x.min() == 0 and x.max() == 16 and x.sum() == 561718
    np.testing.assert_array_equal(np.bincount(y),
                                  [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    # The first image is a zero (a ring of ink around an empty centre).
    assert y[0] == 0 and x[0, 3:5, 3:5].sum() == 0 and x[0, 0, 2:6].sum() > 0


def test_split_is_seeded_and_standardised_on_train_only():
    x, y = data.load_digits_arrays()
    a = data.split(x, y, num_classes=10, name="digits", seed=3)
    b = data.split(x, y, num_classes=10, name="digits", seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    c = data.split(x, y, num_classes=10, name="digits", seed=4)
    assert not np.array_equal(a.y_test, c.y_test)
    assert len(a.x_test) == round(0.2 * len(x))
    train = a.x_train.reshape(len(a.x_train), -1)
    varying = train.std(axis=0) > 0
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(train.std(axis=0)[varying], 1, atol=1e-9)
    # The test split is transformed with the train statistics, so it is not exactly standard.
    assert abs(a.x_test.reshape(len(a.x_test), -1).mean(axis=0)).max() > 1e-3


@pytest.mark.parametrize("name", ["spirals", "moons", "regression"])
def test_synthetic_sets(name):
    cfg = config.from_dict({"data": {"name": name, "num_examples": 200}})
    dataset = data.load(cfg)
    assert len(dataset.x_train) + len(dataset.x_val) + len(dataset.x_test) == 200
    assert dataset.num_classes == (0 if name == "regression" else 2)


def test_regression_run_on_synthetic_curve(tmp_path):
    cfg = config.from_dict({
        "data": {"name": "regression", "num_examples": 400},
        "model": {"hidden": [32], "activation": "tanh", "loss": "mse"},
        "optimizer": {"name": "adam", "learning_rate": 0.01, "weight_decay": 1e-4},
        "training": {"epochs": 30, "batch_size": 32, "progress": False},
        "output": {"plots": False}})
    summary = run.train_and_evaluate(cfg, tmp_path)
    assert summary["test_accuracy"] is None
    assert summary["test_loss"] < 0.05  # 1/2 squared error of a noisy sine, well fitted


def test_a_conv1d_network_takes_sequences_in_their_shape(tmp_path):
    """npz examples of shape (16, 2) reached a Conv1D network flattened to (32,), which it
    refused (its message named the flattened shape as the data's)."""
    x = np.random.default_rng(0).normal(size=(60, 16, 2))
    np.savez(tmp_path / "seq.npz", x=x, y=(x[:, 0, 0] > 0).astype(np.int32))
    cfg = config.from_dict({
        "model": {"layers": [{"type": "Conv1D", "features": 4}, {"type": "Relu"},
                             {"type": "Flatten"}, {"type": "Dense", "features": 2}]},
        "data": {"name": "npz", "path": str(tmp_path / "seq.npz")},
        "training": {"batch_size": 8}}, "seq.toml")
    dataset = run.prepare(cfg)
    assert dataset.x_train.shape[1:] == (16, 2)
