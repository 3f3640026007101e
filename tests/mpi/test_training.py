"""Data-parallel training against a single-process oracle, at any world size.

The oracle trains a small MLP in one process on the whole global batch of
each step. Under test, rank r of P takes rows r, r + P, ... of the same
global batch (equal local batches, since B = 24 is divisible by 1..4),
computes the mean loss over its rows, and lets the distributed optimizer
average the gradients. Exact arithmetic would give identical models; in
float64 the differences are rounding only, so the tolerance is 1e-9
(relative and absolute) after STEPS steps. The compressed wire formats are
checked in float32 against stated tolerances instead (see
test_compression).

Every test runs all of its collectives before asserting anything (see
conftest.py), and the oracle runs on every rank, with no communication.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

import distml
from conftest import COMM_TIMEOUT
from distml import checkpoint, nn, optim
from mpi_helpers import call

B, D, H, C = 24, 6, 10, 3  # global batch, features, hidden, classes
STEPS = 6
TOL = 1e-9


def _data(dtype=np.float64):
    rng = np.random.default_rng(1234)
    X = rng.normal(size=(STEPS, B, D)).astype(dtype)
    Y = rng.integers(0, C, size=(STEPS, B))
    return X, Y


def _model(dtype=np.float64, seed: int = 5) -> nn.Sequential:
    return nn.Sequential(nn.Linear(D, H, rng=seed, dtype=dtype), nn.ReLU(),
                         nn.Linear(H, H, rng=seed + 1, dtype=dtype), nn.ReLU(),
                         nn.Linear(H, C, rng=seed + 2, dtype=dtype))


def _oracle(make_opt, steps=range(STEPS), model=None, opt=None, dtype=np.float64):
    """Full-batch single-process training; returns (model, optimizer)."""
    X, Y = _data(dtype)
    model = model or _model(dtype)
    opt = opt or make_opt(model.parameters())
    loss = nn.SoftmaxCrossEntropy()
    for s in steps:
        loss(model(X[s]), Y[s])
        model.backward(loss.backward())
        opt.step(model.grads())
    return model, opt


def _train(model, step_fn, rank, P, steps=range(STEPS), dtype=np.float64, on_grads=None):
    X, Y = _data(dtype)
    loss = nn.SoftmaxCrossEntropy()
    for s in steps:
        loss(model(X[s][rank::P]), Y[s][rank::P])
        model.backward(loss.backward(), on_grads=on_grads)
        step_fn()


def _max_diff(a_params, b_params) -> float:
    return max(float(np.max(np.abs(a - b))) for a, b in zip(a_params, b_params))


def _close(a_params, b_params, tol=TOL) -> bool:
    return all(np.allclose(a, b, rtol=tol, atol=tol) for a, b in zip(a_params, b_params))


OPTIMIZERS = {
    "sgd_momentum": (optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3)),
    "sgd_nesterov": (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    "adam": (optim.Adam, dict(lr=0.01)),
    "adamw": (optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
}


# ---- DistributedOptimizer -------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd_momentum", "adam"])
@pytest.mark.parametrize("bucket_bytes", [25 << 20, 64], ids=["one_bucket", "small_buckets"])
def test_distributed_step_with_copied_grads(comm_default, name, bucket_bytes):
    cls, kw = OPTIMIZERS[name]
    comm = comm_default
    model = _model()
    opt = distml.DistributedOptimizer(cls(model.parameters(), **kw), comm=comm, bucket_bytes=bucket_bytes)
    got = call(lambda: _train(model, lambda: opt.step(model.grads()), comm.rank, comm.size))
    want, _ = _oracle(lambda ps: cls(ps, **kw))
    assert got is None, got
    assert _close(model.parameters(), want.parameters()), _max_diff(model.parameters(), want.parameters())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_distributed_overlap_with_backward(comm_default, name):
    """Gradients written into the buffer by backward, buckets launched by
    mark_ready as layers finish (one bucket per parameter)."""
    cls, kw = OPTIMIZERS[name]
    comm = comm_default
    model = _model()
    opt = distml.DistributedOptimizer(cls(model.parameters(), **kw), comm=comm, bucket_bytes=1)
    model.bind_grads(opt.grads)
    launched = []

    def step():
        launched.append(sum(h is not None for h in opt._handles))
        opt.step()

    got = call(lambda: _train(model, step, comm.rank, comm.size, on_grads=opt.mark_ready))
    want, _ = _oracle(lambda ps: cls(ps, **kw))
    assert got is None, got
    assert launched == [len(opt.grad_buffer.buckets)] * STEPS  # all launched before step()
    assert _close(model.parameters(), want.parameters()), _max_diff(model.parameters(), want.parameters())


# Tolerances for the compressed formats, on parameters after STEPS steps of
# SGD with momentum at lr 0.1, float32: the averaged gradient carries a
# relative error of about the format's epsilon (fp16 2**-11, bf16 2**-8) per
# step, a few times that with rounding on every rank; summed over 6 steps with
# momentum and lr 0.1, the parameters move by well under 1e-3 (fp16) and
# 1e-2 (bf16) from the float32 oracle.
COMPRESSION_TOL = {"fp16": 1e-3, "bf16": 1e-2}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_compression(comm_default, compression, dtype):
    """Any floating gradients travel compressed and come back in their dtype."""
    cls, kw = OPTIMIZERS["sgd_momentum"]
    comm = comm_default
    model = _model(dtype)
    opt = call(lambda: distml.DistributedOptimizer(cls(model.parameters(), **kw), comm=comm, bucket_bytes=256,
                                                   compression=compression))
    assert not isinstance(opt, BaseException), opt
    model.bind_grads(opt.grads)
    got = call(lambda: _train(model, opt.step, comm.rank, comm.size, dtype=dtype, on_grads=opt.mark_ready))
    want, _ = _oracle(lambda ps: cls(ps, **kw), dtype=dtype)
    assert got is None, got
    diff = _max_diff(model.parameters(), want.parameters())
    assert diff < COMPRESSION_TOL[compression], diff
    assert all(g.dtype == dtype for g in opt.grads) and all(p.dtype == dtype for p in model.parameters())
    assert opt._wire[0].dtype == (np.float16 if compression == "fp16" else distml.bfloat16)


def test_zero_grad_with_pending_reductions_raises(comm_default):
    comm = comm_default
    params = [np.ones(8), np.ones(4)]
    opt = distml.DistributedOptimizer(optim.SGD(params, lr=0.5), comm=comm, bucket_bytes=8)
    for g in opt.grads:
        g[...] = comm.rank + 1
    opt.mark_ready(1)  # bucket 0 (the last parameter) is now in flight
    refused = call(opt.zero_grad)
    opt.step()
    opt.zero_grad()
    mean = (comm.size + 1) / 2
    assert isinstance(refused, RuntimeError), refused
    assert all(np.allclose(p, 1 - 0.5 * mean) for p in params)
    assert all(np.all(g == 0) for g in opt.grads)


def test_broadcast_parameters_and_state(comm_default):
    comm = comm_default
    model = _model(seed=100 + comm.rank)  # different on every rank
    opt = distml.DistributedOptimizer(optim.Adam(model.parameters(), lr=0.01), comm=comm)
    for s in opt.optimizer.state:
        for a in s.values():
            a[...] = comm.rank
    opt.optimizer.steps = [comm.rank + 3] * len(opt.params)
    got = call(lambda: (opt.broadcast_parameters(root=comm.size - 1), opt.broadcast_optimizer_state(root=comm.size - 1)))
    root_model = _model(seed=100 + comm.size - 1)
    assert not isinstance(got, BaseException), got
    assert _close(model.parameters(), root_model.parameters(), tol=0)
    assert opt.optimizer.steps == [comm.size + 2] * len(opt.params)
    assert all(np.all(a == comm.size - 1) for s in opt.optimizer.state for a in s.values())


def test_optimizers_share_communicators(world):
    """No comm=, or the mpi4py communicator distml.init wraps, means the
    default communicator; another mpi4py communicator gets one distml
    communicator however often it is passed (no duplicates pile up)."""
    from distml import comm as comm_module

    def live():
        return sum(not c._freed for c in comm_module._live)

    default = distml.init(timeout=COMM_TIMEOUT)
    before = live()
    params = [np.ones(6)]
    plain = [distml.DistributedOptimizer(optim.SGD(params, lr=0.5)) for _ in range(2)]
    plain.append(distml.DistributedOptimizer(optim.SGD(params, lr=0.5), comm=world))
    sub = world.Split(world.rank % 2, world.rank)
    on_sub = [distml.DistributedOptimizer(optim.SGD(params, lr=0.5), comm=sub) for _ in range(2)]
    on_sub.append(distml.ShardedOptimizer(optim.SGD, params, comm=sub, lr=0.5))
    stepped = call(lambda: [o.step([np.full(6, float(world.rank))]) for o in plain + on_sub])
    after = live()
    sub_size = sub.size
    on_sub[0].comm.free()
    sub.Free()
    assert not isinstance(stepped, BaseException), stepped
    assert all(o.comm is default for o in plain), [o.comm for o in plain]
    assert all(o.comm is on_sub[0].comm for o in on_sub) and on_sub[0].comm.size == sub_size
    assert after - before == 1, f"{after - before} communicators made for one sub-communicator"


# ---- ShardedOptimizer ---------------------------------------------------------------


@pytest.mark.parametrize("stage,bucket_bytes", [(1, None), (2, None), (2, 64)],
                         ids=["stage1", "stage2", "stage2_small_buckets"])
@pytest.mark.parametrize("name", ["sgd_momentum", "adam", "adamw"])
def test_sharded_matches_oracle(comm_default, stage, bucket_bytes, name):
    cls, kw = OPTIMIZERS[name]
    comm = comm_default
    model = _model()
    buckets = {} if bucket_bytes is None else {"bucket_bytes": bucket_bytes}
    opt = distml.ShardedOptimizer(cls, model.parameters(), comm=comm, stage=stage, **buckets, **kw)
    got = call(lambda: _train(model, lambda: opt.step(model.grads()), comm.rank, comm.size))
    want, want_opt = _oracle(lambda ps: cls(ps, **kw))
    assert got is None, got
    assert _close(model.parameters(), want.parameters()), _max_diff(model.parameters(), want.parameters())
    # this rank's state is the oracle's state over this rank's elements
    for k in want_opt.state_keys:
        full = np.concatenate([s[k].ravel() for s in want_opt.state])
        lo, hi = min(opt.start, opt.numel), min(opt.stop, opt.numel)
        assert np.allclose(opt.optimizer.state[0][k][:hi - lo], full[lo:hi], rtol=TOL, atol=TOL)


def test_sharded_state_bytes_fall_as_one_over_p(comm_default):
    comm = comm_default
    params = [np.zeros((1000, 37), np.float32), np.zeros(37, np.float32), np.zeros((37, 5), np.float32)]
    numel = sum(p.size for p in params)
    sharded = distml.ShardedOptimizer(optim.Adam, params, comm=comm, stage=2)
    replicated = optim.Adam(params)
    per_rank = sharded.state_nbytes()
    assert replicated.state_nbytes() == 2 * 4 * numel
    assert per_rank == 2 * 4 * (-(-numel // comm.size))
    assert per_rank * comm.size - replicated.state_nbytes() < 2 * 4 * comm.size


@pytest.mark.parametrize("bucket_bytes", [4 << 10, 64 << 10])
def test_sharded_stage2_keeps_a_gradient_shard(comm_default, bucket_bytes):
    """Stage 2 holds its gradient shard and one bucket, stage 1 the whole
    gradient: the memory each keeps after a step (measured by tracemalloc)
    differs by that, and both train to the same parameters."""
    import tracemalloc

    comm = comm_default
    P = comm.size
    rng = np.random.default_rng(3)
    shapes = [(300, 37), (37,), (37, 5), (1,)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) * (comm.rank + 1) for s in shapes] for _ in range(3)]
    numel = sum(p.size for p in start)
    shard_bytes = -(-numel // P) * 4
    kept, nbytes, params = {}, {}, {}

    def run(stage):
        ps = [p.copy() for p in start]
        before = tracemalloc.get_traced_memory()[0]
        opt = distml.ShardedOptimizer(optim.SGD, ps, comm=comm, stage=stage, bucket_bytes=bucket_bytes,
                                      lr=0.1, momentum=0.9)
        for g in grads:
            opt.step(g)
        kept[stage] = tracemalloc.get_traced_memory()[0] - before
        nbytes[stage] = opt.grad_nbytes()
        params[stage] = ps

    tracemalloc.start()
    try:
        got = call(lambda: (run(1), run(2)))
    finally:
        tracemalloc.stop()
    assert got is not None and not isinstance(got, BaseException), got
    assert nbytes[1] >= numel * 4
    # the shard, and one bucket of at most bucket_bytes (whole elements per rank)
    assert shard_bytes <= nbytes[2] <= shard_bytes + max(bucket_bytes, 4 * P), (nbytes, shard_bytes)
    # what tracemalloc sees kept differs by the gradient bytes (alignment slack aside)
    assert abs((kept[1] - kept[2]) - (nbytes[1] - nbytes[2])) <= 4 << 10, (kept, nbytes)
    assert _close(params[1], params[2], tol=1e-5), _max_diff(params[1], params[2])


# ---- checkpoints ---------------------------------------------------------------------


@pytest.fixture
def shared_dir(world):
    path = tempfile.mkdtemp(prefix="distml-ckpt-") if world.rank == 0 else None
    path = world.bcast(path, root=0)
    yield path
    world.Barrier()
    if world.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


def _make(kind, cls, kw, params, comm):
    if kind == "sharded1":
        return distml.ShardedOptimizer(cls, params, comm=comm, stage=1, **kw)
    if kind == "sharded2":
        return distml.ShardedOptimizer(cls, params, comm=comm, stage=2, **kw)
    return distml.DistributedOptimizer(cls(params, **kw), comm=comm, bucket_bytes=64)


@pytest.mark.parametrize("save_kind,load_kind", [("sharded2", "sharded1"), ("sharded1", "replicated"),
                                                 ("replicated", "sharded2")])
@pytest.mark.parametrize("name", ["sgd_momentum", "adam"])
def test_checkpoint_reshards_and_continues(comm_default, world, shared_dir, name, save_kind, load_kind):
    """Save at P after 3 steps; load at P' = P - 1 (ranks 0..P-2, for P > 1)
    and at 1 (the last rank, and every rank over COMM_SELF), train 3 more
    steps; every result equals 6 uninterrupted oracle steps."""
    from mpi4py import MPI

    cls, kw = OPTIMIZERS[name]
    comm = comm_default
    P = comm.size
    half = range(3)
    rest = range(3, STEPS)

    model = _model()
    opt = _make(save_kind, cls, kw, model.parameters(), comm)
    saved = call(lambda: (_train(model, lambda: opt.step(model.grads()), comm.rank, P, steps=half),
                          checkpoint.save(shared_dir, params=model.parameters(), optimizer=opt, extra={"step": 3})))

    # A different world size: ranks 0..P-2 form one group, the last rank another.
    color = 0 if (comm.rank < P - 1) else 1
    sub_mpi = world.Split(color, comm.rank)
    sub = distml.Communicator(sub_mpi, timeout=COMM_TIMEOUT)
    self_comm = distml.Communicator(MPI.COMM_SELF, timeout=COMM_TIMEOUT)
    results = {}
    for label, c in (("subgroup", sub), ("self", self_comm)):
        m = _model(seed=99)  # wrong values until loaded
        o = _make(load_kind, cls, dict(kw, lr=123.0), m.parameters(), c)

        def resume(m=m, o=o, c=c):
            manifest = checkpoint.load(shared_dir, params=m.parameters(), optimizer=o)
            _train(m, lambda: o.step(m.grads()), c.rank, c.size, steps=rest)
            return manifest

        results[label] = (call(resume), m, c.size)
    sub.free()
    self_comm.free()
    sub_mpi.Free()

    want, _ = _oracle(lambda ps: cls(ps, **kw))
    assert saved is not None and not isinstance(saved, BaseException), saved
    for label, (manifest, m, size) in results.items():
        assert not isinstance(manifest, BaseException), f"{label}: {manifest!r}"
        assert manifest["extra"] == {"step": 3} and manifest["world_size"] == P
        assert _close(m.parameters(), want.parameters()), (label, size, _max_diff(m.parameters(), want.parameters()))


def test_corrupted_shard_fails_on_every_rank(comm_default, world, shared_dir):
    comm = comm_default
    model = _model()
    opt = distml.ShardedOptimizer(optim.Adam, model.parameters(), comm=comm, stage=2)
    saved = call(lambda: (opt.step([np.ones_like(p) for p in model.parameters()]),
                          checkpoint.save(shared_dir, optimizer=opt)))
    world.Barrier()
    victim = f"-{comm.size - 1:05d}-of-{comm.size:05d}.npz"
    name = [f for f in os.listdir(shared_dir) if f.endswith(victim)][0]
    if world.rank == 0:
        with open(os.path.join(shared_dir, name), "r+b") as f:
            f.seek(100)
            f.write(b"\x00garbage\x00")
    world.Barrier()
    got = call(lambda: checkpoint.load(shared_dir, optimizer=opt))
    assert not isinstance(saved, BaseException), saved
    assert isinstance(got, checkpoint.CheckpointError), got
    assert name in str(got)
