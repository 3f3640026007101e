"""Data movement: allgather, broadcast and alltoall (sync, async, in
place, grouped, and their autograd functions), and sparse allreduce, which
is two allgathers.

Their gradients are allreduces, so this module sits above
:mod:`.reductions`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import distml
from distml._dtypes import Op, dtype_code

from .control import _K_BROADCAST, _K_EXCHANGE, _control, _require_all_active
from .convert import _check_tensor, _contiguous, _np
from .handles import _Pending, _check_name, _issue, _named, _register, _start_group, synchronize
from .reductions import Average, _parse_op, _start_allreduce
from .state import _comm, _set_comm, _set_root


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
