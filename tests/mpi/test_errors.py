"""Bad arguments and mismatched calls.

Bad arguments raise TypeError/ValueError on the calling rank before any
communication; every rank here passes the same bad argument, so every rank
raises and none is left inside a collective. Mismatches (ranks passing
different dtype, count, shape, op, root, algorithm or collective) raise
distml.MismatchError on every rank, and the communicator stays usable. A
small broadcast on one node is one-way: its root (and any rank whose call
matched the root's) returns before every rank's call is compared and raises
from its next collective instead (_mismatch_raised).

Each test ends with a correct collective on the same communicator, which
would hang or fail if an error had desynchronised the ranks.
"""

from __future__ import annotations

import numpy as np
import pytest

import distml
from mpi4py import MPI
from mpi_helpers import Checker, call, inputs, reduce_ref

REDUCTIONS = ["allreduce", "reduce", "reduce_scatter"]
COLLECTIVES = REDUCTIONS + ["broadcast", "allgather", "alltoall"]


def _invoke(comm, name, x, **kw):
    return getattr(comm, name)(x, **kw)


def _still_usable(comm, check: Checker, tag: str) -> None:
    P, rank = comm.size, comm.rank
    xs = inputs(("usable", tag), np.dtype(np.int32), (2 * P + 1,), "small", P)
    check.expect("a correct allreduce afterwards", call(lambda: comm.allreduce(xs[rank])), reduce_ref(xs, "sum"))


def _good_input(comm, dtype=np.float32) -> np.ndarray:
    # Rows divisible by P (alltoall) and at least one dimension.
    return np.arange(2 * comm.size * 3, dtype=dtype).reshape(2 * comm.size, 3)


# ---- local argument errors -----------------------------------------------------


@pytest.mark.parametrize("name", COLLECTIVES)
def test_unsupported_dtypes(comm_default, name):
    comm = comm_default
    check = Checker(comm.size)
    n = 2 * comm.size
    bad = {
        "object": np.array([1, "a"] * comm.size, dtype=object),
        "str": np.array(["ab"] * n),
        "complex64": np.zeros(n, np.complex64),
        "complex128": np.zeros(n, np.complex128),
        "bool": np.zeros(n, bool),
        "float128": np.zeros(n, np.longdouble),
        "datetime64": np.zeros(n, "datetime64[s]"),
        "non-native float32": np.zeros(n, np.dtype(np.float32).newbyteorder()),
    }
    for label, x in bad.items():
        if label == "float128" and np.dtype(np.longdouble).itemsize == 8:
            continue  # longdouble is double here, which distml supports
        for algorithm in ["auto", "mpi"]:
            check.expect_raises(f"{label} {algorithm}", call(lambda: _invoke(comm, name, x, algorithm=algorithm)),
                                TypeError)
    _still_usable(comm, check, name)
    check.verify()


@pytest.mark.parametrize("name", REDUCTIONS)
def test_op_errors(comm_default, name):
    comm = comm_default
    check = Checker(comm.size)
    for dtype in [np.float16, distml.bfloat16, np.float32, np.float64]:
        x = _good_input(comm, dtype)
        for op in ["band", "bor", "bxor", distml.Op.BAND]:
            check.expect_raises(f"{op} on {np.dtype(dtype)}", call(lambda: _invoke(comm, name, x, op=op)), TypeError)
    x = _good_input(comm, np.int32)
    for op in ["median", "", "sum ", 0, 3, None, np.add]:
        check.expect_raises(f"op={op!r}", call(lambda: _invoke(comm, name, x, op=op)), ValueError)
    # Async calls validate at submission too.
    check.expect_raises("unknown op with async_op",
                        call(lambda: _invoke(comm, name, x, op="median", async_op=True)), ValueError)
    _still_usable(comm, check, name)
    check.verify()


@pytest.mark.parametrize("name", ["reduce", "broadcast"])
def test_root_errors(comm_default, name):
    comm = comm_default
    check = Checker(comm.size)
    x = _good_input(comm)
    for root in [-1, comm.size, comm.size + 5, -comm.size]:
        check.expect_raises(f"root={root}", call(lambda: _invoke(comm, name, x, root=root)), ValueError)
    for root in [1.0, "0", None, True]:
        check.expect_raises(f"root={root!r}", call(lambda: _invoke(comm, name, x, root=root)), TypeError)
    _still_usable(comm, check, name)
    check.verify()


