"""Combinators -- serial, parallel, FanOut, FanInSum, FanInConcat, Residual -- and the ONE
traversal of the layer tree.

A combinator is a `Layer` with ``children`` and a `Wiring`: three small functions saying how
values flow through the children at init, forward and backward. Everything that walks a
network goes through `trace` (the forward pass, recording every layer's input and output:
the cache of classic backprop) and `pullback` (that record walked back, each leaf layer's
manual rule given its ``dy``): a combinator's own ``apply`` and ``backward``,
`jaxnn.manual`'s gradients and checks, and `jaxnn.summary`. Nothing else assumes the
children form a chain, so branches get their manual gradients right:

* `serial` feeds each child the previous one's output; backward runs the children in reverse.
* `parallel` applies child ``i`` to the ``i``-th entry of a tuple activation; backward gives
  child ``i`` the ``i``-th entry of ``dy``.
* `FanOut` copies one activation into a tuple; its rule sums the branches' deltas.
* `FanInSum` adds a tuple's entries; its rule copies ``dy`` to every entry.
* `FanInConcat` joins a tuple's entries along an axis; its rule splits ``dy`` back.
* `Residual` is ``x + f(x)`` (``shortcut(x) + f(x)`` with a projection), built from the above.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxnn.layer import (
    Layer,
    Shape,
    ShapeError,
    check_layer,
    is_integer,
    is_multi_shape,
    positive_int,
    split_key,
    stateless,
)

ChildInit = Callable[[int, Any, Any], tuple[Any, Any, Any]]
ChildApply = Callable[[int, Any, Any, Any, Any], tuple[Any, Any]]
ChildPullback = Callable[[int, Any], tuple[Any, Any]]


class Wiring(NamedTuple):
    """How a combinator routes values through its children; each function is handed a
    ``child`` callable that runs child ``i`` (the traversal supplies it). A combinator's
    params and state are tuples with one entry per child, in order.

    Attributes:
      init: ``init(child, key, input_shape) -> (output_shape, params, state)`` with
        ``child(i, key, shape) -> (shape, params, state)``.
      forward: ``forward(child, params, state, x, key) -> (y, state)`` with
        ``child(i, params_i, state_i, x_i, key_i) -> (y_i, state_i)``.
      backward: ``backward(child, params, dy) -> (dparams, dx)`` with
        ``child(i, dy_i) -> (dparams_i, dx_i)``.
    """

    init: Callable[[ChildInit, Any, Any], tuple[Any, Any, Any]]
    forward: Callable[[ChildApply, Any, Any, Any, Any], tuple[Any, Any]]
    backward: Callable[[ChildPullback, Any, Any], tuple[Any, Any]]


class Tape(NamedTuple):
    """One layer's record from `trace`: what it was given and what it gave.

    Attributes:
      layer: the layer.
      path: its position in the network, e.g. ``(1, 0, 2)``.
      params, state, x, y, key, train: the arguments of its forward pass and its output.
      children: the children's tapes, by index (empty for a leaf layer).
    """

    layer: Layer
    path: tuple[int, ...]
    params: Any
    state: Any
    x: Any
    y: Any
    key: Any
    train: bool
    children: tuple[Tape, ...]

    def leaves(self):
        """The leaf layers' tapes in forward order."""
        if not self.layer.children:
            yield self
        for child in self.children:
            yield from child.leaves()

    @property
    def label(self) -> str:
        """``layer 1.0.2 (Conv2D(16, 3))``, or the layer's name for the root."""
        return _label(self.layer, self.path)


def _label(layer: Layer, path: tuple[int, ...]) -> str:
    """``layer 1.0.2 (Conv2D(16, 3))``: ``layer`` at ``path``; its name alone at the root."""
    if not path:
        return layer.name
    return f"layer {'.'.join(map(str, path))} ({layer.name})"


# What a leaf layer raises on inputs or params it cannot take (other shapes, a missing leaf):
# `trace` and `pullback` add a note naming the layer.
_LAYER_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError)


