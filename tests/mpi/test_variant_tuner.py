"""The choice between a shared-memory schedule's two variants by their
times (engine/variant_tuner.h): the policy on its own, with times given;
and on two ranks of one node, that every rank runs the variant node rank 0
chose for each call, that both variants give numpy's results, that turning
it off leaves the threshold's variant, and that ranks must agree on it."""

from __future__ import annotations

import math

import numpy as np
import pytest

import distml
from distml import MismatchError, _core

from mpi_helpers import allgather_ref, inputs, reduce_ref, reduce_scatter_ref, traced

K = _core.VariantTuner.samples
W = _core.VariantTuner.warmup
B = W + K  # the most calls in a row a variant gets when it is (re)examined
M = K // 2 + 1  # new times that move a median of K
WS = _core.VariantTuner.warmup_seconds


def burst(t):
    """Calls in a row for a variant (re)examined whose calls take t seconds:
    untimed ones until they have taken WS (at most W), then K timed."""
    return min(W, math.ceil(WS / t)) + K
RS, AG = _core.Kind.reduce_scatter, _core.Kind.allgather


def _run(tuner, kind, nbytes, now, times):
    """Runs one call as the engine does: choose, then record the time that
    `times` gives the chosen variant. Returns whether it was the single copy."""
    single = tuner.choose(kind, nbytes, now)
    tuner.record(kind, nbytes, single, times[single], now)
    return single


def test_policy_tries_both_then_keeps_the_faster():
    t = _core.VariantTuner(0.5)
    staged_faster = {True: 2e-4, False: 1e-4}
    # Unknown: the single copy B times, then the staged schedule B times.
    got = [_run(t, RS, 1 << 20, 0.0, staged_faster) for _ in range(2 * B)]
    assert got == [True] * B + [False] * B
    # Then the faster, while the other's times are fresh.
    assert [_run(t, RS, 1 << 20, 0.1, staged_faster) for _ in range(5)] == [False] * 5


def test_policy_does_not_count_a_variant_s_first_calls_back():
    """The first calls of a variant taken up again are slow (cold slots):
    they are not what it is judged by; nor is one slow call among its last K
    (a preempted rank)."""
    t = _core.VariantTuner(0.5)
    assert [_run(t, RS, 1 << 20, 0.0, {True: 1e-4, False: 1e-4}) for _ in range(B)] == [True] * B
    # The staged schedule's first W calls take 1.9e-4 (W of them stay
    # under WS), then 0.5e-4, one of its last K 1.9e-4 again.
    assert W * 1.9e-4 < WS
    for i in range(B):
        single = t.choose(RS, 1 << 20, 0.0)
        assert single is False
        t.record(RS, 1 << 20, single, 1.9e-4 if i < W or i == B - 1 else 0.5e-4, 0.0)
    assert [_run(t, RS, 1 << 20, 0.1, {True: 1e-4, False: 0.5e-4}) for _ in range(3)] == [False] * 3


def test_policy_ends_the_untimed_calls_after_a_while():
    """Long calls: the untimed ones end once they have taken WS."""
    t = _core.VariantTuner(0.5)
    slow = 0.7 * WS
    assert [_run(t, RS, 1 << 20, 0.0, {True: slow, False: slow}) for _ in range(2 * (2 + K))] == \
        [True] * (2 + K) + [False] * (2 + K)


def test_policy_looks_again_at_a_variant_left_untimed():
    t = _core.VariantTuner(0.5)
    staged_faster = {True: 2e-4, False: 1e-4}
    for _ in range(2 * B):
        _run(t, RS, 1 << 20, 0.0, staged_faster)
    # Within the period, only the faster runs.
    assert [_run(t, RS, 1 << 20, 0.3, staged_faster) for _ in range(5)] == [False] * 5
    # 0.6 s on, the staged schedule has become slower (a change of phase).
    # The single copy, untimed since 0.0, runs its burst; the staged
    # schedule keeps its place until M of its last K times are the new
    # ones; then the single copy wins.
    single_faster = {True: 2e-4, False: 4.5e-4}
    n = burst(2e-4)
    got = [_run(t, RS, 1 << 20, 0.6, single_faster) for _ in range(n + M + 3)]
    assert got == [True] * n + [False] * M + [True] * 3
    # The staged times are fresh until 0.5 s after its last call (0.6 s).
    assert [_run(t, RS, 1 << 20, 1.0, single_faster) for _ in range(5)] == [True] * 5
    n = burst(4.5e-4)
    assert n < B  # its untimed calls end early
    assert [_run(t, RS, 1 << 20, 1.2, single_faster) for _ in range(n + 2)] == [False] * n + [True] * 2


