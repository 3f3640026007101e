"""alltoall on one node through shared memory: with the arrival (small),
one round of lanes, many rounds (blocks larger than a lane), in place and
into out=, N-D rows; against numpy, with the ranks' arguments compared."""

from __future__ import annotations

import numpy as np
import pytest

from mpi_helpers import BF16, Checker, alltoall_ref, call, inputs, require

# Bytes per block: eager (4 KiB input at most), one lane, several lanes of
# the 1 MiB slot cut P ways, and a block that is not a multiple of 64.
BLOCK_BYTES = [8, 1000, 64 << 10, 700_003]


@pytest.mark.parametrize("dtype", [np.dtype(np.uint8), BF16, np.dtype(np.float32), np.dtype(np.int64)], ids=str)
@pytest.mark.parametrize("block_bytes", BLOCK_BYTES)
def test_alltoall_shm(comm_default, dtype, block_bytes):
    comm, P, r = comm_default, comm_default.size, comm_default.rank
    require(comm, "alltoall", "shm")
    rows = max(1, block_bytes // dtype.itemsize)
    xs = inputs(("alltoall_shm", str(dtype), rows), dtype, (P * rows,), "bits", P)
    want = alltoall_ref(xs, r)
    check = Checker(P)
    for alg in ("shm", "auto"):
        x = xs[r].copy()
        check.expect(f"{alg} new result", call(lambda: comm.alltoall(x, algorithm=alg)), want, "bits")
        check.expect(f"{alg} input unchanged", x, xs[r], "bits")
        out = np.empty_like(x)
        check.expect(f"{alg} out=", call(lambda: comm.alltoall(x, out=out, algorithm=alg)), want, "bits", same=out)
        check.expect(f"{alg} in place", call(lambda: comm.alltoall(x, out=x, algorithm=alg)), want, "bits", same=x)
    check.verify()


def test_alltoall_shm_rows(comm_default):
    comm, P, r = comm_default, comm_default.size, comm_default.rank
    require(comm, "alltoall", "shm")
    check = Checker(P)
    for shape in [(P, 3), (2 * P, 5, 7), (4 * P, 1000)]:
        xs = inputs(("alltoall_shm_rows", shape), np.dtype(np.float64), shape, "bits", P)
        check.expect(f"shape {shape}", call(lambda: comm.alltoall(xs[r], algorithm="shm")), alltoall_ref(xs, r), "bits")
    check.verify()


def test_alltoall_shm_mismatch_raises_everywhere(comm_default):
    """Ranks that pass different sizes all raise, and the communicator stays
    usable (both on the path with the arrival and on the lanes)."""
    import distml

    comm, P, r = comm_default, comm_default.size, comm_default.rank
    require(comm, "alltoall", "shm")
    if P == 1 or not comm.check:
        pytest.skip("needs several ranks and argument checks")
    check = Checker(P)
    for rows in (2, 40000):
        x = np.zeros(P * (rows + (r == P - 1)), np.float32)
        check.expect_raises(f"rows {rows}", call(lambda: comm.alltoall(x, algorithm="shm")), distml.MismatchError)
    x = np.arange(P * 3, dtype=np.float32) + 100 * r
    xs = [np.arange(P * 3, dtype=np.float32) + 100 * s for s in range(P)]
    check.expect("after", call(lambda: comm.alltoall(x, algorithm="shm")), alltoall_ref(xs, r), "bits")
    check.verify()
