"""A model summary computed from shapes alone: `jax.eval_shape` allocates no arrays."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxnn._table import format_table
from jaxnn.layer import Layer, Shape

# Stands in for a PRNG key: tracing `init` on it allocates nothing.
_ABSTRACT_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


class Row(NamedTuple):
    """One line of a summary: a layer's position, name, output shape and parameter count."""

    index: str
    name: str
    output_shape: Shape
    params: int


def param_count(params: Any) -> int:
    """The number of scalars in a parameter pytree (arrays or `jax.ShapeDtypeStruct`s)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def shapes(layer: Layer, input_shape: Shape) -> tuple[Shape, Any]:
    """``layer.init``'s output shape and parameter shapes, without allocating parameters."""
    box = {}

    def init(key):
        box["output_shape"], params = layer.init(key, tuple(input_shape))
        return params

    params = jax.eval_shape(init, _ABSTRACT_KEY)
    return box["output_shape"], params


def rows(net: Layer, input_shape: Shape) -> list[Row]:
    """The summary rows, one per leaf layer (combinators are walked, not listed)."""
    shapes(net, input_shape)  # Raises the layer-naming ShapeError for a bad stack.
    result: list[Row] = []

    def walk(layer: Layer, shape: Shape, index: str) -> Shape:
        if layer.children:
            for position, child in enumerate(layer.children):
                shape = walk(child, shape, f"{index}.{position}" if index else str(position))
            return shape
        out_shape, params = shapes(layer, shape)
        result.append(Row(index, layer.name, out_shape, param_count(params)))
        return out_shape

    walk(net, tuple(input_shape), "")
    return result


def summary(net: Layer, input_shape: Shape) -> str:
    """A table of layers, output shapes and parameter counts, with the total.

    Args:
      net: a layer or a `serial` network.
      input_shape: the input shape, batch first (``None`` for an unknown batch).

    Returns:
      The table as a string (print it).

    Raises:
      ShapeError: naming the layer at fault when the shapes do not fit.
    """
    table = rows(net, input_shape)
    body = format_table(
        ("#", "layer", "output shape", "params"),
        [(r.index or "0", r.name, tuple(r.output_shape), f"{r.params:,}") for r in table],
        right=(3,),
    )
    total = sum(r.params for r in table)
    return f"input shape {tuple(input_shape)}\n{body}\ntotal params: {total:,}"
