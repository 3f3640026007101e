"""distml.torch where user code written for Horovod expects Horovod's behaviour.

Async calls that return before the peers arrive, failures every rank sees,
names of operations in flight, gradients of the collectives, integer
scaling, shape checks and the names user code mentions. As everywhere in
tests/mpi, a test runs all of its collectives first and asserts afterwards.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import distml  # noqa: E402
import distml.torch as hvd  # noqa: E402
from conftest import COMM_TIMEOUT  # noqa: E402
from mpi_helpers import raised  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def hvd_init():
    distml.init(timeout=COMM_TIMEOUT)
    hvd.init()
    yield
    hvd.shutdown()


# ---- async calls and failures --------------------------------------------------------------

LATE = 2.0  # seconds rank 0 waits before it issues anything


def test_async_calls_return_before_the_peers_arrive():
    """Rank 0 arrives LATE seconds after the others; their async calls must
    not wait for it (only synchronize does)."""
    P, r = hvd.size(), hvd.rank()
    if r == 0:
        time.sleep(LATE)
    start = time.monotonic()
    handles = [
        hvd.broadcast_async(torch.full((5,), float(r)), root_rank=0),
        hvd.broadcast_async_(torch.full((3,), float(r)), root_rank=P - 1),
        hvd.allgather_async(torch.full((r + 1, 2), float(r))),
        hvd.alltoall_async(torch.arange(2.0 * P), splits=[2] * P),
        hvd.alltoall_async(torch.arange(float(P))),
        hvd.reducescatter_async(torch.ones(2 * P, 3), op=hvd.Sum),
        hvd.allreduce_async(torch.ones(4)),
        hvd.grouped_allgather_async([torch.ones(1, 2), torch.zeros(r + 1)]),
        hvd.grouped_reducescatter_async([torch.ones(P, 2)], op=hvd.Sum),
    ]
    issued = time.monotonic() - start
    results = [hvd.synchronize(h) for h in handles]
    if r != 0 and P > 1:
        assert issued < LATE / 2, f"async calls took {issued:.2f}s: they waited for rank 0"
    assert torch.equal(results[0], torch.zeros(5))
    assert torch.equal(results[1], torch.full((3,), float(P - 1)))
    assert torch.equal(results[2], torch.cat([torch.full((s + 1, 2), float(s)) for s in range(P)]))
    assert torch.equal(results[3][0], torch.cat([torch.tensor([2.0 * r, 2.0 * r + 1])] * P))
    assert torch.equal(results[5], torch.full((2, 3), float(P)))
    assert torch.equal(results[7][1], torch.cat([torch.zeros(s + 1) for s in range(P)]))
    assert torch.equal(results[8][0], torch.full((1, 2), float(P)))


def test_bad_splits_on_one_rank_fail_on_every_rank():
    """One rank's splits do not sum to its rows: that rank raises at once,
    the others from synchronize (nobody waits for a collective that will
    not come), and the next collective works."""
    P, r = hvd.size(), hvd.rank()
    bad = P - 1
    splits = [1] * P
    if r == bad:
        splits[0] = 2
    errors = []
    try:
        h = hvd.alltoall_async(torch.ones(P, 2), splits=splits)
        errors.append(raised(lambda: hvd.synchronize(h)))
    except ValueError as exc:
        errors.append(exc)
    errors.append(raised(lambda: hvd.alltoall(torch.ones(P, 2), splits=[1.0] * P)))
    errors.append(raised(lambda: hvd.alltoall(torch.ones(P, 2), splits=torch.ones(P))))
    after = hvd.allreduce(torch.ones(2), op=hvd.Sum)
    for e in errors:
        assert isinstance(e, ValueError), repr(e)
    if r != bad:
        assert f"rank {bad}" in str(errors[0]) or f"[{bad}]" in str(errors[0]), str(errors[0])
    assert after.tolist() == [float(P)] * 2


def test_duplicate_name_in_flight_raises_locally():
    """A name is taken until its operation (or one issued after it) has been
    synchronized: reusing it raises ValueError before anything is queued."""
    P = hvd.size()
    t = torch.ones(2 * P, 3)
    h = hvd.allreduce_async(t, name="dup")
    errors = [
        raised(lambda: hvd.allreduce_async(t, name="dup")),
        raised(lambda: hvd.allreduce(t, name="dup")),
        raised(lambda: hvd.broadcast_async(t, 0, name="dup")),
        raised(lambda: hvd.allgather_async(t, name="dup")),
        raised(lambda: hvd.alltoall_async(t, name="dup")),
        raised(lambda: hvd.reducescatter_async(t, name="dup")),
        raised(lambda: hvd.grouped_allreduce_async([t], name="dup")),
    ]
    first = hvd.synchronize(h)
    h2 = hvd.broadcast_async(t, 0, name="dup")  # free again
    g = hvd.allgather_async(t, name="other")
    hvd.synchronize(g)  # later than h2: h2 is complete, so "dup" is free
    again = hvd.allreduce(t, name="dup", op=hvd.Sum)
    hvd.synchronize(h2)
    for e in errors:
        assert isinstance(e, ValueError) and "dup" in str(e), repr(e)
    assert torch.equal(first, t)
    assert torch.equal(again, t * P)


# ---- gradients ----------------------------------------------------------------------------


def test_gradients_follow_horovod():
    P, r = hvd.size(), hvd.rank()
    # allgather: the output gradient is averaged over ranks, then sliced.
    rows = [s + 1 for s in range(P)]
    x = torch.ones(rows[r], 3, dtype=torch.float64, requires_grad=True)
    g = torch.cat([torch.full((rows[s], 3), float(s), dtype=torch.float64) for s in range(P)])
    hvd.allgather(x).backward(g)
    # broadcast: the root gets the average of the output gradients, the others 0.
    grads_bc = []
    for root in range(P):
        y = torch.full((4,), float(r), dtype=torch.float64, requires_grad=True)
        hvd.broadcast(y, root).backward(torch.ones(4, dtype=torch.float64))
        grads_bc.append(y.grad.clone())
    # alltoall: the gradient travels back along the received splits.
    splits = [s + 1 for s in range(P)]
    z = torch.ones(sum(splits), 2, dtype=torch.float64, requires_grad=True)
    out, recv = hvd.alltoall(z, splits=splits)
    (out * (r + 1)).sum().backward()
    w = torch.ones(2 * P, dtype=torch.float64, requires_grad=True)
    hvd.alltoall(w).sum().backward()
    # reducescatter: allgather of the gradient, times size for Sum.
    u = torch.ones(P * 2 + 1, 3, dtype=torch.float64, requires_grad=True)
    hvd.reducescatter(u, op=hvd.Sum).sum().backward()
    v = torch.ones(P * 2, 3, dtype=torch.float32, requires_grad=True)
    hvd.reducescatter(v).sum().backward()
    # grouped_allreduce: each input's gradient is the reduced output gradient.
    a = torch.ones(3, dtype=torch.float64, requires_grad=True)
    b = torch.ones(2, 2, dtype=torch.float64, requires_grad=True)
    sa, sb = hvd.grouped_allreduce([a, b], op=hvd.Sum)
    (sa.sum() + 2 * sb.sum()).backward()

    torch.testing.assert_close(x.grad, torch.full((rows[r], 3), float(r), dtype=torch.float64))
    for root, grad in enumerate(grads_bc):
        torch.testing.assert_close(grad, torch.full((4,), 1.0 if r == root else 0.0, dtype=torch.float64))
    # rows this rank sent to rank d come back with d's factor (d + 1)
    want = torch.cat([torch.full((splits[d], 2), float(d + 1), dtype=torch.float64) for d in range(P)])
    torch.testing.assert_close(z.grad, want)
    torch.testing.assert_close(w.grad, torch.ones(2 * P, dtype=torch.float64))
    torch.testing.assert_close(u.grad, torch.full_like(u, float(P)))
    torch.testing.assert_close(v.grad, torch.ones_like(v))
    torch.testing.assert_close(a.grad, torch.full_like(a, float(P)))
    torch.testing.assert_close(b.grad, torch.full_like(b, 2.0 * P))


# ---- integer scaling ----------------------------------------------------------------------


def test_integer_scaling_as_horovod():
    P, r = hvd.size(), hvd.rank()
    x = torch.arange(-8, 9, dtype=torch.int32) * (r + 1)
    post = hvd.allreduce(x, op=hvd.Sum, postscale_factor=0.37)
    pre = hvd.allreduce(x, op=hvd.Sum, prescale_factor=0.37)
    pre64 = hvd.allreduce(x.long(), op=hvd.Sum, prescale_factor=2.5)
    rs = hvd.reducescatter(torch.arange(2 * P * 3, dtype=torch.int32).reshape(2 * P, 3), op=hvd.Sum,
                           prescale_factor=2)
    xs = [torch.arange(-8, 9, dtype=torch.int32) * (s + 1) for s in range(P)]
    total = sum(xs)
    assert post.dtype == torch.int32 and torch.equal(post, (total.double() * 0.37).to(torch.int32))
    want_pre = sum((t.double() * 0.37).to(torch.int32) for t in xs)
    assert pre.dtype == torch.int32 and torch.equal(pre, want_pre)
    assert torch.equal(pre64, sum((t.long().double() * 2.5).long() for t in xs))
    full = torch.arange(2 * P * 3, dtype=torch.int32).reshape(2 * P, 3) * 2 * P
    assert rs.dtype == torch.int32 and torch.equal(rs, full[2 * r:2 * r + 2])


def test_join_averages_over_every_rank_as_horovod():
    """The last rank joins at once; the others average int64 and float64
    values: as in Horovod, the joined rank counts with zeros, so the sum of
    the active ranks' values is divided by size() (floor for integers)."""
    P, r = hvd.size(), hvd.rank()
    if P == 1:
        pytest.skip("needs a rank to join while others reduce")
    got = got_f = None
    if r != P - 1:
        got = hvd.allreduce(torch.tensor([5, -7, 1], dtype=torch.int64), op=hvd.Average)
        got_f = hvd.allreduce(torch.tensor([3.0, -1.5], dtype=torch.float64), op=hvd.Average)
    last = hvd.join()
    n = P - 1
    assert last == (P - 2 if P > 1 else 0)
    if got is not None:
        want = torch.div(torch.tensor([5, -7, 1]) * n, P, rounding_mode="floor")
        assert torch.equal(got, want), (got, want)
        torch.testing.assert_close(got_f, torch.tensor([3.0, -1.5], dtype=torch.float64) * n / P)


