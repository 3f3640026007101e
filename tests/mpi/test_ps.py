"""distml.ps.ParameterServer at P = 1..4 (run by tests/test_mpi.py, group "ps").

Every rank builds the same problems from seeds, so every rank can compute the
single-process reference itself. Results and exceptions are recorded while the
ranks communicate and checked afterwards (see conftest.py); a rank's verdict is
agreed with the others by the conftest hooks.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import distml
from distml import nn, optim
from distml.ps import ParameterServer

SHAPES = [(13, 7), (7,), (5, 3, 2)]


def layouts(P):
    """(servers argument, worker ranks) for the layouts P ranks can run."""
    out = [(None, list(range(P)))]
    if P >= 2:
        out.append((1, list(range(P - 1))))
    if P >= 3:
        out.append((2, list(range(P - 2))))
    return out


def problem(seed=3):
    """The starting parameters (float64). Worker w's loss at clock c is
    0.5 * sum_i (a_i * p_i - b_i)^2 with a, b drawn from (w, c): its gradient
    (``gradient``) depends on p, so stale parameters give other gradients."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s) for s in SHAPES]
    return params


def gradient(params, worker, clock):
    rng = np.random.default_rng((17, worker, clock))
    out = []
    for p in params:
        a = rng.uniform(0.5, 1.5, size=p.shape)
        b = rng.standard_normal(p.shape)
        out.append(a * (a * p - b))
    return out


OPTIMIZERS = {
    "sgd_momentum": (optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "sgd_nesterov": (optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True)),
    "adam": (optim.Adam, dict(lr=0.01, betas=(0.8, 0.95), weight_decay=1e-3)),
    "adamw": (optim.AdamW, dict(lr=0.01, weight_decay=0.05)),
}


def oracle(cls, kw, workers, steps, compression=None):
    """Single-process training on the average of every worker's gradient."""
    params = problem()
    opt = cls(params, **kw)
    for c in range(1, steps + 1):
        grads = [gradient(params, w, c) for w in workers]
        if compression is not None:
            wire = np.float16 if compression == "fp16" else distml.bfloat16
            grads = [[g.astype(wire).astype(np.float64) for g in gs] for gs in grads]
        mean = [np.mean([gs[i] for gs in grads], axis=0) for i in range(len(SHAPES))]
        opt.step(mean)
    return params


def train(comm, cls, kw, servers, steps, mode="sync", staleness=None, compression=None):
    params = problem()
    if comm.rank != 0:
        for p in params:
            p[...] = 0  # rank 0's values are the start
    extra = {} if staleness is None else {"staleness": staleness}
    ps = ParameterServer(params, cls, comm=comm, mode=mode, servers=servers, compression=compression, **extra, **kw)
    stats = None
    if ps.is_worker:
        for c in range(1, steps + 1):
            ps.step(gradient(params, comm.rank, c))
        stats = ps.stats()
        ps.close()
    return ps, params, stats


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("layout", [0, 1, 2], ids=["colocated", "dedicated1", "dedicated2"])
def test_sync_equals_single_process_optimizer(comm_default, name, layout):
    comm = comm_default
    if layout >= len(layouts(comm.size)):
        pytest.skip(f"the layout needs more than {comm.size} ranks")
    servers, workers = layouts(comm.size)[layout]
    cls, kw = OPTIMIZERS[name]
    steps = 6
    ps, params, stats = train(comm, cls, kw, servers, steps)
    want = oracle(cls, kw, workers, steps)
    for got, ref in zip(params, want):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    if ps.is_worker:
        assert stats["clock"] == steps and stats["updates_applied"] == steps
        assert stats["max_staleness"] == 0
        assert stats["bytes_pushed"] == steps * sum(p.nbytes for p in params)


