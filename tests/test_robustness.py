"""Large counts, flat memory over many collectives, and argument fuzzing,
each launched under mpiexec with a time limit.

- Counts above 2**31 int8 elements at P = 2: allreduce (in place),
  broadcast, allgather (output above 2**31) and reduce_scatter with the
  default algorithm (about a minute, 3 GiB per rank at the peak). Every
  other algorithm of each collective too when DISTML_LARGE_TESTS=1
  (several minutes).
- 10,000 mixed collectives at P = 2 leave the resident set flat.
- tests/mpi/test_fuzz.py (hypothesis) at P = 1 and 2 under the multi-rank
  harness.
"""

from __future__ import annotations

import os
import sys

import pytest

from mpirun import launch, table_row

pytestmark = pytest.mark.mpi

LARGE_ALL = os.environ.get("DISTML_LARGE_TESTS") == "1"
ALGORITHMS = {
    "allreduce": ["auto", "ring", "recursive_doubling", "halving_doubling", "mpi"],
    "broadcast": ["auto", "tree", "scatter_allgather", "mpi"],
    "allgather": ["auto", "ring", "mpi"],
    "reduce_scatter": ["auto", "ring", "mpi"],
}


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def test_counts_above_2_31():
    if _mem_available() < 8 * 2**30:
        pytest.skip("needs about 8 GiB of free memory (3 GiB per rank at the peak, plus shared slots)")
    specs = [f"{c}:{a}" for c, algs in ALGORITHMS.items() for a in (algs if LARGE_ALL else algs[:1])]
    result = launch(2, [os.path.join("tests", "fault_scripts", "large.py"), *specs],
                    timeout=1800 if LARGE_ALL else 300)
    assert not result.hung and result.returncode == 0, result.describe()
    records = result.where(case="large")
    assert len(records) == 2 * len(specs), result.describe()
    for r in records:
        table_row(f"large: {r['collective']} {r['algorithm']} of {r['count']} int8", 2, f"r{r['rank']}: "
                  f"{'all correct' if r['bad'] == 0 else str(r['bad']) + ' wrong'}", f"{r['seconds']:.1f} s", "")
        assert r["count"] > 2**31
        assert r["bad"] == 0, f"{r['collective']} {r['algorithm']}: {r['bad']} wrong elements on rank {r['rank']}"
        if "samples" in r:
            assert r["samples"] == r["expect"], r


def test_resident_memory_stays_flat():
    result = launch(2, [os.path.join("tests", "fault_scripts", "memory.py"), "10000"], timeout=240)
    assert not result.hung and result.returncode == 0, result.describe()
    records = result.where(case="memory")
    assert len(records) == 2, result.describe()
    for r in records:
        growth = r["rss_end"] - r["rss_after_warmup"]
        table_row("memory: 10,000 mixed collectives", 2,
                  f"r{r['rank']}: RSS {r['rss_after_warmup'] / 2**20:.1f} -> {r['rss_end'] / 2**20:.1f} MiB",
                  f"{r['seconds']:.1f} s", "")
        # A leak of even a few hundred bytes per collective would pass 4 MiB.
        assert growth < 4 * 2**20, f"rank {r['rank']}: resident memory grew by {growth / 2**20:.1f} MiB"


@pytest.mark.parametrize("P", [1, 2])
def test_fuzz_under_mpiexec(P):
    result = launch(P, ["-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.join("tests", "mpi", "test_fuzz.py")],
                    timeout=180)
    assert not result.hung, result.describe()
    assert result.returncode == 0, result.describe()
    table_row("hypothesis fuzz of collective arguments", P, "all ranks passed", f"{result.seconds:.1f} s", "")
