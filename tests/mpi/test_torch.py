"""distml.torch at any world size, modelled on the checks of Horovod's torch tests.

Inputs are deterministic per (case, rank), so every rank computes the
expected result of a collective with torch alone. As everywhere in
tests/mpi, a test runs all of its collectives first and asserts afterwards
(see conftest.py), so that a failed check on one rank cannot leave the others
waiting in a collective.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import distml  # noqa: E402
import distml.torch as hvd  # noqa: E402
from conftest import COMM_TIMEOUT  # noqa: E402
from mpi_helpers import raised  # noqa: E402

torch.set_num_threads(1)

FLOAT = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
INTS = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8]
DTYPES = FLOAT + INTS
IDS = [str(d).replace("torch.", "") for d in DTYPES]


@pytest.fixture(scope="module", autouse=True)
def hvd_init():
    distml.init(timeout=COMM_TIMEOUT)  # hvd.init() adopts it, with the test timeout
    hvd.init()
    yield
    hvd.shutdown()


def _gen(key: str, r: int) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{key}/{r}".encode()))


def _input(key: str, r: int, shape, dtype) -> torch.Tensor:
    """Small integers, so that sums and products are exact in every dtype."""
    return torch.randint(0, 4, shape, generator=_gen(key, r)).to(dtype)


def _close(a: torch.Tensor, b: torch.Tensor, dtype) -> None:
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    if dtype in FLOAT:
        tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}.get(dtype, 1e-6)
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)
    else:
        assert torch.equal(a, b), (a, b)


def _reference(op, xs, dtype):
    stack = torch.stack([x.double() for x in xs])
    P = len(xs)
    if op == hvd.Sum:
        ref = stack.sum(0)
    elif op == hvd.Average:
        ref = stack.sum(0) / P if dtype in FLOAT else torch.div(stack.sum(0), P, rounding_mode="floor")
    elif op == hvd.Min:
        ref = stack.min(0).values
    elif op == hvd.Max:
        ref = stack.max(0).values
    else:
        ref = stack.prod(0)
    return ref.to(dtype)


OPS = [hvd.Sum, hvd.Average, hvd.Min, hvd.Max, hvd.Product]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_allreduce_every_dtype_op_in_place_and_async(dtype):
    P, r = hvd.size(), hvd.rank()
    shape = (3, 17)
    results = []
    for op in OPS:
        key = f"ar-{op}-{dtype}"
        x = _input(key, r, shape, dtype)
        orig = x.clone()
        out = hvd.allreduce(x, op=op, name=key)
        y = x.clone()
        same = hvd.allreduce_(y, op=op)
        z = x.clone()
        h_new = hvd.allreduce_async(z, op=op)
        w = x.clone()
        h_in = hvd.allreduce_async_(w, op=op)
        new = hvd.synchronize(h_new)
        hvd.synchronize(h_in)
        ref = _reference(op, [_input(key, s, shape, dtype) for s in range(P)], dtype)
        results.append((op, x, orig, out, y, same, z, new, w, ref))
    for op, x, orig, out, y, same, z, new, w, ref in results:
        assert torch.equal(x, orig), "allreduce modified its input"
        assert same is y, "allreduce_ must return its argument"
        assert torch.equal(z, orig), "allreduce_async modified its input"
        for got in (out, y, new, w):
            _close(got, ref, dtype)


def test_allreduce_non_contiguous_and_default_average():
    P, r = hvd.size(), hvd.rank()
    base = _input("nc", r, (6, 8), torch.float32)
    x = base.clone().t()  # non-contiguous view
    got = hvd.allreduce(x)  # default op: Average
    hvd.allreduce_(x, op=hvd.Sum)
    ref_sum = sum(_input("nc", s, (6, 8), torch.float32) for s in range(P)).t()
    torch.testing.assert_close(got, ref_sum / P)
    torch.testing.assert_close(x, ref_sum)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_allreduce_compression(compression, dtype):
    P, r = hvd.size(), hvd.rank()
    x = torch.randn(1000, generator=_gen("cmp", r), dtype=dtype)
    got = hvd.allreduce(x, compression=getattr(hvd.Compression, compression))
    ref = sum(torch.randn(1000, generator=_gen("cmp", s), dtype=dtype) for s in range(P)) / P
    assert got.dtype == dtype
    tol = 2e-3 if compression == "fp16" else 1.6e-2
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_distributed_optimizer_compresses_float64(compression):
    """float64 gradients travel in the half format and come back float64,
    averaged to within the format's precision."""
    P, r = hvd.size(), hvd.rank()
    params = [torch.zeros(37, dtype=torch.float64, requires_grad=True),
              torch.zeros(5, 3, dtype=torch.float64, requires_grad=True)]
    coeffs = [[torch.randn(p.shape, generator=_gen(f"c64/{i}", s), dtype=torch.float64) for s in range(P)]
              for i, p in enumerate(params)]
    opt = hvd.DistributedOptimizer(torch.optim.SGD(params, lr=1.0), bucket_bytes=128,
                                   compression=getattr(hvd.Compression, compression))
    sum((p * c[r]).sum() for p, c in zip(params, coeffs)).backward()  # p.grad = this rank's coefficients
    opt.synchronize()
    tol = 2 ** -10 if compression == "fp16" else 2 ** -7
    for p, c in zip(params, coeffs):
        assert p.grad.dtype == torch.float64
        want = sum(c) / P
        assert not torch.equal(p.grad, want)  # it did travel in the half format
        torch.testing.assert_close(p.grad, want, rtol=tol, atol=tol)


