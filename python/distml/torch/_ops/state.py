"""The module's lifetime and the ranks it runs on: init and shutdown, the
communicator and its node split (rank, size, local and cross ranks), what
is built, process sets, and the timeline.

Every rank's state is here (``_state``, the registry of process sets):
other modules of :mod:`distml.torch._ops` import these objects, which are
never rebound, so there is one copy of each.
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

import distml
from distml.comm import _env_flag

from .handles import _handles, _names, _quiesce, synchronize


class HorovodInternalError(RuntimeError):
    """Horovod's error for a failed collective, which user code catches
    (e.g. to restart). distml.torch raises distml's own errors
    (:class:`distml.MismatchError`, :class:`distml.CommTimeoutError`, ...),
    which are RuntimeErrors too; this class is defined so that such code
    imports, and is raised by nothing."""


class _State:
    comm: Optional[distml.Communicator] = None
    local: Any = None  # mpi4py communicator of this node's ranks
    cross: Any = None  # mpi4py communicator of the ranks with this local rank
    join_control: bool = True


_state = _State()


def init(comm: Any = None) -> None:
    """Initialises distml.torch (idempotent).

    Args:
        comm: an mpi4py communicator to run on (default ``MPI.COMM_WORLD``).
            Horovod also accepts a list of ranks; distml does not.

    Must be called on all ranks of ``comm``.
    """
    from mpi4py import MPI

    if isinstance(comm, (list, tuple)):
        raise ValueError("distml.torch.init() takes an mpi4py communicator, not a list of ranks; "
                         "use MPI.COMM_WORLD.Create_group / Split to make one")
    if _state.comm is not None:
        return
    _state.comm = distml.init(comm)
    world = _state.comm.mpi_comm
    _state.local = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.rank)
    _state.cross = world.Split(color=_state.local.rank, key=world.rank)
    _state.join_control = _env_flag("DISTML_TORCH_JOIN")


def shutdown() -> None:
    """Waits for outstanding operations and releases the communicator. Must be
    called on all ranks. :func:`init` may be called again afterwards."""
    if _state.comm is None:
        return
    for h in list(_handles):
        try:
            synchronize(h)
        except Exception:  # noqa: BLE001 - shutting down regardless
            pass
    _quiesce()
    _names.clear()
    for ps in [ps for pid, ps in sorted(_process_sets.items()) if pid != 0]:
        remove_process_set(ps)
    for c in (_state.local, _state.cross):
        if c is not None:
            c.Free()
    _state.local = _state.cross = None
    from distml import timeline

    timeline.flush(_state.comm)  # keep a running timeline's records of this communicator
    _state.comm = None
    distml.shutdown()


def is_initialized() -> bool:
    return _state.comm is not None


def _comm() -> distml.Communicator:
    if _state.comm is None:
        raise ValueError("distml.torch has not been initialised; call distml.torch.init() first")
    return _state.comm


def get_communicator() -> distml.Communicator:
    """The :class:`distml.Communicator` the module runs on (a distml extension)."""
    return _comm()


def rank() -> int:
    return _comm().rank


def size() -> int:
    return _comm().size


def local_rank() -> int:
    """This process's rank among the ranks on its node (MPI shared-memory split)."""
    _comm()
    return _state.local.rank


def local_size() -> int:
    _comm()
    return _state.local.size


def cross_rank() -> int:
    """The index of this process's node among nodes (rank in the communicator
    of ranks with the same local rank)."""
    _comm()
    return _state.cross.rank


def cross_size() -> int:
    _comm()
    return _state.cross.size


def mpi_threads_supported() -> bool:
    from mpi4py import MPI

    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


def mpi_enabled() -> bool:
    return True


def mpi_built() -> bool:
    return True


def gloo_enabled() -> bool:
    return False


def gloo_built() -> bool:
    return False


def nccl_built() -> bool:
    return False


def ddl_built() -> bool:
    return False


def ccl_built() -> bool:
    return False


def cuda_built() -> bool:
    return False


def rocm_built() -> bool:
    return False


# ---- process sets ---------------------------------------------------------------------


class ProcessSet:
    """A subset of the ranks that runs collectives among themselves
    (Horovod's process sets), over an MPI sub-communicator.

    Args:
        ranks: the ranks (of the whole job) in the set.

    Made usable by :func:`add_process_set`; operations with
    ``process_set=`` this set must be called on all of its ranks (and only
    those), in the same order.
    """

    def __init__(self, ranks: Sequence[int]) -> None:
        values = list(ranks)
        if any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) for r in values):
            raise ValueError(f"a process set's ranks must be ints, got {values}")
        # May be empty (as in Horovod): every rank is then outside it.
        self.ranks: List[int] = sorted(set(int(r) for r in values))
        self.process_set_id: Optional[int] = None
        self._comm: Optional[distml.Communicator] = None
        self._mpi: Any = None

    def _world(self) -> bool:
        return self is global_process_set

    def size(self) -> int:
        """The number of ranks in the set."""
        return _comm().size if self._world() else len(self.ranks)

    def rank(self) -> int:
        """This process's rank within the set, or -1 if it is not in it."""
        if self._world():
            return _comm().rank
        me = _comm().rank
        return self.ranks.index(me) if me in self.ranks else -1

    def included(self) -> bool:
        """Whether this process is in the set."""
        return self._world() or _comm().rank in self.ranks

    def __repr__(self) -> str:
        who = "all ranks" if self._world() else f"ranks {self.ranks}"
        return f"<distml.torch.ProcessSet {self.process_set_id} of {who}>"