def test_joined_ranks_stand_in_so_no_active_rank_waits():
    """Rank 0 keeps issuing while the others have joined: what a joined
    rank does not stand in for (as in Horovod: allgather, alltoall,
    reducescatter and broadcast, from any root) raises RuntimeError on rank 0
    (the joined ranks replay the queued size exchange, reduce-scatter or
    broadcast), and an allreduce averages over size() with the joined ranks'
    zeros."""
    P, r = hvd.size(), hvd.rank()
    if P == 1:
        pytest.skip("needs joined ranks")
    errors, avg = [], None
    if r == 0:
        errors = [
            raised(lambda: hvd.allgather(torch.ones(2, 3))),
            raised(lambda: hvd.alltoall(torch.ones(P, 3), splits=[1] * P)),
            raised(lambda: hvd.reducescatter(torch.ones(P, 3, 2))),
            raised(lambda: hvd.broadcast(torch.ones(4), root_rank=P - 1)),
            raised(lambda: hvd.broadcast(torch.ones(4), root_rank=0)),
        ]
        avg = hvd.allreduce(torch.full((2, 3, 4), 3.0))
    last = hvd.join()
    assert last == 0
    for e in errors:
        assert isinstance(e, RuntimeError) and "join" in str(e), repr(e)
    if r == 0:
        assert torch.equal(avg, torch.full((2, 3, 4), 3.0 / P))


