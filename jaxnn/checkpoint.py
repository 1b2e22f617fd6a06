"""Checkpoints of parameter and optimizer pytrees: atomic ``.npz`` files, no pickle.

`save` writes every leaf as a named array plus the leaves' tree paths, into a temporary
file in the same directory that is fsynced and then renamed over the target, so a reader
sees the old checkpoint or the new one, never half a file. `load` restores into the
structure of a template pytree (e.g. a freshly initialised state) and checks every leaf's
path, shape and dtype.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import rundir

_PATHS = "__paths__"
_NOTE = "__note__"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupted or does not fit the template."""


def _paths_and_leaves(tree: Any) -> tuple[list[str], list[Any]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(path) for path, _ in flat], [leaf for _, leaf in flat]


def _to_numpy(leaf: Any) -> np.ndarray:
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.asarray(leaf)


def save(path: str | os.PathLike, tree: Any, note: str | None = None) -> None:
    """Writes ``tree`` (and a text ``note``, see `load_noted`) to ``path`` atomically
    (`jaxnn.rundir.write_with`: temporary file, fsync, rename)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    paths, leaves = _paths_and_leaves(tree)
    arrays = {f"leaf_{i}": _to_numpy(leaf) for i, leaf in enumerate(leaves)}
    arrays[_PATHS] = np.array(paths, dtype=np.str_)
    if note is not None:
        arrays[_NOTE] = np.array(note, dtype=np.str_)
    rundir.write_with(path, lambda handle: np.savez(handle, **arrays))


def load(path: str | os.PathLike, template: Any) -> Any:
    """Reads a checkpoint into the structure of ``template`` (arrays, or their
    `jax.ShapeDtypeStruct`s from `jax.eval_shape`).

    Raises:
      CheckpointError: naming the file, for a missing, truncated or corrupted file, or
        one whose leaves do not match the template's paths, shapes and dtypes.
    """
    return load_noted(path, template)[0]


def load_noted(path: str | os.PathLike, template: Any,
               check_note: Callable[[str | None], None] | None = None
               ) -> tuple[Any, str | None]:
    """`load`, and the text note saved with the tree (None: saved without one).
    ``check_note(note)``, when given, runs before the leaves are matched to ``template``: a
    checkpoint of another config is refused for what changed, not for a leaf's shape."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with open(path, "rb") as handle:
            archive = np.load(handle, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):  # a lone .npy array
                raise ValueError("an array file, not an archive of a checkpoint's arrays")
            with archive:
                stored_paths = [str(p) for p in archive[_PATHS]]
                stored = [archive[f"leaf_{i}"] for i in range(len(stored_paths))]
                note = str(archive[_NOTE]) if _NOTE in archive.files else None
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, EOFError) as error:
        raise CheckpointError(
            f"{path}: corrupted or truncated checkpoint ({type(error).__name__}: {error})"
        ) from None
    if check_note is not None:
        check_note(note)
    paths, leaves = _paths_and_leaves(template)
    if stored_paths != paths:
        first = next((a, b) for a, b in zip([*stored_paths, ""], [*paths, ""], strict=False)
                     if a != b)
        raise CheckpointError(
            f"{path}: checkpoint holds {len(stored_paths)} leaves that do not match the model "
            f"({len(paths)} leaves); first difference (stored, expected): {first}")
    restored = []
    for name, value, leaf in zip(paths, stored, leaves, strict=True):
        want = _to_numpy(leaf) if not hasattr(leaf, "shape") else leaf
        is_key = jnp.issubdtype(want.dtype, jax.dtypes.prng_key)
        want_shape = (jax.eval_shape(jax.random.key_data, leaf).shape if is_key
                      else tuple(want.shape))
        if tuple(value.shape) != tuple(want_shape):
            raise CheckpointError(f"{path}: leaf {name} has shape {value.shape}, the model "
                                  f"expects {want_shape}")
        if is_key:
            restored.append(jax.random.wrap_key_data(value))
        else:
            if value.dtype != want.dtype:
                raise CheckpointError(f"{path}: leaf {name} has dtype {value.dtype}, the model "
                                      f"expects {want.dtype}")
            restored.append(jnp.asarray(value))
    return jax.tree.unflatten(jax.tree.structure(template), restored), note