def test_bounded_zero_staleness_equals_sync(comm_default):
    comm = comm_default
    cls, kw = OPTIMIZERS["adam"]
    _, sync_params, _ = train(comm, cls, kw, None, 5, mode="sync")
    _, bounded_params, _ = train(comm, cls, kw, None, 5, mode="bounded", staleness=0)
    # Not bit for bit: a server sums the workers' gradients in arrival order.
    for a, b in zip(sync_params, bounded_params):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_compression_equals_oracle_on_rounded_gradients(comm_default, compression):
    comm = comm_default
    cls, kw = OPTIMIZERS["sgd_momentum"]
    _, params, stats = train(comm, cls, kw, None, 4, compression=compression)
    want = oracle(cls, kw, list(range(comm.size)), 4, compression=compression)
    for got, ref in zip(params, want):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    # 2 bytes per element on the wire instead of float64's 8.
    assert stats["bytes_pushed"] == 4 * sum(p.size for p in params) * 2


@pytest.mark.parametrize("s", [1, 3])
def test_bounded_staleness_never_exceeded_with_a_sleeping_rank(comm_default, s):
    comm = comm_default
    cls, kw = OPTIMIZERS["sgd_momentum"]
    params = problem()
    ps = ParameterServer(params, cls, comm=comm, mode="bounded", staleness=s, **kw)
    rng = np.random.default_rng((5, comm.rank))
    sleeper = comm.size - 1
    seen = []
    for c in range(1, 16):
        if comm.rank == sleeper:
            time.sleep(rng.uniform(0.0, 0.03))
        ps.step(gradient(params, comm.rank, c))
        seen.append(ps.stats()["max_staleness"])
    ps.close()
    most = comm.allgather(np.array([max(seen)], dtype=np.int64))
    assert max(seen) <= s
    assert all(0 <= int(m) <= s for m in most)
    if comm.size > 1:
        # The ranks that do not sleep ran ahead of the sleeper: bounded is not sync.
        assert max(int(m) for m in most) >= 1, most


def digits_data():
    sklearn = pytest.importorskip("sklearn.datasets")
    d = sklearn.load_digits()
    X = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(X))
    test, train_ = order[:360], order[360:]
    return X[train_], y[train_], X[test], y[test]


def digits_run(comm, mode, slow_rank, slow_seconds, steps, batch=16):
    X, y, Xt, yt = digits_data()
    model = nn.Sequential(nn.Linear(64, 48, rng=0), nn.ReLU(), nn.Linear(48, 10, rng=1))
    params = model.parameters()
    ps = ParameterServer(params, optim.Adam, comm=comm, mode=mode, lr=3e-3)
    loss_fn = nn.SoftmaxCrossEntropy()
    rng = np.random.default_rng((11, comm.rank))
    snapshot = None
    for _ in range(steps):
        idx = rng.integers(0, len(X), size=batch)
        loss_fn(model(X[idx]), y[idx])
        model.backward(loss_fn.backward())
        if comm.rank == slow_rank:
            time.sleep(slow_seconds)
        ps.step(model.grads())
    # What this rank's shard had applied from each worker when this worker
    # finished (async: the slow worker is still far behind then).
    snapshot = ps.stats()["server"]["applied_per_worker"]
    ps.close()
    accuracy = float((model(Xt).argmax(1) == yt).mean())
    return accuracy, snapshot


def test_async_with_a_slow_rank_converges_like_sync(comm_default):
    comm = comm_default
    slow = comm.size - 1
    steps = 900 // comm.size + 60
    sync_acc, _ = digits_run(comm, "sync", slow, 0.0, steps)
    async_acc, applied = digits_run(comm, "async", slow, 0.004, steps)
    every = comm.allgather(np.array(applied, dtype=np.int64)).reshape(comm.size, comm.size)
    assert sync_acc > 0.9, sync_acc
    assert abs(async_acc - sync_acc) <= 0.02, (async_acc, sync_acc)
    if comm.size > 1 and comm.rank != slow:
        # When this fast worker finished, its shard had applied more of its
        # own updates than of the slow worker's.
        assert applied[comm.rank] > applied[slow], every