# ---- shapes and checks --------------------------------------------------------------------


def test_alltoall_without_splits_returns_the_tensor():
    P, r = hvd.size(), hvd.rank()
    out = hvd.alltoall(torch.full((P, 2), float(r)))
    pair = hvd.alltoall(torch.full((P, 2), float(r)), splits=[1] * P)
    assert isinstance(out, torch.Tensor)
    assert torch.equal(out, torch.arange(float(P)).repeat_interleave(2).reshape(P, 2))
    assert isinstance(pair, tuple) and pair[1].dtype == torch.int32 and pair[1].tolist() == [1] * P


def test_same_count_different_shape_raises_on_every_rank(comm_default):
    P, r = hvd.size(), hvd.rank()
    if P == 1:
        pytest.skip("needs two ranks to disagree")
    shape = (17, 1311) if r == 0 else (17, 23, 57)
    errors = [
        raised(lambda: hvd.allreduce(torch.ones(shape))),
        raised(lambda: comm_default.allreduce(np.ones(shape, np.float32))),
        raised(lambda: comm_default.allreduce(np.ones(shape, np.float32), async_op=True).wait()),
        raised(lambda: comm_default.allreduce(np.ones(shape, np.float32).T)),
    ]
    after = comm_default.allreduce(np.ones(3))
    for i, e in enumerate(errors):
        assert isinstance(e, distml.MismatchError), (i, repr(e))
    assert after.tolist() == [float(P)] * 3


