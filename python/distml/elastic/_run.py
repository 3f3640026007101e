"""The training loop wrapper: resume from the last commit, leave cleanly when a peer is lost.

How a lost rank is survived on this MPI (docs/elastic.md has the
measurements): MPICH's fault-tolerance mode does not start with its ch4
device, and without it the process manager ends the survivors as soon as a
rank dies, so recovery cannot happen inside the job. The launcher
(``distmlrun --max-restarts N``) therefore relaunches the job on the ranks
that are left, and :func:`run` makes each launch resume where the last
commit left off:

1. the world size is checked against ``min_ranks``;
2. the communicator gets a timeout (so that a rank whose peer is gone raises
   :class:`distml.CommTimeoutError` instead of waiting for ever, where the
   process manager has not already ended it);
3. the rank tells the launcher its process id and shared-memory segments;
4. ``state.restore()`` loads the last commit at the new world size
   (resharding parameters and ZeRO shards), and rank 0 logs how much work
   is redone;
5. ``train_fn(state)`` runs; a communication error there means a peer is
   lost: the rank records it and exits with :data:`EXIT_PEER_LOST` for the
   launcher to relaunch.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Callable, List, Optional, TypeVar

from .._errors import CommTimeoutError, CommunicatorError, DistmlError, MPIError
from ._state import State, note_exit, note_resumed, read_json, register, restart_count, run_dir

__all__ = ["run", "ElasticError", "RanksBelowMinimum", "EXIT_PEER_LOST", "EXIT_BELOW_MIN_RANKS"]

T = TypeVar("T")

EXIT_PEER_LOST = 75        # a peer is gone; relaunch on the ranks that are left
EXIT_BELOW_MIN_RANKS = 76  # fewer ranks than min_ranks: do not relaunch

DEFAULT_TIMEOUT = 60.0


class ElasticError(DistmlError):
    """Elastic training cannot go on."""


class RanksBelowMinimum(ElasticError):
    """The job has fewer ranks than ``min_ranks``."""


def _log(msg: str) -> None:
    print(f"distml.elastic: {msg}", file=sys.stderr, flush=True)


def _describe_resume(state: State, restored: bool) -> dict:
    """What rank 0 says after restoring: where from, at which size, what is redone."""
    record: dict = {"restart": restart_count(), "world_size": state.comm.size, "time": time.time(),
                    "restored": restored}
    if not restored:
        return record
    record["from_world_size"] = state.restored_from
    record["committed"] = state.committed
    base = run_dir()
    progress = read_json(os.path.join(base, "progress.json")) if base else None
    step_now = (state.committed or {}).get("step")
    if progress and isinstance(step_now, (int, float)):
        reached = (progress.get("fields") or {}).get("step")
        if isinstance(reached, (int, float)):
            record["reached"] = progress.get("fields")
            record["redone_steps"] = max(0, int(reached) - int(step_now))
    return record


# How the core's timeouts name the ranks that did not come: "rank 1 never
# arrived", "ranks 0, 2 never arrived" (engine/agreement.cpp, rank_list).
_NEVER_ARRIVED = re.compile(r"\branks? (\d+(?:, \d+)*) never arrived")


def _never_arrived(exc: Optional[BaseException]) -> List[int]:
    """The ranks a timeout in ``exc`` (or what caused it) named as never arrived."""
    found: set = set()
    seen = 0
    while exc is not None and seen < 8:
        for m in _NEVER_ARRIVED.finditer(str(exc)):
            found.update(int(r) for r in m.group(1).split(", "))
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return sorted(found)


def _peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it, e.g. a commit's CheckpointError)
    is a communication failure: a timeout, a broken communicator, an MPI error."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (CommTimeoutError, CommunicatorError, MPIError)):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def run(train_fn: Callable[[State], T], state: State, *, min_ranks: int = 1,
        timeout: Optional[float] = DEFAULT_TIMEOUT) -> T:
    """Runs ``train_fn(state)`` so that a lost rank costs at most the work since the last commit.

    Args:
        train_fn: the training loop. It reads where to start from ``state``'s
            fields (they hold the last commit's values after a restart),
            calls ``state.commit()`` every so often on all ranks, and may call
            ``state.progress()`` after each step so that the log can say how
            much work a failure cost.
        state: the :class:`State` (parameters, optimizer, fields).
        min_ranks: the fewest ranks training may go on with.
        timeout: collective timeout (seconds) set on the state's
            communicator if it has none, so that ranks whose peer is gone
            raise rather than wait; None leaves the communicator as it is.

    Returns:
        What ``train_fn`` returned.

    Raises:
        RanksBelowMinimum: the job has fewer than ``min_ranks`` ranks (on
            every rank, before anything is loaded).
        Any exception of ``train_fn`` that is not a communication failure.
        A communication failure (a peer lost) ends the process with exit
        code 75 under ``distmlrun --max-restarts`` (which then relaunches the
        job on the ranks that are left) and is raised otherwise.

    Must be called on all ranks of the state's communicator.
    """
    comm = state.comm
    if min_ranks < 1:
        raise ValueError(f"min_ranks must be at least 1, not {min_ranks}")
    if comm.size < min_ranks:
        msg = (f"{comm.size} rank(s) left, fewer than min_ranks={min_ranks}: training cannot go on "
               f"(the last commit is in {state.directory})")
        note_exit(comm, "below_min_ranks", msg)
        raise RanksBelowMinimum(msg)
    if timeout is not None and comm.timeout is None:
        comm.timeout = timeout
    register(comm, min_ranks)

    restored = state.restore()
    record = _describe_resume(state, restored)
    if comm.rank == 0:
        note_resumed(record)
        if restored:
            c = state.committed or {}
            where = ", ".join(f"{k} {v}" for k, v in c.items())
            redone = record.get("redone_steps")
            _log(f"launch {restart_count()}: {comm.size} rank(s); resumed from the commit at {where} "
                 f"made by {state.restored_from} rank(s)"
                 + (f"; {redone} step(s) done after it are redone" if redone is not None else ""))
        elif restart_count() > 0:
            _log(f"launch {restart_count()}: {comm.size} rank(s); no commit yet, starting over")
    try:
        result = train_fn(state)
    except BaseException as exc:
        if not _peer_lost(exc):
            note_exit(comm, "error", f"{type(exc).__name__}: {exc}")
            raise
        msg = f"rank {comm.rank}: a peer is lost ({type(exc).__name__}: {exc})"
        note_exit(comm, "peer_lost", msg, missing=_never_arrived(exc))
        if run_dir() is None:
            raise
        _log(msg + "; leaving for the launcher to relaunch from the last commit")
        sys.stdout.flush()
        # MPI cannot finalize with a peer gone; the launcher cleans up what this job made.
        os._exit(EXIT_PEER_LOST)
    note_exit(comm, "done")
    return result
