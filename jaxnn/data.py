"""Data sets: bundled digits, MNIST-style IDX files, npz/csv files and synthetic sets.

Every loader returns a `Dataset`: seeded train/validation/test splits as numpy arrays,
features standardised with statistics fitted on the train split only. Images are stored
NHWC (``(n, height, width, channels)``); `Dataset.flat` gives the (n, features) view that
MLPs take. Classification labels are int32; regression targets are float (n, outputs).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

MAX_CLASSES = 100_000  # an inferred class count above this is taken for a bad label


class DataError(ValueError):
    """Bad or missing data, with the file at fault named."""


class Dataset(NamedTuple):
    """Train/validation/test splits of one data set.

    Attributes:
      x_train, y_train, x_val, y_val, x_test, y_test: the splits.
      num_classes: the number of classes, or 0 for a regression task.
      name: where the data came from.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    def digest(self) -> str:
        """A digest of the splits' contents, shapes and dtypes: what tells this data from
        other data (a file replaced under the same name)."""
        digest = hashlib.blake2b(digest_size=20)
        for array in self[:6]:
            array = np.ascontiguousarray(array)
            digest.update(f"{array.shape}{array.dtype}".encode())
            digest.update(memoryview(array).cast("B"))
        return digest.hexdigest()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example."""
        return self.x_train.shape[1:]

    @property
    def flat(self) -> Dataset:
        """The same data with each example flattened to a vector."""
        return self._replace(**{
            field: getattr(self, field).reshape(len(getattr(self, field)),
                                                int(np.prod(self.input_shape)))
            for field in ("x_train", "x_val", "x_test")
        })

    @property
    def output_size(self) -> int:
        """Units the network's last layer needs: classes, or regression outputs."""
        return self.num_classes or int(np.prod(self.y_train.shape[1:]))

    def astype(self, dtype) -> Dataset:
        """Features (and regression targets) cast to ``dtype``."""
        cast = {f: getattr(self, f).astype(dtype) for f in ("x_train", "x_val", "x_test")}
        if not self.num_classes:
            cast.update({f: getattr(self, f).astype(dtype) for f in ("y_train", "y_val", "y_test")})
        return self._replace(**cast)