def test_allreduce_pre_post_scale():
    P, r = hvd.size(), hvd.rank()
    x = _input("scale", r, (10,), torch.float64)
    got = hvd.allreduce(x, op=hvd.Sum, prescale_factor=0.5, postscale_factor=3.0)
    ref = sum(_input("scale", s, (10,), torch.float64) for s in range(P)) * 1.5
    torch.testing.assert_close(got, ref)


def test_grouped_allreduce_mixed_dtypes():
    P, r = hvd.size(), hvd.rank()
    shapes = [(3,), (2, 5), (7,), (1, 1, 4)]
    dtypes = [torch.float32, torch.int32, torch.float32, torch.float64]
    xs = [_input(f"g{i}", r, s, d) for i, (s, d) in enumerate(zip(shapes, dtypes))]
    outs = hvd.grouped_allreduce(xs, op=hvd.Sum)
    ins = [x.clone() for x in xs]
    hvd.grouped_allreduce_(ins, op=hvd.Sum)
    for i, (s, d) in enumerate(zip(shapes, dtypes)):
        ref = _reference(hvd.Sum, [_input(f"g{i}", q, s, d) for q in range(P)], d)
        _close(outs[i], ref, d)
        _close(ins[i], ref, d)


@pytest.mark.parametrize("dtype", DTYPES + [torch.bool], ids=IDS + ["bool"])
def test_allgather_uneven_first_dimension(dtype):
    P, r = hvd.size(), hvd.rank()
    rows = [s + 1 for s in range(P)]  # rank s contributes s + 1 rows
    x = _input(f"ag-{dtype}", r, (rows[r], 3), torch.int64).to(dtype)
    got = hvd.allgather(x)
    h = hvd.allgather_async(x)
    got_async = hvd.synchronize(h)
    ref = torch.cat([_input(f"ag-{dtype}", s, (rows[s], 3), torch.int64).to(dtype) for s in range(P)])
    assert torch.equal(got, ref)
    assert torch.equal(got_async, ref)


@pytest.mark.parametrize("dtype", DTYPES + [torch.bool], ids=IDS + ["bool"])
def test_broadcast_every_root(dtype):
    P, r = hvd.size(), hvd.rank()
    checks = []
    for root in range(P):
        x = _input(f"bc-{root}", r, (4, 5), torch.int64).to(dtype)
        orig = x.clone()
        new = hvd.broadcast(x, root_rank=root)
        hvd.broadcast_(x, root_rank=root)
        y = orig.clone()
        h = hvd.broadcast_async_(y, root)
        hvd.synchronize(h)
        expect = _input(f"bc-{root}", root, (4, 5), torch.int64).to(dtype)
        checks.append((new, x, y, expect))
    for new, x, y, expect in checks:
        assert torch.equal(new, expect)
        assert torch.equal(x, expect)
        assert torch.equal(y, expect)


