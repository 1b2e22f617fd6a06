"""Compiled programs kept on disk under a key known before tracing, so that a run that finds
one skips tracing and lowering as well as compiling.

JAX's persistent cache (`jaxnn.compile_cache`) is keyed by the lowered program, so a run
that hits it still traces and lowers every program: ~1-2 s of a cached quick-start sweep
(BENCHMARKS.md, "Persistent compilation cache"). `jaxnn sweep` keeps its programs here
instead (`enable`: ``executables/`` in the compile cache's directory). The key is the
caller's description of the program (``identity``: e.g. the config and the kind of program)
with the arguments' structure, shapes, dtypes and shardings, and everything else tracing
reads: jaxnn's source files, the versions of JAX, jaxlib, optax, chex, numpy and ml_dtypes,
JAX's configuration, ``XLA_FLAGS``, the devices and the compiler options. So an edited file,
an upgrade or another flag misses. An entry is written whole (to a temporary file, then
renamed); one that cannot be read is compiled again and replaced. A program that JAX's own
cache served (where both are on) is not kept: XLA's CPU client serializes such an
executable without its compiled kernels (loading it fails at the first call).

The directory is kept under a size (``max_bytes`` of `enable`), as JAX's cache can be with
``jax_compilation_cache_max_size``: storing an entry deletes the least recently used ones
beyond it (a load marks its entry used), and an entry larger than the whole size is not
kept. Every key holds jaxnn's source, so each edit or upgrade leaves the older entries to
this eviction.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

SUBDIRECTORY = "executables"
FORMAT = 2  # in every key: a change of what an entry holds misses the older ones
_JAX_CACHE_HIT = "/jax/compilation_cache/cache_hits"
# The distributions whose code a jaxnn program traces.
TRACED_DISTRIBUTIONS = ("jax", "jaxlib", "optax", "chex", "numpy", "ml_dtypes")

ENTRY_SUFFIX = ".pickle"
PARTIAL_SUFFIX = ".partial"
# A temporary file older than this was left by a writer that was killed.
ABANDONED_AFTER_S = 3600.0

log = logging.getLogger(__name__)
_directory: str | None = None
_max_bytes = -1


def enable(directory_: str | None, max_bytes: int = -1) -> None:
    """Keeps compiled programs in ``directory_`` from now on (None: turns the cache off).

    Args:
      directory_: the directory, or None.
      max_bytes: the most its entries may take together; the least recently used go first.
        -1: no limit; 0: nothing is kept.
    """
    global _directory, _max_bytes
    _directory, _max_bytes = directory_, max_bytes


def directory() -> str | None:
    """Where compiled programs are kept, or None while the cache is off."""
    return _directory


@functools.cache
def _environment() -> str:
    """A digest of what a program's tracing reads beyond its arguments and JAX's config:
    jaxnn's source, the traced libraries' versions, ``XLA_FLAGS`` and the devices."""
    digest = hashlib.sha256()
    package = os.path.dirname(os.path.abspath(__file__))
    for folder, subfolders, files in sorted(os.walk(package)):
        subfolders.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, package).encode())
                with open(path, "rb") as handle:
                    digest.update(handle.read())
    for name in TRACED_DISTRIBUTIONS:
        try:
            digest.update(f"{name}={importlib.metadata.version(name)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{name}=absent".encode())
    digest.update(os.environ.get("XLA_FLAGS", "").encode())
    digest.update(repr([(d.platform, d.device_kind, d.id, d.process_index)
                        for d in jax.devices()]).encode())
    return digest.hexdigest()


def key(identity: Any, args: Sequence[Any], options: dict | None) -> str:
    """The entry's name for a program described by ``identity`` (its repr must say all
    that the traced function closes over), called with ``args`` and compiled with
    ``options``."""
    leaves, structure = jax.tree.flatten(args)
    avals = [(str(jax.typeof(leaf)), repr(leaf.sharding)
              if isinstance(leaf, jax.Array | jax.ShapeDtypeStruct) else None)
             for leaf in leaves]
    # Every JAX setting (a JAX without `config.values` fails here: the program is not kept).
    settings = sorted((name, repr(value)) for name, value in jax.config.values.items())
    described = repr((FORMAT, _environment(), settings, identity, str(structure), avals,
                      sorted((options or {}).items())))
    return hashlib.sha256(described.encode()).hexdigest()


def compile_program(jitted, args: Sequence[Any], options: dict | None, identity: Any,
                    compile_lowered: Callable[[Any, dict | None], Any]) -> tuple[Any, bool]:
    """``(compiled, loaded)``: ``compile_lowered(jitted.lower(*args), options)``, or
    (``loaded``) the program compiled for the same ``identity``, arguments and options by
    an earlier run, loaded from `directory`.

    Args:
      jitted: the `jax.jit` function.
      args: its arguments (arrays or their `jax.ShapeDtypeStruct`s).
      options: XLA compiler options.
      identity: a description of the program whose repr covers everything ``jitted``
        closes over, or None to keep it out of this cache.
      compile_lowered: compiles a lowered program with options.
    """
    return begin_program(jitted, args, options, identity, compile_lowered)[0]()


def begin_program(jitted, args: Sequence[Any], options: dict | None, identity: Any,
                  compile_lowered: Callable[[Any, dict | None], Any]
                  ) -> tuple[Callable[[], tuple[Any, bool]], Any]:
    """`compile_program` in two steps: this call loads the program or lowers it (tracing
    is Python's, under the GIL) and returns ``(finish, out_info)``: ``finish()`` compiles
    what was lowered (and keeps it) and returns ``(compiled, loaded)``; ``out_info``, the
    `jax.ShapeDtypeStruct`s of the program's outputs. XLA's compiler releases the GIL, so
    ``finish`` may run on another thread while this one traces the next program."""
    where = directory()
    path = None
    if where is not None and identity is not None:
        try:
            path = os.path.join(where, key(identity, args, options) + ENTRY_SUFFIX)
        except Exception as error:  # what this JAX cannot describe is compiled, not kept
            log.debug("not kept (no key): %s", error)
    if path is not None:
        compiled = _load(path)
        if compiled is not None and _takes(compiled, args):
            return (lambda: (compiled, True)), compiled.out_info
    hits = []

    def count_hits(event: str, **unused_kwargs) -> None:
        del unused_kwargs
        if event == _JAX_CACHE_HIT:
            hits.append(event)

    lowered = jitted.lower(*args)

    def finish() -> tuple[Any, bool]:
        jax.monitoring.register_event_listener(count_hits)
        try:
            compiled = compile_lowered(lowered, options)
        finally:
            jax.monitoring.unregister_event_listener(count_hits)
        if path is not None:
            if hits:  # JAX's cache served it
                log.debug("not kept (served by JAX's cache): %s", path)
            else:
                _store(compiled, path)
        return compiled, False

    return finish, lowered.out_info


def _takes(compiled, args: Sequence[Any]) -> bool:
    """Whether a loaded program takes ``args`` (their structure, shapes and dtypes): an entry
    copied or renamed by hand over this key's (another program's) failed when called."""
    try:
        if compiled.in_tree != jax.tree.structure((tuple(args), {})):
            return False
        given = [(tuple(arg.shape), str(arg.dtype)) for arg in jax.tree.leaves(args)]
        taken = [(tuple(aval.shape), str(aval.dtype))
                 for aval in jax.tree.leaves(compiled.in_avals)]
    except (AttributeError, TypeError) as error:  # what this JAX does not describe
        log.debug("not checked: %s", error)
        return True
    if given != taken:
        log.debug("recompiling: the kept program takes %s, not %s", taken, given)
    return given == taken


def _load(path: str):
    """The program kept at ``path``, or None (none there, or not loadable)."""
    from jax.experimental import serialize_executable

    try:
        with open(path, "rb") as handle:
            payload, in_tree, out_tree, device_ids = pickle.load(handle)
        by_id = {device.id: device for device in jax.devices()}
        compiled = serialize_executable.deserialize_and_load(
            payload, in_tree, out_tree,
            execution_devices=[by_id[device_id] for device_id in device_ids])
    except FileNotFoundError:
        return None
    except Exception as error:  # a damaged or foreign entry: compiled anew
        log.debug("recompiling over %s: %s", path, error)
        return None
    log.debug("loaded %s", path)
    try:
        os.utime(path)  # used now: the last to be evicted
    except OSError:  # another process evicted it meanwhile, or a read-only cache
        pass
    return compiled


def _store(compiled, path: str) -> None:
    """Writes ``compiled`` to ``path`` whole (a temporary file renamed), or nothing."""
    from jax.experimental import serialize_executable

    temporary = None
    try:
        device_ids = [device.id for device in compiled.runtime_executable().local_devices()]
        blob = pickle.dumps((*serialize_executable.serialize(compiled), device_ids))
        if 0 <= _max_bytes < len(blob):
            log.debug("not kept (%d bytes, more than the cache's %d): %s", len(blob),
                      _max_bytes, path)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=PARTIAL_SUFFIX)
        with os.fdopen(handle, "wb") as out:
            out.write(blob)
        os.replace(temporary, path)
    except Exception as error:  # a backend that cannot serialize it, a full disk: not kept
        log.debug("not kept: %s", error)
        if temporary and os.path.exists(temporary):
            os.remove(temporary)
        return
    log.debug("stored %s", path)
    if _max_bytes >= 0:
        evict(os.path.dirname(path), _max_bytes, keep=path)


def evict(folder: str, max_bytes: int, keep: str = "") -> list[str]:
    """Deletes the least recently used entries of ``folder`` (oldest modification time first;
    never ``keep``) until the rest take at most ``max_bytes``, and temporary files that
    killed writers left. Entries that other processes delete or add meanwhile are skipped.

    Returns:
      The paths deleted.
    """
    entries, deleted = [], []
    now = time.time()
    for entry in os.scandir(folder):
        try:
            if not entry.is_file(follow_symlinks=False):  # nothing this cache wrote
                continue
            stat = entry.stat()
        except OSError:
            continue
        if entry.name.endswith(ENTRY_SUFFIX):
            entries.append((stat.st_mtime_ns, entry.path, stat.st_size))
        elif entry.name.endswith(PARTIAL_SUFFIX) and now - stat.st_mtime > ABANDONED_AFTER_S:
            entries.append((-1, entry.path, 0))  # abandoned: deleted whatever the size
    total = sum(size for _, _, size in entries)
    for used, path, size in sorted(entries):
        if (total <= max_bytes and used >= 0) or path == keep:
            continue
        try:
            os.remove(path)
            deleted.append(path)
            log.debug("evicted %s", path)
        except OSError:  # gone meanwhile, or another user's in a shared folder
            pass
        total -= size
    return deleted