def test_step_after_synchronize_warns():
    p = torch.nn.Parameter(torch.ones(3))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([p], lr=0.1), named_parameters=[("w", p)])
    (p * 2).sum().backward()
    opt.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    opt.zero_grad()
    (p * 2).sum().backward()
    opt.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with opt.skip_synchronize():
            opt.step()
    # Horovod's users look for this wording.
    assert [type(w.message) for w in caught] == [UserWarning], [str(w.message) for w in caught]
    assert "optimizer.step() called without optimizer.skip_synchronize()" in str(caught[0].message)
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.6))


# ---- names user code mentions -------------------------------------------------------------


def test_grouped_allgather_and_reducescatter():
    P, r = hvd.size(), hvd.rank()
    ga = hvd.grouped_allgather([torch.full((r + 1, 2), r, dtype=torch.int32), torch.ones(1)])
    rs = hvd.grouped_reducescatter([torch.ones(2 * P, 2), torch.full((P,), 2.0, dtype=torch.float64)])
    assert torch.equal(ga[0], torch.cat([torch.full((s + 1, 2), s, dtype=torch.int32) for s in range(P)]))
    assert torch.equal(ga[1], torch.ones(P))
    assert torch.equal(rs[0], torch.ones(2, 2))
    assert torch.equal(rs[1], torch.full((1,), 2.0, dtype=torch.float64))


def test_sparse_allreduce_and_sparse_as_dense():
    P, r = hvd.size(), hvd.rank()
    sp = torch.sparse_coo_tensor([[r % 3]], [float(r + 1)], (3,), check_invariants=True)
    fn = hvd.sparse_allreduce_async(sp, name="sp", op=hvd.Sum)
    summed = fn().to_dense()
    emb = torch.nn.Embedding(4, 2, sparse=True)
    torch.nn.init.constant_(emb.weight, 1.0)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(emb.parameters(), lr=1.0),
                                   named_parameters=emb.named_parameters(), sparse_as_dense=True)
    for _ in range(2):
        opt.zero_grad()
        emb(torch.tensor([r % 4])).sum().backward()
        opt.step()
    want = torch.zeros(3)
    for s in range(P):
        want[s % 3] += s + 1
    assert torch.equal(summed, want)
    expect = torch.ones(4, 2)
    for s in range(P):
        expect[s % 4] -= 2.0 / P
    torch.testing.assert_close(emb.weight.detach(), expect)


