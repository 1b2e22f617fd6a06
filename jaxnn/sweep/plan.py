"""Planning: trials grouped by compiled structure into programs and memory-sized chunks,
every trial's config checked against the data first."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from jaxnn import config as config_lib
from jaxnn import host, models
from jaxnn._table import counted
from jaxnn.config import Config, ConfigError
from jaxnn.sweep import channels
from jaxnn.sweep.cost import (
    CPU_SHARDING_ABOVE_SECONDS,
    program_step_flops,
    step_flops,
    training_seconds,
)
from jaxnn.sweep.packing import width_runs
from jaxnn.sweep.pruning import Pruning, from_spec
from jaxnn.sweep.spec import NUMERIC, Distribution, Trial, make_trial, space_of, spec_of, trials
from jaxnn.train import PARAM_COPIES


class Group(NamedTuple):
    """Trials that share one compiled program.

    Attributes:
      trials: the trials, in sweep order.
      config: the program's config (hidden widths padded to ``packed_width``, or packed
        layers' features to the group's widest, when packed).
      packed_width: the padded hidden width when MLP widths are packed, else None.
      chunks: the trial indices run together, one chunk per call of the program.
      packed_layers: the ``model.layers`` whose features are packed (`channels`), or ().
    """

    trials: tuple[Trial, ...]
    config: Config
    packed_width: int | None
    chunks: tuple[tuple[int, ...], ...]
    packed_layers: tuple[int, ...] = ()


class Plan(NamedTuple):
    """What a sweep (or one batch of an adaptive search) will run.

    Attributes:
      trials: the trials (a grid search's all; an adaptive search's batch, or none before
        the sampler asks).
      groups: the trials grouped into compiled programs and chunks.
      metric: the ranking metric, "val_accuracy" or "val_loss".
      bytes_per_trial: device memory of one trial, estimated (the largest program's).
      devices: the devices the trial axis is sharded over.
      config: the sweep's config.
      spec: the validated ``[sweep]`` section (`jaxnn.sweep.spec.spec_of`).
      space: the search space, name -> `jaxnn.sweep.spec.Distribution`.
      search: "grid", "random", "tpe", "cmaes" or "gp".
      pruning: the early-stopping rule, or None.
      budget: the device memory (bytes) its chunks were sized to.
    """

    trials: tuple[Trial, ...]
    groups: tuple[Group, ...]
    metric: str
    bytes_per_trial: int
    devices: int
    config: Config
    spec: dict
    space: dict
    search: str
    pruning: Pruning | None
    budget: int

    def describe(self) -> str:
        """A printable account of the plan (`jaxnn sweep --plan`)."""
        prune = self.pruning
        pruned = "" if prune is None else (
            f"; {prune.method.replace('_', ' ')} (eta {prune.eta}), rungs at epochs "
            + "; ".join(", ".join(map(str, prune.rungs(b))) or "none"
                        for b in range(prune.brackets)))
        if self.search != "grid" and not self.trials:
            space = ", ".join(f"{name} ({d.kind}{', log' if d.log else ''})"
                              for name, d in self.space.items())
            return (f'search "{self.search}": {self.spec["trials"]} trials asked in batches of '
                    f'{self.spec["batch"]}, each batch trained together; space: {space}; '
                    f"ranking by {self.metric}{pruned}")
        lines = [f"{len(self.trials)} trials in {counted(len(self.groups), 'compiled program')} "
                 f"({self.devices} device(s)); ranking by {self.metric}{pruned}"]
        for number, group in enumerate(self.groups):
            cfg = group.config
            widths = sorted({t.config.model.hidden for t in group.trials})
            structure = (f"hidden={list(cfg.model.hidden)}, {cfg.model.activation}"
                         if not cfg.model.layers else f"{len(cfg.model.layers)} layers")
            packed = f", widths {[list(w) for w in widths]} packed to {group.packed_width}" \
                if group.packed_width else ""
            if group.packed_layers:
                own = sorted({channels.features(t.config, group.packed_layers)
                              for t in group.trials})
                packed = (f", features of model.layers {list(group.packed_layers)} "
                          f"{[list(w) for w in own]} packed to "
                          f"{list(channels.features(cfg, group.packed_layers))}")
            lines.append(
                f"  program {number}: {len(group.trials)} trials in {len(group.chunks)} "
                f"chunk(s) of <= {max(len(c) for c in group.chunks)}; {structure}, "
                f"{cfg.optimizer.name}/{cfg.schedule.name}, batch {cfg.training.batch_size}"
                f"{packed}")
        per_chunk = max(len(c) for g in self.groups for c in g.chunks)
        lines.append(f"memory: ~{self.bytes_per_trial / 2**20:.1f} MiB per trial, "
                     f"~{per_chunk * self.bytes_per_trial / 2**20:.1f} MiB per chunk")
        return "\n".join(lines)


def structure(cfg: Config, pack: bool, packed_layers: Sequence[int] = ()) -> str:
    """The part of a config that shapes the compiled program (numeric values neutralised;
    with ``pack``, the MLP's widths; the features of ``packed_layers``)."""
    raw = config_lib.to_dict(cfg)
    for section_key in NUMERIC.values():
        section, key = section_key.split(".")
        raw[section][key] = None
    raw["model"]["dropout"] = cfg.model.dropout > 0  # Dropout layers exist or not.
    if pack:
        raw["model"]["hidden"] = len(cfg.model.hidden)  # depth only
    channels.blanked(raw["model"], packed_layers)
    return json.dumps(raw, sort_keys=True, default=str)


def packable(cfg: Config) -> bool:
    return not cfg.model.layers and cfg.model.dropout == 0 and len(cfg.model.hidden) > 0


def bytes_per_trial(cfg: Config, dataset, own_seed: bool) -> int:
    """Device memory one trial of the program ``cfg`` needs, roughly; ``own_seed``: the
    trial has its own minibatch order (the seed is swept), not one shared by its chunk."""
    net = models.build(cfg.model, dataset.output_size)
    from jaxnn.summary import rows

    table = [row for row in rows(net, (None, *dataset.input_shape)) if row.leaf]
    itemsize = np.dtype(cfg.training.precision).itemsize
    params = sum(r.params for r in table)
    activations = cfg.training.batch_size * sum(r.held_per_example for r in table)
    own = itemsize * (PARAM_COPIES * params + 3 * activations) + 8 * 8 * cfg.training.epochs
    return own + (order_bytes(cfg, dataset) if own_seed else 0)


def order_bytes(cfg: Config, dataset) -> int:
    """The minibatch order of every epoch (int32 indices): a trial's own when it sweeps the
    seed, otherwise one shared by its chunk."""
    batches = len(dataset.x_train) // cfg.training.batch_size * cfg.training.batch_size
    return 4 * cfg.training.epochs * batches


def check_trials(config: Config, all_trials, dataset) -> None:
    """Every trial's config against the data (batch size, layer shapes, loss), each distinct
    structure once, so that no error waits until other trials have trained."""
    from jaxnn import run

    seen = set()
    images = models.uses_images(config.model)
    for trial in all_trials:
        key = structure(trial.config, pack=False)
        if key in seen:  # its floats alone may differ from the structure's first trial's
            checks = run.check_precision
        else:
            seen.add(key)
            checks = functools.partial(run.check_against_data, dataset=dataset)
        try:
            checks(trial.config)
        except ConfigError as error:
            # A shape error from the other layout than the network needs:
            if error.key.startswith("model.layers") and \
                    models.uses_images(trial.config.model) != images:
                layouts = ("images (examples in their shape)", "flat rows")[::1 if images else -1]
                raise ConfigError(config.source, "sweep", (
                    f"trial {trial.values}: its network takes {layouts[1]}, and the sweep's "
                    f"data are {layouts[0]} (prepared once, for the config's own network); "
                    "sweep networks of each kind apart")) from None
            raise ConfigError(config.source, "sweep", f"trial {trial.values}: {error.key}: "
                              f"{str(error).split(': ', 2)[-1]}") from None


# An int range of at most this many values is checked value by value (a layer argument such
# as GroupNorm's num_groups may fail inside its range: 4 groups of 6 channels).
EVERY_INT_UP_TO = 64


def corners(space: dict[str, Distribution]) -> list[dict]:
    """Values that an adaptive search may ask for, putting each swept name at each of its
    ends (a range's bounds, every choice, every value of an int range of at most
    `EVERY_INT_UP_TO`) and the others at their first: checked before any trial trains, so
    that a bad range fails at once rather than when a sampler reaches it."""
    def ends(distribution: Distribution) -> list:
        if distribution.kind == "choice":
            return list(distribution.values)
        if distribution.kind == "int" and distribution.high - distribution.low < \
                EVERY_INT_UP_TO:
            return list(range(int(distribution.low), int(distribution.high) + 1))
        return [distribution.low, distribution.high]

    first = {name: ends(distribution)[0] for name, distribution in space.items()}
    return [{**first, name: value} for name, distribution in space.items()
            for value in ends(distribution)]


def bucket(width: int) -> int:
    """The padded width of an adaptive search's packed program: the next of 2**k and
    1.5 * 2**k, so that the programs of later batches are reused (at most 1.5x the units)."""
    size = 1
    while size < width:
        size = size * 3 // 2 if size >= 2 and size & (size - 1) == 0 else (
            size + 1 if size < 2 else 2 ** size.bit_length())
    return size


def _pruning(config: Config, spec: dict, all_trials, dataset,
             together: int | None) -> Pruning | None:
    """The validated ``[sweep.pruning]``; pruning needs validation data, one epoch count and
    (``together``: the trials a batch trains together, None for a batch's own plan) trials
    enough to rank."""
    if "pruning" not in spec:
        return None
    epochs = {t.config.training.epochs for t in all_trials} or {config.training.epochs}
    if len(epochs) > 1:
        raise ConfigError(config.source, "sweep.pruning", "trials of a pruned sweep train "
                          f"the same epochs, got {sorted(epochs)}")
    if len(dataset.x_val) == 0:
        raise ConfigError(config.source, "sweep.pruning", "pruning ranks trials on the "
                          "validation split; data.validation_fraction is 0")
    pruning = from_spec(spec["pruning"], epochs.pop(), config.source)
    if together is not None:
        pruning.check_prunes(together, config.source)
    return pruning


def make_plan(config: Config, dataset, batch: Sequence[Trial] | None = None,
              budget: int | None = None) -> Plan:
    """Groups the sweep's trials into compiled programs and chunks.

    Args:
      config: the sweep config.
      dataset: the prepared data (`jaxnn.run.prepare`), for shapes.
      batch: the trials of one batch of an adaptive search; None: a grid search's trials
        (or, for an adaptive search, the plan before any trial is asked).
      budget: the device memory (bytes) a chunk may hold; None: this host's
        (`jaxnn.host.memory_budget`). A distributed sweep gives the smallest host's.
    """
    budget = host.memory_budget() if budget is None else budget
    spec = spec_of(config)
    space = space_of(spec, config.source)
    all_trials = tuple(batch) if batch is not None else trials(config)
    _check_search(config, spec, space, all_trials, dataset, before_asking=batch is None)
    prune = _pruning(config, spec, all_trials, dataset,
                     None if batch is not None else spec.get("batch", len(all_trials)))
    metric = _metric(config, spec, dataset)
    if not all_trials:  # an adaptive search's batches are sharded as the whole sweep is
        devices = min(jax.device_count(), spec["batch"]) if _split_cpu() else jax.device_count()
        return Plan((), (), metric, 0, devices, config, spec, space, spec["search"], prune,
                    budget)
    steps = config.training.epochs * max(1, len(dataset.x_train) // config.training.batch_size)
    groups, sizes = [], []
    for part, packed_layers in _parts(all_trials, spec, space, dataset, steps):
        group, per_trial = _group(config, spec, part, packed_layers, dataset, budget)
        groups.append(group)
        sizes.append(per_trial)
    devices = trial_devices(groups, steps, dataset, spec.get("batch"))
    return Plan(all_trials, tuple(groups), metric, max(sizes), devices, config, spec, space,
                spec["search"], prune, budget)


def _check_search(config: Config, spec: dict, space: dict, all_trials, dataset,
                  before_asking: bool) -> None:
    """The sampler, and every trial's config against the data; before an adaptive search
    asks for any trial, the corners of its space stand for the trials to come."""
    if spec["search"] != "grid":
        from jaxnn.sweep.search import check_sampler

        check_sampler(spec["search"], config.source)
    check_trials(config, all_trials, dataset)
    if spec["search"] != "grid" and before_asking:
        check_trials(config, [make_trial(-1, values, config) for values in corners(space)],
                     dataset)


def _metric(config: Config, spec: dict, dataset) -> str:
    """The ranking metric: ``sweep.metric``, "auto" meaning the task's."""
    if len(dataset.x_val) == 0:
        raise ConfigError(config.source, "data.validation_fraction", (
            "a sweep ranks its trials on the validation split, and "
            f"{config.data.validation_fraction} of the {len(dataset.x_train)} examples "
            "left after the test split is none"))
    metric = spec.get("metric", "auto")
    if metric == "auto":
        metric = "val_accuracy" if dataset.num_classes else "val_loss"
    if metric == "val_accuracy" and not dataset.num_classes:  # else no value to rank by
        raise ConfigError(config.source, "sweep.metric", "val_accuracy needs a classification "
                          "task; this data is a regression (use val_loss)")
    return metric


def _parts(all_trials, spec: dict, space: dict, dataset, steps: int):
    """The trials split into programs: by structure, then into runs of widths (or of
    packed channel counts) as the cost model says; yields ``(trials, packed_layers)``."""
    backend = jax.default_backend()
    in_features = math.prod(dataset.input_shape)
    pack_setting = spec.get("pack_widths", "auto")
    swept_layers = channels.swept_layers(list(space))

    def packed_layers_of(cfg):  # the layers whose channels this sweep packs, or ()
        packs = pack_setting is not False and channels.packable(cfg, swept_layers)
        return swept_layers if packs else ()

    by_structure: dict[str, list[Trial]] = {}
    for trial in all_trials:
        pack = pack_setting is not False and packable(trial.config)
        by_structure.setdefault(structure(trial.config, pack, packed_layers_of(trial.config)),
                                []).append(trial)
    for members in by_structure.values():
        first = members[0].config
        packed_layers = packed_layers_of(first)
        if packable(first) and pack_setting is not False:
            parts = width_runs(members, lambda t: t.config.model.hidden,
                               lambda w, c=first: step_flops(c, w, in_features,
                                                             dataset.output_size),
                               steps, backend, pack_setting, first)
        elif packed_layers:
            parts = width_runs(members, lambda t: channels.features(t.config, swept_layers),
                               channels.step_flops_of(first, swept_layers, dataset.input_shape,
                                                      dataset.output_size),
                               steps, backend, pack_setting, first)
        else:  # The structure key kept the widths apart: one width per group already.
            parts = [members]
        for part in parts:
            yield part, packed_layers


def _group(config: Config, spec: dict, part: Sequence[Trial], packed_layers, dataset,
           budget: int):
    """One program's `Group` (its config padded to the widest of its trials, its chunks
    sized to the memory ``budget``) and the bytes one of its trials needs."""
    devices = jax.device_count()
    cfg, packed_width, part_packed = _program_config(spec, part, packed_layers)
    own_seed = len({t.config.training.seed for t in part}) > 1
    per_trial = bytes_per_trial(cfg, dataset, own_seed)
    shared = 0 if own_seed else order_bytes(cfg, dataset)
    if per_trial + shared > budget:
        raise ConfigError(config.source, "sweep", (
            f"one trial of {part[0].values} needs ~{(per_trial + shared) / 2**30:.1f} "
            f"GiB (of which the minibatch order of {cfg.training.epochs} epochs "
            f"~{order_bytes(cfg, dataset) / 2**30:.1f} GiB), more than the "
            f"~{budget / 2**30:.1f} GiB budget (half the device's memory)"))
    cap = spec.get("trials_per_chunk") or max(
        1, (budget - shared) // per_trial)
    cap = max(devices, cap // devices * devices)
    count = math.ceil(len(part) / cap)
    size = math.ceil(len(part) / count)
    chunks = tuple(tuple(t.index for t in part[i:i + size])
                   for i in range(0, len(part), size))
    return Group(tuple(part), cfg, packed_width, chunks, part_packed), per_trial


def _program_config(spec: dict, part: Sequence[Trial], packed_layers):
    """The config a program of ``part`` compiles: its hidden widths (or the packed layers'
    features) the widest of its trials', bucketed for an adaptive search, whose later
    batches reuse the program; with the packed width (or None) and the packed layers."""
    pack_setting = spec.get("pack_widths", "auto")
    part_widths = {t.config.model.hidden for t in part}
    packed_width = (max(max(w) for w in part_widths) if len(part_widths) > 1
                    else None)
    adaptive = spec["search"] != "grid"
    if adaptive and pack_setting is not False and packable(part[0].config):
        packed_width = bucket(max(max(w) for w in part_widths))
    cfg = part[0].config
    if packed_width:
        cfg = cfg.replace(model={"hidden": (packed_width,) * len(cfg.model.hidden)})
    own = {channels.features(t.config, packed_layers) for t in part}
    part_packed = packed_layers if len(own) > 1 or adaptive else ()
    if part_packed:
        widest = [max(column) for column in zip(*own, strict=True)]
        cfg = channels.with_features(cfg, part_packed,
                                     [bucket(w) if adaptive else w for w in widest])
    return cfg, packed_width, part_packed


def trial_devices(groups: Sequence[Group], steps: int, dataset,
                  batch: int | None = None) -> int:
    """The devices a sweep shards its trials over: every device, except on a CPU that
    `jaxnn.host.split_cpu` split (one process), where a sweep whose modelled training is
    under `CPU_SHARDING_ABOVE_SECONDS` stays on one: sharding would cost it more compiling
    than it saves. Chunk sizes stay multiples of every device either way.

    On a split CPU a sweep shards over no more devices than its largest program has trials
    (or a grid's ``batch``, which trains at a time): more would only pad its chunks
    (``--cpu-devices 1000`` with 32 trials trained 1000 rows, 130 s against 6)."""
    devices = jax.device_count()
    if not _split_cpu():
        return devices
    devices = min(devices, max(len(group.trials) for group in groups), batch or devices)
    seconds = 0.0
    for group in groups:
        flops = program_step_flops(group.config, dataset.input_shape, dataset.output_size)
        if flops is None:  # unknown: assume long
            return devices
        seconds += training_seconds(len(group.trials), steps, flops, "cpu")
    return devices if seconds > CPU_SHARDING_ABOVE_SECONDS else 1


def _split_cpu() -> bool:
    """Whether this one process runs on a CPU that `jaxnn.host.split_cpu` split."""
    return bool(host.split_count()) and jax.default_backend() == "cpu" \
        and jax.process_count() == 1