@pytest.mark.parametrize("layout", [0, 1], ids=["colocated", "dedicated1"])
@pytest.mark.parametrize("mode", ["async", "bounded"])
def test_close_leaves_identical_parameters_everywhere(comm_default, layout, mode):
    comm = comm_default
    if layout >= len(layouts(comm.size)):
        pytest.skip(f"the layout needs more than {comm.size} ranks")
    servers, workers = layouts(comm.size)[layout]
    params = problem()
    ps = ParameterServer(params, optim.AdamW, comm=comm, mode=mode, servers=servers,
                         staleness=2 if mode == "bounded" else None, lr=0.01)
    if ps.is_worker:
        rng = np.random.default_rng((3, comm.rank))
        # Workers push different numbers of times.
        for c in range(1, 4 + 2 * comm.rank):
            ps.step(gradient(params, comm.rank, c))
            if rng.uniform() < 0.5:
                time.sleep(0.002)
        ps.close()
    flat = np.concatenate([p.ravel() for p in params])
    every = comm.allgather(flat).reshape(comm.size, -1)
    assert np.isfinite(flat).all()
    for r in range(comm.size):
        np.testing.assert_array_equal(every[r], every[0])
    assert not np.array_equal(flat, np.concatenate([p.ravel() for p in problem()]))
    if ps.is_server:
        state = ps.stats()["server"]
        # The optimizer state of a shard only: AdamW keeps two arrays.
        assert state["optimizer_state_bytes"] == 2 * state["shard_elements"] * 8


def test_bad_input_raises_everywhere(comm_default):
    comm = comm_default
    cls, kw = OPTIMIZERS["sgd_momentum"]
    errors = {}
    # Shapes differ on the last rank (at P = 1 there is nobody to differ from).
    if comm.size > 1:
        params = problem()
        if comm.rank == comm.size - 1:
            params[1] = np.zeros(8)
        try:
            ParameterServer(params, cls, comm=comm, **kw)
        except Exception as e:  # noqa: BLE001 - recorded, checked below
            errors["mismatch"] = e
    # Arguments only this rank sees.
    for key, args in {
        "dtype": dict(params=[np.zeros(3, dtype=np.int32)]),
        "mode": dict(mode="eventual"),
        "staleness": dict(mode="bounded"),
        "servers": dict(servers=comm.size),
        "compression": dict(compression="int8"),
        "optimizer": dict(optimizer_cls=dict),
    }.items():
        call = dict(params=problem(), optimizer_cls=cls, comm=comm, **kw)
        call.update(args)
        try:
            ParameterServer(**call)
        except Exception as e:  # noqa: BLE001
            errors[key] = e
    params = problem()
    ps = ParameterServer(params, cls, comm=comm, mode="async", **kw)
    try:
        ps.push([np.zeros(3) for _ in SHAPES])
    except Exception as e:  # noqa: BLE001
        errors["push_shapes"] = e
    try:
        ps.push([np.zeros(s) for s in SHAPES][:2])
    except Exception as e:  # noqa: BLE001
        errors["push_count"] = e
    try:
        ps.pull([np.zeros(s, dtype=np.float32) for s in SHAPES])
    except Exception as e:  # noqa: BLE001
        errors["pull_dtype"] = e
    try:
        ps.step([np.zeros(3) for _ in SHAPES])
    except Exception as e:  # noqa: BLE001
        errors["step_shapes"] = e
    try:
        ps.step(gradient(params, comm.rank, 1), out=[np.zeros(s, dtype=np.float32) for s in SHAPES])
    except Exception as e:  # noqa: BLE001
        errors["step_dtype"] = e
    ps.step(gradient(params, comm.rank, 1))
    ps.close()
    for call in ("pull", "push", "step"):
        try:
            if call == "pull":
                ps.pull()
            elif call == "push":
                ps.push(gradient(params, comm.rank, 2))
            else:
                ps.step(gradient(params, comm.rank, 2))
        except Exception as e:  # noqa: BLE001
            errors[f"{call}_after_close"] = e

    if comm.size > 1:
        assert isinstance(errors.get("mismatch"), distml.MismatchError), errors
        assert "shapes" in str(errors["mismatch"]) and f"rank(s) [{comm.size - 1}]" in str(errors["mismatch"])
    assert isinstance(errors.get("dtype"), TypeError), errors
    assert isinstance(errors.get("mode"), ValueError), errors
    assert isinstance(errors.get("staleness"), ValueError), errors
    assert isinstance(errors.get("servers"), ValueError), errors
    assert isinstance(errors.get("compression"), ValueError), errors
    assert isinstance(errors.get("optimizer"), TypeError), errors
    assert isinstance(errors.get("push_shapes"), ValueError), errors
    assert isinstance(errors.get("push_count"), ValueError), errors
    assert isinstance(errors.get("pull_dtype"), TypeError), errors
    assert isinstance(errors.get("pull_after_close"), distml.CommunicatorError), errors
    assert isinstance(errors.get("push_after_close"), distml.CommunicatorError), errors
    assert isinstance(errors.get("step_shapes"), ValueError), errors
    assert isinstance(errors.get("step_dtype"), TypeError), errors
    assert isinstance(errors.get("step_after_close"), distml.CommunicatorError), errors
    assert ps.stats()["clock"] == 1, ps.stats()  # the steps refused moved nothing


