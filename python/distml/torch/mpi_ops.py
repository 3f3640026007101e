"""Horovod-style collectives on PyTorch CPU tensors, over distml's core.

Tensors reach the core without a copy: a contiguous CPU tensor's storage is
viewed as a numpy array (``tensor.numpy()``; bfloat16 through an int16 view
reinterpreted as ``ml_dtypes.bfloat16``). Non-contiguous tensors are copied
to a contiguous buffer first (and back, for the in-place calls).

Join protocol (what makes :func:`join` work with uneven batches). Horovod
negotiates every operation through a coordinator, so a rank that has joined
learns what the others are reducing and contributes zeros. distml has no
coordinator, so each allreduce, broadcast, barrier and DistributedOptimizer
step issued through this module is preceded, on the same in-order async
queue, by a *control round*: an int64 max-allreduce of ``size + 4`` numbers,
``flags[r] = 1`` from every rank r still training, then a *descriptor* of the
operation that follows (kind, dtype, count, op or root). A rank inside
``join()`` contributes zeros to control rounds and, from the descriptor it
receives, replays the operation with neutral contributions (0 for sum and
average, the dtype's extremes for min and max, 1 for product). Active ranks
learn from the same round how many ranks contributed. When a control round
sees no active rank, every rank is inside ``join()`` and it returns.

The control round is tiny and queued asynchronously ahead of the real
operation, so an active rank does not wait for it, except before the
collectives a joined rank cannot stand in for (allgather, alltoall,
reducescatter), which raise on the active ranks if some rank has joined.
``DISTML_TORCH_JOIN=0`` turns control rounds off (join() then only works
when every rank calls it with nothing else in flight).
"""

from __future__ import annotations

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
_CODE_OPS = {code: op for op, code in _OP_CODES.items()}

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

_handles: Dict[int, "_Pending"] = {}
_counter = itertools.count(1)


class _Pending:
    """An operation in flight: distml handles to wait for, then ``finish``."""

    __slots__ = ("waits", "finish", "done", "result")

    def __init__(self, waits: Sequence[Any], finish: Callable[[], Any]) -> None:
        self.waits = list(waits)
        self.finish = finish
        self.done = False
        self.result: Any = None

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
            if error is not None:
                raise error
            self.result = self.finish()
        return self.result