def test_sparse_gradients_stay_sparse():
    """A sparse embedding gradient without sparse_as_dense is reduced by
    gathering indices and values (as Horovod); with sparse_as_dense it goes
    through the buckets. Either way p.grad is sparse again for the wrapped
    optimizer (SparseAdam takes nothing else), and holds the average."""
    P, r = hvd.size(), hvd.rank()
    rows = [[(q + k) % 5 for k in range(q % 3 + 1)] for q in range(P)]  # rank q's lookups
    counts = torch.zeros(5)
    for q in range(P):
        for i in rows[q]:
            counts[i] += 1
    results = []
    for as_dense in (False, True):
        emb = torch.nn.Embedding(5, 2, sparse=True)
        torch.nn.init.constant_(emb.weight, 1.0)
        lin = torch.nn.Linear(2, 1)  # a dense parameter beside it, in the same buckets
        params = list(emb.parameters()) + list(lin.parameters())
        sgd = hvd.DistributedOptimizer(torch.optim.SGD(params, lr=1.0), sparse_as_dense=as_dense,
                                       bucket_bytes=16)
        sgd.zero_grad()
        emb(torch.tensor(rows[r])).sum().backward()
        sgd.step()
        grad = emb.weight.grad
        emb2 = torch.nn.Embedding(5, 2, sparse=True)
        torch.nn.init.constant_(emb2.weight, 1.0)
        adam = hvd.DistributedOptimizer(torch.optim.SparseAdam(list(emb2.parameters()), lr=0.1),
                                        sparse_as_dense=as_dense)
        for _ in range(2):
            adam.zero_grad()
            emb2(torch.tensor(rows[r])).sum().backward()
            adam.step()
        results.append((grad.layout, grad.to_dense(), emb.weight.detach().clone(),
                        emb2.weight.grad.layout, hvd.allgather(emb2.weight.detach()[None])))
    for layout, grad, weight, adam_layout, adam_weights in results:
        assert layout == torch.sparse_coo and adam_layout == torch.sparse_coo
        torch.testing.assert_close(grad, (counts / P)[:, None].expand(5, 2))
        torch.testing.assert_close(weight, 1.0 - (counts / P)[:, None].expand(5, 2))
        for q in range(P):  # SparseAdam stepped on the same averaged gradients everywhere
            torch.testing.assert_close(adam_weights[q], adam_weights[0])


def test_default_parameter_names_are_unique_across_groups():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    opt = hvd.DistributedOptimizer(torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.5}], lr=0.1))
    names = opt._parameter_names
    everyone = hvd.allgather_object(sorted(names.values()))
    assert len(names) == 4 and len(set(names.values())) == 4, names
    assert all(n == everyone[0] for n in everyone)


def test_a_rank_outside_the_optimizers_process_set_steps_alone():
    """The optimizer reduces over the even ranks; an odd rank steps on its
    own gradient (as in Horovod) and nobody waits for anybody. With a set of
    no ranks, every rank steps alone (so this runs at one rank too)."""
    P, r = hvd.size(), hvd.rank()
    even = hvd.add_process_set([q for q in range(P) if q % 2 == 0])
    empty = hvd.add_process_set([])
    got = []
    for ps in (even, empty):
        p = torch.nn.Parameter(torch.zeros(3))
        opt = hvd.DistributedOptimizer(torch.optim.SGD([p], lr=1.0), named_parameters=[("p", p)],
                                       process_set=ps)
        for _ in range(2):
            opt.zero_grad()
            (p * (r + 1)).sum().backward()
            opt.step()
        opt.synchronize()  # a no-op outside the set, a reduction of nothing new inside
        got.append(p.detach().clone())
    after = hvd.allreduce(torch.ones(1), op=hvd.Sum)  # the whole job is still in step
    hvd.remove_process_set(empty)
    hvd.remove_process_set(even)
    members = [q for q in range(P) if q % 2 == 0]
    if r % 2 == 0:
        want = -2.0 * sum(q + 1 for q in members) / len(members)
    else:
        want = -2.0 * (r + 1)
    assert torch.equal(got[0], torch.full((3,), want)), (got[0], want)
    assert torch.equal(got[1], torch.full((3,), -2.0 * (r + 1)))
    assert after.item() == float(P)


def test_names_horovod_code_mentions():
    p = torch.nn.Parameter(torch.ones(2))
    q = torch.nn.Parameter(torch.ones(1))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([p, q], lr=0.1), named_parameters=[("p", p), ("q", q)])
    assert opt._parameter_names == {p: "p", q: "q"}
    assert issubclass(hvd.HorovodInternalError, RuntimeError)
    assert callable(hvd.elastic.run) and issubclass(hvd.elastic.TorchState, hvd.elastic.State)
    # A directory of this rank's own: pytest's tmp_path is shared by the
    # ranks' sessions, whose clean-ups race under mpiexec.
    with tempfile.TemporaryDirectory() as where:
        hvd.start_timeline(os.path.join(where, "tl.json"))
        hvd.allreduce(torch.ones(2))
        hvd.stop_timeline()
        assert os.listdir(where)


