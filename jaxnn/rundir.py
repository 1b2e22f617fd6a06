"""Run and sweep directories: created unique, written by one process at a time.

`create` makes ``PARENT/STEM-YYYYmmdd-HHMMSS`` with `os.mkdir`, which fails when the name is
taken, so two runs started in the same second get two directories (the second one gets a
``-2`` suffix, and so on). `locked` holds an OS file lock (``fcntl.flock``) on ``.lock`` in the
directory while a process writes it: a second writer gets a `RunError` naming the holder's
PID. The OS drops the lock when its holder exits, however it exits, so a dead process's
lock never blocks anyone (the PID left in the file is only informative).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

LOCK = ".lock"


class RunError(Exception):
    """A run or sweep directory that cannot be used (taken, busy, or holding another run)."""


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a user can act on, each reported by the ``jaxnn`` command as one line: a
    bad config or data, a taken or unusable directory, a bad checkpoint, a network the
    data's shape does not fit."""
    from jaxnn.checkpoint import CheckpointError
    from jaxnn.config import ConfigError
    from jaxnn.data import DataError
    from jaxnn.layer import ShapeError

    return ConfigError, RunError, CheckpointError, DataError, ShapeError


def system_refused(error: OSError) -> str:
    """The one line for a file the system would not write or read (a full disk, a lost
    mount, a permission) once a command had begun: every file jaxnn writes is replaced whole
    or appended by rows a later read cuts back to whole ones (`jaxnn.rundir.write_with`,
    `jaxnn.jsonl`), so what it wrote before stands."""
    where = f"{error.filename}: " if error.filename else ""
    return (f"{where}{error.strerror or error}; stopped here, and what was written before "
            "is intact (a run or sweep continues with --resume once the cause is fixed)")


RUN = "a training run"
SWEEP = "a sweep"
REPORT = "a shared study's report"


def refuse_overwriting(workdir: str | os.PathLike, names: tuple[str, ...], what: str) -> None:
    """Refuses a new run or sweep (``what``) in ``workdir`` where it would overwrite a file
    it writes, ``names`` or a figure (``*.png``), that is not its own: ``--workdir .`` in a
    folder holding the user's commented ``config.toml`` replaced it."""
    if not os.path.isdir(workdir):
        return
    for name in sorted(os.listdir(workdir)):
        if name in names or name.endswith(".png"):
            raise RunError(f"{workdir} holds {name}, which {what} would overwrite; choose "
                           "an empty or new directory")


def holds(workdir: str | os.PathLike) -> str | None:
    """What ``workdir`` holds: `RUN`, `REPORT` or `SWEEP` (by the files that make one), or
    None. A report is told from a sweep by its `jaxnn.sweep.workers.REPORT_OF`: both
    have results and a sweep config."""
    from jaxnn.run import RUN_FILES
    from jaxnn.sweep.execute import RESULTS, SWEEP_CONFIG
    from jaxnn.sweep.workers import REPORT_OF

    def has(*names: str) -> bool:
        return any(os.path.exists(os.path.join(workdir, name)) for name in names)

    if has(*RUN_FILES):
        return RUN
    if has(REPORT_OF):
        return REPORT
    return SWEEP if has(RESULTS, SWEEP_CONFIG) else None


DATA_DIGEST = "data.digest"  # a digest of the data a run or sweep began on


def record_data(workdir: str | os.PathLike, digest: str) -> None:
    """Writes the ``digest`` of a new run's or sweep's data into ``workdir``."""
    write_text(os.path.join(workdir, DATA_DIGEST), digest + "\n")


def check_data(workdir: str | os.PathLike, digest: str, data: str, what: str) -> None:
    """Refuses to continue ``what`` (a run, a sweep) in ``workdir`` on ``data`` of another
    ``digest`` than it began on: a file replaced between a run and its ``--resume`` trained
    on with other data (or, of another shape, was blamed on the checkpoint). A directory
    from before these records is not checked."""
    path = os.path.join(workdir, DATA_DIGEST)
    try:
        with open(path, encoding="utf-8") as handle:
            began = handle.read().strip()
    except FileNotFoundError:
        return
    if began != digest:
        raise RunError(f"{data} is not the data this {what} began on ({DATA_DIGEST} holds "
                       f"another digest); give it that data back, or start a new {what}")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replaces the file at ``path`` with ``text`` (UTF-8) whole (`write_bytes`)."""
    write_bytes(path, text.encode("utf-8"))  # encoded before anything is opened


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replaces the file at ``path`` with ``data`` whole (`write_with`)."""
    write_with(path, lambda handle: handle.write(data))


