"""Horovod-style collectives on PyTorch CPU tensors, over distml's core.

Tensors reach the core without a copy: a contiguous CPU tensor's storage is
viewed as a numpy array (``tensor.numpy()``; bfloat16 through an int16 view
reinterpreted as ``ml_dtypes.bfloat16``). Non-contiguous tensors are copied
to a contiguous buffer first (and back, for the in-place calls).

Join protocol (what makes :func:`join` work with uneven batches). Horovod
negotiates every operation through a coordinator, so a rank that has joined
learns what the others are reducing and contributes zeros. distml has no
coordinator, so each operation issued through this module is preceded, on
the same in-order async queue, by a *control round*: an int64 max-allreduce
of ``size + 13`` numbers, ``flags[r] = 1`` from every rank r still training,
then a *descriptor* of the operation that follows (kind, three numbers such
as dtype, count and op or root, and the shape, up to 8 dimensions). A rank
inside ``join()`` contributes zeros to control rounds and, from the
descriptor it receives, replays the operation with neutral contributions
(0 for sum and average, the dtype's extremes for min and max, 1 for
product); averages divide by ``size()``, joined ranks included, as in
Horovod. When a control round sees no active rank, every rank is inside ``join()``
and it returns.

The control round is tiny and queued asynchronously ahead of the real
operation; no call waits for it. For the collectives a joined rank cannot
stand in for (allgather, alltoall, reducescatter and, as in Horovod,
broadcast) the joined rank still replays what the active ranks queued (their
size exchange, the reduce-scatter with zeros, the broadcast), so nobody is
left waiting, and the active ranks raise RuntimeError from the result.
``DISTML_TORCH_JOIN=0`` turns control rounds off (join() then only works
when every rank calls it with nothing else in flight).

Names: as in Horovod, an operation's ``name`` must not be in flight already
(ValueError on the calling rank, before anything is queued). Operations are
still matched by the order in which ranks issue them.
"""

from __future__ import annotations

import collections
import itertools
import os
import pickle
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import distml
from distml._dtypes import _OP_CODES, Op, bfloat16, dtype_code

__all__ = [
    "Average", "Sum", "Adasum", "Min", "Max", "Product",
    "init", "shutdown", "is_initialized", "rank", "size", "local_rank", "local_size",
    "cross_rank", "cross_size", "mpi_threads_supported", "mpi_enabled", "mpi_built",
    "gloo_enabled", "gloo_built", "nccl_built", "ddl_built", "ccl_built", "cuda_built", "rocm_built",
    "allreduce", "allreduce_", "allreduce_async", "allreduce_async_",
    "grouped_allreduce", "grouped_allreduce_", "grouped_allreduce_async", "grouped_allreduce_async_",
    "allgather", "allgather_async", "broadcast", "broadcast_", "broadcast_async", "broadcast_async_",
    "alltoall", "alltoall_async", "reducescatter", "reducescatter_async",
    "barrier", "join", "poll", "synchronize", "get_communicator",
    "grouped_allgather", "grouped_allgather_async", "grouped_reducescatter", "grouped_reducescatter_async",
    "sparse_allreduce_async", "start_timeline", "stop_timeline", "HorovodInternalError",
    "ProcessSet", "global_process_set", "add_process_set", "remove_process_set",
]

# Reduction operators, as Horovod names them. They are plain strings, which
# distml's collectives take directly.
Average = "average"
Sum = "sum"
Adasum = "adasum"
Min = "min"
Max = "max"
Product = "product"

_OPS = {Average: Op.AVG, Sum: Op.SUM, Min: Op.MIN, Max: Op.MAX, Product: Op.PROD}
_CODE_OPS = {int(code): op for op, code in _OP_CODES.items()}

class HorovodInternalError(RuntimeError):
    """Horovod's error for a failed collective, which user code catches
    (e.g. to restart). distml.torch raises distml's own errors
    (:class:`distml.MismatchError`, :class:`distml.CommTimeoutError`, ...),
    which are RuntimeErrors too; this class is defined so that such code
    imports, and is raised by nothing."""


# ---- state ---------------------------------------------------------------------


class _State:
    comm: Optional[distml.Communicator] = None
    local: Any = None  # mpi4py communicator of this node's ranks
    cross: Any = None  # mpi4py communicator of the ranks with this local rank
    join_control: bool = True


_state = _State()
_lock = threading.Lock()


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
    _state.join_control = os.environ.get("DISTML_TORCH_JOIN", "1").strip().lower() not in ("0", "false", "no", "off")


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


# ---- tensors <-> numpy ------------------------------------------------------------

_NUMPY_OF = {
    torch.float16: np.dtype(np.float16),
    torch.bfloat16: bfloat16,
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.int8: np.dtype(np.int8),
    torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64),
    torch.uint8: np.dtype(np.uint8),
}
for _name, _np in (("uint16", np.uint16), ("uint32", np.uint32), ("uint64", np.uint64)):
    if hasattr(torch, _name):
        _NUMPY_OF[getattr(torch, _name)] = np.dtype(_np)


