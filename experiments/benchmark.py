"""Train-step speed of jaxnn against raw JAX and peer frameworks, in the same run.

Workloads (SGD with momentum 0.9, softmax cross-entropy):
  A: MLP 784-512-512-10, ReLU, float32, batch 128.
  B: CNN on 28x28x1: Conv 3x3x32 SAME, ReLU, MaxPool 2, Conv 3x3x64 SAME, ReLU, MaxPool 2,
     Flatten, Dense 10; float32, batch 128.
  E: residual CNN with BatchNorm in training mode on 32x32x3 (`resnet_contenders`: a stem,
     3 stages of 2 residual blocks with 16/32/64 channels, global average pooling, Dense 10);
     float32, batch 128.
  D (run when a GPU is present, or with --only D): MLP 4096-4096-4096-4096-10, ReLU, batch
     4096, bfloat16 compute with float32 master weights, put beside a bfloat16 matmul's
     FLOP/s measured in the same run.
Contenders: jaxnn (jax.grad and manual rules, via `jaxnn.train.make_step`), hand-written raw
JAX, and -- when installed (the `bench` extra) -- Flax Linen, Flax NNX, Equinox, Haiku and
PyTorch eager; a missing one is skipped with a note. Each contender's step is timed in
interleaved rounds (`jaxnn.benchmarking.compare`): median, min and max microseconds per step,
the first call (trace + compile) separately, and ratios to raw JAX; then jaxnn's ratio to
each contender taken round by round (`jaxnn.benchmarking.paired_ratio`). Workload A is
also put beside a plain float32 matmul's GFLOP/s measured in the same run.
With --scan K each call runs K steps: the JAX contenders' in one `lax.scan` (`in_scan`), as a
training run compiles them, and PyTorch's in its Python loop; times are per step. XLA's CPU
convolutions run many times slower inside a scan than alone (BENCHMARKS.md).

Run: python experiments/benchmark.py [--rounds 7] [--calls 10] [--only A|B|D|E] [--scan K]
     [--default-malloc]
(malloc is tuned for the whole process, every contender alike, unless --default-malloc:
`jaxnn.host.retain_freed_memory`)
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import resnet_contenders

import jaxnn
from jaxnn import benchmarking
from jaxnn.train import make_step

BATCH = {"A": 128, "B": 128, "D": 4096, "E": 128}
MLP_SIZES = {"A": (784, 512, 512, 10), "D": (4096, 4096, 4096, 4096, 10)}
LR, MOMENTUM = 0.01, 0.9


def input_shape(workload):
    """The shape of one batch of the workload's inputs."""
    if workload in MLP_SIZES:
        return (BATCH[workload], MLP_SIZES[workload][0])
    return (BATCH[workload], *((32, 32, 3) if workload == "E" else (28, 28, 1)))


def compute_dtype(workload):
    """The dtype a workload's forward and backward passes run in (params stay float32)."""
    return jnp.bfloat16 if workload == "D" else jnp.float32


def mixed(forward, workload):
    """``forward(params, x)`` run on ``compute_dtype`` copies of params and x, output float32:
    the plain way to get mixed precision in frameworks without a policy object."""
    dtype = compute_dtype(workload)
    if dtype == jnp.float32:
        return forward

    def cast(tree):
        return jax.tree_util.tree_map(
            lambda a: a.astype(dtype)
            if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating) else a, tree)

    return lambda p, x: forward(cast(p), cast(x)).astype(jnp.float32)


def _sce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _optax_step(forward, params, x, y):
    """A jitted SGD-momentum step for a pure ``forward(params, x)``, and its arguments."""
    opt = optax.sgd(LR, momentum=MOMENTUM)

    @jax.jit
    def step(p, s, x, y):
        loss, grads = jax.value_and_grad(lambda q: _sce(forward(q, x), y))(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    return step, (params, opt.init(params), x, y)


def _stateful_optax_step(forward, params, state, x, y):
    """A jitted SGD-momentum step for ``forward(params, state, x) -> (logits, state)``."""
    opt = optax.sgd(LR, momentum=MOMENTUM)

    @jax.jit
    def step(p, m, s, x, y):
        def loss(q):
            logits, new_m = forward(q, m, x)
            return _sce(logits, y), new_m

        (value, m), grads = jax.value_and_grad(loss, has_aux=True)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), m, s, value

    return step, (params, state, opt.init(params), x, y)


