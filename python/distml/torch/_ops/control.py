"""join() and the control rounds that make it work, and barrier().

Join protocol (what makes :func:`join` work with uneven batches). Horovod
negotiates every operation through a coordinator, so a rank that has joined
learns what the others are reducing and contributes zeros. distml has no
coordinator, so each operation issued through distml.torch is preceded, on
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
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, Optional, Sequence

import numpy as np

import distml
from distml._dtypes import _OP_CODES, Op, bfloat16

from .convert import _CODE_DTYPES
from .handles import _issue, _quiesce
from .state import _comm, _set_comm, _state


# A descriptor's op code back to the op, for join() to replay it.
_CODE_OPS = {int(code): op for op, code in _OP_CODES.items()}

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


def barrier(process_set: Any = None) -> None:
    """Returns once every rank (joined ones included) has reached it. Must be
    called on all ranks."""
    comm = _set_comm(process_set)
    _control(_K_BARRIER, comm=comm)
    _issue(lambda: comm.barrier(async_op=True)).wait()