@pytest.mark.parametrize("s", [1, 3])
def test_bounded_applies_the_averages_sync_applies(comm_default, s):
    """With gradients that do not depend on the parameters, staleness cannot
    change them: bounded mode with a sleeping rank must apply exactly sync's
    per-clock averages, in clock order (checks the s+1 accumulation slots)."""
    comm = comm_default
    cls, kw = OPTIMIZERS["adam"]
    results = []
    for mode, staleness in (("sync", None), ("bounded", s)):
        params = problem()
        ps = ParameterServer(params, cls, comm=comm, mode=mode, staleness=staleness, **kw)
        rng = np.random.default_rng((9, comm.rank))
        for c in range(1, 13):
            if comm.rank == comm.size - 1:
                time.sleep(rng.uniform(0.0, 0.01))
            ps.step(gradient(problem(), comm.rank, c))  # fixed parameters: no dependence on staleness
        ps.close()
        results.append(params)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


# ---- gradients taken in pieces ------------------------------------------------
# A server applies a pushed gradient piece by piece as it arrives (pieces of
# DISTML_PS_PIECE_BYTES, cut at the parameters' boundaries too); a colocated
# rank's own pushes and pulls skip MPI. Pieces of 3 float64 elements (and 12
# halves) make every shard many pieces, most of them cut short.

@pytest.mark.parametrize("name", ["sgd_momentum", "adam"])
@pytest.mark.parametrize("layout", [0, 1], ids=["colocated", "dedicated1"])
def test_sync_in_small_pieces_equals_single_process_optimizer(comm_default, monkeypatch, name, layout):
    comm = comm_default
    if layout >= len(layouts(comm.size)):
        pytest.skip(f"the layout needs more than {comm.size} ranks")
    monkeypatch.setenv("DISTML_PS_PIECE_BYTES", "24")
    servers, workers = layouts(comm.size)[layout]
    cls, kw = OPTIMIZERS[name]
    _, params, stats = train(comm, cls, kw, servers, 5)
    want = oracle(cls, kw, workers, 5)
    for got, ref in zip(params, want):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_compression_in_small_pieces_equals_oracle(comm_default, monkeypatch):
    comm = comm_default
    monkeypatch.setenv("DISTML_PS_PIECE_BYTES", "24")
    cls, kw = OPTIMIZERS["sgd_momentum"]
    _, params, _ = train(comm, cls, kw, None, 3, compression="bf16")
    want = oracle(cls, kw, list(range(comm.size)), 3, compression="bf16")
    for got, ref in zip(params, want):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("pieces", ["24", "default"])
