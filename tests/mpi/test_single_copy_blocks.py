"""allgather, reduce_scatter and alltoall between two ranks of one node that
may read each other's memory (ShmGroup::single_copy): from
``shm_single_copy_blocks_bytes`` on, the shared-memory schedule reads each
block straight from the peer's array instead of staging it through the
slots. Results against numpy for odd sizes and several dtypes and ops, with
the threshold lowered so that every size past the arrival's data takes the
variant and raised so that none does; alltoall in place on one rank and not
on the other; what ran, from the trace; a mismatch raises on both ranks."""

from __future__ import annotations

import numpy as np
import pytest

from distml import MismatchError

from mpi_helpers import BF16, Checker, allgather_ref, alltoall_ref, call, inputs, reduce_scatter_ref


@pytest.fixture
def pair(comm_default):
    comm = comm_default
    if not (comm.size == 2 and comm._core.one_node):
        pytest.skip("needs two ranks on one node")
    if not comm._core.single_copy:
        pytest.skip("the ranks may not read each other's memory here (ptrace rules)")
    return comm


class _Threshold:
    """Within the block, the single-copy variant from `bytes` on."""

    def __init__(self, comm, bytes_: int) -> None:
        self.core, self.bytes = comm._core, bytes_

    def __enter__(self):
        self.saved = self.core.shm_single_copy_blocks_bytes
        self.core.shm_single_copy_blocks_bytes = self.bytes
        return self

    def __exit__(self, *exc):
        self.core.shm_single_copy_blocks_bytes = self.saved


# Bytes of each rank's block (allgather) or of each rank's input: past the
# arrival's data (16 KiB), not multiples of 64, one above two slots (1 MiB).
SIZES = [16 * 1024 + 3, 100_003, (2 << 20) + 77]
DTYPES = [np.dtype(np.uint8), BF16, np.dtype(np.float32), np.dtype(np.float64)]


def _elements(nbytes: int, dtype: np.dtype, P: int) -> int:
    n = max(1, nbytes // dtype.itemsize)
    return n - n % P + P  # alltoall needs a multiple of P rows


@pytest.mark.parametrize("threshold", [0, 1 << 62], ids=["single_copy", "staged"])
def test_allgather_and_alltoall(pair, threshold):
    comm, P, r = pair, pair.size, pair.rank
    check = Checker(P)
    with _Threshold(comm, threshold):
        for dtype in DTYPES:
            for nbytes in SIZES:
                n = _elements(nbytes, dtype, P)
                key = (str(dtype), n)
                xs = inputs(("sc_allgather",) + key, dtype, (n,), "bits", P)
                x = xs[r].copy()
                check.expect(f"allgather {key}", call(lambda: comm.allgather(x, algorithm="shm")), allgather_ref(xs),
                             "bits")
                out = np.empty(P * n, dtype)
                check.expect(f"allgather out= {key}", call(lambda: comm.allgather(x, out=out, algorithm="shm")),
                             allgather_ref(xs), "bits", same=out)
                check.expect(f"allgather input unchanged {key}", x, xs[r], "bits")

                xs = inputs(("sc_alltoall",) + key, dtype, (n,), "bits", P)
                want = alltoall_ref(xs, r)
                x = xs[r].copy()
                check.expect(f"alltoall {key}", call(lambda: comm.alltoall(x, algorithm="shm")), want, "bits")
                check.expect(f"alltoall input unchanged {key}", x, xs[r], "bits")
                check.expect(f"alltoall in place {key}", call(lambda: comm.alltoall(x, out=x, algorithm="shm")),
                             want, "bits", same=x)
                # One rank in place, the other not: the in-place rank must not
                # overwrite blocks its peer is still reading.
                x = xs[r].copy()
                out = x if r == 0 else np.empty_like(x)
                check.expect(f"alltoall in place on rank 0 only {key}",
                             call(lambda: comm.alltoall(x, out=out, algorithm="shm")), want, "bits", same=out)
    check.verify()


@pytest.mark.parametrize("threshold", [0, 1 << 62], ids=["single_copy", "staged"])
def test_reduce_scatter(pair, threshold):
    comm, P, r = pair, pair.size, pair.rank
    check = Checker(P)
    with _Threshold(comm, threshold):
        for dtype in (np.dtype(np.float32), np.dtype(np.float64), BF16, np.dtype(np.int32)):
            for op, kind, mode in (("sum", "small", "exact"), ("avg", "real", "tol"), ("max", "full", "exact")):
                if dtype.kind == "i" and op == "avg":
                    continue
                for nbytes in SIZES:
                    n = max(1, nbytes // dtype.itemsize)
                    xs = inputs(("sc_reduce_scatter", str(dtype), op, n), dtype, (n,), kind, P)
                    want = reduce_scatter_ref(xs, op, r).astype(dtype)
                    x = xs[r].copy()
                    check.expect(f"reduce_scatter {dtype} {op} n={n}",
                                 call(lambda: comm.reduce_scatter(x, op=op, algorithm="shm")), want, mode, dtype=dtype)
                    check.expect(f"reduce_scatter input unchanged {dtype} {op} n={n}", x, xs[r], "bits")
        # Rows of several elements (blocks of whole rows).
        xs = inputs("sc_reduce_scatter_rows", np.dtype(np.float64), (20001, 7), "small", P)
        check.expect("reduce_scatter rows", call(lambda: comm.reduce_scatter(xs[r], algorithm="shm")),
                     reduce_scatter_ref(xs, "sum", r), "exact")
    check.verify()


def _schedules(comm, fn):
    core = comm._core
    core.drain_trace()
    core.set_trace(True)
    try:
        fn()
        return [(e["collective"], e["algorithm"], e.get("schedule", e.get("variant", ""))) for e in core.drain_trace()]
    finally:
        core.set_trace(False)


def test_auto_takes_the_variant_from_the_threshold(pair):
    comm = pair
    limit = 1 << 20
    with _Threshold(comm, limit):
        big = np.ones(limit // 4, np.float32)
        small = np.ones(limit // 8, np.float32)
        for x, expect in ((big, True), (small, False)):
            events = _schedules(comm, lambda: (comm.allgather(x), comm.reduce_scatter(x), comm.alltoall(x)))
            kinds = [e for e in events if e[0] in ("allgather", "reduce_scatter", "alltoall")]
            assert len(kinds) == 3, events
            for collective, algorithm, schedule in kinds:
                if algorithm == "shm":
                    assert ("cross-memory" in schedule) == expect, (x.nbytes, kinds)
                else:
                    # Below the threshold alltoall of this size takes pairwise.
                    assert not expect and collective == "alltoall", (x.nbytes, kinds)
            if expect:
                assert all(a == "shm" and "cross-memory" in s for _, a, s in kinds), kinds


def test_mismatch_raises_on_both_ranks(pair):
    comm, r = pair, pair.rank
    with _Threshold(comm, 0):
        n = (1 << 18) if r == 0 else (1 << 18) + 2
        x = np.ones(n, np.float32)
        with pytest.raises(MismatchError):
            comm.allgather(x, algorithm="shm")
        with pytest.raises(MismatchError):
            comm.reduce_scatter(x, algorithm="shm")
        with pytest.raises(MismatchError):
            comm.alltoall(x, algorithm="shm")
        # Still usable afterwards.
        y = np.full(1 << 18, r + 1.0, np.float32)
        got = comm.allgather(y, algorithm="shm")
        assert (got[: 1 << 18] == 1.0).all() and (got[1 << 18:] == 2.0).all()
