"""Networks built from the ``[model]`` section of a config."""

from __future__ import annotations

import collections.abc
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from jaxnn import combinators as C
from jaxnn import layers as L
from jaxnn.config import Config, ConfigError, ModelConfig
from jaxnn.layer import Layer, ShapeError, is_integer
from jaxnn.summary import shapes

LAYER_TYPES: dict[str, Callable[..., Layer]] = {
    "Dense": L.Dense, "Conv1D": L.Conv1D, "Conv2D": L.Conv2D,
    "Conv2DTranspose": L.Conv2DTranspose, "MaxPool2D": L.MaxPool2D, "AvgPool2D": L.AvgPool2D,
    "SumPool2D": L.SumPool2D, "GlobalAvgPool": L.GlobalAvgPool,
    "Flatten": L.Flatten, "Dropout": L.Dropout, "Identity": L.Identity, "Sigmoid": L.Sigmoid,
    "Tanh": L.Tanh, "Relu": L.Relu, "LeakyRelu": L.LeakyRelu, "Gelu": L.Gelu,
    "Softplus": L.Softplus, "Elu": L.Elu, "Selu": L.Selu, "Silu": L.Silu,
    "Softmax": L.Softmax, "LogSoftmax": L.LogSoftmax,
    "BatchNorm": L.BatchNorm, "LayerNorm": L.LayerNorm, "GroupNorm": L.GroupNorm,
    "FanOut": C.FanOut, "FanInSum": C.FanInSum, "FanInConcat": C.FanInConcat,
}
# Combinators whose tables nest lists of layer tables: the key holding them, and whether it
# is a list of branches (each a list of layers) rather than one list of layers.
NESTED_TYPES = {"Serial": ("layers", False), "Residual": ("layers", False),
                "Parallel": ("branches", True)}
# Layers that take NHWC images: a network with one gets the data as images, else flattened.
# Conv1D is not here: it takes (batch, length, channels), a layout the data never comes in.
_SPATIAL = ("Conv2D", "Conv2DTranspose", "MaxPool2D", "AvgPool2D", "SumPool2D",
            "GlobalAvgPool", "Conv1D")


def layer_specs(layers: Any) -> list[dict]:
    """Every layer table in ``layers``, nested ones included."""
    found = []
    for spec in layers:
        if not isinstance(spec, dict):
            continue
        found.append(spec)
        for key in ("layers", "shortcut"):
            if isinstance(spec.get(key), list):
                found += layer_specs(spec[key])
        for branch in spec.get("branches", []) if isinstance(spec.get("branches"), list) else []:
            if isinstance(branch, list):
                found += layer_specs(branch)
    return found


def uses_images(model: ModelConfig) -> bool:
    """Whether the network takes each example in its own shape -- NHWC images, or (L, C)
    sequences for a Conv1D -- rather than flattened (it has a convolution or pooling
    layer)."""
    return any(spec.get("type") in _SPATIAL for spec in layer_specs(model.layers))