def _check_tensor(tensor: Any, what: str = "tensor", allow_bool: bool = False) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, not {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise TypeError(f"{what} is on {tensor.device}; distml.torch works on CPU tensors only")
    if tensor.is_sparse:
        raise TypeError(f"{what} is sparse; distml.torch works on dense tensors only")
    if tensor.dtype not in _NUMPY_OF and not (allow_bool and tensor.dtype == torch.bool):
        names = ", ".join(str(d).replace("torch.", "") for d in _NUMPY_OF)
        raise TypeError(f"{what} has unsupported dtype {tensor.dtype}; distml.torch supports {names}"
                        + (" (and bool for data movement)" if allow_bool else ""))


def _np(tensor: torch.Tensor) -> np.ndarray:
    """The numpy view of a contiguous CPU tensor (no copy)."""
    t = tensor.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(bfloat16)
    if t.dtype == torch.bool:
        return t.view(torch.uint8).numpy()
    return t.numpy()


def _contiguous(tensor: torch.Tensor) -> torch.Tensor:
    t = tensor.detach()
    return t if t.is_contiguous() else t.contiguous()


# ---- handles ------------------------------------------------------------------------
#
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


# ---- join control -------------------------------------------------------------------

# Descriptor kinds of a control round.
_K_ALLREDUCE, _K_BROADCAST, _K_BARRIER, _K_STEP, _K_EXCHANGE, _K_REDUCESCATTER = 1, 2, 3, 4, 5, 6
_MAX_DIMS = 8  # dimensions a descriptor carries (the core compares up to 8)


class _Control:
    """One control round in flight (see the module docstring). The vector is
    ``flags[size], kind, a, b, c, ndim, shape[8]``."""

    __slots__ = ("vec", "handle", "size")

    def __init__(self, comm: distml.Communicator, kind: int, a: int = 0, b: int = 0, c: int = 0,
                 shape: Sequence[int] = ()) -> None:
        P = comm.size
        self.size = P
        self.vec = np.zeros(P + 5 + _MAX_DIMS, dtype=np.int64)
        self.vec[comm.rank] = 1
        self.vec[P:P + 5] = (kind, a, b, c, len(shape))
        self.vec[P + 5:P + 5 + len(shape)] = shape
        self.handle = _issue(lambda: comm.allreduce(self.vec, op="max", out=self.vec, async_op=True))

    def active(self) -> np.ndarray:
        """Ranks still training (waits for the round)."""
        self.handle.wait()
        return np.flatnonzero(self.vec[:self.size])

    def n_active(self) -> int:
        return len(self.active())


def _control(kind: int, a: int = 0, b: int = 0, c: int = 0, shape: Sequence[int] = (),
             comm: Optional[distml.Communicator] = None) -> Optional[_Control]:
    # Only the global set has control rounds: join() stands in there only.
    comm = comm or _comm()
    if comm.size == 1 or not _state.join_control or comm is not _state.comm:
        return None
    return _Control(comm, kind, a, b, c, shape)


def _require_all_active(ctl: Optional[_Control], what: str) -> None:
    if ctl is None:
        return
    active = ctl.active()
    if len(active) != ctl.size:
        joined = sorted(set(range(ctl.size)) - set(active.tolist()))
        raise RuntimeError(f"{what} cannot run while rank(s) {joined} are inside join(); distml.torch "
                           "lets joined ranks stand in for allreduce, barrier and DistributedOptimizer steps only")


def _neutral(op: Op, dtype: np.dtype, count: int) -> np.ndarray:
    """What a joined rank contributes to a reduction: the op's identity."""
    if op in (Op.SUM, Op.AVG):
        return np.zeros(count, dtype)
    if op == Op.PROD:
        return np.ones(count, dtype)
    if dtype.kind == "f" or dtype == bfloat16:
        fill = np.inf if op == Op.MIN else -np.inf
    else:
        info = np.iinfo(dtype)
        fill = info.max if op == Op.MIN else info.min
    return np.full(count, fill, dtype)


_CODE_DTYPES = {int(dtype_code(d)): d for d in _NUMPY_OF.values()}

# Optimizers a joined rank may have to stand in for, by id (assigned in
# creation order, which every rank follows).
_optimizers: Dict[int, Any] = {}
_optimizer_ids = itertools.count(1)


def _register_optimizer(opt: Any) -> int:
    oid = next(_optimizer_ids)
    _optimizers[oid] = opt
    return oid


def join(device: int = -1) -> int:
    """Declares that this rank has no more data: until every rank has called
    ``join()``, this rank takes part in the other ranks' allreduces (including
    DistributedOptimizer steps) and barriers with neutral contributions, then
    returns. Broadcasts, allgathers, alltoalls and reducescatters issued
    meanwhile raise RuntimeError on the active ranks (as in Horovod).

    Allreduce averages on the active ranks divide by ``size()`` (the joined
    ranks contribute zeros), as in Horovod.

    Args:
        device: ignored (Horovod's GPU selector).

    Returns:
        The rank that joined last (the highest rank, if several joined in the
        same round).

    Must be called on all ranks (each when its data runs out).
    """
    comm = _comm()
    _quiesce()
    if comm.size == 1:
        return comm.rank
    if not _state.join_control:
        comm.barrier()
        return comm.size - 1
    P = comm.size
    first = True
    last_round = False
    while True:
        vec = np.zeros(P + 5 + _MAX_DIMS, dtype=np.int64)
        comm.allreduce(vec, op="max", out=vec)
        if not vec[:P].any():
            last_round = first
            break
        first = False
        kind, a, b, c, ndim = (int(v) for v in vec[P:P + 5])
        shape = tuple(int(d) for d in vec[P + 5:P + 5 + ndim])
        if kind == _K_ALLREDUCE:
            dtype, op = _CODE_DTYPES[a], _CODE_OPS[c]
            scratch = _neutral(op, dtype, b).reshape(shape)
            comm.allreduce(scratch, op=op, out=scratch)
        elif kind == _K_BROADCAST:
            # The active ranks have queued the broadcast (the root may have
            # joined: it sends its scratch); they raise afterwards.
            scratch = np.zeros(b, _CODE_DTYPES[a])
            comm.broadcast(scratch, root=c)
        elif kind == _K_BARRIER:
            comm.barrier()
        elif kind == _K_STEP:
            _optimizers[a]._stand_in()
        elif kind == _K_EXCHANGE:
            # The active ranks' size exchange (a int64s each); they raise after it.
            comm.allgather(np.zeros(a, np.int64))
        elif kind == _K_REDUCESCATTER:
            # Queued by the active ranks right after the control round; they raise after it.
            comm.reduce_scatter(np.zeros(shape, _CODE_DTYPES[a]), op=_CODE_OPS[c])
    mine = np.array([comm.rank if last_round else -1], dtype=np.int64)
    comm.allreduce(mine, op="max", out=mine)
    return int(mine[0])


# ---- allreduce ----------------------------------------------------------------------


def _parse_op(op: Any, average: Optional[bool], default: str = Average) -> Op:
    if average is not None:
        if op is not None:
            raise ValueError("pass either op or the deprecated average, not both")
        op = Average if average else Sum
    if op is None:
        op = default
    if op == Adasum:
        raise ValueError("Adasum is not supported by distml.torch; use op=Average or op=Sum")
    if isinstance(op, Op):
        return op
    if op in _OPS:
        return _OPS[op]
    raise ValueError(f"unknown op {op!r}; expected Average, Sum, Min, Max or Product")


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


def _scaled(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    """``tensor * factor`` in ``tensor``'s dtype; integers are scaled in
    float64 and truncated back, as Horovod does."""
    if tensor.is_floating_point():
        return tensor * factor
    return (tensor.double() * factor).to(tensor.dtype)


def _scale_(tensor: torch.Tensor, factor: float) -> None:
    """In-place :func:`_scaled`."""
    if tensor.is_floating_point():
        tensor.mul_(factor)
    else:
        tensor.copy_((tensor.double() * factor).to(tensor.dtype))


def _allreduce_np(src: np.ndarray, dst: np.ndarray, op: Op,
                  comm: distml.Communicator) -> Tuple[Any, Optional[_Control], Op]:
    """Starts an allreduce of contiguous ``src`` into ``dst`` (which may be
    ``src``), preceded by its control round. Returns the handle, the round,
    and the op the core runs: an integer average under join control is a sum,
    floor-divided by size() afterwards (see :func:`_rescale`)."""
    if src.ndim > _MAX_DIMS:
        src, dst = src.reshape(-1), dst.reshape(-1)
    if op == Op.AVG and src.dtype.kind in "iu" and _state.join_control and comm is _state.comm and comm.size > 1:
        op_run = Op.SUM
    else:
        op_run = op
    ctl = _control(_K_ALLREDUCE, dtype_code(src.dtype), src.size, _OP_CODES[op_run], src.shape, comm)
    return _issue(lambda: comm.allreduce(src, op=op_run, out=dst, async_op=True)), ctl, op_run


def _rescale(tensor: torch.Tensor, op: Op, ctl: Optional[_Control], op_run: Op) -> None:
    """Finishes an integer average that the core ran as a sum: floor-divided
    by size(), joined ranks included (they contributed zeros), as Horovod
    averages while ranks have joined. Float averages are the core's own
    (also over size())."""
    if ctl is None or op != Op.AVG or op_run != Op.SUM:
        return
    tensor.copy_(torch.div(tensor, ctl.size, rounding_mode="floor"))


def _start_allreduce(tensor: torch.Tensor, output: torch.Tensor, op: Op, compression: Any,
                     prescale_factor: float, postscale_factor: float,
                     comm: Optional[distml.Communicator] = None) -> _Pending:
    """Reduces ``tensor`` into ``output`` (which may be ``tensor``)."""
    _check_tensor(tensor)
    if compression is None:
        from .compression import Compression

        compression = Compression.none
    t = tensor.detach()
    wire, ctx = compression.compress(t)
    if prescale_factor != 1.0:
        wire = _scaled(wire, prescale_factor)
    in_place = output.data_ptr() == t.data_ptr()
    if wire is t:
        src = t if t.is_contiguous() else t.contiguous()
        dst = src if in_place else output.detach()  # a new output is contiguous
    else:
        src = dst = wire.contiguous()
    handle, ctl, op_run = _allreduce_np(_np(src), _np(dst), op, comm or _comm())

    def finish() -> torch.Tensor:
        result = dst if wire is t else compression.decompress(dst, ctx)
        _rescale(result, op, ctl, op_run)
        if postscale_factor != 1.0:
            _scale_(result, postscale_factor)
        if result.data_ptr() != output.data_ptr() or result.stride() != output.stride():
            output.detach().copy_(result)
        return output

    waits = [handle] + ([ctl.handle] if ctl is not None else [])
    return _Pending(waits, finish)


def allreduce_async(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None,
                    op: Any = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                    process_set: Any = None, compression: Any = None) -> int:
    """Starts reducing ``tensor`` over all ranks into a new tensor; returns a
    handle for :func:`poll` and :func:`synchronize` at once. ``tensor`` must
    not be modified until then.

    Raises:
        ValueError: an operation named ``name`` is in flight (on this rank).

    Must be called on all ranks.
    """
    comm = _set_comm(process_set)
    _check_name(name)
    parsed = _parse_op(op, average)
    _check_tensor(tensor)
    output = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    return _register(_start_allreduce(tensor, output, parsed, compression, prescale_factor, postscale_factor, comm),
                     name)


def allreduce_async_(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None,
                     op: Any = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                     process_set: Any = None) -> int:
    """Starts reducing ``tensor`` in place; returns a handle. Must be called on all ranks."""
    comm = _set_comm(process_set)
    _check_name(name)
    parsed = _parse_op(op, average)
    _check_tensor(tensor)
    return _register(_start_allreduce(tensor, tensor, parsed, None, prescale_factor, postscale_factor, comm), name)


def _scale_factor(op: Op, prescale_factor: float, postscale_factor: float) -> float:
    if op not in (Op.SUM, Op.AVG):
        raise RuntimeError(f"a reduction with op {op.value!r} has no gradient in distml.torch")
    return prescale_factor * postscale_factor


class _AllreduceFunction(torch.autograd.Function):
    """Allreduce with a gradient: the gradient of each rank's input is the
    same reduction of the output gradients (sum or average), scaled alike."""

    @staticmethod
    def forward(ctx, tensor, op, compression, prescale_factor, postscale_factor, name, comm):  # type: ignore[override]
        ctx.op = op
        ctx.scale = prescale_factor * postscale_factor
        ctx.comm = comm
        output = torch.empty_like(tensor, memory_format=torch.contiguous_format)
        return _named(_start_allreduce(tensor, output, op, compression, prescale_factor, postscale_factor, comm),
                      name).wait()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        scale = _scale_factor(ctx.op, ctx.scale, 1.0)
        grad = grad_output.contiguous()
        out = torch.empty_like(grad)
        _start_allreduce(grad, out, ctx.op, None, scale, 1.0, ctx.comm).wait()
        return out, None, None, None, None, None, None


def allreduce(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None,
              compression: Any = None, op: Any = None, prescale_factor: float = 1.0,
              postscale_factor: float = 1.0, process_set: Any = None) -> torch.Tensor:
    """Reduces ``tensor`` over all ranks (default: average) into a new tensor.

    Args:
        tensor: a CPU tensor of the same shape and dtype on every rank.
        average: deprecated Horovod flag (True: Average, False: Sum).
        name: the operation's name; it must not be in flight already.
        compression: :class:`distml.torch.Compression` ``.none``, ``.fp16``
            or ``.bf16`` (wire format of floating tensors).
        op: Average, Sum, Min, Max or Product (Adasum raises ValueError).
        prescale_factor, postscale_factor: multiply the input before and
            the result after the reduction (integers in float64, truncated
            back to their dtype).

    Returns:
        A new tensor with the result. Differentiable for Sum and Average.

    Raises:
        TypeError: a GPU, sparse or unsupported-dtype tensor.
        ValueError: Adasum or an unknown op; ``name`` in flight.
        distml.MismatchError: ranks passed different shapes or dtypes (on every rank).

    Must be called on all ranks.
    """
    comm = _set_comm(process_set)
    _check_name(name)
    parsed = _parse_op(op, average)
    _check_tensor(tensor)
    if tensor.requires_grad and torch.is_grad_enabled():
        return _AllreduceFunction.apply(tensor, parsed, compression, prescale_factor, postscale_factor, name, comm)
    output = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    return _named(_start_allreduce(tensor, output, parsed, compression, prescale_factor, postscale_factor, comm),
                  name).wait()


def allreduce_(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None,
               op: Any = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
               process_set: Any = None) -> torch.Tensor:
    """Reduces ``tensor`` over all ranks in place and returns it. Must be called on all ranks."""
    return synchronize(allreduce_async_(tensor, average, name, op, prescale_factor, postscale_factor, process_set))


def _start_grouped(tensors: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], op: Op,
                   prescale_factor: float, postscale_factor: float,
                   comm: Optional[distml.Communicator] = None) -> _Pending:
    """Fuses the tensors of each dtype into one flat buffer and reduces it
    with one allreduce."""
    tensors = list(tensors)
    for i, t in enumerate(tensors):
        _check_tensor(t, f"tensors[{i}]")
    groups: Dict[torch.dtype, List[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.dtype, []).append(i)
    parts = []
    for dtype, idx in groups.items():
        flat = torch.cat([tensors[i].detach().reshape(-1) for i in idx])
        if prescale_factor != 1.0:
            _scale_(flat, prescale_factor)
        arr = _np(flat)
        handle, ctl, op_run = _allreduce_np(arr, arr, op, comm or _comm())
        parts.append((idx, flat, handle, ctl, op_run))

    def finish() -> List[torch.Tensor]:
        for idx, flat, _, ctl, op_run in parts:
            _rescale(flat, op, ctl, op_run)
            if postscale_factor != 1.0:
                _scale_(flat, postscale_factor)
            offset = 0
            for i in idx:
                n = tensors[i].numel()
                outputs[i].detach().copy_(flat[offset:offset + n].view(tensors[i].shape))
                offset += n
        return list(outputs)

    waits = [p[2] for p in parts] + [p[3].handle for p in parts if p[3] is not None]
    return _Pending(waits, finish)


class _GroupedAllreduceFunction(torch.autograd.Function):
    """Grouped allreduce with a gradient: the output gradients reduced alike."""

    @staticmethod
    def forward(ctx, op, prescale_factor, postscale_factor, name, comm, *tensors):  # type: ignore[override]
        ctx.op = op
        ctx.scale = prescale_factor * postscale_factor
        ctx.comm = comm
        outputs = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]
        pending = _start_grouped(tensors, outputs, op, prescale_factor, postscale_factor, comm)
        return tuple(_named(pending, name).wait())

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        scale = _scale_factor(ctx.op, ctx.scale, 1.0)
        grads = [g.contiguous() for g in grads]
        outs = [torch.empty_like(g) for g in grads]
        _start_grouped(grads, outs, ctx.op, scale, 1.0, ctx.comm).wait()
        return (None, None, None, None, None, *outs)


def grouped_allreduce_async(tensors: Sequence[torch.Tensor], average: Optional[bool] = None,
                            name: Optional[str] = None, op: Any = None, prescale_factor: float = 1.0,
                            postscale_factor: float = 1.0, process_set: Any = None) -> int:
    """Starts reducing a list of tensors as one fused operation per dtype;
    :func:`synchronize` returns a list of new tensors. Must be called on all ranks."""
    comm = _set_comm(process_set)
    _check_name(name)
    parsed = _parse_op(op, average)
    outputs = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]
    return _register(_start_grouped(tensors, outputs, parsed, prescale_factor, postscale_factor, comm), name)