def test_shape_errors(comm_default):
    comm = comm_default
    P = comm.size
    check = Checker(P)
    scalar = np.float32(1.0)
    check.expect_raises("alltoall of a 0-d array", call(lambda: comm.alltoall(np.array(scalar))), ValueError)
    check.expect_raises("reduce_scatter of a 0-d array", call(lambda: comm.reduce_scatter(np.array(scalar))),
                        ValueError)
    if P > 1:
        for rows in [1, P + 1, 2 * P - 1]:
            x = np.zeros((rows, 2), np.float32)
            for algorithm in ["auto", "pairwise", "mpi"]:
                check.expect_raises(f"alltoall rows={rows} {algorithm}",
                                    call(lambda: comm.alltoall(x, algorithm=algorithm)), ValueError)
    _still_usable(comm, check, "shapes")
    check.verify()


def _bad_outs(x: np.ndarray, shape: tuple):
    readonly = np.zeros(shape, x.dtype)
    readonly.flags.writeable = False
    wrong_shape = shape[:-1] + (shape[-1] + 1,)
    return [
        ("read-only", readonly, ValueError),
        ("wrong shape", np.zeros(wrong_shape, x.dtype), ValueError),
        ("flattened shape", np.zeros(int(np.prod(shape)), x.dtype), ValueError),
        ("wrong dtype", np.zeros(shape, np.float64), TypeError),
        ("a list", [[0.0] * shape[-1]] * shape[0], TypeError),
    ]


@pytest.mark.parametrize("name", ["allreduce", "allgather", "reduce_scatter", "alltoall", "reduce"])
def test_out_errors(comm_default, name):
    comm = comm_default
    P, rank = comm.size, comm.rank
    check = Checker(P)
    x = _good_input(comm)
    shapes = {
        "allreduce": x.shape, "reduce": x.shape, "alltoall": x.shape,
        "allgather": (P * x.shape[0], 3),
        "reduce_scatter": (len(np.array_split(np.zeros(x.shape[0]), P)[rank]), 3),
    }
    # reduce checks out only on the root (out is ignored elsewhere); at P > 1
    # the other ranks learn of it through the agreement and raise
    # MismatchError: test_root_only_errors_reach_every_rank.
    if name != "reduce" or P == 1:
        for label, out, exc in _bad_outs(x, shapes[name]):
            for algorithm in ["auto", "mpi"]:
                check.expect_raises(f"out {label} {algorithm}",
                                    call(lambda: _invoke(comm, name, x, out=out, algorithm=algorithm)), exc)
    # An out that overlaps x without being x.
    big = np.zeros((4 * P + 2, 3), np.float32)
    xo = big[:2 * P]
    overlapping = {
        "allreduce": big[1:2 * P + 1], "reduce": big[1:2 * P + 1], "alltoall": big[1:2 * P + 1],
        "allgather": big[:P * 2 * P] if P * 2 * P <= big.shape[0] else None,
        "reduce_scatter": big[:len(np.array_split(np.zeros(2 * P), P)[rank])],
    }[name]
    if overlapping is not None and (name != "reduce" or P == 1):
        check.expect_raises("out overlapping x", call(lambda: _invoke(comm, name, xo, out=overlapping)), ValueError)
    _still_usable(comm, check, name)
    check.verify()


@pytest.mark.parametrize("name", COLLECTIVES + ["barrier"])
def test_algorithm_errors(comm_default, name):
    comm = comm_default
    check = Checker(comm.size)
    x = _good_input(comm)
    foreign = {
        "allreduce": ["tree", "pairwise", "scatter_allgather"], "reduce": ["recursive_doubling", "pairwise"],
        "broadcast": ["ring", "pairwise"], "allgather": ["tree", "recursive_doubling"],
        "reduce_scatter": ["tree", "pairwise"], "alltoall": ["ring", "tree"],
        "barrier": ["ring", "tree"],
    }[name]

    def run(**kw):
        return comm.barrier(**kw) if name == "barrier" else _invoke(comm, name, x, **kw)

    for algorithm in ["bogus", "", "RING_", *foreign]:
        check.expect_raises(f"algorithm={algorithm!r}", call(lambda: run(algorithm=algorithm)), ValueError)
        check.expect_raises(f"algorithm={algorithm!r} async", call(lambda: run(algorithm=algorithm, async_op=True)),
                            ValueError)
    for algorithm in [None, 1]:
        check.expect_raises(f"algorithm={algorithm!r}", call(lambda: run(algorithm=algorithm)), TypeError)
    _still_usable(comm, check, name)
    check.verify()


