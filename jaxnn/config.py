"""TOML configs, validated into frozen dataclasses before anything is compiled.

The defaults are the default run (``configs/mlp_digits.toml``: an MLP on the bundled
digits). A config has the sections ``[model]``, ``[data]``, ``[optimizer]``, ``[schedule]``,
``[training]``, ``[output]`` (and ``[sweep]``, read by the sweep engine); every key has a
default, so an empty file is the default run. Problems raise one `ConfigError` that names
the file and the key (``configs/x.toml: training.epochs: expected an int, got "ten"``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A bad config: names the file and the key at fault."""

    def __init__(self, source: str, key: str, message: str):
        self.source, self.key = source, key
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


@dataclass(frozen=True)
class ModelConfig:
    """The network.

    Either ``layers`` -- a list of tables ``{type = "Dense", features = 128}`` naming a layer
    constructor and its arguments -- or the MLP shorthand ``hidden`` (widths) with
    ``activation``, whose output layer is sized from the data.
    """

    layers: tuple[dict, ...] = ()
    hidden: tuple[int, ...] = (256, 128)
    activation: str = "relu"
    loss: str = "softmax_cross_entropy"
    dropout: float = 0.0  # rate of Dropout layers that give none of their own
    init_scale: float = 1.0  # multiplies the initial weights ("w" leaves)


@dataclass(frozen=True)
class DataConfig:
    """The data set; ``name`` is digits, mnist, fashion_mnist, npz, csv, spirals, moons or
    regression. ``path`` is the IDX directory (mnist, fashion_mnist) or the file (npz, csv);
    a relative one is made absolute as the config loads (`data_path`), so that the copy a
    run or sweep directory keeps finds the data from any working directory."""

    name: str = "digits"
    path: str = ""
    features: tuple[str, ...] = ()  # npz: one array name; csv: columns (empty: all but label)
    label: str = ""  # npz array / csv column of labels (default "y" / "label")
    task: str = "classification"  # or "regression" (npz, csv)
    num_classes: int = 0  # npz, csv classification: labels in [0, num_classes); 0: inferred
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    standardize: bool = True
    seed: int = 0
    limit: int = 0  # use only the first `limit` examples (0: all), e.g. for quick runs
    num_examples: int = 600  # synthetic sets


@dataclass(frozen=True)
class OptimizerConfig:
    """An optax optimizer: sgd, momentum, nesterov, adam, adamw or rmsprop."""

    name: str = "momentum"
    learning_rate: float = 0.1
    momentum: float = 0.9  # momentum, nesterov, rmsprop
    weight_decay: float = 3e-3  # decoupled for adamw, an L2 gradient term otherwise
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    decay: float = 0.9  # rmsprop's squared-gradient average


@dataclass(frozen=True)
class ScheduleConfig:
    """An optax learning-rate schedule: constant, exponential, step, cosine, warmup_cosine."""

    name: str = "cosine"
    decay_rate: float = 0.5  # exponential: factor per `decay_epochs`, smoothly per step
    decay_epochs: float = 10.0
    boundaries: tuple[float, ...] = ()  # step: epochs at which the rate is scaled
    scales: tuple[float, ...] = ()  # step: the factor at each boundary
    warmup_epochs: float = 1.0  # warmup_cosine, in whole steps (rounded); 0: no warmup
    final_fraction: float = 0.0  # cosine, warmup_cosine: final rate / peak rate


@dataclass(frozen=True)
class TrainingConfig:
    """The training loop."""

    epochs: int = 60
    batch_size: int = 64
    seed: int = 0
    precision: str = "float32"  # or "float64": data, parameters, optimizer and loss
    compute_dtype: str = ""  # "bfloat16" (mixed precision) or "float32"; "": the precision
    patience: int = 0  # early stopping on validation loss; 0 turns it off
    chunk_epochs: int = 0  # epochs per compiled chunk between host checks; 0: automatic
    backprop: str = "autodiff"  # or "manual": train with the layers' delta rules
    progress: bool = True


@dataclass(frozen=True)
class OutputConfig:
    """Where results go: runs/<config name>-<time> unless a work directory is given."""

    dir: str = "runs"
    plots: bool = True
    checkpoint: bool = True


