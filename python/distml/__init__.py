"""distml: collective communication and data/model-parallel training over MPI.

Launch programs with ``mpiexec -n P python script.py``. Every collective must
be called on all ranks of its communicator, in the same order.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version
from typing import Any, Optional

# mpi4py loads (and initialises) the MPI library first; the core then binds to
# the same library.
from mpi4py import MPI as _MPI  # noqa: F401

from . import _core
from ._dtypes import SUPPORTED_DTYPES, Op, bfloat16
from ._errors import CommTimeoutError, CommunicatorError, DistmlError, MismatchError, MPIError
from ._mpi_check import check_same_mpi as _check_same_mpi
from .comm import Communicator, Handle

_check_same_mpi(_core)

try:
    __version__ = _version("distml")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "Communicator", "Handle", "Op", "bfloat16", "SUPPORTED_DTYPES",
    "DistmlError", "MPIError", "CommTimeoutError", "MismatchError", "CommunicatorError",
    "init", "shutdown", "abort", "is_initialized", "get_default", "rank", "size",
    "allreduce", "reduce", "broadcast", "allgather", "reduce_scatter", "alltoall", "barrier",
]

_default: Optional[Communicator] = None


def init(comm: Any = None, timeout: Optional[float] = None) -> Communicator:
    """Creates the default communicator (idempotent) and returns it.

    Args:
        comm: an mpi4py intracommunicator to duplicate (default
            ``MPI.COMM_WORLD``).
        timeout: seconds a collective may take (default ``DISTML_TIMEOUT``,
            or none).

    Raises:
        ValueError: already initialised on a different communicator.

    Must be called on all ranks of ``comm``.
    """
    global _default
    if _default is not None:
        if comm is not None and comm is not _default.mpi_comm:
            from mpi4py import MPI

            if MPI.Comm.Compare(comm, _default.mpi_comm) not in (MPI.IDENT,):
                raise ValueError("distml is already initialised on another communicator; call distml.shutdown() first")
        if timeout is not None:
            _default.timeout = timeout
        return _default
    _default = Communicator(comm, timeout=timeout)
    _default._created_at = None  # distml's own: left to MPI_Finalize without a word
    return _default


def abort(code: int = 1) -> None:
    """Ends the whole job: every rank of ``MPI.COMM_WORLD`` exits (``MPI_Abort``).

    The way out after a :class:`CommTimeoutError` when the ranks that never
    arrived would otherwise keep the job alive. Callable on any one rank.
    """
    _core.abort(int(code))


def shutdown() -> None:
    """Frees the default communicator. Must be called on all ranks."""
    global _default
    if _default is not None:
        _default.free()
        _default = None


def is_initialized() -> bool:
    return _default is not None


def get_default() -> Communicator:
    """The default communicator, created by :func:`init` on first use."""
    return init()


def rank() -> int:
    return get_default().rank


def size() -> int:
    return get_default().size


def allreduce(x: Any, op: Any = "sum", out: Any = None, algorithm: str = "auto", async_op: bool = False) -> Any:
    """:meth:`Communicator.allreduce` on the default communicator."""
    return get_default().allreduce(x, op=op, out=out, algorithm=algorithm, async_op=async_op)


def reduce(x: Any, root: int = 0, op: Any = "sum", out: Any = None, algorithm: str = "auto", async_op: bool = False) -> Any:
    """:meth:`Communicator.reduce` on the default communicator."""
    return get_default().reduce(x, root=root, op=op, out=out, algorithm=algorithm, async_op=async_op)


def broadcast(x: Any, root: int = 0, algorithm: str = "auto", async_op: bool = False) -> Any:
    """:meth:`Communicator.broadcast` on the default communicator."""
    return get_default().broadcast(x, root=root, algorithm=algorithm, async_op=async_op)


def allgather(x: Any, out: Any = None, algorithm: str = "auto", async_op: bool = False) -> Any:
    """:meth:`Communicator.allgather` on the default communicator."""
    return get_default().allgather(x, out=out, algorithm=algorithm, async_op=async_op)


def reduce_scatter(x: Any, op: Any = "sum", out: Any = None, algorithm: str = "auto", async_op: bool = False) -> Any:
    """:meth:`Communicator.reduce_scatter` on the default communicator."""
    return get_default().reduce_scatter(x, op=op, out=out, algorithm=algorithm, async_op=async_op)


def alltoall(x: Any, out: Any = None, algorithm: str = "auto", async_op: bool = False) -> Any:
    """:meth:`Communicator.alltoall` on the default communicator."""
    return get_default().alltoall(x, out=out, algorithm=algorithm, async_op=async_op)


def barrier(algorithm: str = "auto", async_op: bool = False) -> Any:
    """:meth:`Communicator.barrier` on the default communicator."""
    return get_default().barrier(algorithm=algorithm, async_op=async_op)

# Training layer.
from . import checkpoint, data, nn, optim  # noqa: E402
from .parallel import DistributedOptimizer, GradientBuffer, ShardedOptimizer, broadcast_parameters  # noqa: E402

__all__ += ["optim", "nn", "data", "checkpoint",
            "GradientBuffer", "DistributedOptimizer", "ShardedOptimizer", "broadcast_parameters"]

# Model parallelism: distml.parallel.ColumnParallelLinear, RowParallelLinear, ProcessGrid, Pipeline.
from . import parallel  # noqa: E402

__all__ += ["parallel"]

# Tooling: distml.timeline (Chrome traces), python -m distml.run, python -m distml.info.
from . import timeline  # noqa: E402

__all__ += ["timeline"]