def grouped_allreduce_async_(tensors: Sequence[torch.Tensor], average: Optional[bool] = None,
                             name: Optional[str] = None, op: Any = None, prescale_factor: float = 1.0,
                             postscale_factor: float = 1.0, process_set: Any = None) -> int:
    """In-place :func:`grouped_allreduce_async`. Must be called on all ranks."""
    comm = _set_comm(process_set)
    _check_name(name)
    parsed = _parse_op(op, average)
    return _register(_start_grouped(tensors, list(tensors), parsed, prescale_factor, postscale_factor, comm), name)


def grouped_allreduce(tensors: Sequence[torch.Tensor], average: Optional[bool] = None,
                      name: Optional[str] = None, compression: Any = None, op: Any = None,
                      prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                      process_set: Any = None) -> List[torch.Tensor]:
    """Reduces a list of tensors (one fused allreduce per dtype) into new
    tensors. Differentiable for Sum and Average. ``compression`` is accepted
    and ignored. Must be called on all ranks."""
    comm = _set_comm(process_set)
    _check_name(name)
    parsed = _parse_op(op, average)
    tensors = list(tensors)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return list(_GroupedAllreduceFunction.apply(parsed, prescale_factor, postscale_factor, name, comm, *tensors))
    return synchronize(grouped_allreduce_async(tensors, None, name, parsed, prescale_factor,
                                               postscale_factor, process_set))