def test_communicator_arguments(world):
    check = Checker(world.size)
    for kw, exc in [
        (dict(segment_bytes=0), ValueError), (dict(segment_bytes=-64), ValueError),
        (dict(segment_bytes=1.5), ValueError), (dict(timeout=0), ValueError), (dict(timeout=-1.0), ValueError),
    ]:
        check.expect_raises(f"Communicator({kw})", call(lambda: distml.Communicator(world, **kw)), exc)
    check.expect_raises("Communicator('world')", call(lambda: distml.Communicator("world")), TypeError)
    check.verify()


def test_use_after_free(world):
    P, rank = world.size, world.rank
    check = Checker(P)
    comm = distml.Communicator(world)
    x = _good_input(comm)
    check.expect("before free", call(lambda: comm.allreduce(x)), x * P)
    comm.free()
    comm.free()  # a second free is harmless
    for name in COLLECTIVES:
        check.expect_raises(f"{name} after free", call(lambda: _invoke(comm, name, x)), distml.CommunicatorError)
        check.expect_raises(f"{name} async after free", call(lambda: _invoke(comm, name, x, async_op=True)),
                            distml.CommunicatorError)
    check.expect_raises("barrier after free", call(comm.barrier), distml.CommunicatorError)
    check.expect_true("CommunicatorError is a DistmlError",
                      issubclass(distml.CommunicatorError, distml.DistmlError))
    # A context manager frees on exit.
    with distml.Communicator(world) as c2:
        check.expect("inside with", call(lambda: c2.allgather(x[:1])), np.concatenate([x[:1]] * P))
    check.expect_raises("after with", call(lambda: c2.barrier()), distml.CommunicatorError)
    check.verify()


# ---- mismatches across ranks -----------------------------------------------------

needs_peers = pytest.mark.skipif(MPI.COMM_WORLD.size < 2, reason="a mismatch needs two ranks")


def _mismatch_cases(P: int, rank: int):
    """(collective, label, kwargs builder) where rank 0 differs from the others."""
    odd = rank == 0
    x32 = _rows(P, np.float32)

    def x_dtype():
        return _rows(P, np.float64 if odd else np.float32)

    def x_count():
        return _rows(P, np.float32, extra=P if odd else 0)

    def x_shape():
        # Same number of elements, different shape: (P, 6) on rank 0 against
        # (2P, 3) elsewhere (both with rows divisible by P, as alltoall needs).
        return x32.reshape(P, 6) if odd else x32

    cases = []
    for name in COLLECTIVES:
        cases.append((name, "dtype", lambda: dict(x=x_dtype())))
        cases.append((name, "count", lambda: dict(x=x_count())))
    for name in ["allgather", "reduce_scatter", "alltoall"]:
        cases.append((name, "shape", lambda: dict(x=x_shape())))
    for name in REDUCTIONS:
        cases.append((name, "op", lambda: dict(x=x32, op="max" if odd else "sum")))
        cases.append((name, "op avg/sum", lambda: dict(x=x32, op="avg" if odd else "sum")))
    for name in ["reduce", "broadcast"]:
        cases.append((name, "root", lambda: dict(x=x32, root=1 if odd else 0)))
        cases.append((name, "root last", lambda: dict(x=x32, root=P - 1 if odd else 0)))
    explicit = {"allreduce": "ring", "reduce": "tree", "broadcast": "tree", "allgather": "ring",
                "reduce_scatter": "ring", "alltoall": "pairwise"}
    for name, alg in explicit.items():
        cases.append((name, "algorithm", lambda alg=alg: dict(x=x32, algorithm="mpi" if odd else alg)))
    return cases


def _mismatch_raised(comm, name: str, fn):
    """What a mismatched call raised on this rank: at once, or, for a
    broadcast this rank returned from (the one-way path of a small broadcast
    on one node: its root, and ranks whose call matched the root's), from
    this rank's next collective, which then does not run."""
    got = call(fn)
    if name == "broadcast" and not isinstance(got, BaseException):
        got = call(comm.barrier)
    return got


def _rows(P: int, dtype, extra: int = 0) -> np.ndarray:
    return np.arange(2 * P * 3 + extra * 3, dtype=dtype).reshape(2 * P + extra, 3)