def split(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    name: str,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool = True,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> Dataset:
    """Shuffles with ``seed`` and splits into train/validation/test, then standardises.

    Args:
      x: features, examples first.
      y: labels or targets, examples first.
      num_classes: classes (0 for regression).
      name: a description for messages.
      validation_fraction: share of the (non-test) examples held out for validation.
      test_fraction: share held out for testing; ignored when ``test`` is given.
      seed: seeds the shuffle.
      standardize: subtract the train mean and divide by the train standard deviation
        (per feature; constant features are left centred, not divided).
      test: a fixed test split (MNIST's own), used instead of a random one.
    """
    if len(x) != len(y):
        raise DataError(f"{name}: {len(x)} examples but {len(y)} labels")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    if test is None:
        n_test = round(test_fraction * len(x))
        x_test, y_test, x, y = x[:n_test], y[:n_test], x[n_test:], y[n_test:]
    else:
        x_test, y_test = test
    n_val = round(validation_fraction * len(x))
    x_val, y_val, x_train, y_train = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    if len(x_train) == 0:
        raise DataError(f"{name}: no training examples left after the splits")
    if len(x_test) == 0:
        raise DataError(f"{name}: the test split is empty ({len(x) + len(x_test)} examples, "
                        f"test fraction {test_fraction}); a run reports test metrics")
    if standardize:
        with np.errstate(over="ignore", invalid="ignore"):
            mean = x_train.mean(axis=0, keepdims=True)
            std = x_train.std(axis=0, keepdims=True)
        overflowed = ~(np.isfinite(mean) & np.isfinite(std)).reshape(-1)
        if overflowed.any():  # every value of that feature became nan or 0
            feature = int(np.argmax(overflowed))
            largest = float(np.max(np.abs(x_train.reshape(len(x_train), -1)[:, feature])))
            raise DataError(f"{name}: feature {feature} cannot be standardized: its values "
                            f"(up to {largest:.3g} in magnitude) overflow float64's mean or "
                            "variance; scale them down, or set data.standardize = false")
        std = np.where(std > 1e-8, std, 1.0)
        x_train, x_val, x_test = ((a - mean) / std for a in (x_train, x_val, x_test))
    return Dataset(x_train, y_train, x_val, y_val, x_test, y_test, num_classes, name)


DIGITS_FILE = os.path.join(os.path.dirname(__file__), "digits.npz")


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The bundled 8x8 digits as NHWC images (values 0-16) and int32 labels.

    The file holds the 1,797 images of the UCI "Optical Recognition of Handwritten Digits"
    test set (Alpaydin and Kaynak, 1998; CC BY 4.0), the same arrays, in the same order, as
    ``sklearn.datasets.load_digits``; shipping them needs no download and no scikit-learn.
    """
    with np.load(DIGITS_FILE) as digits:
        images, labels = digits["images"], digits["labels"]
    return images.reshape(-1, 8, 8, 1).astype(np.float64), labels.astype(np.int32)


# --- IDX (MNIST, Fashion-MNIST) --------------------------------------------------------

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (plain or gzip), the format of MNIST and Fashion-MNIST.

    Raises:
      DataError: naming the file when it is missing, truncated or not IDX.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as error:  # zlib's: a damaged gzip stream
        raise DataError(f"{path}: cannot read: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header promises {shape} ({expected} bytes), file holds "
            f"{len(raw) - header} bytes")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _find(directory: str, stem: str) -> str:
    for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                      stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.exists(path):
            return path
    raise DataError(f"{directory}: no {stem}[.gz] (MNIST-style IDX files expected)")


def load_idx_directory(directory: str | os.PathLike) -> tuple[tuple[np.ndarray, ...], ...]:
    """MNIST-layout files in ``directory``: ((x_train, y_train), (x_test, y_test)), NHWC."""
    directory = os.fspath(directory)
    if os.path.isfile(directory):
        raise DataError(f"{directory}: a file; MNIST-layout data are a directory of IDX "
                        "files (train-images-idx3-ubyte, ...)")
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: directory not found")
    parts = []
    for prefix in ("train", "t10k"):
        images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{directory}: {prefix} images {images.shape} and labels "
                            f"{labels.shape} do not match")
        if not len(images):
            raise DataError(f"{directory}: the {prefix} files hold no examples")
        if images.dtype.kind == "f":  # float IDX files may hold NaN (MNIST's bytes cannot)
            _check_finite_in(images, "float32", directory, f"{prefix} images")
        if parts and images.shape[1:] != parts[0][0].shape[1:3]:
            raise DataError(f"{directory}: {prefix} images are {images.shape[1:]}, the train "
                            f"images {parts[0][0].shape[1:3]}")
        parts.append((images[..., None].astype(np.float64), labels.astype(np.int32)))
    return tuple(parts)


# --- files with named columns -------------------------------------------------------------

def load_npz(path: str, features: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """Feature and label arrays stored under the given names in an ``.npz`` file."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
        if not magic.startswith(b"PK"):  # np.load would read it as a .npy or a pickle
            raise DataError(f"{path}: " + (
                "one array (a .npy file), not an npz archive; save the features and labels "
                "together with np.savez(path, x=..., y=...)" if magic == b"\x93NUMPY" else
                "not an npz archive (np.savez writes one: a zip of named arrays)"))
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in (features, labels) if name not in archive.files]
            if features == labels:
                raise DataError(f"{path}: the features and the labels are one array, "
                                f"{labels!r}")
            if missing:
                raise DataError(f"{path}: no array named {missing[0]!r}; has {archive.files}")
            x, y = (_npz_array(archive, name, path) for name in (features, labels))
            for name, array in ((features, x), (labels, y)):
                if array.ndim == 0:
                    raise DataError(f"{path}: array {name!r} is 0-d (one value); it needs one "
                                    "row per example")
            for name, array, what in ((features, x, "features"),
                                      (labels, y, "labels and targets")):
                if array.dtype.kind not in "biuf":  # complex, strings, objects
                    raise DataError(f"{path}: array {name!r} holds {array.dtype} values; "
                                    f"{what} are real numbers")
            return x.astype(np.float64), y
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: cannot read npz (truncated or not an npz file?): "
                        f"{type(error).__name__}: {error}") from None


def _npz_array(archive, name: str, path: str) -> np.ndarray:
    """``archive[name]``; an array of Python objects (pickled) is refused by name."""
    try:
        return archive[name]
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise
        raise DataError(f"{path}: array {name!r} holds Python objects (pickled); features "
                        "and labels are arrays of real numbers") from None


