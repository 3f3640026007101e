"""Several communicators: sub-communicators whose rank order differs from the
world's, two communicators with work in flight at once, a communicator
without the argument check, and the timeout of a collective a rank never
joins."""

from __future__ import annotations

import time

import numpy as np
import pytest

import distml
from conftest import COMM_TIMEOUT
from mpi_helpers import (
    Checker, all_algorithms, allgather_ref, alltoall_ref, available, call, inputs, reduce_ref, reduce_scatter_ref,
)


def _sweep(comm, members, tag, check: Checker, algorithms_of=all_algorithms) -> None:
    """Every collective and available algorithm on ``comm``, whose rank i is
    world rank ``members[i]``; inputs are keyed by world rank, so a schedule
    that confused the two would combine the wrong data."""
    P, rank = comm.size, comm.rank
    dtype = np.dtype(np.int32)

    def xs_for(key, shape, kind="small"):
        everyone = inputs((tag, key), dtype, shape, kind, max(members) + 1)
        return [everyone[w] for w in members]

    for name in ["allreduce", "reduce", "reduce_scatter"]:
        for alg in [a for a in algorithms_of(name) if available(comm, name, a)]:
            for count in [1, 2 * P + 1, 600]:
                xs = xs_for((name, alg, count), (count,))
                x = xs[rank]
                label = f"{tag} {name} {alg} count={count}"
                if name == "allreduce":
                    check.expect(label, call(lambda: comm.allreduce(x, op="sum", algorithm=alg)), reduce_ref(xs, "sum"))
                elif name == "reduce":
                    root = (count + 1) % P
                    check.expect(label, call(lambda: comm.reduce(x, root=root, op="max", algorithm=alg)),
                                 reduce_ref(xs, "max") if rank == root else None)
                else:
                    check.expect(label, call(lambda: comm.reduce_scatter(x, op="min", algorithm=alg)),
                                 reduce_scatter_ref(xs, "min", rank))
    for alg in [a for a in algorithms_of("broadcast") if available(comm, "broadcast", a)]:
        for root in range(P):
            xs = xs_for(("broadcast", alg, root), (301,), "full")
            y = xs[rank].copy()
            check.expect(f"{tag} broadcast {alg} root={root}",
                         call(lambda: comm.broadcast(y, root=root, algorithm=alg)), xs[root], "bits")
    for alg in [a for a in algorithms_of("allgather") if available(comm, "allgather", a)]:
        xs = xs_for(("allgather", alg), (37,), "full")
        check.expect(f"{tag} allgather {alg}", call(lambda: comm.allgather(xs[rank], algorithm=alg)),
                     allgather_ref(xs), "bits")
    for alg in [a for a in algorithms_of("alltoall") if available(comm, "alltoall", a)]:
        xs = xs_for(("alltoall", alg), (3 * P, 2), "full")
        check.expect(f"{tag} alltoall {alg}", call(lambda: comm.alltoall(xs[rank], algorithm=alg)),
                     alltoall_ref(xs, rank), "bits")
    for alg in [a for a in algorithms_of("barrier") if available(comm, "barrier", a)]:
        check.expect(f"{tag} barrier {alg}", call(lambda: comm.barrier(algorithm=alg)), None)


@pytest.mark.parametrize("segment_bytes", [None, 64])
def test_reversed_world(world, segment_bytes):
    """All ranks, numbered backwards."""
    check = Checker(world.size)
    sub = world.Split(0, world.size - 1 - world.rank)
    members = sub.allgather(world.rank)
    with distml.Communicator(sub, segment_bytes=segment_bytes, timeout=COMM_TIMEOUT) as comm:
        check.expect_true("rank follows the split key", comm.rank == world.size - 1 - world.rank)
        _sweep(comm, members, "reversed", check)
    sub.Free()
    check.verify()


def test_split_halves(world):
    """Even and odd world ranks in two communicators that run at the same
    time, each numbered backwards; the halves differ in size when P is odd."""
    check = Checker(world.size)
    sub = world.Split(world.rank % 2, -world.rank)
    members = sub.allgather(world.rank)
    with distml.Communicator(sub, timeout=COMM_TIMEOUT) as comm:
        # Both halves probe the same algorithms in the same order, so their
        # (independent) sequences of collectives stay aligned with the world.
        _sweep(comm, members, f"half{world.rank % 2}", check)
    sub.Free()
    world.Barrier()
    check.verify()


