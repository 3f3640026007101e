"""alltoallv and allgatherv: every algorithm x dtype, N-D rows, empty parts,
ranks that send nothing, against numpy references (byte for byte), plus
their argument checks: bad counts raise ValueError where they are and
MismatchError elsewhere, before any row moves."""

from __future__ import annotations

import numpy as np
import pytest

import distml
from mpi_helpers import ALL_DTYPES, Checker, SEG64_DTYPES, _rng, call, inputs

ALGORITHMS = ["auto", "pairwise", "mpi", "shm"]


def _params():
    return [
        pytest.param(seg, alg, dtype, id=f"{seg}-{alg}-{dtype}")
        for alg in ALGORITHMS
        for seg in ("seg_default", "seg64")
        if not (seg == "seg64" and alg in ("mpi", "shm"))
        for dtype in (ALL_DTYPES if seg == "seg_default" else SEG64_DTYPES)
    ]


# Rows rank s sends to rank d, per pattern: every part empty, only rank 0
# sends, only to the last rank, mixed small sizes with zeros, large uneven.
def _counts(pattern: str, P: int) -> np.ndarray:
    c = np.zeros((P, P), dtype=np.int64)
    if pattern == "empty":
        return c
    if pattern == "rank0_only":
        c[0] = np.arange(1, P + 1)
        return c
    if pattern == "to_last":
        c[:, P - 1] = 3
        return c
    if pattern == "mixed":
        return _rng(("counts", pattern), 0).integers(0, 4, size=(P, P))
    if pattern == "large":
        return _rng(("counts", pattern), 0).integers(0, 900, size=(P, P))
    raise ValueError(pattern)


PATTERNS = ["empty", "rank0_only", "to_last", "mixed", "large"]
ROW_SHAPES = [(), (3,), (2, 0), (2, 3)]


def require(comm, algorithm):
    """Skips (on every rank alike) where ``algorithm`` cannot run: "shm"
    needs more than one rank, all on one node."""
    if algorithm != "shm":
        return
    try:
        comm.allgatherv(np.zeros(1, np.uint8), algorithm="shm")
    except ValueError:
        pytest.skip(f"algorithm 'shm' is not available here (P={comm.size})")


def alltoallv_ref(xs, counts, rank):
    parts = []
    for s, x in enumerate(xs):
        off = np.concatenate([[0], np.cumsum(counts[s])])
        parts.append(x[off[rank]:off[rank + 1]])
    return np.concatenate(parts, axis=0)


@pytest.mark.parametrize("comm,algorithm,dtype", _params(), indirect=["comm"])
def test_alltoallv(comm, algorithm, dtype):
    P, rank = comm.size, comm.rank
    require(comm, algorithm)
    check = Checker(P)
    for pattern in PATTERNS:
        counts = _counts(pattern, P)
        for row in ROW_SHAPES:
            if pattern == "large" and row == (2, 3) and np.dtype(dtype).itemsize > 1:
                continue  # enough bytes already at this size
            xs = [inputs(("alltoallv", str(dtype), pattern, row, s), dtype, (int(counts[s].sum()),) + row,
                         "bits", P)[s] for s in range(P)]
            x = xs[rank]
            before = x.copy()
            got = call(lambda: comm.alltoallv(x, counts[rank], algorithm=algorithm))
            label = f"{pattern} row={row}"
            if isinstance(got, BaseException):
                check.expect(label, got, None)
                continue
            out, recv_counts = got
            check.expect(label, out, alltoallv_ref(xs, counts, rank), "bits")
            check.expect(f"{label} recv_counts", recv_counts, counts[:, rank].astype(np.int64))
            check.expect(f"{label} input unchanged", x, before, "bits")
    check.verify()


@pytest.mark.parametrize("comm,algorithm,dtype", _params(), indirect=["comm"])
def test_allgatherv(comm, algorithm, dtype):
    P, rank = comm.size, comm.rank
    require(comm, algorithm)
    check = Checker(P)
    sizes = {
        "empty": [0] * P,
        "rank0_only": [5] + [0] * (P - 1),
        "last_empty": [r + 1 for r in range(P - 1)] + [0],
        "uneven": [(7 * r + 300) % 1000 for r in range(P)],
    }
    for name, rows in sizes.items():
        for row in ROW_SHAPES:
            xs = [inputs(("allgatherv", str(dtype), name, row, s), dtype, (rows[s],) + row, "bits", P)[s]
                  for s in range(P)]
            got = call(lambda: comm.allgatherv(xs[rank], algorithm=algorithm))
            check.expect(f"{name} row={row}", got, np.concatenate(xs, axis=0), "bits")
    check.verify()


