"""The collectives' short path in the core (short_call in
csrc/bindings/module.cpp): which calls it takes and which it hands back to
the Python layer, and that both give numpy's results and the same errors."""

from __future__ import annotations

import numpy as np
import pytest

import distml
from distml._core import SHORT_FRESH_MAX_BYTES as POOL
from distml.comm import _ALLGATHER, _ALLREDUCE, _ALLTOALL, _BROADCAST, _REDUCE, _REDUCE_SCATTER
from mpi_helpers import Checker, call


class _Sub(np.ndarray):
    pass


def _handed_back():
    """Calls the core must leave to Python: (label, x, op, out, algorithm).
    None of them may start a collective, so they are safe on one rank."""
    x = np.arange(12, dtype=np.float32)
    big = np.ones(POOL // 4, np.float32)
    ro = np.empty(12, np.float32)
    ro.flags.writeable = False
    return [
        ("a list", [1.0, 2.0], "sum", None, "auto"),
        ("non-contiguous x", np.arange(24, dtype=np.float32)[::2], "sum", None, "auto"),
        ("big-endian x", x.astype(">f4"), "sum", None, "auto"),
        ("bool x", np.ones(3, bool), "sum", None, "auto"),
        ("a subclass", x.view(_Sub), "sum", None, "auto"),
        ("upper-case op", x, "SUM", None, "auto"),
        ("an unknown op", x, "mean", None, "auto"),
        ("a bitwise op on floats", x, "band", None, "auto"),
        ("an op that is no string", x, np.add, None, "auto"),
        ("a new result the pool makes", big, "sum", None, "auto"),
        ("an algorithm that is no string", x, "sum", None, 3),
        ("out of another dtype", x, "sum", np.empty(12, np.float64), "auto"),
        ("out of another shape", x, "sum", np.empty((3, 4), np.float32), "auto"),
        ("out read-only", x, "sum", ro, "auto"),
        ("out non-contiguous", x, "sum", np.empty(24, np.float32)[::2], "auto"),
        ("out a subclass", x, "sum", np.empty(12, np.float32).view(_Sub), "auto"),
        ("out big-endian", x, "sum", np.empty(12, ">f4"), "auto"),
    ]


def _handed_back_others(P):
    """(label, kind, x, op, out, algorithm, root) the core must leave to
    Python for the other collectives."""
    x = np.arange(4 * P, dtype=np.float32)
    ro = np.arange(4 * P, dtype=np.float32)
    ro.flags.writeable = False
    return [
        ("reduce: root no int", _REDUCE, x, "sum", None, "auto", np.int64(0)),
        ("reduce: root out of range", _REDUCE, x, "sum", None, "auto", P),
        ("reduce: negative root", _REDUCE, x, "sum", None, "auto", -1),
        ("reduce: unknown op", _REDUCE, x, "mean", None, "auto", 0),
        ("broadcast: read-only x", _BROADCAST, ro, None, None, "auto", 0),
        ("broadcast: root out of range", _BROADCAST, x, None, None, "auto", P),
        ("allgather: 0-d x", _ALLGATHER, np.float32(1.0) * np.ones((), np.float32), None, None, "auto", 0),
        ("allgather: out of x's shape", _ALLGATHER, x, None, np.empty(4 * P + 1, np.float32), "auto", 0),
        ("allgather: a new result the pool makes", _ALLGATHER, np.ones(POOL // 4 // P + 1, np.float32),
         None, None, "auto", 0),
        ("reduce_scatter: 0-d x", _REDUCE_SCATTER, np.ones((), np.float32), "sum", None, "auto", 0),
        ("reduce_scatter: out of the wrong rows", _REDUCE_SCATTER, x, "sum", np.empty(5, np.float32), "auto", 0),
        ("alltoall: read-only x in place", _ALLTOALL, ro, None, ro, "auto", 0),
        ("alltoall: big-endian", _ALLTOALL, x.astype(">f4"), None, None, "auto", 0),
    ] + ([("alltoall: rows not divisible", _ALLTOALL, np.ones(4 * P + 1, np.float32), None, None, "auto", 0)]
         if P > 1 else [])


def test_short_path_hands_back_what_it_does_not_take(comm):
    check = Checker(comm.size)
    for label, x, op, out, algorithm in _handed_back():
        got = call(lambda: comm._core.short(_ALLREDUCE, x, op, out, algorithm, 0))
        check.expect_true(f"allreduce {label}: handed back (got {got!r:.60})", got is NotImplemented)
    for label, kind, x, op, out, algorithm, root in _handed_back_others(comm.size):
        got = call(lambda: comm._core.short(kind, x, op, out, algorithm, root))
        check.expect_true(f"{label}: handed back (got {got!r:.60})", got is NotImplemented)
    check.verify()


def test_short_path_takes_the_common_calls(comm):
    # Each of these is taken by the core (it returns the result, not None),
    # and gives numpy's sum. Run in the same order on every rank.
    P, rank = comm.size, comm.rank
    check = Checker(P)
    xs = [np.arange(12, dtype=np.float32) + r for r in range(P)]
    want = sum(xs)
    x = xs[rank]
    y = np.empty_like(x)
    got = call(lambda: comm._core.short(_ALLREDUCE, x, "sum", y, "auto", 0))
    check.expect("out=y", got, want, same=y)
    got = call(lambda: comm._core.short(_ALLREDUCE, x.copy(), distml.Op.SUM, None, "auto", 0))
    check.expect("a new result, op as distml.Op", got, want)
    z = x.copy()
    got = call(lambda: comm._core.short(_ALLREDUCE, z, "sum", z, "ring", 0))
    check.expect("in place, a named algorithm", got, want, same=z)
    root = P - 1
    got = call(lambda: comm._core.short(_REDUCE, x, "max", None, "auto", root))
    check.expect("reduce to the last rank", got, xs[-1] if rank == root else None)
    b = x.copy()
    got = call(lambda: comm._core.short(_BROADCAST, b, None, None, "auto", root))
    check.expect("broadcast from the last rank", got, xs[-1], same=b)
    got = call(lambda: comm._core.short(_ALLGATHER, x, None, None, "auto", 0))
    check.expect("allgather", got, np.concatenate(xs))
    got = call(lambda: comm._core.short(_REDUCE_SCATTER, x, "sum", None, "auto", 0))
    check.expect("reduce_scatter", got, np.array_split(want, P)[rank])
    t = np.arange(2 * P, dtype=np.float32) + 100 * rank
    got = call(lambda: comm._core.short(_ALLTOALL, t, None, t, "auto", 0))
    check.expect("alltoall in place", got, np.concatenate([(np.arange(2 * P, dtype=np.float32) + 100 * r)
                                                           [2 * rank:2 * rank + 2] for r in range(P)]), same=t)
    check.verify()


def test_every_path_gives_numpys_result(comm):
    # The same reductions through the core's short path and through the
    # Python layer's (the cases it hands back), against numpy.
    P, rank = comm.size, comm.rank
    check = Checker(P)
    cases = []
    for dt in ("<f4", ">f4", "f2", "f8", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "l", "q", "L", "Q"):
        for shape in ((), (1,), (5,), (3, 4), (2, 3, 2)):
            cases.append((np.dtype(dt), shape))
    for dtype, shape in cases:
        xs = [((np.arange(int(np.prod(shape)), dtype=np.int64) * 7 + r) % 5).astype(dtype).reshape(shape)
              for r in range(P)]
        ref = np.sum(np.stack([a.astype(np.float64) for a in xs]), axis=0)
        x = xs[rank]
        for op in ("sum", "max"):
            want = (ref if op == "sum" else np.max(np.stack([a.astype(np.float64) for a in xs]), axis=0))
            label = f"{dtype.str} shape={shape} op={op}"
            if not dtype.isnative:
                # Refused on every path, by name.
                for kw in ({}, {"out": np.empty(shape, dtype)}, {"out": x}):
                    got = call(lambda: comm.allreduce(x, op=op, **kw))
                    check.expect_true(f"{label} {list(kw)}: {got!r:.80}",
                                      isinstance(got, TypeError) and "byte order" in str(got))
                continue
            got = call(lambda: comm.allreduce(x, op=op))
            ok = (not isinstance(got, BaseException) and got.shape == shape and got.dtype == dtype
                  and np.array_equal(got.astype(np.float64), want))
            check.expect_true(f"{label}: new result {got!r:.80}", ok)
            out = np.empty(shape, dtype)
            got = call(lambda: comm.allreduce(x, op=op, out=out))
            check.expect_true(f"{label}: out=", got is out and np.array_equal(out.astype(np.float64), want))
            inplace = x.copy()
            got = call(lambda: comm.allreduce(inplace, op=op, out=inplace))
            check.expect_true(f"{label}: in place", got is inplace
                              and np.array_equal(inplace.astype(np.float64), want))
    check.verify()


def test_short_path_errors_name_the_problem(comm):
    P, rank = comm.size, comm.rank
    check = Checker(P)
    x = np.arange(16, dtype=np.float32)
    # Partial overlap of x and out: refused by the core on every rank alike.
    check.expect_raises("out overlapping x", call(lambda: comm.allreduce(x[:8], out=x[4:12])), ValueError)
    check.expect_raises("unknown algorithm", call(lambda: comm.allreduce(x, algorithm="no-such")), ValueError)
    check.expect_raises("bitwise op on floats", call(lambda: comm.allreduce(x, op="bxor")), TypeError)
    # The same count in another shape on one rank is a mismatch, raised on
    # every rank; then the communicator still works.
    if P > 1:
        a = x.reshape(4, 4) if rank == 0 else x.reshape(2, 8)
        check.expect_raises("2-D shapes differ", call(lambda: comm.allreduce(a)), distml.MismatchError)
        b = x.reshape(16, 1) if rank == 0 else x
        check.expect_raises("2-D against 1-D", call(lambda: comm.allreduce(b)), distml.MismatchError)
    check.expect("after the errors", call(lambda: comm.allreduce(x)), x * P)
    check.verify()


@pytest.mark.parametrize("nbytes", [8, 4096, POOL - 4, POOL])
def test_new_results_on_both_sides_of_the_pool(comm, nbytes):
    P = comm.size
    x = np.full(nbytes // 4, comm.rank + 1, np.float32)
    check = Checker(P)
    got = call(lambda: comm.allreduce(x))
    check.expect(f"{nbytes} B", got, np.full_like(x, P * (P + 1) / 2))
    check.expect_true(f"{nbytes} B: a new array", isinstance(got, np.ndarray) and got is not x
                      and not np.shares_memory(got, x))
    check.verify()


def test_other_collectives_give_numpys_results(comm):
    # reduce, broadcast, allgather, reduce_scatter and alltoall over the
    # core's dtypes and shapes of 0-3 dimensions, with a new result, out=
    # and (where the collective allows it) in place, against numpy.
    P, rank = comm.size, comm.rank
    check = Checker(P)
    f64 = lambda a: np.asarray(a).astype(np.float64)  # noqa: E731
    for dt in ("f2", "f4", "f8", "i1", "u1", "i2", "u2", "i4", "u4", "l", "q", "L", "Q"):
        dtype = np.dtype(dt)
        for shape in ((), (P,), (2 * P + 1,), (2 * P, 3), (P, 2, 2)):
            n = int(np.prod(shape))
            xs = [((np.arange(n, dtype=np.int64) * 3 + r) % 7).astype(dtype).reshape(shape) for r in range(P)]
            x = xs[rank]
            total = np.sum(np.stack([f64(a) for a in xs]), axis=0)
            label = f"{dt} shape={shape}"
            root = (n + 1) % P
            got = call(lambda: comm.reduce(x, root=root))
            if rank == root:
                check.expect_true(f"reduce {label}: {got!r:.60}", isinstance(got, np.ndarray) and got.dtype == dtype
                                  and got.shape == shape and np.array_equal(f64(got), total))
            else:
                check.expect_true(f"reduce {label} off the root", got is None)
            inplace = x.copy()
            got = call(lambda: comm.reduce(inplace, root=root, out=inplace))
            if rank == root:
                check.expect_true(f"reduce {label} in place", got is inplace and np.array_equal(f64(got), total))
            b = x.copy()
            got = call(lambda: comm.broadcast(b, root=root))
            check.expect_true(f"broadcast {label}", got is b and np.array_equal(b, xs[root]))
            if not shape:
                continue
            want = np.concatenate(xs)
            got = call(lambda: comm.allgather(x))
            check.expect_true(f"allgather {label}: {got!r:.60}", isinstance(got, np.ndarray) and got.dtype == dtype
                              and np.array_equal(got, want))
            out = np.empty(want.shape, dtype)
            got = call(lambda: comm.allgather(x, out=out))
            check.expect_true(f"allgather {label} out=", got is out and np.array_equal(out, want))
            part = np.array_split(total, P)[rank]
            got = call(lambda: comm.reduce_scatter(x))
            check.expect_true(f"reduce_scatter {label}: {got!r:.60}", isinstance(got, np.ndarray)
                              and got.dtype == dtype and got.shape == part.shape and np.array_equal(f64(got), part))
            out = np.empty(part.shape, dtype)
            got = call(lambda: comm.reduce_scatter(x, out=out))
            check.expect_true(f"reduce_scatter {label} out=", got is out and np.array_equal(f64(out), part))
            if shape[0] % P:
                continue
            k = shape[0] // P
            want = np.concatenate([xs[r][rank * k:(rank + 1) * k] for r in range(P)])
            got = call(lambda: comm.alltoall(x))
            check.expect_true(f"alltoall {label}", isinstance(got, np.ndarray) and np.array_equal(got, want))
            inplace = x.copy()
            got = call(lambda: comm.alltoall(inplace, out=inplace))
            check.expect_true(f"alltoall {label} in place", got is inplace and np.array_equal(inplace, want))
    check.verify()


def test_other_collectives_errors(comm):
    P, rank = comm.size, comm.rank
    check = Checker(P)
    x = np.arange(4 * P, dtype=np.float32)
    check.expect_raises("allgather out=x", call(lambda: comm.allgather(x, out=x)), ValueError)
    check.expect_raises("reduce_scatter out=x", call(lambda: comm.reduce_scatter(x, out=x)), ValueError)
    check.expect_raises("reduce: root out of range", call(lambda: comm.reduce(x, root=P)), ValueError)
    check.expect_raises("alltoall: rows not divisible",
                        call(lambda: comm.alltoall(np.ones(4 * P + 1, np.float32))) if P > 1 else ValueError(),
                        ValueError)
    check.expect_raises("reduce_scatter: bitwise op on floats", call(lambda: comm.reduce_scatter(x, op="bor")),
                        TypeError)
    if P > 1:
        # allgather's 2-D shapes are compared: (rows, 2) against (rows * 2,).
        a = x.reshape(2 * P, 2) if rank == 0 else x
        check.expect_raises("allgather 2-D against 1-D", call(lambda: comm.allgather(a)), distml.MismatchError)
    check.expect("after the errors", call(lambda: comm.allgather(x)), np.tile(x, P))
    check.verify()
