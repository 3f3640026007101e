"""Horovod's PyTorch API over distml: ``import distml.torch as hvd``.

CPU tensors only; collectives run in distml's compiled core, reached without
copies through numpy views of the tensors' storage. See docs/torch.md for
where behaviour differs from Horovod.

Every collective must be called on all ranks, in the same order (with
``process_set=``, on all ranks of that set).
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("distml.torch needs PyTorch: pip install 'distml[torch]'") from exc

from . import elastic
from .compression import Compression, Compressor
from .functions import broadcast_optimizer_state, broadcast_parameters
from .mpi_ops import (
    Adasum, Average, HorovodInternalError, Max, Min, Product, ProcessSet, Sum, add_process_set,
    allgather, allgather_async, allgather_object, allreduce, allreduce_, allreduce_async, allreduce_async_,
    alltoall, alltoall_async, barrier, broadcast, broadcast_, broadcast_async, broadcast_async_,
    broadcast_object, ccl_built, cross_rank, cross_size, cuda_built, ddl_built, get_communicator,
    gloo_built, gloo_enabled, global_process_set, grouped_allgather, grouped_allgather_async, grouped_allreduce,
    grouped_allreduce_, grouped_allreduce_async, grouped_allreduce_async_, grouped_reducescatter,
    grouped_reducescatter_async, init, is_initialized, join, local_rank, local_size, mpi_built, mpi_enabled,
    mpi_threads_supported, nccl_built, poll, rank, reducescatter, reducescatter_async, remove_process_set,
    rocm_built,
    shutdown, size, sparse_allreduce_async, start_timeline, stop_timeline, synchronize,
)
from .optimizer import DistributedOptimizer
from .sync_batch_norm import SyncBatchNorm

__all__ = [
    "Adasum", "Average", "Max", "Min", "Product", "Sum", "Compression", "Compressor",
    "init", "shutdown", "is_initialized", "rank", "size", "local_rank", "local_size", "cross_rank",
    "cross_size", "mpi_threads_supported", "mpi_enabled", "mpi_built", "gloo_enabled", "gloo_built",
    "nccl_built", "ddl_built", "ccl_built", "cuda_built", "rocm_built", "get_communicator",
    "allreduce", "allreduce_", "allreduce_async", "allreduce_async_",
    "grouped_allreduce", "grouped_allreduce_", "grouped_allreduce_async", "grouped_allreduce_async_",
    "allgather", "allgather_async", "allgather_object", "broadcast", "broadcast_", "broadcast_async",
    "broadcast_async_", "broadcast_object", "alltoall", "alltoall_async", "reducescatter",
    "reducescatter_async", "barrier", "join", "poll", "synchronize",
    "broadcast_parameters", "broadcast_optimizer_state", "DistributedOptimizer",
    "grouped_allgather", "grouped_allgather_async", "grouped_reducescatter", "grouped_reducescatter_async",
    "sparse_allreduce_async", "start_timeline", "stop_timeline", "HorovodInternalError", "SyncBatchNorm",
    "elastic", "ProcessSet", "global_process_set", "add_process_set", "remove_process_set",
]
