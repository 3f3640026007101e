"""Timeline: every collective as a Chrome trace event, for Perfetto or chrome://tracing.

``DISTML_TIMELINE=trace.json`` (read when :func:`distml.init` creates the
default communicator) or ``distml.timeline.start("trace.json")`` turns on the
core's per-collective records; :func:`stop` (or the end of the program)
writes them. Each rank writes its own file: ``{rank}`` in the path is
replaced by the rank, otherwise ``trace.json`` becomes ``trace.rank<r>.json``
(or stays ``trace.json`` with one rank). ``stop(merge=True)`` instead writes
one file on rank 0 with every rank as a process.

Each collective is one complete event (``"ph": "X"``) named after it, with
``bytes``, ``dtype``, ``algorithm``, ``schedule`` (the algorithm and the
variant of it that ran, e.g. "shm (cross-memory reads of peers' arrays)"),
``async``, ``ok`` and ``seq`` in its args, and three nested events for its
phases:

- ``queued``: waiting in the communicator's async queue (async calls);
- ``negotiate``: arrival of every rank and the cross-rank argument check;
- ``transfer``: moving and reducing the data.

Timestamps are the system clock in microseconds, so ranks on one machine
line up. With the timeline off, the core only tests one atomic flag per
collective.
"""

from __future__ import annotations

import atexit
import json
import os
import weakref
from typing import Any, Dict, List, Optional

__all__ = ["start", "stop", "is_active", "events_to_trace"]

_path: Optional[str] = None
_traced: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
_pending: Dict[int, List[dict]] = {}  # events drained from communicators, by thread id
_next_tid = 0
_atexit_registered = False


def is_active() -> bool:
    return _path is not None


def _world_rank() -> int:
    from mpi4py import MPI

    return MPI.COMM_WORLD.rank


def _world_size() -> int:
    from mpi4py import MPI

    return MPI.COMM_WORLD.size


def _attach(comm: Any) -> None:
    """Turns tracing on for ``comm`` if a timeline is being recorded (from
    :func:`start` or ``DISTML_TIMELINE``). Called when communicators are made."""
    global _next_tid
    if _path is None:
        env = os.environ.get("DISTML_TIMELINE")
        if not env:
            return
        _begin(env)
    if comm in _traced:
        return
    _traced[comm] = _next_tid
    _next_tid += 1
    comm._core.set_trace(True)


def _begin(path: str) -> None:
    global _path, _atexit_registered
    _path = str(path)
    if not _atexit_registered:
        # Registered after distml.comm's handler, so it runs before the
        # communicators are freed at exit.
        atexit.register(_at_exit)
        _atexit_registered = True


def start(path: str, comm: Any = None) -> None:
    """Starts recording: every live communicator (or just ``comm``) and
    the default communicator made later by :func:`distml.init` are traced.

    Args:
        path: where to write; ``{rank}`` is replaced by the rank.
        comm: a :class:`distml.Communicator` to trace (default: every live one).
    """
    from . import comm as _comm_mod

    _begin(path)
    for c in ([comm] if comm is not None else list(_comm_mod._live)):
        if not c._freed:
            _attach(c)


def _drain(comm: Any) -> None:
    tid = _traced.get(comm)
    if tid is None or comm._freed:
        return
    events = comm._core.drain_trace()
    if events:
        _pending.setdefault(tid, []).extend(events)


def flush(comm: Any) -> None:
    """Collects ``comm``'s records so far (call before freeing a traced
    communicator yourself)."""
    _drain(comm)


def events_to_trace(records: Dict[int, List[dict]], rank: int, size: Optional[int] = None) -> List[dict]:
    """Chrome trace events for one rank's records (by thread id)."""
    out: List[dict] = [{"ph": "M", "name": "process_name", "pid": rank, "tid": 0,
                        "args": {"name": f"rank {rank}" + (f" of {size}" if size else "")}},
                       {"ph": "M", "name": "process_sort_index", "pid": rank, "tid": 0,
                        "args": {"sort_index": rank}}]
    for tid, events in sorted(records.items()):
        out.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": tid,
                    "args": {"name": f"communicator {tid}"}})
        for e in events:
            queued, start, arrived, end = e["queued"], e["start"], e["arrived"], e["end"]
            args = {k: e[k] for k in ("bytes", "dtype", "algorithm", "schedule", "async", "ok", "seq")}
            out.append({"ph": "X", "cat": "collective", "name": e["collective"], "pid": rank, "tid": tid,
                        "ts": queued, "dur": max(end - queued, 0.0), "args": args})
            for name, a, b in (("queued", queued, start), ("negotiate", start, arrived), ("transfer", arrived, end)):
                if b > a:
                    out.append({"ph": "X", "cat": "phase", "name": name, "pid": rank, "tid": tid,
                                "ts": a, "dur": b - a})
    return out


def _file_for(path: str, rank: int, size: int) -> str:
    if "{rank}" in path:
        return path.replace("{rank}", str(rank))
    if size == 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.rank{rank}{ext or '.json'}"


def _write(path: str, events: List[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
    os.replace(tmp, path)


def stop(merge: bool = False) -> Optional[str]:
    """Stops recording and writes the trace; returns the file written by
    this rank (None if none).

    Args:
        merge: gather every rank's events to rank 0 and write one file there
            (``{rank}`` in the path becomes ``all``). Collective over
            ``MPI.COMM_WORLD`` then: call it on all ranks.
    """
    global _path
    if _path is None:
        return None
    for c in list(_traced.keys()):
        _drain(c)
        if not c._freed:
            c._core.set_trace(False)
    path, records = _path, dict(_pending)
    _path = None
    _pending.clear()
    _traced.clear()
    rank, size = _world_rank(), _world_size()
    events = events_to_trace(records, rank, size)
    if merge:
        from mpi4py import MPI

        gathered = MPI.COMM_WORLD.gather(events, root=0)
        if rank != 0:
            return None
        target = path.replace("{rank}", "all")
        _write(target, [e for evs in gathered for e in evs])
        return target
    target = _file_for(path, rank, size)
    _write(target, events)
    return target


def _at_exit() -> None:
    try:
        stop()
    except Exception as exc:  # noqa: BLE001 - never turn a clean exit into a crash
        import sys

        print(f"distml.timeline: could not write the trace: {exc}", file=sys.stderr)
