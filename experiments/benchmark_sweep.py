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

With --scaling N...: the same grid cut or repeated over seeds to N trials, timed for jaxnn,
(b), (c), (d) PyTorch's many-models-at-once way (`torch.func.stack_module_state` +
`functional_call` + `torch.vmap`) and (e) an Equinox ensemble (vmapped `eqx.nn.MLP`s, one
jitted program per width), with compile time apart where there is one. With --family cnn,
the same for the CNN group: `cnn_base`'s CNN swept over its first convolution's channels
(8, 16, 24, 32) x learning rate x seed, in raw JAX and PyTorch by `_jax_cnn` and `_torch_cnn`
(no Equinox ensemble: `eqx.nn.MLP` only). With --mnist-sized, the MLP on synthetic data of
MNIST's size (60,000 x 784) instead of digits; --loop-repeats K times the loops in the first
K repeats only (on a GPU a 1024-trial loop takes minutes).

With --channels: the CNN of configs/cnn_digits.toml (without its Dropout) swept over its
first convolution's channel counts {8, 16, 32} x 4 learning rates, 12 trials, timed for
jaxnn as planned, with every count packed in one program, and with one program per count.

Run: python experiments/benchmark_sweep.py [--widths 16 32 64 128] [--repeats 3] [--default-malloc]
     python experiments/benchmark_sweep.py --scaling 1 8 32 128 512 --epochs 5 --plot FILE
     python experiments/benchmark_sweep.py --scaling 1 8 32 128 --family cnn --epochs 5
         [--contenders jaxnn "PyTorch loop" "torch.func vmap"]
     python experiments/benchmark_sweep.py --channels --epochs 5
     python experiments/benchmark_sweep.py --scaling 1024 --mnist-sized --epochs 2 \
         --repeats 3 --loop-repeats 1 --contenders jaxnn "raw JAX loop"   (the GPU run)
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnn import benchmarking, run, sweep
from jaxnn import config as config_lib
from jaxnn import data as data_lib

CONFIG = "configs/sweep_lr_width.toml"
CNN_CONFIG = "configs/cnn_digits.toml"


class Family(NamedTuple):
    """A model the scaling run trains, swept over one width.

    Attributes:
      width_name: the sweep name of its width.
      jax_model: ``jax_model(width, input_shape) -> (init(key) -> params,
        apply(params, x) -> logits)`` in raw JAX.
      torch_model: ``torch_model(torch, width, input_shape) -> torch.nn.Module`` (NCHW images).
    """

    width_name: str
    jax_model: Callable
    torch_model: Callable

    def width_of(self, trial) -> int:
        return trial.values[self.width_name]


def _jax_mlp(width, input_shape):
    """64 -> width -> width -> 10, ReLU."""
    sizes = [math.prod(input_shape), width, width, 10]

    def init(key):
        keys = jax.random.split(key, 3)
        return [{"w": jax.random.normal(k, (a, b)) / jnp.sqrt(a), "b": jnp.zeros(b)}
                for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]

    def apply(params, x):
        for layer in params[:-1]:
            x = jax.nn.relu(x @ layer["w"] + layer["b"])
        return x @ params[-1]["w"] + params[-1]["b"]

    return init, apply