def jaxnn_net(workload):
    if workload == "E":
        return resnet_contenders.jaxnn_net()
    if workload in MLP_SIZES:
        hidden = MLP_SIZES[workload][1:-1]
        return jaxnn.serial(*[layer for width in hidden
                              for layer in (jaxnn.Dense(width), jaxnn.Relu())],
                            jaxnn.Dense(10))
    return jaxnn.serial(jaxnn.Conv2D(32, 3), jaxnn.Relu(), jaxnn.MaxPool2D(2),
                        jaxnn.Conv2D(64, 3), jaxnn.Relu(), jaxnn.MaxPool2D(2),
                        jaxnn.Flatten(), jaxnn.Dense(10))


def contender_jaxnn(workload, x, y, backprop="autodiff"):
    net = jaxnn_net(workload)
    _, params, state = net.init(jax.random.key(0), (None, *x.shape[1:]))
    opt = optax.sgd(LR, momentum=MOMENTUM)
    dtype = compute_dtype(workload)
    step = make_step(net, jaxnn.softmax_cross_entropy, opt, backprop=backprop,
                     compute_dtype=None if dtype == jnp.float32 else dtype)
    jitted = jax.jit(lambda p, m, s, x, y: step(p, m, s, x, y)[:4])
    return jitted, (params, state, opt.init(params), x, y)


def contender_raw(workload, x, y):
    if workload == "E":
        return _stateful_optax_step(*resnet_contenders.raw(), x, y)
    keys = iter(jax.random.split(jax.random.key(0), 8))
    dn = ("NHWC", "HWIO", "NHWC")

    def dense(n_in, n_out):
        return {"w": jax.random.normal(next(keys), (n_in, n_out)) / np.sqrt(n_in),
                "b": jnp.zeros(n_out)}

    if workload in MLP_SIZES:
        sizes = MLP_SIZES[workload]
        params = [dense(a, b) for a, b in itertools.pairwise(sizes)]

        def forward(p, x):
            h = x
            for layer in p[:-1]:
                h = jax.nn.relu(h @ layer["w"] + layer["b"])
            return h @ p[-1]["w"] + p[-1]["b"]
    else:
        params = [{"w": jax.random.normal(next(keys), (3, 3, 1, 32)) / 3, "b": jnp.zeros(32)},
                  {"w": jax.random.normal(next(keys), (3, 3, 32, 64)) / 17, "b": jnp.zeros(64)},
                  dense(7 * 7 * 64, 10)]

        def pool(h):
            return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                         "VALID")

        def forward(p, x):
            h = x
            for layer in p[:2]:
                h = jax.lax.conv_general_dilated(h, layer["w"], (1, 1), "SAME",
                                                 dimension_numbers=dn) + layer["b"]
                h = pool(jax.nn.relu(h))
            return h.reshape(h.shape[0], -1) @ p[2]["w"] + p[2]["b"]

    return _optax_step(mixed(forward, workload), params, x, y)


def contender_linen(workload, x, y):
    if workload == "E":
        return _stateful_optax_step(*resnet_contenders.linen(x), x, y)
    import flax.linen as nn

    class Model(nn.Module):
        @nn.compact
        def __call__(self, h):
            if workload in MLP_SIZES:
                for width in MLP_SIZES[workload][1:-1]:
                    h = nn.relu(nn.Dense(width)(h))
                return nn.Dense(10)(h)
            for features in (32, 64):
                h = nn.max_pool(nn.relu(nn.Conv(features, (3, 3))(h)), (2, 2), (2, 2))
            return nn.Dense(10)(h.reshape(h.shape[0], -1))

    model = Model()
    return _optax_step(mixed(model.apply, workload), model.init(jax.random.key(0), x), x, y)