def grouped_allreduce_(tensors: Sequence[torch.Tensor], average: Optional[bool] = None,
                       name: Optional[str] = None, op: Any = None, prescale_factor: float = 1.0,
                       postscale_factor: float = 1.0, process_set: Any = None) -> List[torch.Tensor]:
    """Reduces a list of tensors in place. Must be called on all ranks."""
    return synchronize(grouped_allreduce_async_(tensors, average, name, op, prescale_factor,
                                                postscale_factor, process_set))


# ---- data movement ----------------------------------------------------------------------


def _start_allgather(tensor: torch.Tensor, comm: Optional[distml.Communicator] = None) -> _Pending:
    """Horovod's allgather: first dimensions may differ between ranks. The
    first stage gathers the first dimensions; the second pads unequal ones to
    the largest, gathers, and the result is trimmed."""
    _check_tensor(tensor, allow_bool=True)
    src = _contiguous(tensor)
    if src.dim() == 0:
        src = src.reshape(1)
    comm = comm or _comm()
    ctl = _control(_K_EXCHANGE, 1, comm=comm)
    all_rows = np.zeros(comm.size, dtype=np.int64)
    rows = np.array([src.shape[0]], dtype=np.int64)
    rows_handle = _issue(lambda: comm.allgather(rows, out=all_rows, async_op=True))
    box: Dict[str, Any] = {}

    def second_stage() -> Any:
        _require_all_active(ctl, "allgather")
        top = int(all_rows.max())
        padded = src
        if top != src.shape[0]:
            padded = torch.zeros((top,) + tuple(src.shape[1:]), dtype=src.dtype)
            padded[:src.shape[0]] = src
        box["gathered"] = gathered = torch.empty((comm.size * top,) + tuple(src.shape[1:]), dtype=src.dtype)
        box["top"] = top
        return comm.allgather(_np(padded), out=_np(gathered), async_op=True)

    data_handle = _issue(second_stage, [rows_handle] + ([ctl.handle] if ctl is not None else []))

    def finish() -> torch.Tensor:
        gathered, top = box["gathered"], box["top"]
        if (all_rows == top).all():
            return gathered
        return torch.cat([gathered[r * top:r * top + int(n)] for r, n in enumerate(all_rows)])

    pending = _Pending([data_handle], finish)
    pending.info = all_rows  # every rank's rows, once done (for the gradient)
    return pending


