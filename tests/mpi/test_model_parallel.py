"""Model parallelism against the dense single-process model, at any world size.

Every rank builds the dense counterpart (distml.nn layers, numpy only) from
the same seeds and data, with no communication, and checks its own part of
the distributed result against it: tensor-parallel layers (outputs, input
gradients, weight and bias gradients), the pipeline schedules (loss and
every stage's gradients), the process grid's groups, and short training
runs on a grid (tensor or pipeline, with data parallelism on ``grid.data``).
Sizes are chosen so that they do not divide by 2, 3 or 4, and one layer has
fewer output features than P = 4 ranks (a rank holding no columns).

Everything is float64; the distributed computations differ from the dense
ones only in summation order (the allreduce over the tensor group, the
accumulation over micro-batches), so the tolerance is 1e-10. As conftest.py
requires, each test runs all its communication before asserting anything.
"""

from __future__ import annotations

import numpy as np
import pytest

import distml
from conftest import COMM_TIMEOUT
from distml import nn, optim
from distml.parallel import ColumnParallelLinear, Pipeline, ProcessGrid, RowParallelLinear
from distml.parallel.pipeline import schedule_ops
from distml.parallel.tensor_parallel import split_range

TOL = 1e-10
F64 = np.float64


@pytest.fixture(scope="module")
def comm():
    c = distml.Communicator(timeout=COMM_TIMEOUT)
    yield c
    c.free()


def _close(a, b, tol=TOL) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=tol, atol=tol))


def _dense(in_f, out_f, seed, N=6):
    """Full weight, bias, input and output gradient, the same on every rank."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(in_f, out_f)), rng.normal(size=out_f),
            rng.normal(size=(N, in_f)), rng.normal(size=(N, out_f)))


class _Counted:
    """Records the collectives a communicator runs (instance attributes
    shadow its methods while in use)."""

    def __init__(self, comm):
        self.comm, self.calls = comm, []

    def __enter__(self):
        for name in ("allreduce", "allgather"):
            method = getattr(self.comm, name)
            setattr(self.comm, name, lambda *a, _m=method, _n=name, **k: (self.calls.append(_n), _m(*a, **k))[1])
        return self

    def __exit__(self, *exc):
        for name in ("allreduce", "allgather"):
            delattr(self.comm, name)


SIZES = [(7, 5), (6, 3), (5, 11)]


# ---- tensor-parallel layers -----------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("gather", [False, True], ids=["slice", "gather"])
@pytest.mark.parametrize("in_f,out_f", SIZES)
def test_column_parallel(comm, in_f, out_f, gather, bias):
    P, r = comm.size, comm.rank
    W, b, x, dy = _dense(in_f, out_f, seed=in_f * 100 + out_f)
    layer = ColumnParallelLinear.from_dense(W, b if bias else None, comm=comm, gather_output=gather)
    lo, hi = split_range(out_f, P, r)
    y = layer.forward(x)
    gx = layer.backward(dy if gather else dy[:, lo:hi])

    y_ref = x @ W + (b if bias else 0)
    assert (layer.out_start, layer.out_stop) == (lo, hi)
    assert layer.weight.shape == (in_f, hi - lo)
    assert _close(y, y_ref if gather else y_ref[:, lo:hi])
    assert _close(gx, dy @ W.T)
    assert _close(layer.grad_weight, (x.T @ dy)[:, lo:hi])
    if bias:
        assert _close(layer.grad_bias, dy.sum(0)[lo:hi])
    else:
        assert layer.grad_bias is None and len(layer.parameters()) == 1


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("parallel_in", [True, False], ids=["parallel_in", "full_in"])
@pytest.mark.parametrize("in_f,out_f", [(o, i) for i, o in SIZES])
def test_row_parallel(comm, in_f, out_f, parallel_in, bias):
    P, r = comm.size, comm.rank
    W, b, x, dy = _dense(in_f, out_f, seed=in_f * 100 + out_f + 1)
    layer = RowParallelLinear.from_dense(W, b if bias else None, comm=comm, input_is_parallel=parallel_in)
    lo, hi = split_range(in_f, P, r)
    y = layer.forward(x[:, lo:hi] if parallel_in else x)
    gx = layer.backward(dy)

    assert layer.weight.shape == (hi - lo, out_f)
    assert _close(y, x @ W + (b if bias else 0))
    gx_ref = dy @ W.T
    assert _close(gx, gx_ref[:, lo:hi] if parallel_in else gx_ref)
    assert _close(layer.grad_weight, (x.T @ dy)[lo:hi])
    if bias:
        assert _close(layer.grad_bias, dy.sum(0))


@pytest.mark.parametrize("in_f,out_f", [(300, 7), (5, 3)])
def test_seeded_init_is_dense_init(comm, in_f, out_f):
    """seed=s gives this rank's part of nn.Linear(rng=s): the same model at any P."""
    dense = nn.Linear(in_f, out_f, rng=11, dtype=np.float32)
    col = ColumnParallelLinear(in_f, out_f, comm=comm, seed=11)
    row = RowParallelLinear(in_f, out_f, comm=comm, seed=11)
    assert np.array_equal(col.weight, dense.weight[:, col.out_start:col.out_stop])
    assert np.array_equal(col.bias, dense.bias[col.out_start:col.out_stop])
    assert np.array_equal(row.weight, dense.weight[row.in_start:row.in_stop])
    assert np.array_equal(row.bias, dense.bias)
    assert col.weight.dtype == row.weight.dtype == np.float32


