"""Argument forms of every collective and algorithm: out= (contiguous and
strided), in place, N-D and 0-d shapes, non-contiguous inputs (strided,
transposed, reversed, Fortran order), inputs left unchanged; async handles;
the module-level functions; op spellings; broadcast specifics."""

from __future__ import annotations

import time

import numpy as np
import pytest

import distml
from mpi_helpers import (
    BF16, Checker, all_algorithms, allgather_ref, alltoall_ref, available, call, comm_algorithms, inputs,
    reduce_ref, reduce_scatter_ref, require,
)

SENTINEL = 77  # fills out= arrays and the gaps of strided ones


# ---- per-collective descriptions ---------------------------------------------
#
# shapes(P): input shapes to try; run(comm, x, out, alg, **kw): the call;
# expected(xs, rank, P): this rank's result (None where the collective returns
# None); out_shape(shape, rank, P): shape of this rank's result; inplace: out=x
# allowed. reduce uses the last rank as root, so that P > 1 has non-roots.

def _rs_rows(rows: int, rank: int, P: int) -> int:
    return rows // P + (1 if rank < rows % P else 0)


SPECS = {
    "allreduce": dict(
        shapes=lambda P: [(), (5,), (3, 4, 5), (2, 0, 3)],
        run=lambda c, x, out, alg, **kw: c.allreduce(x, op="sum", out=out, algorithm=alg, **kw),
        expected=lambda xs, rank, P: reduce_ref(xs, "sum"),
        out_shape=lambda s, rank, P: s,
        inplace=True,
    ),
    "reduce": dict(
        shapes=lambda P: [(), (5,), (3, 4, 5), (2, 0, 3)],
        run=lambda c, x, out, alg, **kw: c.reduce(x, root=c.size - 1, op="sum", out=out, algorithm=alg, **kw),
        expected=lambda xs, rank, P: reduce_ref(xs, "sum") if rank == P - 1 else None,
        out_shape=lambda s, rank, P: s,
        inplace=True,
    ),
    "allgather": dict(
        shapes=lambda P: [(), (3,), (2, 3, 4), (0, 3)],
        run=lambda c, x, out, alg, **kw: c.allgather(x, out=out, algorithm=alg, **kw),
        expected=lambda xs, rank, P: allgather_ref(xs),
        out_shape=lambda s, rank, P: (P * (s[0] if s else 1),) + tuple(s[1:]),
        inplace=False,
    ),
    "reduce_scatter": dict(
        shapes=lambda P: [(7,), (P + 1, 3, 2), (2 * P + 1, 4)],
        run=lambda c, x, out, alg, **kw: c.reduce_scatter(x, op="sum", out=out, algorithm=alg, **kw),
        expected=lambda xs, rank, P: reduce_scatter_ref(xs, "sum", rank),
        out_shape=lambda s, rank, P: (_rs_rows(s[0], rank, P),) + tuple(s[1:]),
        inplace=False,
    ),
    "alltoall": dict(
        shapes=lambda P: [(3 * P,), (2 * P, 3, 2), (P, 5)],
        run=lambda c, x, out, alg, **kw: c.alltoall(x, out=out, algorithm=alg, **kw),
        expected=lambda xs, rank, P: alltoall_ref(xs, rank),
        out_shape=lambda s, rank, P: s,
        inplace=True,
    ),
}

LAYOUTS = ["contiguous", "step2", "transposed", "reversed", "fortran"]


def _layout(a: np.ndarray, layout: str) -> np.ndarray:
    """A new array equal to ``a`` in the memory layout named ``layout`` (never
    ``a`` itself: numpy returns its argument for no-op layout changes)."""
    a = a.copy()
    if layout == "contiguous" or a.ndim == 0:
        return a
    if layout == "step2":
        buf = np.full((2 * a.shape[0],) + a.shape[1:], SENTINEL, dtype=a.dtype)
        buf[::2] = a
        return buf[::2]
    if layout == "transposed":
        return np.ascontiguousarray(a.T).T  # 1-D: stays contiguous
    if layout == "reversed":
        return a[::-1].copy()[::-1]
    if layout == "fortran":
        return np.asfortranarray(a)  # 1-D: stays contiguous
    raise ValueError(layout)


