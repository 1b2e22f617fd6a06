"""JAX's persistent compilation cache for the ``jaxnn`` command.

A sweep is run again and again while a study is refined, and on CPU compiling its programs
is a large share of its wall time. With the cache on, XLA stores every compiled program on
disk, keyed by the program and the JAX version, backend and flags, so running the same
config or sweep a second time compiles nothing new.

Where: ``--compile-cache DIR``; else ``$JAXNN_COMPILE_CACHE``; else JAX's own
``$JAX_COMPILATION_CACHE_DIR`` when set; else `default_directory` (``~/.cache/jaxnn/xla``,
under ``$XDG_CACHE_HOME`` when set). ``--no-compile-cache`` or ``JAXNN_COMPILE_CACHE=off``
turns it off.

Size: `jaxnn.executable_cache` is kept under ``$JAXNN_COMPILE_CACHE_MAX_MB`` megabytes
(`DEFAULT_MAX_MB` when unset; -1: no limit), the least recently used programs deleted
first: its keys hold jaxnn's source, so without a limit every edit or upgrade would leave
its programs behind for good. JAX's own cache keeps JAX's default (no limit; its
``JAX_COMPILATION_CACHE_MAX_SIZE`` sets one): JAX's eviction fails on entries written
without it (by an earlier jaxnn, or any JAX program sharing the directory), and then
stores nothing more.

`jaxnn sweep` (one process owning it) keeps its programs in `jaxnn.executable_cache`
instead, in ``executables/`` there, which also skips tracing and lowering them; JAX's cache
stays off in that process (XLA cannot serialize again what it served) and the rest of a
sweep's programs (a few small eager ones) compile in milliseconds.
"""

from __future__ import annotations

import os

import jax

from jaxnn import executable_cache
from jaxnn.config import ConfigError

ENV = "JAXNN_COMPILE_CACHE"
MAX_MB_ENV = "JAXNN_COMPILE_CACHE_MAX_MB"
DEFAULT_MAX_MB = 1024
OFF = "off"


def default_directory() -> str:
    """``$XDG_CACHE_HOME/jaxnn/xla``, or ``~/.cache/jaxnn/xla``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxnn", "xla")


def max_bytes() -> int:
    """The size `executable_cache` is kept under, in bytes (-1: no limit), from `MAX_MB_ENV`.

    Raises:
      ConfigError: naming the variable, for a value that is not -1 or a whole number >= 0.
    """
    text = os.environ.get(MAX_MB_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_MB << 20
    try:
        megabytes = int(text)
    except ValueError:
        megabytes = -2
    if megabytes < -1:
        raise ConfigError(f"${MAX_MB_ENV}", "", f"{text!r} is not a whole number of "
                          "megabytes (0: keep nothing, -1: no limit)")
    return -1 if megabytes == -1 else megabytes << 20


def enable(directory: str | None = None, whole_programs: bool = False) -> str | None:
    """Turns the cache on (before anything is compiled); returns its directory, or None when
    it is off.

    Args:
      directory: the cache directory, `OFF`, or None for the environment's or the default.
      whole_programs: keep programs in `executable_cache` (``executables/`` in the
        directory) rather than JAX's cache, which stays off.

    Raises:
      ConfigError: for a bad `MAX_MB_ENV`, or a directory that cannot be made.
    """
    choice = directory or os.environ.get(ENV) or os.environ.get(
        "JAX_COMPILATION_CACHE_DIR") or default_directory()
    if choice == OFF:
        jax.config.update("jax_enable_compilation_cache", False)
        executable_cache.enable(None)
        return None
    limit = max_bytes()
    try:
        os.makedirs(choice, exist_ok=True)
    except OSError as error:
        reason = "a file" if os.path.isfile(choice) else error.strerror
        raise ConfigError(choice, "", f"cannot be the compile cache's directory ({reason}); "
                          "give another with --compile-cache DIR") from None
    executable_cache.enable(os.path.join(choice, executable_cache.SUBDIRECTORY)
                            if whole_programs else None, limit)
    jax.config.update("jax_enable_compilation_cache", not whole_programs)
    if whole_programs:
        return choice
    jax.config.update("jax_compilation_cache_dir", choice)
    # Every program, however small or quick: a sweep compiles many of both.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return choice