def contender_nnx(workload, x, y):
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self, rngs):
            if workload in MLP_SIZES:  # NNX's own mixed precision: a compute dtype per layer.
                sizes = MLP_SIZES[workload]
                self.layers = nnx.List([
                    nnx.Linear(a, b, dtype=compute_dtype(workload), rngs=rngs)
                    for a, b in itertools.pairwise(sizes)])
            else:
                self.layers = nnx.List([nnx.Conv(1, 32, (3, 3), rngs=rngs),
                                        nnx.Conv(32, 64, (3, 3), rngs=rngs),
                                        nnx.Linear(7 * 7 * 64, 10, rngs=rngs)])

        def __call__(self, h):
            for layer in self.layers[:-1]:
                h = nnx.relu(layer(h))
                if workload == "B":
                    h = nnx.max_pool(h, (2, 2), (2, 2))
            return self.layers[-1](h.reshape(h.shape[0], -1)).astype(jnp.float32)

    model = resnet_contenders.nnx() if workload == "E" else Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(LR, momentum=MOMENTUM), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: _sce(m(x), y))(model)
        optimizer.update(model, grads)
        return loss

    return step, (model, optimizer, x, y)


def contender_equinox(workload, x, y):
    if workload == "E":
        return _equinox_stateful(*resnet_contenders.equinox(), x, y)
    import equinox as eqx

    keys = jax.random.split(jax.random.key(0), 4)
    if workload in MLP_SIZES:
        sizes = MLP_SIZES[workload]
        model = eqx.nn.MLP(sizes[0], 10, sizes[1], len(sizes) - 2, activation=jax.nn.relu,
                           key=keys[0])

        def forward(m, x):
            return jax.vmap(m)(x)
    else:
        model = [eqx.nn.Conv2d(1, 32, 3, padding=1, key=keys[0]),
                 eqx.nn.Conv2d(32, 64, 3, padding=1, key=keys[1]),
                 eqx.nn.Linear(7 * 7 * 64, 10, key=keys[2])]
        pool = eqx.nn.MaxPool2d(2, 2)

        def forward(m, x):
            def one(h):  # CHW, one example
                for conv in m[:2]:
                    h = pool(jax.nn.relu(conv(h)))
                return m[2](h.reshape(-1))
            return jax.vmap(one)(x.transpose(0, 3, 1, 2))

    opt = optax.sgd(LR, momentum=MOMENTUM)
    params = eqx.filter(model, eqx.is_array)

    @eqx.filter_jit
    def step(m, s, x, y):
        loss, grads = eqx.filter_value_and_grad(
            lambda q: _sce(mixed(forward, workload)(q, x), y))(m)
        updates, s = opt.update(grads, s, eqx.filter(m, eqx.is_array))
        return eqx.apply_updates(m, updates), s, loss

    return step, (model, opt.init(params), x, y)


def _equinox_stateful(forward, model, state, x, y):
    """An Equinox SGD-momentum step for ``forward(model, state, x) -> (logits, state)``."""
    import equinox as eqx

    opt = optax.sgd(LR, momentum=MOMENTUM)

    @eqx.filter_jit
    def step(m, opt_state, s, x, y):
        def loss(q):
            logits, new_s = forward(q, s, x)
            return _sce(logits, y), new_s

        (value, s), grads = eqx.filter_value_and_grad(loss, has_aux=True)(m)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(m, eqx.is_array))
        return eqx.apply_updates(m, updates), opt_state, s, value

    return step, (model, opt.init(eqx.filter(model, eqx.is_array)), state, x, y)


def contender_haiku(workload, x, y):
    if workload == "E":
        return _stateful_optax_step(*resnet_contenders.haiku(x), x, y)
    import haiku as hk

    def net(h):
        if workload in MLP_SIZES:
            return hk.nets.MLP(MLP_SIZES[workload][1:])(h)
        for features in (32, 64):
            h = jax.nn.relu(hk.Conv2D(features, 3)(h))
            h = hk.max_pool(h, 2, 2, "VALID")
        return hk.Linear(10)(h.reshape(h.shape[0], -1))

    model = hk.without_apply_rng(hk.transform(net))
    return _optax_step(mixed(model.apply, workload), model.init(jax.random.key(0), x), x, y)


