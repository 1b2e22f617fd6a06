"""Networks built from the ``[model]`` section of a config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxnn import layers as L
from jaxnn.config import Config, ConfigError, ModelConfig
from jaxnn.layer import Layer, ShapeError, serial
from jaxnn.summary import shapes

LAYER_TYPES: dict[str, Callable[..., Layer]] = {
    "Dense": L.Dense, "Conv2D": L.Conv2D, "MaxPool2D": L.MaxPool2D, "AvgPool2D": L.AvgPool2D,
    "Flatten": L.Flatten, "Dropout": L.Dropout, "Identity": L.Identity, "Sigmoid": L.Sigmoid,
    "Tanh": L.Tanh, "Relu": L.Relu, "LeakyRelu": L.LeakyRelu, "Gelu": L.Gelu,
    "Softplus": L.Softplus, "Softmax": L.Softmax, "LogSoftmax": L.LogSoftmax,
}
_SPATIAL = ("Conv2D", "MaxPool2D", "AvgPool2D")


def uses_images(model: ModelConfig) -> bool:
    """Whether the network takes NHWC images (it has a convolution or pooling layer)."""
    return any(spec.get("type") in _SPATIAL for spec in model.layers)


def _tuples(value: Any) -> Any:
    """TOML lists become tuples (kernel sizes, strides, paddings)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# The MLP shorthand's weight initializer (a sweep rescales its draws across widths by it).
MLP_W_INIT = "lecun_normal"


def _masked(activation: Layer, mask: Any) -> Layer:
    """``activation(x) * mask`` for a 0/1 unit mask (packed sweeps), with the same params
    structure as the bare activation; the rule masks ``dy`` before the activation's rule."""

    def apply(params, x, *, key=None, train=False):
        y = activation.apply(params, x, key=key, train=train)
        return y * mask[None, :].astype(y.dtype)

    def backward(params, x, y, dy, *, key=None, train=False):
        del y  # The activation's own output is recomputed below.
        unmasked = activation.apply(params, x, key=key, train=train)
        masked_dy = dy * mask[None, :].astype(dy.dtype)
        return activation.backward(params, x, unmasked, masked_dy, key=key, train=train)

    return Layer(activation.init, apply, backward, name=activation.name)


def build(
    model: ModelConfig,
    output_size: int,
    *,
    dropout: Any = None,
    hidden_mask: Any = None,
    source: str = "<config>",
) -> Layer:
    """The network a ``[model]`` section describes.

    Args:
      model: the validated section.
      output_size: units of the MLP shorthand's output layer (classes or regression outputs).
      dropout: the rate of Dropout layers that give none of their own; may be a traced
        array, so a sweep can vary it inside one compiled program. Defaults to
        ``model.dropout``.
      hidden_mask: a 0/1 vector as wide as the hidden layers, applied after each hidden
        activation of the MLP shorthand (packing trials of different widths).
      source: the config file, for error messages.

    Raises:
      ConfigError: naming ``model.layers[i]`` for an unknown type or bad arguments.
    """
    rate = model.dropout if dropout is None else dropout
    if not model.layers:
        activation = L.ACTIVATIONS.get(model.activation)
        if activation is None:
            raise ConfigError(source, "model.activation", f"unknown activation "
                              f"{model.activation!r}; known: {', '.join(L.ACTIVATIONS)}")
        hidden = []
        for width in model.hidden:
            act = activation() if hidden_mask is None else _masked(activation(), hidden_mask)
            hidden += [L.Dense(width, w_init=MLP_W_INIT), act]
            if model.dropout > 0:
                hidden.append(L.Dropout(rate))
        return serial(*hidden, L.Dense(output_size))
    built = []
    for index, spec in enumerate(model.layers):
        key = f"model.layers[{index}]"
        kind = spec["type"]
        if kind not in LAYER_TYPES:
            raise ConfigError(source, key, f"unknown layer type {kind!r}; known: "
                              f"{', '.join(LAYER_TYPES)}")
        kwargs = {k: _tuples(v) for k, v in spec.items() if k != "type"}
        if kind == "Dropout" and "rate" not in kwargs:
            kwargs["rate"] = rate
        try:
            built.append(LAYER_TYPES[kind](**kwargs))
        except (TypeError, ValueError) as error:
            raise ConfigError(source, key, f"{kind}: {error}") from None
    return serial(*built)


def check(config: Config, input_shape: tuple[int, ...], output_size: int) -> Layer:
    """Builds the network and checks its shapes against the data, without allocating.

    Raises:
      ConfigError: naming the file and ``model.layers`` (and the layer) at fault.
    """
    net = build(config.model, output_size, source=config.source)
    try:
        out_shape, _ = shapes(net, (None, *input_shape))
    except ShapeError as error:
        key = "model.layers" if error.layer_index is None or not config.model.layers \
            else f"model.layers[{error.layer_index}]"
        raise ConfigError(config.source, key,
                          f"{error} (data examples have shape {tuple(input_shape)})") from None
    if tuple(out_shape[1:]) != (output_size,):
        raise ConfigError(config.source, "model.layers",
                          f"the network outputs shape {out_shape}, the data needs "
                          f"(None, {output_size})")
    return net
