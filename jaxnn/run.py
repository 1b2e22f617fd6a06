"""`train_and_evaluate(config, workdir)`: one training run with its run directory.

The host drives the compiled program (`jaxnn.train`) in chunks of epochs. Between chunks it
updates the progress bar, appends ``metrics.jsonl`` (one line per epoch), checks for a
non-finite loss, applies early stopping and writes ``checkpoint.npz`` atomically. At the end
it writes ``summary.json`` and the ``loss.png`` / ``accuracy.png`` curves.

A run directory holds:
  config.toml     the resolved config (runnable with ``jaxnn train``)
  metrics.jsonl   one JSON object per epoch
  checkpoint.npz  the last good training state (params, optimizer state, key, epoch)
  summary.json    test loss/accuracy, wall time, steps/s, compile time, status
  loss.png, accuracy.png
  .lock           held (flock) by the process writing the directory (`jaxnn.rundir`)

Resuming checks everything (the checkpoint's leaves and ranges, the directory) before it
rewrites anything; a run whose loss turns non-finite keeps its last finite epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import checkpoint, host, jsonl, losses, models, optim, plots, rundir
from jaxnn import config as config_lib
from jaxnn import data as data_lib
from jaxnn.compile_options import compile_lowered, compiler_options
from jaxnn.config import Config, ConfigError
from jaxnn.rundir import RunError  # re-exported: jaxnn.run.RunError
from jaxnn.train import PARAM_COPIES, Trainer, TrainState, default_hparams, make_train

MAX_STEPS = 2**31 - 1  # the step and epoch counters are int32
CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
# What a summary says of the session that trained; a resume that trains nothing keeps them.
_SESSION = ("steps_per_s", "compile_time_s", "train_time_s", "wall_time_s", "devices")
CONFIG = "config.toml"



def enable_precision(config: Config) -> None:
    """Turns on 64-bit JAX when the config asks for float64 (before any array is made)."""
    if config.training.precision == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


def prepare(config: Config) -> data_lib.Dataset:
    """Loads the data in the network's layout and checks the network's shapes against it.

    Everything a config can get wrong is caught here, before compilation.

    Raises:
      ConfigError: naming the file and key (``data.path``, ``model.layers``, ...).
    """
    try:
        dataset = data_lib.load(config)
    except data_lib.DataError as error:
        raise ConfigError(config.source, "data", str(error)) from None
    if not models.uses_images(config.model):
        dataset = dataset.flat
    dataset = dataset.astype(np.dtype(config.training.precision))
    check_against_data(config, dataset)
    return dataset


# Losses whose targets are probabilities.
_PROBABILITY_TARGETS = ("sigmoid_binary_cross_entropy", "binary_cross_entropy")


def check_precision(config: Config) -> None:
    """Refuses a float that the run's precision cannot hold: beyond its range (a learning
    rate of 1e300 in float32 was inf: a compile, then "diverged") or so small it rounds to
    0 (1e-50: a run that learnt nothing, exit 0; a BatchNorm epsilon of 1e-60, a division
    by 0).

    Raises:
      ConfigError: naming the key.
    """
    dtype = np.dtype(config.training.precision)
    info = np.finfo(dtype)
    for key, value in _floats(config):
        with np.errstate(over="ignore", under="ignore"):
            held = dtype.type(value)
        if not np.isfinite(held) or (held == 0) != (value == 0):
            raise ConfigError(config.source, key, (
                f"{value!r} is {'beyond' if not np.isfinite(held) else 'below'} what "
                f"{dtype.name} (training.precision) holds: magnitudes "
                f"{info.smallest_subnormal:.3g} to {info.max:.3g}, or 0"))


def _floats(config: Config):
    """``(key, value)`` of every float a run's program takes from the config."""
    from jaxnn import hyperparameters

    for row in hyperparameters.TABLE:
        value = hyperparameters.config_value(config, row.name)
        if row.kind == hyperparameters.TRACED and isinstance(value, float):
            yield row.key, value
    for section, keys in (("optimizer", ("b2", "eps", "decay")),
                          ("schedule", ("decay_rate", "final_fraction"))):
        for key in keys:
            yield f"{section}.{key}", float(getattr(getattr(config, section), key))
    for index, scale in enumerate(config.schedule.scales):
        yield f"schedule.scales[{index}]", float(scale)
    for index, spec in enumerate(config.model.layers):
        yield from _layer_floats(spec, f"model.layers[{index}]")


