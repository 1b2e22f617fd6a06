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

from jaxnn import checkpoint, models, plots
from jaxnn import config as config_lib
from jaxnn import data as data_lib
from jaxnn.config import Config, ConfigError
from jaxnn.train import Trainer, TrainState, default_hparams, make_train

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.toml"


class RunError(RuntimeError):
    """A run that cannot start or continue (e.g. a run directory that is already taken)."""


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
    models.check(config, dataset.input_shape, dataset.output_size)
    return dataset


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


def _append_lines(path: str, rows: list[dict]) -> None:
    with open(path, "a") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_metrics(workdir: str) -> list[dict]:
    """The per-epoch metrics of a run directory."""
    path = os.path.join(workdir, METRICS)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _write_json_atomically(path: str, value: Any) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(value, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


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
      resume: continue from ``workdir``'s checkpoint; the result equals an uninterrupted run.

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
    ckpt_path = os.path.join(workdir, CHECKPOINT)
    if not resume and any(os.path.exists(os.path.join(workdir, f))
                          for f in (CHECKPOINT, METRICS, SUMMARY)):
        raise RunError(f"{workdir} already holds a run; continue it with --resume or choose "
                       "another directory")
    dataset = prepare(config)
    trainer = make_train(config, dataset)
    hparams = default_hparams(config, trainer.dtype)
    key = jax.random.key(config.training.seed)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG), "w") as handle:
        handle.write(config_lib.dumps(config))

    state = trainer.init(key, hparams)
    best = {"val_loss": math.inf, "epoch": 0, "stopped": 0}
    if resume and os.path.exists(ckpt_path):
        saved = checkpoint.load(ckpt_path, {"state": state, **_best_arrays(best)})
        state = TrainState(*saved["state"])
        best = {k: saved[k].item() for k in best}
        rows = [r for r in read_metrics(workdir) if r["epoch"] <= int(state.epoch)]
        with open(os.path.join(workdir, METRICS), "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in rows)
    elif resume:
        raise RunError(f"{workdir}: nothing to resume ({CHECKPOINT} not found)")

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
    if config.output.plots:
        summary["plots"] = plots.training_curves(read_metrics(workdir), workdir)
    _write_json_atomically(os.path.join(workdir, SUMMARY), summary)
    return summary


def _best_arrays(best: dict) -> dict:
    return {"val_loss": np.asarray(best["val_loss"], np.float64),
            "epoch": np.asarray(best["epoch"], np.int64),
            "stopped": np.asarray(best["stopped"], np.int64)}


def _drive(config, trainer: Trainer, state, hparams, workdir, best) -> dict:
    """Runs the remaining epochs in chunks; returns the partial summary with the params."""
    epochs, patience = config.training.epochs, config.training.patience
    chunk = chunk_epochs(config, trainer.steps_per_epoch)
    compiled, compile_s, train_s, steps_done = {}, 0.0, 0.0, 0
    status, message = ("early_stopped" if best["stopped"] else "completed"), ""
    bar = _progress(config, int(state.epoch))
    try:
        while int(state.epoch) < epochs and not best["stopped"]:
            size = min(chunk, epochs - int(state.epoch))
            if size not in compiled:
                start = time.perf_counter()
                compiled[size] = trainer.compile(state, hparams, size)
                compile_s += time.perf_counter() - start
            start = time.perf_counter()
            new_state, metrics = compiled[size](state, hparams)
            rows = _rows(metrics, int(state.epoch))
            train_s += time.perf_counter() - start
            bad = next((r for r in rows if r["nonfinite_step"] >= 0), None)
            if bad is not None:
                status = "diverged"
                message = (f"loss became non-finite at step {bad['nonfinite_step']} (epoch "
                           f"{bad['epoch']}); last finite loss {bad['last_finite_loss']:.6g}")
                _append_lines(os.path.join(workdir, METRICS),
                              [r for r in rows if r["epoch"] <= bad["epoch"]])
                break
            state = new_state
            steps_done += size * trainer.steps_per_epoch
            for row in rows:
                if "val_loss" in row and row["val_loss"] < best["val_loss"]:
                    best["val_loss"], best["epoch"] = row["val_loss"], row["epoch"]
                if patience and row["epoch"] - best["epoch"] >= patience:
                    best["stopped"], status = 1, "early_stopped"
            _append_lines(os.path.join(workdir, METRICS), rows)
            if config.output.checkpoint:
                checkpoint.save(os.path.join(workdir, CHECKPOINT),
                                {"state": state, **_best_arrays(best)})
            last = rows[-1]
            bar.set_postfix(loss=f"{last['train_loss']:.4f}",
                            acc=f"{last['train_accuracy']:.3f}",
                            val_acc=f"{last.get('val_accuracy', float('nan')):.3f}")
            bar.update(size)
    finally:
        bar.close()
    return {
        "status": status,
        "message": message or (f"stopped early at epoch {int(state.epoch)}: no better "
                               f"validation loss for {patience} epochs (best at epoch "
                               f"{best['epoch']})" if status == "early_stopped" else ""),
        "epochs_run": int(state.epoch),
        "best_val_epoch": best["epoch"],
        "steps": steps_done,
        "steps_per_s": steps_done / train_s if train_s else None,
        "compile_time_s": compile_s,
        "train_time_s": train_s,
        "chunk_epochs": chunk,
        "model": (state.params, state.model_state),
    }