class _TorchResult:
    """A torch tensor that `jax.block_until_ready` can wait on (it calls this method)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def block_until_ready(self):
        import torch

        if self.tensor.is_cuda:
            torch.cuda.synchronize()
        return self


def contender_torch(workload, x, y):
    import torch

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if workload in MLP_SIZES:
        sizes = MLP_SIZES[workload]
        layers = []
        for a, b in itertools.pairwise(sizes):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        model = torch.nn.Sequential(*layers[:-1])
        tx = torch.tensor(np.asarray(x))
    else:
        model = resnet_contenders.torch_model() if workload == "E" else torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(7 * 7 * 64, 10))
        tx = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
    model = model.to(device)
    tx, ty = tx.to(device), torch.tensor(np.asarray(y), dtype=torch.long, device=device)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    mixed_precision = compute_dtype(workload) == jnp.bfloat16
    if mixed_precision and device == "cpu":
        raise RuntimeError("bfloat16 autocast is only benchmarked on CUDA")

    def step(x, y):
        opt.zero_grad()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=mixed_precision):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        return _TorchResult(loss.detach())

    return step, (tx, ty)


def _arrays_apart(tree):
    """``(arrays, rebuild)``: the array leaves of ``tree`` and a function that puts new ones
    back beside its other leaves (an Equinox model's activation functions, say)."""
    leaves, treedef = jax.tree.flatten(tree)
    where = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.Array)]

    def rebuild(arrays):
        merged = list(leaves)
        for i, array in zip(where, arrays, strict=True):
            merged[i] = array
        return jax.tree.unflatten(treedef, merged)

    return [leaves[i] for i in where], rebuild


def in_scan(step, args, steps: int):
    """``steps`` calls of ``step`` as one compiled ``lax.scan``, as a training run calls it.

    ``step(*args)`` returns the new values of its leading arguments (params, optimizer
    state, ...) and then the loss; the trailing arguments (the batch) stay fixed. PyTorch's
    step is called ``steps`` times in a Python loop, its way of training. Returns None for a
    step that returns no tuple (Flax NNX's updates its model in place).
    """
    out = step(*args)  # Compiles the step alone: its outputs say what it carries.
    if not isinstance(out, tuple):
        return None
    carried = len(out) - 1
    arrays, rebuild = _arrays_apart(args[:carried])

    @jax.jit
    def run(arrays, fixed):
        def body(carry, _):
            out = step(*rebuild(carry), *fixed)
            return _arrays_apart(out[:-1])[0], out[-1]

        carry, losses = jax.lax.scan(body, arrays, None, length=steps)
        return carry, losses[-1]

    return run, (arrays, args[carried:])


def in_python_loop(step, args, steps: int):
    """``steps`` calls of a (PyTorch) step in a Python loop, as one call."""
    def run(*args):
        for _ in range(steps):
            out = step(*args)
        return out

    return run, args


def scanned(contenders: dict, steps: int) -> tuple[dict, list[str]]:
    """Every contender as ``steps`` steps per call (`in_scan`; PyTorch `in_python_loop`),
    and the names of those that cannot be scanned."""
    out, skipped = {}, []
    for name, (step, args) in contenders.items():
        looped = (in_python_loop if name.startswith("PyTorch") else in_scan)(step, args, steps)
        if looped is None:
            skipped.append(f"{name} (its step updates its model in place; not scanned)")
        else:
            out[name] = looped
    return out, skipped


PEERS = {  # name -> (module that must be importable, builder)
    "Flax Linen": ("flax", contender_linen),
    "Flax NNX": ("flax", contender_nnx),
    "Equinox": ("equinox", contender_equinox),
    "Haiku": ("haiku", contender_haiku),
    "PyTorch eager": ("torch", contender_torch),
}


