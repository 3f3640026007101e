"""Runs the multi-rank suite in tests/mpi under mpiexec at P = 1, 2, 3, 4.

Each case launches ``mpiexec -n P python -m pytest tests/mpi/<group>`` and
requires exit code 0 from every rank. A hang is a failure: the launch has a
time limit, after which its whole process group is killed. The inner output
(every rank's) is shown when a case fails.

P = 3 is the non-power-of-two case; P = 4 oversubscribes a two-core machine,
which is slow but legal with MPICH's hydra launcher.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mpirun import mpiexec

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
INNER = os.path.join(HERE, "mpi")

# Inner files, grouped so that each launch pays pytest's start-up once but a
# hang or crash in one group does not hide the results of the others. Files
# in tests/mpi that no group names run in the group "other".
GROUPS = {
    "reductions": ["test_reductions.py"],
    "data_movement": ["test_data_movement.py", "test_variable.py", "test_large.py"],
    "api": ["test_api.py", "test_errors.py", "test_communicators.py", "test_containment.py"],
    "ps": ["test_ps.py"],
    "buffers": ["test_buffers.py"],
}


def _other_files():
    named = {f for files in GROUPS.values() for f in files}
    found = sorted(f for f in os.listdir(INNER) if f.startswith("test_") and f.endswith(".py"))
    return [f for f in found if f not in named]


# MPICH's MPIR_CVAR_NUM_CLIQUES=2 splits the machine into two pretend nodes:
# no communicator is on "one node", so "auto" chooses by message size instead
# of shared memory, and at P = 4 (two nodes of two) the hierarchical
# allreduce runs.
TWO_NODES = {"MPIR_CVAR_NUM_CLIQUES": "2"}

# (P, label, files, extra pytest arguments, extra environment)
CASES = [(P, name, files, [], {}) for P in (1, 2, 3, 4) for name, files in GROUPS.items()]
if _other_files():
    CASES += [(P, "other", _other_files(), [], {}) for P in (1, 2, 3, 4)]
CASES += [
    # One launch per group, so that each has its own time limit.
    *[(2, f"two_nodes-{name}", files, [], TWO_NODES) for name, files in GROUPS.items()],
    (4, "two_nodes-allreduce", ["test_reductions.py", "test_api.py", "test_communicators.py"],
     ["-k", "allreduce or communicators"], TWO_NODES),
]

# The same groups in the library's default configuration (no communicator
# timeout, see tests/mpi/conftest.py), on one node and on two pretend nodes,
# where arguments are compared by the fingerprint check.
DEFAULT_CONFIG = {"DISTML_TEST_DEFAULT_CONFIG": "1"}
CASES += [(P, f"default_config-{name}", GROUPS[name], [], DEFAULT_CONFIG)
          for P in (2, 4) for name in ("reductions", "api")]
CASES += [(P, "default_config-two_nodes", GROUPS["reductions"] + GROUPS["api"], [], {**DEFAULT_CONFIG, **TWO_NODES})
          for P in (2, 4)]

# Small allreduces that carry their agreement (tests/mpi/test_carried.py)
# where ranks do not share one node: P = 2 and 3 as nodes of one rank or
# unequal nodes (recursive doubling over MPI), P = 4 as two nodes of two
# (where the hierarchical schedule would otherwise run), with a timeout
# (arrival through rank 0) and without (the fingerprint check).
CASES += [(P, "two_nodes-carried", ["test_carried.py"], [], TWO_NODES) for P in (2, 3, 4)]
CASES += [(P, "default_config-two_nodes-carried", ["test_carried.py"], [], {**DEFAULT_CONFIG, **TWO_NODES})
          for P in (2, 3, 4)]

# Seconds one launch may take at P = 4 (fewer ranks: less, see _timeout).
TIMEOUT_P4 = 300


def _timeout(P: int) -> float:
    return TIMEOUT_P4 if P >= 4 else TIMEOUT_P4 * 0.6


def _tail(text: str, limit: int = 60000) -> str:
    return text if len(text) <= limit else "... (truncated)\n" + text[-limit:]


@pytest.mark.mpi
@pytest.mark.parametrize(
    "P,files,args,extra_env", [pytest.param(*c[:1], *c[2:], id=f"P{c[0]}-{c[1]}") for c in CASES]
)
def test_mpi(P, files, args, extra_env):
    files = [os.path.join("tests", "mpi", f) for f in files]
    missing = [f for f in files if not os.path.exists(os.path.join(ROOT, f))]
    assert not missing, f"inner test files missing: {missing}"
    cmd = [mpiexec(), "-n", str(P), sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, *files]
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_CURRENT_TEST", None)
    env.setdefault("PYTHONFAULTHANDLER", "1")
    if "DISTML_TEST_DEFAULT_CONFIG" in extra_env:
        for name in ("DISTML_TIMEOUT", "DISTML_CHECK", "DISTML_STALL_WARNING"):
            env.pop(name, None)
    env.update(extra_env)
    shown = " ".join(f"{k}={v}" for k, v in extra_env.items()) + (" " if extra_env else "") + " ".join(cmd)
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group, so a hang can be killed whole
    )
    try:
        output, _ = proc.communicate(timeout=_timeout(P))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"hang: {shown} did not finish within {_timeout(P):.0f}s; output:\n{_tail(output)}",
                    pytrace=False)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    elapsed = time.monotonic() - start
    print(f"{shown}: exit {proc.returncode} in {elapsed:.1f}s")
    if proc.returncode != 0:
        pytest.fail(f"{shown} exited with {proc.returncode} after {elapsed:.1f}s; output:\n{_tail(output)}",
                    pytrace=False)