def load_csv(
    path: str, features: Sequence[str] | None, label: str
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A CSV file with a header row: the ``label`` column and the ``features`` columns.

    Args:
      path: the file (UTF-8; a leading byte-order mark, as Excel writes one, is dropped).
      features: the feature column names; None takes every column but ``label``.
      label: the label (or regression target) column.

    Returns:
      ``(x, y, lines)``: ``lines[i]`` is the file line of example ``i``, for errors.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader if row]  # blank lines skipped
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a UTF-8 CSV file: {error}") from None
    except OSError as error:  # a directory, no permission
        raise DataError(f"{path}: cannot read: {error}") from None
    if not header:
        raise DataError(f"{path}: empty CSV (a header row is expected)")
    header = [name.strip() for name in header]
    names = [c for c in header if c != label] if features is None else list(features)
    if label in names or len(set(names)) != len(names):
        raise DataError(f"{path}: the feature columns {names} repeat a column or hold the "
                        f"label {label!r}")
    for name in (*names, label):
        if name not in header:
            raise DataError(f"{path}: no column {name!r}; columns are {header}")
    columns = [header.index(name) for name in names]
    label_column = header.index(label)
    x = np.empty((len(rows), len(columns)), np.float64)
    y = np.empty(len(rows), np.float64)
    for index, (line, row) in enumerate(rows):
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} values, the header "
                            f"{len(header)}")
        try:
            x[index] = [float(row[c]) for c in columns]
            y[index] = float(row[label_column])
        except ValueError:
            column = next(c for c in (*columns, label_column) if not _is_number(row[c]))
            raise DataError(f"{path}: line {line}, column {header[column]!r}: "
                            f"{row[column]!r} is not a number") from None
    return x, y, [line for line, _ in rows]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _at(row: int, lines: Sequence[int] | None) -> str:
    """Where example ``row`` is: its file line where known (a CSV's), else its row."""
    return f"row {row}" if lines is None else f"line {lines[row]}"


def as_labels(y: np.ndarray, source: str, num_classes: int = 0,
              lines: Sequence[int] | None = None) -> tuple[np.ndarray, int]:
    """Integer class labels in ``[0, k)`` and ``k``: ``num_classes`` when declared (> 0), else
    inferred as the largest label + 1, provided every class in between has an example.

    Raises:
      DataError: naming ``source`` and the first row at fault (its file line where
        ``lines`` gives them: `load_csv`), a label that is not an integer, negative, too
        large, or that leaves classes without examples, or when there would be one class.
    """
    y = np.asarray(y)
    if not len(y):
        raise DataError(f"{source}: no examples")
    if y.dtype.kind not in "biuf":
        raise DataError(f"{source}: labels must be numbers, got dtype {y.dtype}")
    if y.ndim != 1:
        raise DataError(f"{source}: labels must be one integer per example, shape (n,); got "
                        f"shape {y.shape}")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(y) | (np.mod(y, 1) != 0) | (y < 0)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{source}: label {y[row].item()!r} at {_at(row, lines)}: classification "
                        "labels are integers >= 0")
    if (y > MAX_CLASSES).any():  # before the int64 cast, which wraps 1e19 and 2**64 - 1
        row = int(np.argmax(y > MAX_CLASSES))
        raise DataError(f"{source}: label {int(y[row])} at {_at(row, lines)} is above "
                        f"{MAX_CLASSES}, the most classes a classifier here takes")
    labels = y.astype(np.int64)
    top = int(np.argmax(labels))
    if max(num_classes, int(labels[top]) + 1) < 2 and len(labels):
        raise DataError(f"{source}: every label is 0: one class, whose loss is 0 whatever "
                        "the weights; a classifier needs at least 2 (data.task = "
                        "'regression' for real-valued targets)")
    if num_classes:
        if labels[top] >= num_classes:
            raise DataError(f"{source}: label {labels[top]} at {_at(top, lines)} is not below the "
                            f"{num_classes} classes")
        return labels.astype(np.int32), num_classes
    count = int(labels[top]) + 1
    if count > MAX_CLASSES or len(np.unique(labels)) < count:
        raise DataError(
            f"{source}: label {labels[top]} at {_at(top, lines)} would make {count} classes, "
            f"{count - len(np.unique(labels))} of them without an example; declare "
            "data.num_classes if that is meant")
    return labels.astype(np.int32), count


def check_finite(array: np.ndarray, source: str, what: str,
                 lines: Sequence[int] | None = None) -> None:
    """Refuses NaN and infinity, naming the first row that holds one (its file line where
    ``lines`` gives them)."""
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        row = int(np.argmax(~np.all(np.isfinite(array.reshape(len(array), -1)), axis=1)))
        value = array.reshape(len(array), -1)[row]
        value = value[~np.isfinite(value)][0]
        raise DataError(f"{source}: {what} at {_at(row, lines)} holds {value}; every value must be "
                        "finite")