@needs_peers
def test_mismatch_every_rank_raises(comm):
    P, rank = comm.size, comm.rank
    check = Checker(P)
    for name, label, build in _mismatch_cases(P, rank):
        kw = build()
        x = kw.pop("x")
        got = _mismatch_raised(comm, name, lambda: _invoke(comm, name, x, **kw))
        check.expect_raises(f"{name} {label}", got, distml.MismatchError)
        # The same collective, called correctly, works right after.
        ok = _rows(P, np.float32)
        if name == "broadcast":
            y = ok.copy() if rank == 0 else np.zeros_like(ok)
            check.expect(f"{name} after {label} mismatch", call(lambda: comm.broadcast(y)), ok, same=y)
        elif name == "reduce":
            check.expect(f"{name} after {label} mismatch", call(lambda: comm.reduce(ok, root=P - 1)),
                         ok * P if rank == P - 1 else None)
        elif name == "allreduce":
            check.expect(f"{name} after {label} mismatch", call(lambda: comm.allreduce(ok)), ok * P)
        elif name == "allgather":
            check.expect(f"{name} after {label} mismatch", call(lambda: comm.allgather(ok)),
                         np.concatenate([ok] * P))
        elif name == "reduce_scatter":
            check.expect(f"{name} after {label} mismatch", call(lambda: comm.reduce_scatter(ok)),
                         np.array_split(ok * P, P)[rank])
        elif name == "alltoall":
            check.expect(f"{name} after {label} mismatch", call(lambda: comm.alltoall(ok)),
                         np.concatenate([np.array_split(ok, P)[rank]] * P))
    check.verify()


@needs_peers
def test_mismatch_messages_and_kinds(comm_default):
    comm = comm_default
    P, rank = comm.size, comm.rank
    check = Checker(P)
    x = _rows(P, np.float32)
    # Different collectives on different ranks.
    got = _mismatch_raised(comm, "broadcast", lambda: comm.allreduce(x) if rank == 0 else comm.broadcast(x.copy()))
    check.expect_raises("allreduce against broadcast", got, distml.MismatchError)
    got = call(lambda: comm.barrier() if rank == P - 1 else comm.allgather(x))
    check.expect_raises("barrier against allgather", got, distml.MismatchError)
    # Barrier algorithms.
    got = call(lambda: comm.barrier(algorithm="mpi" if rank == 0 else "dissemination"))
    check.expect_raises("barrier algorithm", got, distml.MismatchError)
    # The message names what differs.
    got = call(lambda: comm.allreduce(x.astype(np.float64) if rank == 0 else x))
    check.expect_true("message names the dtype field",
                      isinstance(got, distml.MismatchError) and "float64" in str(got) and "float32" in str(got))
    check.expect_true("MismatchError is a DistmlError", issubclass(distml.MismatchError, distml.DistmlError))
    # Async: the mismatch surfaces from wait() (or at submission) on every rank.
    h = call(lambda: comm.allreduce(x, op="min" if rank == 0 else "max", async_op=True))
    got = call(h.wait) if isinstance(h, distml.Handle) else h
    check.expect_raises("async op mismatch", got, distml.MismatchError)
    check.expect("allreduce after the mismatches", call(lambda: comm.allreduce(x, op="max")), x)
    _still_usable(comm, check, "kinds")
    check.verify()


@needs_peers
def test_root_only_errors_reach_every_rank(comm):
    """A problem only one rank can see (the root's out= for reduce, a
    read-only x on a receiving rank for broadcast) raises the specific error
    there and MismatchError on every other rank, and nobody is left waiting."""
    P, rank = comm.size, comm.rank
    check = Checker(P)
    x = _rows(P, np.float32)
    for root in range(P):
        for label, out, exc in _bad_outs(x, x.shape):
            got = call(lambda: comm.reduce(x, root=root, out=out if rank == root else None))
            check.expect_raises(f"reduce root {root} out {label}", got,
                                exc if rank == root else distml.MismatchError)
        y = x.copy()
        bad = (root + 1) % P
        y.flags.writeable = rank != bad
        got = _mismatch_raised(comm, "broadcast", lambda: comm.broadcast(y, root=root))
        check.expect_raises(f"broadcast root {root} read-only on {bad}", got,
                            ValueError if rank == bad else distml.MismatchError)
    check.expect("allreduce after root-only errors", call(lambda: comm.allreduce(x)), x * P)
    check.verify()