global_process_set = ProcessSet([])  # ranks stay empty: every rank, whatever the size
global_process_set.process_set_id = 0
_process_sets: Dict[int, ProcessSet] = {0: global_process_set}
_process_set_ids = itertools.count(1)


def add_process_set(process_set: Any) -> ProcessSet:
    """Makes a process set usable: creates its communicator on its ranks.

    Args:
        process_set: a :class:`ProcessSet` or a list of ranks.

    Returns:
        The process set (with its ``process_set_id``).

    Raises:
        ValueError: ranks out of range, the set already added, or ranks
            passed different sets (on every rank).

    Must be called on all ranks (of the whole job), in the same order.
    """
    from mpi4py import MPI

    from .objects import allgather_object  # built on the collectives, which sit above this module

    ps = process_set if isinstance(process_set, ProcessSet) else ProcessSet(process_set)
    comm = _comm()
    _quiesce()
    problem = None
    if ps.process_set_id is not None:
        problem = f"{ps!r} was already added"
    elif ps.ranks and (ps.ranks[0] < 0 or ps.ranks[-1] >= comm.size):
        problem = f"process set ranks {ps.ranks} are out of range for {comm.size} ranks"
    seen = allgather_object((tuple(ps.ranks), problem))
    if any(p is not None for _, p in seen):
        raise ValueError("; ".join(sorted({p for _, p in seen if p is not None})))
    if len({r for r, _ in seen}) != 1:
        raise ValueError(f"add_process_set was called with different ranks: {[list(r) for r, _ in seen]}")
    member = comm.rank in ps.ranks
    world = comm.mpi_comm
    sub = world.Split(0 if member else MPI.UNDEFINED, key=world.rank)
    if member:
        ps._mpi = sub
        ps._comm = distml.Communicator(sub, timeout=comm.timeout)
    ps.process_set_id = next(_process_set_ids)
    _process_sets[ps.process_set_id] = ps
    return ps


def remove_process_set(process_set: ProcessSet) -> bool:
    """Frees a process set's communicator (after its work in flight).

    Returns:
        True if the set was removed, False if it was not added (or is the
        global set).

    Must be called on all ranks (of the whole job), in the same order.
    """
    if process_set is global_process_set or process_set.process_set_id not in _process_sets:
        return False
    _quiesce()
    del _process_sets[process_set.process_set_id]
    if process_set._comm is not None:
        process_set._comm.free()
        process_set._mpi.Free()
    process_set._comm = process_set._mpi = None
    process_set.process_set_id = None
    return True


def _set_comm(process_set: Any) -> distml.Communicator:
    """The communicator an operation with ``process_set=`` runs on."""
    if process_set is None or process_set is global_process_set:
        return _comm()
    if not isinstance(process_set, ProcessSet):
        raise TypeError(f"process_set must be a distml.torch.ProcessSet, not {type(process_set).__name__}")
    if process_set._comm is None:
        if process_set.process_set_id is None:
            raise ValueError(f"{process_set!r} has not been added; call add_process_set() on all ranks first")
        raise ValueError(f"this rank ({_comm().rank}) is not in {process_set!r}")
    return process_set._comm


def _set_root(process_set: Any, root_rank: int) -> int:
    """``root_rank`` (a rank of the whole job, as in Horovod) as a rank of
    ``process_set``'s communicator."""
    if process_set is None or process_set is global_process_set:
        return root_rank
    if root_rank not in process_set.ranks:
        raise ValueError(f"root rank {root_rank} is not in {process_set!r}")
    return process_set.ranks.index(root_rank)


def _check_process_set(process_set: Any) -> None:
    _set_comm(process_set)


# ---- timeline ---------------------------------------------------------------------------


def start_timeline(file_path: str, mark_cycles: bool = False) -> None:
    """Starts distml's timeline (:func:`distml.timeline.start`): every
    collective as a Chrome trace event, one file per rank (``{rank}`` in
    the path is replaced by the rank). ``mark_cycles`` is accepted and ignored."""
    from distml import timeline

    timeline.start(file_path)


def stop_timeline() -> None:
    """Stops the timeline and writes this rank's file (:func:`distml.timeline.stop`)."""
    from distml import timeline

    timeline.stop()