def trace(layer: Layer, params: Any, state: Any, x: Any, *, key: jax.Array | None = None,
          train: bool = False, path: tuple[int, ...] = ()) -> tuple[Any, Any, Tape]:
    """The forward pass, recorded: ``(y, new_state, tape)``.

    Under ``jax.jit`` an unused tape costs nothing; `pullback` walks it back.
    """
    if layer.wiring is None:
        try:
            y, new_state = layer.apply(params, state, x, key=key, train=train)
        except _LAYER_ERRORS as error:  # e.g. an input or params of other shapes
            shapes = jax.tree.map(lambda a: tuple(getattr(a, "shape", ())), x)
            error.add_note(f"jaxnn: raised in {_label(layer, path)} with an input of "
                           f"shape {shapes}")
            raise
        return y, new_state, Tape(layer, path, params, state, x, y, key, train, ())
    tapes: dict[int, Tape] = {}

    def child(index, child_params, child_state, child_x, child_key):
        if index in tapes:
            raise ValueError(f"{layer.name}: child {index} applied twice in one forward pass")
        y, child_new_state, tapes[index] = trace(
            layer.children[index], child_params, child_state, child_x, key=child_key,
            train=train, path=(*path, index))
        return y, child_new_state

    for what, value in (("params", params), ("state", state)):
        _check_per_child(layer, path, what, value)
    y, new_state = layer.wiring.forward(child, params, state, x, key)
    children = tuple(tapes[index] for index in sorted(tapes))
    return y, new_state, Tape(layer, path, params, state, x, y, key, train, children)


def _check_per_child(layer: Layer, path: tuple[int, ...], what: str, value: Any) -> None:
    """Raises ValueError unless a combinator's ``value`` (its params or state) is a tuple
    with one entry per child: other ones (``()`` for a network's state) failed indexing."""
    num = len(layer.children)
    if isinstance(value, tuple | list) and len(value) == num:
        return
    if not jax.tree.leaves(value):
        got = repr(value)
    elif isinstance(value, tuple | list):
        got = f"a {type(value).__name__} of {len(value)} entries"
    else:
        got = f"a {type(value).__name__}"
    verb = "do" if what == "params" else "does"
    raise ValueError(f"{_label(layer, path)}: the {what} {verb} not match the network, which "
                     f"takes a tuple of {num} entries (one per child layer, as its init "
                     f"returns them); got {got}")


def _check_gradient_shapes(layer: Layer, tape: Tape, dparams: Any) -> None:
    """Refuses a rule whose parameter gradient is not shaped as the params (an optimizer
    would broadcast it into them), naming the layer."""
    def shapes(tree):  # sorted: a rule may return its own containers, in another key order
        return sorted(tuple(getattr(a, "shape", ())) for a in jax.tree.leaves(tree))

    if shapes(dparams) != shapes(tape.params):
        raise ValueError(f"the manual rule of {_label(layer, tape.path)} returned parameter "
                         f"gradients of shapes {shapes(dparams)}, its params "
                         f"{shapes(tape.params)}")


def pullback(tape: Tape, dy: Any) -> tuple[Any, Any]:
    """The manual rules walked back over a `trace`'s tape: ``(dparams, dx)``."""
    layer = tape.layer
    if layer.wiring is None:
        try:
            dparams, dx = layer.backward(tape.params, tape.state, tape.x, tape.y, dy,
                                         key=tape.key, train=tape.train)
        except _LAYER_ERRORS as error:  # as `trace` names the layer of a forward
            shapes = jax.tree.map(lambda a: tuple(getattr(a, "shape", ())), (tape.x, dy))
            error.add_note(f"jaxnn: raised in the manual rule of {_label(layer, tape.path)} "
                           f"with an input and a delta of shapes {shapes}")
            raise
        _check_gradient_shapes(layer, tape, dparams)
        return dparams, dx
    by_index = {child.path[-1]: child for child in tape.children}
    return layer.wiring.backward(lambda index, child_dy: pullback(by_index[index], child_dy),
                                 tape.params, dy)


def combinator(name: str, children: Sequence[Layer], wiring: Wiring) -> Layer:
    """A `Layer` whose ``init``, ``apply`` and ``backward`` follow ``wiring`` over
    ``children``. A child's `ShapeError` is re-raised naming its position and name."""
    children = tuple(children)

    def init(key, input_shape):
        def child(index, child_key, shape):
            try:
                return children[index].init(child_key, shape)
            except ShapeError as error:
                raise _located(error, index, children[index]) from None

        if key is None:  # a layer with params said "unexpected PRNG key type NoneType"
            raise ValueError(f"{name}: init needs a PRNG key such as jax.random.key(0), "
                             "got None")
        return wiring.init(child, key, input_shape)

    def apply(params, state, x, *, key=None, train=False):
        y, new_state, _ = trace(layer, params, state, x, key=key, train=train)
        return y, new_state

    def backward(params, state, x, y, dy, *, key=None, train=False):
        del y  # Recomputed in the recorded forward (XLA shares it with the forward pass).
        return pullback(trace(layer, params, state, x, key=key, train=train)[2], dy)

    has_twins = any(child.reference is not child for child in children)
    reference = combinator(name, [child.reference for child in children],
                           wiring) if has_twins else None
    layer = Layer(init, apply, backward, name=name, children=children, wiring=wiring,
                  reference=reference)
    return layer