def _register(pending: _Pending) -> int:
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

    Raises the operation's error (e.g. :class:`distml.MismatchError`) if it failed.
    """
    return _take(handle).wait()


# ---- join control -------------------------------------------------------------------

# Descriptor kinds of a control round.
_K_ALLREDUCE, _K_BROADCAST, _K_BARRIER, _K_STEP, _K_OTHER = 1, 2, 3, 4, 5


class _Control:
    """One control round in flight (see the module docstring)."""

    __slots__ = ("vec", "handle", "size")

    def __init__(self, comm: distml.Communicator, kind: int, a: int = 0, b: int = 0, c: int = 0) -> None:
        P = comm.size
        self.size = P
        self.vec = np.zeros(P + 4, dtype=np.int64)
        self.vec[comm.rank] = 1
        self.vec[P:] = (kind, a, b, c)
        self.handle = comm.allreduce(self.vec, op="max", out=self.vec, async_op=True)

    def active(self) -> np.ndarray:
        """Ranks still training (waits for the round)."""
        self.handle.wait()
        return np.flatnonzero(self.vec[:self.size])

    def n_active(self) -> int:
        return len(self.active())


def _control(kind: int, a: int = 0, b: int = 0, c: int = 0) -> Optional[_Control]:
    comm = _comm()
    if comm.size == 1 or not _state.join_control:
        return None
    return _Control(comm, kind, a, b, c)


def _require_all_active(ctl: Optional[_Control], what: str) -> None:
    if ctl is None:
        return
    active = ctl.active()
    if len(active) != ctl.size:
        joined = sorted(set(range(ctl.size)) - set(active.tolist()))
        raise RuntimeError(f"{what} cannot run while rank(s) {joined} are inside join(); distml.torch "
                           "lets joined ranks stand in for allreduce, broadcast and barrier only")


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


_CODE_DTYPES = {dtype_code(d): d for d in _NUMPY_OF.values()}

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
    DistributedOptimizer steps), broadcasts and barriers with neutral
    contributions, then returns.

    Averages on the active ranks divide by the number of ranks that
    contributed (not by ``size()``).

    Args:
        device: ignored (Horovod's GPU selector).

    Returns:
        The rank that joined last (the highest rank, if several joined in the
        same round).

    Must be called on all ranks (each when its data runs out).
    """
    comm = _comm()
    if comm.size == 1:
        return comm.rank
    if not _state.join_control:
        comm.barrier()
        return comm.size - 1
    P = comm.size
    first = True
    last_round = False
    while True:
        vec = np.zeros(P + 4, dtype=np.int64)
        comm.allreduce(vec, op="max", out=vec)
        if not vec[:P].any():
            last_round = first
            break
        first = False
        kind, a, b, c = (int(v) for v in vec[P:])
        if kind == _K_ALLREDUCE:
            dtype, op = _CODE_DTYPES[a], _CODE_OPS[c]
            scratch = _neutral(op, dtype, b)
            comm.allreduce(scratch, op=op, out=scratch)
        elif kind == _K_BROADCAST:
            if vec[c]:  # the root is active: receive and discard
                scratch = np.empty(b, _CODE_DTYPES[a])
                comm.broadcast(scratch, root=c)
        elif kind == _K_BARRIER:
            comm.barrier()
        elif kind == _K_STEP:
            _optimizers[a]._stand_in()
        # _K_OTHER: the active ranks raise; nothing to replay.
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


def _check_process_set(process_set: Any) -> None:
    if process_set is not None:
        raise ValueError("process sets are not supported by distml.torch; create a distml.Communicator "
                         "on an mpi4py sub-communicator instead")


def _allreduce_np(src: np.ndarray, dst: np.ndarray, op: Op) -> Tuple[Any, Optional[_Control]]:
    """Starts an allreduce of contiguous ``src`` into ``dst`` (which may be
    ``src``), preceded by its control round."""
    comm = _comm()
    ctl = _control(_K_ALLREDUCE, dtype_code(src.dtype), src.size, _OP_CODES[op])
    return comm.allreduce(src, op=op, out=dst, async_op=True), ctl


def _rescale(tensor: torch.Tensor, op: Op, ctl: Optional[_Control]) -> None:
    """Turns an average over size() into one over the ranks that contributed."""
    if ctl is None or op != Op.AVG:
        return
    n = ctl.n_active()
    if n != ctl.size:
        if tensor.is_floating_point():
            tensor.mul_(ctl.size / n)
        else:
            tensor.copy_(torch.div(tensor * ctl.size, n, rounding_mode="floor"))


def _start_allreduce(tensor: torch.Tensor, output: torch.Tensor, op: Op, compression: Any,
                     prescale_factor: float, postscale_factor: float) -> _Pending:
    """Reduces ``tensor`` into ``output`` (which may be ``tensor``)."""
    _check_tensor(tensor)
    if compression is None:
        from .compression import Compression

        compression = Compression.none
    t = tensor.detach()
    wire, ctx = compression.compress(t)
    if prescale_factor != 1.0:
        wire = wire * prescale_factor
    in_place = output.data_ptr() == t.data_ptr()
    if wire is t:
        src = t if t.is_contiguous() else t.contiguous()
        dst = src if in_place else output.detach()  # a new output is contiguous
    else:
        src = dst = wire.contiguous()
    handle, ctl = _allreduce_np(_np(src), _np(dst), op)

    def finish() -> torch.Tensor:
        result = dst if wire is t else compression.decompress(dst, ctx)
        _rescale(result, op, ctl)
        if postscale_factor != 1.0:
            result.mul_(postscale_factor)
        if result.data_ptr() != output.data_ptr() or result.stride() != output.stride():
            output.detach().copy_(result)
        return output

    waits = [handle] + ([ctl.handle] if ctl is not None else [])
    return _Pending(waits, finish)


