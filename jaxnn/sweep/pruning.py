"""Early stopping inside a sweep: successive halving and Hyperband brackets.

The trials of a batch train together, vmapped, up to a *rung* (an epoch count). There the
batch stops: in each bracket with a rung at that epoch, the trials that reached it are ranked
by the validation metric and only the best ``max(1, n // eta)`` continue, from their exact
training state; the others are *pruned* at that epoch. Survivors are regrouped into fewer or
smaller chunks, so a pruned trial costs nothing afterwards.

Successive halving has one bracket whose rungs are ``min_epochs * eta**k`` (below the last
epoch). Hyperband runs several brackets side by side, bracket ``b`` starting at
``min_epochs * eta**b``, and deals a batch's trials to them in turn (the bracket with no rung
trains its trials to the end): aggressive brackets try many trials cheaply, conservative
ones protect slow starters.

Optuna's pruners decide one trial at a time, as its values arrive (asynchronous halving); in
a vmapped batch all of a rung's values arrive together, so the decision here is the
synchronous one, over the whole bracket, in a few lines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

from jaxnn.config import ConfigError

METHODS = ("successive_halving", "hyperband")


PRUNING_KEYS = ("method", "eta", "min_epochs", "brackets")


class Pruning(NamedTuple):
    """A ``[sweep.pruning]`` table, validated.

    Attributes:
      method: "successive_halving" or "hyperband".
      eta: the halving rate: a rung keeps the best ``1 / eta`` of the trials reaching it.
      min_epochs: the first rung (of the first bracket).
      brackets: Hyperband's number of brackets (1 for successive halving).
      epochs: the trials' epochs (the end of every bracket).
    """

    method: str
    eta: int
    min_epochs: int
    brackets: int
    epochs: int

    def rungs(self, bracket: int) -> tuple[int, ...]:
        """The epochs at which ``bracket`` prunes, ascending, all before the last epoch."""
        first = self.min_epochs * self.eta ** bracket
        count = 0 if first >= self.epochs else math.ceil(
            math.log(self.epochs / first, self.eta) - 1e-9)
        return tuple(first * self.eta ** k for k in range(count))

    def check_prunes(self, together: int, source: str) -> None:
        """Refuses a sweep whose batches of ``together`` trials deal at most one trial to
        each bracket: a rung keeps at least one, so nothing would ever be pruned."""
        if -(-together // self.brackets) < 2:  # bracket 0, which has a rung, gets the most
            raise ConfigError(source, "sweep.pruning", f"prunes nothing: a batch of "
                              f"{together} trial(s) trained together deals at most one to each "
                              f"of its {self.brackets} bracket(s), and a rung keeps at least one; "
                              f"train at least {2 * self.brackets} together (sweep.batch)")

    def bracket_of(self, position: int) -> int:
        """The bracket of a batch's ``position``-th trial (dealt in turn)."""
        return position % self.brackets


def from_spec(table: object, epochs: int, source: str) -> Pruning | None:
    """The validated ``[sweep.pruning]`` table, or None when the sweep does not prune."""
    if table is None:
        return None
    where = "sweep.pruning"
    if not isinstance(table, Mapping):
        raise ConfigError(source, where, 'expected a table, e.g. {method = "successive_halving"'
                          ", eta = 3, min_epochs = 2}")
    for key in table:
        if key not in PRUNING_KEYS:
            raise ConfigError(source, f"{where}.{key}",
                              f"unknown key; [sweep.pruning] takes {', '.join(PRUNING_KEYS)}")
    method = table.get("method", "successive_halving")
    if method not in METHODS:
        raise ConfigError(source, f"{where}.method",
                          f"{method!r} is not one of {', '.join(METHODS)}")
    values = {}
    for key, low, default in (("eta", 2, 3), ("min_epochs", 1, 1), ("brackets", 1, None)):
        value = table.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < low):
            raise ConfigError(source, f"{where}.{key}", f"expected an int >= {low}, "
                              f"got {value!r}")
        values[key] = value
    eta, min_epochs = values["eta"], values["min_epochs"]
    if min_epochs >= epochs:
        raise ConfigError(source, f"{where}.min_epochs", f"{min_epochs} leaves no rung before "
                          f"the last epoch ({epochs})")
    # Hyperband's default: every bracket that still has a rung.
    most = 1 + max(b for b in range(epochs) if min_epochs * eta ** b < epochs)
    brackets = values["brackets"]
    if method == "successive_halving":
        if brackets not in (None, 1):
            raise ConfigError(source, f"{where}.brackets", "successive halving has one "
                              'bracket; use method = "hyperband" for more')
        brackets = 1
    elif brackets is None:
        brackets = most + 1  # and one bracket that trains every trial to the end
    elif brackets > most + 1:  # brackets past that would have no rung either: nothing pruned
        raise ConfigError(source, f"{where}.brackets", f"{brackets} brackets, but with eta = "
                          f"{eta} and min_epochs = {min_epochs} only {most} have a rung before "
                          f"epoch {epochs}; at most {most + 1} (the last trains to the end)")
    return Pruning(method, eta, min_epochs, brackets, epochs)


def survivors(values: Mapping[int, float | None], eta: int, higher: bool) -> set[int]:
    """The trials that continue from a rung: the best ``max(1, len(values) // eta)`` of those
    that reached it (``values``: trial index -> metric there; None, a diverged trial, never
    continues). Ties go to the lower index, so a rerun decides the same."""
    ranked = sorted((i for i, v in values.items() if v is not None),
                    key=lambda i: (-values[i] if higher else values[i], i))
    return set(ranked[: max(1, len(values) // eta)])
