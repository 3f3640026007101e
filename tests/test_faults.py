"""Fault injection at P = 2, 3, 4: mismatched ranks, a rank that stops
arriving, a rank killed mid-collective, abort, use after free, bad input.

Each test launches tests/fault_scripts/faults.py under mpiexec with a time
limit and asserts on what every rank reported (a rank that reports nothing
fails the test as surely as a wrong exception). Set DISTML_FAULT_TABLE to a
file name to get the fault table (case, what each rank saw, how long it took)
appended there as markdown rows.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

import pytest

from mpirun import launch, seen, table_row
from distml.elastic._run import _never_arrived

SCRIPT = os.path.join("tests", "fault_scripts", "faults.py")
SIZES = [2, 3, 4]
TIMEOUT = 2.0  # the communicators' timeout in faults.py

pytestmark = pytest.mark.mpi


def run(P, case, *variants, limit, **kw):
    return launch(P, [SCRIPT, case, *variants], timeout=limit, **kw)


def by_variant(records):
    groups = defaultdict(list)
    for r in records:
        groups[r.get("variant")].append(r)
    return groups



# ---- (a) mismatches ------------------------------------------------------------


def _check_mismatches(result, P, label):
    assert not result.hung and result.returncode == 0, result.describe()
    groups = by_variant(result.where(case="mismatch"))
    assert len(groups) == 2 * 11 * len({0, P - 1}), result.describe()
    for variant, recs in groups.items():
        assert sorted(r["rank"] for r in recs) == list(range(P)), f"{variant}: not every rank reported"
        slowest = max(r["seconds"] for r in recs)
        table_row(f"mismatch {label}: {variant}", P, seen(recs), f"{slowest * 1e3:.1f} ms",
                  "next collective: " + ("ok" if all(r["after"] == "ok" for r in recs) else "FAILED"))
        for r in recs:
            assert r["saw"] == "MismatchError", f"{variant}, rank {r['rank']}: {r['saw']}: {r['msg']}"
            # The message names the field, and the odd rank beside its value.
            assert f" {r['field']}: " in r["msg"], f"{variant}: field not named: {r['msg']}"
            assert re.search(rf"[:;] {re.escape(r['value'])} on rank {r['odd']}(?!\d)", r["msg"]), \
                f"{variant}: odd rank not named: {r['msg']}"
            assert r["seconds"] < 1.0, f"{variant}, rank {r['rank']}: took {r['seconds']:.2f}s"
            assert r["after"] == "ok", f"{variant}, rank {r['rank']}: next collective: {r['after']}"


@pytest.mark.parametrize("P", SIZES)
def test_mismatch_every_rank_raises(P):
    _check_mismatches(run(P, "mismatch", limit=90), P, "one node")


def test_mismatch_two_fake_nodes():
    # MPICH sees two nodes: no shared memory for arrival, so the check goes
    # through the fingerprint allreduce (no timeout) and rank 0 (timeout).
    P = 4
    result = run(P, "mismatch", limit=90, env={"MPIR_CVAR_NUM_CLIQUES": "2"})
    _check_mismatches(result, P, "two fake nodes")


# ---- (b) a rank that stops arriving -------------------------------------------------


def _check_stall(result, P, label):
    assert not result.hung, result.describe()
    assert result.returncode == 0, result.describe()
    for variant, recs in by_variant(result.where(case="stall")).items():
        if variant is None:
            continue
        assert sorted(r["rank"] for r in recs) == list(range(P)), f"{variant}: not every rank reported"
        sleeper = recs[0]["sleeper"]
        waiters = [r for r in recs if r["role"] == "waiter"]
        assert len(waiters) == P - 1
        for r in recs:
            assert r["warm"] == "ok", f"{variant}: warm-up collective on rank {r['rank']}: {r['warm']}"
            assert r["timeout"] == TIMEOUT
            assert r["check"] is (variant != "nocheck"), f"{variant}: check={r['check']}"
        warned = []
        for r in waiters:
            assert r["saw"] == "CommTimeoutError", f"{variant}, rank {r['rank']}: {r['saw']}: {r['msg']}"
            # Without shared memory, rank 0 collects arrivals; when it is the
            # absent one, the others hear nothing from it and say so.
            named = f"rank {sleeper} never arrived" in r["msg"] or (
                sleeper == 0 and "rank 0, which collects arrivals, did not answer" in r["msg"])
            assert named, f"{variant}: {r['msg']}"
            assert TIMEOUT - 0.05 < r["seconds"] < TIMEOUT + 1.0, f"{variant}, rank {r['rank']}: {r['seconds']:.2f}s"
            assert r["later"] == "CommunicatorError" and r["later_seconds"] < 0.1, \
                f"{variant}, rank {r['rank']}: later call: {r['later']} {r['later_msg']}"
            assert "broken" in r["later_msg"]
            warned += [(t, line) for t, line in r.get("stderr", []) if "distml: warning" in line]
        if sleeper != 0 or label == "one node":
            # Rank 0 warns on stderr before the timeout, naming the same rank
            # (on one node, the lowest-numbered rank present: rank 1 when
            # rank 0 is the absent one).
            assert warned, f"{variant}: no stall warning on stderr"
            t, line = warned[0]
            assert t < TIMEOUT and f"rank {sleeper} to arrive" in line, f"{variant}: {t}s {line}"
        if variant.startswith("late"):
            assert [r["rank"] for r in recs if r["role"] == "late"] == [sleeper], f"{variant}: no late rank reported"
        for r in recs:
            if r["role"] == "late":
                # It arrives after the others gave up: it must time out too, not hang or succeed.
                assert r["saw"] == "CommTimeoutError" and r["later"] == "CommunicatorError", r
        slowest = max(r["seconds"] for r in waiters)
        note = f"warning at {warned[0][0]:.2f}s" if warned else "no warning (rank 0, the one that warns, is absent)"
        table_row(f"stall {label}: {variant} (rank {sleeper} absent)", P,
                  seen(recs) + " then " + seen(waiters, "later"), f"{slowest:.2f} s", note)
    exits = result.where(case="stall", role="exit")
    assert len(exits) == P, result.describe()
    finalize = result.ended - max(r["t"] for r in exits)
    table_row(f"stall {label}: clean exit after the timeouts", P, f"exit code {result.returncode}",
              f"{finalize:.2f} s from the last rank's end of main to mpiexec's exit", "")
    assert finalize < 5.0, f"exit took {finalize:.1f}s"


@pytest.mark.parametrize("P", SIZES)
def test_stalled_rank_times_out(P):
    _check_stall(run(P, "stall", limit=90), P, "one node")


def test_stalled_rank_two_fake_nodes():
    # Arrival through rank 0 by message instead of shared memory.
    P = 4
    # root_absent last: see test_stale_arrivals_after_root_absent_timeout.
    result = run(P, "stall", "auto", "mpi", "nocheck", "root_absent", limit=60,
                 env={"MPIR_CVAR_NUM_CLIQUES": "2"})
    _check_stall(result, P, "two fake nodes")


def test_stale_arrivals_after_root_absent_timeout():
    P = 4
    result = run(P, "stall", "root_absent", "auto", limit=60, env={"MPIR_CVAR_NUM_CLIQUES": "2"})
    assert not result.hung, result.describe()
    waiters = result.where(case="stall", variant="auto", role="waiter")
    assert len(waiters) == P - 1, result.describe()
    table_row("stall, two fake nodes: a new communicator after a root_absent timeout", P,
              "; ".join(f"r{r['rank']}: {r['msg'][:90]}" for r in waiters), "", "")
    for r in waiters:
        assert f"rank {P - 1} never arrived" in r["msg"], r["msg"]


# ---- (c) a rank killed by SIGKILL -------------------------------------------------------


def _shm_listing():
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        pytest.skip("no /dev/shm")


def _mapped_anywhere(names):
    """Those of ``names`` some live process still maps or holds open."""
    live = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                text = f.read()
        except OSError:
            continue
        live.update(n for n in names if n in text)
    return live


@pytest.mark.parametrize("P", SIZES)
def test_killed_rank_ends_the_job(P):
    before = _shm_listing()
    result = run(P, "kill", limit=60)
    assert not result.hung, "mpiexec did not end the job after a rank was killed\n" + result.describe()
    assert result.returncode != 0, result.describe()
    ready = result.where(case="kill", role="ready")
    victim = result.where(case="kill", role="victim")
    assert len(ready) == P and len(victim) == 1, result.describe()
    to_end = result.ended - victim[0]["t"]
    assert to_end < 10.0, f"the job took {to_end:.1f}s to end after the kill"
    survivors = result.where(case="kill", role="survivor")
    # MPICH's launcher kills the survivors at once; any survivor that did get
    # to report must have raised, not completed or hung: a timeout, an MPI
    # error, or (single-copy shared memory) the core finding the peer gone.
    for r in survivors:
        assert r["saw"] in ("CommTimeoutError", "MPIError", "DistmlError"), r
    # Shared memory left behind: new files that no live process maps.
    new = _shm_listing() - before
    leaked = new - _mapped_anywhere(new)
    distml_names = {n for r in ready for n in r["distml_shm"]}
    mpi_init_names = {n for r in ready for n in r["mpi_init_shm"]}
    table_row("SIGKILL of one rank mid-allreduce (256 MiB, shm)", P,
              f"r{P - 1}: killed; others: " + ("; ".join(f"r{r['rank']}: {r['saw']}" for r in survivors)
                                               or "ended by mpiexec before their timeout"),
              f"{to_end:.2f} s from kill to mpiexec exit (code {result.returncode})",
              f"left in /dev/shm: {sorted(leaked) or 'nothing'} "
              f"(MPICH's own init segment: {sorted(leaked & mpi_init_names) or '-'})")
    assert not (leaked & distml_names), f"distml's shared windows left in /dev/shm: {leaked & distml_names}"
    # MPI_Init's segment (MPICH's, not distml's) stays behind after a SIGKILL;
    # remove it so that runs do not accumulate them, and report anything else.
    for name in leaked & mpi_init_names:
        try:
            os.unlink(os.path.join("/dev/shm", name))
        except OSError:
            pass
    other = leaked - mpi_init_names - distml_names
    assert not other, f"unexplained files left in /dev/shm: {other}"


# ---- (d) abort after a timeout ---------------------------------------------------------


@pytest.mark.parametrize("P", SIZES)
def test_abort_after_timeout_ends_every_rank(P):
    result = run(P, "abort", limit=60)
    assert not result.hung, "distml.abort() did not end the job\n" + result.describe()
    assert result.returncode != 0
    waiters = result.where(case="abort", role="waiter")
    assert sorted(r["rank"] for r in waiters) == list(range(P - 1)), result.describe()
    for r in waiters:
        assert r["saw"] == "CommTimeoutError" and f"rank {P - 1} never arrived" in r["msg"], r
        # What distml.elastic.run tells the launcher: the rank to count lost.
        assert _never_arrived(RuntimeError(r["msg"])) == [P - 1], r
    assert not result.where(case="abort", role="sleeper woke")
    assert not result.where(case="abort", role="waiter lived on")
    to_end = result.ended - min(r["t"] for r in waiters)
    table_row("distml.abort(3) on rank 0 after a timeout; last rank asleep for 120 s", P,
              seen(waiters) + f"; r{P - 1}: asleep, ended by the abort",
              f"{to_end:.2f} s from the timeout to mpiexec exit (code {result.returncode})", "")
    assert to_end < 10.0


# ---- (e) use after free, (f) bad input ----------------------------------------------------


@pytest.mark.parametrize("P", SIZES)
def test_use_after_free(P):
    result = run(P, "free", limit=60)
    assert result.returncode == 0, result.describe()
    groups = by_variant(result.where(case="free"))
    assert len(groups) == 10
    for variant, recs in groups.items():
        assert len(recs) == P, variant
        want = "ok" if variant.startswith("a new") else "CommunicatorError"
        assert all(r["saw"] == want for r in recs), f"{variant}: {seen(recs)}"
        slowest = max(r["seconds"] for r in recs)
        assert slowest < 0.1
        table_row(f"use after free: {variant}", P, seen(recs), f"{slowest * 1e3:.2f} ms", "")


@pytest.mark.parametrize("P", SIZES)
def test_bad_input_raises_before_communication(P):
    result = run(P, "badinput", limit=60)
    assert result.returncode == 0, result.describe()
    groups = by_variant(result.where(case="badinput"))
    assert len(groups) >= 27
    for variant, recs in groups.items():
        assert sorted(r["rank"] for r in recs) == list(range(P)), variant
        for r in recs:
            assert r["saw"] == r["expected"], f"{variant}, rank {r['rank']}: {r['saw']}: {r['msg']}"
            assert r["seconds"] < 0.5
            # Proof that nothing was sent: rank 0 raised the same error when
            # it alone made the call (a rank that began a collective alone
            # would have waited for the others until CommTimeoutError), and
            # a correct collective on the same communicator still matched.
            if r["rank"] == 0 and r["alone"] != "-":
                assert r["alone"] == r["expected"] and r["alone_seconds"] < 0.5, r
            assert r["after"] in ("ok", "-"), f"{variant}, rank {r['rank']}: next collective: {r['after']}"
        slowest = max(r["seconds"] for r in recs)
        table_row(f"bad input: {variant}", P, seen(recs) + f"; r0 alone: {recs[0]['alone']}",
                  f"{slowest * 1e3:.2f} ms", "next collective: ok")


@pytest.mark.parametrize("P", SIZES)
def test_bad_input_seen_by_some_ranks_only(P):
    # reduce's out= matters (and is checked) on the root only; broadcast's x
    # may be read-only on the root. With the same bad argument everywhere,
    # some ranks find it and the rest start the collective: those that find
    # it take part in the agreement as invalid and raise ValueError, the
    # rest raise MismatchError at once, with or without a timeout.
    result = run(P, "oneside", limit=60)
    assert result.returncode == 0, result.describe()
    for variant, recs in by_variant(result.where(case="oneside")).items():
        assert len(recs) == P
        raised = {r["rank"] for r in recs if r["saw"] == "ValueError"}
        waited = [r for r in recs if r["rank"] not in raised]
        assert raised and waited, f"{variant}: {seen(recs)}"
        for r in waited:
            assert r["saw"] == "MismatchError" and r["seconds"] < 1.0, r
            assert "invalid" in r["msg"], r
        table_row(f"bad input seen by some ranks: {variant}", P, seen(recs),
                  f"{max(r['seconds'] for r in recs):.2f} s", "")


# ---- exit with several communicators alive ---------------------------------------------------


def test_exit_with_several_live_communicators():
    P = 2
    result = run(P, "exit_many", "8", limit=15)
    table_row("exit with 8 communicators never freed", P,
              "hang in the exit handler" if result.hung else f"exit code {result.returncode}",
              f"{result.seconds:.1f} s (limit 15 s)", "")
    assert not result.hung, "the exit handler hung freeing the communicators"
    assert result.returncode == 0, result.describe()