def allreduce_async(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None,
                    op: Any = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                    process_set: Any = None, compression: Any = None) -> int:
    """Starts reducing ``tensor`` over all ranks into a new tensor; returns a
    handle for :func:`poll` and :func:`synchronize`. ``tensor`` must not be
    modified until then. ``name`` is accepted and ignored. Must be called on
    all ranks."""
    _check_process_set(process_set)
    parsed = _parse_op(op, average)
    _check_tensor(tensor)
    output = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    return _register(_start_allreduce(tensor, output, parsed, compression, prescale_factor, postscale_factor))


def allreduce_async_(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None,
                     op: Any = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                     process_set: Any = None) -> int:
    """Starts reducing ``tensor`` in place; returns a handle. Must be called on all ranks."""
    _check_process_set(process_set)
    parsed = _parse_op(op, average)
    _check_tensor(tensor)
    return _register(_start_allreduce(tensor, tensor, parsed, None, prescale_factor, postscale_factor))


class _AllreduceFunction(torch.autograd.Function):
    """Allreduce with a gradient: the gradient of each rank's input is the
    same reduction of the output gradients (sum or average)."""

    @staticmethod
    def forward(ctx, tensor, op, compression, prescale_factor, postscale_factor):  # type: ignore[override]
        ctx.op = op
        ctx.scale = prescale_factor * postscale_factor
        output = torch.empty_like(tensor, memory_format=torch.contiguous_format)
        return _start_allreduce(tensor, output, op, compression, prescale_factor, postscale_factor).wait()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        if ctx.op not in (Op.SUM, Op.AVG):
            raise RuntimeError(f"allreduce with op {ctx.op.value!r} has no gradient in distml.torch")
        grad = grad_output.contiguous()
        out = torch.empty_like(grad)
        _start_allreduce(grad, out, ctx.op, None, ctx.scale, 1.0).wait()
        return out, None, None, None, None


def allreduce(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None,
              compression: Any = None, op: Any = None, prescale_factor: float = 1.0,
              postscale_factor: float = 1.0, process_set: Any = None) -> torch.Tensor:
    """Reduces ``tensor`` over all ranks (default: average) into a new tensor.

    Args:
        tensor: a CPU tensor of the same shape and dtype on every rank.
        average: deprecated Horovod flag (True: Average, False: Sum).
        name: accepted for compatibility, unused.
        compression: :class:`distml.torch.Compression` ``.none``, ``.fp16``
            or ``.bf16`` (wire format of floating tensors).
        op: Average, Sum, Min, Max or Product (Adasum raises ValueError).
        prescale_factor, postscale_factor: multiply the input before and
            the result after the reduction.

    Returns:
        A new tensor with the result. Differentiable for Sum and Average.

    Raises:
        TypeError: a GPU, sparse or unsupported-dtype tensor.
        ValueError: Adasum or an unknown op.
        distml.MismatchError: ranks passed different shapes or dtypes (on every rank).

    Must be called on all ranks.
    """
    _check_process_set(process_set)
    parsed = _parse_op(op, average)
    _check_tensor(tensor)
    if tensor.requires_grad and torch.is_grad_enabled():
        return _AllreduceFunction.apply(tensor, parsed, compression, prescale_factor, postscale_factor)
    output = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    return _start_allreduce(tensor, output, parsed, compression, prescale_factor, postscale_factor).wait()


def allreduce_(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None,
               op: Any = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
               process_set: Any = None) -> torch.Tensor:
    """Reduces ``tensor`` over all ranks in place and returns it. Must be called on all ranks."""
    return synchronize(allreduce_async_(tensor, average, name, op, prescale_factor, postscale_factor, process_set))