def test_alltoall_equal_and_splits():
    P, r = hvd.size(), hvd.rank()
    # Equal parts: row d of rank r's input is 10 * r + d.
    x = torch.tensor([[10.0 * r + d] * 2 for d in range(P)])
    out = hvd.alltoall(x)  # without splits: the tensor alone, as Horovod
    # Splits: rank r sends d + 1 rows to rank d, each row (r, d).
    splits = [d + 1 for d in range(P)]
    y = torch.cat([torch.tensor([[r, d]] * (d + 1), dtype=torch.int32) for d in range(P)])
    out2, recv2 = hvd.alltoall(y, splits=splits)
    assert torch.equal(out, torch.tensor([[10.0 * s + r] * 2 for s in range(P)]))
    assert recv2.tolist() == [r + 1] * P
    assert torch.equal(out2, torch.cat([torch.tensor([[s, r]] * (r + 1), dtype=torch.int32) for s in range(P)]))


def test_reducescatter_uneven_rows():
    P, r = hvd.size(), hvd.rank()
    rows = 2 * P + 1
    x = _input("rs", r, (rows, 3), torch.float32)
    got = hvd.reducescatter(x, op=hvd.Sum)
    avg = hvd.reducescatter(x)
    total = sum(_input("rs", s, (rows, 3), torch.float32) for s in range(P))
    mine = torch.tensor_split(total, P)[r]
    torch.testing.assert_close(got, mine)
    torch.testing.assert_close(avg, mine / P)


def test_objects_and_barrier():
    P, r = hvd.size(), hvd.rank()
    got = hvd.broadcast_object({"rank": r, "items": list(range(r + 2))}, root_rank=P - 1)
    gathered = hvd.allgather_object(("r", r))
    hvd.barrier()
    assert got == {"rank": P - 1, "items": list(range(P + 1))}
    assert gathered == [("r", s) for s in range(P)]


def test_local_and_cross_ranks():
    # One machine: the node is the whole world.
    assert hvd.local_size() == hvd.size()
    assert hvd.local_rank() == hvd.rank()
    assert hvd.cross_size() == 1 and hvd.cross_rank() == 0


# ---- errors on every rank --------------------------------------------------------------


def test_mismatched_shapes_raise_on_every_rank():
    P, r = hvd.size(), hvd.rank()
    if P == 1:
        pytest.skip("needs two ranks to disagree")
    errors = [
        raised(lambda: hvd.allreduce(torch.ones(3 + r))),
        raised(lambda: hvd.allreduce(torch.ones(4, dtype=torch.float32 if r else torch.float64))),
        raised(lambda: hvd.allgather(torch.ones(2, 2 + r))),
        raised(lambda: hvd.broadcast(torch.ones(5 + r), root_rank=0)),
    ]
    h = hvd.allreduce_async(torch.ones(2 + r))
    errors.append(raised(lambda: hvd.synchronize(h)))
    after = hvd.allreduce(torch.ones(3), op=hvd.Sum)  # the communicator stays usable
    for e in errors:
        assert isinstance(e, distml.MismatchError), repr(e)
    assert after.tolist() == [float(P)] * 3


