"""Single-process tests of the training layer: nn gradients against finite
differences, data sharding, GradientBuffer layout, DistributedOptimizer's
refusals, and checkpoint atomicity and corruption detection. The
multi-rank oracles are in tests/mpi/test_training.py."""

from __future__ import annotations

import os

import numpy as np
import pytest

import distml
from distml import checkpoint, nn, optim
from distml.data import shard_indices


# ---- nn ------------------------------------------------------------------------------


def _model(dtype=np.float64):
    return nn.Sequential(nn.Linear(5, 7, rng=1, dtype=dtype), nn.ReLU(), nn.Linear(7, 3, rng=2, dtype=dtype))


def test_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5))
    y = rng.integers(0, 3, size=6)
    model, loss = _model(), nn.SoftmaxCrossEntropy()
    loss(model(x), y)
    seen = []
    dx = model.backward(loss.backward(), on_grads=seen.append)
    assert seen == [[2, 3], [0, 1]]  # last layer first
    h = 1e-6
    for p, g in zip(model.parameters(), model.grads()):
        flat_p, flat_g = p.reshape(-1), g.reshape(-1)
        for j in range(0, flat_p.size, 3):
            old = flat_p[j]
            flat_p[j] = old + h
            up = loss(model(x), y)
            flat_p[j] = old - h
            down = loss(model(x), y)
            flat_p[j] = old
            assert abs((up - down) / (2 * h) - flat_g[j]) < 1e-6
    for j in range(0, x.size, 4):
        xp = x.copy().reshape(-1)
        xp[j] += h
        up = loss(model(xp.reshape(x.shape)), y)
        xp[j] -= 2 * h
        down = loss(model(xp.reshape(x.shape)), y)
        assert abs((up - down) / (2 * h) - dx.reshape(-1)[j]) < 1e-6


def test_bind_grads_writes_into_given_arrays():
    model = _model(np.float32)
    buf = distml.GradientBuffer(model.parameters(), bucket_bytes=64)
    model.bind_grads(buf.grads)
    x = np.ones((2, 5), dtype=np.float32)
    loss = nn.SoftmaxCrossEntropy()
    loss(model(x), np.array([0, 1]))
    model.backward(loss.backward())
    assert all(g is v for g, v in zip(model.grads(), buf.grads))
    assert np.abs(buf.buffer).sum() > 0
    with pytest.raises(ValueError):
        model.bind_grads(buf.grads[:1])


