"""Channel packing: trials of a ``model.layers`` network that differ only in the
``features`` of some Dense or Conv layers (swept as ``model.layers[i].features``) share one
program. Those layers are padded to the group's widest and their extra channels masked, up
to the next Dense or Conv layer, so padded channels never touch a real one: every trial
equals its lone run. A trial starts from the params it draws alone, placed into the padded
arrays with zeros around them (`embed`); `crop` takes them back out.

Packable networks are flat lists of layers that keep channels apart: Dense, Conv1D and
Conv2D, per-channel layers (activations, pooling, BatchNorm), Flatten and Dropout, where no
Dropout lies between a packed layer and the next Dense or Conv layer (there its draws would
follow the padded shape, not the trial's). LayerNorm and GroupNorm mix channels and branches
are not walked, so such networks get one program per channel count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import combinators, models
from jaxnn import config as config_lib
from jaxnn.config import Config
from jaxnn.summary import shapes

FEATURE_TYPES = ("Dense", "Conv1D", "Conv2D")
# Layers that act on each channel (the last axis) apart from the others.
PER_CHANNEL_TYPES = ("BatchNorm", "MaxPool2D", "AvgPool2D", "SumPool2D", "GlobalAvgPool",
                     "Identity", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "Gelu", "Softplus",
                     "Elu", "Selu", "Silu")
_SWEPT_FEATURES = re.compile(r"model\.layers\[(\d+)\]\.features")


def swept_layers(names: Sequence[str]) -> tuple[int, ...]:
    """The top-level layers whose ``features`` a sweep varies, from its swept names."""
    return tuple(sorted({int(m[1]) for m in map(_SWEPT_FEATURES.fullmatch, names) if m}))


def walkable(cfg: Config) -> bool:
    """Whether ``cfg`` is a ``model.layers`` network whose channels `placements` can follow
    (see the module docstring)."""
    allowed = (*FEATURE_TYPES, *PER_CHANNEL_TYPES, "Flatten", "Dropout")
    return bool(cfg.model.layers) and all(spec.get("type") in allowed
                                          for spec in cfg.model.layers)


def padded_span(types: Sequence[str], index: int) -> range:
    """The layers after a packed layer ``index`` whose activations are padded: up to the
    next Dense or Conv layer (through any Flatten)."""
    stop = next((after for after in range(index + 1, len(types))
                 if types[after] in FEATURE_TYPES), len(types))
    return range(index + 1, stop)


def packable(cfg: Config, indices: Sequence[int]) -> bool:
    """Whether trials of ``cfg`` that differ in the features of ``indices`` can share a
    program."""
    types = [spec.get("type") for spec in cfg.model.layers]
    return bool(indices) and walkable(cfg) and all(
        i < len(types) and types[i] in FEATURE_TYPES
        and "Dropout" not in [types[j] for j in padded_span(types, i)] for i in indices)


def features(cfg: Config, indices: Sequence[int]) -> tuple[int, ...]:
    """The features of the layers ``indices``."""
    return tuple(cfg.model.layers[i]["features"] for i in indices)


def with_features(cfg: Config, indices: Sequence[int], widths: Sequence[int]) -> Config:
    """``cfg`` with the layers ``indices`` given ``widths`` features."""
    layers = [dict(spec) for spec in cfg.model.layers]
    for index, width in zip(indices, widths, strict=True):
        layers[index]["features"] = width
    return cfg.replace(model={"layers": tuple(layers)})


def blanked(raw_model: dict, indices: Sequence[int]) -> None:
    """Blanks the features of ``indices`` in a raw ``[model]`` table (the structure key)."""
    for index in indices:
        raw_model["layers"][index]["features"] = None


def model_key(model: config_lib.ModelConfig) -> str:
    """``model`` as a hashable key (its ``layers`` hold tables)."""
    return json.dumps(dataclasses.asdict(model), sort_keys=True, default=str)


_SHAPES: dict[tuple, list] = {}  # model (as JSON), input shape, outputs -> layer_shapes


def layer_shapes(model: config_lib.ModelConfig, input_shape: Sequence[int],
                 output_size: int) -> list:
    """``[(input shape, output shape, param shapes, state shapes)]``, one per top-level
    layer (no allocation)."""
    key = (model_key(model), tuple(input_shape), output_size)
    if key not in _SHAPES:
        shape, found = (None, *input_shape), []
        for layer in models.build(model, output_size).children:
            out, params, state = shapes(layer, shape)
            found.append((shape, out, params, state))
            shape = out
        _SHAPES[key] = found
    return _SHAPES[key]


def placements(own: config_lib.ModelConfig, padded: config_lib.ModelConfig,
               input_shape: Sequence[int], output_size: int) -> Any:
    """Where each element of a trial's own params sits in the padded network's: a tree
    shaped like its own params whose leaves are `_Index`es into the padded leaf.

    Along the activations' last axis, own channel ``c`` sits at padded channel ``c``; after
    a Flatten of ``S`` positions of ``C`` padded channels, own feature ``s * c_own + c`` sits
    at ``s * C + c``. A Dense or Conv layer's weight takes its input axis from there and its
    output axis from the start; per-channel layers' leaves take their last axis from there.
    """
    own_layers = layer_shapes(own, input_shape, output_size)
    padded_layers = layer_shapes(padded, input_shape, output_size)
    channel = None  # own channel i of the current activation sits at channel[i]; None: as is
    params = []
    for index, (spec, (in_own, _, p_own, _), (in_padded, _, _, _)) in enumerate(zip(
            own.layers, own_layers, padded_layers, strict=True)):
        kind = spec["type"]
        if kind == "Flatten" and channel is not None:
            positions = math.prod(in_own[1:-1])
            channel = (np.arange(positions)[:, None] * in_padded[-1]
                       + channel[None, :]).ravel()

        def place(path, leaf, kind=kind, incoming=channel):
            axes = [np.arange(n) for n in leaf.shape]
            if incoming is not None and kind in FEATURE_TYPES and path[-1] == \
                    jax.tree_util.DictKey("w"):
                axes[-2] = incoming
            elif incoming is not None and kind in PER_CHANNEL_TYPES and axes:
                axes[-1] = incoming
            return _Index(np.ix_(*axes))

        params.append(jax.tree_util.tree_map_with_path(place, p_own))
        if kind in FEATURE_TYPES:
            widened = spec["features"] != padded.layers[index]["features"]
            channel = np.arange(spec["features"]) if widened else None
    return tuple(params)


class _Index:
    """An ``np.ix_`` index into a padded leaf (a pytree leaf itself, unlike a tuple)."""

    def __init__(self, axes: tuple):
        self.axes = axes


def embed_params(own_params: Any, own: config_lib.ModelConfig,
                 padded: config_lib.ModelConfig, input_shape: Sequence[int],
                 output_size: int) -> Any:
    """A trial's own params (host arrays) placed in zeros shaped like ``padded``'s."""
    where = placements(own, padded, input_shape, output_size)
    targets = tuple(p for _, _, p, _ in layer_shapes(padded, input_shape, output_size))

    def one(index, leaf, target):
        out = np.zeros(target.shape, np.asarray(leaf).dtype)
        out[index.axes] = leaf
        return out

    return jax.tree.map(one, where, own_params, targets)


def crop_params(params: Any, own: config_lib.ModelConfig, input_shape: Sequence[int],
                output_size: int) -> Any:
    """A packed trial's own params taken out of the padded ``params``."""
    where = placements(own, padded_model(own, params), input_shape, output_size)
    return jax.tree.map(lambda index, leaf: np.asarray(leaf)[index.axes], where, params)