def _located(error: ShapeError, index: int, child: Layer) -> ShapeError:
    """``error`` raised by ``child`` (at ``index``), its message naming the innermost layer."""
    reason = error.reason if error.reason is not None else \
        str(error).removeprefix(child.name).lstrip(" :")
    path = (index, *error.layer_path)
    name = error.layer_name or child.name
    located = ShapeError(f"layer {'.'.join(map(str, path))} ({name}): {reason}")
    located.layer_path, located.layer_name, located.reason = path, name, reason
    return located


def _names(kind: str, layers: Sequence[Layer]) -> str:
    """``"A, B, C"`` for the layers given to ``kind``, checked to be `Layer`s."""
    for index, layer in enumerate(layers):
        check_layer(layer, f"{kind}: argument {index}")
    return ", ".join(layer.name for layer in layers)


def serial(*layers: Layer) -> Layer:
    """Composes layers in sequence; the result is itself a `Layer`.

    Params and state are tuples with one entry per layer. ``apply`` splits ``key`` (when
    given) into one key per layer; ``backward`` walks the layers in reverse.

    Args:
      *layers: the layers, first to last.

    Returns:
      A `Layer` whose ``init`` raises `ShapeError` naming the position and layer at fault.
    """
    num = len(layers)

    def init(child, key, shape):
        params, states = [], []
        for index, child_key in enumerate(split_key(key, num, name)):
            shape, child_params, child_state = child(index, child_key, shape)
            params.append(child_params)
            states.append(child_state)
        return shape, tuple(params), tuple(states)

    def forward(child, params, state, x, key):
        states = []
        for index, child_key in enumerate(split_key(key, num, name)):
            x, child_state = child(index, params[index], state[index], x, child_key)
            states.append(child_state)
        return x, tuple(states)

    def backward(child, params, dy):
        del params
        grads = [None] * num
        for index in reversed(range(num)):
            grads[index], dy = child(index, dy)
        return tuple(grads), dy

    name = f"serial({_names('serial', layers)})"
    return combinator(name, layers, Wiring(init, forward, backward))


def _branches(name: str, shape: Any, num: int | None = None) -> tuple[Shape, ...]:
    """``shape`` checked to be a tuple of (``num``) shapes."""
    if not is_multi_shape(shape):
        raise ShapeError(f"{name} takes a tuple of branches (e.g. after FanOut), got the "
                         f"single shape {tuple(shape)}")
    if num is not None and len(shape) != num:
        raise ShapeError(f"{name} has {num} branches, got {len(shape)} inputs {tuple(shape)}")
    return tuple(tuple(s) for s in shape)


def parallel(*layers: Layer) -> Layer:
    """Applies layer ``i`` to entry ``i`` of a tuple activation (branches side by side).

    Params and state are tuples with one entry per layer; the output is the tuple of the
    branches' outputs. Backward gives each branch its own entry of ``dy``.
    """
    num = len(layers)
    name = f"parallel({_names('parallel', layers)})"

    def init(child, key, shape):
        shapes = _branches(name, shape, num)
        results = [child(index, child_key, shapes[index])
                   for index, child_key in enumerate(split_key(key, num, name))]
        return tuple(tuple(part) for part in zip(*results, strict=True))

    def forward(child, params, state, x, key):
        if not isinstance(x, tuple | list) or len(x) != num:  # indexing an array would run
            given = (f"{len(x)} inputs" if isinstance(x, tuple | list)
                     else f"one input of shape {tuple(jnp.shape(x))}")
            raise ShapeError(f"{name} has {num} branches, got {given}")
        results = [child(index, params[index], state[index], x[index], child_key)
                   for index, child_key in enumerate(split_key(key, num, name))]
        outputs, states = zip(*results, strict=True)
        return tuple(outputs), tuple(states)

    def backward(child, params, dy):
        del params
        grads, dxs = zip(*(child(index, dy[index]) for index in range(num)), strict=True)
        return tuple(grads), tuple(dxs)

    return combinator(name, layers, Wiring(init, forward, backward))


def _no_params(init_shape: Callable[[Any], Any]):
    def init(key, input_shape):
        del key  # No parameters.
        return init_shape(input_shape), ()

    return init


def FanOut(num: int) -> Layer:
    """Copies the activation into a tuple of ``num`` branches; the rule sums their deltas,
    ``dx = Σ_i dy_i`` (the multivariate chain rule at a fork)."""
    num = positive_int(num, "num", "FanOut")
    name = f"FanOut({num})"

    def out_shape(shape):
        if is_multi_shape(shape):
            raise ShapeError(f"{name} takes one input, got the branches {tuple(shape)}")
        return (tuple(shape),) * num

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        return (x,) * num

    def backward(params, x, y, dy, *, key=None, train=False):
        del params, x, y, key, train
        return (), functools.reduce(operator.add, dy)

    return stateless(_no_params(out_shape), apply, backward, name=name)


