"""broadcast, allgather, alltoall and barrier: every algorithm x dtype x count
(x root), against numpy. Inputs are arbitrary bit patterns (NaNs included) and
results must match byte for byte: these collectives only move data."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mpi_helpers import (
    Checker, allgather_ref, alltoall_ref, call, comm_algorithm_dtypes, comm_algorithms, counts_for, inputs, require,
)


@pytest.mark.parametrize("comm,algorithm,dtype", comm_algorithm_dtypes("broadcast"), indirect=["comm"])
def test_broadcast(comm, algorithm, dtype):
    P, rank = comm.size, comm.rank
    require(comm, "broadcast", algorithm)
    check = Checker(P)
    for root in range(P):
        for count in counts_for(P):
            xs = inputs(("broadcast", str(dtype), count, root), dtype, (count,), "bits", P)
            # Non-roots start from their own (different) data, which must be
            # overwritten completely.
            x = xs[rank].copy()
            got = call(lambda: comm.broadcast(x, root=root, algorithm=algorithm))
            label = f"root={root} count={count}"
            check.expect(label, got, xs[root], "bits", same=x)
    check.verify()


@pytest.mark.parametrize("comm,algorithm,dtype", comm_algorithm_dtypes("allgather"), indirect=["comm"])
def test_allgather(comm, algorithm, dtype):
    P, rank = comm.size, comm.rank
    require(comm, "allgather", algorithm)
    check = Checker(P)
    for count in counts_for(P):
        xs = inputs(("allgather", str(dtype), count), dtype, (count,), "bits", P)
        x = xs[rank]
        before = x.copy()
        got = call(lambda: comm.allgather(x, algorithm=algorithm))
        check.expect(f"count={count}", got, allgather_ref(xs), "bits")
        check.expect(f"count={count} input unchanged", x, before, "bits")
    check.verify()


@pytest.mark.parametrize("comm,algorithm,dtype", comm_algorithm_dtypes("alltoall"), indirect=["comm"])
def test_alltoall(comm, algorithm, dtype):
    P, rank = comm.size, comm.rank
    require(comm, "alltoall", algorithm)
    check = Checker(P)
    # Rows per destination: none, one, odd, hundreds.
    for per_rank in [0, 1, 3, 750]:
        xs = inputs(("alltoall", str(dtype), per_rank), dtype, (P * per_rank,), "bits", P)
        x = xs[rank]
        before = x.copy()
        got = call(lambda: comm.alltoall(x, algorithm=algorithm))
        check.expect(f"rows={P * per_rank}", got, alltoall_ref(xs, rank), "bits")
        check.expect(f"rows={P * per_rank} input unchanged", x, before, "bits")
    check.verify()


@pytest.mark.parametrize("comm,algorithm", comm_algorithms("barrier"), indirect=["comm"])
def test_barrier(comm, world, algorithm):
    """A barrier holds every rank until the last one arrives.

    The last rank arrives after a delay; each rank's exit is stamped and
    exchanged over mpi4py: no rank may leave before the late rank entered.
    """
    P, rank = comm.size, comm.rank
    require(comm, "barrier", algorithm)
    check = Checker(P)
    results = [call(lambda: comm.barrier(algorithm=algorithm)) for _ in range(3)]
    late = P - 1
    delay = 0.3
    world.Barrier()
    if rank == late:
        time.sleep(delay)
    entered = time.time()
    got = call(lambda: comm.barrier(algorithm=algorithm))
    left = time.time()
    stamps = world.allgather((entered, left))
    for i, r in enumerate(results):
        check.expect(f"barrier #{i} returns None", r, None)
    check.expect("timed barrier returns None", got, None)
    # Clocks of ranks on one machine agree far better than the delay.
    late_entry = stamps[late][0]
    for r, (_, exit_time) in enumerate(stamps):
        check.expect_true(f"rank {r} left at {exit_time - late_entry:+.3f}s relative to the late rank's entry",
                          exit_time >= late_entry - 0.01)
    check.verify()