@dataclass(frozen=True)
class Config:
    """A whole, validated config."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    sweep: dict = field(default_factory=dict)
    source: str = "<defaults>"

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections or ``section={key: value}`` updates replaced."""
        updates = {}
        for name, value in sections.items():
            if isinstance(value, dict) and name != "sweep":
                value = dataclasses.replace(getattr(self, name), **value)
            updates[name] = value
        return dataclasses.replace(self, **updates)


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)
            if f.name not in ("source",)}
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "exponential", "step", "cosine", "warmup_cosine")
BACKPROPS = ("autodiff", "manual")  # jax.value_and_grad, or the layers' delta rules
DATASETS = ("digits", "mnist", "fashion_mnist", "npz", "csv", "spirals", "moons", "regression")
MAX_SYNTHETIC = 10_000_000  # examples of a synthetic set (spirals: 10**11 asked 745 GiB)
_DATA_KEYS_READ_BY = {  # the data sets that read each key that not all of them read
    "path": ("mnist", "fashion_mnist", "npz", "csv"),
    "features": ("npz", "csv"), "label": ("npz", "csv"), "num_classes": ("npz", "csv"),
    "num_examples": ("spirals", "moons", "regression"),
    # MNIST's own test files are its test split.
    "test_fraction": ("digits", "npz", "csv", "spirals", "moons", "regression"),
}


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """Checks ``value`` against a field's type hint; lists become tuples."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise ConfigError(source, key, f"expected a list, got {value!r}")
        return tuple(_coerce(v, item_hint, source, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, f"expected an int, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(source, key, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(source, key, f"expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(source, key, f"expected a string, got {value!r}")
        return value
    if hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a table, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint}")  # pragma: no cover


# A section's field types, evaluated once (a sweep builds a config per trial: evaluating the
# annotations each time was most of planning 512 trials).
_type_hints = functools.cache(typing.get_type_hints)


def _section(name: str, values: Any, source: str):
    cls = type(SECTIONS[name]())
    if not isinstance(values, dict):
        raise ConfigError(source, name, f"expected a [{name}] table, got {values!r}")
    hints = _type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(source, f"{name}.{key}",
                              f"unknown key; [{name}] takes {', '.join(sorted(known))}")
    return cls(**{k: _coerce(v, hints[k], source, f"{name}.{k}") for k, v in values.items()})


def _check_values(config: Config) -> None:
    """Range and choice checks that types alone do not catch."""
    source = config.source

    def require(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(source, key, message)

    def choice(value: str, options: tuple[str, ...], key: str) -> None:
        require(value in options, key, f"{value!r} is not one of "
                f"{', '.join(option or repr(option) for option in options)}")

    opt, sched, train, data, model = (config.optimizer, config.schedule, config.training,
                                      config.data, config.model)
    choice(opt.name, OPTIMIZERS, "optimizer.name")
    require(opt.learning_rate > 0, "optimizer.learning_rate",
            f"must be > 0, got {opt.learning_rate}")
    require(0 <= opt.momentum < 1, "optimizer.momentum", f"must be in [0, 1), got {opt.momentum}")
    require(opt.weight_decay >= 0, "optimizer.weight_decay",
            f"must be >= 0, got {opt.weight_decay}")
    for key in ("b1", "b2", "decay"):  # averaging factors (adam, adamw; rmsprop)
        value = getattr(opt, key)
        require(0 <= value < 1, f"optimizer.{key}", f"must be in [0, 1), got {value}")
    require(opt.eps > 0, "optimizer.eps", f"must be > 0, got {opt.eps}")
    choice(sched.name, SCHEDULES, "schedule.name")
    require(sched.decay_rate > 0, "schedule.decay_rate", "must be > 0")
    require(sched.decay_epochs > 0, "schedule.decay_epochs", "must be > 0")
    require(len(sched.boundaries) == len(sched.scales), "schedule.scales",
            f"needs one scale per boundary ({len(sched.boundaries)} boundaries)")
    require(all(b >= 0 for b in sched.boundaries), "schedule.boundaries",
            f"epochs must be >= 0, got {list(sched.boundaries)}")
    require(all(a < b for a, b in itertools.pairwise(sched.boundaries)),
            "schedule.boundaries", f"epochs must increase, got {list(sched.boundaries)}")
    require(all(f >= 0 for f in sched.scales), "schedule.scales",
            f"factors must be >= 0, got {list(sched.scales)}")
    require(sched.warmup_epochs >= 0, "schedule.warmup_epochs",
            f"must be >= 0, got {sched.warmup_epochs}")
    # (It was cut to the run's length, silently; the default 1 epoch of a 1-epoch run warms
    # up over the whole run, as before.)
    require(sched.name != "warmup_cosine" or sched.warmup_epochs <= train.epochs,
            "schedule.warmup_epochs", f"{sched.warmup_epochs} is beyond the run's "
            f"{train.epochs} epochs (training.epochs): the warmup would never end")
    require(0 <= sched.final_fraction <= 1, "schedule.final_fraction", "must be in [0, 1]")
    require(train.epochs >= 1, "training.epochs", f"must be >= 1, got {train.epochs}")
    require(train.batch_size >= 1, "training.batch_size", f"must be >= 1, got {train.batch_size}")
    choice(train.precision, ("float32", "float64"), "training.precision")
    choice(train.compute_dtype, ("", "float32", "bfloat16"), "training.compute_dtype")
    choice(train.backprop, BACKPROPS, "training.backprop")
    for key, seed in (("training.seed", train.seed), ("data.seed", data.seed)):
        require(0 <= seed <= MAX_SEED, key, f"must be in [0, 2**32 - 1], got {seed}")
    require(train.patience >= 0, "training.patience", "must be >= 0")
    require(train.chunk_epochs >= 0, "training.chunk_epochs", "must be >= 0")
    choice(data.name, DATASETS, "data.name")
    choice(data.task, ("classification", "regression"), "data.task")
    require(0 <= data.validation_fraction < 1, "data.validation_fraction", "must be in [0, 1)")
    require(0 <= data.test_fraction < 1, "data.test_fraction", "must be in [0, 1)")
    require(data.limit >= 0, "data.limit", "must be >= 0")
    require(0 <= data.num_examples <= MAX_SYNTHETIC, "data.num_examples",
            f"must be in [0, {MAX_SYNTHETIC:,}] (a synthetic set is made in memory), got "
            f"{data.num_examples}")
    require(data.num_classes >= 0, "data.num_classes", "must be >= 0 (0: inferred from the labels)")
    from jaxnn.data import MAX_CLASSES

    require(data.num_classes <= MAX_CLASSES, "data.num_classes", (
        f"{data.num_classes} is more than the {MAX_CLASSES:,} classes a classifier here takes"))
    if data.name in _DATA_KEYS_READ_BY["path"]:
        require(bool(data.path), "data.path", f"data set {data.name!r} needs a path")
        require(os.path.exists(data_path(config)), "data.path", f"{data.path!r} not found")
    require(0 <= model.dropout < 1, "model.dropout", f"must be in [0, 1), got {model.dropout}")
    require(model.init_scale > 0, "model.init_scale", f"must be > 0, got {model.init_scale}")
    require(all(width >= 1 for width in model.hidden), "model.hidden", "widths must be >= 1")
    require(not model.layers or model.hidden in ((), ModelConfig.hidden), "model.hidden",
            f"{list(model.hidden)} is not used: model.layers gives the whole network; leave "
            "model.hidden out (or []) with model.layers")
    require(not model.layers or model.activation == ModelConfig.activation, "model.activation",
            f"{model.activation!r} is not used: model.layers names each layer's activation; "
            "leave model.activation out with model.layers")
    for index, spec in enumerate(model.layers):
        require(isinstance(spec, dict) and isinstance(spec.get("type"), str),
                f"model.layers[{index}]", 'expected a table with a "type", e.g. '
                '{type = "Dense", features = 10}')


def refuse_unread_data_keys(config: Config) -> None:
    """Refuses a `[data]` key the data set does not read (digits trained on its own 10
    classes whatever ``data.path`` or ``data.num_classes`` said). For a new config: one
    stored by an earlier jaxnn that took such keys silently still resumes.

    Raises:
      ConfigError: naming the key and the data sets that read it.
    """
    data, defaults = config.data, DataConfig()
    for key, readers in _DATA_KEYS_READ_BY.items():
        value = getattr(data, key)
        if data.name not in readers and value != getattr(defaults, key):
            raise ConfigError(config.source, f"data.{key}", (
                f"{value!r} is not read by the {data.name!r} data set (only by "
                f"{', '.join(readers)}); leave it out"))
    if data.name not in ("npz", "csv", "regression") and data.task != "classification":
        raise ConfigError(config.source, "data.task", (
            f"{data.task!r}: the {data.name!r} data set is classification; only npz and csv "
            "data take a task"))
    if data.task == "regression" and data.num_classes != defaults.num_classes:
        raise ConfigError(config.source, "data.num_classes", (
            f"{data.num_classes} is not read by a regression (data.task); leave it out"))


def data_path(config: Config) -> str:
    """``data.path`` as given when it exists from here, else relative to the config file."""
    path = config.data.path
    if not path or os.path.isabs(path) or os.path.exists(path) or not os.path.isfile(config.source):
        return path
    return os.path.join(os.path.dirname(config.source), path)


def from_dict(raw: dict, source: str = "<dict>") -> Config:
    """Validates a parsed TOML document (a dict of sections) into a `Config`."""
    for name in raw:
        if name not in SECTIONS:
            raise ConfigError(source, name, f"unknown section; sections are {', '.join(SECTIONS)}")
    sections = {name: _section(name, raw[name], source) if name != "sweep" else
                _coerce(raw[name], dict, source, "sweep") for name in raw}
    config = Config(**sections, source=source)
    model = raw.get("model", {})
    if model.get("layers") == [] and "hidden" not in model:  # stored configs give both
        raise ConfigError(source, "model.layers", "empty: no network to train; list its "
                          "layers, or leave model.layers out for the MLP of model.hidden")
    _check_values(config)
    if config.data.path:
        config = config.replace(data={"path": os.path.abspath(data_path(config))})
    return config


def _parse_override(text: str, source: str) -> tuple[list[str | int], Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(source, "--set", f"expected key.path=value, got {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes the terminal's encoding could not decode
        raise ConfigError(source, "--set", f"{text!r} is not valid UTF-8, which a TOML "
                          "config (and the run's config.toml) must be") from None
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # A bare word is taken as a string.
    key = key.strip()
    # A list's entry by index, as sweep grids name a layer's: "model.layers[1].momentum".
    indexed = re.fullmatch(r"\w+(?:\.\w+|\[\d+\])*", key) and "[" in key
    path = [int(index) if index else name for name, index in
            re.findall(r"(\w+)|\[(\d+)\]", key)] if indexed else key.split(".")
    return path, parsed


def _key_text(path: list[str | int]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)[1:]


def apply_overrides(raw: dict, overrides: list[str], source: str) -> dict:
    """Applies ``section.key=value`` overrides (values parsed as TOML) to a raw document; a
    list's entry is named by its index (``model.layers[1].momentum``)."""
    for text in overrides:
        path, value = _parse_override(text, source)
        node = raw
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise ConfigError(source, _key_text(path), "the config has no "
                                      f"{_key_text(path[:depth + 1])}")
            elif not isinstance(node, dict):
                raise ConfigError(source, _key_text(path), "cannot set a key inside a value")
            if last:
                node[part] = value
            else:
                node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    return raw