def _layer_floats(spec: dict, path: str):
    for key, value in spec.items():
        where = f"{path}.{key}"
        if isinstance(value, float):
            yield where, value
        elif isinstance(value, dict):  # a shortcut's layer
            yield from _layer_floats(value, where)
        elif isinstance(value, list | tuple):  # nested layers
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    yield from _layer_floats(item, f"{where}[{index}]")


def check_against_data(config: Config, dataset: data_lib.Dataset) -> None:
    """What a config can get wrong about its data: the loss, the batch size, the layers'
    shapes, the steps its counters hold and the memory its params need (a sweep checks
    each of its trials' configs with this).

    Raises:
      ConfigError: naming the file and key.
    """
    check_precision(config)
    if config.model.loss not in losses.LOSSES:
        raise ConfigError(config.source, "model.loss", f"unknown loss {config.model.loss!r}; "
                          f"known: {', '.join(losses.LOSSES)}")
    if config.model.loss == "softmax_cross_entropy" and not dataset.num_classes:
        raise ConfigError(config.source, "model.loss", (
            "softmax_cross_entropy needs class labels, and these data are a regression task "
            '(data.task); use "mse"'))
    if config.model.loss != "softmax_cross_entropy" and dataset.num_classes:
        # The other losses compare outputs with targets of their shape: class labels are not.
        raise ConfigError(config.source, "model.loss", (
            f"{config.model.loss} needs targets shaped like the outputs, and these data are "
            'class labels (data.task = "classification"); use "softmax_cross_entropy"'))
    if config.model.loss in _PROBABILITY_TARGETS:
        for split in ("train", "val", "test"):
            targets = np.asarray(getattr(dataset, f"y_{split}")).reshape(-1)
            outside = (targets < 0) | (targets > 1)
            if outside.any():  # a cross-entropy of them means nothing (it went negative)
                raise ConfigError(config.source, "model.loss", (
                    f"{config.model.loss} needs targets in [0, 1] (probabilities), and the "
                    f"{split} split holds {targets[int(np.argmax(outside))].item():.6g}; use "
                    '"mse" for real-valued targets'))
    if config.training.patience and len(dataset.x_val) == 0:  # it stopped at epoch patience
        raise ConfigError(config.source, "training.patience", (
            "early stopping watches the validation loss, and there is no validation split "
            f"(data.validation_fraction = {config.data.validation_fraction} of "
            f"{len(dataset.x_train) + len(dataset.x_test)} examples)"))
    if config.training.batch_size > len(dataset.x_train):
        raise ConfigError(config.source, "training.batch_size",
                          f"{config.training.batch_size} exceeds the {len(dataset.x_train)} "
                          "training examples")
    per_epoch = len(dataset.x_train) // config.training.batch_size
    sched = config.schedule
    # The schedule's epochs become steps too (as Python ints, which overflowed JAX's int32).
    for key, epochs in (("training.epochs", (config.training.epochs,)),
                        ("schedule.boundaries", sched.boundaries),
                        ("schedule.decay_epochs", (sched.decay_epochs,)),
                        ("schedule.warmup_epochs", (sched.warmup_epochs,))):
        for value in epochs:
            if value * per_epoch > MAX_STEPS:
                raise ConfigError(config.source, key, (
                    f"{value} epochs of {per_epoch} steps are more steps than a run counts "
                    f"({MAX_STEPS:,}: int32 counters)"))
    steps = [optim.boundary_step(b, per_epoch) for b in sched.boundaries]
    if len(set(steps)) < len(steps):  # optax would keep one of their scales
        raise ConfigError(config.source, "schedule.boundaries", (
            f"{list(sched.boundaries)} epochs of {per_epoch} steps fall on the same steps "
            f"{steps}; give boundaries at least one step apart"))
    if (sched.name == "warmup_cosine" and sched.warmup_epochs > 0
            and optim.boundary_step(sched.warmup_epochs, per_epoch) == 0):
        raise ConfigError(config.source, "schedule.warmup_epochs", (
            f"{sched.warmup_epochs} epochs of {per_epoch} steps round to no warmup step; "
            f"give at least {1 / per_epoch:.3g} (one step), or 0 for none"))
    net, params = models.check(config, dataset.input_shape, dataset.output_size)
    if config.training.batch_size == 1:
        _check_batch_statistics(config, net, dataset.input_shape)
    _check_memory(config, net, params, dataset.input_shape)