def test_policy_keeps_its_choice_within_a_tenth():
    t = _core.VariantTuner(0.5)
    close = {True: 1.00e-4, False: 1.08e-4}
    # Staged ran last (the second burst) and is 8% slower: kept.
    assert [_run(t, RS, 1 << 20, 0.0, close) for _ in range(2 * B + 3)] == [True] * B + [False] * (B + 3)
    # 20% slower: the single copy once the staged median has moved.
    far = {True: 1.00e-4, False: 1.20e-4}
    assert [_run(t, RS, 1 << 20, 0.1, far) for _ in range(M + 2)] == [False] * M + [True] * 2


def test_policy_looks_again_less_often_at_long_calls():
    """Calls of 10 ms: the other variant is looked at again after
    period_calls calls' worth of time (5 s), not after 0.5 s."""
    t = _core.VariantTuner(0.5)
    long_calls = {True: 1e-2, False: 2e-2}
    for _ in range(2 * B):
        _run(t, RS, 64 << 20, 0.0, long_calls)
    period = _core.VariantTuner.period_calls * 1e-2
    assert period > 1.0
    assert [_run(t, RS, 64 << 20, period - 0.1, long_calls) for _ in range(3)] == [True] * 3
    n = burst(2e-2)
    assert [_run(t, RS, 64 << 20, period + 0.1, long_calls) for _ in range(n + 1)] == [False] * n + [True]


def test_policy_keeps_size_classes_and_collectives_apart():
    t = _core.VariantTuner(0.5)
    for _ in range(2 * B):
        _run(t, RS, 1 << 20, 0.0, {True: 2e-4, False: 1e-4})
    # The same power of two shares what was learnt ...
    assert _run(t, RS, (1 << 20) + 12345, 0.1, {True: 1.0, False: 1.0}) is False
    # ... another size class or collective starts again with the single copy.
    n = burst(1.0)
    assert [_run(t, RS, 2 << 20, 0.1, {True: 1.0, False: 1.0}) for _ in range(n)] == [True] * n
    assert [_run(t, AG, 1 << 20, 0.1, {True: 1.0, False: 1.0}) for _ in range(n)] == [True] * n


# ---- on two ranks of one node ------------------------------------------------

@pytest.fixture
def fresh():
    """A new communicator (its node rank 0 has learnt nothing yet) on two or
    more ranks of one node that may read each other's memory."""
    comm = distml.Communicator()
    try:
        if not (comm.size >= 2 and comm._core.one_node):
            pytest.skip("needs two or more ranks on one node")
        if not comm._core.single_copy:
            pytest.skip("the ranks may not read each other's memory here (ptrace rules)")
        yield comm
    finally:
        comm.free()


def _chosen(comm):
    """The collectives whose variant is chosen by times at _calls' sizes: on
    two ranks the three whose thresholds give them the single copy (two
    ranks' broadcast always takes it); on more, allgather and broadcast,
    which the thresholds never give it there."""
    return ("allreduce", "reduce_scatter", "allgather") if comm.size == 2 else ("allgather", "broadcast")


def _traced(comm, fn):
    """(collective, schedule) of each call ``fn`` runs on ``comm``."""
    return [(e["collective"], e["schedule"]) for e in traced(comm, fn)]