def matmul_gflops(rounds: int, size: int = 1024, dtype=jnp.float32) -> float:
    """A plain ``size``^3 matmul's GFLOP/s on the default device."""
    a = jax.random.normal(jax.random.key(1), (size, size)).astype(dtype)
    timing = benchmarking.compare({"matmul": (jax.jit(lambda a: a @ a), (a,))},
                                  rounds=rounds, calls_per_round=10)["matmul"]
    return 2 * size**3 / (timing.median_us * 1e-6) / 1e9


def step_flops(workload: str) -> int:
    """Multiply-add FLOPs of one MLP train step: forward, weight gradients, and input
    gradients of every layer but the first (the data needs none)."""
    sizes = MLP_SIZES[workload]
    weights = [a * b for a, b in itertools.pairwise(sizes)]
    return 2 * BATCH[workload] * (3 * sum(weights) - weights[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchmarking.add_timing_flags(parser)
    parser.add_argument("--only", choices=["A", "B", "D", "E"])
    parser.add_argument("--scan", type=int, default=0, metavar="K",
                        help="time K steps per call: the JAX contenders' in one lax.scan (as "
                             "a jaxnn training run does), PyTorch's in its Python loop; "
                             "reported per step")
    benchmarking.add_host_flags(parser)
    args = parser.parse_args()
    host_line = benchmarking.setup_host(args)
    on_gpu = jax.devices()[0].platform == "gpu"
    print(f"devices: {jax.devices()}; jax {jax.__version__}; {time.strftime('%Y-%m-%d')}; "
          f"{host_line}")
    workloads = [args.only] if args.only else ["A", "B", "E"] + (["D"] if on_gpu else [])
    for workload in workloads:
        batch = BATCH[workload]
        x = jax.random.normal(jax.random.key(2), input_shape(workload))
        y = jax.random.randint(jax.random.key(3), (batch,), 0, 10)
        contenders = {"raw JAX": contender_raw(workload, x, y),
                      "jaxnn (jax.grad)": contender_jaxnn(workload, x, y),
                      "jaxnn (manual rules)": contender_jaxnn(workload, x, y, "manual")}
        skipped = []
        for name, (module, build) in PEERS.items():
            if importlib.util.find_spec(module) is None:
                skipped.append(name)
                continue
            try:
                contenders[name] = build(workload, x, y)
            except Exception as error:  # A peer's API drift must not stop the others.
                skipped.append(f"{name} ({type(error).__name__}: {error})")
        if args.scan:
            contenders, unscanned = scanned(contenders, args.scan)
            skipped += unscanned
        timings = benchmarking.compare(contenders, rounds=args.rounds,
                                       calls_per_round=args.calls)
        if args.scan:
            timings = {name: benchmarking.per_call(t, args.scan) for name, t in timings.items()}
        dtype = jnp.dtype(compute_dtype(workload)).name
        print(f"\nworkload {workload}, batch {batch}, {dtype} compute: one SGD-momentum "
              "train step" + (f" (of {args.scan} in a lax.scan / PyTorch's loop; the first "
                              "call's time is the scan's)" if args.scan else ""))
        print(benchmarking.table(timings, "raw JAX"))
        print("\nround by round (the median of the per-round ratios):")
        print(benchmarking.paired_table(timings, "jaxnn (jax.grad)"))
        for name in skipped:
            print(f"  skipped: {name}")
        if workload in MLP_SIZES:
            size = 8192 if workload == "D" else 1024
            peak = matmul_gflops(args.rounds, size, compute_dtype(workload))
            print(f"  plain {dtype} matmul ({size}^3) in the same run: {peak:,.0f} GFLOP/s")
            for name in ("raw JAX", "jaxnn (jax.grad)"):
                achieved = step_flops(workload) / (timings[name].median_us * 1e-6) / 1e9
                print(f"  {name}: {achieved:,.0f} GFLOP/s ({achieved / peak:.0%} of the matmul)")


if __name__ == "__main__":
    main()
