"""Launching small scripts under mpiexec from ordinary pytest tests.

``launch`` runs ``mpiexec -n P python script args`` in its own process group
with a time limit (the whole group is killed when it passes, and the result
says so), and parses the ``FAULT {json}`` lines the ranks print.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def mpiexec() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec beside the interpreter or on PATH")
    return found


@dataclass
class Launch:
    cmd: List[str]
    returncode: Optional[int]  # None: killed at the time limit
    stdout: str
    stderr: str
    seconds: float
    ended: float  # time.time() when mpiexec was seen to exit
    records: List[dict] = field(default_factory=list)

    @property
    def hung(self) -> bool:
        return self.returncode is None

    def where(self, **match) -> List[dict]:
        return [r for r in self.records if all(r.get(k) == v for k, v in match.items())]

    def describe(self) -> str:
        tail = lambda s: s if len(s) < 20000 else "...\n" + s[-20000:]  # noqa: E731
        state = "hung (killed)" if self.hung else f"exit {self.returncode}"
        return (f"{' '.join(self.cmd)}: {state} after {self.seconds:.1f}s\n--- stdout\n{tail(self.stdout)}"
                f"\n--- stderr\n{tail(self.stderr)}")


def _child_env(env: Optional[Dict[str, str]]) -> Dict[str, str]:
    """The environment of a launched job: this one without the test run's own
    settings, with faulthandler on, plus ``env``."""
    full_env = dict(os.environ)
    for k in ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "DISTML_TIMEOUT", "DISTML_CHECK", "DISTML_STALL_WARNING"):
        full_env.pop(k, None)
    full_env.setdefault("PYTHONFAULTHANDLER", "1")
    full_env.update(env or {})
    return full_env


_SHM = "/dev/shm"


def mpich_segments() -> set:
    try:
        return {n for n in os.listdir(_SHM) if n.startswith("mpich_shm_")}
    except OSError:
        return set()


def remove_left_segments(before: set) -> None:
    """Removes MPICH's node segments that appeared during a launch and that no
    live process maps: a job whose ranks were killed (on purpose, or at the
    time limit) cannot unlink them, and runs would pile them up in memory."""
    from distml.elastic._supervisor import remove_segments

    # Killed ranks may still be exiting (still mapping them) for a moment.
    for _ in range(30):
        new = [os.path.join(_SHM, n) for n in sorted(mpich_segments() - before)]
        removed = remove_segments(new)
        if len(removed) == len(new):
            return
        time.sleep(0.1)


def launch(P: int, args: List[str], timeout: float, env: Optional[Dict[str, str]] = None,
           mpiexec_args: Optional[List[str]] = None) -> Launch:
    cmd = [mpiexec(), *(mpiexec_args or []), "-n", str(P), sys.executable, *args]
    full_env = _child_env(env)
    segments = mpich_segments()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code: Optional[int] = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    ended = time.time()
    remove_left_segments(segments)
    result = Launch(cmd, code, out, err, time.monotonic() - start, ended)
    for line in out.splitlines():
        # Ranks' lines can be interleaved by mpiexec; keep the ones that parse.
        at = line.find("FAULT {")
        if at >= 0:
            try:
                result.records.append(json.loads(line[at + len("FAULT "):]))
            except json.JSONDecodeError:
                pass
    return result


def table_row(*cells) -> None:
    """Appends a row to the markdown file named by DISTML_FAULT_TABLE, if set."""
    path = os.environ.get("DISTML_FAULT_TABLE")
    if path:
        with open(path, "a") as f:
            f.write("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |\n")


def seen(records, key="saw") -> str:
    """'r0: X; r1: Y': what each rank reported, for a fault table row."""
    return "; ".join(f"r{r['rank']}: {r[key]}" for r in sorted(records, key=lambda r: r["rank"]))


def launch_command(cmd: List[str], timeout: float, env: Optional[Dict[str, str]] = None) -> Launch:
    """Runs any command (a launcher such as distmlrun, which starts mpiexec
    itself) like :func:`launch`: own process group, killed whole at the time
    limit, ``FAULT {json}`` lines parsed. Unlike :func:`launch` it leaves
    /dev/shm alone: cleaning up after its ranks is the launcher's job, which
    the elastic tests check."""
    full_env = _child_env(env)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code: Optional[int] = proc.returncode
    except subprocess.TimeoutExpired:
        # The launcher's own children may have left its group: SIGTERM first
        # so that it can clean up, then SIGKILL what is left.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        code = None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    result = Launch(cmd, code, out, err, time.monotonic() - start, time.time())
    for line in out.splitlines():
        at = line.find("FAULT {")
        if at >= 0:
            try:
                result.records.append(json.loads(line[at + len("FAULT "):]))
            except json.JSONDecodeError:
                pass
    return result
