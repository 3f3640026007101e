"""One rank failing inside checkpoint.save or checkpoint.load, at P = 2, 3, 4.

Launches tests/fault_scripts/checkpoint_faults.py under mpiexec with a time
limit. The faults are real: a file size limit (RLIMIT_FSIZE) below the
victim's shard, a directory where rank 0 writes the manifest's temporary
file, a shard file missing or corrupted in one rank's own copy. Every rank
must raise CheckpointError naming the failed rank, with no hang, and the
previous checkpoint must stay as it was. The script's communicator has no
timeout, so a rank left waiting shows up as a hang. Set DISTML_FAULT_TABLE
to get the rows of the fault table (see test_faults.py).

The memory case saves and loads one large float32 parameter and bounds the
tracemalloc peak of each rank by its shard: a rank handles one shard-sized
array at a time, plus buffers smaller than half a shard.
"""

from __future__ import annotations

import os

import pytest

from mpirun import launch, table_row

SCRIPT = os.path.join("tests", "fault_scripts", "checkpoint_faults.py")
SAVE_CASES = {"disk_full:0": ("EFBIG", "File too large"), "disk_full:last": ("EFBIG", "File too large"),
              "commit:": ("EISDIR", "Is a directory")}
LOAD_CASES = {"load_missing:last": "is missing", "load_corrupt:0": "is corrupted"}
NUMEL = 50_000_000

pytestmark = pytest.mark.mpi


def _by_variant(records, case):
    groups = {}
    for r in records:
        if r["case"] == case:
            groups.setdefault(r["variant"], []).append(r)
    return groups


def _seen(recs):
    return "; ".join(f"r{r['rank']}: {r['saw']}" for r in sorted(recs, key=lambda r: r["rank"]))


@pytest.mark.parametrize("P", [2, 3, 4])
def test_one_rank_failing_fails_every_rank(tmp_path, P):
    args = [SCRIPT, str(tmp_path), *(c.rstrip(":") for c in SAVE_CASES), *LOAD_CASES, f"memory:{NUMEL}"]
    result = launch(P, args, timeout=150)
    assert not result.hung and result.returncode == 0, result.describe()

    saves = _by_variant(result.records, "save")
    assert sorted(saves) == sorted(SAVE_CASES), result.describe()
    for variant, (code, text) in SAVE_CASES.items():
        recs = saves[variant]
        assert sorted(r["rank"] for r in recs) == list(range(P)), f"{variant}: not every rank reported"
        victim = recs[0]["victim"]
        for r in recs:
            where = f"{variant}, rank {r['rank']}"
            assert r["saw"] == "CheckpointError", f"{where}: {r['saw']}: {r['msg']}"
            assert f"failed: rank {victim}: " in r["msg"] and text in r["msg"], f"{where}: {r['msg']}"
            if r["role"] == "victim":
                assert r["cause_errno"] == code, f"{where}: caused by {r['cause']} {r['cause_errno']}"
            assert r["files_unchanged"], f"{where}: files left behind: {r['files']}"
            assert r["previous"] == "intact", f"{where}: previous checkpoint {r['previous']}"
            assert r["after"] == "ok", f"{where}: the next save and load: {r['after']}"
        slowest = max(r["seconds"] for r in recs)
        what = {"disk_full": f"rank {victim}'s disk full (EFBIG) while writing its shard",
                "commit": "rank 0 cannot write the manifest (EISDIR)"}[variant.split(":")[0]]
        table_row(f"checkpoint.save: {what}", P, _seen(recs), f"{slowest * 1e3:.1f} ms",
                  "previous checkpoint intact, no files left; next save ok")

    loads = _by_variant(result.records, "load")
    assert sorted(loads) == sorted(LOAD_CASES), result.describe()
    for variant, text in LOAD_CASES.items():
        recs = loads[variant]
        assert sorted(r["rank"] for r in recs) == list(range(P)), f"{variant}: not every rank reported"
        victim = recs[0]["victim"]
        for r in recs:
            where = f"{variant}, rank {r['rank']}"
            assert r["saw"] == "CheckpointError", f"{where}: {r['saw']}: {r['msg']}"
            assert f"failed: rank {victim}: " in r["msg"], f"{where}: {r['msg']}"
            assert r["shard"] in r["msg"] and text in r["msg"], f"{where}: {r['msg']}"
            assert r["untouched"], f"{where}: parameters changed by the failed load"
            assert r["after"] == "ok", f"{where}: the next load: {r['after']}"
        slowest = max(r["seconds"] for r in recs)
        table_row(f"checkpoint.load: a shard {text.split()[-1]} in rank {victim}'s copy", P, _seen(recs),
                  f"{slowest * 1e3:.1f} ms", "nothing loaded on any rank; next load ok")

    memory = result.where(case="memory")
    assert sorted(r["rank"] for r in memory) == list(range(P)), result.describe()
    for r in memory:
        assert r["saw"] == "ok" and r["equal"], r
        shard_bytes = -(-r["numel"] // P) * r["itemsize"]
        bound = shard_bytes + shard_bytes // 2
        for phase in ("save_peak", "load_peak"):
            assert r[phase] < bound, (f"rank {r['rank']}: {phase} {r[phase] / 2**20:.1f} MiB, bound "
                                      f"{bound / 2**20:.1f} MiB (shard {shard_bytes / 2**20:.1f} MiB)")
