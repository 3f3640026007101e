"""The core gradient buffer (``distml._core.GradBuffer``) at any world size,
against numpy references.

Every rank's gradients are drawn from a generator seeded with (case, rank,
step), so each rank computes the expected average of all ranks with numpy
alone. Ranks mark their gradients ready in different orders (a permutation
seeded by the rank), which the buffer must turn into the same collectives in
the same order on every rank. The communicator has a timeout (conftest.py),
so a mismatch in launch order fails instead of hanging, and the launcher's
time limit (tests/test_mpi.py) covers the rest.

Every test runs its collectives first and asserts afterwards (conftest.py).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import distml
from distml import _core
from distml._dtypes import dtype_code
from mpi_helpers import BF16, call

SUM, AVG = _core.Op.sum, _core.Op.avg
EPS = {np.dtype(np.float16): 2.0 ** -11, BF16: 2.0 ** -8}


def _code(dtype):
    return dtype_code(np.dtype(dtype))


def _grad(case: str, rank: int, step: int, n: int, dtype) -> np.ndarray:
    rng = np.random.default_rng([zlib.crc32(case.encode()), rank, step, n])
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-50, 50, size=n).astype(dtype)
    return rng.standard_normal(n).astype(dtype)


def _order(n: int, rank: int, step: int = 0) -> list:
    # a different readiness order on every rank (and every step)
    return list(np.random.default_rng([7, rank, step]).permutation(n))


def _views(buf, sizes, dtypes):
    """Each parameter's gradient: a view of its group's flat buffer."""
    flats = [buf.flat(g).view(np.dtype(d)) if buf.flat(g) is not None else None
             for g, d in enumerate(_group_dtypes(dtypes))]
    out = []
    for i, n in enumerate(sizes):
        o = buf.offset(i)
        out.append(flats[buf.group_of(i)][o:o + n])
    return out


def _group_dtypes(dtypes):
    seen = []
    for d in dtypes:
        if np.dtype(d) not in seen:
            seen.append(np.dtype(d))
    return seen


def _expected_launches(buckets, marked):
    """Buckets launched once `marked` are ready: the leading run of complete ones."""
    n = 0
    for _, _, _, params in buckets:
        if not all(i in marked for i in params):
            break
        n += 1
    return n


# ---- replicated mode: allreduce per bucket -------------------------------------------

SIZES = {
    "plain": [5, 17, 3, 64, 1],
    "zero_size": [0, 5, 0, 0, 17, 3, 0],
    "all_zero": [0, 0],
    "one": [1],
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bucket_bytes", [1, 40, 1 << 20], ids=["per_param", "b40", "one_bucket"])
@pytest.mark.parametrize("sizes", list(SIZES), ids=list(SIZES))
@pytest.mark.parametrize("op", [AVG, SUM], ids=["avg", "sum"])
def test_replicated_matches_numpy(comm_default, sizes, bucket_bytes, dtype, op):
    comm = comm_default
    P, r = comm.size, comm.rank
    sizes = SIZES[sizes]
    case = f"rep-{sizes}-{bucket_bytes}-{np.dtype(dtype)}-{op}"
    buf = call(lambda: _core.GradBuffer(comm._core, sizes, [_code(dtype)] * len(sizes), op=op,
                                        bucket_bytes=bucket_bytes, shared=True))
    assert not isinstance(buf, BaseException), buf
    views = _views(buf, sizes, [dtype] * len(sizes))
    buckets = buf.buckets()
    launched, results = [], []

    def run():
        for step in range(2):
            for i, v in enumerate(views):
                v[...] = _grad(case, r, step, sizes[i], dtype)
            marked = set()
            for i in _order(len(sizes), r, step):
                buf.mark_ready(int(i))
                marked.add(int(i))
                launched.append((buf.launched, _expected_launches(buckets, marked)))
            buf.wait_all()
            results.append([v.copy() for v in views])

    got = call(run)
    assert got is None, got
    # layout: reverse order, buckets tile each flat buffer with whole gradients
    assert [b[1] for b in buckets][0] == 0 and buckets[-1][2] == sum(sizes)
    assert all(b[2] == c[1] for b, c in zip(buckets, buckets[1:]))
    order = [i for b in buckets for i in b[3]]
    assert order == list(reversed(range(len(sizes))))
    assert all(a == e for a, e in launched), launched
    for step, res in enumerate(results):
        for i, g in enumerate(res):
            total = sum(_grad(case, q, step, sizes[i], dtype).astype(np.float64) for q in range(P))
            want = total / P if op == AVG else total
            np.testing.assert_allclose(g, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    if comm.shared_memory == "one node" and P > 1:
        assert buf.shared(0)


def test_groups_by_dtype(comm_default):
    """Several dtypes: one flat buffer per dtype, buckets launched group by
    group, integers summed exactly."""
    comm = comm_default
    P, r = comm.size, comm.rank
    dtypes = [np.float32, np.int32, np.float64, np.float32, np.int32, np.float64]
    sizes = [4, 3, 0, 9, 5, 2]
    buf = _core.GradBuffer(comm._core, sizes, [_code(d) for d in dtypes], op=SUM, bucket_bytes=16)
    views = _views(buf, sizes, dtypes)

    def run():
        for i, v in enumerate(views):
            v[...] = _grad("groups", r, 0, sizes[i], dtypes[i])
        buf.mark_ready_many([int(i) for i in _order(len(sizes), r)])
        buf.wait_all()

    got = call(run)
    assert got is None, got
    assert buf.groups == 3
    assert [buf.group_of(i) for i in range(len(sizes))] == [0, 1, 2, 0, 1, 2]
    assert [b[0] for b in buf.buckets()] == sorted(b[0] for b in buf.buckets())
    for i, v in enumerate(views):
        want = sum(_grad("groups", q, 0, sizes[i], dtypes[i]).astype(np.float64) for q in range(P))
        if np.dtype(dtypes[i]).kind == "i":
            assert np.array_equal(v, want.astype(dtypes[i]))
        else:
            np.testing.assert_allclose(v, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("wire", [np.float16, BF16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replicated_compression(comm_default, wire, dtype):
    """Gradients travel in the wire format, accumulate in float32 and come
    back in their dtype, within a few of the format's rounding steps."""
    comm = comm_default
    P, r = comm.size, comm.rank
    sizes = [7, 0, 33, 2]
    buf = _core.GradBuffer(comm._core, sizes, [_code(dtype)] * 4, bucket_bytes=48, wire=_code(wire), shared=True)
    views = _views(buf, sizes, [dtype] * 4)

    def run():
        for i, v in enumerate(views):
            v[...] = _grad("wire", r, 0, sizes[i], dtype)
        for i in _order(4, r):
            buf.mark_ready(int(i))
        buf.wait_all()

    got = call(run)
    assert got is None, got
    assert buf.group_wire(0) == _code(wire)
    assert buf.wire(0).nbytes == sum(sizes) * np.dtype(wire).itemsize
    eps = EPS[np.dtype(wire)]
    for i, v in enumerate(views):
        assert v.dtype == dtype
        ins = [_grad("wire", q, 0, sizes[i], dtype) for q in range(P)]
        want = sum(x.astype(np.float64) for x in ins) / P
        scale = max(abs(x).max() for x in ins) if sizes[i] else 0
        assert np.all(np.abs(v - want) <= (P + 2) * eps * scale + 1e-12), np.abs(v - want).max()
        # inputs that are exact in the wire format lose nothing but the final rounding
    exact = _core.GradBuffer(comm._core, [6], [_code(dtype)], op=SUM, wire=_code(wire))
    ev = exact.flat(0).view(dtype)
    got = call(lambda: (ev.__setitem__(Ellipsis, np.arange(6) + r), exact.wait_all()))
    assert not isinstance(got, BaseException), got
    assert np.array_equal(ev, np.arange(6) * P + P * (P - 1) / 2)


