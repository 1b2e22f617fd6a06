"""JSON-lines files that survive a kill: per-epoch metrics and sweep results.

Rows are appended, flushed and fsynced, one JSON object per line. A process killed mid-write
leaves a partial last line; `read` drops it, and `repair` also cuts it off the file so that the
next `append` starts on a line of its own instead of gluing a row to the fragment.
"""

from __future__ import annotations

import json
import os
from typing import Any


def _valid_prefix(path: str) -> tuple[list[dict[str, Any]], int]:
    """The rows of the file's complete, parseable lines up to the first bad one, and the byte
    length of that prefix."""
    if not os.path.exists(path):
        return [], 0
    with open(path, "rb") as handle:
        data = handle.read()
    rows, end = [], 0
    while True:
        newline = data.find(b"\n", end)
        if newline < 0:
            break  # no newline: a partial last line (or nothing)
        line = data[end:newline].strip()
        if line:
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if not isinstance(row, dict):
                break
            rows.append(row)
        end = newline + 1
    return rows, end


def read(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``path`` up to its first incomplete or unparseable line; [] if missing."""
    return _valid_prefix(os.fspath(path))[0]


def repair(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Like `read`, and truncates the file to those rows (a no-op for an intact file)."""
    path = os.fspath(path)
    rows, end = _valid_prefix(path)
    if os.path.exists(path) and os.path.getsize(path) != end:
        os.truncate(path, end)
    return rows


def append(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Appends ``rows``, one line each, and syncs them to disk."""
    with open(path, "a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
        handle.flush()
        os.fsync(handle.fileno())


def rewrite(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Replaces the file with ``rows`` atomically (a kill leaves the old or the new file)."""
    path = os.fspath(path)
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
