"""A parameter-server worker or server that stops for good is reported within
the timeout, never a hang: runs tests/fault_scripts/ps_faults.py under mpiexec
with one rank stopped (SIGSTOP: to its peers a dead process) and reads what
every other rank raised. A SIGKILLed rank ends the whole job (Hydra's rule).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from mpirun import ROOT, launch, mpich_segments, mpiexec, remove_left_segments

SCRIPT = os.path.join("tests", "fault_scripts", "ps_faults.py")
TIMEOUT = 3.0  # the parameter server's timeout in the script
# Scheduling slack on a shared two-core machine, on top of the timeout.
SLACK = 1.5

pytestmark = pytest.mark.mpi


def run_stopped(tmp_path, P, case, mode, layout, limit=90):
    """Launches the script, waits for every survivor's report (or `limit`
    seconds), then kills the job. Returns {rank: report}."""
    victim = (P - 2 if layout == "dedicated" else P - 1) if case == "worker" else P - 1
    args = [SCRIPT, case, mode, layout, str(TIMEOUT)]
    return victim, run_job(tmp_path, P, args, victim, limit)


def run_job(tmp_path, P, args, victim, limit, env_extra=None):
    """Runs `args` (a script and its arguments, OUTDIR appended) on P ranks
    until every rank but `victim` has written OUTDIR/rank-R.json (or `limit`
    seconds), then kills the job. Returns {rank: report}."""
    outdir = tmp_path / "out"
    outdir.mkdir()
    cmd = [mpiexec(), "-n", str(P), sys.executable, *args, str(outdir)]
    env = dict(os.environ)
    for k in ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "DISTML_TIMEOUT", "DISTML_CHECK"):
        env.pop(k, None)
    env.update(env_extra or {})
    survivors = [r for r in range(P) if r != victim]
    segments = mpich_segments()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    start = time.monotonic()
    try:
        while time.monotonic() - start < limit:
            if all((outdir / f"rank-{r}.json").exists() for r in survivors) or proc.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        # The stopped rank never finishes: end the job (continue first, so
        # the kill is delivered to a running process group).
        if not all((outdir / f"rank-{r}.json").exists() for r in survivors) and proc.poll() is None:
            # A hang: ranks that run ps_lost_worker.py dump their stacks into
            # the output first (faulthandler on SIGUSR1).
            try:
                os.killpg(proc.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
            time.sleep(2)
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        output, _ = proc.communicate()
        remove_left_segments(segments)
    reports = {}
    for r in survivors:
        path = outdir / f"rank-{r}.json"
        assert path.exists(), f"rank {r} never reported within {limit}s (a hang); output:\n{output[-5000:]}"
        reports[r] = json.loads(path.read_text())
    return reports


def names(msg, rank):
    return re.search(rf"\[(?:[0-9, ]*, )?{rank}(?:, [0-9, ]*)?\]", msg) is not None


@pytest.mark.parametrize("P,mode", [(3, "sync"), (4, "bounded")])
def test_stopped_worker_sync_modes_raise_naming_it(tmp_path, P, mode):
    victim, reports = run_stopped(tmp_path, P, "worker", mode, "dedicated")
    for r, rep in reports.items():
        assert rep["saw"] == "CommTimeoutError", rep
        assert names(rep["msg"], victim) and "to push clock" in rep["msg"], rep
        if rep["stage"] == "train":  # workers: the pull that waited for the victim
            assert rep["seconds"] <= TIMEOUT + SLACK, rep


def test_stopped_worker_async_others_train_on_then_close_names_it(tmp_path):
    victim, reports = run_stopped(tmp_path, 3, "worker", "async", "dedicated")
    worker, server = reports[0], reports[2]
    # The survivor trained on while the victim was stopped (the script's 40
    # steps, 37 of them after the victim's last), then close() reported it.
    assert worker["steps"] == 40 and worker["stage"] == "close", worker
    for rep in (worker, server):
        assert rep["saw"] == "CommTimeoutError", rep
        assert names(rep["msg"], victim) and "to close" in rep["msg"], rep
    assert worker["seconds"] <= TIMEOUT + SLACK, worker


@pytest.mark.parametrize("mode,layout", [("sync", "dedicated"), ("async", "colocated")])
def test_stopped_server_raises_on_every_worker(tmp_path, mode, layout):
    victim, reports = run_stopped(tmp_path, 3, "server", mode, layout)
    for r, rep in reports.items():
        assert rep["saw"] == "CommTimeoutError", rep
        # Named as the server it waited for, or as the peer its own (colocated)
        # server gave up on.
        assert "parameter server" in rep["msg"] and names(rep["msg"], victim), rep
        assert rep["seconds"] <= TIMEOUT + SLACK, rep


def test_killed_rank_ends_the_job(tmp_path):
    result = launch(3, [SCRIPT, "worker", "sync", "dedicated", str(TIMEOUT), str(tmp_path), "KILL"], timeout=90)
    assert not result.hung, result.describe()
    assert result.returncode != 0, result.describe()
    assert (tmp_path / "victim.json").exists(), result.describe()


LOST_SCRIPT = os.path.join("tests", "fault_scripts", "ps_lost_worker.py")
# A survivor's step that waited behind the stalled one goes on at the
# server's verdict, 3/4 of the timeout after the victim's last progress, and
# must end within the timeout from its own start: the steps queued ahead of
# it must take less than 1/4 of it.
LOST_TIMEOUT = 8.0


@pytest.mark.parametrize("P,servers,call,piece", [
    (4, 1, "step", 256 * 1024), (4, 2, "step", 256 * 1024), (4, 1, "pull", 256 * 1024),
    # Small messages, each taking one of MPICH's 64 shared-memory cells of
    # the server's until the victim receives it: 8 KiB pieces (1025 a
    # push), and a pull of 1048 arrays of 8000 B. Before the server kept
    # at most csrc/ps/wire.h's kReplyWindow of them under way towards one
    # worker, the victim held every cell and the survivors timed out.
    (4, 1, "step", 8 * 1024), (4, 1, "pull-small-arrays", 256 * 1024)])
def test_async_worker_stopped_mid_transfer_is_lost_alone(tmp_path, P, servers, call, piece):
    """A worker stopped while its step's pieces are under way (its push and
    its reply), or its pull's reply: the servers give up on it alone; the
    other workers train on, see it in stats()["lost_workers"], and their
    updates move the parameters as they should; the victim's last update
    reached each element whole or not at all, in whole pieces; close()
    raises naming it without waiting for a verdict. (Before, the server
    that stalled failed its whole shard for every worker.)"""
    victim = P - servers - 1
    # 8 MiB in 256 KiB pieces: 33 pieces a push with one server, 17 with two
    # (or in `piece`s).
    reports = run_job(tmp_path, P, [LOST_SCRIPT, str(servers), str(LOST_TIMEOUT), "8", call], victim, limit=120,
                      env_extra={"DISTML_PS_PIECE_BYTES": str(piece)})
    workers = [r for r in range(P - servers) if r != victim]
    for r in workers:
        rep = reports[r]
        assert rep["train_error"] is None, rep
        assert rep["victim_caught"], rep  # it stopped in the middle of a step
        assert rep["lost_workers"] == [victim], rep
        assert len(rep["checks"]) >= 12 and all(rep["checks"]) and not rep["problems"], rep
        assert rep["close"] == "CommTimeoutError" and names(rep["close_msg"], victim), rep
        # The servers knew: no verdict on the close was waited for.
        assert rep["close_seconds"] < 0.75 * LOST_TIMEOUT, rep
    for r in range(P - servers, P):
        rep = reports[r]
        assert rep["saw"] == "CommTimeoutError" and names(rep["msg"], victim), rep
