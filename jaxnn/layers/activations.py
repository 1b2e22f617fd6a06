"""Activation layers, each with its derivative for the manual delta rule.

An elementwise activation ``y = g(z)`` passes ``dz = dy ⊙ g'(z)`` back; ``g'`` is written
from whichever of ``z`` (the layer input) and ``y`` (its output) makes it cheapest, e.g.
``sigmoid' = y (1 - y)`` and ``tanh' = 1 - y^2``. Softmax and LogSoftmax are not elementwise:
their rules contract ``dy`` with the Jacobian along ``axis``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxnn.layer import Layer, Shape


def _activation(
    name: str,
    fn: Callable[[jax.Array], jax.Array],
    input_grad: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
) -> Layer:
    """A parameter-free, shape-preserving layer with ``dx = input_grad(x, y, dy)``."""

    def init(key: jax.Array, input_shape: Shape):
        del key  # No parameters.
        return tuple(input_shape), ()

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        return fn(x)

    def backward(params, x, y, dy, *, key=None, train=False):
        del params, key, train
        return (), input_grad(x, y, dy)

    return Layer(init, apply, backward, name=name)


def Identity() -> Layer:
    """``y = z``."""
    return _activation("Identity()", lambda x: x, lambda x, y, dy: dy)


def Sigmoid() -> Layer:
    """``y = 1 / (1 + exp(-z))``; ``g' = y (1 - y)``."""
    return _activation("Sigmoid()", jax.nn.sigmoid, lambda x, y, dy: dy * y * (1 - y))


def Tanh() -> Layer:
    """``y = tanh(z)``; ``g' = 1 - y^2``."""
    return _activation("Tanh()", jnp.tanh, lambda x, y, dy: dy * (1 - y * y))


def Relu() -> Layer:
    """``y = max(z, 0)``; ``g' = 1[z > 0]`` (0 at z = 0, as ``jax.grad`` of ``jax.nn.relu``)."""
    return _activation(
        "Relu()", jax.nn.relu, lambda x, y, dy: jnp.where(x > 0, dy, jnp.zeros_like(dy))
    )


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """``y = z`` for ``z >= 0``, else ``negative_slope * z``."""

    def fn(x):
        return jnp.where(x >= 0, x, negative_slope * x)

    def input_grad(x, y, dy):
        return jnp.where(x >= 0, dy, negative_slope * dy)

    return _activation(f"LeakyRelu({negative_slope})", fn, input_grad)


def Gelu(approximate: bool = True) -> Layer:
    """Gaussian error linear unit, ``z Φ(z)``; ``approximate`` uses the tanh form (JAX's default).

    The exact derivative is ``Φ(z) + z φ(z)``; the tanh form's is
    ``0.5 (1 + t) + 0.5 z (1 - t^2) c (1 + 3 a z^2)`` with ``t = tanh(c (z + a z^3))``,
    ``c = sqrt(2 / π)``, ``a = 0.044715``.
    """
    c, a = math.sqrt(2 / math.pi), 0.044715

    def input_grad(x, y, dy):
        del y
        if approximate:
            t = jnp.tanh(c * (x + a * x**3))
            slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * a * x * x)
        else:
            cdf = 0.5 * (1 + jax.lax.erf(x / math.sqrt(2)))
            pdf = jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
            slope = cdf + x * pdf
        return dy * slope

    return _activation(
        f"Gelu(approximate={approximate})",
        lambda x: jax.nn.gelu(x, approximate=approximate),
        input_grad,
    )


def Softplus() -> Layer:
    """``y = log(1 + exp(z))``; ``g' = sigmoid(z)``."""
    return _activation("Softplus()", jax.nn.softplus, lambda x, y, dy: dy * jax.nn.sigmoid(x))


def Softmax(axis: int = -1) -> Layer:
    """``y = exp(z) / sum(exp(z))`` along ``axis``; ``dz = y ⊙ (dy - sum(dy ⊙ y))``."""

    def input_grad(x, y, dy):
        del x
        return y * (dy - jnp.sum(dy * y, axis=axis, keepdims=True))

    return _activation(f"Softmax(axis={axis})", lambda x: jax.nn.softmax(x, axis=axis),
                       input_grad)


def LogSoftmax(axis: int = -1) -> Layer:
    """``y = z - logsumexp(z)`` along ``axis``; ``dz = dy - exp(y) sum(dy)``."""

    def input_grad(x, y, dy):
        del x
        return dy - jnp.exp(y) * jnp.sum(dy, axis=axis, keepdims=True)

    return _activation(f"LogSoftmax(axis={axis})", lambda x: jax.nn.log_softmax(x, axis=axis),
                       input_grad)


ACTIVATIONS: dict[str, Callable[..., Layer]] = {
    "identity": Identity,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": Relu,
    "leaky_relu": LeakyRelu,
    "gelu": Gelu,
    "softplus": Softplus,
    "softmax": Softmax,
    "log_softmax": LogSoftmax,
}