def _strided_out(shape: tuple, dtype: np.dtype):
    """(base, out): out is every other row of base; the other rows must stay
    at SENTINEL."""
    rows = shape[0] if shape else 1
    base = np.full((2 * rows,) + tuple(shape[1:]), SENTINEL, dtype=dtype)
    out = base[::2] if shape else base[::2].reshape(())
    return base, out


def _api_params():
    return [
        pytest.param(seg, name, alg, id=f"{name}-{seg}-{alg}")
        for name in SPECS
        for seg, alg in [p.values for p in comm_algorithms(name)]
    ]


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.int16), BF16], ids=str)
@pytest.mark.parametrize("comm,name,algorithm", _api_params(), indirect=["comm"])
def test_layouts_and_out(comm, name, algorithm, dtype):
    spec = SPECS[name]
    P, rank = comm.size, comm.rank
    require(comm, name, algorithm)
    check = Checker(P)
    run, expected_of, out_shape = spec["run"], spec["expected"], spec["out_shape"]
    for shape in spec["shapes"](P):
        xs = inputs((name, "layouts", str(dtype), shape), dtype, shape, "small", P)
        expected = expected_of(xs, rank, P)
        rshape = out_shape(shape, rank, P)

        # Inputs in every layout, no out=: a new result; input unchanged.
        for layout in LAYOUTS:
            x = _layout(xs[rank], layout)
            got = call(lambda: run(comm, x, None, algorithm))
            label = f"shape={shape} x={layout}"
            check.expect(label, got, expected, dtype=dtype)
            check.expect(label + " input unchanged", x, xs[rank], "bits")

        # out= contiguous, strided and (N-D) Fortran order: the result lands in
        # out, which is returned; the gaps of a strided out stay untouched. The
        # reduce root is the only rank that writes out; others leave it alone.
        x = xs[rank].copy()
        outs = {"contiguous": (None, np.full(rshape, SENTINEL, dtype=dtype))}
        outs["strided"] = _strided_out(rshape, dtype)
        if len(rshape) >= 2:
            outs["fortran"] = (None, np.asfortranarray(np.full(rshape, SENTINEL, dtype=dtype)))
        results = {k: call(lambda: run(comm, x, out, algorithm)) for k, (_, out) in outs.items()}
        for k, (base, out) in outs.items():
            label = f"shape={shape} out={k}"
            if expected is None:
                check.expect(label, results[k], None)
                check.expect(label + " (non-root) out untouched", out, np.full(rshape, SENTINEL, dtype=dtype), "bits")
            else:
                check.expect(label, results[k], expected, dtype=dtype, same=out)
            if base is not None:
                check.expect(label + " gaps untouched", base[1::2],
                             np.full(base[1::2].shape, SENTINEL, dtype=dtype), "bits")
        check.expect(f"shape={shape} out= input unchanged", x, xs[rank], "bits")

        # In place (out=x), x in every layout.
        if spec["inplace"]:
            for layout in LAYOUTS:
                x = _layout(xs[rank], layout)
                got = call(lambda: run(comm, x, x, algorithm))
                label = f"shape={shape} in place x={layout}"
                if expected is None:
                    check.expect(label, got, None)
                    check.expect(label + " (non-root) x untouched", x, xs[rank], "bits")
                else:
                    check.expect(label, got, expected, dtype=dtype, same=x)
    check.verify()


@pytest.mark.parametrize("comm,algorithm", comm_algorithms("broadcast"), indirect=["comm"])
def test_broadcast_layouts(comm, algorithm):
    P, rank = comm.size, comm.rank
    require(comm, "broadcast", algorithm)
    check = Checker(P)
    dtype = np.dtype(np.float64)
    for shape in [(), (5,), (3, 4, 5), (0, 2)]:
        for root in range(P):
            xs = inputs(("broadcast-layouts", shape, root), dtype, shape, "bits", P)
            for layout in LAYOUTS:
                x = _layout(xs[rank], layout)
                base = x.base
                got = call(lambda: comm.broadcast(x, root=root, algorithm=algorithm))
                label = f"shape={shape} root={root} x={layout}"
                check.expect(label, got, xs[root], "bits", same=x)
                if layout == "step2" and x.ndim:
                    gaps = base[1::2]
                    check.expect(label + " gaps untouched", gaps, np.full(gaps.shape, SENTINEL, dtype), "bits")
        # A read-only x is allowed on the root.
        for root in range(P):
            x = xs[rank].copy()
            if rank == root:
                x.flags.writeable = False
            got = call(lambda: comm.broadcast(x, root=root, algorithm=algorithm))
            check.expect(f"shape={shape} root={root} read-only on root", got, xs[root], "bits", same=x)
    check.verify()


