"""Small allreduces that carry the agreement in their own messages
(algorithms/carried.h): where ranks do not share one node, the mismatch
check's fingerprints (no timeout) or signatures (through rank 0, with a
timeout) travel with the data, so checking and reducing take one round of
messages.

The halving-doubling allreduce (algorithm="halving_doubling") carries the
fingerprints the same way on its fold-in and halving messages, whose
partners and order are recursive doubling's: its results, which sizes
carry, and its mismatches against every kind of call are tested at the end.

Results against numpy at sizes up to and past the carried limit, with the
check on and off, blocking and async; mismatched calls (count, dtype, op,
kind, algorithm, a carried call against one too large to be carried)
raising MismatchError on every rank with ``out`` left untouched, and the
communicator usable afterwards. On one node (or P = 1) the same calls take
other paths and the results are checked all the same; tests/test_mpi.py
runs this file on two pretend nodes (MPIR_CVAR_NUM_CLIQUES=2) with and
without a timeout, and tests/test_netns.py across virtual hosts.
"""

from __future__ import annotations

import numpy as np
import pytest

import distml
from conftest import COMM_TIMEOUT
from mpi_helpers import BF16, Checker, call, inputs, reduce_ref, reduction_cases

# Bytes: tiny, odd, around the default carried limit (8 KiB) and the
# smallest one through rank 0 (64 KiB shared by P - 1 peers: 21 KiB at
# P = 4), at and past the largest (64 KiB).
SIZES = [4, 8, 28, 1000, 8192, 8196, 20000, 24000, 65536, 65540]
DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), BF16, np.dtype(np.int32),
          np.dtype(np.uint8)]


def _across_nodes(comm) -> bool:
    return comm.size > 1 and not comm._core.one_node


def _schedules(comm):
    return [e["schedule"] for e in comm._core.drain_trace()]


