"""The layer protocol: a NamedTuple of pure functions over params and state.

Every layer -- a leaf such as ``Dense(10)`` or a combinator such as `serial` -- is a
`Layer(init, apply, backward)`:

* ``init(key, input_shape) -> (output_shape, params, state)`` infers shapes without data.
  The batch dimension is given as ``None`` and comes back as ``None``. A layer whose
  activations are tuples (branches) takes and gives a tuple of shapes.
* ``apply(params, state, x, *, key=None, train=False) -> (y, state)`` is the forward pass
  that ``jax.grad`` differentiates. ``state`` is what a layer carries between calls without
  training it -- BatchNorm's running statistics -- and the new state is returned, never
  written in place. It is a pytree apart from ``params``, so an optimizer never sees it.
* ``backward(params, state, x, y, dy, *, key=None, train=False) -> (dparams, dx)`` is the
  explicit manual rule: given the layer's input ``x``, the ``state`` it was applied with,
  its output ``y`` and ``dL/dy``, return ``dL/dparams`` (shaped like ``params``) and
  ``dL/dx``. ``key`` and ``train`` are the ones given to ``apply``, so a stochastic layer
  (Dropout) rebuilds the same mask.

Layers without parameters use ``()`` as params, layers without state ``()`` as state; a
stateless layer is written as three plain functions and lifted by `stateless`. A `Layer`
also carries a readable ``name`` (used by `summary` and in error messages) and, for a
combinator, its ``children`` and their ``wiring`` (see `jaxnn.combinators`, which owns the
one traversal of the layer tree); none of these is a tuple field, so
``init, apply, backward = layer`` unpacks as in stax.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Shape = tuple[int | None, ...]
Params = Any
State = Any
InitFn = Callable[[jax.Array, Shape], tuple[Shape, Params, State]]
ApplyFn = Callable[..., tuple[Any, State]]
BackwardFn = Callable[..., tuple[Params, Any]]


class ShapeError(ValueError):
    """An input shape a layer cannot take, raised by `init` before anything is compiled.

    Raised through a combinator, it names the layer by its position, e.g.
    ``layer 1.0.2 (Conv2D(16, 3)): ...``; ``layer_path`` holds that position (``(1, 0, 2)``)
    and ``layer_index`` its first entry.
    """

    layer_path: tuple[int, ...] = ()
    layer_name: str | None = None
    reason: str | None = None

    @property
    def layer_index(self) -> int | None:
        return self.layer_path[0] if self.layer_path else None


class _LayerFns(NamedTuple):
    init: InitFn
    apply: ApplyFn
    backward: BackwardFn


class Layer(_LayerFns):
    """A network layer: the NamedTuple ``(init, apply, backward)`` of pure functions.

    Attributes:
      init: ``init(key, input_shape) -> (output_shape, params, state)``.
      apply: ``apply(params, state, x, *, key=None, train=False) -> (y, state)``.
      backward: ``backward(params, state, x, y, dy, *, key=None, train=False) ->
        (dparams, dx)``.
      name: a readable description such as ``"Dense(128)"`` (not a tuple field).
      children: the sub-layers of a combinator such as `serial` (not a tuple field).
      wiring: how a combinator routes values through its children, a
        `jaxnn.combinators.Wiring`; None for a leaf layer (not a tuple field).
    """

    name: str
    children: tuple[Layer, ...]
    wiring: Any

    def __new__(
        cls,
        init: InitFn,
        apply: ApplyFn,
        backward: BackwardFn,
        name: str = "Layer",
        children: Sequence[Layer] = (),
        wiring: Any = None,
        reference: Layer | None = None,
    ) -> Layer:
        self = super().__new__(cls, init, apply, backward)
        self.name = name
        self.children = tuple(children)
        self.wiring = wiring
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
        return Layer(**values, name=self.name, children=self.children, wiring=self.wiring,
                     reference=self._reference)

    def __repr__(self) -> str:
        return self.name


def stateless(
    init: Callable[[jax.Array, Shape], tuple[Shape, Params]],
    apply: Callable[..., Any],
    backward: Callable[..., tuple[Params, Any]],
    *,
    name: str,
    reference: Layer | None = None,
) -> Layer:
    """A `Layer` without state (``()``) from its three plain functions.

    Args:
      init: ``init(key, input_shape) -> (output_shape, params)``.
      apply: ``apply(params, x, *, key=None, train=False) -> y``.
      backward: ``backward(params, x, y, dy, *, key=None, train=False) -> (dparams, dx)``.
      name: the layer's readable name.
      reference: the plain twin (see `Layer.reference`), when ``apply`` is not plain.
    """

    def init_with_state(key, input_shape):
        output_shape, params = init(key, input_shape)
        return output_shape, params, ()

    def apply_with_state(params, state, x, *, key=None, train=False):
        return apply(params, x, key=key, train=train), state

    def backward_with_state(params, state, x, y, dy, *, key=None, train=False):
        del state  # Stateless.
        return backward(params, x, y, dy, key=key, train=train)

    return Layer(init_with_state, apply_with_state, backward_with_state, name=name,
                 reference=reference)


def check_key(key: Any, owner: str, use: str) -> jax.Array:
    """``key`` when it is a PRNG key (typed, or raw uint32 data); else a ValueError naming
    ``owner`` and what needs it (``use``) and quoting ``key`` (JAX said "unexpected PRNG key
    type NoneType" or "invalid PRNG key data", naming no layer)."""
    dtype = getattr(key, "dtype", None)
    if dtype is None or not (jnp.issubdtype(dtype, jax.dtypes.prng_key)
                             or (dtype == jnp.uint32 and np.ndim(key) >= 1)):
        raise ValueError(f"{owner}: {use} needs a PRNG key such as jax.random.key(0), got "
                         f"{key!r}")
    return key


def split_key(key: jax.Array | None, num: int, owner: str = "") -> Sequence[jax.Array | None]:
    """Splits ``key`` into ``num`` keys, or gives ``num`` Nones when ``key`` is None.

    Raises:
      ValueError: naming ``owner`` and quoting ``key``, when it is no PRNG key (JAX said
        only "invalid PRNG key data", naming no layer).
    """
    if key is None:
        return (None,) * num
    try:
        return tuple(jax.random.split(key, num))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{owner + ': ' if owner else ''}key must be a PRNG key such as "
                         f"jax.random.key(0), got {key!r} ({error})") from None


