"""The ``[sweep]`` section: its validation, and the trials it lists (grid x random draws)."""

from __future__ import annotations

import copy
import itertools
import math
import re
from typing import Any, NamedTuple

import numpy as np

from jaxnn import config as config_lib
from jaxnn import hyperparameters, models, optim
from jaxnn.config import Config, ConfigError

# Names a sweep may vary, from the one table (`jaxnn.hyperparameters`): those that keep the
# compiled program (traced leaves and the seed) and those that change it.
NUMERIC = {h.name: h.key for h in hyperparameters.TABLE if h.kind != hyperparameters.STRUCTURAL}


STRUCTURAL = {h.name: h.key for h in hyperparameters.TABLE
              if h.kind == hyperparameters.STRUCTURAL}


SPEC_KEYS = ("grid", "random", "count", "seed", "pack_widths", "trials_per_chunk", "metric",
             "search", "trials", "batch", "pruning", "storage")


# "grid" runs the grid (times ``count`` random draws per point); the others ask an Optuna
# sampler for ``trials`` trials, ``batch`` at a time.
SEARCHES = ("grid", "random", "tpe", "cmaes", "gp")


class Trial(NamedTuple):
    """One configuration of a sweep: its index, the swept values and the full config."""

    index: int
    values: dict
    config: Config


class Distribution(NamedTuple):
    """Where a swept value comes from: "choice" (``values``), or "uniform" or "int" between
    ``low`` and ``high`` (inclusive for "int"), on a log scale when ``log``."""

    kind: str
    low: float | None = None
    high: float | None = None
    values: tuple = ()
    log: bool = False


MAX_TRIALS = 100_000  # planning 100,000 trials takes ~30 s on a 2-core CPU


def spec_of(config: Config) -> dict:
    """The validated ``[sweep]`` section."""
    spec = dict(config.sweep)
    source = config.source
    if not spec:
        raise ConfigError(source, "sweep", "no [sweep] section: nothing to sweep")
    for key in spec:
        if key not in SPEC_KEYS:
            raise ConfigError(source, f"sweep.{key}",
                              f"unknown key; [sweep] takes {', '.join(SPEC_KEYS)}")
    for table in ("grid", "random"):
        if not isinstance(spec.get(table, {}), dict):
            raise ConfigError(source, f"sweep.{table}", "expected a table of name = values")
        for name in spec.get(table, {}):
            if (name not in NUMERIC and name not in STRUCTURAL and name.count(".") != 1
                    and layer_path(name) is None):
                raise ConfigError(source, f"sweep.{table}.{name}", "unknown hyperparameter; "
                                  f"use one of {', '.join([*NUMERIC, *STRUCTURAL])}, a "
                                  "config key as \"section.key\" or a layer's as "
                                  "\"model.layers[i].key\"")
    if config.training.patience:
        raise ConfigError(source, "training.patience", f"{config.training.patience}: "
                          f"{_NO_PATIENCE}; leave it at 0 (--set training.patience=0 "
                          "resumes a sweep that set it)")
    _check_targets(spec, source)
    _check_read(spec, config)
    for name, values in spec.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            raise ConfigError(source, f"sweep.grid.{name}", "expected a non-empty list")
    if not spec.get("grid") and not spec.get("random"):
        raise ConfigError(source, "sweep", "needs a grid or a random table")
    for key, low in (("count", 0), ("seed", 0), ("trials_per_chunk", 0), ("trials", 1),
                     ("batch", 1)):
        value = spec.get(key, low)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(source, f"sweep.{key}", f"expected an int >= {low}, got {value!r}")
    if spec.get("seed", 0) > config_lib.MAX_SEED:  # Optuna's samplers take 32-bit seeds
        raise ConfigError(source, "sweep.seed", f"must be <= 2**32 - 1, got {spec['seed']}")
    search = spec.setdefault("search", "grid")
    if search not in SEARCHES:
        raise ConfigError(source, "sweep.search", f"{search!r} is not one of "
                          f"{', '.join(SEARCHES)}")
    if search == "grid":
        if "trials" in spec:
            raise ConfigError(source, "sweep.trials", "a grid search runs its grid (times "
                              'count random draws); trials is for search = "random", "tpe", '
                              '"cmaes" or "gp"')
        if spec.get("batch", 1) < 1:
            raise ConfigError(source, "sweep.batch", f"expected batch >= 1, got {spec['batch']}")
        if spec.get("random") and spec.get("count", 0) < 1:
            raise ConfigError(source, "sweep.count", "random search needs count >= 1")
        if spec.get("count", 0) > 1 and not spec.get("random"):
            raise ConfigError(source, "sweep.count", "count draws from the random table per "
                              "grid point, and there is none: it would change nothing")
    else:
        if "count" in spec:
            raise ConfigError(source, "sweep.count", f'search = "{search}" asks for '
                              "trials (the total), not count")
        if spec.get("trials", 0) < 1:
            raise ConfigError(source, "sweep.trials", f'search = "{search}" needs '
                              "trials >= 1 (the total number of trials)")
        spec.setdefault("batch", min(spec["trials"], 16))
        if not 1 <= spec["batch"] <= spec["trials"]:
            raise ConfigError(source, "sweep.batch", f"expected 1 <= batch <= trials "
                              f"({spec['trials']}), got {spec['batch']}")
    total, key = ((math.prod(map(len, spec.get("grid", {}).values())) * spec.get("count", 1),
                   "sweep.count" if spec.get("count", 1) > 1 else "sweep.grid")
                  if search == "grid" else (spec["trials"], "sweep.trials"))
    if total > MAX_TRIALS:  # a billion took minutes and gigabytes before saying anything
        raise ConfigError(source, key, f"{total:,} trials, more than a sweep runs "
                          f"({MAX_TRIALS:,}); sweep fewer values, or split the sweep")
    pack = spec.get("pack_widths", "auto")
    if not (pack == "auto" or isinstance(pack, bool)):  # 0 and 1 are no switches
        raise ConfigError(source, "sweep.pack_widths", 'expected "auto", true or false')
    if spec.get("metric", "auto") not in ("auto", "val_accuracy", "val_loss"):
        raise ConfigError(source, "sweep.metric", 'expected "val_accuracy" or "val_loss"')
    if not isinstance(spec.get("storage", ""), str):
        raise ConfigError(source, "sweep.storage", "expected an Optuna storage URL such as "
                          '"sqlite:///study.db"')
    space_of(spec, source)
    return spec


