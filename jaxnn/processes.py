"""What the processes of a `jax.distributed` run tell one another.

Every process of a distributed sweep runs the same program, and any collective (a broadcast,
a barrier, a sharded step) waits for all of them. So a process must not stop alone: one that
refused its config, found the run directory locked or its data missing, would leave the
others waiting in their next collective until the runtime's timeout ends them with a
traceback. `together` runs a step in every process and, where any of them refuses it,
refuses it in every one, naming the process. `from_process_0` hands process 0's answer
(what it read from the directory it alone writes, a sampler's draw) to the others.

In one process each function is the plain step: nothing is exchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np

from jaxnn import rundir
from jaxnn.rundir import RunError

T = TypeVar("T")


def _bytes_of(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), np.uint8)  # None too: "null"


def _value_of(data: np.ndarray) -> Any:
    return json.loads(np.asarray(data, np.uint8).tobytes().decode())


def from_process_0(value: Any) -> Any:
    """Process 0's ``value`` (JSON-able) in every process (``value`` itself in one)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    text = _bytes_of(value)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(text))))
    padded = np.zeros(size, np.uint8)
    padded[:len(text)] = text[:size]
    return _value_of(multihost_utils.broadcast_one_to_all(padded))


def gathered(value: Any) -> list[Any]:
    """Every process's ``value`` (JSON-able), by process index."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    text = _bytes_of(value)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(len(text)))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:len(text)] = text
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [_value_of(row[:size]) for row, size in zip(rows, sizes, strict=True)]


def refuse_together(refusal: str | None) -> None:
    """Raises `RunError` in every process when any process's ``refusal`` is not None: the
    first refusing process's, prefixed ``process I of N``."""
    refusals = gathered(refusal)
    for index, text in enumerate(refusals):
        if text is not None:
            raise RunError(text if len(refusals) == 1
                           else f"process {index} of {len(refusals)}: {text}")


def together(step: Callable[[], T], errors: tuple[type[Exception], ...]) -> T:
    """``step()`` in every process, refused in every one (`refuse_together`) where it raised
    in any: one of ``errors`` (the user's to act on) is that line in every process; any
    other error is raised as itself where it happened (an OSError: a full disk, a lost
    mount) and told to the others, which would otherwise wait for that process in their
    next collective. In one process, the plain call."""
    if jax.process_count() == 1:
        return step()
    failure = None
    try:
        result, refusal = step(), None
    except errors as error:
        result, refusal = None, str(error)
    except Exception as error:  # told to the others first, then raised here
        result, refusal, failure = None, _told(error), error
    try:
        refuse_together(refusal)
    except RunError:
        if failure is not None:
            raise failure from None
        raise
    return result


def _told(error: Exception) -> str:
    """What the other processes say of a process's unexpected ``error``, in a line."""
    if isinstance(error, OSError):
        return rundir.system_refused(error)
    first_line = (str(error).splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line} (its traceback is that process's)"


def same_as_process_0(text: str, what: str) -> None:
    """Refuses, in every process, a ``text`` (a config written out) that differs from
    process 0's, quoting the first line that differs: processes given two configs, or two
    directories to resume, would train one sweep's trials and record them as the other's.
    """
    first = from_process_0(text)
    refusal = None
    if text != first:
        ours, theirs = text.splitlines(), first.splitlines()
        line = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                    min(len(ours), len(theirs)))
        quoted = ours[line] if line < len(ours) else "(nothing)"
        given = theirs[line] if line < len(theirs) else "(nothing)"
        refusal = (f"{what} differs from process 0's at line {line + 1}: {quoted!r} where "
                   f"process 0 has {given!r}; every process must be given the same one")
    refuse_together(refusal)
