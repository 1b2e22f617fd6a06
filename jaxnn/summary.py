"""A model summary computed from shapes alone: `jax.eval_shape` allocates no arrays."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxnn._table import format_table
from jaxnn.combinators import Tape, trace
from jaxnn.layer import Layer, Shape, check_layer, is_multi_shape

# Stands in for a PRNG key: tracing `init` on it allocates nothing.
_ABSTRACT_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


_VIEWS = ("FanOut", "Identity", "Flatten")


class Row(NamedTuple):
    """One line of a summary: a layer's position, name, output shape and parameter count.

    A combinator inside the network (a branch such as ``Residual``) has a row of its own,
    before its children's, with ``leaf`` False; only leaf rows count towards the total.
    """

    index: str
    name: str
    output_shape: Any
    params: int
    depth: int = 0
    leaf: bool = True

    @property
    def held_per_example(self) -> int:
        """The activation values this row's layer makes per example: none for the layers
        whose output is their input, or a view of it (`FanOut`'s copies, `Identity`,
        `Flatten`), which memory estimates would count twice."""
        return 0 if self.name.split("(")[0] in _VIEWS else self.values_per_example

    @property
    def values_per_example(self) -> int:
        """The number of activation values this row's output holds per example (every
        branch's, for a tuple of branches, nested ones too)."""
        return sum(math.prod(shape[1:]) for shape in _single_shapes(self.output_shape))


def _single_shapes(shape: Any) -> list[Shape]:
    """The shapes in ``shape``, a shape or (nested) tuple of branches' shapes, in order."""
    if not is_multi_shape(shape):
        return [shape]
    return [single for branch in shape for single in _single_shapes(branch)]


def param_count(params: Any) -> int:
    """The number of scalars in a parameter pytree (arrays or `jax.ShapeDtypeStruct`s)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def shapes(layer: Layer, input_shape: Shape) -> tuple[Any, Any, Any]:
    """``layer.init``'s output shape, parameter shapes and state shapes, allocating nothing."""
    box = {}

    def init(key):
        box["output_shape"], params, state = layer.init(key, tuple(input_shape))
        return params, state

    params, state = jax.eval_shape(init, _ABSTRACT_KEY)
    return box["output_shape"], params, state


def _with_batch(shape: Any, batch: int) -> Any:
    if is_multi_shape(shape):
        return tuple(_with_batch(s, batch) for s in shape)
    return (batch, *shape[1:]) if shape and shape[0] is None else tuple(shape)


def _shape_of(value: Any, batch: int | None) -> Any:
    """An activation's shape (a tuple of them for branches), batch dimension ``batch``."""
    if isinstance(value, tuple):
        return tuple(_shape_of(v, batch) for v in value)
    return (batch, *value.shape[1:])


def rows(net: Layer, input_shape: Shape) -> list[Row]:
    """The summary rows: one per leaf layer, and one heading each nested combinator.

    They come from the network's recorded forward pass (`jaxnn.combinators.trace`, in eval
    mode), run on abstract arrays with a batch of one.
    """
    check_layer(net, "summary: net")
    _, params, state = shapes(net, input_shape)  # Raises the layer-naming ShapeError.
    dtypes = [leaf.dtype for leaf in jax.tree.leaves(params)
              if jnp.issubdtype(leaf.dtype, jnp.floating)]
    dtype = dtypes[0] if dtypes else jax.dtypes.canonicalize_dtype(jnp.float64)
    first = input_shape[0] if is_multi_shape(input_shape) else input_shape
    batch = first[0] if first else None
    x = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, dtype),
                     _with_batch(tuple(input_shape), 1),
                     is_leaf=lambda s: isinstance(s, tuple) and not is_multi_shape(s))
    result: list[Row] = []

    def walk(tape: Tape) -> None:
        index = ".".join(map(str, tape.path))
        shape = _shape_of(tape.y, batch)
        if not tape.layer.children:
            result.append(Row(index, tape.layer.name, shape, param_count(tape.params),
                              max(len(tape.path) - 1, 0)))
            return
        if tape.path:
            result.append(Row(index, tape.layer.name.split("(")[0], shape,
                              param_count(tape.params), len(tape.path) - 1, leaf=False))
        for child in tape.children:
            walk(child)

    def record(p, s, xx):
        walk(trace(net, p, s, xx)[2])
        return ()

    jax.eval_shape(record, params, state, x)
    return result


def _format_shape(shape: Any, nested: bool = False) -> str:
    """``(None, 3)``; branches as ``(None, 3), (None, 4)``, those of a branch inside in
    parentheses, ``((None, 3), (None, 3)), (None, 4)``."""
    if not is_multi_shape(shape):
        return str(tuple(shape))
    branches = ", ".join(_format_shape(s, nested=True) for s in shape)
    return f"({branches})" if nested else branches


def summary(net: Layer, input_shape: Shape) -> str:
    """A table of layers, output shapes and parameter counts, with the total.

    Branches read as an indented block under their combinator's row, e.g.::

        1      Residual        (None, 8, 8, 16)
        1.0      FanOut(2)     (None, 8, 8, 16), (None, 8, 8, 16)
        ...

    and the branches of a branch in parentheses: ``((None, 3), (None, 3)), (None, 4)``.

    Args:
      net: a layer or a combinator such as `serial`.
      input_shape: the input shape, batch first (``None`` for an unknown batch).

    Returns:
      The table as a string (print it).

    Raises:
      ShapeError: naming the layer at fault when the shapes do not fit.
    """
    table = rows(net, input_shape)
    _, _, state = shapes(net, input_shape)
    body = format_table(
        ("#", "layer", "output shape", "params"),
        [(r.index or "0", "  " * r.depth + r.name, _format_shape(r.output_shape),
          f"{r.params:,}" if r.leaf else "") for r in table],
        right=(3,),
    )
    total = sum(r.params for r in table if r.leaf)
    lines = [f"input shape {tuple(input_shape)}", body, f"total params: {total:,}"]
    if param_count(state):
        lines.append(f"state (not trained): {param_count(state):,}")
    return "\n".join(lines)
