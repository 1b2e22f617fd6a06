"""Workload E of `benchmark.py`: one residual CNN with BatchNorm, written in every framework.

The network (NHWC input 32x32x3, 10 classes): a 3x3 convolution to 16 channels, BatchNorm,
ReLU; then three stages of two residual blocks with 16, 32 and 64 channels, the first block
of the second and third stage halving the image (stride 2) with a 1x1 strided projection and
BatchNorm on its shortcut; global average pooling and a dense layer. A block is
``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; convolutions have no bias (BatchNorm
follows each). BatchNorm runs in training mode: batch statistics, running statistics updated
with momentum 0.9 (PyTorch's 0.1), epsilon 1e-5. Each builder returns ``(step, args)`` for
one SGD-momentum train step, as the other workloads' builders in `benchmark.py` do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxnn

STAGES = ((16, 1), (32, 2), (64, 2))  # (channels, stride of the stage's first block)
BLOCKS_PER_STAGE = 2
STEM = 16
CLASSES = 10
KEEP, EPSILON = 0.9, 1e-5  # BatchNorm: share of the running statistics kept per step


def blocks():
    """``(in_channels, out_channels, stride)`` of every residual block, in order."""
    channels, out = STEM, []
    for width, stride in STAGES:
        for index in range(BLOCKS_PER_STAGE):
            out.append((channels, width, stride if index == 0 else 1))
            channels = width
    return out


def jaxnn_net():
    def conv_bn(features, kernel_size=3, stride=1):
        return (jaxnn.Conv2D(features, kernel_size, stride=stride, use_bias=False),
                jaxnn.BatchNorm(momentum=KEEP, epsilon=EPSILON))

    layers = [*conv_bn(STEM), jaxnn.Relu()]
    for c_in, c_out, stride in blocks():
        shortcut = None if c_in == c_out and stride == 1 else jaxnn.serial(
            *conv_bn(c_out, 1, stride))
        layers += [jaxnn.Residual(*conv_bn(c_out, 3, stride), jaxnn.Relu(), *conv_bn(c_out),
                                  shortcut=shortcut), jaxnn.Relu()]
    return jaxnn.serial(*layers, jaxnn.GlobalAvgPool(), jaxnn.Dense(CLASSES))


def raw():
    """``(forward, params, state)`` written with jax.lax and jax.numpy."""
    keys = iter(jax.random.split(jax.random.key(0), 32))
    dn = ("NHWC", "HWIO", "NHWC")

    def conv_bn_params(c_in, c_out, size):
        w = jax.random.normal(next(keys), (size, size, c_in, c_out)) / np.sqrt(size**2 * c_in)
        return ({"w": w, "scale": jnp.ones(c_out), "bias": jnp.zeros(c_out)},
                {"mean": jnp.zeros(c_out), "var": jnp.ones(c_out)})

    def conv_bn(p, m, h, stride):
        h = jax.lax.conv_general_dilated(h, p["w"], (stride, stride), "SAME",
                                         dimension_numbers=dn)
        mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
        y = (h - mean) * jax.lax.rsqrt(var + EPSILON) * p["scale"] + p["bias"]
        new_m = {"mean": KEEP * m["mean"] + (1 - KEEP) * jax.lax.stop_gradient(mean),
                 "var": KEEP * m["var"] + (1 - KEEP) * jax.lax.stop_gradient(var)}
        return y, new_m

    params, state = {}, {}
    params["stem"], state["stem"] = conv_bn_params(3, STEM, 3)
    for i, (c_in, c_out, _) in enumerate(blocks()):
        for name, a, size in (("a", c_in, 3), ("b", c_out, 3), ("proj", c_in, 1)):
            if name != "proj" or c_in != c_out:
                params[f"{i}{name}"], state[f"{i}{name}"] = conv_bn_params(a, c_out, size)
    params["dense"] = {"w": jax.random.normal(next(keys), (64, CLASSES)) / 8,
                       "b": jnp.zeros(CLASSES)}

    def forward(p, m, x):
        new = {}
        h, new["stem"] = conv_bn(p["stem"], m["stem"], x, 1)
        h = jax.nn.relu(h)
        for i, (_, _, stride) in enumerate(blocks()):
            shortcut = h
            if f"{i}proj" in p:
                shortcut, new[f"{i}proj"] = conv_bn(p[f"{i}proj"], m[f"{i}proj"], h, stride)
            r, new[f"{i}a"] = conv_bn(p[f"{i}a"], m[f"{i}a"], h, stride)
            r, new[f"{i}b"] = conv_bn(p[f"{i}b"], m[f"{i}b"], jax.nn.relu(r), 1)
            h = jax.nn.relu(r + shortcut)
        return h.mean(axis=(1, 2)) @ p["dense"]["w"] + p["dense"]["b"], new

    return forward, params, state


def linen(x):
    """``(forward, params, batch_stats)`` of a Flax Linen module."""
    import flax.linen as nn

    class Model(nn.Module):
        @nn.compact
        def __call__(self, h):
            def conv_bn(h, features, size=3, stride=1):
                h = nn.Conv(features, (size, size), (stride, stride), use_bias=False)(h)
                return nn.BatchNorm(use_running_average=False, momentum=KEEP,
                                    epsilon=EPSILON)(h)

            h = nn.relu(conv_bn(h, STEM))
            for c_in, c_out, stride in blocks():
                shortcut = h if c_in == c_out else conv_bn(h, c_out, 1, stride)
                r = conv_bn(nn.relu(conv_bn(h, c_out, 3, stride)), c_out)
                h = nn.relu(r + shortcut)
            return nn.Dense(CLASSES)(h.mean(axis=(1, 2)))

    model = Model()
    variables = model.init(jax.random.key(0), x)

    def forward(p, m, x):
        logits, updates = model.apply({"params": p, "batch_stats": m}, x,
                                      mutable=["batch_stats"])
        return logits, updates["batch_stats"]

    return forward, variables["params"], variables["batch_stats"]


def nnx():
    """A Flax NNX module in training mode (its BatchNorm statistics are mutable state)."""
    from flax import nnx

    class ConvBN(nnx.Module):
        def __init__(self, c_in, c_out, size, stride, rngs):
            self.conv = nnx.Conv(c_in, c_out, (size, size), (stride, stride), use_bias=False,
                                 rngs=rngs)
            self.bn = nnx.BatchNorm(c_out, momentum=KEEP, epsilon=EPSILON, rngs=rngs)

        def __call__(self, h):
            return self.bn(self.conv(h))

    class Block(nnx.Module):
        def __init__(self, c_in, c_out, stride, rngs):
            self.a = ConvBN(c_in, c_out, 3, stride, rngs)
            self.b = ConvBN(c_out, c_out, 3, 1, rngs)
            self.proj = None if c_in == c_out else ConvBN(c_in, c_out, 1, stride, rngs)

        def __call__(self, h):
            shortcut = h if self.proj is None else self.proj(h)
            return nnx.relu(self.b(nnx.relu(self.a(h))) + shortcut)

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.stem = ConvBN(3, STEM, 3, 1, rngs)
            self.blocks = nnx.List([Block(*spec, rngs) for spec in blocks()])
            self.dense = nnx.Linear(STAGES[-1][0], CLASSES, rngs=rngs)

        def __call__(self, h):
            h = nnx.relu(self.stem(h))
            for block in self.blocks:
                h = block(h)
            return self.dense(h.mean(axis=(1, 2)))

    model = Model(nnx.Rngs(0))
    model.train()  # BatchNorm with batch statistics, updating its running ones.
    return model


def equinox():
    """``(forward, model, state)`` of Equinox modules: ``forward(model, state, x)`` vmaps one
    CHW example's function over the batch axis named "batch" (BatchNorm's statistics)."""
    import equinox as eqx

    keys = iter(jax.random.split(jax.random.key(0), 32))

    def conv_bn(c_in, c_out, size=3, stride=1):
        return (eqx.nn.Conv2d(c_in, c_out, size, stride, padding=size // 2, use_bias=False,
                              key=next(keys)),
                eqx.nn.BatchNorm(c_out, "batch", eps=EPSILON, momentum=KEEP, mode="batch"))

    layers = {"stem": conv_bn(3, STEM)}
    for i, (c_in, c_out, stride) in enumerate(blocks()):
        layers[f"{i}a"], layers[f"{i}b"] = conv_bn(c_in, c_out, 3, stride), conv_bn(c_out, c_out)
        if c_in != c_out:
            layers[f"{i}proj"] = conv_bn(c_in, c_out, 1, stride)
    layers["dense"] = eqx.nn.Linear(STAGES[-1][0], CLASSES, key=next(keys))
    model, bn_state = eqx.nn.make_with_state(lambda: layers)()

    def one(m, s, h):  # One CHW example, inside vmap over the batch axis "batch".
        def apply(name, h, s):
            conv, bn = m[name]
            return bn(conv(h), s)

        h, s = apply("stem", h, s)
        h = jax.nn.relu(h)
        for i in range(len(blocks())):
            shortcut = h
            if f"{i}proj" in m:
                shortcut, s = apply(f"{i}proj", h, s)
            r, s = apply(f"{i}a", h, s)
            r, s = apply(f"{i}b", jax.nn.relu(r), s)
            h = jax.nn.relu(r + shortcut)
        return m["dense"](h.mean(axis=(1, 2))), s

    def forward(m, s, x):
        return jax.vmap(one, axis_name="batch", in_axes=(None, None, 0), out_axes=(0, None))(
            m, s, x.transpose(0, 3, 1, 2))

    return forward, model, bn_state


def haiku(x):
    """``(forward, params, state)`` of a Haiku ``transform_with_state``."""
    import haiku as hk

    def net(h):
        def conv_bn(h, features, size=3, stride=1):
            h = hk.Conv2D(features, size, stride, with_bias=False)(h)
            return hk.BatchNorm(True, True, KEEP, EPSILON)(h, is_training=True)

        h = jax.nn.relu(conv_bn(h, STEM))
        for c_in, c_out, stride in blocks():
            shortcut = h if c_in == c_out else conv_bn(h, c_out, 1, stride)
            h = jax.nn.relu(conv_bn(jax.nn.relu(conv_bn(h, c_out, 3, stride)), c_out) + shortcut)
        return hk.Linear(CLASSES)(h.mean(axis=(1, 2)))

    model = hk.without_apply_rng(hk.transform_with_state(net))
    params, state = model.init(jax.random.key(0), x)
    return model.apply, params, state


def torch_model():
    """A torch.nn.Module (NCHW), in training mode as built."""
    import torch

    def conv_bn(c_in, c_out, size=3, stride=1):
        return torch.nn.Sequential(
            torch.nn.Conv2d(c_in, c_out, size, stride, padding=size // 2, bias=False),
            torch.nn.BatchNorm2d(c_out, eps=EPSILON, momentum=1 - KEEP))

    class Block(torch.nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.residual = torch.nn.Sequential(conv_bn(c_in, c_out, 3, stride),
                                                torch.nn.ReLU(), conv_bn(c_out, c_out))
            self.shortcut = (torch.nn.Identity() if c_in == c_out
                             else conv_bn(c_in, c_out, 1, stride))

        def forward(self, h):
            return torch.relu(self.residual(h) + self.shortcut(h))

    return torch.nn.Sequential(conv_bn(3, STEM), torch.nn.ReLU(),
                               *[Block(*spec) for spec in blocks()],
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(STAGES[-1][0], CLASSES))