class _AllgatherFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, name, comm):  # type: ignore[override]
        ctx.rows = tensor.shape[0] if tensor.dim() else 1
        ctx.shape = tensor.shape
        ctx.comm = comm
        pending = _named(_start_allgather(tensor, comm), name)
        out = pending.wait()
        all_rows = pending.info
        ctx.start = int(all_rows[:comm.rank].sum())
        return out

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        # As Horovod: the output gradients averaged over ranks, and this
        # rank's rows of the average.
        grad = grad_output.contiguous()
        grad = _start_allreduce(grad, torch.empty_like(grad), Op.AVG, None, 1.0, 1.0, ctx.comm).wait()
        return grad[ctx.start:ctx.start + ctx.rows].reshape(ctx.shape), None, None


def allgather_async(tensor: torch.Tensor, name: Optional[str] = None, process_set: Any = None) -> int:
    """Starts :func:`allgather`; returns a handle at once (the exchange of
    first dimensions and the data movement run in the background). Must be
    called on all ranks."""
    comm = _set_comm(process_set)
    _check_name(name)
    return _register(_start_allgather(tensor, comm), name)


def allgather(tensor: torch.Tensor, name: Optional[str] = None, process_set: Any = None) -> torch.Tensor:
    """Concatenates every rank's ``tensor`` along dimension 0, in rank order.

    The first dimension may differ between ranks; the others must agree
    (distml.MismatchError on every rank otherwise). Differentiable: the
    gradient is this rank's rows of the output gradients averaged over ranks
    (as in Horovod).

    Raises:
        ValueError: ``name`` in flight.
        distml.MismatchError: other dimensions or dtypes differ (on every rank).

    Must be called on all ranks.
    """
    comm = _set_comm(process_set)
    _check_name(name)
    _check_tensor(tensor, allow_bool=True)
    if tensor.requires_grad and torch.is_grad_enabled():
        return _AllgatherFunction.apply(tensor, name, comm)
    return _named(_start_allgather(tensor, comm), name).wait()


def _start_broadcast(tensor: torch.Tensor, output: torch.Tensor, root_rank: int,
                     comm: Optional[distml.Communicator] = None) -> _Pending:
    _check_tensor(tensor, allow_bool=True)
    comm = comm or _comm()
    root = comm._root(root_rank)
    if output.data_ptr() == tensor.data_ptr() and output.is_contiguous():
        buf = output.detach()
    elif output.is_contiguous() and output.shape == tensor.shape:
        output.detach().copy_(tensor.detach())
        buf = output.detach()
    else:
        buf = tensor.detach().contiguous().clone()
    arr = _np(buf)
    ctl = _control(_K_BROADCAST, dtype_code(arr.dtype), arr.size, root, comm=comm)
    handle = _issue(lambda: comm.broadcast(arr, root=root, async_op=True))

    def finish() -> torch.Tensor:
        # As Horovod: no broadcast while a rank has joined (whichever the
        # root); the joined ranks replayed it, so nobody waits.
        _require_all_active(ctl, "broadcast")
        if buf.data_ptr() != output.data_ptr():
            output.detach().copy_(buf)
        return output

    return _Pending([handle] + ([ctl.handle] if ctl is not None else []), finish)


class _BroadcastFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, root_rank, name, comm):  # type: ignore[override]
        ctx.root = root_rank
        ctx.comm = comm
        output = torch.empty_like(tensor, memory_format=torch.contiguous_format)
        return _named(_start_broadcast(tensor, output, root_rank, comm), name).wait()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        # As Horovod: the root gets the output gradients averaged over ranks.
        grad = grad_output.contiguous()
        grad = _start_allreduce(grad, torch.empty_like(grad), Op.AVG, None, 1.0, 1.0, ctx.comm).wait()
        if ctx.comm.rank != ctx.root:
            grad.zero_()
        return grad, None, None, None