def write_with(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Replaces the file at ``path`` whole with what ``write(handle)`` writes: to a
    temporary file beside it, synced, then renamed over it (the directory synced too), so a
    kill, a power loss or an error (a full disk) leaves the old file or the new one, never an
    empty or half-written one (nor, after an error, the temporary). The temporary is named
    after its writer's PID (two writers never share one); one a killed writer left is
    removed by the next write.

    Raises:
      OSError: naming ``path`` (a full disk's error named no file).
    """
    path = os.path.realpath(path)  # a symlink's target is written (as open(path, "w") did)
    directory, name = os.path.split(path)
    prefix = f".{name}.tmp-"
    with contextlib.suppress(OSError):  # a directory that cannot be listed: the open says
        for left in os.listdir(directory):
            if left.startswith(prefix) and not _alive(left[len(prefix):].split("-")[0]):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(directory, left))
    temporary = os.path.join(directory, f"{prefix}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(temporary, "xb") as handle:  # mode 0o666 less the umask, as any file's
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(error, OSError):
            name_file(error, path)
        raise
    sync_directory(directory)


def _alive(pid: str) -> bool:
    """Whether process ``pid`` (a temporary file's writer) still runs on this host."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def sync_directory(path: str | os.PathLike) -> None:
    """fsyncs the directory ``path``, so that a rename in it survives a power loss."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_figure(figure, path: str | os.PathLike, **savefig_kwargs) -> str:
    """Writes a matplotlib ``figure`` to ``path`` whole (`write_bytes`), in the format its
    extension names; returns ``path``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=os.path.splitext(path)[1][1:] or "png", **savefig_kwargs)
    write_bytes(path, buffer.getvalue())
    return os.fspath(path)


def name_file(error: OSError, path: str | os.PathLike) -> None:
    """Makes ``error`` name ``path`` if it names no file (a write's or a close's does not),
    for the one-line message `jaxnn.cli` prints."""
    if error.filename is None:
        error.filename = os.fspath(path)


def make_directory(path: str) -> None:
    """Creates ``path`` and its parents, unless it is a directory already.

    Raises:
      RunError: naming ``path`` when it is a file or cannot be created.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunError(f"{path} is a file, not a directory; choose another directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise RunError(f"{path}: cannot create the directory ({error.strerror})") from None


def create(parent: str | os.PathLike, stem: str) -> str:
    """A new, empty directory ``parent/stem-<time>[-N]``, created atomically.

    Raises:
      RunError: naming ``parent`` when it is a file or it or the new directory cannot be
        created (e.g. a read-only ``parent``).
    """
    parent = os.fspath(parent)
    make_directory(parent)
    base = os.path.join(parent, f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    for attempt in range(1, 10_000):
        path = base if attempt == 1 else f"{base}-{attempt}"
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        except OSError as error:
            raise RunError(f"{parent}: cannot create a directory in it ({error.strerror})") \
                from None
        return path
    raise RunError(f"{base}: no free directory name")


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Holds ``path``'s lock for the ``with`` block, creating ``path`` if needed.

    Raises:
      RunError: when another live process holds it, naming that process; when ``path`` is a
        file, cannot be created or cannot be written.
    """
    path = os.fspath(path)
    make_directory(path)
    lock_path = os.path.join(path, LOCK)
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:  # a read-only directory or file system
        raise RunError(f"{path}: cannot write in it ({error.strerror})") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunError(f"{path} is in use by another jaxnn process (PID {holder}); wait for "
                           "it to finish or stop it") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock


class Interrupted(Exception):
    """Ctrl-C during a run: what was written stays valid, and ``resume`` says how to go on."""

    def __init__(self, path: str, command: str, resumable: bool = True):
        self.path = path
        super().__init__(
            f"interrupted; {path} keeps what was finished: continue with jaxnn {command} "
            f"--resume {path}" if resumable else f"interrupted; {path} keeps what was "
            "finished, and no checkpoint to resume from (output.checkpoint = false)")


@contextlib.contextmanager
def guarded(path: str, command: str, *, created: bool,
            resumable: bool = True) -> Iterator[None]:
    """Runs a command's work on ``path``: a directory this command ``created`` is removed again
    when the work fails before writing anything in it; Ctrl-C becomes `Interrupted` (which
    says how to resume, where the work is ``resumable``)."""
    try:
        yield
    except BaseException as error:
        # The lock and the temporaries of a file not yet renamed into place are not written.
        names = set(os.listdir(path)) if os.path.isdir(path) else set()
        written = {name for name in names if not name.startswith(".")}
        if created and os.path.isdir(path) and not written:
            with contextlib.suppress(OSError):
                for name in names:
                    os.remove(os.path.join(path, name))
                os.rmdir(path)
        if isinstance(error, KeyboardInterrupt) and written:
            raise Interrupted(path, command, resumable) from None
        raise