def _check_memory(config: Config, net, params, input_shape) -> None:
    """Refuses params (with their gradients and optimizer state) or a batch's activations
    beyond the device's memory, which hung allocating or, past int32 sizes, failed in a
    traceback (a padding of 10,000); a sweep's planner also checks its chunks'."""
    from jaxnn.summary import rows

    itemsize = np.dtype(config.training.precision).itemsize
    count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
    need = PARAM_COPIES * count * itemsize
    budget = host.memory_budget()
    over = f"over the ~{budget / 2**30:.1f} GiB budget (half the device's memory)"
    if need > budget:
        raise ConfigError(config.source, "model", (
            f"{count:,} params need ~{need / 2**30:.1f} GiB with their gradients and "
            f"optimizer state, {over}"))
    table = [row for row in rows(net, (None, *input_shape)) if row.leaf]
    batch = config.training.batch_size
    # Each layer's output is kept for the backward pass, with its gradient (the planner's 3).
    activations = 3 * batch * itemsize * sum(row.held_per_example for row in table)
    if need + activations > budget:
        widest = max(table, key=lambda row: row.held_per_example)
        raise ConfigError(config.source, "model", (
            f"a batch of {batch} needs ~{activations / 2**30:.1f} GiB of activations (and "
            f"~{need / 2**30:.1f} GiB for the params), {over}; the largest output, of layer "
            f"{widest.index} ({widest.name}), is {widest.output_shape}"))


def _check_batch_statistics(config: Config, net, input_shape) -> None:
    """Refuses a batch of one where a BatchNorm would normalize one value per channel in
    training (no spatial axes, or 1x1): its batch variance is 0, every input becomes its
    bias, and the run learns nothing (PyTorch refuses it too)."""
    if not any(spec.get("type") == "BatchNorm" for spec in models.layer_specs(
            config.model.layers)):
        return
    from jaxnn.summary import rows

    for row in rows(net, (None, *input_shape)):
        if row.leaf and row.name.startswith("BatchNorm") and \
                math.prod(row.output_shape[1:-1]) == 1:
            raise ConfigError(config.source, "training.batch_size", (
                f"1 gives layer {row.index} ({row.name}) one value per channel to normalize "
                f"in training (its input {row.output_shape}): every output would be its "
                "bias; use batches of 2 or more"))


def chunk_epochs(config: Config, steps_per_epoch: int) -> int:
    """Epochs per compiled chunk: a divisor of the epoch count (one compile), large enough
    that host work between chunks is negligible; 1 with early stopping."""
    epochs = config.training.epochs
    if config.training.chunk_epochs:
        return min(config.training.chunk_epochs, epochs)
    if config.training.patience:
        return 1
    target = max(1, math.ceil(512 / steps_per_epoch))
    return max(d for d in range(1, min(target, epochs) + 1) if epochs % d == 0)


def read_metrics(workdir: str) -> list[dict]:
    """The per-epoch metrics of a run directory (a line cut short by a kill is dropped)."""
    return jsonl.read(os.path.join(workdir, METRICS))


def _metrics_until(workdir: str, epoch: int | jax.Array) -> list[dict]:
    """The per-epoch metrics of a resumed run's epochs 1 to ``epoch`` (its checkpoint's); a
    kill leaves those, and maybe later ones, which are dropped.

    Raises:
      RunError: epochs are missing or repeated (the file is damaged).
    """
    rows = [r for r in read_metrics(workdir)
            if not (isinstance(r.get("epoch"), int) and r["epoch"] > int(epoch))]
    if [r.get("epoch") for r in rows] != list(range(1, int(epoch) + 1)):
        raise RunError(f"{os.path.join(workdir, METRICS)}: does not hold each of epochs 1 to "
                       f"{int(epoch)} once, where {CHECKPOINT} is at epoch {int(epoch)}; the "
                       "file is damaged, and nothing was changed")
    return rows


def _rows(metrics: dict, first_epoch: int) -> list[dict]:
    host = jax.device_get(metrics)
    count = len(host["train_loss"])
    return [
        {"epoch": first_epoch + i + 1,
         **{k: (float(v[i]) if k != "nonfinite_step" else int(v[i])) for k, v in host.items()}}
        for i in range(count)
    ]