def broadcast_async(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
                    process_set: Any = None) -> int:
    """Starts broadcasting ``tensor`` from ``root_rank`` into a new tensor;
    returns a handle at once. Must be called on all ranks."""
    comm = _set_comm(process_set)
    _check_name(name)
    _check_tensor(tensor, allow_bool=True)
    output = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    return _register(_start_broadcast(tensor, output, _set_root(process_set, root_rank), comm), name)


def broadcast_async_(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
                     process_set: Any = None) -> int:
    """Starts broadcasting ``tensor`` from ``root_rank`` in place; returns a
    handle at once. Must be called on all ranks."""
    comm = _set_comm(process_set)
    _check_name(name)
    return _register(_start_broadcast(tensor, tensor, _set_root(process_set, root_rank), comm), name)


def broadcast(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
              process_set: Any = None) -> torch.Tensor:
    """Returns a new tensor holding ``root_rank``'s ``tensor`` (same shape and
    dtype on every rank). Differentiable: the root's gradient is the output
    gradients averaged over ranks, the others' zero (as in Horovod).

    Raises:
        ValueError: ``name`` in flight; root out of range.
        distml.MismatchError: sizes, dtypes or roots differ (on every rank).

    Must be called on all ranks.
    """
    comm = _set_comm(process_set)
    _check_name(name)
    _check_tensor(tensor, allow_bool=True)
    if tensor.requires_grad and torch.is_grad_enabled():
        return _BroadcastFunction.apply(tensor, _set_root(process_set, root_rank), name, comm)
    return synchronize(broadcast_async(tensor, root_rank, name, process_set))


def broadcast_(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
               process_set: Any = None) -> torch.Tensor:
    """Overwrites ``tensor`` with ``root_rank``'s, in place, and returns it.
    Must be called on all ranks."""
    return synchronize(broadcast_async_(tensor, root_rank, name, process_set))