def test_adasum_and_bad_arguments_raise():
    with pytest.raises(ValueError, match="Adasum"):
        hvd.allreduce(torch.ones(2), op=hvd.Adasum)
    with pytest.raises(ValueError, match="Adasum"):
        hvd.DistributedOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1), op=hvd.Adasum)
    with pytest.raises(TypeError, match="dtype"):
        hvd.allreduce(torch.ones(2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="handle"):
        hvd.synchronize(-5)


def test_autograd_allreduce_and_allgather():
    P, r = hvd.size(), hvd.rank()
    x = torch.full((3,), float(r + 1), dtype=torch.float64, requires_grad=True)
    (hvd.allreduce(x, op=hvd.Sum) * torch.arange(3.0, dtype=torch.float64)).sum().backward()
    g1 = x.grad.clone()
    y = torch.full((2,), float(r), dtype=torch.float64, requires_grad=True)
    (hvd.allgather(y) ** 2).sum().backward()
    # d/dx of sum_r(x_r) . w, summed over ranks' outputs: P * w.
    torch.testing.assert_close(g1, P * torch.arange(3.0, dtype=torch.float64))
    # Each rank's loss is sum over all gathered y^2; as in Horovod the output
    # gradients (2 y, the same on every rank) are averaged over ranks: 2 y_r.
    torch.testing.assert_close(y.grad, 2.0 * y.detach())


# ---- training -------------------------------------------------------------------------------

B, D, H, C = 24, 6, 10, 3
STEPS = 5


def _data():
    g = torch.Generator().manual_seed(1234)
    X = torch.randn(STEPS, B, D, generator=g, dtype=torch.float64)
    Y = torch.randint(0, C, (STEPS, B), generator=g)
    return X, Y


def _model(seed: int = 5) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Linear(H, H), torch.nn.Tanh(),
                               torch.nn.Linear(H, C)).double()


def _make_opt(name, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    return torch.optim.Adam(params, lr=0.01)


def _oracle(opt_name, seed=5):
    X, Y = _data()
    model = _model(seed)
    opt = _make_opt(opt_name, model.parameters())
    for s in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X[s]), Y[s]).backward()
        opt.step()
    return model


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("bucket_bytes", [64, 4 << 20], ids=["small_buckets", "one_bucket"])
def test_distributed_optimizer_equals_single_process(opt_name, bucket_bytes):
    P, r = hvd.size(), hvd.rank()
    X, Y = _data()
    model = _model(seed=100 + r)  # different on every rank until broadcast
    opt = hvd.DistributedOptimizer(_make_opt(opt_name, model.parameters()),
                                   named_parameters=model.named_parameters(), bucket_bytes=bucket_bytes)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)  # everyone starts from rank 0's model
    for s in range(STEPS):
        opt.zero_grad()
        rows = slice(r, None, P)
        torch.nn.functional.cross_entropy(model(X[s][rows]), Y[s][rows]).backward()
        opt.step()
    oracle = _oracle(opt_name, seed=100)
    for (name, p), q in zip(model.named_parameters(), oracle.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-9, msg=name)


def test_distributed_optimizer_backward_passes_and_compression():
    P, r = hvd.size(), hvd.rank()
    X, Y = _data()
    model = _model()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   backward_passes_per_step=2, bucket_bytes=128)
    for s in range(STEPS):
        opt.zero_grad()
        rows = torch.arange(r, B, P)
        for half in (rows[: len(rows) // 2], rows[len(rows) // 2:]):
            loss = torch.nn.functional.cross_entropy(model(X[s][half]), Y[s][half], reduction="sum")
            (loss / len(rows)).backward()
        opt.step()
    extra = raised(lambda: [torch.nn.functional.cross_entropy(model(X[0]), Y[0]).backward() for _ in range(3)])
    opt.synchronize()
    opt.zero_grad()
    ref = _model()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for s in range(STEPS):
        ref_opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(X[s]), Y[s]).backward()
        ref_opt.step()
    # fp16 wire format: same training within half precision.
    model16 = _model()
    opt16 = hvd.DistributedOptimizer(torch.optim.SGD(model16.parameters(), lr=0.1),
                                     compression=hvd.Compression.fp16, bucket_bytes=256)
    for s in range(STEPS):
        opt16.zero_grad()
        rows = slice(r, None, P)
        torch.nn.functional.cross_entropy(model16(X[s][rows]), Y[s][rows]).backward()
        opt16.step()
    assert isinstance(extra, RuntimeError) and "backward_passes_per_step" in str(extra), repr(extra)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-9)
    for p, q in zip(model16.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=5e-3, atol=5e-3)