def _progress(config: Config, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=config.training.epochs, initial=initial, unit="epoch",
                disable=not config.training.progress, dynamic_ncols=True, leave=False)


def train_and_evaluate(
    config: Config, workdir: str | os.PathLike, *, resume: bool = False
) -> dict[str, Any]:
    """Trains, evaluates and writes the run directory; returns the summary.

    Args:
      config: a validated config.
      workdir: the run directory (created if needed).
      resume: continue from ``workdir``'s checkpoint; the result equals an uninterrupted run
        (one stopped before its first epoch, its config alone written, starts anew).

    Returns:
      The summary (also written to ``summary.json``); ``status`` is "completed",
      "early_stopped" or "diverged" (with ``message`` naming the step and last finite loss).

    Raises:
      ConfigError: for a bad config or data, before anything is compiled.
      RunError: when ``workdir`` already holds a run and ``resume`` is False.
      checkpoint.CheckpointError: when resuming from a bad checkpoint.
    """
    started = time.perf_counter()
    enable_precision(config)
    workdir = os.fspath(workdir)
    anew = (resume and os.path.exists(os.path.join(workdir, CONFIG))
            and rundir.holds(workdir) != rundir.RUN)
    if anew:
        resume = False  # stopped before it trained anything (while compiling): it starts anew
    _check_directory(workdir, resume, anew)
    dataset = prepare(config)
    trainer = make_train(config, dataset)
    hparams = default_hparams(config, trainer.dtype)
    with rundir.locked(workdir):
        _check_directory(workdir, resume, anew)  # again, now that no other process can
        key = jax.random.key(config.training.seed)
        best = {"val_loss": math.inf, "epoch": 0, "stopped": 0}
        if resume:  # everything is checked before anything is rewritten
            # The checkpoint's template is the initial state's shapes: nothing is drawn.
            state, best = _restore(config, workdir, jax.eval_shape(trainer.init, key, hparams),
                                   best, dataset)
            jsonl.rewrite(os.path.join(workdir, METRICS), _metrics_until(workdir, state.epoch))
        else:
            state = _initial_state(trainer, key, hparams)
            rundir.write_text(os.path.join(workdir, CONFIG), config_lib.dumps(config))
            rundir.record_data(workdir, dataset.digest())
        return _finish(config, dataset, trainer, state, hparams, workdir, best, started)


def _initial_state(trainer: Trainer, key: jax.Array, hparams: dict) -> TrainState:
    """``trainer.init(key, hparams)``, compiled as a program that runs once
    (`jaxnn.compile_options`, as a sweep's prologue is): the default config's `jaxnn train`
    took 3.2-3.6 s instead of 4.3-4.9 s (at XLA's default level the initial draw took about
    as long to compile as the training program)."""
    lowered = trainer.init.lower(key, hparams)
    return compile_lowered(lowered, compiler_options(run_once=True))(key, hparams)


RUN_FILES = (CHECKPOINT, METRICS, SUMMARY)  # a directory holding one of them holds a run


def _check_directory(workdir: str, resume: bool, anew: bool = False) -> None:
    """Refuses a new run in a directory that holds one, a sweep or a report, or files it
    would overwrite (unless ``anew``: its own config, a run stopped before it trained), and
    a resume of nothing."""
    if resume and not os.path.exists(os.path.join(workdir, CHECKPOINT)):
        raise RunError(f"{workdir}: nothing to resume ({CHECKPOINT} not found)")
    if resume or not os.path.isdir(workdir):
        return
    held = rundir.holds(workdir)
    if held == rundir.RUN:
        raise RunError(f"{workdir} already holds a run; continue it with --resume or choose "
                       "another directory")
    if held:
        raise RunError(f"{workdir} holds {held}; a training run needs another directory")
    if not anew:
        rundir.refuse_overwriting(workdir, (CONFIG, rundir.DATA_DIGEST), "a new run")