def test_sync_batch_norm_matches_one_process():
    P, r = hvd.size(), hvd.rank()
    g = torch.Generator().manual_seed(7)
    data = torch.randn(4 * P, 3, 5, generator=g, dtype=torch.float64)
    mine = data[4 * r:4 * r + 4].clone().requires_grad_()
    sbn = hvd.SyncBatchNorm(3).double()
    out = sbn(mine)
    (out * torch.arange(5.0, dtype=torch.float64)).sum().backward()
    ref_in = data.clone().requires_grad_()
    bn = torch.nn.BatchNorm1d(3).double()
    ref = bn(ref_in)
    (ref * torch.arange(5.0, dtype=torch.float64)).sum().backward()
    weight_grad = hvd.allreduce(sbn.weight.grad, op=hvd.Sum)
    torch.testing.assert_close(out, ref[4 * r:4 * r + 4])
    # the loss summed over ranks is the one-process loss: its gradient is the sum of the ranks'
    torch.testing.assert_close(mine.grad, ref_in.grad[4 * r:4 * r + 4])
    torch.testing.assert_close(sbn.running_mean, bn.running_mean)
    torch.testing.assert_close(sbn.running_var, bn.running_var)
    torch.testing.assert_close(weight_grad, bn.weight.grad)


# ---- process sets ---------------------------------------------------------------------------


def test_process_sets_run_on_their_ranks_only():
    """Even and odd ranks each reduce, gather, broadcast, exchange and step
    among themselves; a rank outside a set is refused; sets are removed."""
    P, r = hvd.size(), hvd.rank()
    even = hvd.add_process_set([q for q in range(P) if q % 2 == 0])
    odd = hvd.add_process_set(hvd.ProcessSet([q for q in range(P) if q % 2 == 1])) if P > 1 else None
    mine = even if r % 2 == 0 else odd
    members = mine.ranks
    n = len(members)
    summed = hvd.allreduce(torch.tensor([float(r)]), op=hvd.Sum, process_set=mine)
    gathered = hvd.allgather(torch.full((r + 1,), r), process_set=mine)
    root = members[-1]
    bcast = hvd.broadcast(torch.tensor([r]), root_rank=root, process_set=mine)
    obj = hvd.broadcast_object({"from": r}, root_rank=root, process_set=mine)
    a2a = hvd.alltoall(torch.full((n,), r), process_set=mine)
    rs = hvd.reducescatter(torch.ones(n, 2), op=hvd.Sum, process_set=mine)
    x = torch.full((3,), float(r), requires_grad=True)
    hvd.allgather(x, process_set=mine).sum().backward()
    p = torch.nn.Parameter(torch.zeros(2))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([p], lr=1.0), named_parameters=[("p", p)], process_set=mine)
    (p * r).sum().backward()
    opt.step()
    other = odd if mine is even else even
    outside = None if P == 1 else raised(lambda: hvd.allreduce(torch.ones(1), process_set=other))
    world = hvd.allreduce(torch.ones(1), op=hvd.Sum, process_set=hvd.global_process_set)
    removed = [hvd.remove_process_set(even)] + ([hvd.remove_process_set(odd)] if odd is not None else [])
    assert mine.size() == n and mine.rank() == members.index(r) and mine.included()
    assert summed.item() == float(sum(members))
    assert torch.equal(gathered, torch.cat([torch.full((q + 1,), q) for q in members]))
    assert bcast.item() == root and obj == {"from": root}
    assert torch.equal(a2a, torch.tensor(members))
    assert torch.equal(rs, torch.full((1, 2), float(n)))
    assert torch.equal(x.grad, torch.ones(3))
    torch.testing.assert_close(p.detach(), torch.full((2,), -sum(members) / n))
    if outside is not None:
        assert isinstance(outside, ValueError) and "not in" in str(outside), repr(outside)
    assert world.item() == float(P) and all(removed)


def test_an_empty_process_set_has_no_members():
    """A set of no ranks (the odd ranks of a one-rank job) can be added and
    removed on every rank; every rank is outside it, so an operation on it
    raises ValueError."""
    empty = hvd.add_process_set([])
    refused = raised(lambda: hvd.allreduce(torch.ones(1), process_set=empty))
    after = hvd.allreduce(torch.ones(1), op=hvd.Sum)
    removed = hvd.remove_process_set(empty)
    assert empty.size() == 0 and empty.rank() == -1 and not empty.included()
    assert isinstance(refused, ValueError) and "not in" in str(refused), repr(refused)
    assert after.item() == float(hvd.size()) and removed
