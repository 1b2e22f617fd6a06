"""The ``[sweep]`` section: its validation, and the trials it lists (grid x random draws)."""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

import numpy as np

from jaxnn import config as config_lib
from jaxnn import hyperparameters
from jaxnn.config import Config, ConfigError

# Names a sweep may vary, from the one table (`jaxnn.hyperparameters`): those that keep the
# compiled program (traced leaves and the seed) and those that change it.
NUMERIC = {h.name: h.key for h in hyperparameters.TABLE if h.kind != hyperparameters.STRUCTURAL}


STRUCTURAL = {h.name: h.key for h in hyperparameters.TABLE
              if h.kind == hyperparameters.STRUCTURAL}


SPEC_KEYS = ("grid", "random", "count", "seed", "pack_widths", "trials_per_chunk", "metric")


class Trial(NamedTuple):
    """One configuration of a sweep: its index, the swept values and the full config."""

    index: int
    values: dict
    config: Config


def spec_of(config: Config) -> dict:
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
            if name not in NUMERIC and name not in STRUCTURAL and name.count(".") != 1:
                raise ConfigError(source, f"sweep.{table}.{name}", "unknown hyperparameter; "
                                  f"use one of {', '.join([*NUMERIC, *STRUCTURAL])} or a "
                                  "config key as \"section.key\"")
    for name, values in spec.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            raise ConfigError(source, f"sweep.grid.{name}", "expected a non-empty list")
    if not spec.get("grid") and not spec.get("random"):
        raise ConfigError(source, "sweep", "needs a grid or a random table")
    for key in ("count", "seed", "trials_per_chunk"):
        value = spec.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(source, f"sweep.{key}", f"expected an int >= 0, got {value!r}")
    if spec.get("random") and spec.get("count", 0) < 1:
        raise ConfigError(source, "sweep.count", "random search needs count >= 1")
    if spec.get("pack_widths", "auto") not in ("auto", True, False):
        raise ConfigError(source, "sweep.pack_widths", 'expected "auto", true or false')
    if spec.get("metric", "auto") not in ("auto", "val_accuracy", "val_loss"):
        raise ConfigError(source, "sweep.metric", 'expected "val_accuracy" or "val_loss"')
    return spec


def _draw(name: str, dist: Any, rng: np.random.Generator, source: str) -> Any:
    key = f"sweep.random.{name}"
    if isinstance(dist, list):
        dist = {"distribution": "choice", "values": dist}
    if not isinstance(dist, dict):
        raise ConfigError(source, key, 'expected {distribution = "log_uniform", low = ..., '
                          "high = ...} or a list of choices")
    kind = dist.get("distribution")
    if kind == "choice":
        values = dist.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(source, key, "choice needs a non-empty values list")
        return values[int(rng.integers(len(values)))]
    low, high = dist.get("low"), dist.get("high")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) \
            or not low < high:
        raise ConfigError(source, key, f"needs numbers low < high, got {low!r}, {high!r}")
    if kind == "uniform":
        value = float(rng.uniform(low, high))
    elif kind == "log_uniform":
        if low <= 0:
            raise ConfigError(source, key, "log_uniform needs low > 0")
        value = float(math.exp(rng.uniform(math.log(low), math.log(high))))
    else:
        raise ConfigError(source, key, f"distribution {kind!r} is not uniform, log_uniform "
                          "or choice")
    known = hyperparameters.BY_NAME.get(name)
    return round(value) if known is not None and known.integer else value


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
    for name, value in values.items():
        if name in ("width", "depth"):
            continue
        section, key = (NUMERIC.get(name) or STRUCTURAL.get(name) or name).split(".")
        if section not in raw or section == "sweep":
            raise ConfigError(base.source, where, f"unknown section {section!r}")
        raw[section][key] = value
    try:
        return config_lib.from_dict(raw, base.source)
    except ConfigError as error:
        raise ConfigError(base.source, where, f"trial {values}: {error.key}: "
                          f"{str(error).split(': ', 2)[-1]}") from None


def trials(config: Config) -> tuple[Trial, ...]:
    """Every trial of the config's sweep, in a fixed order (grid product x random draws)."""
    spec = spec_of(config)
    grid = spec.get("grid", {})
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    rng = np.random.default_rng(spec.get("seed", 0))
    random = spec.get("random", {})
    result = []
    for point in points:
        for _ in range(spec.get("count", 1) if random else 1):
            values = {**point, **{name: _draw(name, dist, rng, config.source)
                                  for name, dist in random.items()}}
            result.append(Trial(len(result), values,
                                _apply(config, values, "sweep")))
    return tuple(result)