def _restore(config: Config, workdir: str, state: TrainState, best: dict,
             dataset: data_lib.Dataset):
    """The checkpoint's training state and early-stopping record, range-checked (``state``
    and ``best``: their templates), once its config and ``dataset`` are found to be those
    the run was trained with."""
    path = os.path.join(workdir, CHECKPOINT)

    def same_run(trained: str | None) -> None:
        if trained is not None:  # an edited config.toml would train on with another config
            change = config_lib.resume_change(
                config_lib.loads_kept(trained, os.path.join(workdir, CONFIG), path), config)
            if change is not None:
                key, was, now = change
                raise RunError(f"{os.path.join(workdir, CONFIG)}: {key} is {now!r}, but the "
                               f"run was trained with {was!r} ({CHECKPOINT}); restore it, or "
                               "start a new run to change it")
        rundir.check_data(workdir, dataset.digest(), f"{config.source}: data: {dataset.name}",
                          "run")

    saved, _ = checkpoint.load_noted(path, {"state": state, **_best_arrays(best)}, same_run)
    state = TrainState(*saved["state"])
    best = {k: saved[k].item() for k in best}
    epoch, epochs = int(state.epoch), config.training.epochs
    problems = [
        (f"epoch {epoch} is outside [0, {epochs}] (training.epochs)", not 0 <= epoch <= epochs),
        (f"best epoch {best['epoch']} is outside [0, {epoch}]", not 0 <= best["epoch"] <= epoch),
        (f"stopped flag {best['stopped']} is not 0 or 1", best["stopped"] not in (0, 1)),
        (f"best validation loss {best['val_loss']} is NaN", math.isnan(best["val_loss"])),
    ]
    for problem, bad in problems:
        if bad:
            raise checkpoint.CheckpointError(f"{path}: {problem}")
    return state, best


def _finish(config, dataset, trainer, state, hparams, workdir, best, started) -> dict:
    """Trains the remaining epochs, evaluates on the test split, writes the summary and plots."""
    summary = _drive(config, trainer, state, hparams, workdir, best)
    test = trainer.evaluate(*summary.pop("model"), hparams, jnp.asarray(dataset.x_test),
                            jnp.asarray(dataset.y_test))
    summary.update({
        "test_loss": float(test["loss"]),
        "test_accuracy": float(test["accuracy"]) if dataset.num_classes else None,
        "wall_time_s": time.perf_counter() - started,
        "data": dataset.name,
        "num_train": len(dataset.x_train),
        "devices": [str(d) for d in jax.devices()],
    })
    path = os.path.join(workdir, SUMMARY)
    previous = _previous_summary(path)
    if summary.pop("trained_epochs") == 0:  # a finished run resumed: its measures stand
        summary.update({key: previous[key] for key in _SESSION if key in previous})
    if config.output.plots:
        summary["plots"] = plots.training_curves(read_metrics(workdir), workdir)
    elif previous.get("plots") and all(
            os.path.exists(os.path.join(workdir, os.path.basename(plot)))
            for plot in previous["plots"]):
        summary["plots"] = previous["plots"]  # drawn before, still there
    rundir.write_text(path, jsonl.strict_json(summary, indent=2))
    return summary


def _previous_summary(path: str) -> dict:
    """``summary.json`` as an earlier session of the run wrote it ({} if none or damaged)."""
    try:
        with open(path) as handle:
            previous = json.load(handle)
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}


def _divergence(bad: dict, rows: list[dict], kept_epoch: int) -> str:
    """What a diverged run says: where the loss turned, its last finite value, which params
    the test metrics are of."""
    step = bad["nonfinite_step"]
    last = bad["last_finite_loss"]
    if not math.isfinite(last):  # the epoch's first step: the previous epoch's last loss
        before = [r for r in rows if r["epoch"] < bad["epoch"]]
        last = before[-1]["last_finite_loss"] if before else None
        last = math.nan if last is None else last  # null in the file: not finite
    kept = (f"the last finite epoch, {kept_epoch} (checkpointed)" if kept_epoch
            else "the initial parameters (no epoch finished with a finite loss)")
    return (f"loss became non-finite at step {step} (epoch {bad['epoch']}); last finite loss "
            + (f"{last:.6g} at step {step - 1}" if math.isfinite(last) else "none")
            + f"; test metrics are of {kept}")


def _best_arrays(best: dict) -> dict:
    return {"val_loss": np.asarray(best["val_loss"], np.float64),
            "epoch": np.asarray(best["epoch"], np.int64),
            "stopped": np.asarray(best["stopped"], np.int64)}


def _watched(rows: list[dict], best: dict, patience: int) -> tuple[dict, int | None]:
    """``(best after rows, stop)``: the early-stopping record (best validation loss, its
    epoch, stopped) once ``rows`` are seen, and the index of the row at which early stopping
    ends the run (``patience`` epochs without a better validation loss), or None."""
    best = dict(best)
    for index, row in enumerate(rows):
        if "val_loss" in row and row["val_loss"] < best["val_loss"]:
            best["val_loss"], best["epoch"] = row["val_loss"], row["epoch"]
        if patience and row["epoch"] - best["epoch"] >= patience:
            return {**best, "stopped": 1}, index
    return best, None