def padded_model(own: config_lib.ModelConfig, padded_params: Any) -> config_lib.ModelConfig:
    """The padded network's model, read off its params: each Dense and Conv layer as wide
    as its weight."""
    layers = [dict(spec, features=int(np.shape(p["w"])[-1]))
              if spec["type"] in FEATURE_TYPES and "features" in spec else spec
              for spec, p in zip(own.layers, padded_params, strict=True)]
    return dataclasses.replace(own, layers=tuple(layers))


def masked_network(config: Config, output_size: int, indices: Sequence[int]):
    """``network(hparams)`` for a program that packs channel counts: the config's layers
    ``indices`` are padded, and ``hparams["channels"]`` (one int per packed layer and
    trial, vmapped) masks the channels beyond a trial's own, from each packed layer up to
    the next Dense, Conv or Flatten. Initial params come from `embed_params`."""
    dtype = jnp.dtype(config.training.precision)
    types = [spec["type"] for spec in config.model.layers]
    mask_of = {}  # layer -> which packed layer's mask it takes
    for position, index in enumerate(indices):
        mask_of[index] = position
        for after in range(index + 1, len(types)):
            if types[after] in (*FEATURE_TYPES, "Flatten"):
                break
            mask_of[after] = position
    widths = features(config, indices)

    def network(hparams):
        channels = hparams["channels"]
        masks = [(jnp.arange(width, dtype=channels.dtype) < channels[p]).astype(dtype)
                 for p, width in enumerate(widths)]
        net = models.build(config.model, output_size, dropout=hparams["dropout"],
                           source=config.source)
        return combinators.serial(*(models.masked(layer, masks[mask_of[i]]) if i in mask_of
                                    else layer for i, layer in enumerate(net.children)))

    return network


def step_flops_of(cfg: Config, indices: Sequence[int], input_shape: Sequence[int],
                  output_size: int):
    """``flops(widths)``: a training step's FLOPs (forward and backward, the batch's) with
    the layers ``indices`` given ``widths`` features. From one shape inference of ``cfg``:
    a Dense or Conv layer's MACs are its weight's size times its output's positions, and
    scale with its own features and its input's channels (the previous such layer's)."""
    ref = features(cfg, indices)
    terms, previous = [], None  # terms: (MACs in cfg, packed position of out, of input)
    for index, (_, out, params, _) in enumerate(layer_shapes(cfg.model, input_shape,
                                                             output_size)):
        if isinstance(params, dict) and "w" in params:
            own = indices.index(index) if index in indices else None
            terms.append((params["w"].size * math.prod(out[1:-1]), own, previous))
            previous = own

    def flops(widths: Sequence[int]) -> float:
        def ratio(position):
            return 1.0 if position is None else widths[position] / ref[position]

        macs = sum(m * ratio(own) * ratio(incoming) for m, own, incoming in terms)
        return 6.0 * cfg.training.batch_size * macs

    return flops