def _parse_splits(splits: Any, rows: int, P: int) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """(rows for each rank, None) or (None, what is wrong with ``splits``)."""
    if splits is None:
        if rows % P:
            return None, f"alltoall without splits needs tensor.shape[0] divisible by {P}, got {rows}"
        return np.full(P, rows // P, dtype=np.int64), None
    if isinstance(splits, torch.Tensor):
        if splits.is_floating_point() or splits.is_complex() or splits.dtype == torch.bool:
            return None, f"splits must hold integers, not {splits.dtype}"
        values = splits.reshape(-1).tolist()
    else:
        values = list(np.asarray(splits).reshape(-1).tolist())
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
        return None, f"splits must hold integers, got {values}"
    send = np.asarray(values, dtype=np.int64)
    if send.shape != (P,) or (send < 0).any() or send.sum() != rows:
        return None, (f"splits must be {P} non-negative counts summing to tensor.shape[0] ({rows}), "
                      f"got {send.tolist()}")
    return send, None


def _start_alltoall(tensor: torch.Tensor, splits: Optional[Any],
                    comm: Optional[distml.Communicator] = None) -> _Pending:
    """Rank r sends rows ``[sum(splits[:d]), sum(splits[:d+1]))`` to rank d.

    The core's alltoall moves equal parts, so the first stage exchanges the
    split table (one small allgather) and the second pads every part to the
    largest. A rank whose splits are invalid still takes part in the first
    stage, with a row of -1, and raises ValueError; the other ranks raise
    ValueError from the second stage."""
    _check_tensor(tensor, allow_bool=True)
    src = _contiguous(tensor)
    if src.dim() == 0:
        raise ValueError("alltoall needs a tensor with at least one dimension")
    comm = comm or _comm()
    P = comm.size
    send, problem = _parse_splits(splits, src.shape[0], P)
    ctl = _control(_K_EXCHANGE, P, comm=comm)
    table = np.zeros(P * P, dtype=np.int64)
    mine = send if send is not None else np.full(P, -1, dtype=np.int64)
    table_handle = _issue(lambda: comm.allgather(mine, out=table, async_op=True))
    if problem is not None:
        raise ValueError(problem)
    inner = tuple(src.shape[1:])
    box: Dict[str, Any] = {}

    def second_stage() -> Any:
        grid = table.reshape(P, P)  # grid[s, d]: rows s sends to d
        bad = [s for s in range(P) if (grid[s] < 0).any()]
        if bad:
            raise ValueError(f"alltoall: rank(s) {bad} passed invalid splits")
        _require_all_active(ctl, "alltoall")
        recv = grid[:, comm.rank].copy()
        top = int(grid.max())
        box["recv"], box["top"] = recv, top
        if (grid == top).all():
            box["out"] = out = torch.empty((P * top,) + inner, dtype=src.dtype)
            return comm.alltoall(_np(src), out=_np(out), async_op=True)
        offsets = np.concatenate([[0], np.cumsum(send)])
        padded = torch.zeros((P * top,) + inner, dtype=src.dtype)
        for d in range(P):
            padded[d * top:d * top + int(send[d])] = src[int(offsets[d]):int(offsets[d + 1])]
        box["out"] = out = torch.empty_like(padded)
        return comm.alltoall(_np(padded), out=_np(out), async_op=True)

    def finish() -> Tuple[torch.Tensor, torch.Tensor]:
        out, recv, top = box["out"], box["recv"], box["top"]
        if not (recv == top).all() or out.shape[0] != int(recv.sum()):
            out = torch.cat([out[s * top:s * top + int(recv[s])] for s in range(P)])
        return out, torch.from_numpy(recv.astype(np.int32))

    data_handle = _issue(second_stage, [table_handle] + ([ctl.handle] if ctl is not None else []))
    return _Pending([data_handle], finish)


class _AlltoallFunction(torch.autograd.Function):
    """Alltoall with a gradient: the output gradient sent back along the
    received splits."""

    @staticmethod
    def forward(ctx, tensor, splits, name, comm):  # type: ignore[override]
        ctx.comm = comm
        out, recv = _named(_start_alltoall(tensor, splits, comm), name).wait()
        ctx.recv = recv
        ctx.mark_non_differentiable(recv)
        return out, recv

    @staticmethod
    def backward(ctx, grad_output, _grad_splits):  # type: ignore[override]
        grad, _ = _start_alltoall(grad_output.contiguous(), ctx.recv, ctx.comm).wait()
        return grad, None, None, None


def alltoall_async(tensor: torch.Tensor, splits: Optional[Any] = None, name: Optional[str] = None,
                   process_set: Any = None) -> int:
    """Starts :func:`alltoall`; returns a handle at once. :func:`synchronize`
    returns (output, received_splits).

    Raises:
        ValueError: invalid ``splits`` (float values, wrong length or sum),
            raised here on this rank and from :func:`synchronize` on the
            others; ``name`` in flight.

    Must be called on all ranks.
    """
    comm = _set_comm(process_set)
    _check_name(name)
    return _register(_start_alltoall(tensor, splits, comm), name)


def alltoall(tensor: torch.Tensor, splits: Optional[Any] = None, name: Optional[str] = None,
             process_set: Any = None) -> Any:
    """Scatters slices of ``tensor`` (along dimension 0) to every rank and
    gathers the slices they send here.

    Args:
        tensor: rows to send; the other dimensions must agree across ranks.
        splits: rows for each rank (list or 1-D tensor of ``size()``
            integers, summing to ``tensor.shape[0]``); default equal parts.

    Returns:
        Without ``splits``, the received rows concatenated in rank order;
        with ``splits``, that and an int32 tensor of the rows received from
        each rank (as Horovod). Differentiable.

    Raises:
        ValueError: invalid ``splits`` on any rank (on every rank); ``name`` in flight.
        distml.MismatchError: other dimensions or dtypes differ (on every rank).

    Must be called on all ranks.
    """
    comm = _set_comm(process_set)
    _check_name(name)
    _check_tensor(tensor, allow_bool=True)
    if tensor.requires_grad and torch.is_grad_enabled():
        out, recv = _AlltoallFunction.apply(tensor, splits, name, comm)
    else:
        out, recv = _named(_start_alltoall(tensor, splits, comm), name).wait()
    return out if splits is None else (out, recv)


def _start_reducescatter(tensor: torch.Tensor, op: Op, prescale_factor: float,
                         postscale_factor: float, comm: Optional[distml.Communicator] = None) -> _Pending:
    _check_tensor(tensor)
    src = _contiguous(tensor)
    if src.dim() == 0:
        raise ValueError("reducescatter needs a tensor with at least one dimension")
    if prescale_factor != 1.0:
        src = _scaled(src, prescale_factor)
    arr = _np(src)
    if arr.ndim > _MAX_DIMS:
        arr = arr.reshape(arr.shape[0], -1)
    # A joined rank replays the reduction with zeros of the same shape; the
    # active ranks raise once it is done.
    comm = comm or _comm()
    ctl = _control(_K_REDUCESCATTER, dtype_code(arr.dtype), arr.size, _OP_CODES[op], arr.shape, comm)
    rows = src.shape[0]
    mine = rows // comm.size + (1 if comm.rank < rows % comm.size else 0)
    out = torch.empty((mine,) + tuple(src.shape[1:]), dtype=src.dtype)
    result = _np(out).reshape((mine,) + arr.shape[1:])
    handle = _issue(lambda: comm.reduce_scatter(arr, op=op, out=result, async_op=True))

    def finish() -> torch.Tensor:
        _require_all_active(ctl, "reducescatter")
        if postscale_factor != 1.0:
            _scale_(out, postscale_factor)
        return out

    return _Pending([handle] + ([ctl.handle] if ctl is not None else []), finish)


class _ReducescatterFunction(torch.autograd.Function):
    """Reducescatter with Horovod's gradient: the output gradients gathered,
    times size() for Sum, times the scale factors."""

    @staticmethod
    def forward(ctx, tensor, op, prescale_factor, postscale_factor, name, comm):  # type: ignore[override]
        ctx.op = op
        ctx.scale = prescale_factor * postscale_factor
        ctx.comm = comm
        return _named(_start_reducescatter(tensor, op, prescale_factor, postscale_factor, comm), name).wait()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        scale = _scale_factor(ctx.op, ctx.scale, 1.0) * (ctx.comm.size if ctx.op == Op.SUM else 1)
        grad = grad_output.contiguous()
        if scale != 1.0:
            grad = grad * scale
        return _start_allgather(grad, ctx.comm).wait(), None, None, None, None, None


def reducescatter_async(tensor: torch.Tensor, name: Optional[str] = None, compression: Any = None,
                        op: Any = Average, process_set: Any = None, prescale_factor: float = 1.0,
                        postscale_factor: float = 1.0) -> int:
    """Starts :func:`reducescatter`; returns a handle at once. Must be called on all ranks."""
    comm = _set_comm(process_set)
    _check_name(name)
    return _register(_start_reducescatter(tensor, _parse_op(op, None), prescale_factor, postscale_factor, comm),
                     name)


def reducescatter(tensor: torch.Tensor, name: Optional[str] = None, compression: Any = None,
                  op: Any = Average, process_set: Any = None, prescale_factor: float = 1.0,
                  postscale_factor: float = 1.0) -> torch.Tensor:
    """Reduces ``tensor`` over all ranks (default: average) and returns this
    rank's slice of dimension 0: rank r gets ``torch.tensor_split(result,
    size())[r]`` (the first ``rows % size`` ranks get one row more).

    The result keeps ``tensor``'s dtype (integers are scaled in float64 and
    truncated back). ``compression`` is accepted and ignored. Differentiable
    for Sum and Average.

    Raises:
        ValueError: a 0-d tensor, an unknown op, ``name`` in flight.
        distml.MismatchError: shapes or dtypes differ (on every rank).

    Must be called on all ranks.
    """
    comm = _set_comm(process_set)
    _check_name(name)
    parsed = _parse_op(op, None)
    _check_tensor(tensor)
    if tensor.requires_grad and torch.is_grad_enabled():
        return _ReducescatterFunction.apply(tensor, parsed, prescale_factor, postscale_factor, name, comm)
    return _named(_start_reducescatter(tensor, parsed, prescale_factor, postscale_factor, comm), name).wait()


def _start_group(parts: List[_Pending]) -> _Pending:
    """One operation made of several (each a :class:`_Pending`, waited for
    like a distml handle), finished together."""
    return _Pending(parts, lambda: [p.result for p in parts])


def grouped_allgather_async(tensors: Sequence[torch.Tensor], name: Optional[str] = None,
                            process_set: Any = None) -> int:
    """Starts :func:`grouped_allgather`; returns a handle at once. Must be called on all ranks."""
    comm = _set_comm(process_set)
    _check_name(name)
    return _register(_start_group([_start_allgather(t, comm) for t in tensors]), name)


def grouped_allgather(tensors: Sequence[torch.Tensor], name: Optional[str] = None,
                      process_set: Any = None) -> List[torch.Tensor]:
    """:func:`allgather` of each tensor of a list; returns the list of
    results. Must be called on all ranks, with lists of the same length."""
    return synchronize(grouped_allgather_async(tensors, name, process_set))


def grouped_reducescatter_async(tensors: Sequence[torch.Tensor], name: Optional[str] = None,
                                compression: Any = None, op: Any = Average, process_set: Any = None,
                                prescale_factor: float = 1.0, postscale_factor: float = 1.0) -> int:
    """Starts :func:`grouped_reducescatter`; returns a handle at once. Must be called on all ranks."""
    comm = _set_comm(process_set)
    _check_name(name)
    parsed = _parse_op(op, None)
    return _register(_start_group([_start_reducescatter(t, parsed, prescale_factor, postscale_factor, comm)
                                   for t in tensors]), name)


def grouped_reducescatter(tensors: Sequence[torch.Tensor], name: Optional[str] = None,
                          compression: Any = None, op: Any = Average, process_set: Any = None,
                          prescale_factor: float = 1.0, postscale_factor: float = 1.0) -> List[torch.Tensor]:
    """:func:`reducescatter` of each tensor of a list; returns the list of
    this rank's slices. Must be called on all ranks, with lists of the same length."""
    return synchronize(grouped_reducescatter_async(tensors, name, compression, op, process_set,
                                                   prescale_factor, postscale_factor))


def barrier(process_set: Any = None) -> None:
    """Returns once every rank (joined ones included) has reached it. Must be
    called on all ranks."""
    comm = _set_comm(process_set)
    _control(_K_BARRIER, comm=comm)
    _issue(lambda: comm.barrier(async_op=True)).wait()


def sparse_allreduce_async(tensor: torch.Tensor, name: Optional[str] = None, op: Any = Average,
                           process_set: Any = None) -> Callable[[], torch.Tensor]:
    """Starts reducing a sparse COO tensor: every rank's indices and values
    are gathered (two allgathers), so the result holds every rank's entries
    (duplicates are not summed until ``coalesce()``); Average divides the
    values by ``size()``.

    Returns:
        A function (Horovod's handle for this call) that waits and returns
        the sparse result.

    Raises:
        ValueError: ``tensor`` is not a sparse COO tensor, or op is not Sum
            or Average; ``name`` in flight.

    Must be called on all ranks, with tensors of the same dense shape.
    """
    comm = _set_comm(process_set)
    parsed = _parse_op(op, None)
    if parsed not in (Op.SUM, Op.AVG):
        raise ValueError("sparse_allreduce_async supports op=Sum or op=Average")
    if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.sparse_coo:
        raise ValueError("sparse_allreduce_async needs a sparse COO tensor")
    t = tensor.coalesce() if not tensor.is_coalesced() else tensor
    suffix = (lambda part: None) if name is None else (lambda part: f"{name}.{part}")
    indices = allgather_async(t.indices().t().contiguous(), name=suffix("indices"), process_set=process_set)
    values = allgather_async(t.values().contiguous(), name=suffix("values"), process_set=process_set)

    def wait() -> torch.Tensor:
        v = synchronize(values)
        i = synchronize(indices)
        if parsed == Op.AVG:
            v = v / comm.size if v.is_floating_point() else torch.div(v, comm.size, rounding_mode="floor")
        return torch.sparse_coo_tensor(i.t(), v, t.shape, check_invariants=True)

    return wait


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


# ---- objects -----------------------------------------------------------------------------


def broadcast_object(obj: Any, root_rank: int = 0, name: Optional[str] = None,
                     process_set: Any = None) -> Any:
    """Returns ``root_rank``'s ``obj`` (pickled) on every rank. Must be called on all ranks."""
    comm = _set_comm(process_set)
    root = _set_root(process_set, root_rank)
    if comm.rank == root:
        payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
        length = torch.tensor([payload.size], dtype=torch.int64)
    else:
        length = torch.zeros(1, dtype=torch.int64)
    broadcast_(length, root_rank, process_set=process_set)
    if comm.rank == root:
        data = torch.from_numpy(payload.copy())
    else:
        data = torch.empty(int(length[0]), dtype=torch.uint8)
    broadcast_(data, root_rank, process_set=process_set)
    if comm.rank == root:
        return obj
    return pickle.loads(_np(data).tobytes())


def allgather_object(obj: Any, name: Optional[str] = None, process_set: Any = None) -> List[Any]:
    """Returns the list of every rank's ``obj`` (pickled), in rank order. Must
    be called on all ranks."""
    comm = _set_comm(process_set)
    payload = torch.from_numpy(np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL),
                                             dtype=np.uint8).copy())
    lengths = allgather(torch.tensor([payload.numel()], dtype=torch.int64), process_set=process_set)
    data = _np(allgather(payload, process_set=process_set))
    out, offset = [], 0
    for n in lengths.tolist():
        out.append(pickle.loads(data[offset:offset + n].tobytes()))
        offset += n
    return out
