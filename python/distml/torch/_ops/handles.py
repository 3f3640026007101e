"""Async handles, and the order in which collectives reach the core.

Every collective of distml.torch is queued through :func:`_issue` and
tracked by a :class:`_Pending`; :func:`poll` and :func:`synchronize` take
the int handles Horovod's API hands out. Names: as in Horovod, an
operation's ``name`` must not be in flight already (ValueError on the
calling rank, before anything is queued). Operations are still matched by
the order in which ranks issue them.

This module holds no reference to a communicator: it is the bottom layer
of :mod:`distml.torch._ops`. Its state (handles, names in flight, the
backlog and the issuer thread) lives only here; other modules share the
containers, which are never rebound, and only ``_issue`` touches ``_issuer``.
"""

from __future__ import annotations

import collections
import itertools
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence


# An operation whose buffers depend on what the other ranks pass (allgather's
# rows, alltoall's splits) runs in two *stages*: the size exchange, and the
# data movement, which can only be queued once the sizes are known. Every
# rank must queue collectives in the same order, and an async call must not
# wait for its peers, so:
#
# - a call queues its collectives through ``_issue``: straight onto the
#   communicator's async engine while nothing is waiting to be queued (the
#   common case, no thread involved);
# - a second stage, and everything issued after it, goes into the *backlog*
#   instead, and the caller gets a ``_Later`` (waited for like a distml
#   handle). One issuer thread takes the backlog in order: it waits for a
#   second stage's size exchange, then queues its data movement, then the
#   calls behind it.
#
# So collectives reach the engine in the order they were issued, on every
# rank, and no call blocks on its peers. A size exchange that fails (a
# mismatch) fails on every rank, and every rank then skips the data movement.

_lock = threading.Lock()
_handles: Dict[int, "_Pending"] = {}
_counter = itertools.count(1)
# name -> sequence number of the operation in flight under that name
_names: Dict[str, int] = {}
_sequence = itertools.count(1)

_issue_cv = threading.Condition()
_backlog: "collections.deque[_Later]" = collections.deque()
_issuer: Optional[threading.Thread] = None


class _Later:
    """A collective in the backlog: ``run()`` queues it (returning its
    handle) once ``after`` (size exchanges) are done. Waited for like a
    distml handle."""

    __slots__ = ("run", "after", "handle", "error", "issued")

    def __init__(self, run: Callable[[], Any], after: Sequence[Any]) -> None:
        self.run = run
        self.after = list(after)
        self.handle: Any = None
        self.error: Optional[BaseException] = None
        self.issued = threading.Event()

    def test(self) -> bool:
        return self.issued.is_set() and (self.handle is None or self.handle.test())

    def wait(self) -> Any:
        self.issued.wait()
        if self.error is not None:
            raise self.error
        return None if self.handle is None else self.handle.wait()


def _issue_loop() -> None:
    while True:
        with _issue_cv:
            while not _backlog:
                _issue_cv.wait()
            later = _backlog[0]
        for h in later.after:
            try:
                h.wait()
            except BaseException as exc:  # noqa: BLE001 - the stage that needed it fails with it
                later.error = later.error or exc
        later.after = []
        with _issue_cv:
            if later.error is None:
                try:
                    later.handle = later.run()
                except BaseException as exc:  # noqa: BLE001 - raised by its wait()
                    later.error = exc
            _backlog.popleft()
            later.issued.set()
            _issue_cv.notify_all()


def _issue(run: Callable[[], Any], after: Sequence[Any] = ()) -> Any:
    """Queues a collective (``run()`` starts it and returns its handle) in
    issue order, after ``after`` have completed; returns its handle or a
    :class:`_Later` (see above). Never waits for other ranks."""
    global _issuer
    with _issue_cv:
        if not _backlog and not after:
            return run()
        later = _Later(run, after)
        _backlog.append(later)
        if _issuer is None or not _issuer.is_alive():
            _issuer = threading.Thread(target=_issue_loop, name="distml.torch issuer", daemon=True)
            _issuer.start()
        _issue_cv.notify_all()
        return later


def _quiesce() -> None:
    """Waits until the backlog is empty (before calls that use the
    communicator directly)."""
    with _issue_cv:
        while _backlog:
            _issue_cv.wait()


class _Pending:
    """An operation in flight: handles to wait for, then ``finish``."""

    __slots__ = ("waits", "finish", "done", "result", "seq", "name", "info")

    def __init__(self, waits: Sequence[Any], finish: Callable[[], Any]) -> None:
        self.waits = list(waits)
        self.finish = finish
        self.done = False
        self.result: Any = None
        self.seq = next(_sequence)
        self.name: Optional[str] = None
        self.info: Any = None

    def test(self) -> bool:
        return self.done or all(w.test() for w in self.waits)

    def wait(self) -> Any:
        if not self.done:
            error: Optional[BaseException] = None
            for w in self.waits:
                try:
                    w.wait()
                except BaseException as exc:  # noqa: BLE001 - wait for all, raise the first
                    error = error or exc
            self.done = True
            self.waits = []
            _release_names(self.seq)
            if error is not None:
                raise error
            self.result = self.finish()
        return self.result


def _check_name(name: Optional[str]) -> None:
    """Horovod keys operations by name: a name already in flight is refused
    here, on this rank, before anything is queued."""
    if name is not None and name in _names:
        raise ValueError(f"an operation named {name!r} is already in flight; synchronize it first "
                         "(names of operations in flight must be unique)")


def _release_names(seq: int) -> None:
    # Operations complete in the order they were queued, so once one has been
    # waited for, every operation queued before it is complete too. Releasing
    # by that rule (not by polling) frees names at the same point of the
    # program on every rank.
    for name in [n for n, s in _names.items() if s <= seq]:
        del _names[name]


def _named(pending: _Pending, name: Optional[str]) -> _Pending:
    if name is not None:
        _check_name(name)
        pending.name = name
        _names[name] = pending.seq
    return pending


def _register(pending: _Pending, name: Optional[str] = None) -> int:
    _named(pending, name)
    handle = next(_counter)
    with _lock:
        _handles[handle] = pending
    return handle


def _take(handle: int) -> _Pending:
    with _lock:
        pending = _handles.pop(handle, None)
    if pending is None:
        raise ValueError(f"handle {handle!r} is not an outstanding distml.torch operation")
    return pending


def poll(handle: int) -> bool:
    """Whether the async operation ``handle`` has completed (never blocks).

    Raises:
        ValueError: ``handle`` is unknown (or already synchronized).
    """
    with _lock:
        pending = _handles.get(handle)
    if pending is None:
        raise ValueError(f"handle {handle!r} is not an outstanding distml.torch operation")
    return pending.test()


def synchronize(handle: int) -> Any:
    """Waits for the async operation ``handle`` and returns its result (the
    output tensor; for alltoall, the output and the received splits).

    Raises:
        ValueError: ``handle`` is unknown (or already synchronized).
        distml.MismatchError: ranks passed incompatible arguments (on every rank).
        The operation's other errors (e.g. :class:`distml.CommTimeoutError`).
    """
    return _take(handle).wait()


def _start_group(parts: List[_Pending]) -> _Pending:
    """One operation made of several (each a :class:`_Pending`, waited for
    like a distml handle), finished together."""
    return _Pending(parts, lambda: [p.result for p in parts])
