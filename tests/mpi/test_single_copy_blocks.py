"""allgather, reduce_scatter and alltoall between ranks of one node that
may read each other's memory (ShmGroup::single_copy): from
``shm_single_copy_blocks_bytes`` on, the shared-memory schedule reads each
block straight from the peer's array instead of staging it through the
slots; on nodes of more than two ranks only alltoall does (from 512 KiB by
default). Results against numpy for odd sizes and several dtypes and ops,
with the threshold lowered so that every size past the arrival's data takes
the variant and raised so that none does; alltoall in place on one rank and
not on the others; what ran, from the trace; a mismatch raises on every
rank."""

from __future__ import annotations

import numpy as np
import pytest

from distml import MismatchError

from mpi_helpers import BF16, Checker, allgather_ref, alltoall_ref, call, inputs, reduce_scatter_ref, traced


@pytest.fixture
def pair(comm_default):
    comm = comm_default
    if not (comm.size == 2 and comm._core.one_node):
        pytest.skip("needs two ranks on one node")
    if not comm._core.single_copy:
        pytest.skip("the ranks may not read each other's memory here (ptrace rules)")
    return comm


@pytest.fixture
def node(comm_default):
    """Two or more ranks on one node that may read each other's memory."""
    comm = comm_default
    if not (comm.size >= 2 and comm._core.one_node):
        pytest.skip("needs two or more ranks on one node")
    if not comm._core.single_copy:
        pytest.skip("the ranks may not read each other's memory here (ptrace rules)")
    return comm


class _Threshold:
    """Within the block, the single-copy variant from `bytes` on, and only
    the threshold decides (no choice by times: test_variant_tuner.py)."""

    def __init__(self, comm, bytes_: int) -> None:
        self.core, self.bytes = comm._core, bytes_

    def __enter__(self):
        self.saved = self.core.shm_single_copy_blocks_bytes, self.core.shm_tune
        self.core.shm_single_copy_blocks_bytes = self.bytes
        self.core.shm_tune = False
        return self

    def __exit__(self, *exc):
        self.core.shm_single_copy_blocks_bytes, self.core.shm_tune = self.saved


# Bytes of each rank's block (allgather) or of each rank's input: past the
# arrival's data (16 KiB), not multiples of 64, one above two slots (1 MiB).
SIZES = [16 * 1024 + 3, 100_003, (2 << 20) + 77]
DTYPES = [np.dtype(np.uint8), BF16, np.dtype(np.float32), np.dtype(np.float64)]


def _elements(nbytes: int, dtype: np.dtype, P: int) -> int:
    n = max(1, nbytes // dtype.itemsize)
    return n - n % P + P  # alltoall needs a multiple of P rows


def _cases(name: str, P: int):
    """(key, every rank's input) for each dtype and size."""
    for dtype in DTYPES:
        for nbytes in SIZES:
            n = _elements(nbytes, dtype, P)
            key = (str(dtype), n)
            yield key, inputs((name,) + key, dtype, (n,), "bits", P)


@pytest.mark.parametrize("threshold", [0, 1 << 62], ids=["single_copy", "staged"])
def test_allgather(pair, threshold):
    comm, P, r = pair, pair.size, pair.rank
    check = Checker(P)
    with _Threshold(comm, threshold):
        for key, xs in _cases("sc_allgather", P):
            x = xs[r].copy()
            check.expect(f"allgather {key}", call(lambda: comm.allgather(x, algorithm="shm")), allgather_ref(xs),
                         "bits")
            out = np.empty(P * xs[r].size, xs[r].dtype)
            check.expect(f"allgather out= {key}", call(lambda: comm.allgather(x, out=out, algorithm="shm")),
                         allgather_ref(xs), "bits", same=out)
            check.expect(f"allgather input unchanged {key}", x, xs[r], "bits")
    check.verify()


@pytest.mark.parametrize("threshold", [0, 1 << 62], ids=["single_copy", "staged"])
def test_alltoall(node, threshold):
    comm, P, r = node, node.size, node.rank
    check = Checker(P)
    with _Threshold(comm, threshold):
        for key, xs in _cases("sc_alltoall", P):
            want = alltoall_ref(xs, r)
            x = xs[r].copy()
            check.expect(f"alltoall {key}", call(lambda: comm.alltoall(x, algorithm="shm")), want, "bits")
            check.expect(f"alltoall input unchanged {key}", x, xs[r], "bits")
            check.expect(f"alltoall in place {key}", call(lambda: comm.alltoall(x, out=x, algorithm="shm")),
                         want, "bits", same=x)
            # One rank in place, the others not: the in-place rank must not
            # overwrite blocks its peers are still reading.
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
    return [(e["collective"], e["algorithm"], e.get("schedule", e.get("variant", ""))) for e in traced(comm, fn)]


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


def test_node_of_more_ranks_reads_peers_only_for_alltoall(node):
    """On nodes of more than two ranks auto's alltoall takes the single copy
    from 512 KiB (staged shared memory below), and allgather and
    reduce_scatter never read peers directly, whatever the threshold."""
    comm, P = node, node.size
    if P == 2:
        pytest.skip("needs more than two ranks (two: test_auto_takes_the_variant_from_the_threshold)")
    assert comm._core.shm_single_copy_blocks_bytes == 512 << 10

    def whole(nbytes):  # float32 elements, a multiple of P
        n = -(-nbytes // 4)
        return np.ones(n + (-n) % P, np.float32)

    for nbytes, expect in ((512 << 10, True), (1 << 20, True), (256 << 10, False)):
        x = whole(nbytes)
        kinds = [e for e in _schedules(comm, lambda: comm.alltoall(x)) if e[0] == "alltoall"]
        assert len(kinds) == 1 and kinds[0][1] == "shm", (nbytes, kinds)
        assert ("cross-memory" in kinds[0][2]) == expect, (nbytes, kinds)
    with _Threshold(comm, 0):
        x = whole(1 << 20)
        events = _schedules(comm, lambda: (comm.allgather(x), comm.reduce_scatter(x), comm.alltoall(x)))
        kinds = {e[0]: e for e in events if e[0] in ("allgather", "reduce_scatter", "alltoall")}
        assert set(kinds) == {"allgather", "reduce_scatter", "alltoall"}, events
        assert "cross-memory" not in kinds["allgather"][2] and "cross-memory" not in kinds["reduce_scatter"][2], kinds
        assert "cross-memory" in kinds["alltoall"][2], kinds


def test_alltoall_mismatch_raises_on_every_rank(node):
    comm, P, r = node, node.size, node.rank
    with _Threshold(comm, 0):
        n = P * (1 << 16) + (P if r == P - 1 else 0)
        with pytest.raises(MismatchError):
            comm.alltoall(np.ones(n, np.float32), algorithm="shm")
        # Still usable afterwards.
        x = np.full(P * (1 << 16), r + 1.0, np.float32)
        got = comm.alltoall(x, algorithm="shm")
        want = np.repeat(np.arange(1, P + 1, dtype=np.float32), 1 << 16)
        assert (got == want).all()


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