def test_zero_grad_while_reducingraised():
    model = _model()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    X, Y = _data()
    torch.nn.functional.cross_entropy(model(X[0]), Y[0]).backward()
    err = raised(opt.zero_grad)
    opt.step()
    opt.zero_grad()
    assert isinstance(err, AssertionError), repr(err)


def test_broadcast_parameters_and_optimizer_state():
    P, r = hvd.size(), hvd.rank()
    X, Y = _data()
    model = _model(seed=10 + r)
    opt = torch.optim.Adam(model.parameters(), lr=0.01 * (r + 1))
    # Rank r takes r steps alone, so the state differs (and is empty on rank 0).
    for s in range(r):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X[s]), Y[s]).backward()
        opt.step()
    root = P - 1
    hvd.broadcast_parameters(model.state_dict(), root_rank=root)
    hvd.broadcast_optimizer_state(opt, root_rank=root)
    params = hvd.allgather(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).unsqueeze(0))
    state = opt.state_dict()
    flat_state = torch.cat([v.reshape(-1).double() for st in state["state"].values() for v in st.values()]
                           ) if state["state"] else torch.zeros(0, dtype=torch.float64)
    n = hvd.allgather(torch.tensor([flat_state.numel()]))
    lrs = hvd.allgather_object(state["param_groups"][0]["lr"])
    states = hvd.allgather(flat_state.unsqueeze(0)) if len(set(n.tolist())) == 1 else None
    for q in range(P):
        assert torch.equal(params[q], params[root])
    assert lrs == [0.01 * P] * P
    if root > 0:  # the root took steps: everyone has its Adam state now
        assert states is not None and states.shape[1] > 0
        for q in range(P):
            assert torch.equal(states[q], states[root])


# ---- join -----------------------------------------------------------------------------------


def test_join_with_uneven_batches():
    """Rank r has STEPS - r batches (at least one). A rank out of data joins;
    the others keep stepping, and (as in Horovod) their averages divide by
    size(), the joined ranks contributing zeros. The oracle replays exactly
    that, in one process."""
    P, r = hvd.size(), hvd.rank()
    X, Y = _data()
    steps_of = [max(1, STEPS - q) for q in range(P)]
    model = _model()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), bucket_bytes=200)
    metrics = []
    for s in range(steps_of[r]):
        opt.zero_grad()
        rows = slice(r, None, P)
        loss = torch.nn.functional.cross_entropy(model(X[s][rows]), Y[s][rows])
        loss.backward()
        opt.step()
        metrics.append(hvd.allreduce(torch.tensor([float(r)], dtype=torch.float64)))
    last = hvd.join()
    mine = [p.detach().clone() for p in model.parameters()]
    # Horovod's recipe after join: the last rank to join has the final model.
    hvd.broadcast_parameters(model.state_dict(), root_rank=last)

    ref = _model()
    snapshot = None
    for s in range(max(steps_of)):
        active = [q for q in range(P) if steps_of[q] > s]
        grads = []
        for q in active:
            ref.zero_grad()
            torch.nn.functional.cross_entropy(ref(X[s][q::P]), Y[s][q::P]).backward()
            grads.append([p.grad.clone() for p in ref.parameters()])
        with torch.no_grad():
            for i, p in enumerate(ref.parameters()):
                p -= 0.1 * sum(g[i] for g in grads) / P
        if s < steps_of[r]:
            # As Horovod: a joined rank contributes zeros and the average divides by size().
            assert metrics[s].item() == pytest.approx(sum(active) / P)
        if s == steps_of[r] - 1:
            snapshot = [p.detach().clone() for p in ref.parameters()]
    for p, q in zip(mine, snapshot):  # a joined rank stops training where its data ended
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-9)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-9)
    longest = max(steps_of)
    assert last == max(q for q in range(P) if steps_of[q] == longest)