@pytest.mark.parametrize("layout", [0, 1], ids=["colocated", "dedicated1"])
def test_async_applies_every_push_once(comm_default, monkeypatch, pieces, layout):
    """Plain SGD on gradients that do not depend on the parameters: whatever
    the order of arrival, the result is the start minus lr / workers times
    the sum of every push."""
    comm = comm_default
    if layout >= len(layouts(comm.size)):
        pytest.skip(f"the layout needs more than {comm.size} ranks")
    if pieces != "default":
        monkeypatch.setenv("DISTML_PS_PIECE_BYTES", pieces)
    servers, workers = layouts(comm.size)[layout]
    lr, steps = 0.1, 4
    params = problem()
    ps = ParameterServer(params, optim.SGD, comm=comm, mode="async", servers=servers, lr=lr)
    fixed = problem(seed=5)

    def grads(w, c):
        return [g * (w + 1) + 0.01 * c for g in fixed]

    if ps.is_worker:
        for c in range(1, steps + 1):
            ps.step(grads(comm.rank, c))
        assert ps.stats()["bytes_pulled"] == steps * sum(p.nbytes for p in params)
        ps.close()
    want = problem()
    for w in workers:
        for c in range(1, steps + 1):
            for p, g in zip(want, grads(w, c)):
                p -= (lr / len(workers)) * g
    for got, ref in zip(params, want):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    if ps.is_server:
        assert ps.stats()["server"]["updates_applied"] == steps * len(workers)


@pytest.mark.parametrize("layout", [0, 1], ids=["colocated", "dedicated1"])
def test_async_step_replies_with_one_version_including_its_own_push(comm_default, monkeypatch, layout):
    """An async step's reply leaves the server piece by piece while the
    server updates its shard. From uniform parameters, with gradients
    uniform over each push, every shard stays uniform: a reply that mixed
    two versions of a shard would hold two values in it. The reply also
    holds this worker's own update, as a pull after the push would. Steps
    and push-then-pull calls mix."""
    comm = comm_default
    if layout >= len(layouts(comm.size)):
        pytest.skip(f"the layout needs more than {comm.size} ranks")
    monkeypatch.setenv("DISTML_PS_PIECE_BYTES", "64")  # 8 float64 per piece: many pieces per shard
    servers, workers = layouts(comm.size)[layout]
    shapes = [(40, 3), (17,), (9, 5)]
    lr, steps, W = 0.5, 7, len(workers)
    params = [np.ones(s) for s in shapes]
    ps = ParameterServer(params, optim.SGD, comm=comm, mode="async", servers=servers, lr=lr)
    bounds = ps.shard_bounds
    if ps.is_worker:
        g = [np.full(s, comm.rank + 1.0) for s in shapes]
        out = [np.empty(s) for s in shapes]
        for c in range(1, steps + 1):
            if c % 3 == 0:
                ps.push(g)
                got = ps.pull(out)
            else:
                got = ps.step(g, out=out)
            assert got[0] is out[0]
            flat = np.concatenate([p.ravel() for p in got])
            for i in range(len(bounds) - 1):
                shard = flat[bounds[i]:bounds[i + 1]]
                assert np.all(shard == shard[0]), (c, i, np.unique(shard))
                # Every update lowers the shard; this worker's c updates alone
                # lower it by c * lr / W * (rank + 1).
                assert shard[0] <= 1.0 - c * (lr / W) * (comm.rank + 1) + 1e-12, (c, i, shard[0])
            st = ps.stats()
            assert st["clock"] == c and st["pulls"] == c and st["updates_applied"] >= c, st
            assert st["bytes_pushed"] == st["bytes_pulled"] == c * sum(p.nbytes for p in params), st
        ps.close()
    want = 1.0 - (lr / W) * steps * sum(w + 1.0 for w in workers)
    for p in params:
        np.testing.assert_allclose(p, want, rtol=0, atol=1e-12)
    if ps.is_server:
        server = ps.stats()["server"]
        assert server["updates_applied"] == steps * W
        assert [server["applied_per_worker"][w] for w in workers] == [steps] * W


def test_piece_size_must_agree(comm_default, monkeypatch):
    comm = comm_default
    if comm.size < 2:
        pytest.skip("needs two ranks to disagree")
    monkeypatch.setenv("DISTML_PS_PIECE_BYTES", "24" if comm.rank == 0 else "48")
    with pytest.raises(distml.MismatchError, match="DISTML_PS_PIECE_BYTES"):
        ParameterServer(problem(), optim.SGD, comm=comm, lr=0.1)


