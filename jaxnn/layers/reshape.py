"""Flatten: (batch, d1, d2, ...) -> (batch, d1 * d2 * ...)."""

from __future__ import annotations

import math

import jax

from jaxnn.layer import Layer, Shape, ShapeError, check_single, stateless


def Flatten() -> Layer:
    """Flattens every dimension but the batch; its manual rule reshapes ``dy`` back."""
    name = "Flatten()"

    def init(key: jax.Array, input_shape: Shape):
        del key  # No parameters.
        check_single(name, input_shape)
        if len(input_shape) < 1:
            raise ShapeError(f"{name} needs a batch dimension, got shape {tuple(input_shape)}")
        if any(dim is None for dim in input_shape[1:]):
            raise ShapeError(f"{name} needs known feature dimensions, got {tuple(input_shape)}")
        return (input_shape[0], math.prod(input_shape[1:])), ()

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # -1 fails on an empty batch

    def backward(params, x, y, dy, *, key=None, train=False):
        del params, y, key, train
        return (), dy.reshape(x.shape)

    return stateless(init, apply, backward, name=name)
