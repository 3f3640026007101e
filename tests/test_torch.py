"""distml.torch in one process: API surface, zero-copy, optimizer wrapping, errors.

The multi-rank behaviour is tested in tests/mpi/test_torch.py (P = 1..4).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import distml.torch as hvd  # noqa: E402
from distml.torch import mpi_ops  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def hvd_init():
    hvd.init()
    yield


def test_rank_size_local():
    assert (hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size()) == (0, 1, 0, 1)
    assert hvd.is_initialized() and hvd.mpi_enabled() and not hvd.nccl_built()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                   torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8])
def test_numpy_view_shares_storage(dtype):
    t = torch.zeros(5, dtype=dtype)
    a = mpi_ops._np(t)
    a[2] = 1
    assert t[2].item() == 1
    assert a.ctypes.data == t.data_ptr()


def test_in_place_returns_same_tensor_and_values():
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    ptr = t.data_ptr()
    out = hvd.allreduce_(t, op=hvd.Sum)
    assert out is t and t.data_ptr() == ptr
    assert t.tolist() == [[0, 1, 2], [3, 4, 5]]
    nc = torch.arange(6.0).reshape(2, 3).t()
    assert torch.equal(hvd.allreduce_(nc), torch.arange(6.0).reshape(2, 3).t())


def test_out_of_place_leaves_input():
    t = torch.ones(4)
    out = hvd.allreduce(t)
    assert out is not t and out.data_ptr() != t.data_ptr()
    out.add_(1)
    assert t.tolist() == [1, 1, 1, 1]


def test_async_handles():
    t = torch.ones(3)
    h = hvd.allreduce_async(t)
    assert isinstance(h, int)
    hvd.poll(h)
    assert torch.equal(hvd.synchronize(h), t)
    with pytest.raises(ValueError, match="handle"):
        hvd.synchronize(h)
    with pytest.raises(ValueError, match="handle"):
        hvd.poll(h)


def test_compressors_round_trip():
    x = torch.randn(10)
    for comp, wire in ((hvd.Compression.fp16, torch.float16), (hvd.Compression.bf16, torch.bfloat16)):
        c, ctx = comp.compress(x)
        assert c.dtype == wire
        assert comp.decompress(c, ctx).dtype == torch.float32
    i = torch.ones(3, dtype=torch.int32)
    assert hvd.Compression.fp16.compress(i)[0] is i
    assert hvd.Compression.none.compress(x)[0] is x


def test_errors():
    with pytest.raises(ValueError, match="Adasum"):
        hvd.allreduce(torch.ones(2), op=hvd.Adasum)
    with pytest.raises(TypeError, match="ProcessSet"):
        hvd.allreduce(torch.ones(2), process_set=object())
    with pytest.raises(ValueError, match="add_process_set"):
        hvd.allreduce(torch.ones(2), process_set=hvd.ProcessSet([0]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        hvd.allreduce([1.0, 2.0])
    with pytest.raises(TypeError, match="dtype"):
        hvd.allreduce(torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="splits"):
        hvd.alltoall(torch.ones(4), splits=[3])
    with pytest.raises(ValueError, match="either op"):
        hvd.allreduce(torch.ones(2), average=True, op=hvd.Sum)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).double()


def test_distributed_optimizer_matches_plain_optimizer_at_one_rank():
    x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(2))
    a, b = _model(), _model()
    opt_a = hvd.DistributedOptimizer(torch.optim.Adam(a.parameters(), lr=0.01),
                                     named_parameters=a.named_parameters(), bucket_bytes=64)
    opt_b = torch.optim.Adam(b.parameters(), lr=0.01)
    assert isinstance(opt_a, torch.optim.Adam)
    sched = torch.optim.lr_scheduler.StepLR(opt_a, step_size=2, gamma=0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=2, gamma=0.5)
    for step in range(5):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            if step == 3:
                model.zero_grad()  # sets grads to None; the hooks must cope
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step()
        sched_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert opt_a.state_dict()["param_groups"][0]["lr"] == opt_b.state_dict()["param_groups"][0]["lr"]


def test_distributed_optimizer_checks():
    m = _model()
    with pytest.raises(ValueError, match="not in it"):
        hvd.DistributedOptimizer(torch.optim.SGD(m.parameters(), lr=0.1),
                                 named_parameters=list(m.named_parameters())[:1])
    with pytest.raises(ValueError, match="duplicate"):
        p = list(m.named_parameters())
        hvd.DistributedOptimizer(torch.optim.SGD(m.parameters(), lr=0.1),
                                 named_parameters=p + [("0.weight", p[0][1])])
    with pytest.raises(ValueError, match="Average or op=Sum"):
        hvd.DistributedOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), op=hvd.Max)

    class Halve(hvd.Compressor):  # a user's own wire format: not run inside the core's buckets
        @staticmethod
        def compress(tensor):
            return tensor / 2, None

        @staticmethod
        def decompress(tensor, ctx):
            return tensor * 2

    with pytest.raises(ValueError, match="Compression.none, .fp16 or .bf16"):
        hvd.DistributedOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), compression=Halve)
    assert hvd.allreduce(torch.ones(3), compression=Halve).tolist() == [1.0, 1.0, 1.0]  # the functions take it
    opt = hvd.DistributedOptimizer(torch.optim.SGD(m.parameters(), lr=0.1))
    torch.nn.functional.cross_entropy(m(torch.randn(3, 4, dtype=torch.float64)), torch.tensor([0, 1, 0])).backward()
    with pytest.raises(AssertionError, match="zero_grad"):
        opt.zero_grad()
    opt.synchronize()
    with opt.skip_synchronize():
        opt.step()
    opt.zero_grad()
    assert all(p.grad is None for p in m.parameters())  # torch's default set_to_none=True
    torch.nn.functional.cross_entropy(m(torch.randn(3, 4, dtype=torch.float64)), torch.tensor([0, 1, 0])).backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in m.parameters())
    opt.synchronize()
    with opt.skip_synchronize():
        opt.step()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and float(p.grad.abs().sum()) == 0 for p in m.parameters())


def test_broadcast_object_and_state_at_one_rank():
    assert hvd.broadcast_object({"a": [1, 2]}) == {"a": [1, 2]}
    assert hvd.allgather_object(5) == [5]
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    hvd.broadcast_parameters(m.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    assert hvd.join() == 0