def load(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Reads and validates a TOML config.

    Args:
      path: the TOML file.
      overrides: ``["training.epochs=5", ...]`` applied on top (values in TOML syntax).

    Raises:
      ConfigError: naming the file and key at fault.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as handle:
            # A byte-order mark, as some Windows editors write, is no TOML error.
            raw = tomllib.loads(handle.read().decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(source, "", "config file not found") from None
    except OSError as error:  # a directory, no permission, ...
        raise ConfigError(source, "", f"cannot read the config ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(source, "", f"not UTF-8 text (byte {error.start}); a TOML config is "
                          "UTF-8") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, "", f"not valid TOML: {error}") from None
    return from_dict(apply_overrides(raw, list(overrides or []), source), source)


# Keys a resumed run or sweep may change: none of them changes what is trained.
RESUMABLE = ("training.progress", "training.chunk_epochs", "output.plots", "output.checkpoint",
             "output.dir")


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and prefix == "":  # sections; deeper tables stay whole
            out.update(_flat(value, f"{key}."))
        else:
            out[prefix + key] = value
    return out


def load_for_resume(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """The config stored in a run or sweep directory, with the overrides that do not change
    what was trained (`RESUMABLE`).

    Raises:
      ConfigError: naming the first override that would change the model, data, optimizer,
        schedule, training or sweep of the stored run, before anything is written.
    """
    config = load(path, overrides)
    change = resume_change(load(path), config)
    if change is not None:
        key, was, now = change
        raise ConfigError(os.fspath(path), key, (
            f"a resumed run keeps what it was trained with ({was!r}, not {now!r}); start a "
            "new run to change it"))
    return config


def resume_change(trained: Config, resumed: Config) -> tuple[str, Any, Any] | None:
    """``(key, trained value, resumed value)`` of the first key outside `RESUMABLE` where a
    resumed run's config differs from the one it was trained with; None where none does.
    A layer argument written out at its default is no difference (`models.with_defaults`),
    nor a sweep's ``training.patience`` (no sweep stops trials by it; one that set it is
    refused until resumed with it at 0)."""
    from jaxnn import models  # the layers' defaults (models imports this module)

    was, now = _flat(to_dict(trained)), _flat(to_dict(resumed))
    for flat in (was, now):  # a default written out is no change
        if flat.get("model.layers"):
            flat["model.layers"] = models.with_defaults(flat["model.layers"])
    for key in sorted(set(was) | set(now)):
        if key not in RESUMABLE and was.get(key) != now.get(key) and not (
                key == "training.patience" and trained.sweep):  # which no sweep reads
            return _innermost_change(key, was.get(key), now.get(key))
    return None


def _innermost_change(key: str, was: Any, now: Any) -> tuple[str, Any, Any]:
    """``(key, was, now)`` narrowed into lists and tables to the first value that differs:
    ``model.layers[1].momentum``, not the whole of ``model.layers`` twice."""
    if isinstance(was, list | tuple) and isinstance(now, list | tuple) and len(was) == len(now):
        for index, (a, b) in enumerate(zip(was, now, strict=True)):
            if a != b:
                return _innermost_change(f"{key}[{index}]", a, b)
    if isinstance(was, dict) and isinstance(now, dict):
        for name in sorted(set(was) | set(now)):
            if was.get(name) != now.get(name):
                return _innermost_change(f"{key}.{name}", was.get(name), now.get(name))
    return key, was, now


# --- writing ------------------------------------------------------------------------------

def _toml_key(key: str) -> str:
    """A bare key, or a quoted one ("model.layers" must not become a dotted key)."""
    return key if key and all(c.isalnum() or c in "_-" for c in key) else _toml_value(key)


MAX_SEED = 2**32 - 1  # JAX's and NumPy's seeds: larger ones were truncated or refused late


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are TOML's (control characters too); DEL must be escaped in TOML.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_dict(config: Config) -> dict:
    """The config as plain sections (``source`` left out)."""
    return {name: dataclasses.asdict(getattr(config, name)) if name != "sweep" else
            dict(config.sweep) for name in SECTIONS}


def loads(text: str, source: str) -> Config:
    """The config that `dumps` wrote as ``text`` (kept in a checkpoint or a study), checked
    as a file at ``source`` would be (relative data paths resolve beside it)."""
    return from_dict(tomllib.loads(text), source)


def loads_kept(text: Any, source: str, kept_in: str) -> Config:
    """`loads` of the config a checkpoint or a study keeps (``kept_in`` names the file): a
    damaged record is refused naming ``kept_in``, not the config file it stands for.

    Raises:
      ConfigError: naming ``kept_in``.
    """
    try:
        if not isinstance(text, str):
            raise TypeError(f"a {type(text).__name__}, not TOML text")
        return loads(text, source)
    except (tomllib.TOMLDecodeError, TypeError, ConfigError) as error:
        why = str(error).removeprefix(f"{source}: ")  # what is wrong, not the file's name
        raise ConfigError(kept_in, "", f"the config it keeps cannot be read ({why}); the "
                          "file is damaged, and nothing was changed") from None


def dumps(config: Config | dict) -> str:
    """The config as TOML that `load` reads back to an equal config.

    tomllib only reads; the schema here (scalars, lists, inline tables) is small enough that
    writing it needs no extra dependency.
    """
    sections = to_dict(config) if isinstance(config, Config) else config
    lines = []
    for name, values in sections.items():
        if not values:
            continue
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, list | tuple) and value and isinstance(value[0], dict):
                lines.append(f"{key} = [")
                lines += [f"  {_toml_value(item)}," for item in value]
                lines.append("]")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)

