"""The choice between a shared-memory schedule's variants by their times
(engine/variant_tuner.h): the policy on its own, with times given; and on
two ranks of one node, that every rank runs the variant node rank 0 chose
for each call, that every variant gives numpy's results, that turning it
off leaves the threshold's variant, and that ranks must agree on it."""

from __future__ import annotations

import numpy as np
import pytest

import distml
from distml import MismatchError, _core

from mpi_helpers import allgather_ref, inputs, reduce_ref, reduce_scatter_ref, traced

K = _core.VariantTuner.samples  # timed calls of each variant in a comparison
W = _core.VariantTuner.warmup  # untimed rounds before them
B = W + K  # a comparison's calls of each variant (at most)
WS = _core.VariantTuner.warmup_seconds
DRIFT = _core.VariantTuner.drift
PC = _core.VariantTuner.period_calls  # calls of the chosen variant before the next comparison
ONE, ST, SS = _core.Variant.single_copy, _core.Variant.staged, _core.Variant.staged_streaming
RING = _core.Variant.pair_ring  # two ranks' allreduce: the ring over MPI
FIRST = [ONE, ST, SS]  # a comparison's first round
THREE = sum(1 << int(v) for v in FIRST)  # the shared-memory variants
RS, AG = _core.Kind.reduce_scatter, _core.Kind.allgather


def in_turn(order, rounds):
    """A comparison's calls: `order` in turn, each round starting one further on."""
    n = len(order)
    return [order[(r + i) % n] for r in range(rounds) for i in range(n)]


def _run(tuner, kind, nbytes, now, times, offered=THREE):
    """Runs one call as the engine does: choose among `offered` (the three
    shared-memory variants unless given), then record the time that `times`
    gives the chosen variant. Returns the variant."""
    v = tuner.choose(kind, nbytes, now, offered)
    tuner.record(kind, nbytes, v, times[v])
    return v


def _runs(tuner, kind, nbytes, now, times, n, offered=THREE):
    return [_run(tuner, kind, nbytes, now, times, offered) for _ in range(n)]