# What a trial cannot vary: a sweep prepares its data once, runs in one precision, and
# writes one directory.
_NO_PATIENCE = ("a sweep trains every trial its epochs and stops none by patience (jaxnn "
                "train's early stopping), so best.toml would not train as its trial did; "
                "[sweep.pruning] stops losing trials")
FIXED = {"data": "the data is prepared once for every trial; run one sweep per value",
         "training.patience": _NO_PATIENCE,
         "output": "a sweep writes one directory", "sweep": "the sweep is one section",
         "training.progress": "the progress bar is the sweep's, not a trial's",
         "training.precision": "every trial of a sweep runs in one precision; run one sweep "
                               "per precision"}


def _target(name: str) -> str:
    """The config key a swept ``name`` sets; a layer argument's spelled one way
    (``model.layers[01].momentum`` sets ``model.layers[1].momentum``)."""
    path = layer_path(name)
    if path is not None:
        return "model.layers" + "".join(f"[{step}]" if isinstance(step, int) else f".{step}"
                                        for step in path[2:])
    return NUMERIC.get(name) or STRUCTURAL.get(name) or name


def _check_targets(spec: dict, source: str) -> None:
    """Refuses a swept name whose config key no trial may vary (`FIXED`), and two names that
    set one key (``learning_rate`` and ``optimizer.learning_rate``; ``width`` or ``depth``
    and ``model.hidden``): the last would silently win."""
    seen: list[str] = []
    for table in ("grid", "random"):
        for name in spec.get(table, {}):
            target = _target(name)
            why = FIXED.get(target) or FIXED.get(target.split(".")[0])
            if why:
                raise ConfigError(source, f"sweep.{table}.{name}", f"cannot be swept: {why}")
            clashes = [other for other in seen if _target(other) == target
                       and {name, other} != {"width", "depth"}]  # those two set it together
            if clashes:
                raise ConfigError(source, f"sweep.{table}.{name}", f"sets {target}, as "
                                  f"{clashes[0]!r} does; sweep it under one name")
            seen.append(name)


