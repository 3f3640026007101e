"""Horovod-style collectives on PyTorch CPU tensors, over distml's core.

Horovod users import this module (``horovod.torch.mpi_ops``); it re-exports
:mod:`distml.torch._ops`, where the code lives:

- ``_ops/handles.py``: async handles, :func:`poll`, :func:`synchronize`,
  names in flight, and the order in which collectives reach the core;
- ``_ops/state.py``: :func:`init`, :func:`shutdown`, ranks and sizes, build
  flags, process sets, the timeline;
- ``_ops/convert.py``: dtype maps, tensor checks, zero-copy numpy views;
- ``_ops/control.py``: :func:`join` and the control rounds that let a
  joined rank stand in for the others' operations (the protocol is
  described there), and :func:`barrier`;
- ``_ops/reductions.py``: allreduce and grouped allreduce, the operators;
- ``_ops/movement.py``: allgather, broadcast, alltoall, sparse allreduce;
- ``_ops/reducescatter.py``: reducescatter;
- ``_ops/objects.py``: :func:`broadcast_object`, :func:`allgather_object`.

The private names below are the ones :mod:`distml.torch.optimizer`,
:mod:`distml.torch.functions` and the tests use. Mutable state is not
re-exported by value: it lives in its module of ``_ops``.
"""

from __future__ import annotations

from ._ops.control import _K_STEP, _Control, _control, _register_optimizer, barrier, join
from ._ops.convert import _check_tensor, _np
from ._ops.handles import _quiesce, poll, synchronize
from ._ops.movement import (
    allgather, allgather_async, alltoall, alltoall_async, broadcast, broadcast_, broadcast_async, broadcast_async_,
    grouped_allgather, grouped_allgather_async, sparse_allreduce_async,
)
from ._ops.objects import allgather_object, broadcast_object
from ._ops.reducescatter import (
    grouped_reducescatter, grouped_reducescatter_async, reducescatter, reducescatter_async,
)
from ._ops.reductions import (
    Adasum, Average, Max, Min, Product, Sum, _parse_op, allreduce, allreduce_, allreduce_async, allreduce_async_,
    grouped_allreduce, grouped_allreduce_, grouped_allreduce_async, grouped_allreduce_async_,
)
from ._ops.state import (
    HorovodInternalError, ProcessSet, _check_process_set, _comm, _set_comm, add_process_set, ccl_built,
    cross_rank, cross_size, cuda_built, ddl_built, get_communicator, global_process_set, gloo_built,
    gloo_enabled, init, is_initialized, local_rank, local_size, mpi_built, mpi_enabled, mpi_threads_supported,
    nccl_built, rank, remove_process_set, rocm_built, shutdown, size, start_timeline, stop_timeline,
)

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

# Not in __all__ (as before), but imported from here: the object helpers by
# distml.torch, the private names by distml.torch.optimizer,
# distml.torch.functions and the tests.
_REEXPORTED = (
    allgather_object, broadcast_object,
    _K_STEP, _Control, _check_process_set, _check_tensor, _comm, _control, _np, _parse_op, _quiesce,
    _register_optimizer, _set_comm,
)