# ---- several workers at once ---------------------------------------------------
# A server receives the pushes and steps of several workers at once, piece by
# piece, and applies piece k of each update after piece k of the update that
# began before it. With Adam (whose result depends on the order of the
# updates) and gradients that do not depend on the parameters, each shard's
# result is fixed by the order in which its server applied the pushes, which
# every step's reply reports (stats()["shard_versions"]): the replies and the
# final parameters must be those of a single-process Adam applying the same
# gradients in that order, shard by shard. A reply that mixed two versions of
# a shard, or missed its own update, would match no such state.
# DISTML_PS_MAX_IN_FLIGHT limits how many pushes a server receives at once
# (default 1; 0: no limit).

@pytest.mark.parametrize("limit", ["0", "1", "2"])
@pytest.mark.parametrize("layout", [0, 1], ids=["colocated", "dedicated1"])
def test_concurrent_steps_equal_a_serial_order(comm_default, monkeypatch, layout, limit):
    comm = comm_default
    if layout >= len(layouts(comm.size)):
        pytest.skip(f"the layout needs more than {comm.size} ranks")
    servers, workers = layouts(comm.size)[layout]
    if len(workers) < 2:
        pytest.skip("needs two workers")
    monkeypatch.setenv("DISTML_PS_PIECE_BYTES", "64")  # 8 float64 per piece: hundreds of pieces per step
    monkeypatch.setenv("DISTML_PS_MAX_IN_FLIGHT", limit)
    shapes = [(200, 30), (61,), (13, 17)]
    W, steps, lr, kw = len(workers), 6, 0.01, dict(betas=(0.8, 0.95), weight_decay=1e-3)
    start = [np.random.default_rng(41).standard_normal(s) for s in shapes]

    def grads(w, c):
        rng = np.random.default_rng((23, w, c))
        return [rng.standard_normal(s) * (w + 1) for s in shapes]

    params = [p.copy() for p in start]
    ps = ParameterServer(params, optim.Adam, comm=comm, mode="async", servers=servers, lr=lr, **kw)
    bounds, S, total = ps.shard_bounds, len(ps.shard_bounds) - 1, sum(p.size for p in start)
    versions = np.zeros((steps, S), dtype=np.int64)
    replies = np.zeros((steps, total))
    if ps.is_worker:
        out = [np.empty(s) for s in shapes]
        for c in range(1, steps + 1):
            ps.step(grads(comm.rank, c), out=out)
            replies[c - 1] = np.concatenate([o.ravel() for o in out])
            versions[c - 1] = ps.stats()["shard_versions"]
        ps.close()
    most = ps.stats()["server"]["most_in_flight"] if ps.is_server else 0
    all_versions = comm.allgather(versions.ravel()).reshape(comm.size, steps, S)
    all_replies = comm.allgather(replies.ravel()).reshape(comm.size, steps, total)
    all_most = comm.allgather(np.array([most], dtype=np.int64))
    final = np.concatenate([p.ravel() for p in params])

    for i in range(S):
        lo, hi = bounds[i], bounds[i + 1]
        v = {(w, c): int(all_versions[w, c - 1, i]) for w in workers for c in range(1, steps + 1)}
        # Every push applied once, as one version; each worker's in its order.
        assert sorted(v.values()) == list(range(1, W * steps + 1)), (i, v)
        for w in workers:
            assert [v[w, c] for c in range(1, steps + 1)] == sorted(v[w, c] for c in range(1, steps + 1)), (i, v)
        ref = [p.copy() for p in start]
        opt = optim.Adam(ref, lr=lr / W, **kw)
        by_version = {n: wc for wc, n in v.items()}
        for n in range(1, W * steps + 1):
            w, c = by_version[n]
            opt.step(grads(w, c))
            want = np.concatenate([p.ravel() for p in ref])[lo:hi]
            np.testing.assert_allclose(all_replies[w, c - 1, lo:hi], want, rtol=1e-12, atol=1e-14,
                                       err_msg=f"shard {i}, version {n} (worker {w}, step {c})")
        np.testing.assert_allclose(final[lo:hi], want, rtol=1e-12, atol=1e-14, err_msg=f"final shard {i}")
    if limit == "0":
        # The servers did take several workers' steps at once.
        assert int(all_most.max()) >= 2, all_most
    else:
        assert 1 <= int(all_most.max()) <= int(limit), all_most