def test_two_communicators_interleaved(world):
    """Async work on two communicators at once, waited for across them."""
    P, rank = world.size, world.rank
    check = Checker(P)
    dtype = np.dtype(np.float64)
    with distml.Communicator(world, timeout=COMM_TIMEOUT) as a, \
            distml.Communicator(world, segment_bytes=64, timeout=COMM_TIMEOUT) as b:
        xa = inputs(("two", "a"), dtype, (1001,), "small", P)
        xb = inputs(("two", "b"), dtype, (999,), "small", P)
        handles = []
        for i in range(4):
            handles.append(("a allreduce", call(lambda: a.allreduce(xa[rank], algorithm="ring", async_op=True)),
                            reduce_ref(xa, "sum")))
            handles.append(("b allgather", call(lambda: b.allgather(xb[rank], async_op=True)), allgather_ref(xb)))
            handles.append(("b reduce_scatter", call(lambda: b.reduce_scatter(xb[rank], op="max", async_op=True)),
                            reduce_scatter_ref(xb, "max", rank)))
        blocking_a = call(lambda: a.allreduce(xb[rank], op="min"))
        results = [call(h.wait) if isinstance(h, distml.Handle) else h for _, h, _ in reversed(handles)]
        for (label, _, expected), got in zip(reversed(handles), results):
            check.expect(label, got, expected, "bits" if "allgather" in label else "exact")
        check.expect("blocking on a while b busy", blocking_a, reduce_ref(xb, "min"))
    check.verify()


def test_without_argument_check(world):
    """check=False changes only what is verified, not the results."""
    check = Checker(world.size)
    with distml.Communicator(world, check=False, timeout=COMM_TIMEOUT) as comm:
        check.expect_true("check property", comm.check is False)
        _sweep(comm, list(range(world.size)), "nocheck", check)
    check.verify()


@pytest.mark.parametrize("argument_check", [True, False])
def test_timeout_when_a_rank_never_joins(world, argument_check):
    """Ranks wait for one that never calls: CommTimeoutError within the
    timeout (plus slack), then CommunicatorError on that communicator; other
    communicators are unaffected."""
    P, rank = world.size, world.rank
    if P < 2:
        pytest.skip("needs a rank to stay away")
    check = Checker(P)
    absent = P - 1
    comm = distml.Communicator(world, timeout=1.0, check=argument_check)
    x = np.ones(100, np.float32)
    if rank != absent:
        start = time.monotonic()
        got = call(lambda: comm.allreduce(x))
        waited = time.monotonic() - start
        check.expect_raises("allreduce without the absent rank", got, distml.CommTimeoutError)
        check.expect_true(f"raised after {waited:.2f}s (timeout 1s)", 0.9 <= waited <= 30)
        check.expect_true("CommTimeoutError is a TimeoutError", isinstance(got, TimeoutError))
        check.expect_raises("next call on the broken communicator", call(lambda: comm.allreduce(x)),
                            distml.CommunicatorError)
    world.Barrier()
    comm.free()
    with distml.Communicator(world, timeout=COMM_TIMEOUT) as fresh:
        check.expect("a fresh communicator works", call(lambda: fresh.allreduce(x)), x * P)
    check.verify()


def test_free_waits_for_pending_work(world):
    """free() completes async work first; the handles still give results.
    The communicator is a duplicate: freeing the caller's one is harmless."""
    P, rank = world.size, world.rank
    check = Checker(P)
    dtype = np.dtype(np.int64)
    mine = world.Dup()
    comm = distml.Communicator(mine, timeout=COMM_TIMEOUT)
    mine.Free()
    xs = inputs(("free-pending",), dtype, (5000,), "small", P)
    handles = [call(lambda: comm.allreduce(xs[rank], op=op, async_op=True)) for op in ("sum", "max", "min")]
    h_gather = call(lambda: comm.allgather(xs[rank], async_op=True))
    call(comm.free)
    for op, h in zip(("sum", "max", "min"), handles):
        check.expect(f"pending {op} after free", call(h.wait) if isinstance(h, distml.Handle) else h,
                     reduce_ref(xs, op))
    check.expect("pending allgather after free", call(h_gather.wait) if isinstance(h_gather, distml.Handle)
                 else h_gather, allgather_ref(xs))
    check.expect_raises("new work after free", call(lambda: comm.allreduce(xs[rank])), distml.CommunicatorError)
    check.verify()
