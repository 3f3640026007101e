"""Allreduce and grouped allreduce (sync, async, in place, and their
autograd functions), Horovod's reduction operators, and the scale factors.
Adasum is refused here (:func:`_parse_op`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import distml
from distml._dtypes import _OP_CODES, Op, dtype_code

from .control import _K_ALLREDUCE, _MAX_DIMS, _Control, _control
from .convert import _check_tensor, _np
from .handles import _Pending, _check_name, _issue, _named, _register, synchronize
from .state import _comm, _set_comm, _state


# Reduction operators, as Horovod names them. They are plain strings, which
# distml's collectives take directly.
Average = "average"
Sum = "sum"
Adasum = "adasum"
Min = "min"
Max = "max"
Product = "product"

_OPS = {Average: Op.AVG, Sum: Op.SUM, Min: Op.MIN, Max: Op.MAX, Product: Op.PROD}


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
        from ..compression import Compression

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
