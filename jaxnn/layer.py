"""The layer protocol: a NamedTuple of pure functions, and `serial` to compose them.

Every layer is a `Layer(init, apply, backward)`:

* ``init(key, input_shape) -> (output_shape, params)`` infers shapes without data. The batch
  dimension is given as ``None`` and comes back as ``None``.
* ``apply(params, x, *, key=None, train=False) -> y`` is the forward pass that ``jax.grad``
  differentiates.
* ``backward(params, x, y, dy, *, key=None, train=False) -> (dparams, dx)`` is the explicit
  manual rule: given the layer's input ``x``, its output ``y`` and ``dL/dy``, return
  ``dL/dparams`` (shaped like ``params``) and ``dL/dx``. ``key`` and ``train`` are the ones
  given to ``apply``, so a stochastic layer (Dropout) rebuilds the same mask.

Layers without parameters use ``()`` as params. A `Layer` also carries a readable ``name``
(used by `summary` and in error messages) and its ``children`` when it is a combinator;
neither is a tuple field, so ``init, apply, backward = layer`` unpacks as in stax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Shape = tuple[int | None, ...]
Params = Any
InitFn = Callable[[jax.Array, Shape], tuple[Shape, Params]]
ApplyFn = Callable[..., jax.Array]
BackwardFn = Callable[..., tuple[Params, jax.Array]]


class ShapeError(ValueError):
    """An input shape a layer cannot take, raised by `init` before anything is compiled.

    Raised through `serial`, it names the layer and its ``layer_index`` is set.
    """

    layer_index: int | None = None


class _LayerFns(NamedTuple):
    init: InitFn
    apply: ApplyFn
    backward: BackwardFn


class Layer(_LayerFns):
    """A network layer: the NamedTuple ``(init, apply, backward)`` of pure functions.

    Attributes:
      init: ``init(key, input_shape) -> (output_shape, params)``.
      apply: ``apply(params, x, *, key=None, train=False) -> y``.
      backward: ``backward(params, x, y, dy, *, key=None, train=False) -> (dparams, dx)``.
      name: a readable description such as ``"Dense(128)"`` (not a tuple field).
      children: the sub-layers of a combinator such as `serial` (not a tuple field).
    """

    name: str
    children: tuple[Layer, ...]

    def __new__(
        cls,
        init: InitFn,
        apply: ApplyFn,
        backward: BackwardFn,
        name: str = "Layer",
        children: Sequence[Layer] = (),
        reference: Layer | None = None,
    ) -> Layer:
        self = super().__new__(cls, init, apply, backward)
        self.name = name
        self.children = tuple(children)
        self._reference = reference
        return self

    @property
    def reference(self) -> Layer:
        """The same layer with its plain forward, differentiated by JAX itself.

        Layers whose ``apply`` carries a faster gradient (`with_rule_gradient`) keep their
        plain twin here; gradient checks differentiate the twin, so they compare the manual
        rule with an independent ``jax.grad``.
        """
        return self._reference if self._reference is not None else self

    def _replace(self, **fields: Any) -> Layer:
        values = {**self._asdict(), **fields}
        return Layer(**values, name=self.name, children=self.children,
                     reference=self._reference)

    def __repr__(self) -> str:
        return self.name


def split_key(key: jax.Array | None, num: int) -> Sequence[jax.Array | None]:
    """Splits ``key`` into ``num`` keys, or gives ``num`` Nones when ``key`` is None."""
    if key is None:
        return (None,) * num
    return tuple(jax.random.split(key, num))


def param_dtype(dtype: Any = None) -> jnp.dtype:
    """``dtype`` if given, else the default float: float32, or float64 under ``jax_enable_x64``."""
    if dtype is not None:
        return jnp.dtype(dtype)
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def check_rank(name: str, input_shape: Shape, rank: int, layout: str, hint: str = "") -> None:
    """Raises `ShapeError` unless ``input_shape`` has ``rank`` dimensions."""
    if len(input_shape) != rank:
        raise ShapeError(
            f"{name} expects input of rank {rank} {layout}, got shape {tuple(input_shape)}"
            + (f"; {hint}" if hint else "")
        )


def serial(*layers: Layer) -> Layer:
    """Composes layers in sequence; the result is itself a `Layer`.

    Params are a tuple with one entry per layer. ``apply`` splits ``key`` (when given) into
    one key per layer; ``backward`` recomputes the chain's intermediate activations from
    ``x`` (the forward cache; under ``jax.jit`` XLA shares them with the forward pass) and
    walks the layers in reverse.

    Args:
      *layers: the layers, first to last.

    Returns:
      A `Layer` whose ``init`` raises `ShapeError` naming the index and layer at fault.
    """
    for index, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = " (did you forget the parentheses, e.g. Relu()?)" if callable(layer) else ""
            raise TypeError(f"serial: argument {index} is not a Layer: {layer!r}{hint}")
    num = len(layers)
    name = "serial(" + ", ".join(layer.name for layer in layers) + ")"

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, Params]:
        shape = tuple(input_shape)
        params = []
        for index, (layer, layer_key) in enumerate(zip(layers, split_key(key, num), strict=True)):
            try:
                shape, layer_params = layer.init(layer_key, shape)
            except ShapeError as error:
                message = str(error).removeprefix(layer.name).lstrip(" :")
                located = ShapeError(f"layer {index} ({layer.name}): {message}")
                located.layer_index = index
                raise located from None
            params.append(layer_params)
        return shape, tuple(params)

    def forward(params, x, key, train):
        """All activations: ``[x, layer0(x), layer1(layer0(x)), ...]``."""
        keys = split_key(key, num)
        activations = [x]
        for layer, layer_params, layer_key in zip(layers, params, keys, strict=True):
            activations.append(layer.apply(layer_params, activations[-1], key=layer_key,
                                           train=train))
        return activations, keys

    def apply(params, x, *, key=None, train=False):
        return forward(params, x, key, train)[0][-1]

    def backward(params, x, y, dy, *, key=None, train=False):
        del y  # Recomputed as the last cached activation.
        activations, keys = forward(params, x, key, train)
        dparams = [None] * num
        for index in reversed(range(num)):
            dparams[index], dy = layers[index].backward(
                params[index], activations[index], activations[index + 1], dy,
                key=keys[index], train=train,
            )
        return tuple(dparams), dy

    has_twins = any(layer.reference is not layer for layer in layers)
    return Layer(init, apply, backward, name=name, children=layers,
                 reference=serial(*(layer.reference for layer in layers)) if has_twins
                 else None)


def with_rule_gradient(layer: Layer) -> Layer:
    """``layer`` whose ``jax.grad`` runs its own manual ``backward`` rule on CPU.

    For layers whose rule is faster than XLA's CPU lowering of the autodiff gradient
    (convolution filter gradients, max-pool routing). Elsewhere (GPU, TPU) ``apply`` is the
    plain forward. The layer must be deterministic (no key). ``jax.jvp`` through the CPU
    path is not available (a ``jax.custom_vjp``); the plain twin is `Layer.reference`.
    """

    @jax.custom_vjp
    def rule_apply(params, x):
        return layer.apply(params, x)

    def forward(params, x):
        y = layer.apply(params, x)
        return y, (params, x, y)

    def backward(residuals, dy):
        params, x, y = residuals
        return layer.backward(params, x, y, dy)

    rule_apply.defvjp(forward, backward)

    def apply(params, x, *, key=None, train=False):
        del key, train  # Deterministic.
        if jax.default_backend() == "cpu":
            return rule_apply(params, x)
        return layer.apply(params, x)

    return Layer(layer.init, apply, layer.backward, name=layer.name, reference=layer)
