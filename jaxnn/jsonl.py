"""JSON-lines files that survive a kill: per-epoch metrics and sweep results.

Rows are appended, flushed and fsynced, one JSON object per line. A process killed mid-write
leaves a partial last line (no newline after it); `read` drops it, and `repair` also cuts it
off the file so that the next `append` starts on a line of its own instead of gluing a row to
the fragment. Any other line that is not a JSON object is damage no kill makes: `read` and
`repair` raise `DamagedFile`, naming the line, and change nothing (cutting the file there
would lose every row after it). Values that are not numbers (NaN, infinities: a diverged
loss, a regression's accuracy) are written as ``null``, so every line is strict JSON that any
reader (``jq``, a browser) parses.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from jaxnn import rundir
from jaxnn.rundir import RunError


class DamagedFile(RunError):
    """A complete line of a rows file that is not a JSON object."""


def _valid_prefix(path: str) -> tuple[list[dict[str, Any]], int]:
    """The rows of the file's complete lines, and the byte length of those lines (all but a
    partial last line).

    Raises:
      DamagedFile: a complete line is not a JSON object.
    """
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
                row = None
            if not isinstance(row, dict):
                number = data.count(b"\n", 0, end) + 1
                text = line[:40].decode(errors="replace")
                raise DamagedFile(f"{path}, line {number}: not a row (a JSON object) but "
                                  f"{text!r}; the file is damaged (a kill cuts only its last "
                                  "line short), and nothing was changed")
            rows.append(row)
        end = newline + 1
    return rows, end


def read(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``path`` but a partial last line; [] if missing (`DamagedFile`: see
    above)."""
    return _valid_prefix(os.fspath(path))[0]


def repair(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Like `read`, and truncates the file to those rows (a no-op for an intact file)."""
    path = os.fspath(path)
    rows, end = _valid_prefix(path)
    if os.path.exists(path) and os.path.getsize(path) != end:
        os.truncate(path, end)
    return rows


def _strict(value: Any) -> Any:
    """``value`` with every non-finite float, however deep, as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value


def strict_json(value: Any, indent: int | None = None) -> str:
    """``value`` as strict JSON: NaN and infinities as ``null``."""
    return json.dumps(_strict(value), indent=indent, allow_nan=False)


def _line(row: dict[str, Any]) -> str:
    return strict_json(row) + "\n"


def append(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Appends ``rows``, one line each, and syncs them to disk. A write cut short (a full
    disk) leaves a partial last line, as a kill does (`repair`).

    Raises:
      OSError: naming ``path``.
    """
    try:
        with open(path, "a") as handle:
            handle.writelines(_line(row) for row in rows)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        rundir.name_file(error, path)
        raise


def rewrite(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Replaces the file with ``rows`` atomically (a kill leaves the old or the new file)."""
    rundir.write_text(path, "".join(_line(row) for row in rows))