def test_async_all_algorithms_in_flight(comm):
    """Every collective with every algorithm submitted at once, then waited
    for in an order that differs between ranks."""
    P, rank = comm.size, comm.rank
    check = Checker(P)
    dtype = np.dtype(np.float32)
    jobs = []  # (label, handle or exception, expected, out identity or None, input, input copy)
    for name, spec in SPECS.items():
        for algorithm in [a for a in all_algorithms(name) if available(comm, name, a)]:
            for shape in spec["shapes"](P)[1:3]:
                xs = inputs(("async", name, algorithm, shape), dtype, shape, "small", P)
                x = xs[rank].copy()
                expected = spec["expected"](xs, rank, P)
                use_out = len(jobs) % 2 == 1
                out = np.full(spec["out_shape"](shape, rank, P), SENTINEL, dtype) if use_out else None
                h = call(lambda: spec["run"](comm, x, out, algorithm, async_op=True))
                jobs.append((f"{name} {algorithm} shape={shape} out={use_out}", h, expected,
                             out if expected is not None else None, x, xs[rank]))
    for algorithm in [a for a in all_algorithms("broadcast") if available(comm, "broadcast", a)]:
        xs = inputs(("async", "broadcast", algorithm), dtype, (9,), "bits", P)
        x = xs[rank].copy()
        h = call(lambda: comm.broadcast(x, root=P // 2, algorithm=algorithm, async_op=True))
        jobs.append((f"broadcast {algorithm}", h, xs[P // 2], x, None, None))
    for algorithm in [a for a in all_algorithms("barrier") if available(comm, "barrier", a)]:
        h = call(lambda: comm.barrier(algorithm=algorithm, async_op=True))
        jobs.append((f"barrier {algorithm}", h, None, None, None, None))

    order = list(range(len(jobs)))
    if rank % 2 == 0:
        order.reverse()
    else:
        shift = (7 * rank) % len(order)
        order = order[shift:] + order[:shift]
    results = {}
    for i in order:
        h = jobs[i][1]
        results[i] = call(h.wait) if isinstance(h, distml.Handle) else h
    for i, (label, h, expected, same, x, x0) in enumerate(jobs):
        if not isinstance(h, distml.Handle):
            check.fail(label, f"async_op=True returned {h!r}")
            continue
        mode = "bits" if label.startswith("broadcast") else "exact"
        check.expect(label, results[i], expected, mode, dtype=None if expected is None else dtype, same=same)
        check.expect_true(label + " test() after wait", call(h.test))
        check.expect_true(label + " second wait returns the same result", call(h.wait) is results[i])
        if x is not None and same is not x:
            check.expect(label + " input unchanged", x, x0, "bits")
    check.verify()


def test_async_test_polling_and_mixing(comm_default):
    comm = comm_default
    P, rank = comm.size, comm.rank
    check = Checker(P)
    dtype = np.dtype(np.int32)
    xs = inputs(("poll",), dtype, (3000,), "small", P)
    x = xs[rank]
    h = call(lambda: comm.allreduce(x, async_op=True))
    check.expect_true("repr of a handle", isinstance(call(lambda: repr(h)), str))
    # test() must become True without wait(); progress is the library's job.
    deadline = time.monotonic() + 60
    became_true = False
    while isinstance(h, distml.Handle) and time.monotonic() < deadline:
        if h.test():
            became_true = True
            break
        time.sleep(0.001)
    check.expect_true("test() became True within 60 s", became_true)
    check.expect("polled allreduce", call(h.wait), reduce_ref(xs, "sum"))

    # A blocking collective issued while async ones are pending: all complete,
    # each with its own result.
    ys = inputs(("mix",), dtype, (257,), "small", P)
    y = ys[rank]
    h1 = call(lambda: comm.allreduce(x, op="max", async_op=True))
    h2 = call(lambda: comm.allgather(y, async_op=True))
    blocking = call(lambda: comm.allreduce(y, op="min"))
    h3 = call(lambda: comm.reduce_scatter(x, async_op=True))
    r3 = call(h3.wait) if isinstance(h3, distml.Handle) else h3
    r1 = call(h1.wait) if isinstance(h1, distml.Handle) else h1
    r2 = call(h2.wait) if isinstance(h2, distml.Handle) else h2
    check.expect("blocking between async", blocking, reduce_ref(ys, "min"))
    check.expect("async max", r1, reduce_ref(xs, "max"))
    check.expect("async allgather", r2, allgather_ref(ys))
    check.expect("async reduce_scatter", r3, reduce_scatter_ref(xs, "sum", rank))

    # Async into a strided out: wait() returns out, filled.
    base, out = _strided_out((3000,), dtype)
    h = call(lambda: comm.allreduce(x, out=out, async_op=True))
    got = call(h.wait) if isinstance(h, distml.Handle) else h
    check.expect("async strided out", got, reduce_ref(xs, "sum"), same=out)
    check.expect("async strided out gaps", base[1::2], np.full(3000, SENTINEL, dtype), "bits")
    check.verify()


def test_op_spellings(comm_default):
    comm = comm_default
    P, rank = comm.size, comm.rank
    check = Checker(P)
    dtype = np.dtype(np.int64)
    for op, name in [(distml.Op.MAX, "max"), ("MAX", "max"), ("Sum", "sum"), (distml.Op.BXOR, "bxor"),
                     (distml.Op.AVG, "avg"), ("avg", "avg")]:
        xs = inputs(("spelling", str(op)), dtype, (11,), "small", P)
        got = call(lambda: comm.allreduce(xs[rank], op=op))
        check.expect(f"op={op!r}", got, reduce_ref(xs, name))
    check.verify()


def test_module_level_functions(world):
    """distml.init() and the module-level collectives on the default communicator."""
    P, rank = world.size, world.rank
    check = Checker(P)
    dtype = np.dtype(np.float64)
    default = call(distml.init)
    check.expect_true("init returns a Communicator", isinstance(default, distml.Communicator))
    check.expect_true("init is idempotent", call(distml.init) is default)
    check.expect_true("get_default", call(distml.get_default) is default)
    check.expect_true("is_initialized", distml.is_initialized())
    check.expect_true("rank()", call(distml.rank) == rank)
    check.expect_true("size()", call(distml.size) == P)

    xs = inputs(("module",), dtype, (2 * P + 1,), "small", P)
    x = xs[rank]
    rows = inputs(("module-a2a",), dtype, (2 * P, 3), "small", P)
    check.expect("allreduce", call(lambda: distml.allreduce(x, op="max")), reduce_ref(xs, "max"))
    check.expect("reduce", call(lambda: distml.reduce(x, root=P - 1)),
                 reduce_ref(xs, "sum") if rank == P - 1 else None)
    y = x.copy()
    check.expect("broadcast", call(lambda: distml.broadcast(y, root=0)), xs[0], "bits", same=y)
    check.expect("allgather", call(lambda: distml.allgather(x)), allgather_ref(xs), "bits")
    check.expect("reduce_scatter", call(lambda: distml.reduce_scatter(x, op="prod")),
                 reduce_scatter_ref(xs, "prod", rank))
    check.expect("alltoall", call(lambda: distml.alltoall(rows[rank])), alltoall_ref(rows, rank), "bits")
    check.expect("barrier", call(distml.barrier), None)
    out = np.empty_like(x)
    h = call(lambda: distml.allreduce(x, out=out, algorithm="ring", async_op=True))
    check.expect("async module allreduce", call(h.wait) if isinstance(h, distml.Handle) else h,
                 reduce_ref(xs, "sum"), same=out)
    h = call(lambda: distml.barrier(algorithm="dissemination", async_op=True))
    check.expect("async module barrier", call(h.wait) if isinstance(h, distml.Handle) else h, None)

    # shutdown frees the default; init makes a fresh one.
    call(distml.shutdown)
    check.expect_true("shutdown", not distml.is_initialized())
    check.expect_true("freed default refuses work",
                      isinstance(call(lambda: default.allreduce(x)), distml.CommunicatorError))
    again = call(distml.init)
    check.expect_true("init after shutdown makes a new communicator",
                      isinstance(again, distml.Communicator) and again is not default)
    check.expect("allreduce after re-init", call(lambda: distml.allreduce(x)), reduce_ref(xs, "sum"))
    call(distml.shutdown)
    check.verify()