def _learn(tuner, kind, nbytes, now, times):
    """A new size class: its first comparison, all three in turn, then the
    second a tenth of the period later (0.06 s and PC / 10 calls on), which
    ends at now + 0.06."""
    got = _runs(tuner, kind, nbytes, now, times, 3 * B)
    assert got == in_turn(FIRST, B), got
    first = min(times, key=times.get)
    assert _runs(tuner, kind, nbytes, now + 0.06, times, PC // 10) == [first] * (PC // 10)
    got = _runs(tuner, kind, nbytes, now + 0.06, times, 3 * B)
    assert got == in_turn(FIRST, B), got


def test_policy_compares_in_turn_then_keeps_the_fastest():
    t = _core.VariantTuner(0.5)
    staged_fastest = {ONE: 2e-4, ST: 1e-4, SS: 1.5e-4}
    # Unknown: the three in turn, W untimed rounds and K timed ones.
    assert _runs(t, RS, 1 << 20, 0.0, staged_fastest, 3 * B) == in_turn(FIRST, B)
    # Then the fastest alone, within the period.
    assert _runs(t, RS, 1 << 20, 0.1, staged_fastest, 50) == [ST] * 50
    assert t.median(RS, 1 << 20, ST) == pytest.approx(1e-4)
    assert t.median(RS, 1 << 20, ONE) == pytest.approx(2e-4)


def test_policy_does_not_count_the_untimed_rounds_nor_one_spike():
    """A variant's first calls are slow (cold slots): the untimed rounds
    take them; one slow call among K (a preempted rank) does not move a
    median either."""
    t = _core.VariantTuner(0.5)
    got, calls = [], {ONE: 0, ST: 0, SS: 0}
    for _ in range(3 * B):
        v = t.choose(RS, 1 << 20, 0.0, THREE)
        calls[v] += 1
        # Staging: 1.9e-4 for its first W calls and its last, else 0.5e-4;
        # the others 1e-4 throughout.
        slow = calls[v] <= W or calls[v] == B
        t.record(RS, 1 << 20, v, (1.9e-4 if slow else 0.5e-4) if v == ST else 1e-4)
        got.append(v)
    assert W * 1.9e-4 < WS
    assert got == in_turn(FIRST, B)
    assert _runs(t, RS, 1 << 20, 0.1, {ST: 0.5e-4}, 5) == [ST] * 5


def test_policy_a_moment_of_slowness_does_not_decide():
    """Calls slow down for a moment whatever runs (here 5 calls in a row at
    3x): taken in turn, every variant meets at most two of them among its K
    timed calls, and the fastest still wins, wherever the moment falls.
    Judged by calls in a row, whichever variant ran then looked slowest."""
    times = {ONE: 1e-4, ST: 1.2e-4, SS: 1.3e-4}
    assert 2 < K // 2 + 1  # two slow times do not move a median of K
    for start in range(3 * B - 5):
        t = _core.VariantTuner(0.5)
        for i in range(3 * B):
            v = t.choose(RS, 1 << 20, 0.0, THREE)
            t.record(RS, 1 << 20, v, times[v] * (3 if start <= i < start + 5 else 1))
        assert t.choose(RS, 1 << 20, 0.1, THREE) == ONE, start


def test_policy_ends_the_untimed_calls_after_a_while():
    """Long calls: a variant's untimed calls end once they have taken WS,
    so the comparison is shorter."""
    t = _core.VariantTuner(0.5)
    times = {ONE: 1.5 * WS, ST: 1.2 * WS, SS: 1.4 * WS}  # one untimed call each
    n = 3 * (1 + K)
    assert _runs(t, RS, 1 << 20, 0.0, times, n + 3) == in_turn(FIRST, 1 + K) + [ST] * 3


def test_policy_compares_again_after_the_period():
    """The period is explore_seconds and PC calls of the variant chosen,
    both counted from the comparison's end."""
    t = _core.VariantTuner(0.5)
    _learn(t, RS, 1 << 20, 0.0, {ONE: 2e-4, ST: 1e-4, SS: 3e-4})
    # Within the period only the fastest runs, whatever the others would
    # now take: before 0.5 s from the second comparison, however many calls.
    single_fastest = {ONE: 0.5e-4, ST: 1e-4, SS: 3e-4}
    assert _runs(t, RS, 1 << 20, 0.5, single_fastest, PC + 20) == [ST] * (PC + 20)
    # 0.6 s on and past PC calls, a new comparison, which the single copy wins.
    assert _runs(t, RS, 1 << 20, 0.6, single_fastest, 3 * B + 5) == in_turn(FIRST, B) + [ONE] * 5
    # The period runs from this comparison's end.
    assert _runs(t, RS, 1 << 20, 1.0, single_fastest, PC) == [ONE] * PC
    assert _runs(t, RS, 1 << 20, 1.2, single_fastest, 3) == FIRST


def test_policy_counts_the_period_in_calls_too():
    """Calls far apart (here 1 s, a training step's compute between them):
    the next comparison comes after PC calls of the variant chosen, not
    after every 0.5 s. Before, every call past 0.5 s started one, and the
    slower variants ran in about two thirds of the calls."""
    times = {ONE: 1e-2, ST: 2e-2, SS: 3e-2}
    n = 3 * (1 + K)  # one untimed call each (calls past warmup_seconds)
    c = PC // 10  # calls before the second comparison
    t = _core.VariantTuner(0.5)
    assert _runs(t, RS, 64 << 20, 0.0, times, n) == in_turn(FIRST, 1 + K)
    got = [_run(t, RS, 64 << 20, 1.0 + i, times) for i in range(c + n + PC + 3)]
    assert got == [ONE] * c + in_turn(FIRST, 1 + K) + [ONE] * PC + FIRST, got
    # Calls of 10 ms back to back: PC calls take 5 s, and the period is those.
    t = _core.VariantTuner(0.5)
    assert _runs(t, RS, 64 << 20, 0.0, times, n) == in_turn(FIRST, 1 + K)
    got = [_run(t, RS, 64 << 20, 0.01 * (i + 1), times) for i in range(c + n + PC + 3)]
    assert got == [ONE] * c + in_turn(FIRST, 1 + K) + [ONE] * PC + FIRST, got


def test_policy_compares_a_second_time_soon():
    """The first comparison runs on a size's first calls, cold: a second
    one comes a tenth of the period later (in time and in calls), and then
    none until the period."""
    t = _core.VariantTuner(0.5)
    cold = {ONE: 1.5e-4, ST: 2e-4, SS: 3e-4}
    warm = {ONE: 1.5e-4, ST: 1e-4, SS: 3e-4}
    assert _runs(t, RS, 1 << 20, 0.0, cold, 3 * B) == in_turn(FIRST, B)
    # Within the tenth in time: kept, however many calls.
    assert _runs(t, RS, 1 << 20, 0.02, warm, PC // 10 + 5) == [ONE] * (PC // 10 + 5)
    # After it, the second comparison, which staging wins now.
    assert _runs(t, RS, 1 << 20, 0.06, warm, 3 * B + 3) == in_turn(FIRST, B) + [ST] * 3
    # No third before the period.
    assert _runs(t, RS, 1 << 20, 0.4, warm, PC) == [ST] * PC
    assert _runs(t, RS, 1 << 20, 0.6, warm, 3) == FIRST


def test_policy_compares_early_when_the_running_variant_slows():
    """A change of phase shows in the running variant's own times: once
    their median exceeds DRIFT times its median when chosen, the next
    comparison comes early, though not within a tenth of the period, in
    time (0.05 s) or in calls (PC / 10)."""
    t = _core.VariantTuner(0.5)
    _learn(t, RS, 1 << 20, 0.0, {ONE: 2e-4, ST: 1e-4, SS: 3e-4})
    slowed = {ONE: 2e-4, ST: 1.1 * DRIFT * 1e-4, SS: 3e-4}
    # Slower, within the tenth in time (from the second comparison, which
    # ended at 0.06): kept, however many calls.
    assert _runs(t, RS, 1 << 20, 0.08, slowed, PC // 10 + 3) == [ST] * (PC // 10 + 3)
    # After it: compared again at once (its median has long moved).
    assert _runs(t, RS, 1 << 20, 0.12, slowed, 3 * B + 2) == in_turn(FIRST, B) + [ST] * 2
    # Within the tenth in calls: kept, however late.
    t = _core.VariantTuner(0.5)
    _learn(t, RS, 1 << 20, 0.0, {ONE: 2e-4, ST: 1e-4, SS: 3e-4})
    assert _runs(t, RS, 1 << 20, 0.3, slowed, PC // 10) == [ST] * (PC // 10)
    assert _runs(t, RS, 1 << 20, 0.3, slowed, 3) == FIRST
    # Slower by less than DRIFT: kept until the period.
    t = _core.VariantTuner(0.5)
    _learn(t, RS, 1 << 20, 0.0, {ONE: 2e-4, ST: 1e-4, SS: 3e-4})
    some = {ONE: 2e-4, ST: 0.9 * DRIFT * 1e-4, SS: 3e-4}
    assert _runs(t, RS, 1 << 20, 0.3, some, PC // 10) == [ST] * (PC // 10)
    # Slower by more, the comparison finds the single copy faster now.
    slowed = {ONE: 2e-4, ST: 2.5e-4, SS: 3e-4}
    half = K // 2 + 1  # new times that move a median of K
    got = _runs(t, RS, 1 << 20, 0.3, slowed, half + 3 * B + 2)
    assert got == [ST] * half + in_turn(FIRST, B) + [ONE] * 2, got


def test_policy_picks_only_among_the_variants_offered():
    """Where the single copy cannot run (a staged plan), only the two staged
    variants are compared and chosen, however fast the single copy would
    be; offered later (a setting changed), it is compared too."""
    t = _core.VariantTuner(0.5)
    staged_only = (1 << int(ST)) | (1 << int(SS))
    times = {ONE: 1e-5, ST: 2e-4, SS: 1e-4}
    got = _runs(t, RS, 1 << 20, 0.0, times, 2 * B + 3, staged_only)
    assert got == in_turn([ST, SS], B) + [SS] * 3, got
    # Offered all three within a tenth of the period: kept; after it, the
    # single copy, never timed, brings a comparison.
    assert _runs(t, RS, 1 << 20, 0.02, times, PC // 10) == [SS] * (PC // 10)
    assert _runs(t, RS, 1 << 20, 0.1, times, 3 * B + 3) == in_turn(FIRST, B) + [ONE] * 3
    # Offered no longer: the fastest staged variant takes over.
    assert t.choose(RS, 1 << 20, 0.2, staged_only) == SS
    # One variant offered: no comparison.
    assert _runs(t, AG, 1 << 20, 0.0, times, 4, 1 << int(ST)) == [ST] * 4


def test_policy_keeps_size_classes_and_collectives_apart():
    t = _core.VariantTuner(0.5)
    _learn(t, RS, 1 << 20, 0.0, {ONE: 2e-4, ST: 1e-4, SS: 3e-4})
    # The same power of two shares what was learnt ...
    assert _run(t, RS, (1 << 20) + 12345, 0.1, dict.fromkeys(FIRST, 1.0)) == ST
    # ... another size class or collective starts a comparison of its own,
    # and so do calls in place (node rank 0's).
    assert _runs(t, RS, 2 << 20, 0.1, dict.fromkeys(FIRST, 1e-4), 3) == FIRST
    assert _runs(t, AG, 1 << 20, 0.1, dict.fromkeys(FIRST, 1e-4), 3) == FIRST
    assert [t.choose(RS, 1 << 20, 0.1, THREE, True) for _ in range(3)] == FIRST
    assert t.choose(RS, 1 << 20, 0.1, THREE) == ST


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


def _offered(comm, name):
    """The variants the choice by times picks from at _calls' sizes, in the
    order a new size class tries them: on two ranks all three for the three
    collectives whose thresholds give them the single copy (two ranks'
    broadcast always takes it, and is not chosen for); on more, all three
    for allgather and broadcast, which the thresholds never give the single
    copy there, and the two staged ones for the others."""
    if comm.size == 2:
        return [] if name == "broadcast" else FIRST
    return FIRST if name in ("allgather", "broadcast") else [ST, SS]


def _traced(comm, fn):
    """(collective, schedule) of each call ``fn`` runs on ``comm``."""
    return [(e["collective"], e["schedule"]) for e in traced(comm, fn)]


def _variant(schedule):
    """The variant a traced shared-memory schedule names (or the ring that
    stands in for two ranks' allreduce)."""
    if schedule == "ring":
        return RING
    if "cross-memory" in schedule:
        return ONE
    return SS if "slots filled with streaming stores" in schedule else ST


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


ROUNDS = 3 * B + 5  # a comparison of three, and then some


def test_every_rank_runs_the_variant_rank_0_chose(fresh, world):
    comm = fresh
    bad = []
    events = _traced(comm, lambda: bad.extend(_calls(comm, ROUNDS)))
    assert not bad, bad
    everyone = world.allgather(events)
    assert all(e == everyone[0] for e in everyone), "ranks ran different variants"
    for name in ("allreduce", "reduce_scatter", "allgather", "broadcast"):
        ran = [_variant(s) for c, s in events if c == name]
        assert len(ran) == ROUNDS, (name, events)
        offered = _offered(comm, name)
        if offered:
            # The first calls of a size class compare the variants offered
            # in turn: at least one untimed round (fewer where calls are
            # long) and K timed ones; then the one chosen (until the next
            # comparison, which a slower machine may bring within these
            # calls).
            n = len(offered) * (1 + K)
            assert ran[:n] == in_turn(offered, 1 + K), (name, ran)
            assert set(ran) == set(offered), (name, ran)
        else:
            # Two ranks' broadcast always copies once.
            assert set(ran) == {ONE}, (name, ran)


def test_allreduce_average_and_half_types_under_every_variant(fresh, world):
    """The staged schedule finishes an average on the slice it reduced into
    its slot, which the streaming variant wrote past the cache; float16 and
    bfloat16 widen and round there too. Between two ranks allreduce tries
    all three variants from 256 KiB; on more, the two staged ones."""
    from mpi_helpers import BF16, Checker

    comm, P, r = fresh, fresh.size, fresh.rank
    check, seen = Checker(P), set()
    for dtype, op in ((np.dtype(np.float32), "avg"), (np.dtype(np.float16), "sum"), (BF16, "avg")):
        n = ((1 << 20) + 4 * 37) // dtype.itemsize
        xs = inputs(("tuner_ar", str(dtype), op), dtype, (n,), "small", P)
        want = reduce_ref(xs, op)

        def calls():
            for i in range(3 * B):
                check.expect(f"{dtype} {op} call {i}", comm.allreduce(xs[r], op=op), want,
                             "tol" if op == "avg" else "exact", dtype=dtype)

        seen |= {_variant(s) for c, s in _traced(comm, calls) if c == "allreduce"}
    assert not check.failures, check.failures[:5]
    assert seen == (set(FIRST) if P == 2 else {ST, SS}), seen


def test_pair_allreduce_compares_the_ring_too(fresh, world):
    """Two ranks' allreduce of ordinary arrays from 2 MiB (to 64 MiB) under
    `auto`: the ring over MPI is compared beside the three shared-memory
    variants, in turn from the first call of calls in place and apart from
    those out of place (as node rank 0 calls), and every rank runs what
    node rank 0 chose. Results against numpy in place, into a new array, as
    an average, and in place on one rank only; an explicit 'shm', an array
    in a shared window and a size below 2 MiB never run the ring."""
    comm, P, r = fresh, fresh.size, fresh.rank
    if P != 2:
        pytest.skip("the ring stands in for allreduce on a node of two ranks only")
    n = ((4 << 20) + 4 * 13) // 4
    xs = inputs("tuner_ring", np.dtype(np.float32), (n,), "small", P)
    want, want_avg = reduce_ref(xs, "sum"), reduce_ref(xs, "avg")
    bad, forms = [], []

    def calls():
        for i in range(4 * 4 * (1 + K) + 4):
            form = i % 4
            forms.append(form)
            a = xs[r].copy()
            if form == 0:
                got = comm.allreduce(a, out=a)
            elif form == 1:
                got = comm.allreduce(a)
            elif form == 2:
                got = comm.allreduce(a, op="avg", out=a)
            else:  # in place on rank 0, into another array on rank 1
                got = comm.allreduce(a, out=a if r == 0 else np.empty_like(a))
            ok = np.allclose(got, want_avg, rtol=1e-6) if form == 2 else np.array_equal(got, want)
            if not ok:
                bad.append((i, form))

    ran = [_variant(s) for c, s in _traced(comm, calls) if c == "allreduce"]
    assert not bad, bad
    assert len(ran) == len(forms), ran
    order = FIRST + [RING]
    for label, kept in (("in place", (0, 2, 3)), ("out of place", (1,))):
        mine = [v for v, f in zip(ran, forms) if f in kept]
        assert mine[:4 * (1 + K)] == in_turn(order, 1 + K), (label, mine)
        assert set(mine) == set(order), (label, mine)
    everyone = world.allgather(ran)
    assert all(e == everyone[0] for e in everyone), "ranks ran different variants"

    shared = comm.empty(n, np.float32)

    def never():
        for i in range(4 * B):
            a = xs[r].copy()
            comm.allreduce(a, out=a, algorithm="shm")
            shared[...] = xs[r]
            comm.allreduce(shared, out=shared)
            comm.allreduce(xs[r][:(1 << 20) // 4])
            if not (np.array_equal(a, want) and np.array_equal(shared, want)):
                bad.append(i)

    events = traced(comm, never)
    assert not bad, bad
    assert all(e["algorithm"] == "shm" for e in events if e["collective"] == "allreduce"), events


def test_calls_in_place_and_not_share_a_comparison_elsewhere(fresh, world):
    """Where the ring is not offered (allreduce of 1 MiB), calls in place and
    out of place alternating are one size class: one comparison in turn
    over both forms, not one for each."""
    comm, P, r = fresh, fresh.size, fresh.rank
    n = (1 << 20) // 4
    xs = inputs("tuner_forms", np.dtype(np.float32), (n,), "small", P)
    want = reduce_ref(xs, "sum")
    offered = _offered(comm, "allreduce")
    bad = []

    def calls():
        for i in range(len(offered) * (1 + K)):
            a = xs[r].copy()
            got = comm.allreduce(a, out=a) if i % 2 else comm.allreduce(a)
            if not np.array_equal(got, want):
                bad.append(i)

    ran = [_variant(s) for c, s in _traced(comm, calls) if c == "allreduce"]
    assert not bad, bad
    assert ran == in_turn(offered, 1 + K), ran


def test_reduce_under_both_staged_variants(fresh, world):
    """reduce is staged on any node; from 16 KiB it tries staging with
    streaming stores too: numpy's result on the root from every root, odd
    sizes past a slot, sum and average."""
    from mpi_helpers import Checker

    comm, P, r = fresh, fresh.size, fresh.rank
    check, seen = Checker(P), set()
    for root in range(P):
        for op, nbytes in (("sum", (1 << 20) + 4 * 5), ("avg", (3 << 20) + 4 * 77)):
            n = nbytes // 4
            xs = inputs(("tuner_reduce", root, op), np.dtype(np.float32), (n,), "small", P)
            want = reduce_ref(xs, op)

            def calls():
                for i in range(2 * B + K):
                    got = comm.reduce(xs[r], root=root, op=op)
                    if r == root:
                        check.expect(f"root {root} {op} {n} call {i}", got, want,
                                     "tol" if op == "avg" else "exact", dtype=np.dtype(np.float32))
                    elif got is not None:
                        check.fail(f"root {root} call {i}", "a non-root got a result")

            seen |= {_variant(s) for c, s in _traced(comm, calls) if c == "reduce"}
    assert not check.failures, check.failures[:5]
    assert seen == {ST, SS}, seen


def test_a_call_is_timed_to_its_last_rank_s_end(fresh, world):
    """Node rank 0 times a call to the end of the last rank to finish it,
    not to its own end: a staged schedule lets rank 0 leave while its peers
    still copy out, and where nothing follows at once (here a barrier of
    the caller's own) that tail would be lost. The last rank pauses 20 ms
    at the end of each call; every variant's times must show it."""
    comm, P, r = fresh, fresh.size, fresh.rank
    delay = 0.02
    if r == P - 1:
        comm._core.set_finish_delay(delay)
    part = np.ones((512 << 10) // 4, np.float32)
    for _ in range(3 * B):
        world.Barrier()
        comm.allgather(part)
    world.Barrier()
    comm.barrier()  # the last allgather's time is taken as this one arrives
    comm._core.set_finish_delay(0)
    if r == 0:
        medians = {v: comm._core.tuned_median(_core.Kind.allgather, part.nbytes, v) for v in FIRST}
        assert all(m >= 0.9 * delay for m in medians.values()), medians
    else:
        assert comm._core.tuned_median(_core.Kind.allgather, part.nbytes, ST) == -1


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
    """Every size class starts with a comparison of the variants in turn,
    so a new communicator runs all three: allgather's single copy is reached on
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
                for i in range(3 * B):
                    fresh_result = comm.allgather(xs[r])
                    same = comm.allgather(xs[r], out=out) is out
                    if not (same and np.array_equal(fresh_result.view(np.uint8), want.view(np.uint8))
                            and np.array_equal(out.view(np.uint8), want.view(np.uint8))):
                        bad.append((str(dtype), n, i))

            events = _traced(comm, calls)
            seen[(str(dtype), n)] = {_variant(s) for c, s in events if c == "allgather"}
    assert not bad, bad
    # The three sizes fall in three size classes, each new to this
    # communicator for the first dtype; later dtypes reuse what was learnt.
    first = [v for (d, _), v in seen.items() if d == "uint8"]
    assert first == [set(FIRST)] * 3, seen
    everyone = world.allgather({k: sorted(int(x) for x in v) for k, v in seen.items()})
    assert all(e == everyone[0] for e in everyone), everyone


def test_broadcast_both_variants_on_more_ranks(fresh, world):
    """On nodes of more than two ranks broadcast from 256 KiB is offered the
    single copy (every rank reads the root's array): every variant, from
    every root, odd sizes past two slots, the root's array unchanged."""
    comm, P, r = fresh, fresh.size, fresh.rank
    if P == 2:
        pytest.skip("two ranks' broadcast always takes its single copy (test_broadcast_single_copy.py)")
    bad, seen = [], set()
    for root in range(P):
        for nbytes in ((256 << 10) + 5, (3 << 20) + 77):
            xs = inputs(("tuner_bcast", root, nbytes), np.dtype(np.uint8), (nbytes,), "bits", P)

            def calls():
                for i in range(3 * B):
                    b = xs[root].copy() if r == root else np.zeros(nbytes, np.uint8)
                    got = comm.broadcast(b, root=root)
                    if not (got is b and np.array_equal(b, xs[root])):
                        bad.append((root, nbytes, i))

            events = _traced(comm, calls)
            seen |= {_variant(s) for c, s in events if c == "broadcast"}
    assert not bad, bad
    assert seen == set(FIRST), seen
