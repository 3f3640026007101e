"""The benchmark's peers (distml.bench.peers): DeepSpeed's shm allreduce,
torch gloo and oneCCL give numpy's sums, as distml does, and DeepSpeed's
/dev/shm segments are gone afterwards; the peer table's medians and in-run
ratios.

The peers are optional (``pip install '.[peers]'``; oneCCL as
distml.bench.peers describes): without them the multi-rank checks skip and
say why.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil

import pytest

from distml import bench
from mpirun import launch


def _missing_peers() -> str:
    for module in ("torch", "deepspeed"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install '.[peers]')"
    if importlib.util.find_spec("ninja") is None and shutil.which("ninja") is None:
        return "ninja is not installed: DeepSpeed's extension cannot be built (pip install '.[peers]')"
    return ""


def _segments() -> set:
    return set(glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_distml_*"))


@pytest.mark.mpi
@pytest.mark.parametrize("P", [1, 2, 4])
def test_peers_match_numpy_and_distml(P):
    why = _missing_peers()
    if why:
        pytest.skip(why)
    before = _segments()
    counts = [1, 3, 1000, 300000, 9000001]  # DeepSpeed's small path, its large one, and more than one chunk
    # The first run may build DeepSpeed's extension (about two minutes on two cores).
    run = launch(P, ["-m", "distml.bench.peers", "--peers", "deepspeed,gloo", "--counts", ",".join(map(str, counts))],
                 timeout=900, env={"OMP_NUM_THREADS": "1"})
    assert not run.hung and run.returncode == 0, run.describe()
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("peer ")]
    want = [f"peer {peer}: P={P} count={c}: ok" for peer in ("deepspeed", "gloo") for c in counts]
    assert lines == want, run.describe()
    assert _segments() <= before, "DeepSpeed's shared-memory segments were left in /dev/shm"


def test_oneccl_prefix_relative_to_the_callers_directory(tmp_path, monkeypatch):
    from distml.bench.peers import OneCCL

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTML_ONECCL_PREFIX", os.path.join("venv", "oneccl"))
    assert OneCCL.prefix() == os.path.join(str(tmp_path), "venv", "oneccl")


@pytest.mark.mpi
@pytest.mark.parametrize("P", [1, 2, 4])
def test_oneccl_matches_numpy_and_distml(P):
    from distml.bench.peers import OneCCL, PeerUnavailable

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (pip install '.[peers]')")
    try:
        import numpy as np

        OneCCL().check_local(np.dtype("float32"), _OneNode())
    except PeerUnavailable as e:
        pytest.skip(str(e))
    counts = [1, 3, 1000, 300000, 9000001]
    # The first run builds the extension (about a minute on two cores).
    run = launch(P, ["-m", "distml.bench.peers", "--peers", "oneccl", "--counts", ",".join(map(str, counts))],
                 timeout=900)
    assert not run.hung and run.returncode == 0, run.describe()
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("peer ")]
    assert lines == [f"peer oneccl: P={P} count={c}: ok" for c in counts], run.describe()


class _OneNode:
    shared_memory = "one node"


def _row(impl, nbytes, time_s, P):
    return {"collective": "allreduce", "implementation": impl, "algorithm": "", "bytes": nbytes,
            "time_s": time_s, "P": P, "ratio": None, "busbw_GBps": 0.0}


def test_peers_table(tmp_path):
    """Times are medians over runs; ratios are taken inside each run, then
    their median (which differs from the ratio of the medians here)."""
    runs = [  # (distml in place, MPI, DeepSpeed) per run, 1 MiB, P=2
        (1.0, 2.0, 1.5),
        (2.0, 3.0, 1.0),
        (4.0, 4.0, 8.0),
    ]
    paths = []
    for k, (mine, mpi, ds) in enumerate(runs):
        rows = [_row("distml:in-place", 1 << 20, mine * 1e-6, 2), _row(bench.BASELINE, 1 << 20, mpi * 1e-6, 2),
                _row("deepspeed:shm", 1 << 20, ds * 1e-6, 2)]
        path = tmp_path / f"run{k}.json"
        path.write_text(json.dumps({"machine": {"P": 2}, "rows": rows}))
        paths.append(str(path))
    table = bench.peers_table(paths)
    assert "P=2: 3 run(s)" in table
    assert "| size | distml in place us | MPI_Allreduce us | DeepSpeed shm us | vs MPI_Allreduce | vs DeepSpeed shm |" in table
    # Times 2.0 / 3.0 / 1.5; ratios MPI (2, 1.5, 1) -> 1.5, DeepSpeed (1.5, 0.5, 2) -> 1.5.
    assert "| 1 MiB | 2.0 | 3.0 | 1.5 | 1.50 | 1.50 |" in table


def test_peers_table_memory_bound(tmp_path):
    """Rows that carry the memory bound get its time and each
    implementation's fraction of it (medians over runs) from 1 MiB; smaller
    rows leave those cells empty, and MPI's in-place row, which has no
    bound, gets no column."""
    paths = []
    for k, (reach_mine, reach_ds) in enumerate([(0.8, 0.4), (0.6, 0.5), (0.9, 0.3)]):
        rows = []
        for nbytes in (4096, 1 << 20):
            bound = nbytes / 1e10 * 2.5
            mine = _row("distml:in-place", nbytes, bound / reach_mine, 2)
            ds = _row("deepspeed:shm", nbytes, bound / reach_ds, 2)
            for r, reach in ((mine, reach_mine), (ds, reach_ds)):
                r.update(memory_bound_s=bound, of_memory_bound=reach)
            rows += [mine, ds, _row("mpi4py:in-place", nbytes, bound, 2)]
        path = tmp_path / f"run{k}.json"
        path.write_text(json.dumps({"machine": {"P": 2}, "rows": rows}))
        paths.append(str(path))
    table = bench.peers_table(paths)
    assert ("| size | distml in place us | MPI in place us | DeepSpeed shm us | vs MPI in place | vs DeepSpeed shm |"
            " memory bound us | distml of bound | DeepSpeed shm of bound |") in table
    line = next(l for l in table.splitlines() if l.startswith("| 1 MiB |"))
    assert line.endswith("| 262.1 | 0.80 | 0.40 |"), line
    small = next(l for l in table.splitlines() if l.startswith("| 4 KiB |"))
    assert small.endswith("|  |  |  |"), small