def at_least_float32(dtype: Any) -> jnp.dtype:
    """A floating ``dtype``, widened to float32 where it is narrower: where 16-bit values are
    summed or drawn (normalization statistics, a dropout mask), as Flax computes them."""
    return jnp.dtype(dtype) if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)


def param_dtype(dtype: Any = None) -> jnp.dtype:
    """``dtype`` if given, else the default float: float32, or float64 under ``jax_enable_x64``."""
    if dtype is not None:
        return jnp.dtype(dtype)
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def float_dtype(value: Any, what: str, layer: str) -> Any:
    """``value``, a dtype option such as a layer's ``dtype``, checked to name a floating
    dtype (or be None, the default).

    Raises:
      ValueError: naming ``layer`` and ``what``, quoting ``value`` (an integer dtype truncated
        BatchNorm's statistics to integers, or failed in an initializer).
    """
    if value is None:
        return None
    try:
        floating = jnp.issubdtype(jnp.dtype(value), jnp.floating)
    except (TypeError, ValueError):
        floating = False
    if not floating:
        raise ValueError(f"{layer}: {what} must be a floating dtype such as float32, float64 "
                         f"or bfloat16 (or None, the default), got {value!r}")
    return value


def is_integer(value: Any) -> bool:
    """Whether a layer argument is an integer: Python's or numpy's, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def is_real(value: Any) -> bool:
    """Whether a layer argument is a real number: Python's or numpy's, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def check_layer(value: Any, where: str) -> Layer:
    """``value``, which ``where`` (e.g. "serial: argument 2") takes as a `Layer`.

    Raises:
      TypeError: quoting ``value``, with a hint where it is a layer's factory (``Relu``
        for ``Relu()``).
    """
    if not isinstance(value, Layer):
        hint = " (did you forget the parentheses, e.g. Relu()?)" if callable(value) else ""
        raise TypeError(f"{where} is not a Layer: {value!r}{hint}")
    return value


# The largest size, stride or padding a layer takes: XLA's dimensions are 32-bit on some
# paths (a stride of 2**70 passed every check and failed compiling, in a long traceback).
MAX_SIZE = 2**31 - 1


def positive_int(value: Any, what: str, layer: str) -> int:
    """``value`` (`is_integer`) as a Python int, checked in [1, `MAX_SIZE`].

    Raises:
      ValueError: naming ``layer`` and ``what``, quoting ``value``.
    """
    if not is_integer(value) or value < 1:
        raise ValueError(f"{layer}: {what} must be a positive int, got {value!r}")
    if value > MAX_SIZE:
        raise ValueError(f"{layer}: {what} must be at most 2**31 - 1, got {value!r}")
    return int(value)


def check_bool(value: Any, what: str, layer: str) -> bool:
    """``value`` (Python's or numpy's bool) as a Python bool; a layer's on/off option.

    Raises:
      ValueError: naming ``layer`` and ``what``, quoting ``value`` (a string such as
        ``"false"`` would otherwise read as True).
    """
    if isinstance(value, jax.Array):  # jax.jit(net.apply) traces every argument
        raise ValueError(f"{layer}: {what} must be a Python bool, not a JAX array; under "
                         f"jax.jit, make it static: jax.jit(net.apply, "
                         f"static_argnames={what!r})")
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{layer}: {what} must be True or False, got {value!r}")
    return bool(value)