def _start_grouped(tensors: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], op: Op,
                   prescale_factor: float, postscale_factor: float) -> _Pending:
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
            flat.mul_(prescale_factor)
        arr = _np(flat)
        handle, ctl = _allreduce_np(arr, arr, op)
        parts.append((idx, flat, handle, ctl))

    def finish() -> List[torch.Tensor]:
        for idx, flat, _, ctl in parts:
            _rescale(flat, op, ctl)
            if postscale_factor != 1.0:
                flat.mul_(postscale_factor)
            offset = 0
            for i in idx:
                n = tensors[i].numel()
                outputs[i].detach().copy_(flat[offset:offset + n].view(tensors[i].shape))
                offset += n
        return list(outputs)

    waits = [h for _, _, h, _ in parts] + [c.handle for *_, c in parts if c is not None]
    return _Pending(waits, finish)


def grouped_allreduce_async(tensors: Sequence[torch.Tensor], average: Optional[bool] = None,
                            name: Optional[str] = None, op: Any = None, prescale_factor: float = 1.0,
                            postscale_factor: float = 1.0, process_set: Any = None) -> int:
    """Starts reducing a list of tensors as one fused operation per dtype;
    :func:`synchronize` returns a list of new tensors. Must be called on all ranks."""
    _check_process_set(process_set)
    parsed = _parse_op(op, average)
    outputs = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]
    return _register(_start_grouped(tensors, outputs, parsed, prescale_factor, postscale_factor))


def grouped_allreduce_async_(tensors: Sequence[torch.Tensor], average: Optional[bool] = None,
                             name: Optional[str] = None, op: Any = None, prescale_factor: float = 1.0,
                             postscale_factor: float = 1.0, process_set: Any = None) -> int:
    """In-place :func:`grouped_allreduce_async`. Must be called on all ranks."""
    _check_process_set(process_set)
    parsed = _parse_op(op, average)
    return _register(_start_grouped(tensors, list(tensors), parsed, prescale_factor, postscale_factor))


def grouped_allreduce(tensors: Sequence[torch.Tensor], average: Optional[bool] = None,
                      name: Optional[str] = None, compression: Any = None, op: Any = None,
                      prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                      process_set: Any = None) -> List[torch.Tensor]:
    """Reduces a list of tensors (one fused allreduce per dtype) into new
    tensors. ``compression`` is accepted and ignored. Must be called on all ranks."""
    return synchronize(grouped_allreduce_async(tensors, average, name, op, prescale_factor,
                                               postscale_factor, process_set))


def grouped_allreduce_(tensors: Sequence[torch.Tensor], average: Optional[bool] = None,
                       name: Optional[str] = None, op: Any = None, prescale_factor: float = 1.0,
                       postscale_factor: float = 1.0, process_set: Any = None) -> List[torch.Tensor]:
    """Reduces a list of tensors in place. Must be called on all ranks."""
    return synchronize(grouped_allreduce_async_(tensors, average, name, op, prescale_factor,
                                                postscale_factor, process_set))


# ---- data movement ----------------------------------------------------------------------


def _start_allgather(tensor: torch.Tensor) -> _Pending:
    """Horovod's allgather: first dimensions may differ between ranks. The
    first dimensions are gathered first; unequal ones are padded to the
    largest and trimmed after."""
    _check_tensor(tensor, allow_bool=True)
    comm = _comm()
    _require_all_active(_control(_K_OTHER), "allgather")
    src = _contiguous(tensor)
    if src.dim() == 0:
        src = src.reshape(1)
    rows = np.array([src.shape[0]], dtype=np.int64)
    all_rows = comm.allgather(rows)
    top = int(all_rows.max())
    if top != src.shape[0]:
        padded = torch.zeros((top,) + tuple(src.shape[1:]), dtype=src.dtype)
        padded[:src.shape[0]] = src
        src = padded
    gathered = torch.empty((comm.size * top,) + tuple(src.shape[1:]), dtype=src.dtype)
    handle = comm.allgather(_np(src), out=_np(gathered), async_op=True)

    def finish() -> torch.Tensor:
        if (all_rows == top).all():
            return gathered
        return torch.cat([gathered[r * top:r * top + int(n)] for r, n in enumerate(all_rows)])

    return _Pending([handle], finish)


