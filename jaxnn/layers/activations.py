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

from jaxnn.layer import (
    Layer,
    Shape,
    ShapeError,
    check_bool,
    check_single,
    is_integer,
    is_real,
    stateless,
)


def _activation(
    name: str,
    fn: Callable[[jax.Array], jax.Array],
    input_grad: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    axis: int | None = None,
) -> Layer:
    """A parameter-free, shape-preserving layer with ``dx = input_grad(x, y, dy)``; one that
    works along ``axis`` checks at init that its input has that axis."""

    def init(key: jax.Array, input_shape: Shape):
        del key  # No parameters.
        check_single(name, input_shape)
        if axis is not None and not -len(input_shape) <= axis < len(input_shape):
            raise ShapeError(f"{name}: axis {axis} is out of range for input of shape "
                             f"{tuple(input_shape)}")
        if axis is not None and axis % len(input_shape) == 0:  # as FanInConcat refuses it
            raise ShapeError(f"{name}: axis {axis} is the batch axis of input of shape "
                             f"{tuple(input_shape)}: each example's output would depend on "
                             "the others in its batch")
        return tuple(input_shape), ()

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        return fn(x)

    def backward(params, x, y, dy, *, key=None, train=False):
        del params, key, train
        return (), input_grad(x, y, dy)

    return stateless(init, apply, backward, name=name)


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
    """``y = z`` for ``z >= 0``, else ``negative_slope * z``.

    Raises:
      ValueError: for a ``negative_slope`` that is not a finite number.
    """
    if not is_real(negative_slope) or not math.isfinite(negative_slope):
        raise ValueError(f"LeakyRelu: negative_slope must be a finite number, got "
                         f"{negative_slope!r}")

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
    approximate = check_bool(approximate, "approximate", "Gelu")
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


def _elu_slope(x: jax.Array) -> jax.Array:
    """``e^z`` for ``z <= 0``, written ``expm1(z) + 1`` as ``jax.grad`` of
    ``jax.nn.elu`` computes it (bit for bit); the input is clamped to 0 above 0, where
    the slope is not used, so that ``expm1`` cannot overflow."""
    return jnp.expm1(jnp.where(x > 0, jnp.zeros_like(x), x)) + 1


def _check_alpha(layer: str, alpha: float) -> None:
    if not is_real(alpha) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"{layer}: alpha must be a positive finite number, got {alpha!r}")


def _check_axis(layer: str, axis: int) -> int:
    if not is_integer(axis):
        raise ValueError(f"{layer}: axis must be an int, got {axis!r}")
    return int(axis)


def Elu(alpha: float = 1.0) -> Layer:
    """Exponential linear unit: ``y = z`` for ``z > 0``, else ``alpha (e^z - 1)``.

    The rule: ``g' = 1`` for ``z > 0``, else ``alpha e^z`` (``= y + alpha``), so
    ``dz = dy`` where ``z > 0`` and ``dz = alpha dy e^z`` elsewhere -- ``alpha`` at ``z = 0``,
    as ``jax.grad`` of ``jax.nn.elu`` gives. ``e^z`` is computed as ``expm1(z) + 1``, as
    ``jax.grad`` does, so the two agree bit for bit.

    Args:
      alpha: the saturation value: ``y -> -alpha`` as ``z -> -inf``; a positive number.

    Raises:
      ValueError: for an ``alpha`` that is not a positive finite number.
    """
    _check_alpha("Elu", alpha)

    def input_grad(x, y, dy):
        del y
        return jnp.where(x > 0, dy, alpha * dy * _elu_slope(x))

    return _activation(f"Elu({alpha})", lambda x: jax.nn.elu(x, alpha), input_grad)


# The fixed point constants of "Self-Normalizing Neural Networks" (Klambauer et al., 2017),
# as jax.nn.selu uses them.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def Selu() -> Layer:
    """Scaled ELU: ``y = scale z`` for ``z > 0``, else ``scale alpha (e^z - 1)``, with
    ``alpha = 1.6733`` and ``scale = 1.0507`` (`SELU_ALPHA`, `SELU_SCALE`).

    The rule: ``dz = scale dy`` where ``z > 0``, else ``scale alpha dy e^z`` (``scale alpha``
    at ``z = 0``, as ``jax.grad`` of ``jax.nn.selu`` gives).
    """

    def input_grad(x, y, dy):
        del y
        scaled = SELU_SCALE * dy
        return jnp.where(x > 0, scaled, SELU_ALPHA * scaled * _elu_slope(x))

    return _activation("Selu()", jax.nn.selu, input_grad)


def Silu() -> Layer:
    """Sigmoid linear unit (swish): ``y = z sigmoid(z)``.

    The rule, with ``s = sigmoid(z)``: ``g' = s + z s (1 - s)``, so
    ``dz = dy s + z dy s (1 - s)``.
    """

    def input_grad(x, y, dy):
        del y
        s = jax.nn.sigmoid(x)
        return dy * s + (x * dy) * (s * (1 - s))

    return _activation("Silu()", jax.nn.silu, input_grad)


def Softmax(axis: int = -1) -> Layer:
    """``y = exp(z) / sum(exp(z))`` along ``axis``; ``dz = y ⊙ (dy - sum(dy ⊙ y))``."""
    axis = _check_axis("Softmax", axis)

    def input_grad(x, y, dy):
        del x
        return y * (dy - jnp.sum(dy * y, axis=axis, keepdims=True))

    return _activation(f"Softmax(axis={axis})", lambda x: jax.nn.softmax(x, axis=axis),
                       input_grad, axis)


def LogSoftmax(axis: int = -1) -> Layer:
    """``y = z - logsumexp(z)`` along ``axis``; ``dz = dy - exp(y) sum(dy)``."""
    axis = _check_axis("LogSoftmax", axis)

    def input_grad(x, y, dy):
        del x
        return dy - jnp.exp(y) * jnp.sum(dy, axis=axis, keepdims=True)

    return _activation(f"LogSoftmax(axis={axis})", lambda x: jax.nn.log_softmax(x, axis=axis),
                       input_grad, axis)


ACTIVATIONS: dict[str, Callable[..., Layer]] = {
    "identity": Identity,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": Relu,
    "leaky_relu": LeakyRelu,
    "gelu": Gelu,
    "softplus": Softplus,
    "elu": Elu,
    "selu": Selu,
    "silu": Silu,
    "softmax": Softmax,
    "log_softmax": LogSoftmax,
}