def is_multi_shape(shape: Any) -> bool:
    """Whether ``shape`` is a tuple of shapes (the activations of parallel branches)."""
    return isinstance(shape, tuple) and len(shape) > 0 and all(
        isinstance(s, tuple) for s in shape)


def check_single(name: str, input_shape: Any) -> None:
    """Raises `ShapeError` unless ``input_shape`` is one shape (not a tuple of branches'
    shapes) whose dimensions are sizes: ints >= 1 (the batch's >= 0), or None where unknown.

    Every leaf layer's ``init`` calls it first, so that a 0 or a float in a shape is refused
    naming the layer rather than failing inside an initializer or a JAX call.
    """
    if is_multi_shape(input_shape):
        raise ShapeError(f"{name} takes one input, got the {len(input_shape)} branches "
                         f"{tuple(input_shape)}; join them first (FanInSum, FanInConcat)")
    for axis, dim in enumerate(input_shape):
        if dim is not None and (not is_integer(dim) or dim < (0 if axis == 0 else 1)):
            raise ShapeError(f"{name}: input shape {tuple(input_shape)} has {dim!r} at axis "
                             f"{axis}; sizes are ints >= 1 (the batch's >= 0), or None where "
                             f"unknown")


def check_rank(name: str, input_shape: Shape, rank: int, layout: str, hint: str = "") -> None:
    """Raises `ShapeError` unless ``input_shape`` is one shape of ``rank`` dimensions."""
    check_single(name, input_shape)
    if len(input_shape) != rank:
        raise ShapeError(
            f"{name} expects input of rank {rank} {layout}, got shape {tuple(input_shape)}"
            + (f"; {hint}" if hint else "")
        )


def check_applied(name: str, x: Any, rank: int | None = None, layout: str = "",
                  channels: int | None = None) -> None:
    """Raises `ShapeError` as ``apply`` traces an input that ``init``'s shape rule would
    have refused (it failed deep inside JAX, naming no layer): another rank than ``rank``
    (an NHWC image without its batch axis, as a per-example `jax.vmap` gives it), or another
    last axis than the ``channels`` the params were made for."""
    shape = tuple(np.shape(x))
    if rank is not None and len(shape) != rank:
        hint = ("; a per-example jax.vmap takes the batch axis away: give each example one "
                "(x[None])" if len(shape) == rank - 1 else "")
        raise ShapeError(f"{name} expects input of rank {rank} {layout}, got shape "
                         f"{shape}{hint}")
    if channels is not None and (not shape or shape[-1] != channels):
        raise ShapeError(f"{name}: its params were made for inputs of {channels} channels "
                         f"(the last axis), got shape {shape}")


def with_rule_gradient(layer: Layer) -> Layer:
    """``layer`` whose ``jax.grad`` runs its own manual ``backward`` rule on CPU.

    For deterministic layers whose rule is faster than XLA's CPU lowering of the autodiff
    gradient (convolution filter gradients, max-pool routing, BatchNorm's statistics).
    Elsewhere (GPU, TPU), with a ``train`` that is not a bool, and for a layer with state
    in eval mode (which gives back the very state it was given, where a ``custom_vjp``
    would return a copy), ``apply`` is the plain forward. The layer must be deterministic (no
    key). In training mode the new state is not differentiated: its cotangent is dropped,
    and the state given gets a zero gradient (no rule has one: state is never trained).
    ``jax.jvp`` through the CPU path is not available (a ``jax.custom_vjp``); the plain
    twin is `Layer.reference`.
    """

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def rule_apply(params, state, x, train):
        return layer.apply(params, state, x, train=train)

    def forward(params, state, x, train):
        y, new_state = layer.apply(params, state, x, train=train)
        return (y, new_state), (params, state, x, y)

    def backward(train, residuals, cotangents):
        params, state, x, y = residuals
        dparams, dx = layer.backward(params, state, x, y, cotangents[0], train=train)
        # Cotangents in their primals' dtypes, as autodiff gives them (float32 params on a
        # float64 input get float32 gradients, or an optimizer's state would change dtype).
        return (jax.tree.map(lambda g, p: g.astype(p.dtype), dparams, params),
                jax.tree.map(jnp.zeros_like, state), dx.astype(x.dtype))

    rule_apply.defvjp(forward, backward)

    def apply(params, state, x, *, key=None, train=False):
        del key  # Deterministic.
        if (jax.default_backend() == "cpu" and isinstance(train, bool | np.bool_)
                and (train or not jax.tree.leaves(state))):
            return rule_apply(params, state, x, bool(train))
        return layer.apply(params, state, x, train=train)  # it refuses a train it cannot use

    return Layer(layer.init, apply, layer.backward, name=layer.name, reference=layer)