def FanInSum() -> Layer:
    """Adds the branches of a tuple activation (equal shapes); the rule copies ``dy`` to
    every branch."""
    name = "FanInSum()"

    def out_shape(shape):
        shapes = _branches(name, shape)
        if len(set(shapes)) != 1:
            raise ShapeError(f"{name} adds branches of equal shape, got {shapes}")
        return shapes[0]

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        out_shape(tuple(branch.shape for branch in x))  # no broadcasting between branches
        return functools.reduce(operator.add, x)

    def backward(params, x, y, dy, *, key=None, train=False):
        del params, y, key, train
        return (), (dy,) * len(x)

    return stateless(_no_params(out_shape), apply, backward, name=name)


def FanInConcat(axis: int = -1) -> Layer:
    """Joins the branches of a tuple activation along ``axis`` (not the batch axis); the rule
    splits ``dy`` back at the branches' sizes."""
    if not is_integer(axis):
        raise ValueError(f"FanInConcat: axis must be an int, got {axis!r}")
    axis = int(axis)
    name = f"FanInConcat(axis={axis})"

    def out_shape(shape):
        shapes = _branches(name, shape)
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes) or not -rank <= axis < rank:
            raise ShapeError(f"{name} needs branches of one rank with an axis {axis}, got "
                             f"{shapes}")
        at = axis % rank
        if at == 0:
            raise ShapeError(f"{name} cannot join along the batch axis")
        others = {s[:at] + s[at + 1:] for s in shapes}
        if len(others) != 1 or any(s[at] is None for s in shapes):
            raise ShapeError(f"{name} needs branches equal but along axis {axis}, got {shapes}")
        return (*shapes[0][:at], sum(s[at] for s in shapes), *shapes[0][at + 1:])

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        return jnp.concatenate(x, axis=axis)

    def backward(params, x, y, dy, *, key=None, train=False):
        del params, y, key, train
        ends = list(itertools.accumulate(part.shape[axis] for part in x))[:-1]
        return (), tuple(jnp.split(dy, ends, axis=axis))

    return stateless(_no_params(out_shape), apply, backward, name=name)


def Residual(*layers: Layer, shortcut: Layer | None = None) -> Layer:
    """``f(x) + x`` with ``f = serial(*layers)``, or ``f(x) + shortcut(x)`` when the shortcut
    projects ``x`` (e.g. a strided 1x1 ``Conv2D`` where ``f`` changes the shape).

    It is ``serial(FanOut(2), parallel(serial(*layers), shortcut or Identity()),
    FanInSum())``: its params are ``((), (f's params, shortcut's params), ())``, and its
    manual rule is that of its parts (the fork sums the two deltas).
    """
    from jaxnn.layers.activations import Identity

    if not layers:  # f(x) + x with no f: 2x, never what was meant
        raise TypeError("Residual needs at least one layer: it computes f(x) + x with "
                        "f = serial(*layers)")
    name = f"Residual({_names('Residual', layers)}" + (
        "" if shortcut is None else
        f"; shortcut={check_layer(shortcut, 'Residual: shortcut').name}") + ")"
    body = serial(*layers)
    path = Identity() if shortcut is None else shortcut
    inner = serial(FanOut(2), parallel(body, path), FanInSum())
    return _naming_the_sum(combinator(name, inner.children, inner.wiring), shortcut is None)


def _naming_the_sum(layer: Layer, plain: bool) -> Layer:
    """A `Residual` (``layer``; ``plain``: no shortcut projection) whose shape mismatch names
    it and its two sides, not the FanInSum inside it that the user never wrote; its plain
    twin (`Layer.reference`) too."""
    def init(key, input_shape):
        try:
            return layer.init(key, input_shape)
        except ShapeError as error:
            if error.layer_path[:1] != (2,):  # not the sum: a layer of f or the shortcut
                raise
        branches = layer.children[1].init(key, (tuple(input_shape),) * 2)[0]  # (a list)
        other = "x" if plain else "shortcut(x)"
        hint = "; give shortcut= a projection (a 1x1 Conv2D, a Dense) to f(x)'s shape" \
            if plain else ""
        error = ShapeError(f"{layer.name}: adds f(x) of shape {branches[0]} and {other} of "
                           f"shape {branches[1]}; they must match{hint}")
        error.reason = error.args[0].removeprefix(f"{layer.name}: ")
        raise error

    twin = None if layer.reference is layer else _naming_the_sum(layer.reference, plain)
    return Layer(init, layer.apply, layer.backward, name=layer.name, children=layer.children,
                 wiring=layer.wiring, reference=twin)