def _check_results(comm, check, label):
    P, rank = comm.size, comm.rank
    comm._core.drain_trace()
    comm._core.set_trace(True)
    carried_at = {}
    try:
        for dtype in DTYPES:
            for nbytes in SIZES:
                count = max(1, nbytes // dtype.itemsize)
                for op, kind, mode in reduction_cases(dtype):
                    key = ("carried", label, str(dtype), op, kind, count)
                    xs = inputs(key, dtype, (count,), kind, P)
                    x = xs[rank]
                    before = x.copy()
                    got = call(lambda: comm.allreduce(x, op=op))
                    what = f"{label} {dtype} count={count} op={op}"
                    check.expect(what, got, reduce_ref(xs, op), mode, dtype=dtype)
                    check.expect(what + " input unchanged", x, before, "bits")
                    # out= and in place.
                    out = np.full(count, 3, dtype=dtype)
                    got = call(lambda: comm.allreduce(x, op=op, out=out))
                    check.expect(what + " out=", got, reduce_ref(xs, op), mode, dtype=dtype, same=out)
                    y = x.copy()
                    got = call(lambda: comm.allreduce(y, op=op, out=y))
                    check.expect(what + " in place", got, reduce_ref(xs, op), mode, dtype=dtype, same=y)
                    carried_at[count * dtype.itemsize] = any("carried" in s for s in _schedules(comm))
        # Async calls queue behind one another and still carry their check.
        xs = inputs(("carried async", label), np.dtype(np.float32), (5,), "small", P)
        handles = [comm.allreduce(xs[rank] * (i + 1), async_op=True) for i in range(4)]
        for i, h in enumerate(handles):
            check.expect(f"{label} async #{i}", call(h.wait), reduce_ref(xs, "sum") * (i + 1), "exact",
                         dtype=np.float32)
    finally:
        comm._core.set_trace(False)
        comm._core.drain_trace()
    return carried_at


@pytest.mark.parametrize("carry_bytes", [None, 65536], ids=["default_limit", "largest_limit"])
def test_carried_results(comm_default, carry_bytes):
    comm = comm_default
    check = Checker(comm.size)
    default = comm._core.carry_bytes
    if carry_bytes is not None:
        comm._core.carry_bytes = carry_bytes  # on every rank, between the same collectives
    try:
        carried_at = _check_results(comm, check, f"check on, carry_bytes={comm._core.carry_bytes}")
    finally:
        comm._core.carry_bytes = default
    # Where ranks do not share a node and the check is on, tiny allreduces
    # carry it; nothing above the limit does. With one rank per node (no
    # hierarchical layout) and no timeout, every recursive doubling up to
    # the largest carried message (64 KiB) carries, whatever the (non-zero)
    # setting.
    limit = carry_bytes or default
    if _across_nodes(comm):
        check.expect_true(f"8 bytes carried ({carried_at})", carried_at.get(8))
        if not comm._core.hierarchical and COMM_TIMEOUT is None:
            limit = 65536
            check.expect_true(f"64 KiB carried without a hierarchical layout ({carried_at})",
                              carried_at.get(65536))
    check.expect_true(f"nothing above {limit} bytes carried ({carried_at})",
                      not any(v for b, v in carried_at.items() if b > limit))
    check.verify()


def test_carried_results_check_off(world):
    comm = distml.Communicator(world, check=False, timeout=COMM_TIMEOUT)
    try:
        check = Checker(comm.size)
        carried_at = _check_results(comm, check, "check off")
        # Without a check and without a timeout there is no agreement to carry.
        if COMM_TIMEOUT is None:
            check.expect_true(f"nothing carried without an agreement ({carried_at})", not any(carried_at.values()))
        check.verify()
    finally:
        comm.free()


def _mismatches(P: int, rank: int):
    """(label, this rank's call) where rank 0's call differs from the others'."""
    odd = rank == 0
    f32 = np.arange(4, dtype=np.float32)
    return [
        ("count", lambda c, out: c.allreduce(np.arange(5 if odd else 4, dtype=np.float32),
                                             out=out if not odd else None)),
        ("count, one call too large to carry", lambda c, out: c.allreduce(
            np.ones(40000, np.float32) if odd else f32, out=None if odd else out)),
        ("count, every other call too large", lambda c, out: c.allreduce(
            f32 if odd else np.ones(40000, np.float32), out=out if odd else None)),
        ("dtype, same bytes", lambda c, out: c.allreduce(np.arange(2, dtype=np.float64) if odd else f32,
                                                         out=None if odd else out)),
        ("dtype", lambda c, out: c.allreduce(np.arange(4, dtype=np.int32) if odd else f32,
                                             out=None if odd else out)),
        ("op", lambda c, out: c.allreduce(f32, op="max" if odd else "sum", out=out)),
        ("op avg/sum", lambda c, out: c.allreduce(f32, op="avg" if odd else "sum", out=out)),
        ("algorithm", lambda c, out: c.allreduce(f32, algorithm="mpi" if odd else "auto", out=out)),
        ("allreduce against broadcast", lambda c, out: c.broadcast(f32.copy()) if odd else c.allreduce(f32, out=out)),
        ("allreduce against barrier", lambda c, out: c.barrier() if rank == P - 1 else c.allreduce(f32, out=out)),
        ("allreduce against allgather", lambda c, out: c.allgather(f32) if odd else c.allreduce(f32, out=out)),
    ]


def _expect_mismatches(comm, check, cases, next_allreduce) -> None:
    """Each case's call raises MismatchError on every rank, leaves `out`
    untouched (the result of a carried call that did not agree never
    reaches it), and the ranks stay in step: `next_allreduce` (of
    arange(4) float32) is right afterwards."""
    f32 = np.arange(4, dtype=np.float32)
    for label, run in cases:
        out = np.full(4, -7, dtype=np.float32)
        got = call(lambda: run(comm, out))
        if label == "allreduce against broadcast" and comm.rank == 0 and not isinstance(got, BaseException):
            # On one node a small broadcast is one-way: its root returns
            # before the calls are compared and hears of the mismatch from
            # its next collective, which does not run.
            got = call(comm.barrier)
        check.expect_raises(label, got, distml.MismatchError)
        check.expect(label + ": out untouched", out, np.full(4, -7, dtype=np.float32), "bits")
        check.expect(label + ": next allreduce", call(next_allreduce), f32 * comm.size)


def test_carried_mismatch_every_rank_raises(comm_default, world):
    comm = comm_default
    P, rank = comm.size, comm.rank
    if P < 2:
        pytest.skip("a mismatch needs two ranks")
    check = Checker(P)
    f32 = np.arange(4, dtype=np.float32)
    _expect_mismatches(comm, check, _mismatches(P, rank), lambda: comm.allreduce(f32))
    # The message names what differs, and where.
    got = call(lambda: comm.allreduce(np.arange(2, dtype=np.float64) if rank == 0 else f32))
    check.expect_true("message names both dtypes",
                      isinstance(got, distml.MismatchError) and "float64 on rank 0" in str(got)
                      and "float32 on rank" in str(got))
    check.verify()


# Bytes around where halving-doubling stops carrying: its largest message
# before the verdict is the whole buffer where ranks are folded in (P = 3)
# and the first halving step's larger half otherwise, at most 64 KiB.
HALVING_SIZES = [4, 28, 1000, 65536, 65540, 131072, 131076, 200000]


def _halving_should_carry(P: int, nbytes: int, itemsize: int) -> bool:
    count = nbytes // itemsize
    p2 = 1 << (P.bit_length() - 1)
    if P > p2:
        largest = count
    else:  # the lower half of p2 numpy.array_split blocks
        largest = sum(len(b) for b in np.array_split(np.arange(count), p2)[: p2 // 2])
    return largest * itemsize <= 65536


def test_halving_doubling_carried_results(comm_default):
    comm = comm_default
    P, rank = comm.size, comm.rank
    check = Checker(P)
    comm._core.drain_trace()
    comm._core.set_trace(True)
    carried_at = {}
    try:
        for dtype in DTYPES:
            for nbytes in HALVING_SIZES:
                count = max(1, nbytes // dtype.itemsize)
                for op, kind, mode in reduction_cases(dtype):
                    key = ("halving carried", str(dtype), op, kind, count)
                    xs = inputs(key, dtype, (count,), kind, P)
                    x = xs[rank]
                    before = x.copy()
                    what = f"halving_doubling {dtype} count={count} op={op}"
                    got = call(lambda: comm.allreduce(x, op=op, algorithm="halving_doubling"))
                    check.expect(what, got, reduce_ref(xs, op), mode, dtype=dtype)
                    check.expect(what + " input unchanged", x, before, "bits")
                    y = x.copy()
                    got = call(lambda: comm.allreduce(y, op=op, out=y, algorithm="halving_doubling"))
                    check.expect(what + " in place", got, reduce_ref(xs, op), mode, dtype=dtype, same=y)
                    schedules = _schedules(comm)
                    carried_at[(count * dtype.itemsize, dtype.itemsize)] = [
                        "carried" in s for s in schedules if s.startswith("halving_doubling")]
    finally:
        comm._core.set_trace(False)
        comm._core.drain_trace()
    # Without a timeout, across nodes, every call that fits carries, and no
    # other; elsewhere (one node, a timeout) nothing does.
    fingerprints = _across_nodes(comm) and COMM_TIMEOUT is None
    for (nbytes, itemsize), flags in carried_at.items():
        want = fingerprints and _halving_should_carry(P, nbytes, itemsize)
        check.expect_true(f"halving_doubling {nbytes} bytes (items of {itemsize}) carried={want}: {flags}",
                          len(flags) > 0 and all(f == want for f in flags))
    check.verify()


def _halving_mismatches(P: int, rank: int):
    """(label, this rank's call): rank 0 (or the last rank) runs a carried
    halving-doubling allreduce that differs from the others' calls."""
    odd = rank == 0
    f32 = np.arange(4, dtype=np.float32)
    big = np.ones(20000, np.float32)  # 80 KB: carried by halving-doubling at P = 2 and 4, not at 3
    huge = np.ones(50000, np.float32)  # 200 KB: never carried

    return [
        ("count", lambda c, out: c.allreduce(np.arange(5 if odd else 4, dtype=np.float32),
                                             out=out if not odd else None, algorithm="halving_doubling")),
        ("count, both large", lambda c, out: c.allreduce(big if odd else np.ones(20004, np.float32),
                                                         algorithm="halving_doubling")),
        ("count, one call too large to carry", lambda c, out: c.allreduce(
            huge if odd else f32, out=None if odd else out, algorithm="halving_doubling")),
        ("count, every other call too large", lambda c, out: c.allreduce(
            f32 if odd else huge, out=out if odd else None, algorithm="halving_doubling")),
        ("op", lambda c, out: c.allreduce(f32, op="max" if odd else "sum", out=out, algorithm="halving_doubling")),
        ("dtype", lambda c, out: c.allreduce(np.arange(4, dtype=np.int32) if odd else f32,
                                             out=None if odd else out, algorithm="halving_doubling")),
        ("against recursive doubling", lambda c, out: c.allreduce(
            f32, out=out, algorithm="halving_doubling" if odd else "recursive_doubling")),
        ("against ring", lambda c, out: c.allreduce(
            big, algorithm="halving_doubling" if odd else "ring")),
        ("against broadcast", lambda c, out: c.allreduce(big, algorithm="halving_doubling") if odd
         else c.broadcast(big.copy())),
        ("against barrier", lambda c, out: c.barrier() if rank == P - 1
         else c.allreduce(f32, out=out, algorithm="halving_doubling")),
        ("against allgather", lambda c, out: c.allreduce(big, algorithm="halving_doubling") if odd
         else c.allgather(f32)),
    ]


def test_halving_doubling_mismatch_every_rank_raises(comm_default):
    comm = comm_default
    P, rank = comm.size, comm.rank
    if P < 2:
        pytest.skip("a mismatch needs two ranks")
    check = Checker(P)
    f32 = np.arange(4, dtype=np.float32)
    _expect_mismatches(comm, check, _halving_mismatches(P, rank),
                       lambda: comm.allreduce(f32, algorithm="halving_doubling"))
    check.verify()


def test_auto_allreduce_choices_without_hierarchical_layout(comm_default):
    """Where ranks do not share one node and there is no hierarchical layout
    (nodes of one rank, or unequal nodes), "auto" takes recursive doubling
    up to 8 KiB, halving-doubling above it up to 64 KiB where P is a power
    of two of at least 4 (recursive doubling otherwise), and the ring above;
    read back from the trace, with the results against numpy."""
    comm = comm_default
    P, rank = comm.size, comm.rank
    if not _across_nodes(comm) or comm._core.hierarchical:
        pytest.skip("needs ranks on several nodes without a hierarchical layout")
    middle = "halving_doubling" if P >= 4 and P & (P - 1) == 0 else "recursive_doubling"
    cases = [(8192, "recursive_doubling"), (8196, middle), (65536, middle), (65540, "ring")]
    check = Checker(P)
    core = comm._core
    core.drain_trace()
    core.set_trace(True)
    try:
        for nbytes, want in cases:
            xs = inputs(("auto choice", nbytes), np.dtype(np.float32), (nbytes // 4,), "small", P)
            got = call(lambda: comm.allreduce(xs[rank]))
            check.expect(f"{nbytes} bytes", got, reduce_ref(xs, "sum"), dtype=np.float32)
            check.expect_true(f"algorithm_for({nbytes}) is {want}", comm.algorithm_for("allreduce", nbytes) == want)
        events = [e for e in core.drain_trace() if e["collective"] == "allreduce"]
    finally:
        core.set_trace(False)
    ran = [e["algorithm"] for e in events]
    check.expect_true(f"ran {ran}, expected {[w for _, w in cases]}", ran == [w for _, w in cases])
    check.verify()