def _check_finite_in(array: np.ndarray, precision: str, source: str, what: str,
                     lines: Sequence[int] | None = None) -> None:
    """`check_finite` on ``array`` as read and as cast to the training ``precision`` (a
    float64 value past float32's range is infinite in float32)."""
    check_finite(array, source, what, lines)
    with np.errstate(over="ignore"):
        check_finite(array.astype(precision), source, f"{what} (in {precision})", lines)


# --- synthetic sets -----------------------------------------------------------------------

def two_spirals(n: int = 600, noise: float = 0.2, seed: int = 0):
    """Two interleaved spirals in 2-D; labels 0 and 1."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0.05, 1, n)) * 3 * np.pi
    label = rng.integers(0, 2, n)
    sign = np.where(label == 0, 1.0, -1.0)
    x = np.stack([sign * t * np.cos(t), sign * t * np.sin(t)], axis=1) / (3 * np.pi)
    return x + noise * 0.1 * rng.standard_normal(x.shape), label.astype(np.int32)


def moons(n: int = 600, noise: float = 0.1, seed: int = 0):
    """Two interleaving half circles in 2-D; labels 0 and 1."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    angle = rng.uniform(0, np.pi, n)
    x = np.where(label[:, None] == 0,
                 np.stack([np.cos(angle), np.sin(angle)], 1),
                 np.stack([1 - np.cos(angle), 0.5 - np.sin(angle)], 1))
    return x + noise * rng.standard_normal(x.shape), label.astype(np.int32)


def regression_curve(n: int = 600, noise: float = 0.05, seed: int = 0):
    """``y = sin(3x) + x/2`` on [-2, 2] with noise: inputs (n, 1), targets (n, 1)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (n, 1))
    return x, np.sin(3 * x) + 0.5 * x + noise * rng.standard_normal(x.shape)


SYNTHETIC = {"spirals": two_spirals, "moons": moons, "regression": regression_curve}


def _check_features(x: np.ndarray, path: str) -> None:
    """Refuses examples of no values (0-wide images, 0 columns): the network's first layer
    was then blamed for its input shape."""
    if len(x) and not x[0].size:
        raise DataError(f"{path}: the examples have no features (shape {x.shape})")


def load(config) -> Dataset:
    """The data set a validated `jaxnn.config.Config` names, split and standardised.

    Raises:
      DataError: naming the file at fault.
    """
    from jaxnn.config import data_path

    cfg = config.data
    path = data_path(config)
    test = None
    if cfg.name == "digits":
        x, y = load_digits_arrays()
        num_classes = 10
    elif cfg.name in ("mnist", "fashion_mnist"):
        (x, y), test = load_idx_directory(path)
        _check_features(x, path)
        num_classes = 10
        y, _ = as_labels(y, f"{path}: train labels", num_classes)
        test = (test[0], as_labels(test[1], f"{path}: t10k labels", num_classes)[0])
    elif cfg.name in SYNTHETIC:
        x, y = SYNTHETIC[cfg.name](n=cfg.num_examples, seed=cfg.seed)
        num_classes = 0 if cfg.name == "regression" else 2
    else:
        if cfg.name == "npz":
            if len(cfg.features) > 1:
                raise DataError(
                    f"{path}: npz data takes one feature array name, got {cfg.features}")
            default_label, lines = "y", None
            x, y = load_npz(path, cfg.features[0] if cfg.features else "x", cfg.label or "y")
        else:
            default_label = "label"
            x, y, lines = load_csv(path, cfg.features or None, cfg.label or "label")
        if len(x) != len(y):  # before data.limit cuts both to its length
            raise DataError(f"{path}: {len(x)} examples but {len(y)} labels")
        if not len(x):
            raise DataError(f"{path}: no examples")
        _check_features(x, path)
        num_classes = 0
        if cfg.task == "classification":
            y, num_classes = as_labels(y, f"{path}: {cfg.label or default_label}",
                                       cfg.num_classes, lines)
        else:
            y = y.reshape(len(y), -1)  # (n, outputs), as the network gives them
            _check_finite_in(y, config.training.precision, path,
                             f"target {cfg.label or default_label!r}", lines)
        _check_finite_in(x, config.training.precision, path, "features", lines)
    if cfg.limit:
        x, y = x[: cfg.limit], y[: cfg.limit]
        if test is not None:
            test = (test[0][: cfg.limit], test[1][: cfg.limit])
    return split(x, y, num_classes=num_classes, name=f"{cfg.name} ({path})" if path else cfg.name,
                 validation_fraction=cfg.validation_fraction, test_fraction=cfg.test_fraction,
                 seed=cfg.seed, standardize=cfg.standardize, test=test)
