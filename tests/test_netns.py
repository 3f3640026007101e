"""Every collective across virtual hosts: tools/netns_cluster.sh makes
network namespaces on a bridge, so MPI sees separate nodes talking TCP, and
the multi-rank groups run there as 2 hosts x 2 ranks and 4 hosts x 1 rank.
Needs root and network namespaces; skipped, saying why, where either is
missing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from mpirun import mpiexec

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLUSTER = os.path.join(ROOT, "tools", "netns_cluster.sh")
FILES = ["tests/mpi/test_data_movement.py", "tests/mpi/test_reductions.py", "tests/mpi/test_api.py",
         "tests/mpi/test_carried.py"]

pytestmark = pytest.mark.mpi


def _env():
    env = dict(os.environ)
    for k in ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "DISTML_TIMEOUT"):
        env.pop(k, None)
    env["MPIEXEC"] = mpiexec()
    # Namespaces of this run only, so that runs side by side do not meet.
    env["DISTML_NETNS_PREFIX"] = f"dt{os.getpid() % 100000}"
    return env


def _usable() -> str:
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        ok = subprocess.run([CLUSTER, "check"], env=_env(), capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"tools/netns_cluster.sh check failed: {e}"
    return "" if ok else "network or UTS namespaces cannot be made here"


# Each rank's hostname, node size, and whether distml took the nodes for a
# hierarchical layout.
_WHERE = (
    "import socket, distml; from mpi4py import MPI; "
    "c = distml.Communicator(); n = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED); "
    "rows = MPI.COMM_WORLD.gather((socket.gethostname(), n.size, c._core.hierarchical)); c.free(); "
    "print(''.join(f'WHERE {h} {s} {x}\\n' for h, s, x in rows or []), flush=True)"
)


def _run(hosts, per_host, program, limit, extra_env=None):
    cmd = [CLUSTER, "run", str(hosts), "--ranks-per-host", str(per_host), "--", *program]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**_env(), **(extra_env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        # The script's own trap removes the namespaces on SIGTERM.
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"hang: {' '.join(cmd)}\n{out[-20000:]}", pytrace=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{out[-20000:]}"
    return out


@pytest.mark.parametrize("hosts,per_host", [(2, 2), (4, 1)], ids=["2x2", "4x1"])
def test_collectives_across_hosts(hosts, per_host):
    why = _usable()
    if why:
        pytest.skip(why)
    # The hosts are nodes to MPI and to distml: per_host ranks share each
    # one (shared memory inside a host, TCP between hosts).
    out = _run(hosts, per_host, [sys.executable, "-c", _WHERE], limit=60)
    # (Ranks' lines may interleave in mpiexec's output.)
    seen = re.findall(r"WHERE (\S+) (\d+) (True|False)", out)
    assert len(seen) == hosts * per_host, out
    assert len({host for host, _, _ in seen}) == hosts, out
    assert all(int(size) == per_host for _, size, _ in seen), out
    assert all(hier == str(per_host > 1) for _, _, hier in seen), out
    out = _run(hosts, per_host, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FILES], limit=300)
    assert " passed" in out and "failed" not in out, out[-20000:]
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert _env()["DISTML_NETNS_PREFIX"] not in left, f"namespaces left behind:\n{left}"


@pytest.mark.parametrize("hosts,per_host", [(2, 2), (4, 1)], ids=["2x2", "4x1"])
def test_carried_agreement_without_timeout(hosts, per_host):
    # The multi-rank groups above run with a timeout (arrival through rank 0);
    # the library's default has none, and small allreduces then carry the
    # fingerprint check in recursive doubling's messages over TCP.
    why = _usable()
    if why:
        pytest.skip(why)
    out = _run(hosts, per_host, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 "tests/mpi/test_carried.py", "tests/mpi/test_errors.py"],
               limit=300, extra_env={"DISTML_TEST_DEFAULT_CONFIG": "1"})
    assert " passed" in out and "failed" not in out, out[-20000:]
