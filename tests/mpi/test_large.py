"""Messages of a few megabytes: larger than the shared-memory slot (1 MiB)
and than the one-shot threshold, so every algorithm takes its multi-round,
many-segment path with the library's default sizes. (Counts above 2**31
elements are tested elsewhere.)"""

from __future__ import annotations

import numpy as np
import pytest

from mpi_helpers import (
    BF16, Checker, all_algorithms, allgather_ref, alltoall_ref, available, call, inputs, reduce_ref,
    reduce_scatter_ref,
)

COUNT = 2 ** 19 + 3  # 1 MiB + 6 bytes of float16, 4 MiB + 24 bytes of float64


@pytest.mark.parametrize("dtype", [np.dtype(np.float16), BF16, np.dtype(np.float64), np.dtype(np.int32)], ids=str)
def test_large_messages(comm_default, dtype):
    comm = comm_default
    P, rank = comm.size, comm.rank
    check = Checker(P)
    xs = inputs(("large", str(dtype)), dtype, (COUNT,), "small", P)
    x = xs[rank]
    summed = reduce_ref(xs, "sum")
    for alg in [a for a in all_algorithms("allreduce") if available(comm, "allreduce", a)]:
        check.expect(f"allreduce {alg}", call(lambda: comm.allreduce(x, algorithm=alg)), summed, dtype=dtype)
    for alg in [a for a in all_algorithms("reduce") if available(comm, "reduce", a)]:
        root = P // 2
        check.expect(f"reduce {alg} root={root}", call(lambda: comm.reduce(x, root=root, algorithm=alg)),
                     summed if rank == root else None, dtype=dtype)
    for alg in [a for a in all_algorithms("reduce_scatter") if available(comm, "reduce_scatter", a)]:
        check.expect(f"reduce_scatter {alg}", call(lambda: comm.reduce_scatter(x, algorithm=alg)),
                     reduce_scatter_ref(xs, "sum", rank), dtype=dtype)
    for alg in [a for a in all_algorithms("broadcast") if available(comm, "broadcast", a)]:
        root = P - 1
        y = x.copy()
        check.expect(f"broadcast {alg} root={root}", call(lambda: comm.broadcast(y, root=root, algorithm=alg)),
                     xs[root], "bits")
    part = x[: (COUNT // P) * P // 2]  # allgather output P times as large: keep it moderate
    parts = [a[: part.size] for a in xs]
    for alg in [a for a in all_algorithms("allgather") if available(comm, "allgather", a)]:
        check.expect(f"allgather {alg}", call(lambda: comm.allgather(part, algorithm=alg)), allgather_ref(parts),
                     "bits")
    rows = x[: (COUNT // P) * P]
    rows_all = [a[: rows.size] for a in xs]
    for alg in [a for a in all_algorithms("alltoall") if available(comm, "alltoall", a)]:
        check.expect(f"alltoall {alg}", call(lambda: comm.alltoall(rows, algorithm=alg)),
                     alltoall_ref(rows_all, rank), "bits")
    check.verify()
