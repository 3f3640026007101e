"""Reducescatter and grouped reducescatter (sync, async, and the autograd
function).

A reduction, but its gradient is an allgather: this module sits above
:mod:`.movement` (whose gradients are allreduces), which keeps the imports
one-way.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch

import distml
from distml._dtypes import _OP_CODES, Op, dtype_code

from .control import _K_REDUCESCATTER, _MAX_DIMS, _control, _require_all_active
from .convert import _check_tensor, _contiguous, _np
from .handles import _Pending, _check_name, _issue, _named, _register, _start_group, synchronize
from .movement import _start_allgather
from .reductions import Average, _parse_op, _scale_, _scale_factor, _scaled
from .state import _comm, _set_comm


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
