"""distml.torch.elastic (``hvd.elastic``) on every rank: commit and restore of
a model, its optimizer, samplers and fields; sync from rank 0; the sampler's
split of what is left of an epoch; failures every rank sees.

The relaunch after a lost rank is tested end to end in tests/test_elastic.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import distml  # noqa: E402
import distml.torch as hvd  # noqa: E402
from conftest import COMM_TIMEOUT  # noqa: E402
from distml.checkpoint import CheckpointError  # noqa: E402
from mpi_helpers import raised  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def hvd_init():
    distml.init(timeout=COMM_TIMEOUT)
    hvd.init()
    yield
    hvd.shutdown()


@pytest.fixture
def shared_dir():
    """A directory every rank sees (rank 0 makes it; ranks are on one host)."""
    d = hvd.broadcast_object(tempfile.mkdtemp(prefix="distml-torch-elastic-") if hvd.rank() == 0 else None, 0)
    yield d
    hvd.barrier()
    if hvd.rank() == 0:
        shutil.rmtree(d, ignore_errors=True)


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


def _train_step(model, opt, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 5, generator=g)
    opt.zero_grad()
    model(x).pow(2).sum().backward()
    opt.step()


def _snapshot(model, opt):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
             for i, s in opt.state_dict()["state"].items()})


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_commit_then_restore_brings_everything_back(shared_dir, opt_name):
    model = _model(0)
    base = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if opt_name == "sgd"
            else torch.optim.Adam(model.parameters(), lr=0.01))
    opt = hvd.DistributedOptimizer(base, named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    sampler = hvd.elastic.ElasticSampler(list(range(50)), shuffle=True, seed=4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    state = hvd.elastic.TorchState(model, opt, directory=shared_dir, epoch=2, batch=3, sampler=sampler,
                                   sched=sched)
    _train_step(model, opt, 1)
    sched.step()
    sampler.record_batch(0, 4)
    state.batch = 4
    state.commit()
    committed = _snapshot(model, opt)
    lr = opt.param_groups[0]["lr"]
    processed = set(sampler.processed_indices)
    # Everything moves on after the commit, then is rolled back.
    _train_step(model, opt, 2)
    sched.step()
    sampler.record_batch(1, 4)
    state.batch, state.epoch = 9, 5
    moved = _snapshot(model, opt)
    restored = state.restore()
    after = _snapshot(model, opt)
    assert restored and state.restored_from == hvd.size() and state.commits == 1
    assert not _same(moved, committed)
    assert _same(after, committed)
    assert opt.param_groups[0]["lr"] == lr and sched.last_epoch == 1
    assert (state.epoch, state.batch) == (2, 4)
    # The commit gathered every rank's batch 0; nothing of batch 1 counts.
    assert sampler.processed_indices == processed
    assert len(processed) == 4 * hvd.size()
    assert not set(sampler.indices) & processed


def test_sync_makes_every_rank_equal_to_rank_0(shared_dir):
    model = _model(hvd.rank() + 10)  # different on every rank
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    _train_step(model, opt, hvd.rank())  # optimizer state differs too
    state = hvd.elastic.TorchState(model, opt, directory=shared_dir, epoch=hvd.rank(), note=f"r{hvd.rank()}")
    state.sync()
    flat = torch.cat([v.float().flatten() for v in model.state_dict().values()])
    exp = torch.cat([v.flatten() for s in opt.state_dict()["state"].values() for v in (s["exp_avg"],)])
    flats = hvd.allgather_object(flat)
    exps = hvd.allgather_object(exp)
    fields = hvd.allgather_object((state.epoch, state.note))
    assert all(torch.equal(f, flats[0]) for f in flats)
    assert all(torch.equal(e, exps[0]) for e in exps)
    assert fields == [(0, "r0")] * hvd.size()


def test_sampler_splits_what_is_left_of_the_epoch():
    n = 23
    sampler = hvd.elastic.ElasticSampler(list(range(n)), shuffle=True, seed=1)
    first = hvd.allgather_object(list(sampler))
    sampler.record_batch(0, 2)
    sampler.sync()
    done = set(sampler.processed_indices)
    sampler.reset()
    rest = hvd.allgather_object(list(sampler))
    sampler.set_epoch(1)
    next_epoch = hvd.allgather_object(list(sampler))
    P = hvd.size()
    assert all(len(part) == -(-n // P) for part in first)
    assert set().union(*map(set, first)) == set(range(n))
    assert done == set().union(*(set(part[:2]) for part in first))
    assert set().union(*map(set, rest)) == set(range(n)) - done
    assert all(len(part) == -(-(n - len(done)) // P) for part in rest)
    assert set().union(*map(set, next_epoch)) == set(range(n)) and next_epoch != first


def test_restore_without_a_commit_changes_nothing(shared_dir):
    model = _model(3)
    before = _snapshot(model, torch.optim.SGD(model.parameters(), lr=0.1))[0]
    state = hvd.elastic.TorchState(model, None, directory=os.path.join(shared_dir, "none"), epoch=1)
    assert state.restore() is False
    assert _same(model.state_dict(), before) and state.epoch == 1 and state.restored_from is None


def test_a_commit_rank_0_cannot_write_fails_on_every_rank(shared_dir):
    blocker = os.path.join(shared_dir, "file")
    if hvd.rank() == 0:
        with open(blocker, "w") as f:
            f.write("not a directory")
    hvd.barrier()
    state = hvd.elastic.TorchState(_model(0), None, directory=os.path.join(blocker, "sub"), epoch=0)
    err = raised(state.commit)
    assert isinstance(err, CheckpointError) and "rank 0 could not commit" in str(err), err
    assert state.commits == 0


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        hvd.elastic.TorchState(model="not a model", directory="/tmp")
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        hvd.elastic.TorchState(_model(0), optimizer=object(), directory="/tmp")
    with pytest.raises(ValueError, match="directory"):
        hvd.elastic.TorchState(_model(0), None)  # not under distmlrun --max-restarts
    with pytest.raises(TypeError, match="State"):
        hvd.elastic.run(lambda state: None)(object())
    state = hvd.elastic.ObjectState(directory="/tmp", epoch=0)
    with pytest.raises(AttributeError, match="no field"):
        state.nonexistent = 1
    assert np.isscalar(state.epoch)
