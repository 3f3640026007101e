"""Small collectives on one node, with and without a deadline.

A small collective on one node moves its data with its arrival, and the
ranks compare their calls where the arrivals lie. Without a timeout nobody
gives up, so the ranks arrive through their own arrival counters alone;
with one they also pass the arrival gate (so that a rank arriving after its
peers gave up raises instead of completing alone). These tests run the
short paths (plain arrays, blocking calls) on communicators of both kinds,
and on one whose timeout is set and unset between collectives, so that a
one-way broadcast run without a deadline is checked by a next call that has
one and the other way round.

Results: mixed back-to-back reduce, allgather, reduce_scatter, alltoall,
broadcast, allreduce and barrier calls (sizes with the arrival and past the
eager limit, changing roots, ops and dtypes, lagging ranks) against numpy
references. Mismatches of count, dtype, op and root raise MismatchError on
every rank (a one-way broadcast's root and matching ranks: from their next
call, which does not run), promptly, and the communicator stays usable.
Where the ranks do not share one node (or P = 1) the same calls take the
other paths and must give the same results.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import distml
from mpi4py import MPI
from mpi_helpers import (BF16, Checker, allgather_ref, alltoall_ref, call, inputs, reduce_ref,
                         reduce_scatter_ref)

needs_peers = pytest.mark.skipif(MPI.COMM_WORLD.size < 2, reason="a mismatch needs two ranks")

KINDS = ["reduce", "allgather", "reduce_scatter", "alltoall", "broadcast", "allreduce", "barrier"]
DTYPES = [np.dtype(t) for t in (np.float32, np.float64, np.int32, np.uint8, np.float16)] + [BF16]
# Rows per rank's input: with the arrival (up to 16 KiB) and past it.
ROWS = [1, 2, 7, 64, 1000, 3000]
OPS = ["sum", "max", "min"]
# A slow collective here is a hang: the timeout makes it raise instead.
TIMEOUT = 60.0


def _plan(P: int, n: int):
    """(kind, dtype, rows, op, root) of call i: the same on every rank."""
    rng = np.random.default_rng(17)
    return [(KINDS[int(rng.integers(len(KINDS)))], DTYPES[int(rng.integers(len(DTYPES)))],
             ROWS[int(rng.integers(len(ROWS)))], OPS[int(rng.integers(len(OPS)))], int(rng.integers(P)))
            for _ in range(n)]


def _run(comm, i: int, kind: str, dtype, rows: int, op: str, root: int):
    """(result of call i on this rank, its numpy reference)."""
    P, rank = comm.size, comm.rank
    if kind == "barrier":
        return call(comm.barrier), None
    shape = (rows * P,) if kind in ("reduce_scatter", "alltoall") else (rows,)
    xs = inputs(("small arrival", i), dtype, shape, "small", P)
    x = xs[rank].copy()
    if kind == "reduce":
        want = reduce_ref(xs, op).astype(dtype) if rank == root else None
        return call(lambda: comm.reduce(x, root, op)), want
    if kind == "allgather":
        return call(lambda: comm.allgather(x, out=np.empty(rows * P, dtype))), allgather_ref(xs)
    if kind == "reduce_scatter":
        return call(lambda: comm.reduce_scatter(x, op)), reduce_scatter_ref(xs, op, rank).astype(dtype)
    if kind == "alltoall":
        return call(lambda: comm.alltoall(x)), alltoall_ref(xs, rank)
    if kind == "broadcast":
        return call(lambda: comm.broadcast(x, root)), xs[root]
    return call(lambda: comm.allreduce(x, op, out=np.empty_like(x))), reduce_ref(xs, op).astype(dtype)


def _back_to_back(comm, check: Checker, n: int, label: str, switch_timeout: bool = False) -> None:
    P, rank = comm.size, comm.rank
    results = []
    for i, (kind, dtype, rows, op, root) in enumerate(_plan(P, n)):
        if switch_timeout and i % 5 == 0:
            # Every rank between the same two collectives (the settings'
            # fingerprint, timeout set or not, is compared on every call).
            comm.timeout = None if comm.timeout else TIMEOUT
        # Lagging ranks, so that others run ahead into the next call.
        if i % 13 == 4 and rank == (root + 1) % P:
            time.sleep(0.005)
        results.append(_run(comm, i, kind, dtype, rows, op, root))
    for i, ((kind, dtype, rows, op, root), (got, want)) in enumerate(zip(_plan(P, n), results)):
        case = f"{label}: call {i} {kind} {dtype} x {rows} {op} root {root}"
        if kind == "barrier":
            check.expect_true(f"{case} ({got})", got is None)
        else:
            check.expect(case, got, want)


@pytest.mark.parametrize("timeout", [None, TIMEOUT], ids=["no_timeout", "timeout"])
def test_back_to_back_against_numpy(world, timeout):
    check = Checker(world.size)
    with distml.Communicator(world, timeout=timeout) as comm:
        _back_to_back(comm, check, 240, f"timeout {timeout}")
    check.verify()


def test_timeout_set_and_unset_between_collectives(world):
    check = Checker(world.size)
    with distml.Communicator(world) as comm:
        _back_to_back(comm, check, 160, "switching", switch_timeout=True)
    check.verify()


def _mismatches(comm):
    """(label, this rank's call) where the ranks' small calls disagree."""
    P, rank = comm.size, comm.rank
    last = P - 1
    x = np.arange(4 * P, dtype=np.float32)
    other = x[: 2 * P] if rank == last else x                 # count
    wide = x.astype(np.float64) if rank == last else x        # dtype
    op = "max" if rank == last else "sum"
    return [
        ("reduce count", lambda: comm.reduce(other, 0)),
        ("reduce dtype", lambda: comm.reduce(wide, 0)),
        ("reduce op", lambda: comm.reduce(x, 0, op)),
        ("reduce root", lambda: comm.reduce(x, 0 if rank == 0 else last)),
        ("allgather count", lambda: comm.allgather(other)),
        ("allgather dtype", lambda: comm.allgather(wide)),
        ("reduce_scatter count", lambda: comm.reduce_scatter(other)),
        ("reduce_scatter op", lambda: comm.reduce_scatter(x, op)),
        ("alltoall count", lambda: comm.alltoall(other)),
        ("alltoall dtype", lambda: comm.alltoall(wide)),
        ("broadcast count", lambda: comm.broadcast(other.copy())),
        ("broadcast root", lambda: comm.broadcast(x.copy(), 0 if rank == 0 else last)),
        ("allgather against reduce_scatter", lambda: comm.allgather(x) if rank == last else comm.reduce_scatter(x)),
    ]


@needs_peers
@pytest.mark.parametrize("timeout", [None, TIMEOUT], ids=["no_timeout", "timeout"])
def test_mismatches_raise_on_every_rank(world, timeout):
    P, rank = world.size, world.rank
    check = Checker(P)
    with distml.Communicator(world, timeout=timeout) as comm:
        for label, fn in _mismatches(comm):
            # Flip the timeout after the mismatched call: a one-way broadcast
            # run without a deadline is then checked by a call with one (and
            # the other way round), which must report it, not time out.
            started = time.perf_counter()
            got = call(fn)
            where = "now"
            comm.timeout = None if comm.timeout else TIMEOUT
            if not isinstance(got, BaseException):
                out = np.full(3, -7, np.int64)
                got, where = call(lambda: comm.allreduce(np.arange(3, dtype=np.int64), out=out)), "next"
                check.expect(f"{label}: the next call did not run", out, np.full(3, -7, np.int64))
            check.expect_raises(f"{label} ({where})", got, distml.MismatchError)
            waited = time.perf_counter() - started
            check.expect_true(f"{label}: raised after {waited:.2f} s", waited < TIMEOUT / 4)
            # Usable, and in step.
            xs = [np.arange(5, dtype=np.int32) + r for r in range(P)]
            check.expect(f"{label}: allgather afterwards", call(lambda: comm.allgather(xs[rank])), allgather_ref(xs))
            y = np.arange(6, dtype=np.float32) if rank == P - 1 else np.zeros(6, np.float32)
            check.expect(f"{label}: broadcast afterwards", call(lambda: comm.broadcast(y, P - 1)),
                         np.arange(6, dtype=np.float32))
    check.verify()


def test_overlapping_out_refused(world):
    """The short paths leave the overlap test of out and x to the core: an
    out at x's own address is refused for allgather and reduce_scatter
    (which cannot run in place), any partial overlap for every collective;
    an out that is x's memory under another name runs in place."""
    P, rank = world.size, world.rank
    check = Checker(P)
    with distml.Communicator(world) as comm:
        big = np.zeros(4 * P + 4, np.float32)
        x = big[: 2 * P]
        x[:] = np.arange(2 * P) + rank
        xs = [np.arange(2 * P, dtype=np.float32) + r for r in range(P)]
        check.expect_raises("allgather into x's address", call(lambda: comm.allgather(x, out=big[: 2 * P * P])),
                            ValueError)
        part = len(np.array_split(np.zeros(2 * P), P)[rank])
        check.expect_raises("reduce_scatter into x's address",
                            call(lambda: comm.reduce_scatter(x, out=big[:part])), ValueError)
        check.expect_raises("alltoall partly over x", call(lambda: comm.alltoall(x, out=big[1:2 * P + 1])),
                            ValueError)
        check.expect_raises("allreduce partly over x", call(lambda: comm.allreduce(x, out=big[1:2 * P + 1])),
                            ValueError)
        # Every rank raised before its call reached the others: still in step.
        same = big[: 2 * P]  # x's memory, another array object
        check.expect("allreduce into x under another name", call(lambda: comm.allreduce(x, out=same)),
                     reduce_ref(xs, "sum").astype(np.float32))
        check.expect("allgather afterwards", call(lambda: comm.allgather(np.arange(3, dtype=np.int8) + rank)),
                     allgather_ref([np.arange(3, dtype=np.int8) + r for r in range(P)]))
    check.verify()