def test_mlp_block_one_allreduce_each_way(comm):
    """Column -> ReLU -> Row equals the dense MLP, with one allreduce in
    forward and one in backward (none at P = 1)."""
    D, H, O, N = 5, 9, 4, 7
    dense = nn.Sequential(nn.Linear(D, H, rng=1, dtype=F64), nn.ReLU(), nn.Linear(H, O, rng=2, dtype=F64))
    block = nn.Sequential(ColumnParallelLinear(D, H, comm=comm, seed=1, dtype=F64), nn.ReLU(),
                          RowParallelLinear(H, O, comm=comm, seed=2, dtype=F64))
    rng = np.random.default_rng(3)
    x, dy = rng.normal(size=(N, D)), rng.normal(size=(N, O))
    with _Counted(comm) as fwd:
        y = block.forward(x)
    with _Counted(comm) as bwd:
        gx = block.backward(dy)
    y_ref = dense.forward(x)
    gx_ref = dense.backward(dy)

    expected = ["allreduce"] if comm.size > 1 else []
    assert fwd.calls == expected and bwd.calls == expected, (fwd.calls, bwd.calls)
    assert _close(y, y_ref) and _close(gx, gx_ref)
    col, row = block.layers[0], block.layers[2]
    c, rr = slice(col.out_start, col.out_stop), slice(row.in_start, row.in_stop)
    gW1, gb1, gW2, gb2 = dense.grads()
    assert _close(col.grad_weight, gW1[:, c]) and _close(col.grad_bias, gb1[c])
    assert _close(row.grad_weight, gW2[rr]) and _close(row.grad_bias, gb2)


# ---- process grid --------------------------------------------------------------------


