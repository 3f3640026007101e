"""allreduce, reduce and reduce_scatter: every algorithm x dtype x op x count,
against numpy references, with the default segment size and with 64-byte
segments (many pipelined segments per chunk even for small inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import COMM_TIMEOUT
from mpi_helpers import (
    Checker, call, comm_algorithm_dtypes, counts_for, inputs, reduce_ref, reduce_scatter_ref, reduction_cases,
    require,
)


@pytest.mark.parametrize("comm,algorithm,dtype", comm_algorithm_dtypes("allreduce"), indirect=["comm"])
def test_allreduce(comm, algorithm, dtype):
    P, rank = comm.size, comm.rank
    require(comm, "allreduce", algorithm)
    check = Checker(P)
    for count in counts_for(P):
        for op, kind, mode in reduction_cases(dtype):
            key = ("allreduce", str(dtype), op, kind, count)
            xs = inputs(key, dtype, (count,), kind, P)
            x = xs[rank]
            before = x.copy()
            got = call(lambda: comm.allreduce(x, op=op, algorithm=algorithm))
            label = f"count={count} op={op} values={kind}"
            check.expect(label, got, reduce_ref(xs, op), mode, dtype=dtype)
            check.expect(label + " input unchanged", x, before, "bits")
    check.verify()


@pytest.mark.parametrize("comm,algorithm,dtype", comm_algorithm_dtypes("reduce"), indirect=["comm"])
def test_reduce(comm, algorithm, dtype):
    P, rank = comm.size, comm.rank
    require(comm, "reduce", algorithm)
    check = Checker(P)
    # Every root with every count for "sum"; the other ops rotate through the
    # roots, so that each (op, count) meets some root and each root many ops.
    runs = []
    for count in counts_for(P):
        for i, (op, kind, mode) in enumerate(reduction_cases(dtype)):
            roots = range(P) if i == 0 else [(i + count) % P]
            runs.extend((root, count, op, kind, mode) for root in roots)
    for root, count, op, kind, mode in runs:
        key = ("reduce", str(dtype), op, kind, count, root)
        xs = inputs(key, dtype, (count,), kind, P)
        x = xs[rank]
        before = x.copy()
        got = call(lambda: comm.reduce(x, root=root, op=op, algorithm=algorithm))
        label = f"root={root} count={count} op={op} values={kind}"
        expected = reduce_ref(xs, op) if rank == root else None
        check.expect(label, got, expected, mode, dtype=dtype)
        check.expect(label + " input unchanged", x, before, "bits")
    check.verify()


@pytest.mark.parametrize("comm,algorithm,dtype", comm_algorithm_dtypes("reduce_scatter"), indirect=["comm"])
def test_reduce_scatter(comm, algorithm, dtype):
    P, rank = comm.size, comm.rank
    require(comm, "reduce_scatter", algorithm)
    check = Checker(P)
    # Rows: fewer than P (some ranks get nothing), not divisible by P, many.
    for shape in [(0,), (1,), (7,), (2 * P + 1,), (2999,), (P + 1, 3)]:
        for op, kind, mode in reduction_cases(dtype):
            key = ("reduce_scatter", str(dtype), op, kind, shape)
            xs = inputs(key, dtype, shape, kind, P)
            x = xs[rank]
            before = x.copy()
            got = call(lambda: comm.reduce_scatter(x, op=op, algorithm=algorithm))
            label = f"shape={shape} op={op} values={kind}"
            check.expect(label, got, reduce_scatter_ref(xs, op, rank), mode, dtype=dtype)
            check.expect(label + " input unchanged", x, before, "bits")
    check.verify()


@pytest.mark.parametrize("segment_bytes", [1, 3, 20])
def test_tiny_segments(world, segment_bytes):
    """Segments smaller than, or not a multiple of, one element."""
    import distml

    P, rank = world.size, world.rank
    check = Checker(P)
    with distml.Communicator(world, segment_bytes=segment_bytes, timeout=COMM_TIMEOUT) as c:
        for dtype in [np.dtype(np.float64), np.dtype(np.float16), np.dtype(np.int8)]:
            for count in [0, 1, 2, 3, 5, 8, 13, 37]:
                xs = inputs(("tiny", segment_bytes, str(dtype), count), dtype, (count,), "small", P)
                x = xs[rank]
                for algorithm in ["ring", "recursive_doubling"]:
                    got = call(lambda: c.allreduce(x, algorithm=algorithm))
                    check.expect(f"allreduce {algorithm} {dtype} count={count}", got, reduce_ref(xs, "sum"),
                                 dtype=dtype)
                got = call(lambda: c.reduce_scatter(x, algorithm="ring"))
                check.expect(f"reduce_scatter ring {dtype} count={count}", got,
                             reduce_scatter_ref(xs, "sum", rank), dtype=dtype)
                got = call(lambda: c.allgather(x, algorithm="ring"))
                check.expect(f"allgather ring {dtype} count={count}", got, np.concatenate(xs), "bits")
                got = call(lambda: c.reduce(x, root=P - 1, algorithm="ring"))
                check.expect(f"reduce ring {dtype} count={count}", got,
                             reduce_ref(xs, "sum") if rank == P - 1 else None, dtype=dtype)
                y = xs[0].copy() if rank == 0 else np.zeros_like(x)
                got = call(lambda: c.broadcast(y, root=0, algorithm="scatter_allgather"))
                check.expect(f"broadcast scatter_allgather {dtype} count={count}", got, xs[0], "bits")
    check.verify()
