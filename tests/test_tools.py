"""The launcher (python -m distml.run), the timeline and python -m distml.info."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

import distml
from distml import run

OPEN_MPI_BANNER = """mpiexec (Open MPI) 4.1.5

Report bugs to https://www.open-mpi.org/community/help/
"""

HYDRA_BANNER = """HYDRA build details:
    Version:                                 4.2.1
    Release Date:                            unreleased
"""


def _fake_mpiexec(directory, banner: str) -> str:
    path = os.path.join(directory, "mpiexec")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n")
        f.write("if [ \"$1\" = \"--version\" ]; then\ncat <<'EOF'\n" + banner + "EOF\nexit 0\nfi\n")
        f.write("echo RAN \"$@\"\nexit 7\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_family_parsing():
    assert run.mpi_family(OPEN_MPI_BANNER) == ("Open MPI", "4.1.5")
    assert run.mpi_family(HYDRA_BANNER) == ("MPICH", "4.2.1")
    assert run.mpi_family("MPICH 5.0.2") == ("MPICH", "5.0.2")
    assert run.mpi_family("Open MPI v4.1.6, package: Open MPI")[0] == "Open MPI"
    assert run.mpi_family("Intel(R) MPI Library for Linux* OS, Version 2021.10")[0] == "Intel MPI"


def test_refuses_open_mpi_mpiexec_given_explicitly(tmp_path, capsys):
    fake = _fake_mpiexec(str(tmp_path), OPEN_MPI_BANNER)
    compiled = distml._core.compiled_mpi()
    if "open mpi" in compiled.lower():
        pytest.skip("distml itself is built against Open MPI here")
    code = run.main(["-n", "2", "--mpiexec", fake, "train.py"])
    err = capsys.readouterr().err
    assert code == 2
    assert "refusing" in err and "Open MPI" in err and compiled in err
    assert "RAN" not in err


def test_refuses_open_mpi_mpiexec_on_path(tmp_path, monkeypatch, capsys):
    if "open mpi" in distml._core.compiled_mpi().lower():
        pytest.skip("distml itself is built against Open MPI here")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_mpiexec(str(bin_dir), OPEN_MPI_BANNER)
    # An interpreter directory without mpiexec, so that PATH is consulted.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.delenv("DISTML_MPIEXEC", raising=False)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))
    code = run.main(["-n", "2", "train.py"])
    err = capsys.readouterr().err
    assert code == 2
    assert "refusing" in err and "from PATH" in err


def test_matching_launcher_runs_prints_and_forwards_exit_code(tmp_path):
    if "mpich" not in distml._core.compiled_mpi().lower():
        pytest.skip("the fake launcher speaks Hydra (MPICH)")
    fake = _fake_mpiexec(str(tmp_path), HYDRA_BANNER.replace("4.2.1", distml._core.compiled_mpi().split()[-1]))
    proc = subprocess.run([sys.executable, "-m", "distml.run", "-n", "3", "--mpiexec", fake, "script.py", "--lr", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7  # the fake mpiexec's exit code, forwarded
    assert f"distmlrun: {fake} -n 3 {sys.executable} script.py --lr 1" in proc.stderr
    assert "RAN -n 3" in proc.stdout
    assert "--oversubscribe" not in proc.stderr  # Hydra needs no extra flags


def test_open_mpi_defaults():
    cmd = run.build_command("/x/mpiexec", "Open MPI", 4, ["python", "a.py"], [], hostfile="hosts")
    assert cmd[:3] == ["/x/mpiexec", "-n", "4"]
    assert "--oversubscribe" in cmd and cmd[cmd.index("--bind-to") + 1] == "none"
    assert ("--allow-run-as-root" in cmd) == (os.geteuid() == 0)
    assert cmd[-2:] == ["python", "a.py"] and "--hostfile" in cmd


def _mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.access(beside, os.X_OK):
        pytest.skip("no mpiexec beside the interpreter")
    return beside


TIMELINE_SCRIPT = """
import numpy as np, distml
c = distml.init()
x = np.ones(1000, np.float32)
c.allreduce(x)
c.allreduce(x, op="max")
c.broadcast(x, root=0)
h = c.allgather(x, async_op=True)
h.wait()
c.barrier()
"""


@pytest.mark.parametrize("P", [1, 2])
def test_timeline_one_event_per_collective(tmp_path, P):
    script = tmp_path / "t.py"
    script.write_text(TIMELINE_SCRIPT)
    env = dict(os.environ, DISTML_TIMELINE=str(tmp_path / "trace-{rank}.json"))
    subprocess.run([_mpiexec(), "-n", str(P), sys.executable, str(script)], env=env, check=True, timeout=120)
    for r in range(P):
        with open(tmp_path / f"trace-{r}.json") as f:
            trace = json.load(f)
        events = trace["traceEvents"]
        top = [e for e in events if e.get("cat") == "collective"]
        assert [e["name"] for e in top] == ["allreduce", "allreduce", "broadcast", "allgather", "barrier"]
        assert all(e["ph"] == "X" and e["pid"] == r for e in top)
        assert top[0]["args"]["bytes"] == 4000 and top[0]["args"]["dtype"] == "float32"
        assert top[3]["args"]["async"] is True
        assert all(e["args"]["algorithm"] for e in top)
        assert all(e["args"]["schedule"].startswith(e["args"]["algorithm"]) for e in top)
        phases = [e for e in events if e.get("cat") == "phase"]
        for p in phases:  # nested inside its collective
            assert any(t["ts"] <= p["ts"] and p["ts"] + p["dur"] <= t["ts"] + t["dur"] + 1e-3 for t in top)
        assert {e["name"] for e in events if e["ph"] == "M"} >= {"process_name", "thread_name"}


def test_timeline_start_stop_in_process(tmp_path):
    import numpy as np

    comm = distml.Communicator()
    try:
        distml.timeline.start(str(tmp_path / "x.json"), comm=comm)
        comm.allreduce(np.ones(3))
        comm.allreduce(np.ones(3))
        path = distml.timeline.stop()
    finally:
        comm.free()
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    assert len([e for e in events if e.get("cat") == "collective"]) == 2
    assert not distml.timeline.is_active()


def test_info_prints_everything():
    proc = subprocess.run([sys.executable, "-m", "distml.info", "--json"], capture_output=True, text=True,
                          timeout=120, check=True)
    info = json.loads(proc.stdout)
    assert info["distml"] == distml.__version__
    assert info["mpi_compiled"] == distml._core.compiled_mpi()
    assert info["kernel_isa"] == distml._core.kernel_current_isa()
    assert info["shared_memory"] in ("one node", "hierarchical", "none")
    assert set(info["thresholds_bytes"]) >= {"allreduce_small_bytes"}
    assert info["tune_table"]