def _factorizations(P):
    return [(d, t, P // (d * t)) for d in range(1, P + 1) for t in range(1, P + 1) if P % (d * t) == 0]


def test_grid_groups(comm):
    P, w = comm.size, comm.rank
    results = []
    for d, t, s in _factorizations(P):
        grid = ProcessGrid(comm, data=d, tensor=t, pipeline=s)
        me = np.array([w], dtype=np.int64)
        members = {axis: getattr(grid, axis).allgather(me).tolist() for axis in ("tensor", "data", "pipeline")}
        results.append(((d, t, s), grid.coords, grid.rank_of(*grid.coords), members,
                        (grid.tensor.rank, grid.data.rank, grid.pipeline.rank)))
        grid.free()
    inferred = ProcessGrid(comm, tensor=1, pipeline=1)
    inferred_sizes = (inferred.data_size, inferred.tensor_size, inferred.pipeline_size)
    inferred.free()

    assert inferred_sizes == (P, 1, 1)
    for (d, t, s), (p, dr, tr), me, members, sub_ranks in results:
        assert me == w
        assert w == p * d * t + dr * t + tr
        assert members["tensor"] == [p * d * t + dr * t + k for k in range(t)]       # consecutive
        assert members["data"] == [p * d * t + k * t + tr for k in range(d)]         # strided by T
        assert members["pipeline"] == [k * d * t + dr * t + tr for k in range(s)]    # outermost
        assert sub_ranks == (tr, dr, p)


@pytest.mark.parametrize("sizes", [dict(data=2, tensor=3), dict(data=None, tensor=5, pipeline=1),
                                   dict(data=1, tensor=0), dict(data=None, tensor=None)],
                         ids=["product", "indivisible", "zero", "two_unknown"])
def test_grid_rejects_bad_sizes(comm, sizes):
    if comm.size == 6 or (comm.size == 5 and sizes.get("tensor") == 5):
        pytest.skip("these sizes fit this world")
    with pytest.raises(ValueError):
        ProcessGrid(comm, **sizes)


# ---- pipeline ----------------------------------------------------------------------


def test_schedule_ops():
    for S in range(1, 5):
        for M in range(1, 7):
            for i in range(S):
                for schedule in ("gpipe", "1f1b"):
                    ops = schedule_ops(schedule, S, i, M)
                    assert sorted(ops) == sorted([("F", m) for m in range(M)] + [("B", m) for m in range(M)])
                    assert [m for k, m in ops if k == "B"] == list(range(M))
                    alive = peak = 0
                    for k, m in ops:
                        assert k == "F" or ops.index(("F", m)) < ops.index(("B", m))
                        alive += 1 if k == "F" else -1
                        peak = max(peak, alive)
                    assert peak == (M if schedule == "gpipe" else min(S - i, M))
    with pytest.raises(ValueError):
        schedule_ops("interleaved", 2, 0, 2)


HID = 6
DIMS = [5, 7, 6, 8, 3]  # stage s maps DIMS[s] -> DIMS[s + 1] (the last stage -> C)
C = 3


def _stage_layers(s, S, dtype=F64):
    out = C if s == S - 1 else DIMS[s + 1]
    layers = [nn.Linear(DIMS[s], HID, rng=10 * s, dtype=dtype), nn.ReLU(),
              nn.Linear(HID, out, rng=10 * s + 1, dtype=dtype)]
    return layers if s == S - 1 else layers + [nn.ReLU()]


@pytest.mark.parametrize("M", [1, 3, 4])
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_matches_dense(comm, schedule, M):
    S, i = comm.size, comm.rank
    N = 10  # not divisible by 3 or 4: micro-batches of unequal size
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(N, DIMS[0])), rng.integers(0, C, size=N)
    stage = nn.Sequential(*_stage_layers(i, S))
    pipe = Pipeline(stage, comm=comm, micro_batches=M, schedule=schedule)
    losses = [pipe.train_step(x if i == 0 else None, y if i == S - 1 else None, nn.SoftmaxCrossEntropy())
              for _ in range(2)]  # the second step must not accumulate onto the first
    peak = pipe.peak_activations
    peak_bytes = pipe.peak_activation_bytes
    pipe.free()

    dense = nn.Sequential(*[layer for s in range(S) for layer in _stage_layers(s, S)])
    loss_fn = nn.SoftmaxCrossEntropy()
    loss_ref = loss_fn(dense(x), y)
    dense.backward(loss_fn.backward())
    before = sum(len(_stage_layers(s, S)) for s in range(i))
    ref_grads = [g for layer in dense.layers[before:before + len(stage.layers)] for g in layer.grads()]

    assert all(abs(v - loss_ref) <= TOL for v in losses), (losses, loss_ref)
    assert all(_close(g, r) for g, r in zip(stage.grads(), ref_grads))
    assert peak == (M if schedule == "gpipe" else min(S - i, M))
    assert peak_bytes > 0


# ---- training runs ---------------------------------------------------------------------

B, D_IN, H1, H2, STEPS = 24, 6, 10, 7, 5


def _data():
    rng = np.random.default_rng(99)
    return rng.normal(size=(STEPS, B, D_IN)), rng.integers(0, C, size=(STEPS, B))


def _dense_mlp():
    return nn.Sequential(nn.Linear(D_IN, H1, rng=1, dtype=F64), nn.ReLU(),
                         nn.Linear(H1, H2, rng=2, dtype=F64), nn.ReLU(),
                         nn.Linear(H2, C, rng=3, dtype=F64))


def _train_dense(make_opt):
    X, Y = _data()
    model = _dense_mlp()
    opt = make_opt(model.parameters())
    loss_fn = nn.SoftmaxCrossEntropy()
    losses = []
    for s in range(STEPS):
        losses.append(loss_fn(model(X[s]), Y[s]))
        model.backward(loss_fn.backward())
        opt.step(model.grads())
    return model, losses


def _sgd(params):
    return optim.SGD(params, lr=0.1, momentum=0.9)


@pytest.mark.parametrize("dp", ["distributed", "sharded"])
def test_tensor_data_parallel_training(comm, dp):
    """Column -> Row -> Column(gather) on grid.tensor, gradients averaged over
    grid.data, equals full-batch single-process training."""
    P = comm.size
    T = 2 if P % 2 == 0 else P
    grid = ProcessGrid(comm, data=P // T, tensor=T)
    model = nn.Sequential(ColumnParallelLinear(D_IN, H1, comm=grid.tensor, seed=1, dtype=F64), nn.ReLU(),
                          RowParallelLinear(H1, H2, comm=grid.tensor, seed=2, dtype=F64), nn.ReLU(),
                          ColumnParallelLinear(H2, C, comm=grid.tensor, seed=3, gather_output=True, dtype=F64))
    if dp == "distributed":
        opt = distml.DistributedOptimizer(_sgd(model.parameters()), comm=grid.data)
    else:
        opt = distml.ShardedOptimizer(optim.SGD, model.parameters(), comm=grid.data, stage=2, lr=0.1, momentum=0.9)
    model.bind_grads(opt.grads)
    X, Y = _data()
    loss_fn = nn.SoftmaxCrossEntropy()
    d, Dn = grid.data_rank, grid.data_size
    for s in range(STEPS):
        loss_fn(model(X[s][d::Dn]), Y[s][d::Dn])
        model.backward(loss_fn.backward())
        opt.step()
    grid.free()

    ref, _ = _train_dense(_sgd)
    c1, r2, c3 = model.layers[0], model.layers[2], model.layers[4]
    W1, b1, W2, b2, W3, b3 = ref.parameters()
    expected = [W1[:, c1.out_start:c1.out_stop], b1[c1.out_start:c1.out_stop],
                W2[r2.in_start:r2.in_stop], b2,
                W3[:, c3.out_start:c3.out_stop], b3[c3.out_start:c3.out_stop]]
    assert all(_close(p, e) for p, e in zip(model.parameters(), expected))


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_data_parallel_training(comm, schedule):
    """Two stages (or P when P is odd) on grid.pipeline, 4 micro-batches,
    gradients averaged over grid.data, equals single-process training; the
    loss is returned on every rank."""
    P = comm.size
    S = 2 if P % 2 == 0 else P
    grid = ProcessGrid(comm, data=P // S, pipeline=S)
    dense = _dense_mlp()
    # Cut the five layers into S contiguous stages.
    cuts = np.array_split(np.arange(len(dense.layers)), S)
    mine = cuts[grid.pipeline_rank]
    stage = nn.Sequential(*[dense.layers[k] for k in mine])
    pipe = Pipeline(stage, comm=grid.pipeline, micro_batches=4, schedule=schedule)
    opt = distml.DistributedOptimizer(_sgd(stage.parameters()), comm=grid.data) if stage.parameters() else None
    if opt is not None:
        stage.bind_grads(opt.grads)
    X, Y = _data()
    d, Dn = grid.data_rank, grid.data_size
    losses = []
    for s in range(STEPS):
        local = pipe.train_step(X[s][d::Dn], Y[s][d::Dn], nn.SoftmaxCrossEntropy())
        losses.append(grid.data.allreduce(np.array([local]), op="avg")[0])
        if opt is not None:
            opt.step()
    pipe.free()
    grid.free()

    ref, ref_losses = _train_dense(_sgd)
    ref_params = [p for k in mine for p in ref.layers[k].parameters()]
    assert all(_close(p, e) for p, e in zip(stage.parameters(), ref_params))
    assert np.allclose(losses, ref_losses, rtol=TOL, atol=TOL), (losses, ref_losses)
