"""Wall time of a learning-rate x width sweep: jaxnn against sequential loops, same run.

Contenders, each timed end to end with compilation included:
  (a) jaxnn: `jaxnn.sweep.run_sweep` (trials vmapped, widths packed or not as planned);
  (a') jaxnn with pack_widths forced to true (one packed program) and to false (one program
       per width), to check the planner's choice;
  (b) raw JAX: a hand-written jitted training run (lax.scan over epochs and steps, optax
      SGD with momentum), called once per trial in a Python loop (one compile per width);
  (c) PyTorch eager, one trial after another, when torch is installed (on CUDA when present).
All train the same MLP (digits, 64 -> width -> width -> 10, ReLU, softmax cross-entropy,
momentum 0.9, batch 64, the config's epochs) on the same splits.

The contenders run in a fresh random order each repeat (seeded), as in `benchmark.py`.

Run: python experiments/benchmark_sweep.py [--widths 16 32 64 128] [--repeats 3] [--default-malloc]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import optax

from jaxnn import benchmarking, run, sweep
from jaxnn import config as config_lib

CONFIG = "configs/sweep_lr_width.toml"


def raw_jax_loop(cfg, dataset, trials) -> float:
    """(b): one jitted run per trial, compiled once per width; returns seconds."""
    x, y = jnp.asarray(dataset.x_train, jnp.float32), jnp.asarray(dataset.y_train)
    n, batch, epochs = len(x), cfg.training.batch_size, cfg.training.epochs
    steps = n // batch
    programs = {}

    def make(width):
        sizes = [x.shape[1], width, width, 10]

        def init(key):
            keys = jax.random.split(key, 3)
            return [{"w": jax.random.normal(k, (a, b)) / jnp.sqrt(a), "b": jnp.zeros(b)}
                    for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]

        def loss_fn(params, xb, yb):
            h = xb
            for layer in params[:-1]:
                h = jax.nn.relu(h @ layer["w"] + layer["b"])
            logits = h @ params[-1]["w"] + params[-1]["b"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        @jax.jit
        def train(key, lr):
            opt = optax.sgd(lr, momentum=0.9)
            params = init(key)

            def epoch(carry, epoch_index):
                params, state = carry
                order = jax.random.permutation(jax.random.fold_in(key, epoch_index), n)
                batches = order[: steps * batch].reshape(steps, batch)

                def step(carry, idx):
                    params, state = carry
                    loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
                    updates, state = opt.update(grads, state, params)
                    return (optax.apply_updates(params, updates), state), loss

                (params, state), losses = jax.lax.scan(step, (params, state), batches)
                return (params, state), losses.mean()

            (params, _), losses = jax.lax.scan(epoch, (params, opt.init(params)),
                                               jnp.arange(epochs))
            return params, losses

        return train

    start = time.perf_counter()
    for trial in trials:
        width = trial.config.model.hidden[0]
        if width not in programs:
            programs[width] = make(width)
        out = programs[width](jax.random.key(trial.config.training.seed),
                              jnp.float32(trial.config.optimizer.learning_rate))
        jax.block_until_ready(out)
    return time.perf_counter() - start


def torch_loop(cfg, dataset, trials) -> float | None:
    """(c): PyTorch eager, one trial after another; None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.tensor(dataset.x_train, dtype=torch.float32, device=device)
    y = torch.tensor(dataset.y_train, dtype=torch.long, device=device)
    n, batch = len(x), cfg.training.batch_size
    start = time.perf_counter()
    for trial in trials:
        width = trial.config.model.hidden[0]
        model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], width), torch.nn.ReLU(),
                                    torch.nn.Linear(width, width), torch.nn.ReLU(),
                                    torch.nn.Linear(width, 10)).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=trial.config.optimizer.learning_rate,
                              momentum=0.9)
        for _ in range(cfg.training.epochs):
            order = torch.randperm(n, device=device)
            for i in range(n // batch):
                idx = order[i * batch:(i + 1) * batch]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def jaxnn_sweep(cfg, dataset) -> tuple[float, int, float]:
    """(a): wall seconds, training programs compiled, and seconds spent compiling."""
    start = time.perf_counter()
    out = sweep.run_sweep(cfg, tempfile.mkdtemp(), dataset=dataset)
    return time.perf_counter() - start, out["programs_compiled"], out["compile_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=0, help="override the config's epochs")
    benchmarking.add_host_flags(parser)
    args = parser.parse_args()
    host_line = benchmarking.setup_host(args)
    overrides = ["training.progress=false", "output.plots=false",
                 f"sweep.grid.width={args.widths}"]
    if args.epochs:
        overrides.append(f"training.epochs={args.epochs}")
    cfg = config_lib.load(CONFIG, overrides)
    dataset = run.prepare(cfg)
    plan = sweep.make_plan(cfg, dataset)
    programs = [sorted({t.config.model.hidden[0] for t in g.trials}) for g in plan.groups]
    forced = {setting: cfg.replace(sweep={**cfg.sweep, "pack_widths": setting})
              for setting in (True, False)}
    print(f"{jax.devices()[0].platform}: {len(plan.trials)} trials, widths {args.widths}, "
          f"{cfg.training.epochs} epochs; the planner's programs (widths): {programs}; "
          f"{args.repeats} repeats, compile included, median [min, max] seconds; {host_line}")
    contenders = {  # key -> function returning (seconds, programs compiled, compile seconds)
        "planner": lambda: jaxnn_sweep(cfg, dataset),
        **{f"pack={k}": (lambda v=v: jaxnn_sweep(v, dataset)) for k, v in forced.items()},
        "raw JAX loop": lambda: (raw_jax_loop(cfg, dataset, plan.trials), None, None),
        "PyTorch loop": lambda: (torch_loop(cfg, dataset, plan.trials), None, None),
    }
    names: dict[str, str] = {}
    times: dict[str, list[float]] = {}
    compiling: dict[str, list[float]] = {}
    order = list(contenders)
    shuffler = random.Random(0)
    for _ in range(args.repeats):
        # A fresh order each repeat: a fixed one kept each contender's neighbour, e.g. the
        # planner's sweep always ran right after PyTorch, whose OpenMP threads keep spinning.
        shuffler.shuffle(order)
        for key in order:
            seconds, count, compile_s = contenders[key]()
            if seconds is None:  # PyTorch not installed
                continue
            name = names.setdefault(key, key if count is None
                                    else f"jaxnn ({count} program(s), {key})")
            times.setdefault(name, []).append(seconds)
            if compile_s is not None:
                compiling.setdefault(name, []).append(compile_s)
    if "PyTorch loop" not in times:
        print("  (PyTorch not installed: skipped)")
    base = statistics.median(times["raw JAX loop"])
    for name, samples in times.items():
        median = statistics.median(samples)
        compile_note = (f"  (compiling {statistics.median(compiling[name]):.2f} s)"
                        if name in compiling else "")
        print(f"  {name:32s} {median:7.2f} s [{min(samples):.2f}, {max(samples):.2f}]  "
              f"raw JAX / this = {base / median:5.2f}x{compile_note}")


if __name__ == "__main__":
    main()
