"""A process grid: the ranks of one communicator arranged as
pipeline x data x tensor, with a sub-communicator along each axis.

Layout (``T`` = tensor size, ``D`` = data size, ``S`` = pipeline size):

    rank = p * (D * T) + d * T + t      p < S, d < D, t < T

- a *tensor group* is T consecutive ranks (fixed p, d): the ranks that split
  each layer's weights, and talk at every layer, so they are kept close
  (consecutive ranks usually share a node);
- a *data group* is D ranks strided by T (fixed p, t): replicas holding the
  same weight slices, averaging gradients once per step;
- a *pipeline group* is S ranks strided by D * T (fixed d, t): one model
  replica's stages, outermost, exchanging activations point to point.

Every sub-communicator is built with ``MPI_Comm_split`` (colour = the fixed
coordinates, key = the coordinate along the axis, so rank i of a group is
coordinate i) and wrapped in a :class:`distml.Communicator`.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from .data_parallel import _default_comm

__all__ = ["ProcessGrid"]


class ProcessGrid:
    """Splits ``comm`` into pipeline x data x tensor groups.

    Args:
        comm: a :class:`distml.Communicator` or mpi4py communicator (default:
            :func:`distml.init`'s).
        data, tensor, pipeline: the sizes of the three axes. At most one may
            be None, and is then the world size divided by the other two.

    Attributes:
        data, tensor, pipeline: this rank's groups, each a
            :class:`distml.Communicator` (rank within it = coordinate).
        data_size, tensor_size, pipeline_size: the axis sizes.
        data_rank, tensor_rank, pipeline_rank: this rank's coordinates.
        world: the communicator the grid was built on.

    Raises:
        ValueError: a size below 1, or sizes whose product is not the number
            of ranks of ``comm``. Raised on every rank before any
            communication.

    Creation and :meth:`free` must be done on all ranks of ``comm``.
    """

    def __init__(self, comm: Any = None, data: Optional[int] = None, tensor: Optional[int] = 1,
                 pipeline: Optional[int] = 1) -> None:
        import distml

        self._owns_world = not isinstance(comm, distml.Communicator) and comm is not None
        self.world = _default_comm(comm)
        world_size = self.world.size
        sizes = {"data": data, "tensor": tensor, "pipeline": pipeline}
        unknown = [k for k, v in sizes.items() if v is None]
        if len(unknown) > 1:
            raise ValueError(f"at most one grid size may be None, got None for {unknown}")
        for k, v in sizes.items():
            if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
                raise ValueError(f"{k} size must be a positive int, not {v!r}")
        known = 1
        for v in sizes.values():
            if v is not None:
                known *= int(v)
        if unknown:
            if world_size % known:
                raise ValueError(f"{world_size} ranks cannot be split into groups of {known} "
                                 f"({', '.join(f'{k}={v}' for k, v in sizes.items() if v is not None)})")
            sizes[unknown[0]] = world_size // known
        S, D, T = int(sizes["pipeline"]), int(sizes["data"]), int(sizes["tensor"])
        if S * D * T != world_size:
            raise ValueError(f"pipeline x data x tensor = {S} x {D} x {T} = {S * D * T}, "
                             f"but the communicator has {world_size} ranks")
        self.pipeline_size, self.data_size, self.tensor_size = S, D, T
        rank = self.world.rank
        self.pipeline_rank, rest = divmod(rank, D * T)
        self.data_rank, self.tensor_rank = divmod(rest, T)
        p, d, t = self.pipeline_rank, self.data_rank, self.tensor_rank

        mpi = self.world.mpi_comm
        # Colours number the groups of one axis; each split is collective
        # over the whole world, so all ranks make the three in this order.
        self._split = [mpi.Split(color=p * D + d, key=t),   # tensor
                       mpi.Split(color=p * T + t, key=d),   # data
                       mpi.Split(color=d * T + t, key=p)]   # pipeline
        timeout = self.world.timeout
        self.tensor, self.data, self.pipeline = (distml.Communicator(c, timeout=timeout) for c in self._split)

    @property
    def coords(self) -> Tuple[int, int, int]:
        """(pipeline_rank, data_rank, tensor_rank)."""
        return self.pipeline_rank, self.data_rank, self.tensor_rank

    def rank_of(self, pipeline: int, data: int, tensor: int) -> int:
        """The rank in ``world`` of the given coordinates."""
        return (pipeline * self.data_size + data) * self.tensor_size + tensor

    def free(self) -> None:
        """Frees the three sub-communicators (and the Communicator the grid
        made around an mpi4py ``comm``). Must be called on all ranks."""
        for c in (self.tensor, self.data, self.pipeline):
            c.free()
        from mpi4py import MPI

        for c in self._split:
            if c != MPI.COMM_NULL:
                c.Free()
        self._split = []
        if self._owns_world:
            self.world.free()

    def __repr__(self) -> str:
        return (f"<distml.parallel.ProcessGrid pipeline x data x tensor = {self.pipeline_size} x "
                f"{self.data_size} x {self.tensor_size}, rank {self.world.rank} at {self.coords}>")