def test_max_in_flight_must_be_valid_and_agree(comm_default, monkeypatch):
    comm = comm_default
    monkeypatch.setenv("DISTML_PS_MAX_IN_FLIGHT", "-1")
    with pytest.raises(ValueError, match="DISTML_PS_MAX_IN_FLIGHT"):
        ParameterServer(problem(), optim.SGD, comm=comm, lr=0.1)
    if comm.size < 2:
        return
    monkeypatch.setenv("DISTML_PS_MAX_IN_FLIGHT", "0" if comm.rank == 0 else "1")
    with pytest.raises(distml.MismatchError, match="DISTML_PS_MAX_IN_FLIGHT"):
        ParameterServer(problem(), optim.SGD, comm=comm, lr=0.1)


# ---- a worker waiting for its server -------------------------------------------
# A step that its server has not begun (queued behind other workers' pushes,
# or the server busy) has nothing to move on the worker's side: MPICH copies
# a large message on the receiver's side, and the reply has not started. The
# worker sleeps between polls until the reply's header arrives and polls
# without sleeping only while the reply comes in; before, it yielded in a
# loop and took a share of the cores from the server it waited for (three
# workers and a dedicated server on two cores: the server ran half the time).
# A push sleeps likewise until its first piece has been received. Here the
# dedicated server is stopped (SIGSTOP) for `hold` seconds while rank 0
# steps, then again while it pushes: each call takes at least `hold` (the
# step's counted in stats()["wait_for_server_seconds"]) and costs rank 0
# little CPU time.

def with_server_stopped(server_pid, hold, call):
    """Runs call() with the server process stopped for its first `hold`
    seconds; returns this thread's CPU seconds and the wall seconds of it."""
    os.kill(server_pid, signal.SIGSTOP)
    resume = threading.Timer(hold, os.kill, (server_pid, signal.SIGCONT))
    resume.start()
    try:
        t0, c0 = time.perf_counter(), time.thread_time()
        call()
        return time.thread_time() - c0, time.perf_counter() - t0
    finally:
        resume.join()


def test_a_step_waiting_for_its_server_sleeps(comm_default):
    comm = comm_default
    if comm.size < 2:
        pytest.skip("needs a dedicated server")
    pids = comm.allgather(np.array([os.getpid()], dtype=np.int64))
    server_pid = int(pids[comm.size - 1])
    # 2 MiB of float32: one piece, far above MPICH's eager size, so its send
    # completes only once the server has received it.
    shape, hold = (512, 1024), 1.0
    params = [np.zeros(shape, dtype=np.float32)]
    grads = [np.ones(shape, dtype=np.float32)]
    ps = ParameterServer(params, optim.SGD, comm=comm, mode="async", servers=1, lr=0.5)
    cpu = wall = waited = waited_all = push_cpu = push_wall = None
    if ps.is_worker:
        ps.step(grads)
        if comm.rank == 0:
            before = ps.stats()
            cpu, wall = with_server_stopped(server_pid, hold, lambda: ps.step(grads))
            after = ps.stats()
            waited = after.get("wait_for_server_seconds", 0.0) - before.get("wait_for_server_seconds", 0.0)
            waited_all = after["wait_seconds"] - before["wait_seconds"]
            # The same for a push (no reply: its first piece tells that the
            # server has begun).
            push_cpu, push_wall = with_server_stopped(server_pid, hold, lambda: ps.push(grads))
        else:
            ps.step(grads)
            ps.push(grads)
        ps.close()
    # Three pushes of every worker, each at lr / W: every rank ends at -lr * 3.
    np.testing.assert_allclose(params[0], -1.5, rtol=1e-6)
    if comm.rank == 0:
        assert wall >= 0.9 * hold, wall
        # Spinning took about the whole wait (more than half of it even on
        # loaded cores); sleeping takes a few per cent.
        assert cpu < 0.2 * wall, (cpu, wall)
        assert 0.9 * hold <= waited <= waited_all + 1e-6, (waited, waited_all, wall)
        assert push_wall >= 0.9 * hold, push_wall
        assert push_cpu < 0.2 * push_wall, (push_cpu, push_wall)