class _AllgatherFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):  # type: ignore[override]
        ctx.rows = tensor.shape[0] if tensor.dim() else 1
        ctx.shape = tensor.shape
        return _start_allgather(tensor).wait()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        # d(out)/d(mine): the slice of every rank's output gradient that came
        # from this rank, summed over ranks.
        grad = allreduce(grad_output.contiguous(), op=Sum)
        comm = _comm()
        rows = comm.allgather(np.array([ctx.rows], dtype=np.int64))
        start = int(rows[:comm.rank].sum())
        return grad[start:start + ctx.rows].reshape(ctx.shape)


def allgather_async(tensor: torch.Tensor, name: Optional[str] = None, process_set: Any = None) -> int:
    """Starts :func:`allgather`; returns a handle. Must be called on all ranks."""
    _check_process_set(process_set)
    return _register(_start_allgather(tensor))


def allgather(tensor: torch.Tensor, name: Optional[str] = None, process_set: Any = None) -> torch.Tensor:
    """Concatenates every rank's ``tensor`` along dimension 0, in rank order.

    The first dimension may differ between ranks; the others must agree
    (distml.MismatchError on every rank otherwise). Differentiable.

    Must be called on all ranks.
    """
    _check_process_set(process_set)
    _check_tensor(tensor, allow_bool=True)
    if tensor.requires_grad and torch.is_grad_enabled():
        return _AllgatherFunction.apply(tensor)
    return _start_allgather(tensor).wait()


def _start_broadcast(tensor: torch.Tensor, output: torch.Tensor, root_rank: int) -> _Pending:
    _check_tensor(tensor, allow_bool=True)
    comm = _comm()
    root = comm._root(root_rank)
    if output.data_ptr() == tensor.data_ptr() and output.is_contiguous():
        buf = output.detach()
    elif output.is_contiguous() and output.shape == tensor.shape:
        output.detach().copy_(tensor.detach())
        buf = output.detach()
    else:
        buf = tensor.detach().contiguous().clone()
    arr = _np(buf)
    ctl = _control(_K_BROADCAST, dtype_code(arr.dtype), arr.size, root)
    if ctl is not None and root not in ctl.active():
        raise RuntimeError(f"broadcast from root {root}, which is inside join()")
    handle = comm.broadcast(arr, root=root, async_op=True)

    def finish() -> torch.Tensor:
        if buf.data_ptr() != output.data_ptr():
            output.detach().copy_(buf)
        return output

    return _Pending([handle], finish)


class _BroadcastFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, root_rank):  # type: ignore[override]
        ctx.root = root_rank
        output = torch.empty_like(tensor, memory_format=torch.contiguous_format)
        return _start_broadcast(tensor, output, root_rank).wait()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grad = allreduce(grad_output.contiguous(), op=Sum)
        if _comm().rank != ctx.root:
            grad.zero_()
        return grad, None


def broadcast_async(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
                    process_set: Any = None) -> int:
    """Starts broadcasting ``tensor`` from ``root_rank`` into a new tensor;
    returns a handle. Must be called on all ranks."""
    _check_process_set(process_set)
    _check_tensor(tensor, allow_bool=True)
    output = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    return _register(_start_broadcast(tensor, output, root_rank))


def broadcast_async_(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
                     process_set: Any = None) -> int:
    """Starts broadcasting ``tensor`` from ``root_rank`` in place; returns a
    handle. Must be called on all ranks."""
    _check_process_set(process_set)
    return _register(_start_broadcast(tensor, tensor, root_rank))


