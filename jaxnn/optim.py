"""Optimizers and schedules from optax, named in configs, with numbers as array leaves.

The optimizer is built inside the traced training function from ``hparams`` (arrays), so one
compiled program serves every learning rate, momentum and weight decay, and ``jax.vmap``
over ``hparams`` sweeps them. ``optax.inject_hyperparams`` keeps the current values in the
optimizer state, where checkpoints and logs can read them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnn.config import OptimizerConfig, ScheduleConfig


def boundary_step(epochs: float, steps_per_epoch: int) -> int:
    """The step from which a step schedule's boundary at ``epochs`` (fractional too) scales
    the rate, ``round(epochs * steps_per_epoch)``: for a whole epoch ``e`` the first step of
    epoch ``e + 1``, for 0 the first step (as a step count >= 1 it left the first step at the
    full rate)."""
    return round(epochs * steps_per_epoch)


def unit_schedule(cfg: ScheduleConfig, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    """The schedule's shape with peak 1 (optax); epochs become steps."""
    total = max(1, steps_per_epoch * epochs)
    if cfg.name == "constant":
        return optax.constant_schedule(1.0)
    if cfg.name == "exponential":  # decay_rate per decay_epochs, fractional ones too (they
        # were rounded to whole steps: 1.3 epochs of 4 steps decayed every 1.25 epochs)
        return optax.exponential_decay(1.0, cfg.decay_epochs * steps_per_epoch, cfg.decay_rate)
    if cfg.name == "step":
        scales = {boundary_step(b, steps_per_epoch): s
                  for b, s in zip(cfg.boundaries, cfg.scales, strict=True)}
        return optax.piecewise_constant_schedule(1.0, scales)
    if cfg.name == "cosine":
        return optax.cosine_decay_schedule(1.0, total, alpha=cfg.final_fraction)
    if cfg.name == "warmup_cosine":
        # Whole steps; 0: none (at least one step, it made warmup_epochs = 0 a step at 0).
        warmup = min(boundary_step(cfg.warmup_epochs, steps_per_epoch), total - 1)
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total,
                                                  end_value=cfg.final_fraction)
    raise ValueError(f"unknown schedule {cfg.name!r}")


def schedule(
    cfg: ScheduleConfig, peak: jax.Array, steps_per_epoch: int, epochs: int
) -> optax.Schedule:
    """The learning-rate schedule: ``peak`` (an array, possibly traced) times the unit shape.

    Scaling a unit schedule keeps optax's schedule factories free of traced arguments
    (some branch on their peak value in Python).
    """
    unit = unit_schedule(cfg, steps_per_epoch, epochs)
    # A float step count keeps optax's int32-with-float arithmetic clear of strict promotion.
    return lambda count: peak * jnp.asarray(unit(jnp.asarray(count, peak.dtype)), peak.dtype)


# The [optimizer] keys each optimizer reads besides learning_rate and weight_decay (which
# all read); a sweep of a key none of its optimizers reads is refused (`jaxnn.sweep.spec`).
KEYS_READ = {"sgd": (), "momentum": ("momentum",), "nesterov": ("momentum",),
             "adam": ("b1", "b2", "eps"), "adamw": ("b1", "b2", "eps"),
             "rmsprop": ("decay", "eps", "momentum")}
# The [schedule] keys each schedule reads (`unit_schedule`).
SCHEDULE_KEYS_READ = {"constant": (), "exponential": ("decay_rate", "decay_epochs"),
                      "step": ("boundaries", "scales"), "cosine": ("final_fraction",),
                      "warmup_cosine": ("warmup_epochs", "final_fraction")}


def unread_keys(opt: OptimizerConfig, sched: ScheduleConfig) -> list[tuple[str, Any, str]]:
    """The ``[optimizer]`` and ``[schedule]`` keys set away from their defaults that the
    named optimizer and schedule do not read: ``(key, value, the names that read it)``."""
    found = []
    for section, cfg, default, read in (
            ("optimizer", opt, OptimizerConfig(), KEYS_READ),
            ("schedule", sched, ScheduleConfig(), SCHEDULE_KEYS_READ)):
        for key in sorted({k for keys in read.values() for k in keys}):
            value = getattr(cfg, key)
            if key not in read.get(cfg.name, (key,)) and value != getattr(default, key):
                readers = ", ".join(name for name, keys in read.items() if key in keys)
                found.append((f"{section}.{key}", value, readers))
    return found


def read_only(opt: OptimizerConfig, sched: ScheduleConfig
              ) -> tuple[OptimizerConfig, ScheduleConfig]:
    """``opt`` and ``sched`` with the keys they do not read (`unread_keys`) at their
    defaults: what a trial of a sweep over optimizers trained, written as a config a new run
    takes."""
    changes: dict[str, dict] = {"optimizer": {}, "schedule": {}}
    for key, _, _ in unread_keys(opt, sched):
        section, name = key.split(".")
        default = OptimizerConfig() if section == "optimizer" else ScheduleConfig()
        changes[section][name] = getattr(default, name)
    return (dataclasses.replace(opt, **changes["optimizer"]),
            dataclasses.replace(sched, **changes["schedule"]))


def optimizer(
    cfg: OptimizerConfig,
    sched: ScheduleConfig,
    hparams: Mapping[str, jax.Array],
    steps_per_epoch: int,
    epochs: int,
) -> optax.GradientTransformation:
    """The optax optimizer a config names, with ``hparams``' learning rate, momentum and
    weight decay (arrays, possibly traced)."""
    lr = schedule(sched, hparams["learning_rate"], steps_per_epoch, epochs)
    momentum, decay = hparams["momentum"], hparams["weight_decay"]
    name = cfg.name
    if name == "adamw":
        return optax.inject_hyperparams(optax.adamw)(
            learning_rate=lr, b1=hparams["b1"], b2=cfg.b2, eps=cfg.eps, weight_decay=decay)
    if name in ("sgd", "momentum", "nesterov"):
        base = optax.inject_hyperparams(optax.sgd, static_args=("nesterov",))(
            learning_rate=lr, momentum=None if name == "sgd" else momentum,
            nesterov=name == "nesterov")
    elif name == "adam":
        base = optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=hparams["b1"], b2=cfg.b2,
                                                    eps=cfg.eps)
    elif name == "rmsprop":
        base = optax.inject_hyperparams(optax.rmsprop)(learning_rate=lr, decay=cfg.decay,
                                                       eps=cfg.eps, momentum=momentum)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    # L2 regularisation: weight_decay * w added to the gradient before the update rule.
    return optax.chain(optax.add_decayed_weights(decay), base)
