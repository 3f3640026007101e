"""Collectives: distml against mpi4py's buffer collectives on the same MPI.

One benchmark group per (collective, size); in each, distml's algorithms and
the mpi4py baseline on the same buffers. Runs at any world size (see
conftest.py); every rank runs the same benchmarks with the same rounds.
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from conftest import ROTATE, SIZE

SIZES = [8, 64 << 10, 4 << 20, 64 << 20]
DTYPE = np.dtype(np.float32)


def _label(nbytes: int) -> str:
    for unit, m in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= m:
            return f"{nbytes // m}{unit}"
    return f"{nbytes}B"


def _count(nbytes: int) -> int:
    """Elements for ``nbytes``, rounded up to a multiple of the world size."""
    n = max(1, nbytes // DTYPE.itemsize)
    return -(-n // SIZE) * SIZE


def _pairs(n_in: int, n_out: int) -> list:
    return [(np.full(n_in, 1, DTYPE), np.full(n_out, 1, DTYPE)) for _ in range(ROTATE)]


@pytest.mark.parametrize("impl", ["distml:auto", "distml:ring", "mpi4py"])
@pytest.mark.parametrize("nbytes", SIZES, ids=_label)
def test_allreduce(run_rotating, benchmark, dcomm, world, impl, nbytes):
    n = _count(nbytes)
    benchmark.group = f"allreduce {_label(nbytes)}"
    sets = _pairs(n, n)
    if impl == "mpi4py":
        def target(src, dst):
            world.Allreduce(src, dst, op=MPI.SUM)
    else:
        algorithm = impl.split(":")[1]

        def target(src, dst):
            dcomm.allreduce(src, "sum", out=dst, algorithm=algorithm)
    run_rotating(target, sets, n * DTYPE.itemsize)


@pytest.mark.parametrize("impl", ["distml:auto", "mpi4py"])
@pytest.mark.parametrize("nbytes", SIZES, ids=_label)
def test_broadcast(run_rotating, benchmark, dcomm, world, impl, nbytes):
    n = _count(nbytes)
    benchmark.group = f"broadcast {_label(nbytes)}"
    sets = [(np.full(n, 1, DTYPE),) for _ in range(ROTATE)]
    if impl == "mpi4py":
        def target(buf):
            world.Bcast(buf, root=0)
    else:
        def target(buf):
            dcomm.broadcast(buf, 0)
    run_rotating(target, sets, n * DTYPE.itemsize)


@pytest.mark.parametrize("impl", ["distml:auto", "mpi4py"])
@pytest.mark.parametrize("nbytes", SIZES, ids=_label)
def test_reduce_scatter(run_rotating, benchmark, dcomm, world, impl, nbytes):
    """``nbytes`` is the full input; each rank receives 1/P of it."""
    n = _count(nbytes)
    benchmark.group = f"reduce_scatter {_label(nbytes)}"
    sets = _pairs(n, n // SIZE)
    if impl == "mpi4py":
        def target(src, dst):
            world.Reduce_scatter_block(src, dst, op=MPI.SUM)
    else:
        def target(src, dst):
            dcomm.reduce_scatter(src, "sum", out=dst)
    run_rotating(target, sets, n * DTYPE.itemsize)


@pytest.mark.parametrize("impl", ["distml:auto", "mpi4py"])
@pytest.mark.parametrize("nbytes", SIZES, ids=_label)
def test_allgather(run_rotating, benchmark, dcomm, world, impl, nbytes):
    """``nbytes`` is the full gathered buffer; each rank contributes 1/P."""
    n = _count(nbytes)
    benchmark.group = f"allgather {_label(nbytes)}"
    sets = _pairs(n // SIZE, n)
    if impl == "mpi4py":
        def target(src, dst):
            world.Allgather(src, dst)
    else:
        def target(src, dst):
            dcomm.allgather(src, out=dst)
    run_rotating(target, sets, n * DTYPE.itemsize)