def _jax_cnn(width, input_shape):
    """The CNN of configs/cnn_digits.toml without Dropout: Conv(width, 3) -> ReLU ->
    Conv(32, 3) -> ReLU -> MaxPool(2) -> Flatten -> Dense(128) -> ReLU -> Dense(10)."""
    height, breadth, channels = input_shape
    shapes = [(3, 3, channels, width), (3, 3, width, 32),
              (height // 2 * (breadth // 2) * 32, 128), (128, 10)]

    def init(key):
        keys = jax.random.split(key, len(shapes))
        return [{"w": jax.random.normal(k, shape) / jnp.sqrt(math.prod(shape[:-1])),
                 "b": jnp.zeros(shape[-1])} for k, shape in zip(keys, shapes, strict=True)]

    def apply(params, x):
        for layer in params[:2]:
            x = jax.nn.relu(jax.lax.conv_general_dilated(
                x, layer["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
                + layer["b"])
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                  "VALID")
        x = jax.nn.relu(x.reshape(x.shape[0], -1) @ params[2]["w"] + params[2]["b"])
        return x @ params[3]["w"] + params[3]["b"]

    return init, apply


def _torch_mlp(torch, width: int, input_shape):
    """The benchmark MLP in PyTorch: inputs -> width -> width -> 10, ReLU."""
    inputs = math.prod(input_shape)
    return torch.nn.Sequential(torch.nn.Linear(inputs, width), torch.nn.ReLU(),
                               torch.nn.Linear(width, width), torch.nn.ReLU(),
                               torch.nn.Linear(width, 10))


def _torch_cnn(torch, width: int, input_shape):
    """`_jax_cnn` in PyTorch (NCHW)."""
    nn = torch.nn
    height, breadth, channels = input_shape
    return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(height // 2 * (breadth // 2) * 32, 128),
                         nn.ReLU(), nn.Linear(128, 10))


MLP = Family("width", _jax_mlp, _torch_mlp)
CNN = Family("model.layers[0].features", _jax_cnn, _torch_cnn)


def _torch_data(torch, dataset, device):
    """The training split as tensors, images as NCHW."""
    x = torch.tensor(dataset.x_train, dtype=torch.float32, device=device)
    if x.dim() == 4:
        x = x.permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(dataset.y_train, dtype=torch.long, device=device)


def raw_jax_loop(cfg, dataset, trials, family=MLP) -> tuple[float, float]:
    """(b): one jitted run per trial, compiled once per width; returns (seconds, of which
    compiling)."""
    x, y = jnp.asarray(dataset.x_train, jnp.float32), jnp.asarray(dataset.y_train)
    n, batch, epochs = len(x), cfg.training.batch_size, cfg.training.epochs
    steps = n // batch
    programs = {}

    def make(width):
        init, apply = family.jax_model(width, x.shape[1:])

        def loss_fn(params, xb, yb):
            return optax.softmax_cross_entropy_with_integer_labels(apply(params, xb),
                                                                   yb).mean()

        @jax.jit
        def train(key, lr, x, y):  # the data as arguments, not constants in the program
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

    start, compiling = time.perf_counter(), 0.0
    for done, trial in enumerate(trials, 1):
        width = family.width_of(trial)
        key = jax.random.key(trial.config.training.seed)
        lr = jnp.float32(trial.config.optimizer.learning_rate)
        if width not in programs:
            compile_start = time.perf_counter()
            programs[width] = make(width).lower(key, lr, x, y).compile()
            compiling += time.perf_counter() - compile_start
        jax.block_until_ready(programs[width](key, lr, x, y))
        if len(trials) >= 256 and done % (len(trials) // 8) == 0:  # a long loop's rate
            print(f"  raw JAX loop: {done}/{len(trials)} trials in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
    return time.perf_counter() - start, compiling


def torch_loop(cfg, dataset, trials, family=MLP) -> float | None:
    """(c): PyTorch eager, one trial after another; None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, y = _torch_data(torch, dataset, device)
    n, batch = len(x), cfg.training.batch_size
    start = time.perf_counter()
    for trial in trials:
        model = family.torch_model(torch, family.width_of(trial),
                                   dataset.input_shape).to(device)
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


def _by_width(trials, family) -> dict[int, list]:
    groups: dict[int, list] = {}
    for trial in trials:
        groups.setdefault(family.width_of(trial), []).append(trial)
    return groups


def torch_func_vmap(cfg, dataset, trials, family=MLP) -> float | None:
    """(d): PyTorch's way of training many models at once: per width, the trials' models
    stacked (`torch.func.stack_module_state`), their gradients by `torch.vmap` of
    `torch.func.grad` over `functional_call`, SGD with momentum applied to the stacked
    tensors; each trial draws its own minibatch order. None when torch is not installed."""
    try:
        import torch
        from torch.func import functional_call, grad, stack_module_state
    except ImportError:
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, y = _torch_data(torch, dataset, device)
    n, batch = len(x), cfg.training.batch_size

    def model(width):
        return family.torch_model(torch, width, dataset.input_shape)

    start = time.perf_counter()
    for width, group in _by_width(trials, family).items():
        count = len(group)
        params, buffers = stack_module_state([model(width).to(device) for _ in group])
        params = {k: v.detach() for k, v in params.items()}
        momenta = {k: torch.zeros_like(v) for k, v in params.items()}
        lr = torch.tensor([t.config.optimizer.learning_rate for t in group], device=device)
        base = model(width).to("meta")

        def loss(p, b, xb, yb, base=base):
            return torch.nn.functional.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

        grads_of = torch.vmap(grad(loss))
        for _ in range(cfg.training.epochs):
            orders = torch.argsort(torch.rand(count, n, device=device), dim=1)
            for i in range(n // batch):
                idx = orders[:, i * batch:(i + 1) * batch]
                grads = grads_of(params, buffers, x[idx], y[idx])
                with torch.no_grad():
                    for k, g in grads.items():
                        momenta[k].mul_(0.9).add_(g)
                        params[k].sub_(lr.view(-1, *[1] * (g.dim() - 1)) * momenta[k])
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def equinox_ensemble(cfg, dataset, trials, family=MLP) -> tuple[float | None, float]:
    """(e): an Equinox ensemble: per width, one jitted `jax.vmap` over the trials of a run
    that builds an `eqx.nn.MLP` and trains its arrays (`eqx.partition`) with optax SGD with
    momentum, `lax.scan` over epochs and steps; each trial draws its own minibatch order. Returns
    (seconds, of which compiling); seconds is None when Equinox is not installed, or for
    another family than the MLP."""
    try:
        import equinox as eqx
    except ImportError:
        return None, 0.0
    if family is not MLP:
        return None, 0.0
    x, y = jnp.asarray(dataset.x_train, jnp.float32), jnp.asarray(dataset.y_train)
    n, batch, epochs = len(x), cfg.training.batch_size, cfg.training.epochs
    steps = n // batch

    def make(width):
        def one_trial(key, lr, x, y):
            model = eqx.nn.MLP(x.shape[1], 10, width, 2, activation=jax.nn.relu, key=key)
            params, static = eqx.partition(model, eqx.is_array)
            opt = optax.sgd(lr, momentum=0.9)

            def loss_fn(p, xb, yb):
                logits = jax.vmap(eqx.combine(p, static))(xb)
                return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

            def epoch(carry, epoch_index):
                order = jax.random.permutation(jax.random.fold_in(key, epoch_index), n)

                def step(carry, idx):
                    p, state = carry
                    grads = jax.grad(loss_fn)(p, x[idx], y[idx])
                    updates, state = opt.update(grads, state, p)
                    return (optax.apply_updates(p, updates), state), None

                return jax.lax.scan(step, carry, order[: steps * batch].reshape(steps, batch))

            return jax.lax.scan(epoch, (params, opt.init(params)), jnp.arange(epochs))[0][0]

        return jax.jit(jax.vmap(one_trial, in_axes=(0, 0, None, None)))

    start, compiling = time.perf_counter(), 0.0
    for width, group in _by_width(trials, family).items():
        keys = jnp.stack([jax.random.key(t.config.training.seed) for t in group])
        lrs = jnp.asarray([t.config.optimizer.learning_rate for t in group], jnp.float32)
        compile_start = time.perf_counter()
        program = make(width).lower(keys, lrs, x, y).compile()
        compiling += time.perf_counter() - compile_start
        jax.block_until_ready(program(keys, lrs, x, y))
    return time.perf_counter() - start, compiling


def jaxnn_sweep(cfg, dataset) -> tuple[float, int, float]:
    """(a): wall seconds, training programs compiled, and seconds spent compiling."""
    start = time.perf_counter()
    out = sweep.run_sweep(cfg, tempfile.mkdtemp(), dataset=dataset)
    return time.perf_counter() - start, out["programs_compiled"], out["compile_time_s"]


def scaling_grid(count: int, lrs: list[float], widths: list[int],
                 width_name: str = "width") -> dict[str, list]:
    """The learning-rate x width x seed grid of ``count`` trials: 1 trial; a few learning
    rates (evenly spread) x every width; or every rate x every width x seeds."""
    if count == 1:
        return {"learning_rate": [lrs[len(lrs) // 2]], width_name: [widths[len(widths) // 2]]}
    rates = count // len(widths)
    if rates * len(widths) == count and rates <= len(lrs):
        return {"learning_rate": [lrs[i * len(lrs) // rates] for i in range(rates)],
                width_name: widths}
    seeds = count // (len(lrs) * len(widths))
    if seeds * len(lrs) * len(widths) != count:
        raise SystemExit(f"--scaling {count}: not 1, a multiple of {len(widths)} up to "
                         f"{len(lrs) * len(widths)}, or a multiple of {len(lrs) * len(widths)}")
    return {"learning_rate": lrs, width_name: widths, "seed": list(range(seeds))}


SCALING_CONTENDERS = {  # name -> fn(cfg, dataset, trials, family) -> (seconds, compiling s)
    "jaxnn": lambda cfg, dataset, trials, family: jaxnn_sweep(cfg, dataset)[::2],
    "raw JAX loop": raw_jax_loop,
    "PyTorch loop": lambda cfg, dataset, trials, family: (
        torch_loop(cfg, dataset, trials, family), 0.0),
    "torch.func vmap": lambda cfg, dataset, trials, family: (
        torch_func_vmap(cfg, dataset, trials, family), 0.0),
    "Equinox ensemble": equinox_ensemble,
}


LOOPS = ("raw JAX loop", "PyTorch loop")  # one trial after another: the slow contenders


def cnn_base(epochs: int, lrs: list[float], widths: list[int]):
    """The CNN group's sweep: configs/cnn_digits.toml without Dropout, trained like the MLP
    (SGD with momentum 0.9, constant rate, no weight decay), its first convolution's
    channels swept."""
    cfg = config_lib.load(CNN_CONFIG, [
        "training.progress=false", "output.plots=false", "optimizer.name='momentum'",
        "optimizer.momentum=0.9", "optimizer.weight_decay=0.0", "schedule.name='constant'",
        *([f"training.epochs={epochs}"] if epochs else [])])
    layers = tuple(spec for spec in cfg.model.layers if spec["type"] != "Dropout")
    return cfg.replace(model={"layers": layers}, sweep={"grid": {
        "learning_rate": lrs, CNN.width_name: widths}})


def mnist_sized(rows: int, seed: int = 0) -> data_lib.Dataset:
    """Synthetic data of MNIST's size: ``rows`` x 784 training rows (a tenth held out for
    validation, as jaxnn splits MNIST) and 10,000 test rows, 10 classes, each class a random
    prototype plus unit noise, standardised."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(10, 784)).astype(np.float32)

    def draw(count):
        labels = rng.integers(0, 10, count).astype(np.int32)
        noise = rng.standard_normal((count, 784), dtype=np.float32)
        return 0.3 * prototypes[labels] + noise, labels

    return data_lib.split(*draw(rows), num_classes=10, test=draw(10_000),
                          name=f"synthetic MNIST-sized data ({rows} x 784)")


def scaling(args, base, family) -> None:
    """Wall time against the number of trials, every contender in the same run (the loops
    in the first ``args.loop_repeats`` repeats only)."""
    grid = base.sweep["grid"]
    lrs, widths = grid["learning_rate"], grid[family.width_name]
    times: dict[tuple[str, int], list[tuple[float, float]]] = {}
    shuffler = random.Random(0)
    for count in args.scaling:
        cfg = base.replace(sweep={**base.sweep, "grid": scaling_grid(
            count, lrs, widths, family.width_name)})
        if args.mnist_sized:
            dataset = mnist_sized(args.mnist_sized).astype(np.dtype(cfg.training.precision))
            run.check_against_data(cfg, dataset)
        else:
            dataset = run.prepare(cfg)
        plan = sweep.make_plan(cfg, dataset)
        trials = plan.trials
        print(f"N = {len(trials)}: {len(plan.groups)} jaxnn program(s)", flush=True)
        for repeat in range(args.repeats):
            order = [name for name in args.contenders
                     if repeat < args.loop_repeats or name not in LOOPS]
            shuffler.shuffle(order)
            for name in order:
                seconds, compiling = SCALING_CONTENDERS[name](cfg, dataset, trials, family)
                if seconds is not None:
                    times.setdefault((name, count), []).append((seconds, compiling))
                    print(f"  {name}: {seconds:.2f} s, of which compiling {compiling:.2f} s",
                          flush=True)
    rows = scaling_rows(times, args.scaling)
    print(rows)
    if args.plot:
        plot_scaling(times, args.scaling, args.plot)
        print(f"plot: {args.plot}")


def scaling_rows(times, counts) -> str:
    """A Markdown table: per N and contender, median wall time with and without compiling,
    trials per second, and the raw-JAX loop's time over this one (compile included)."""
    lines = ["| N | contender | wall s (compile incl.) | compile excl. | trials/s | "
             "raw JAX loop / this |", "|---:|---|---:|---:|---:|---:|"]
    for count in counts:
        loop = times.get(("raw JAX loop", count))
        base = statistics.median(t for t, _ in loop) if loop else None
        for name in SCALING_CONTENDERS:
            if (name, count) not in times:
                continue
            samples = times[(name, count)]
            wall = statistics.median(t for t, _ in samples)
            excl = statistics.median(t - c for t, c in samples)
            lines.append(f"| {count} | {name} | {wall:.2f} [{min(t for t, _ in samples):.2f}, "
                         f"{max(t for t, _ in samples):.2f}] | {excl:.2f} | "
                         f"{count / wall:.1f} | "
                         f"{'-' if base is None else f'{base / wall:.2f}x'} |")
    return "\n".join(lines)


def plot_scaling(times, counts, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name in SCALING_CONTENDERS:
        present = [c for c in counts if (name, c) in times]
        ax.plot(present, [statistics.median(t for t, _ in times[(name, c)]) for c in present],
                marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="trials (N)",
           ylabel="wall seconds, compile included (median)",
           title="Sweep time against the number of trials")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def channel_packing(args, host_line) -> None:
    """The CNN channel-count sweep as planned, all packed and one program per count."""
    base = config_lib.load(CNN_CONFIG, ["training.progress=false", "output.plots=false"]
                           + ([f"training.epochs={args.epochs}"] if args.epochs else []))
    layers = tuple(spec for spec in base.model.layers if spec["type"] != "Dropout")
    base = base.replace(model={"layers": layers}, sweep={"grid": {
        "model.layers[0].features": [8, 16, 32], "learning_rate": [3e-4, 1e-3, 3e-3, 1e-2]}})
    dataset = run.prepare(base)
    variants = {"planner": base, **{f"pack={k}": base.replace(sweep={
        **base.sweep, "pack_widths": k}) for k in (True, False)}}
    plans = {key: sweep.make_plan(cfg, dataset) for key, cfg in variants.items()}
    print(f"{jax.devices()[0].platform}: 12 trials (channels of model.layers[0] x 4 learning "
          f"rates), {base.training.epochs} epochs, {args.repeats} repeats in a fresh random "
          f"order, compile included; {host_line}")
    for key, plan in plans.items():
        print(f"  {key}: " + "; ".join(
            str(sorted({t.values['model.layers[0].features'] for t in g.trials}))
            for g in plan.groups))
    times: dict[str, list[tuple[float, float]]] = {}
    order, shuffler = list(variants), random.Random(0)
    for _ in range(args.repeats):
        shuffler.shuffle(order)
        for key in order:
            seconds, _, compile_s = jaxnn_sweep(variants[key], dataset)
            times.setdefault(key, []).append((seconds, compile_s))
    print("| jaxnn | programs | wall s | compile s | training s |\n|---|---:|---:|---:|---:|")
    for key, samples in times.items():
        wall = statistics.median(s for s, _ in samples)
        compiling = statistics.median(c for _, c in samples)
        print(f"| {key} | {len(plans[key].groups)} | {wall:.2f} | {compiling:.2f} | "
              f"{statistics.median(s - c for s, c in samples):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+",
                        help="the MLP's widths (default 16 32 64 128) or, with --family cnn, "
                             "the first convolution's channels (default 8 16 24 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=0, help="override the config's epochs")
    parser.add_argument("--scaling", type=int, nargs="+", metavar="N",
                        help="time every contender at these trial counts (e.g. 1 8 32 128 "
                             "512: learning rate x width x seed)")
    parser.add_argument("--family", choices=["mlp", "cnn"], default="mlp",
                        help="with --scaling: the digits MLP or the CNN group")
    parser.add_argument("--plot", help="with --scaling: write the time-vs-N plot here")
    parser.add_argument("--contenders", nargs="+", choices=list(SCALING_CONTENDERS),
                        default=list(SCALING_CONTENDERS), metavar="NAME",
                        help="with --scaling: only these (default: all of "
                             f"{', '.join(SCALING_CONTENDERS)})")
    parser.add_argument("--loop-repeats", type=int, default=None, metavar="K",
                        help="with --scaling: run the loops (raw JAX, PyTorch) in the first K "
                             "repeats only (default: every repeat)")
    parser.add_argument("--mnist-sized", type=int, nargs="?", const=60_000, default=0,
                        metavar="ROWS", help="with --scaling: the MLP on synthetic "
                        "MNIST-sized data (ROWS x 784, default 60000) instead of digits")
    parser.add_argument("--channels", action="store_true",
                        help="time the CNN channel-count sweep (packed, per count, planned)")
    benchmarking.add_host_flags(parser, cpu_devices=True)
    args = parser.parse_args()
    if args.loop_repeats is None:
        args.loop_repeats = args.repeats
    if args.mnist_sized and (args.family == "cnn" or not args.scaling):
        parser.error("--mnist-sized goes with --scaling and the MLP family")
    host_line = benchmarking.setup_host(args)
    if args.channels:
        return channel_packing(args, host_line)
    cnn = args.family == "cnn"
    if cnn and not args.scaling:
        parser.error("--family cnn goes with --scaling")
    widths = args.widths or ([8, 16, 24, 32] if cnn else [16, 32, 64, 128])
    overrides = ["training.progress=false", "output.plots=false",
                 f"sweep.grid.width={widths}"]
    if args.epochs:
        overrides.append(f"training.epochs={args.epochs}")
    cfg = config_lib.load(CONFIG, overrides)
    if args.scaling:
        if cnn:
            cfg = cnn_base(args.epochs, cfg.sweep["grid"]["learning_rate"], widths)
        print(f"{jax.devices()[0].platform}: {args.family}, {cfg.training.epochs} epochs, "
              f"widths {widths}, {args.repeats} repeats in a fresh random order; {host_line}")
        return scaling(args, cfg, CNN if cnn else MLP)
    dataset = run.prepare(cfg)
    plan = sweep.make_plan(cfg, dataset)
    programs = [sorted({t.config.model.hidden[0] for t in g.trials}) for g in plan.groups]
    forced = {setting: cfg.replace(sweep={**cfg.sweep, "pack_widths": setting})
              for setting in (True, False)}
    print(f"{jax.devices()[0].platform}: {len(plan.trials)} trials, widths {widths}, "
          f"{cfg.training.epochs} epochs; the planner's programs (widths): {programs}; "
          f"{args.repeats} repeats, compile included, median [min, max] seconds; {host_line}")
    contenders = {  # key -> function returning (seconds, programs compiled, compile seconds)
        "planner": lambda: jaxnn_sweep(cfg, dataset),
        **{f"pack={k}": (lambda v=v: jaxnn_sweep(v, dataset)) for k, v in forced.items()},
        "raw JAX loop": lambda: (raw_jax_loop(cfg, dataset, plan.trials)[0], None, None),
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