def _tuples(value: Any) -> Any:
    """TOML lists become tuples (kernel sizes, strides, paddings)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# The MLP shorthand's weight initializer (a sweep rescales its draws across widths by it).
MLP_W_INIT = "lecun_normal"


def masked(layer: Layer, mask: Any) -> Layer:
    """``layer`` with its output's last axis (units, channels) times a 0/1 ``mask``, for
    packed sweeps: the same params and state; the rule masks ``dy`` before ``layer``'s own."""

    def times_mask(y):
        return y * mask.reshape((1,) * (y.ndim - 1) + mask.shape).astype(y.dtype)

    def apply(params, state, x, *, key=None, train=False):
        y, state = layer.apply(params, state, x, key=key, train=train)
        return times_mask(y), state

    def backward(params, state, x, y, dy, *, key=None, train=False):
        del y  # The layer's own (unmasked) output is recomputed below.
        unmasked, _ = layer.apply(params, state, x, key=key, train=train)
        return layer.backward(params, state, x, unmasked, times_mask(dy), key=key, train=train)

    reference = None if layer.reference is layer else masked(layer.reference, mask)
    return Layer(layer.init, apply, backward, name=layer.name, reference=reference)


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
      ConfigError: naming ``model.layers[i]`` (``model.layers[i].layers[j]`` when nested)
        for an unknown type or bad arguments.
    """
    return _build(model, output_size, dropout=dropout, hidden_mask=hidden_mask,
                  source=source)[0]


def _build(model, output_size, *, dropout=None, hidden_mask=None, source="<config>"):
    """``(network, {id(layer): config key})``; the keys locate shape errors in the config."""
    rate = model.dropout if dropout is None else dropout
    if not model.layers:
        activation = L.ACTIVATIONS.get(model.activation)
        if activation is None:
            raise ConfigError(source, "model.activation", f"unknown activation "
                              f"{model.activation!r}; known: {', '.join(L.ACTIVATIONS)}")
        hidden = []
        for width in model.hidden:
            act = activation() if hidden_mask is None else masked(activation(), hidden_mask)
            hidden += [L.Dense(width, w_init=MLP_W_INIT), act]
            if model.dropout > 0:
                hidden.append(L.Dropout(rate))
        return C.serial(*hidden, L.Dense(output_size)), {}
    keys: dict[int, str] = {}
    net = C.serial(*_build_layers(model.layers, "model.layers", rate, source, keys))
    return net, keys


def _build_layers(specs, key, rate, source, keys) -> list[Layer]:
    if not isinstance(specs, list | tuple) or not specs:
        raise ConfigError(source, key, "expected a non-empty list of layer tables")
    return [_build_layer(spec, f"{key}[{index}]", rate, source, keys)
            for index, spec in enumerate(specs)]


def _build_layer(spec, key, rate, source, keys) -> Layer:
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ConfigError(source, key, 'expected a table with a "type", e.g. '
                          '{type = "Dense", features = 10}')
    kind = spec["type"]
    if kind in NESTED_TYPES:
        layer = _build_nested(kind, spec, key, rate, source, keys)
    elif kind in LAYER_TYPES:
        kwargs = {k: _tuples(v) for k, v in spec.items() if k != "type"}
        hints = _argument_types(kind)
        for name, value in kwargs.items():
            if name in hints and not _fits(value, hints[name]):
                raise ConfigError(source, f"{key}.{name}", f"{kind}: expected "
                                  f"{_describe(hints[name])}, got {value!r}")
        if kind == "Dropout" and "rate" not in kwargs:
            kwargs["rate"] = rate
        try:
            layer = LAYER_TYPES[kind](**kwargs)
        except (TypeError, ValueError) as error:
            message = str(error)  # Named once: the layers' own messages start with the name.
            if not message.startswith((f"{kind}:", f"{kind}(")):
                message = f"{kind}: {message}"
            name = _argument_at_fault(message, kind, kwargs)
            raise ConfigError(source, key if name is None else f"{key}.{name}",
                              message) from None
    else:
        raise ConfigError(source, key, f"unknown layer type {kind!r}; known: "
                          f"{', '.join([*LAYER_TYPES, *NESTED_TYPES])}")
    keys[id(layer)] = key
    return layer


def with_defaults(layers: Any) -> Any:
    """``model.layers`` as two configs are compared (a resume): every layer table with the
    arguments it leaves out at their defaults, arrays as lists, nested tables too, so that
    ``{type = "BatchNorm"}`` and ``{type = "BatchNorm", epsilon = 1e-5}`` read the same,
    and one int repeated as that int (`_canonical`: ``stride = [1, 1]`` is ``stride = 1``).
    A Dropout's missing rate is left out: it is ``model.dropout``'s."""
    if not isinstance(layers, list | tuple):
        return layers
    result = []
    for spec in layers:
        if isinstance(spec, dict):
            spec = {key: _canonical(value) for key, value in spec.items()}
            if spec.get("type") in LAYER_TYPES:
                for name, default in _defaults(spec["type"]).items():
                    spec.setdefault(name, default)
            for key in ("layers", "shortcut"):
                if key in spec:
                    spec[key] = with_defaults(spec[key])
            if isinstance(spec.get("branches"), list):
                spec["branches"] = [with_defaults(branch) for branch in spec["branches"]]
        result.append(spec)
    return result


@functools.cache
def _defaults(kind: str) -> dict[str, Any]:
    """Layer ``kind``'s arguments that have defaults, at them (Dropout's rate excepted)."""
    try:
        parameters = inspect.signature(LAYER_TYPES[kind]).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: _canonical(p.default) for p in parameters
            if p.default is not inspect.Parameter.empty and (kind, p.name) != ("Dropout", "rate")}


def _canonical(value: Any) -> Any:
    """A layer argument as its configs are compared: arrays as lists, and an array of one
    int repeated as that int -- every layer argument that takes an array of ints (kernel
    sizes, strides, windows, paddings) reads an int as that int on every axis."""
    if not isinstance(value, list | tuple):
        return value
    items = [_canonical(v) for v in value]
    if items and all(is_integer(v) for v in items) and len(set(items)) == 1:
        return items[0]
    return items


def _argument_at_fault(message: str, kind: str, names: Iterable[str]) -> str | None:
    """The argument a layer's constructor error is about, for the config key: the word
    after ``"Kind: "`` (the layers' messages read ``"Conv2D: stride must be ..."``) or the
    unexpected keyword, where it is one of ``names``; else None."""
    found = re.match(rf"{re.escape(kind)}: (\w+) ", message) or re.search(
        r"unexpected keyword argument '(\w+)'", message)
    return found.group(1) if found and found.group(1) in names else None


@functools.cache
def _argument_types(kind: str) -> dict[str, Any]:
    """The type hints of layer ``kind``'s constructor (empty when they cannot be read)."""
    try:
        return typing.get_type_hints(LAYER_TYPES[kind])
    except (NameError, TypeError):
        return {}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a config value (TOML: bool, int, float, str, tuples of them) fits a layer
    argument's type hint. TOML's booleans are not numbers here, nor its strings booleans;
    hints other than these scalars, tuples, sequences and unions (callables, arrays) are
    left to the constructor."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(item, args[0]) for item in value)
        return len(args) == len(value) and all(map(_fits, value, args))
    if origin is collections.abc.Sequence:
        return isinstance(value, tuple) and all(_fits(item, args[0]) for item in value)
    return True


def _describe(hint: Any) -> str:
    """A type hint as a config reader would say it: ``int | tuple[int, int]``."""
    return hint.__name__ if isinstance(hint, type) else str(hint).replace(
        "collections.abc.", "").replace("NoneType", "None")


def _build_nested(kind, spec, key, rate, source, keys) -> Layer:
    field, is_branches = NESTED_TYPES[kind]
    allowed = {"type", field} | ({"shortcut"} if kind == "Residual" else set())
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(source, f"{key}.{unknown[0]}", f"{kind} takes only "
                          f"{', '.join(sorted(allowed - {'type'}))}")
    if field not in spec:
        raise ConfigError(source, key, f"{kind} needs {field} = [...]")
    if is_branches:
        branches = spec[field]
        if not isinstance(branches, list) or not branches:
            raise ConfigError(source, f"{key}.{field}", "expected a list of branches, each a "
                              "list of layer tables")
        return C.parallel(*(C.serial(*_build_layers(branch, f"{key}.{field}[{index}]", rate,
                                                    source, keys))
                            for index, branch in enumerate(branches)))
    layers = _build_layers(spec[field], f"{key}.{field}", rate, source, keys)
    if kind == "Serial":
        return C.serial(*layers)
    shortcut = None
    if "shortcut" in spec:
        shortcut = C.serial(*_build_layers(spec["shortcut"], f"{key}.shortcut", rate, source,
                                           keys))
    return C.Residual(*layers, shortcut=shortcut)


def _config_key(net: Layer, path: tuple[int, ...], keys: dict[int, str]) -> str:
    """The config key of the innermost layer on ``path`` that a config table made."""
    found, layer = "model.layers", net
    for index in path:
        if index >= len(layer.children):
            break
        layer = layer.children[index]
        found = keys.get(id(layer), found)
    return found


def check(config: Config, input_shape: tuple[int, ...], output_size: int) -> tuple[Layer, Any]:
    """Builds the network and checks its shapes against the data, without allocating.

    Returns:
      ``(net, params)``, the params as `jax.ShapeDtypeStruct`s.

    Raises:
      ConfigError: naming the file and ``model.layers`` (and the layer) at fault.
    """
    net, keys = _build(config.model, output_size, source=config.source)
    try:
        out_shape, params, _ = shapes(net, (None, *input_shape))
    except ShapeError as error:
        key = _config_key(net, error.layer_path, keys)
        raise ConfigError(config.source, key,
                          f"{error} (data examples have shape {tuple(input_shape)})") from None
    if tuple(out_shape[1:]) != (output_size,):
        raise ConfigError(config.source, "model.layers",
                          f"the network outputs shape {out_shape}, the data needs "
                          f"(None, {output_size})")
    return net, params
