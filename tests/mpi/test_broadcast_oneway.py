"""The one-way broadcast: a small broadcast on one node, whose root posts its
data with its call's signature and returns without waiting for the others.

Results: many broadcasts back to back, from changing roots, of changing
sizes and dtypes, mixed with other collectives and with ranks that lag (so
that the root runs ahead and must not overwrite data a slow rank has not
read yet), against numpy references. Mismatches (size, dtype, root, a rank
calling another collective): every rank raises MismatchError, the ranks
that see the mismatch against the root's signature at once, the root and
ranks whose call matched the root's from their next collective, which does
not run; the communicator stays usable. Where the ranks do not share one
node (or P = 1) the same calls run on the other paths and must give the
same results.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import distml
from mpi4py import MPI
from mpi_helpers import Checker, call, inputs, reduce_ref

needs_peers = pytest.mark.skipif(MPI.COMM_WORLD.size < 2, reason="a mismatch needs two ranks")

DTYPES = [np.float32, np.float64, np.int8, np.uint16, np.int64, distml.bfloat16, np.float16]
# Elements: from one to past the eager limit (16 KiB), where the broadcast
# waits for everyone again.
COUNTS = [1, 3, 17, 256, 1023, 2048, 4096, 5000]


def _root_data(i: int, dtype, count: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + i)
    vals = rng.integers(-100, 100, size=count)
    if np.dtype(dtype).kind == "u":
        vals = np.abs(vals)
    return vals.astype(dtype)


def _plan(P: int, n: int):
    """(root, dtype, count, algorithm) of call i: the same on every rank."""
    rng = np.random.default_rng(7)
    algorithms = ["auto", "auto", "shm"]
    return [(int(rng.integers(P)), DTYPES[int(rng.integers(len(DTYPES)))], COUNTS[int(rng.integers(len(COUNTS)))],
             algorithms[int(rng.integers(len(algorithms)))]) for _ in range(n)]


def _shm(comm) -> bool:
    return comm.shared_memory == "one node"


def test_back_to_back_broadcasts(comm_default):
    comm = comm_default
    P, rank = comm.size, comm.rank
    check = Checker(P)
    plan = _plan(P, 240)
    results = []
    for i, (root, dtype, count, algorithm) in enumerate(plan):
        if algorithm == "shm" and not _shm(comm):
            algorithm = "auto"
        x = _root_data(i, dtype, count) if rank == root else np.zeros(count, dtype)
        # Lagging ranks, so that the root runs ahead of them.
        if i % 37 == 5 and rank == (root + 1) % P:
            time.sleep(0.01)
        results.append(call(lambda: comm.broadcast(x, root=root, algorithm=algorithm)))
        # Now and then another collective in between (the eager areas of
        # consecutive collectives alternate).
        if i % 11 == 3:
            xs = inputs(("between", i), np.dtype(np.int32), (5,), "small", P)
            results.append((call(lambda: comm.allreduce(xs[rank])), reduce_ref(xs, "sum")))
    k = 0
    for i, (root, dtype, count, _) in enumerate(plan):
        check.expect(f"broadcast {i} root {root} {np.dtype(dtype)} x {count}", results[k],
                     _root_data(i, dtype, count), mode="bits")
        k += 1
        if i % 11 == 3:
            got, want = results[k]
            check.expect(f"allreduce after broadcast {i}", got, want)
            k += 1
    check.verify()


def test_root_runs_ahead_of_a_slow_rank(comm_default):
    """Every rank but the slowest one calls many broadcasts in a row from one
    root; the slow rank sleeps before each, so the root finds it behind and
    must wait rather than overwrite what that rank has not read."""
    comm = comm_default
    P, rank = comm.size, comm.rank
    check = Checker(P)
    root, slow = 0, P - 1
    got = []
    for i in range(40):
        count = 64 + 50 * (i % 7)
        x = _root_data(i, np.float32, count) if rank == root else np.full(count, -1, np.float32)
        if rank == slow and rank != root and i % 4 == 0:
            time.sleep(0.005)
        got.append(call(lambda: comm.broadcast(x, root=root)))
    for i in range(40):
        check.expect(f"broadcast {i}", got[i], _root_data(i, np.float32, 64 + 50 * (i % 7)), mode="bits")
    check.verify()


def test_async_broadcasts_in_a_row(comm_default):
    comm = comm_default
    P, rank = comm.size, comm.rank
    check = Checker(P)
    handles, want = [], []
    for i in range(24):
        root = (i * 3) % P
        count = [5, 300, 2000][i % 3]
        x = _root_data(i, np.int32, count) if rank == root else np.zeros(count, np.int32)
        handles.append(call(lambda: comm.broadcast(x, root=root, async_op=True)))
        want.append(_root_data(i, np.int32, count))
    for i, h in enumerate(handles):
        got = call(h.wait) if isinstance(h, distml.Handle) else h
        check.expect(f"async broadcast {i}", got, want[i])
    check.verify()


def _raised_now_or_next(comm, fn, next_call):
    """(exception, where): what the mismatched call raised on this rank, at
    once ("now"), or, if it returned, what this rank's next collective
    (``next_call``) raised ("next")."""
    got = call(fn)
    if isinstance(got, BaseException):
        return got, "now"
    return call(next_call), "next"


def _mismatch_cases(comm):
    """(label, this rank's call) where the ranks' calls disagree."""
    P, rank = comm.size, comm.rank
    x = np.arange(40, dtype=np.float32)
    last = P - 1

    def comm_call(name, *args, **kw):
        return getattr(comm, name)(*args, **kw)

    return [
        ("size", lambda: comm_call("broadcast", x if rank == 0 else x[: 40 - rank])),
        ("size on the last rank only", lambda: comm_call("broadcast", x if rank != last else x[:7])),
        ("dtype", lambda: comm_call("broadcast", x if rank != last else x.astype(np.float64))),
        ("root", lambda: comm_call("broadcast", x.copy(), root=0 if rank == 0 else last)),
        ("every rank its own root", lambda: comm_call("broadcast", x.copy(), root=rank)),
        ("the root calls allreduce", lambda: comm_call("allreduce", x) if rank == 0 else comm_call("broadcast", x.copy())),
        ("a receiver calls allreduce", lambda: comm_call("allreduce", x) if rank == last else comm_call("broadcast", x.copy())),
        ("a receiver calls barrier", lambda: comm_call("barrier") if rank == last else comm_call("broadcast", x.copy())),
        ("a receiver calls a large broadcast",
         lambda: comm_call("broadcast", np.zeros(1 << 16, np.float32) if rank == last else x.copy())),
    ]


@needs_peers
def test_mismatches_raise_on_every_rank(comm_default):
    comm = comm_default
    P, rank = comm.size, comm.rank
    check = Checker(P)
    after_in = np.arange(6, dtype=np.int64) + 10 * rank
    for label, fn in _mismatch_cases(comm):
        # The next collective is an allreduce into out=: where it raises in
        # place of the broadcast's verdict, it must not have run.
        out = np.full(6, -7, np.int64)
        got, where = _raised_now_or_next(comm, fn, lambda: comm.allreduce(after_in, out=out))
        check.expect_raises(f"{label} ({where})", got, distml.MismatchError)
        if where == "next":
            check.expect(f"{label}: the next call did not run", out, np.full(6, -7, np.int64))
            check.expect_true(f"{label}: the next call names the broadcast ({got})",
                              "broadcast" in str(got) and "collective #" in str(got) and "did not run" in str(got))
        # The communicator is usable and the ranks are in step.
        for root in range(P):
            y = np.arange(9, dtype=np.float32) * (root + 1) if rank == root else np.zeros(9, np.float32)
            check.expect(f"{label}: broadcast from {root} afterwards", call(lambda: comm.broadcast(y, root=root)),
                         np.arange(9, dtype=np.float32) * (root + 1))
        xs = [np.arange(6, dtype=np.int64) + 10 * r for r in range(P)]
        check.expect(f"{label}: allreduce afterwards", call(lambda: comm.allreduce(after_in)), reduce_ref(xs, "sum"))
    check.verify()


@needs_peers
def test_mismatch_names_fields(comm_default):
    comm = comm_default
    P, rank = comm.size, comm.rank
    check = Checker(P)
    x = np.arange(12, dtype=np.float32)
    got, _ = _raised_now_or_next(comm, lambda: comm.broadcast(x if rank != P - 1 else x.astype(np.int32)),
                                 comm.barrier)
    check.expect_true(f"dtype named ({got})",
                      isinstance(got, distml.MismatchError) and "int32" in str(got) and "float32" in str(got))
    got, where = _raised_now_or_next(comm, lambda: comm.broadcast(x.copy(), root=rank), comm.barrier)
    check.expect_true(f"root named ({got})", isinstance(got, distml.MismatchError) and "root" in str(got))
    # With every rank its own root, nobody waits for anybody: all learn it next.
    check.expect_true(f"own roots: raised by the next call ({where})", where == "next" or not _shm(comm))
    check.expect("broadcast afterwards", call(lambda: comm.broadcast(x if rank == 0 else np.zeros_like(x))), x)
    check.verify()


def test_auto_choice_on_one_node(comm_default):
    """What auto takes for a broadcast on one node: the one-way shared-memory
    path up to 16 KiB, the shared-memory schedule past it; with two ranks
    that cannot copy between each other's memory, one MPI message (tree)
    above 48 KiB up to 2 MiB; the shared-memory schedule beyond (and at any
    size with more ranks, or two that can: its single-copy variant)."""
    comm = comm_default
    if not _shm(comm):
        pytest.skip("needs every rank on one node")
    check = Checker(comm.size)
    pair = comm.size == 2 and not comm._core.single_copy
    for nbytes, want in [(8, "shm"), (16 << 10, "shm"), ((16 << 10) + 1, "shm"), (48 << 10, "shm"),
                         ((48 << 10) + 1, "tree" if pair else "shm"),
                         (256 << 10, "tree" if pair else "shm"), (2 << 20, "tree" if pair else "shm"),
                         ((2 << 20) + 1, "shm"), (16 << 20, "shm")]:
        got = comm.algorithm_for("broadcast", nbytes)
        check.expect_true(f"{nbytes} bytes: {got}, expected {want}", got == want)
    check.verify()