@pytest.mark.parametrize("comm", ["seg_default"], indirect=True)
def test_variable_out_and_async(comm):
    P, rank = comm.size, comm.rank
    check = Checker(P)
    counts = np.array([(rank + d) % 3 for d in range(P)])
    x = np.arange(int(counts.sum()) * 2, dtype=np.float64).reshape(-1, 2) + 1000 * rank
    all_counts = np.array([[(s + d) % 3 for d in range(P)] for s in range(P)])
    xs = [np.arange(int(all_counts[s].sum()) * 2, dtype=np.float64).reshape(-1, 2) + 1000 * s for s in range(P)]
    ref = alltoallv_ref(xs, all_counts, rank)
    # out= of the right shape (known to the caller here)
    out = np.empty_like(ref)
    got = call(lambda: comm.alltoallv(x, counts, out=out))
    check.expect("out=", got if isinstance(got, BaseException) else got[0], ref, same=out)
    h = call(lambda: comm.alltoallv(x, counts, async_op=True))
    got = call(h.wait) if not isinstance(h, BaseException) else h
    check.expect("async", got if isinstance(got, BaseException) else got[0], ref)
    h = call(lambda: comm.allgatherv(np.full(rank, rank, np.int32), async_op=True))
    got = call(h.wait) if not isinstance(h, BaseException) else h
    check.expect("allgatherv async", got, np.concatenate([np.full(r, r, np.int32) for r in range(P)]))
    # non-contiguous input, and Python lists as counts
    xt = np.asfortranarray(x)
    got = call(lambda: comm.alltoallv(xt, [int(c) for c in counts]))
    check.expect("fortran-order x", got if isinstance(got, BaseException) else got[0], ref)
    check.verify()


@pytest.mark.parametrize("comm", ["seg_default"], indirect=True)
def test_variable_errors(comm):
    """Arguments only one rank gets wrong raise there (ValueError) and on
    every other rank (MismatchError); arguments that differ between ranks
    raise MismatchError everywhere. The communicator stays usable."""
    P, rank = comm.size, comm.rank
    check = Checker(P)
    x = np.zeros((P, 2), np.float32)
    ones = np.ones(P, np.int64)
    bad_rank = P - 1
    cases = {
        "counts do not add up": lambda: ones + (rank == bad_rank),
        "negative count": lambda: np.where(np.arange(P) == 0, -1 if rank == bad_rank else 1, ones + (
            (np.arange(P) == 1) if rank == bad_rank else 0)),
        "wrong length": lambda: np.ones(P + 1 if rank == bad_rank else P, np.int64),
    }
    for label, counts_of in cases.items():
        got = call(lambda: comm.alltoallv(x, counts_of()))
        if P == 1:
            check.expect_raises(label, got, ValueError)
        elif rank == bad_rank:
            check.expect_raises(label, got, ValueError)
        else:
            check.expect_raises(label, got, distml.MismatchError)
    if P > 1:
        got = call(lambda: comm.alltoallv(x.astype(np.float64 if rank == 0 else np.float32), ones))
        check.expect_raises("dtype differs", got, distml.MismatchError)
        got = call(lambda: comm.alltoallv(np.zeros((P, 2 + (rank == 0)), np.float32), ones))
        check.expect_raises("row shape differs", got, distml.MismatchError)
        got = call(lambda: comm.allgatherv(np.zeros((rank, 3 if rank else 4), np.int8)))
        check.expect_raises("allgatherv row shape differs", got, distml.MismatchError)
        if rank == 0:
            got = call(lambda: comm.allgatherv(np.zeros(P, np.float32)))
        else:
            got = call(lambda: comm.alltoallv(np.zeros(P, np.float32), ones))
        check.expect_raises("collectives differ", got, distml.MismatchError)
        got = call(lambda: comm.alltoallv(x, ones, out=np.empty((P + (rank == 0), 2), np.float32)))
        check.expect_raises("wrong out", got, ValueError if rank == 0 else distml.MismatchError)
    got = call(lambda: comm.alltoallv(np.float32(1), ones))
    check.expect_raises("0-d x", got, ValueError)
    # still usable
    got = call(lambda: comm.alltoallv(x, ones))
    check.expect("usable afterwards", got if isinstance(got, BaseException) else got[0], x * 0)
    check.verify()


def test_shm_many_rounds():
    """With 4 KiB slots, blocks take many rounds through shared memory (and
    blocks of different lengths end in different rounds)."""
    import os

    os.environ["DISTML_SHM_SLOT_BYTES"] = "4096"
    try:
        comm = distml.Communicator(timeout=120)
    finally:
        del os.environ["DISTML_SHM_SLOT_BYTES"]
    try:
        P, rank = comm.size, comm.rank
        require(comm, "shm")
        check = Checker(P)
        for dtype in (np.dtype(np.uint8), np.dtype(np.float64)):
            counts = _counts("large", P)
            xs = [inputs(("shm_rounds", str(dtype), s), dtype, (int(counts[s].sum()), 3), "bits", P)[s]
                  for s in range(P)]
            got = call(lambda: comm.alltoallv(xs[rank], counts[rank], algorithm="shm"))
            check.expect(f"alltoallv {dtype}", got if isinstance(got, BaseException) else got[0],
                         alltoallv_ref(xs, counts, rank), "bits")
            got = call(lambda: comm.allgatherv(xs[rank], algorithm="shm"))
            check.expect(f"allgatherv {dtype}", got, np.concatenate(xs, axis=0), "bits")
        check.verify()
    finally:
        comm.free()
