"""The one table of hyperparameters a sweep can vary.

Each row names the config key a value lands on and how the compiled training program sees it:

* **traced**: a scalar leaf of the program's ``hparams`` (`jaxnn.train.default_hparams`), so
  trials that differ only in it share one compiled program, vmapped over the trial axis;
* **seed**: not traced, but it does not change the program either (it seeds each trial's keys);
* **structural**: it changes the compiled program (layer widths, batch size, optimizer kind),
  so trials that differ in it are planned into different programs.

`jaxnn.sweep` takes its names from here, `jaxnn.train` its traced leaves and their defaults
(the config's values). Making one more optax argument sweepable is a row here plus the line
of `jaxnn.optim` that passes it on.
"""

from __future__ import annotations

from typing import Any, NamedTuple

TRACED, SEED, STRUCTURAL = "traced", "seed", "structural"


class Hyperparameter(NamedTuple):
    """One sweepable value.

    Attributes:
      name: the name sweeps use (``[sweep] grid = {learning_rate = [...]}``).
      key: the config key it sets, ``"section.key"``; its default is that key's
        (`default`).
      kind: `TRACED`, `SEED` or `STRUCTURAL` (see the module docstring).
      dtype: "float", "int" (random draws are rounded) or "str". Traced values become
        arrays of the run's floating dtype.
    """

    name: str
    key: str
    kind: str
    dtype: str = "float"

    @property
    def integer(self) -> bool:
        """Whether its values are integers."""
        return self.dtype == "int"

    @property
    def default(self) -> Any:
        """The value a config that does not set it gets (the config key's default)."""
        import dataclasses

        from jaxnn import config

        section, key = self.key.split(".")
        fields = {f.name: f for f in dataclasses.fields(getattr(config.Config(), section))}
        field = fields[key]
        return field.default_factory() if field.default is dataclasses.MISSING else field.default


TABLE: tuple[Hyperparameter, ...] = (
    Hyperparameter("learning_rate", "optimizer.learning_rate", TRACED),
    Hyperparameter("momentum", "optimizer.momentum", TRACED),
    Hyperparameter("weight_decay", "optimizer.weight_decay", TRACED),
    Hyperparameter("b1", "optimizer.b1", TRACED),
    Hyperparameter("dropout", "model.dropout", TRACED),
    Hyperparameter("init_scale", "model.init_scale", TRACED),
    Hyperparameter("seed", "training.seed", SEED, "int"),
    Hyperparameter("width", "model.hidden", STRUCTURAL, "int"),
    Hyperparameter("depth", "model.hidden", STRUCTURAL, "int"),
    Hyperparameter("activation", "model.activation", STRUCTURAL, "str"),
    Hyperparameter("batch_size", "training.batch_size", STRUCTURAL, "int"),
    Hyperparameter("optimizer", "optimizer.name", STRUCTURAL, "str"),
    Hyperparameter("schedule", "schedule.name", STRUCTURAL, "str"),
)
BY_NAME = {h.name: h for h in TABLE}


def names(*kinds: str) -> tuple[str, ...]:
    """The names of the given kinds, in table order."""
    return tuple(h.name for h in TABLE if h.kind in kinds)


def config_value(config: Any, name: str) -> Any:
    """The value the config gives hyperparameter ``name`` (its config key)."""
    section, key = BY_NAME[name].key.split(".")
    return getattr(getattr(config, section), key)