def _drive(config, trainer: Trainer, state, hparams, workdir, best) -> dict:
    """Runs the remaining epochs in chunks; returns the partial summary with the params.

    A chunk whose loss turns non-finite is run again up to its last finite epoch, so that the
    run keeps (and checkpoints) the last finite state and is evaluated on it; one that passes
    an early stop, up to the stop, so that every chunk size stops where one epoch at a time
    does.
    """
    epochs, patience = config.training.epochs, config.training.patience
    chunk = chunk_epochs(config, trainer.steps_per_epoch)
    compiled, times = {}, {"compile": 0.0, "train": 0.0, "steps": 0}
    status, message = ("early_stopped" if best["stopped"] else "completed"), ""
    bar = _progress(config, int(state.epoch))

    def run(size, state):
        if size not in compiled:
            start = time.perf_counter()
            compiled[size] = trainer.compile(state, hparams, size)
            times["compile"] += time.perf_counter() - start
        start = time.perf_counter()
        new_state, metrics = compiled[size](state, hparams)
        rows = _rows(metrics, int(state.epoch))
        times["train"] += time.perf_counter() - start
        return new_state, rows

    def save(new_state):
        checkpoint.save(os.path.join(workdir, CHECKPOINT), {"state": new_state,
                        **_best_arrays(best)}, note=config_lib.dumps(config))  # `_restore`'s

    def accept(new_state, rows):
        nonlocal status
        times["steps"] += len(rows) * trainer.steps_per_epoch
        best.update(_watched(rows, best, patience)[0])  # rows end at a stop (see below)
        if best["stopped"]:
            status = "early_stopped"
        jsonl.append(os.path.join(workdir, METRICS), rows)
        if config.output.checkpoint:
            save(new_state)
        bar.set_postfix(loss=f"{rows[-1]['train_loss']:.4f}",
                        acc=f"{rows[-1]['train_accuracy']:.3f}",
                        val_acc=f"{rows[-1].get('val_accuracy', float('nan')):.3f}")
        bar.update(len(rows))
        return new_state

    try:
        while int(state.epoch) < epochs and not best["stopped"]:
            new_state, rows = run(min(chunk, epochs - int(state.epoch)), state)
            bad = next((r for r in rows if r["nonfinite_step"] >= 0), None)
            finite = [r for r in rows if bad is None or r["epoch"] < bad["epoch"]]
            stop = _watched(finite, best, patience)[1]
            if stop is not None:  # an early stop before the chunk's end (or its divergence)
                finite, bad = finite[:stop + 1], None  # as one epoch at a time would stop
            if len(finite) < len(rows) and finite:  # run again up to there
                new_state, finite = run(len(finite), state)
            if finite:
                state = accept(new_state, finite)
            if bad is None:
                continue
            jsonl.append(os.path.join(workdir, METRICS), [bad])
            status, message = "diverged", _divergence(bad, read_metrics(workdir), int(state.epoch))
            break
    finally:
        bar.close()
    compile_s, train_s, steps_done = times["compile"], times["train"], times["steps"]
    if steps_done and not config.output.checkpoint and os.path.exists(
            os.path.join(workdir, CHECKPOINT)):
        # A checkpointed run resumed with checkpoints off: its checkpoint would stay behind
        # the finished run, and a later --resume would train those epochs again.
        save(state)
    return {
        "status": status,
        "message": message or (f"stopped early at epoch {int(state.epoch)}: no better "
                               f"validation loss for {patience} epochs (best at epoch "
                               f"{best['epoch']})" if status == "early_stopped" else ""),
        "epochs_run": int(state.epoch),
        "best_val_epoch": best["epoch"],
        "steps": int(state.epoch) * trainer.steps_per_epoch,  # the run's, resumed or not
        "steps_per_s": steps_done / train_s if train_s else None,
        "trained_epochs": steps_done // trainer.steps_per_epoch,  # by this session
        "compile_time_s": compile_s,
        "train_time_s": train_s,
        "chunk_epochs": chunk,
        "model": (state.params, state.model_state),
    }