def broadcast(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
              process_set: Any = None) -> torch.Tensor:
    """Returns a new tensor holding ``root_rank``'s ``tensor`` (same shape and
    dtype on every rank). Differentiable. Must be called on all ranks."""
    _check_process_set(process_set)
    _check_tensor(tensor, allow_bool=True)
    if tensor.requires_grad and torch.is_grad_enabled():
        return _BroadcastFunction.apply(tensor, root_rank)
    return synchronize(broadcast_async(tensor, root_rank, name))


def broadcast_(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
               process_set: Any = None) -> torch.Tensor:
    """Overwrites ``tensor`` with ``root_rank``'s, in place, and returns it.
    Must be called on all ranks."""
    return synchronize(broadcast_async_(tensor, root_rank, name, process_set))


def _start_alltoall(tensor: torch.Tensor, splits: Optional[Any]) -> _Pending:
    """Rank r sends rows ``[sum(splits[:d]), sum(splits[:d+1]))`` to rank d.

    The core's alltoall moves equal parts, so the split table is exchanged
    first (one small allgather) and every part is padded to the largest."""
    _check_tensor(tensor, allow_bool=True)
    comm = _comm()
    P = comm.size
    _require_all_active(_control(_K_OTHER), "alltoall")
    src = _contiguous(tensor)
    if src.dim() == 0:
        raise ValueError("alltoall needs a tensor with at least one dimension")
    if splits is None:
        if src.shape[0] % P:
            raise ValueError(f"alltoall without splits needs tensor.shape[0] divisible by {P}, "
                             f"got {src.shape[0]}")
        send = np.full(P, src.shape[0] // P, dtype=np.int64)
    else:
        send = np.asarray(splits.tolist() if isinstance(splits, torch.Tensor) else splits, dtype=np.int64)
        if send.shape != (P,) or (send < 0).any() or send.sum() != src.shape[0]:
            raise ValueError(f"splits must be {P} non-negative counts summing to tensor.shape[0] "
                             f"({src.shape[0]}), got {send.tolist()}")
    table = comm.allgather(send).reshape(P, P)  # table[s, d]: rows s sends to d
    recv = table[:, comm.rank].copy()
    top = int(table.max())
    inner = tuple(src.shape[1:])
    offsets = np.concatenate([[0], np.cumsum(send)])
    if (table == top).all():
        out = torch.empty((P * top,) + inner, dtype=src.dtype)
        handle = comm.alltoall(_np(src), out=_np(out), async_op=True)

        def finish_even() -> Tuple[torch.Tensor, torch.Tensor]:
            return out, torch.from_numpy(recv)

        return _Pending([handle], finish_even)
    padded = torch.zeros((P * top,) + inner, dtype=src.dtype)
    for d in range(P):
        padded[d * top:d * top + int(send[d])] = src[int(offsets[d]):int(offsets[d + 1])]
    out = torch.empty_like(padded)
    handle = comm.alltoall(_np(padded), out=_np(out), async_op=True)

    def finish() -> Tuple[torch.Tensor, torch.Tensor]:
        result = torch.cat([out[s * top:s * top + int(recv[s])] for s in range(P)])
        return result, torch.from_numpy(recv)

    return _Pending([handle], finish)


def alltoall_async(tensor: torch.Tensor, splits: Optional[Any] = None, name: Optional[str] = None,
                   process_set: Any = None) -> int:
    """Starts :func:`alltoall`; :func:`synchronize` returns (output,
    received_splits). Must be called on all ranks."""
    _check_process_set(process_set)
    return _register(_start_alltoall(tensor, splits))


def alltoall(tensor: torch.Tensor, splits: Optional[Any] = None, name: Optional[str] = None,
             process_set: Any = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scatters slices of ``tensor`` (along dimension 0) to every rank and
    gathers the slices they send here.

    Args:
        tensor: rows to send; the other dimensions must agree across ranks.
        splits: rows for each rank (list or 1-D tensor of ``size()`` ints,
            summing to ``tensor.shape[0]``); default equal parts.

    Returns:
        (received rows concatenated in rank order, int64 tensor of the rows
        received from each rank).

    Must be called on all ranks.
    """
    return synchronize(alltoall_async(tensor, splits, name, process_set))


def _start_reducescatter(tensor: torch.Tensor, op: Op, prescale_factor: float,
                         postscale_factor: float) -> _Pending:
    _check_tensor(tensor)
    comm = _comm()
    _require_all_active(_control(_K_OTHER), "reducescatter")
    src = _contiguous(tensor)
    if prescale_factor != 1.0:
        src = src * prescale_factor
    if src.dim() == 0:
        raise ValueError("reducescatter needs a tensor with at least one dimension")
    rows = src.shape[0]
    mine = rows // comm.size + (1 if comm.rank < rows % comm.size else 0)
    out = torch.empty((mine,) + tuple(src.shape[1:]), dtype=src.dtype)
    handle = comm.reduce_scatter(_np(src), op=op, out=_np(out), async_op=True)

    def finish() -> torch.Tensor:
        if postscale_factor != 1.0:
            out.mul_(postscale_factor)
        return out

    return _Pending([handle], finish)


def reducescatter_async(tensor: torch.Tensor, name: Optional[str] = None, compression: Any = None,
                        op: Any = Average, process_set: Any = None, prescale_factor: float = 1.0,
                        postscale_factor: float = 1.0) -> int:
    """Starts :func:`reducescatter`; returns a handle. Must be called on all ranks."""
    _check_process_set(process_set)
    return _register(_start_reducescatter(tensor, _parse_op(op, None), prescale_factor, postscale_factor))


def reducescatter(tensor: torch.Tensor, name: Optional[str] = None, compression: Any = None,
                  op: Any = Average, process_set: Any = None, prescale_factor: float = 1.0,
                  postscale_factor: float = 1.0) -> torch.Tensor:
    """Reduces ``tensor`` over all ranks (default: average) and returns this
    rank's slice of dimension 0: rank r gets ``torch.tensor_split(result,
    size())[r]`` (the first ``rows % size`` ranks get one row more).
    ``compression`` is accepted and ignored. Must be called on all ranks."""
    return synchronize(reducescatter_async(tensor, name, compression, op, process_set,
                                           prescale_factor, postscale_factor))


def barrier(process_set: Any = None) -> None:
    """Returns once every rank (joined ones included) has reached it. Must be
    called on all ranks."""
    _check_process_set(process_set)
    _control(_K_BARRIER)
    _comm().barrier()


# ---- objects -----------------------------------------------------------------------------


def broadcast_object(obj: Any, root_rank: int = 0, name: Optional[str] = None,
                     process_set: Any = None) -> Any:
    """Returns ``root_rank``'s ``obj`` (pickled) on every rank. Must be called on all ranks."""
    _check_process_set(process_set)
    comm = _comm()
    if comm.rank == root_rank:
        payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
        length = torch.tensor([payload.size], dtype=torch.int64)
    else:
        length = torch.zeros(1, dtype=torch.int64)
    broadcast_(length, root_rank)
    if comm.rank == root_rank:
        data = torch.from_numpy(payload.copy())
    else:
        data = torch.empty(int(length[0]), dtype=torch.uint8)
    broadcast_(data, root_rank)
    if comm.rank == root_rank:
        return obj
    return pickle.loads(_np(data).tobytes())


def allgather_object(obj: Any, name: Optional[str] = None, process_set: Any = None) -> List[Any]:
    """Returns the list of every rank's ``obj`` (pickled), in rank order. Must
    be called on all ranks."""
    _check_process_set(process_set)
    payload = torch.from_numpy(np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL),
                                             dtype=np.uint8).copy())
    lengths = allgather(torch.tensor([payload.numel()], dtype=torch.int64))
    data = _np(allgather(payload))
    out, offset = [], 0
    for n in lengths.tolist():
        out.append(pickle.loads(data[offset:offset + n].tobytes()))
        offset += n
    return out