# ---- data ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 10, 11, 97])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_shard_indices_partition(n, size):
    for drop_last in (False, True):
        shards = [shard_indices(n, r, size, seed=3, epoch=1, drop_last=drop_last) for r in range(size)]
        assert len({len(s) for s in shards}) == 1
        allidx = np.concatenate(shards)
        if drop_last:
            assert len(allidx) == (n // size) * size and len(set(allidx.tolist())) == len(allidx)
        else:
            assert len(allidx) == -(-n // size) * size
            assert set(allidx.tolist()) == set(range(n))


def test_shard_indices_global_batches_do_not_depend_on_size():
    n, B = 100, 12
    one = shard_indices(n, 0, 1, seed=7, epoch=2)
    for size in (2, 3, 4):
        shards = [shard_indices(n, r, size, seed=7, epoch=2) for r in range(size)]
        b = B // size
        for s in range(n // B):
            got = sorted(np.concatenate([sh[s * b:(s + 1) * b] for sh in shards]).tolist())
            assert got == sorted(one[s * B:(s + 1) * B].tolist())


def test_shard_indices_reshuffles_per_epoch_deterministically():
    a = shard_indices(50, 0, 2, seed=1, epoch=0)
    assert np.array_equal(a, shard_indices(50, 0, 2, seed=1, epoch=0))
    assert not np.array_equal(a, shard_indices(50, 0, 2, seed=1, epoch=1))
    assert np.array_equal(shard_indices(6, 1, 2, shuffle=False), [1, 3, 5])
    with pytest.raises(ValueError):
        shard_indices(5, 2, 2)


# ---- GradientBuffer ------------------------------------------------------------------


def test_gradient_buffer_layout():
    params = [np.zeros((10, 10), np.float32), np.zeros(10, np.float32), np.zeros((10, 20), np.float32),
              np.zeros(20, np.float32)]
    buf = distml.GradientBuffer(params, bucket_bytes=400)
    assert buf.buffer.ctypes.data % 64 == 0
    assert buf.buffer.size == 330
    # reverse order: the last parameter first
    assert buf.offsets == [230, 220, 20, 0]
    assert [b.params for b in buf.buckets] == [[3, 2], [1, 0]]
    assert buf.bucket_of == [1, 1, 0, 0]
    assert buf.buckets[0].start == 0 and buf.buckets[-1].stop == buf.buffer.size
    for g, p in zip(buf.grads, params):
        assert g.shape == p.shape and np.shares_memory(g, buf.buffer)
    big = distml.GradientBuffer(params, bucket_bytes=1)
    assert len(big.buckets) == 4
    with pytest.raises(ValueError):
        distml.GradientBuffer([np.zeros(2, np.float32), np.zeros(2, np.float64)])


def test_distributed_optimizer_refuses_unsafe_calls():
    params = [np.ones(4, np.float32), np.ones(3, np.float32)]
    opt = distml.DistributedOptimizer(optim.SGD(params, lr=0.1), bucket_bytes=4)
    opt.mark_ready(1)
    with pytest.raises(RuntimeError, match="pending"):
        opt.zero_grad()
    with pytest.raises(ValueError):
        opt.mark_ready(1)
    with pytest.raises(RuntimeError):
        opt.step([np.zeros(4, np.float32), np.zeros(3, np.float32)])
    opt.step()
    opt.zero_grad()
    with pytest.raises(ValueError):
        distml.DistributedOptimizer(optim.SGD(params, lr=0.1), compression="int8")


# ---- checkpoints ---------------------------------------------------------------------


def _adam_setup(seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    opt = optim.Adam(params, lr=0.01)
    opt.step([np.ones_like(p) for p in params])
    return params, opt


def test_checkpoint_round_trip(tmp_path):
    params, opt = _adam_setup()
    checkpoint.save(str(tmp_path), params=params, optimizer=opt, extra={"epoch": 3})
    params2, opt2 = [np.zeros_like(p) for p in params], optim.Adam([np.zeros_like(p) for p in params], lr=1.0)
    manifest = checkpoint.load(str(tmp_path), params=params2, optimizer=opt2)
    assert manifest["extra"] == {"epoch": 3}
    for a, b in zip(params, params2):
        np.testing.assert_array_equal(a, b)
    assert opt2.steps == opt.steps and opt2.lr == 0.01
    for s, t in zip(opt.state, opt2.state):
        for k in s:
            np.testing.assert_array_equal(s[k], t[k])


def test_crash_before_commit_leaves_previous_checkpoint(tmp_path, monkeypatch):
    params, opt = _adam_setup()
    checkpoint.save(str(tmp_path), params=params, optimizer=opt)
    saved = [p.copy() for p in params]
    opt.step([np.ones_like(p) for p in params])

    def crash(path, manifest):
        raise OSError("simulated crash before the manifest is written")

    monkeypatch.setattr(checkpoint, "_write_manifest", crash)
    with pytest.raises(checkpoint.CheckpointError, match="simulated") as failed:
        checkpoint.save(str(tmp_path), params=params, optimizer=opt)
    monkeypatch.undo()
    assert isinstance(failed.value.__cause__, OSError)
    # the failed save removed its own shard; the manifest still names the old one
    assert len([f for f in os.listdir(tmp_path) if f.startswith("shard-")]) == 1
    restored = [np.zeros_like(p) for p in params]
    checkpoint.load(str(tmp_path), params=restored)
    for a, b in zip(saved, restored):
        np.testing.assert_array_equal(a, b)
    # the next save replaces it
    checkpoint.save(str(tmp_path), params=params, optimizer=opt)
    assert len([f for f in os.listdir(tmp_path) if f.startswith("shard-")]) == 1


def test_corrupted_or_missing_shard_names_the_file(tmp_path):
    params, opt = _adam_setup()
    checkpoint.save(str(tmp_path), params=params, optimizer=opt)
    (shard,) = [f for f in os.listdir(tmp_path) if f.startswith("shard-")]
    path = tmp_path / shard
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match=shard):
        checkpoint.load(str(tmp_path), params=params)
    path.unlink()
    with pytest.raises(checkpoint.CheckpointError, match=shard):
        checkpoint.load(str(tmp_path), params=params)
    with pytest.raises(checkpoint.CheckpointError, match="manifest"):
        checkpoint.load(str(tmp_path / "nowhere"), params=params)


def test_checkpoint_refuses_mismatched_targets(tmp_path):
    params, opt = _adam_setup()
    checkpoint.save(str(tmp_path), params=params, optimizer=opt)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(str(tmp_path), params=[np.zeros((3, 4), np.float32), np.zeros(5, np.float32)])
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(str(tmp_path), optimizer=optim.SGD([np.zeros_like(p) for p in params], lr=0.1, momentum=0.9))
