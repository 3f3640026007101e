"""Agreement on local problems before shape-dependent collectives.

A problem that only one rank can see (its input is malformed, its files are
missing) must not leave the other ranks waiting in a collective that rank
will never join. :func:`agree` is one allgather of a fixed-size record per
rank (the same size on every rank, whatever went wrong): this rank's problem,
if any, and a few integers every rank needs from every other (row counts,
feature counts, hashes of parameters). If any rank had a problem, every rank
raises an exception of the same type with the same message.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["InputProblem", "agree"]

# Bytes of a problem message carried by agree() (longer messages are cut).
_MESSAGE_BYTES = 240

# Exception types agree() carries, by code (0: no problem). Subclasses come
# before their bases; anything else travels as RuntimeError.
_KINDS = [FileNotFoundError, ImportError, TypeError, ValueError, OSError, RuntimeError]


class InputProblem(Exception):
    """A problem with one rank's input, found before any communication, to
    be raised on every rank by :func:`agree` as ``kind`` (ValueError by
    default)."""

    def __init__(self, message: str, kind: type = ValueError) -> None:
        super().__init__(message)
        self.kind = kind


def _kind_code(problem: BaseException) -> int:
    kind = problem.kind if isinstance(problem, InputProblem) else type(problem)
    for code, base in enumerate(_KINDS, start=1):
        if issubclass(kind, base):
            return code
    return len(_KINDS)


def agree(comm: Any, problem: Optional[BaseException], numbers: Sequence[int]) -> np.ndarray:
    """Shares every rank's local problem and ``numbers``; raises on all ranks
    if any rank had a problem.

    Args:
        comm: the communicator.
        problem: this rank's problem (an exception it caught), or None.
        numbers: integers to share; the same count on every rank (ignored
            where there is a problem).

    Returns:
        An int64 array of shape (comm.size, len(numbers)): row r holds rank
        r's numbers.

    Raises:
        The type of the problem of the lowest-numbered rank that had one
        (FileNotFoundError, ImportError, TypeError, ValueError, OSError, else
        RuntimeError), on every rank, with that rank's message prefixed by
        "rank r: ".

    Must be called on all ranks.
    """
    count = len(numbers)
    head_bytes = 8 * (count + 1)
    record = np.zeros(head_bytes + _MESSAGE_BYTES, dtype=np.uint8)
    head = record[:head_bytes].view(np.int64)
    if problem is None:
        head[1:] = [int(n) for n in numbers]
    else:
        head[0] = _kind_code(problem)
        text = str(problem).encode("utf-8", "replace")[:_MESSAGE_BYTES]
        record[head_bytes: head_bytes + len(text)] = np.frombuffer(text, dtype=np.uint8)
    gathered = comm.allgather(record).reshape(comm.size, -1)
    heads = np.ascontiguousarray(gathered[:, :head_bytes]).view(np.int64)
    failing = np.flatnonzero(heads[:, 0] != 0)
    if failing.size:
        r = int(failing[0])
        text = bytes(gathered[r, head_bytes:]).rstrip(b"\0").decode("utf-8", "replace")
        kind = _KINDS[min(int(heads[r, 0]), len(_KINDS)) - 1]
        others = "" if failing.size == 1 else f" (and {failing.size - 1} more rank(s))"
        error = kind(f"rank {r}: {text}{others}")
        if problem is not None:
            raise error from (None if isinstance(problem, InputProblem) else problem)
        raise error
    return heads[:, 1:].copy()