def _calls(comm, rounds):
    """`rounds` calls of each collective the tuner covers, at sizes in its
    range (1 MiB float32), checked against numpy as they come."""
    P, r = comm.size, comm.rank
    bad = []
    n = (1 << 20) // 4
    xs = inputs("tuner", np.dtype(np.float32), (n,), "small", P)
    want_ar = reduce_ref(xs, "sum")
    want_rs = reduce_scatter_ref(xs, "sum", r)
    part = inputs("tuner_ag", np.dtype(np.float32), (n // P,), "small", P)
    want_ag = allgather_ref(part)
    root = P - 1
    for i in range(rounds):
        b = xs[r].copy() if r == root else np.zeros(n, np.float32)
        for name, got, want in (("allreduce", comm.allreduce(xs[r]), want_ar),
                                ("reduce_scatter", comm.reduce_scatter(xs[r]), want_rs),
                                ("allgather", comm.allgather(part[r]), want_ag),
                                ("broadcast", comm.broadcast(b, root=root), xs[root])):
            if not np.array_equal(got, want):
                bad.append((name, i))
    return bad


def _runs(seq):
    """[(value, length)] of the runs of equal values in seq."""
    out = []
    for v in seq:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return [tuple(r) for r in out]


def test_every_rank_runs_the_variant_rank_0_chose(fresh, world):
    comm = fresh
    bad = []
    events = _traced(comm, lambda: bad.extend(_calls(comm, 40)))
    assert not bad, bad
    everyone = world.allgather(events)
    assert all(e == everyone[0] for e in everyone), "ranks ran different variants"
    for name in ("allreduce", "reduce_scatter", "allgather", "broadcast"):
        single = ["cross-memory" in s for c, s in events if c == name]
        assert len(single) == 40, (name, events)
        if name in _chosen(comm):
            # The first calls of a size class try both variants, in this
            # order, each for its burst (fewer untimed calls where calls are
            # long).
            first, second = _runs(single)[:2]
            assert first[0] is True and K + 1 <= first[1] <= B, (name, single)
            assert second[0] is False and second[1] >= K + 1, (name, single)
        else:
            # Two ranks' broadcast always copies once; on more ranks the
            # others never do at this size.
            assert all(single) if name == "broadcast" else not any(single), (name, single)


def test_off_the_threshold_decides(fresh):
    comm = fresh
    comm._core.shm_tune = False
    bad = []
    events = _traced(comm, lambda: bad.extend(_calls(comm, 2 * B + 2)))
    assert not bad, bad
    assert len(events) == 4 * (2 * B + 2), events
    for name, schedule in events:
        # Two ranks: the thresholds give all three the single copy at this
        # size; more: none of them.
        assert ("cross-memory" in schedule) == (comm.size == 2), events


def test_ranks_must_agree_on_it(world, monkeypatch):
    if world.size < 2:
        pytest.skip("needs two ranks")
    if world.rank == 0:
        monkeypatch.setenv("DISTML_SHM_TUNE", "0")
    with pytest.raises(MismatchError, match="shm_tune"):
        distml.Communicator()


def test_allgather_both_variants_on_any_node(fresh, world):
    """Every size class starts with B single copies and B staged calls, so
    a new communicator runs both: allgather's single copy is reached on
    nodes of more than two ranks only this way. Odd block sizes around the
    write variant's threshold and past two slots, several dtypes, with and
    without out=."""
    from mpi_helpers import BF16

    comm, P, r = fresh, fresh.size, fresh.rank
    bad, seen = [], {}
    for dtype in (np.dtype(np.uint8), BF16, np.dtype(np.float64)):
        for nbytes in ((256 << 10) + 77, (1 << 20) + 3, (3 << 20) + 129):
            n = max(1, nbytes // dtype.itemsize)
            xs = inputs(("tuner_ag_sizes", str(dtype), n), dtype, (n,), "bits", P)
            want = allgather_ref(xs)
            out = np.empty(P * n, dtype)

            def calls():
                for i in range(2 * B):
                    fresh_result = comm.allgather(xs[r])
                    same = comm.allgather(xs[r], out=out) is out
                    if not (same and np.array_equal(fresh_result.view(np.uint8), want.view(np.uint8))
                            and np.array_equal(out.view(np.uint8), want.view(np.uint8))):
                        bad.append((str(dtype), n, i))

            events = _traced(comm, calls)
            seen[(str(dtype), n)] = sorted({"cross-memory" in s for c, s in events if c == "allgather"})
    assert not bad, bad
    # The three sizes fall in three size classes, each new to this
    # communicator for the first dtype; later dtypes reuse what was learnt.
    first = [v for (d, _), v in seen.items() if d == "uint8"]
    assert first == [[False, True]] * 3, seen
    everyone = world.allgather(seen)
    assert all(e == everyone[0] for e in everyone), everyone


def test_broadcast_both_variants_on_more_ranks(fresh, world):
    """On nodes of more than two ranks broadcast from 256 KiB is offered the
    single copy (every rank reads the root's array): both variants, from
    every root, odd sizes past two slots, the root's array unchanged."""
    comm, P, r = fresh, fresh.size, fresh.rank
    if P == 2:
        pytest.skip("two ranks' broadcast always takes its single copy (test_broadcast_single_copy.py)")
    bad, seen = [], set()
    for root in range(P):
        for nbytes in ((256 << 10) + 5, (3 << 20) + 77):
            xs = inputs(("tuner_bcast", root, nbytes), np.dtype(np.uint8), (nbytes,), "bits", P)

            def calls():
                for i in range(2 * B):
                    b = xs[root].copy() if r == root else np.zeros(nbytes, np.uint8)
                    got = comm.broadcast(b, root=root)
                    if not (got is b and np.array_equal(b, xs[root])):
                        bad.append((root, nbytes, i))

            events = _traced(comm, calls)
            seen |= {"cross-memory" in s for c, s in events if c == "broadcast"}
    assert not bad, bad
    assert seen == {True, False}, seen
