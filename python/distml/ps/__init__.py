"""distml.ps: a parameter server over MPI (sharded parameters, push/pull,
synchronous, bounded-staleness and asynchronous training). See docs/ps.md."""

from .server import ParameterServer

__all__ = ["ParameterServer"]