def _check_read(spec: dict, config: Config) -> None:
    """Refuses sweeping what no trial reads: an ``[optimizer]`` key none of the sweep's
    optimizers reads (`jaxnn.optim.KEYS_READ`: ``b1`` under momentum), ``model.activation``
    for a ``model.layers`` net (each layer names its own), or ``dropout`` for one whose
    Dropout layers all give their own rate (or that has none). Every value would train
    alike, and ``best.toml`` would pick one of equals."""
    swept = {_target(name): (table, name, values) for table in ("grid", "random")
             for name, values in spec.get(table, {}).items()}
    _, _, chosen = swept.get("optimizer.name", (None, None, [config.optimizer.name]))
    chosen = chosen.get("values") if isinstance(chosen, dict) else chosen
    # (Names that are not strings are refused where the trials are made.)
    optimizers = sorted({o for o in chosen if isinstance(o, str)}) \
        if isinstance(chosen, list | tuple) else []
    for target, (table, name, _) in swept.items():
        section, key = target.split(".", 1)
        unread = ""
        reads = [key in optim.KEYS_READ.get(o, (key,)) for o in optimizers]
        if section == "optimizer" and key not in ("name", "learning_rate", "weight_decay") \
                and reads and not any(reads):
            unread = f"{key} is read by none of this sweep's optimizers ({', '.join(optimizers)})"
        if target == "model.activation" and config.model.layers \
                and "model.layers" not in swept:
            unread = "model.activation is not read by a model.layers net (each layer names its own)"
        if target == "model.dropout" and config.model.layers and "model.layers" not in swept \
                and not any(layer.get("type") == "Dropout" and "rate" not in layer
                            for layer in models.layer_specs(config.model.layers)):
            unread = ("model.dropout is read by a model.layers net's Dropout layers that give "
                      "no rate of their own, and this net has none")
        if unread:
            raise ConfigError(config.source, f"sweep.{table}.{name}",
                              f"{unread}: every value would train alike")


_DISTRIBUTION_KEYS = {"choice": ("distribution", "values"),
                      "uniform": ("distribution", "low", "high", "log"),
                      "log_uniform": ("distribution", "low", "high"),
                      "int": ("distribution", "low", "high", "log")}


def _distribution(name: str, dist: Any, source: str) -> Distribution:
    key = f"sweep.random.{name}"
    if isinstance(dist, list):
        dist = {"distribution": "choice", "values": dist}
    if not isinstance(dist, dict):
        raise ConfigError(source, key, 'expected {distribution = "log_uniform", low = ..., '
                          "high = ...} or a list of choices")
    kind = dist.get("distribution")
    if not isinstance(kind, str) or kind not in _DISTRIBUTION_KEYS:
        raise ConfigError(source, f"{key}.distribution", f"{kind!r} is not one of "
                          f"{', '.join(_DISTRIBUTION_KEYS)}")
    unknown = sorted(set(dist) - set(_DISTRIBUTION_KEYS[kind]))
    if unknown:
        raise ConfigError(source, f"{key}.{unknown[0]}", f"a {kind} distribution takes "
                          f"{', '.join(_DISTRIBUTION_KEYS[kind])}")
    if "log" in dist and not isinstance(dist["log"], bool):
        raise ConfigError(source, f"{key}.log", f"expected true or false, got {dist['log']!r}")
    if kind == "choice":
        values = dist.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(source, key, "choice needs a non-empty values list")
        return Distribution("choice", values=tuple(values))
    low, high = dist.get("low"), dist.get("high")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) \
            or not low < high:
        raise ConfigError(source, key, f"needs numbers low < high, got {low!r}, {high!r}")
    try:  # 1e400 reads as inf; -1e308 to 1e308 overflows; so does an int past float's range
        finite = math.isfinite(float(high) - float(low))
    except OverflowError:
        finite = False
    if not finite:
        raise ConfigError(source, key, f"needs a finite range, got {low!r} to {high!r}")
    known = hyperparameters.BY_NAME.get(name)
    if kind == "int" or (kind in ("uniform", "log_uniform") and known is not None
                         and known.integer):
        if kind == "int" and not all(isinstance(v, int) for v in (low, high)):
            raise ConfigError(source, key, f"int needs integer bounds, got {low!r}, {high!r}")
        log = kind == "log_uniform" or dist.get("log", False)
        if log and low <= 0:
            raise ConfigError(source, key, "a log scale needs low > 0")
        if math.ceil(low) > math.floor(high):
            raise ConfigError(source, key, f"{name} takes integers, and [{low!r}, {high!r}] "
                              "holds none")
        return Distribution("int", math.ceil(low), math.floor(high), log=log)
    log = kind == "log_uniform" or dist.get("log", False)
    if log and low <= 0:
        raise ConfigError(source, key, f"{kind} on a log scale needs low > 0")
    return Distribution("uniform", float(low), float(high), log=log)


