"""One rank's failure never strands the others: a rank out of memory for a
collective's scratch, a rank that fails after the ranks agreed to run a
collective (with and without a timeout), ranks whose settings would send them
down different schedules, and a communicator dropped by one rank's garbage
collector. Runs tests/fault_scripts/containment.py under mpiexec at P = 2..4
with a time limit; the fault table rows go where DISTML_FAULT_TABLE says.
"""

from __future__ import annotations

import os
import re

import pytest

from mpirun import launch, seen, table_row

SCRIPT = os.path.join("tests", "fault_scripts", "containment.py")
SIZES = [2, 3, 4]
TIMEOUT = 2.0  # the communicators' timeout in containment.py

pytestmark = pytest.mark.mpi


def run(P, case, *variants, limit, **kw):
    return launch(P, [SCRIPT, case, *variants], timeout=limit, **kw)


@pytest.mark.parametrize("variant", ["timeout", "notimeout"])
@pytest.mark.parametrize("P", SIZES)
def test_out_of_memory_on_one_rank(P, variant):
    result = run(P, "nomem", variant, limit=120)
    assert not result.hung and result.returncode == 0, result.describe()
    recs = result.where(case="nomem")
    groups = sorted({r["variant"] for r in recs})
    assert groups == [f"{variant}:result", f"{variant}:scratch"], result.describe()
    for group in groups:
        mine = [r for r in recs if r["variant"] == group]
        assert sorted(r["rank"] for r in mine) == list(range(P)), result.describe()
        for r in mine:
            if r["rank"] == r["starved"]:
                assert r["saw"] == "MemoryError", r
                if group.endswith("scratch"):
                    assert "scratch memory" in r["msg"], r
            else:
                assert r["saw"] == "MismatchError", r
                assert re.search(rf"out of memory[^;.]* on rank {r['starved']}(?!\d)", r["msg"]), r
            # Refused at the agreement (the type says so: a rank left waiting
            # would raise CommTimeoutError, or hang); the time only bounds it
            # on a loaded machine.
            assert r["seconds"] < 10.0, r
            assert r["after"] == "ok", r
        table_row(f"one rank out of memory ({group})", P, seen(mine),
                  f"{max(r['seconds'] for r in mine) * 1e3:.0f} ms", "next collective: ok")


@pytest.mark.parametrize("algorithm", ["auto", "halving_doubling"])
@pytest.mark.parametrize("P", SIZES)
def test_failure_after_agreement_with_timeout(P, algorithm):
    result = run(P, "inject", "timeout", algorithm, limit=120, env={"DISTML_INJECT_FAULT": "1:3"})
    assert not result.hung and result.returncode == 0, result.describe()
    recs = result.where(case="inject", role="after")
    assert sorted(r["rank"] for r in recs) == list(range(P)), result.describe()
    for r in recs:
        if r["rank"] == 1:
            assert r["saw"] == "DistmlError" and "injected fault" in r["msg"], r
            assert r["seconds"] < 5.0, r
        else:
            # Waiting for rank 1 inside the schedule: released by the deadline.
            assert r["saw"] == "CommTimeoutError", r
            assert r["seconds"] < TIMEOUT + 2.0, r
        # Broken everywhere: nothing of the abandoned collective can meet a later one.
        assert r["later"] == "CommunicatorError" and "broken" in r["later_msg"], r
    table_row(f"one rank fails after the agreement ({algorithm}, timeout 2 s)", P,
              seen(recs) + " then " + seen(recs, "later"),
              f"{max(r['seconds'] for r in recs):.2f} s", "")


@pytest.mark.parametrize("P", SIZES)
def test_failure_after_agreement_without_timeout_aborts(P):
    result = run(P, "inject", "notimeout", limit=120, env={"DISTML_INJECT_FAULT": "1:3"})
    assert not result.hung, result.describe()
    assert result.returncode != 0, result.describe()
    assert "distml: fatal:" in result.stderr and "injected fault" in result.stderr, result.describe()
    assert "aborting the job" in result.stderr, result.describe()
    before = result.where(case="inject", role="before")
    assert len(before) == P, result.describe()
    # Nobody got past the failed collective.
    assert not result.where(case="inject", role="after"), result.describe()
    took = result.ended - max(r["t"] for r in before)
    assert took < 30, f"the job took {took:.1f}s to end"
    table_row("one rank fails after the agreement (no timeout)", P, "job aborted, reason on stderr",
              f"{took:.2f} s to the end of mpiexec", f"exit code {result.returncode}")


@pytest.mark.parametrize("P", SIZES)
def test_settings_must_agree(P):
    result = run(P, "settings", limit=120)
    assert not result.hung and result.returncode == 0, result.describe()
    recs = result.where(case="settings")
    variants = sorted({r["variant"] for r in recs})
    assert variants == ["create:one_shot", "create:single_copy", "create:stream", "setter"], variants
    for variant in variants:
        group = [r for r in recs if r["variant"] == variant]
        assert sorted(r["rank"] for r in group) == list(range(P)), f"{variant}: {result.describe()}"
        for r in group:
            assert r["saw"] == "MismatchError", r
            if variant.startswith("create:"):
                assert r["var"] in r["msg"] and re.search(rf"on rank {r['odd']}(?!\d)", r["msg"]), r
            else:
                assert "settings:" in r["msg"] and re.search(rf"on rank {r['odd']}(?!\d)", r["msg"]), r
                assert r["after"] == "ok", r
            assert r["seconds"] < 10.0, r
        table_row(f"differing settings ({variant})", P, seen(group),
                  f"{max(r['seconds'] for r in group) * 1e3:.0f} ms", "")


def test_garbage_collected_communicator_does_not_wait_for_peers():
    P = 2
    result = run(P, "gcdrop", limit=60)
    assert not result.hung and result.returncode == 0, result.describe()
    dropper = result.where(case="gcdrop", role="dropper")
    assert len(dropper) == 1 and dropper[0]["collected"], result.describe()
    # The keepers sleep 5 s before anything: a collective in the destructor
    # would have waited for them.
    assert dropper[0]["seconds"] < 3.0, dropper
    # The communicator the keepers never freed is named at exit.
    assert "was never freed" in result.stderr and "containment.py" in result.stderr, result.describe()
    table_row("a communicator dropped by one rank's garbage collector", P,
              "dropper returns at once; keepers' copy named at exit as a leak",
              f"{dropper[0]['seconds'] * 1e3:.0f} ms", "")


def test_failed_creations_free_what_they_made():
    # Every rank fails inside the node group's constructor, after it has
    # duplicated a communicator and allocated a window. MPI has a few
    # thousand communicator contexts: leaking one per failure would turn the
    # later failures into "too many communicators" instead.
    P, rounds = 2, 2500
    result = launch(P, [os.path.join("tests", "fault_scripts", "create_fault.py"), str(rounds)], timeout=300,
                    env={"DISTML_INJECT_FAULT": "create"})
    assert not result.hung and result.returncode == 0, result.describe()
    recs = result.where(case="create")
    assert sorted(r["rank"] for r in recs) == list(range(P)), result.describe()
    for r in recs:
        assert list(r["saw"].values()) == [rounds], r
        assert "injected fault (DISTML_INJECT_FAULT=create)" in next(iter(r["saw"])), r