# ---- shard mode: reduce_scatter per window -----------------------------------------

SHARD_SIZES = {
    "straddling": [7, 0, 13, 1, 29],
    "one_param": [61],
    "tiny": [1, 0, 2],
    "zero_then_big": [0, 0, 50, 0],
}


def _touched(sizes, P, S, lo, hi):
    offs = np.cumsum([0] + sizes[:-1])
    numel = sum(sizes)
    out = []
    for j in range(P):
        a, b = j * S + lo, min(numel, j * S + hi)
        for i, (o, n) in enumerate(zip(offs, sizes)):
            if n and o < b and o + n > a and i not in out:
                out.append(i)
    return sorted(out)


@pytest.mark.parametrize("sizes", list(SHARD_SIZES), ids=list(SHARD_SIZES))
@pytest.mark.parametrize("bucket_bytes", [1, 24, 1 << 62], ids=["w1", "b24", "one_window"])
@pytest.mark.parametrize("source", ["flat", "arrays"])
@pytest.mark.parametrize("slots", [1, 2])
def test_shard_matches_numpy(comm_default, sizes, bucket_bytes, source, slots):
    """Each rank gets the average of its shard of the padded flat gradient;
    shards ignore parameter boundaries, windows straddle parameters."""
    comm = comm_default
    P, r = comm.size, comm.rank
    sizes = SHARD_SIZES[sizes]
    dtype = np.dtype(np.float32)
    case = f"shard-{sizes}"
    buf = _core.GradBuffer(comm._core, sizes, [_code(dtype)] * len(sizes), shard=True,
                           bucket_bytes=bucket_bytes, flat=source == "flat", slots=slots)
    numel, S = sum(sizes), -(-sum(sizes) // P)
    results = []

    def run():
        for step in range(2):
            grads = [_grad(case, r, step, n, dtype) for n in sizes]
            if source == "flat":
                for v, g in zip(_views(buf, sizes, [dtype] * len(sizes)), grads):
                    v[...] = g
            else:
                for i, g in enumerate(grads):
                    buf.set_source(i, g, g.nbytes)
            for i in _order(len(sizes), r, step):
                buf.mark_ready(int(i))
            buf.wait_all()
            results.append(buf.grad_shard().view(dtype).copy())

    got = call(run)
    assert got is None, got
    assert (buf.numel, buf.shard, buf.start) == (numel, S, r * S)
    buckets = buf.buckets()
    # windows tile the shard from its end, each touching what it must
    assert sorted((b[1], b[2]) for b in buckets) == [(lo, min(S, lo + buf.width)) for lo in range(0, S, buf.width)]
    assert [b[1] for b in buckets] == sorted((b[1] for b in buckets), reverse=True)
    for _, lo, hi, params in buckets:
        assert sorted(params) == _touched(sizes, P, S, lo, hi)
    for step, res in enumerate(results):
        flat = np.zeros(P * S)
        for q in range(P):
            flat[:numel] += np.concatenate([_grad(case, q, step, n, dtype) for n in sizes]).astype(np.float64)
        np.testing.assert_allclose(res, flat[r * S:(r + 1) * S] / P, rtol=1e-5, atol=1e-6)
    held = buf.grad_bytes
    assert held >= S * 4


@pytest.mark.parametrize("wire", [np.float16, BF16], ids=["fp16", "bf16"])
def test_shard_compression(comm_default, wire):
    comm = comm_default
    P, r = comm.size, comm.rank
    sizes = [9, 0, 20]
    buf = _core.GradBuffer(comm._core, sizes, [_code(np.float64)] * 3, shard=True, bucket_bytes=32,
                           wire=_code(wire))
    numel, S = 29, -(-29 // P)

    def run():
        for v, n in zip(_views(buf, sizes, [np.float64] * 3), sizes):
            v[...] = _grad("shardwire", r, 0, n, np.float64)
        for i in _order(3, r):
            buf.mark_ready(int(i))
        buf.wait_all()
        return buf.grad_shard().view(np.float64).copy()

    got = call(run)
    assert not isinstance(got, BaseException), got
    ins = [np.concatenate([_grad("shardwire", q, 0, n, np.float64) for n in sizes]) for q in range(P)]
    flat = np.zeros(P * S)
    flat[:numel] = sum(ins) / P
    scale = max(abs(x).max() for x in ins)
    assert np.all(np.abs(got - flat[r * S:(r + 1) * S]) <= (P + 2) * EPS[np.dtype(wire)] * scale)


def test_shard_gather(comm_default):
    """gather: every rank's shard of the flat parameters lands on every rank."""
    comm = comm_default
    P, r = comm.size, comm.rank
    sizes = [3, 0, 8]
    buf = _core.GradBuffer(comm._core, sizes, [_code(np.float32)] * 3, shard=True)
    S = buf.shard
    params = np.full(P * S, -1.0, np.float32)
    params[r * S:(r + 1) * S] = np.arange(S) + 100 * r
    got = call(lambda: buf.gather(params))
    assert got is None, got
    assert np.array_equal(params, np.concatenate([np.arange(S) + 100 * q for q in range(P)]))


# ---- refusals -------------------------------------------------------------------------


def test_refusals(comm_default):
    comm = comm_default
    buf = _core.GradBuffer(comm._core, [2, 3], [_code(np.float32)] * 2, bucket_bytes=1)
    errors = []

    def run():
        buf.mark_ready(1)  # bucket 0 launches
        for bad in (lambda: buf.mark_ready(1), lambda: buf.mark_ready(2), lambda: buf.mark_ready(-1)):
            try:
                bad()
            except ValueError as e:
                errors.append(str(e))
        pending = buf.pending
        buf.wait_all()
        return pending, buf.pending

    got = call(run)
    assert got == (True, False), got
    assert len(errors) == 3 and "already marked" in errors[0] and "out of range" in errors[1], errors
    layout_only = _core.GradBuffer(None, [2], [_code(np.float32)])
    with pytest.raises(ValueError, match="no communicator"):
        layout_only.mark_ready(0)
    with pytest.raises(ValueError):
        _core.GradBuffer(None, [2, 2], [_code(np.float32), _code(np.float64)], shard=True)
    with pytest.raises(ValueError):
        _core.GradBuffer(None, [], [])


def test_dropped_with_work_in_flight(comm_default):
    """A buffer dropped with a bucket in flight keeps its memory until the
    collective is done; a later collective still runs."""
    comm = comm_default
    buf = _core.GradBuffer(comm._core, [1000, 10], [_code(np.float32)] * 2, bucket_bytes=1)
    buf.flat(0).view(np.float32)[...] = 1
    got = call(lambda: buf.mark_ready(1))
    del buf
    out = call(lambda: comm.allreduce(np.ones(4), op="sum"))
    assert got is None, got
    assert np.array_equal(out, np.full(4, comm.size)), out