def space_of(spec: dict, source: str) -> dict[str, Distribution]:
    """The search space: the grid's values as choices, then the random table's
    distributions."""
    space = {name: Distribution("choice", values=tuple(values))
             for name, values in spec.get("grid", {}).items()}
    for name, dist in spec.get("random", {}).items():
        if name in space:
            raise ConfigError(source, f"sweep.random.{name}", "also in the grid")
        space[name] = _distribution(name, dist, source)
    return space


def _draw(dist: Distribution, rng: np.random.Generator) -> Any:
    if dist.kind == "choice":
        return dist.values[int(rng.integers(len(dist.values)))]
    low, high = (math.log(dist.low), math.log(dist.high)) if dist.log else (dist.low,
                                                                              dist.high)
    value = float(rng.uniform(low, high))
    value = math.exp(value) if dist.log else value
    return min(max(round(value), dist.low), dist.high) if dist.kind == "int" else value


def layer_path(name: str) -> list[str | int] | None:
    """A swept layer argument's path in the raw config: ``"model.layers[2].features"`` is
    ``["model", "layers", 2, "features"]`` (nested tables too, as the config's error keys
    name them: ``"model.layers[1].layers[0].features"``); None for any other name."""
    if not re.fullmatch(r"model\.layers\[\d+\](?:\.\w+|\[\d+\])*\.\w+", name):
        return None
    return [int(index) if index else key for key, index in re.findall(r"(\w+)|\[(\d+)\]", name)]


def _set_layer_value(raw: dict, name: str, value: Any, base: Config, where: str) -> None:
    path = layer_path(name)
    node: Any = raw
    for depth, step in enumerate(path[:-1]):
        inside = (isinstance(node, dict) and step in node if isinstance(step, str)
                  else isinstance(node, list | tuple) and step < len(node))
        if not inside:
            at = "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path[:depth + 1])
            raise ConfigError(base.source, where, f"{name}: the config has no {at[1:]}")
        node = node[step]
    if not isinstance(node, dict):
        raise ConfigError(base.source, where, f"{name}: {name.rsplit('.', 1)[0]} is not a "
                          "layer table")
    node[path[-1]] = copy.deepcopy(value)  # a nested list: as `_apply`'s copy


def _apply(base: Config, values: dict, where: str) -> Config:
    raw = config_lib.to_dict(base)
    raw["sweep"] = {}
    model = raw["model"]
    if "width" in values or "depth" in values:
        if model["layers"]:
            raise ConfigError(base.source, where, "width and depth sweeps need the MLP "
                              "shorthand (model.hidden), not model.layers")
        hidden = list(model["hidden"]) or [64]
        width = values.get("width", hidden[0])
        model["hidden"] = [width] * values.get("depth", len(hidden))
    # A whole (``model.layers``, a nested ``layers`` list) before its parts, whatever the
    # order given: a layer argument set first was overwritten by the list.
    for name, value in sorted(values.items(), key=lambda item: len(layer_path(item[0]) or ())):
        if name in ("width", "depth"):
            continue
        if layer_path(name) is not None:
            _set_layer_value(raw, name, value, base, where)
            continue
        section, key = _target(name).split(".")
        if section not in raw or section == "sweep":
            raise ConfigError(base.source, where, f"unknown section {section!r}")
        # A copy: a layer argument set next must not change the grid's list (nor so the
        # other trials given it).
        raw[section][key] = copy.deepcopy(value)
    try:
        return config_lib.from_dict(raw, base.source)
    except ConfigError as error:
        raise ConfigError(base.source, where, f"trial {values}: {error.key}: "
                          f"{str(error).split(': ', 2)[-1]}") from None


def make_trial(index: int, values: dict, config: Config) -> Trial:
    """The trial that sets ``values`` (name -> value) on the sweep's base config."""
    return Trial(index, values, _apply(config, values, "sweep"))


def trials(config: Config) -> tuple[Trial, ...]:
    """Every trial of a grid search, in a fixed order (grid product x random draws); an
    adaptive search has none in advance (its sampler asks for them, `jaxnn.sweep.search`)."""
    spec = spec_of(config)
    if spec["search"] != "grid":
        return ()
    space = space_of(spec, config.source)
    grid = spec.get("grid", {})
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    rng = np.random.default_rng(spec.get("seed", 0))
    random = [name for name in space if name not in grid]
    result = []
    for point in points:
        for _ in range(spec.get("count", 1) if random else 1):
            values = {**point, **{name: _draw(space[name], rng) for name in random}}
            result.append(make_trial(len(result), values, config))
    return tuple(result)
