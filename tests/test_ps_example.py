"""examples/train_digits_ps.py, as the README runs it: one worker slowed 3x,
in each consistency mode, colocated and with a dedicated server. Each run
must end, train the MLP, and show what its mode promises: bounded never
beyond its staleness, async letting the fast workers take more samples
than the slow one."""

from __future__ import annotations

import os
import re
import sys

import pytest

from mpirun import ROOT, launch

EXAMPLE = os.path.join(ROOT, "examples", "train_digits_ps.py")
LIMIT = 150  # seconds for one run (the machine is shared and small)

pytestmark = pytest.mark.mpi


def run(P, *args):
    result = launch(P, [EXAMPLE, "--slow-rank", "1", "--slow-factor", "3", "--epochs", "8", *args], timeout=LIMIT,
                    env={"OPENBLAS_NUM_THREADS": "1"})
    assert not result.hung and result.returncode == 0, result.describe()
    acc = re.search(r"test accuracy ([0-9.]+)", result.stdout)
    per = re.search(r"samples per worker: (.*); max staleness (\d+)", result.stdout)
    assert acc and per, result.describe()
    samples = {int(r): int(n) for r, n in re.findall(r"r(\d+): (\d+)", per.group(1))}
    return float(acc.group(1)), samples, int(per.group(2))


@pytest.mark.parametrize("servers", [None, 1])
def test_example_in_every_mode(servers):
    pytest.importorskip("sklearn")
    P = 3
    extra = [] if servers is None else ["--servers", str(servers)]
    workers = P - (servers or 0)
    sync_acc, sync_samples, sync_stale = run(P, "--mode", "sync", *extra)
    assert sorted(sync_samples) == list(range(workers))
    assert len(set(sync_samples.values())) == 1 and sync_stale == 0  # lock-step
    assert sync_acc >= 0.9
    bounded_acc, _, bounded_stale = run(P, "--mode", "bounded", "--staleness", "2", *extra)
    assert bounded_stale <= 2
    assert bounded_acc >= 0.85
    async_acc, async_samples, _ = run(P, "--mode", "async", *extra)
    # The slowed rank 1 computes each batch in three times the others' time.
    fast = [n for r, n in async_samples.items() if r != 1]
    assert async_samples[1] < min(fast), async_samples
    assert async_acc >= sync_acc - 0.05
