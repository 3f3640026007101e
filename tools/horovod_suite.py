"""Run a Horovod-style PyTorch test file against distml.torch, one mpiexec per test.

Horovod's own test files are not part of distml. Given a local copy of one
(for instance Horovod's ``test/parallel/test_torch.py`` and the helpers it
imports) and a directory holding a package ``horovod`` whose ``horovod.torch``
re-exports ``distml.torch``, this launches every test of the file on its own:
``mpiexec -n N python -m pytest FILE::Class::test`` for each N, with a time
limit, and prints a table of passed / failed / skipped / hung.

One launch per test matters: run as one file, the first test that fails on
some ranks only leaves the ranks at different points of the file, and every
later test then fails for that reason alone.

    python tools/horovod_suite.py --file /tmp/hvdtest/test_torch.py \
        --shim /tmp/hvdshim --sizes 1 2 3 --timeout 120 --json out.json \
        --lock /tmp/distml-quiet.lock

Nothing is fetched or written except the optional JSON results file.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Dict, List, Tuple

SUMMARY = re.compile(r"^=*\s*(\d+ (?:passed|failed|skipped|error|errors|deselected|warnings?|xfailed|xpassed)\b.*?) in [0-9.]+s", re.M)


def collect(path: str) -> List[str]:
    """Node ids ``file::Class::test`` of the test methods in a unittest-style file."""
    tree = ast.parse(open(path).read())
    ids = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name.startswith("test"):
                    ids.append(f"{path}::{node.name}::{item.name}")
        elif isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            ids.append(f"{path}::{node.name}")
    return ids


def verdict(returncode, out: str) -> str:
    """passed / failed / skipped / hung for one launch (every rank's summary line)."""
    if returncode is None:
        return "hung"
    summaries = SUMMARY.findall(out)
    if returncode != 0 or not summaries:
        return "failed"
    if any("failed" in s or "error" in s for s in summaries):
        return "failed"
    if all("passed" not in s for s in summaries):
        return "skipped"
    return "passed"


@contextlib.contextmanager
def shared_lock(path: str):
    """Holds a shared flock on ``path`` (nothing if empty): on a machine
    shared with benchmarks, each launch waits while a benchmark holds the
    lock exclusively, and the wait does not count towards the time limit."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    time.sleep(1.0)  # a benchmark waiting for the lock exclusively gets it before the next launch


def run_one(mpiexec: str, python: str, node: str, n: int, timeout: float, env: Dict[str, str],
            lock: str = "") -> Tuple[str, str, float]:
    with shared_lock(lock):
        return _launch(mpiexec, python, node, n, timeout, env)


def _launch(mpiexec: str, python: str, node: str, n: int, timeout: float, env: Dict[str, str]) -> Tuple[str, str, float]:
    cmd = [mpiexec, "-n", str(n), python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", node]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=os.path.dirname(node.split("::")[0]), start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        rc = None
    return verdict(rc, out), out, time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", required=True, help="the test file (its helpers beside it)")
    ap.add_argument("--shim", required=True, help="directory holding the re-export package 'horovod'")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("-k", default="", help="run only tests whose name contains one of these (comma-separated)")
    ap.add_argument("--json", default="", help="write every verdict (and failing output) here")
    ap.add_argument("--logs", default="", help="directory for each failing launch's output")
    ap.add_argument("--jobs", type=int, default=1, help="launches run at once (on a shared machine, 1)")
    ap.add_argument("--first", type=int, default=0, help="start at this test (index in the file)")
    ap.add_argument("--lock", default="", help="hold a shared flock on this file during each launch")
    args = ap.parse_args()

    bindir = os.path.dirname(sys.executable)
    mpiexec = os.path.join(bindir, "mpiexec")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (args.shim, env.get("PYTHONPATH", "")) if p)
    wanted = [k for k in args.k.split(",")] if args.k else [""]
    nodes = [n for n in collect(os.path.abspath(args.file)) if any(k in n.rsplit("::", 1)[-1] for k in wanted)]
    nodes = nodes[args.first:]
    results: Dict[str, Dict[int, str]] = {node.rsplit("::", 1)[-1]: {} for node in nodes}

    def one(job: Tuple[str, int]) -> None:
        node, n = job
        name = node.rsplit("::", 1)[-1]
        v, out, secs = run_one(mpiexec, sys.executable, node, n, args.timeout, env, args.lock)
        results[name][n] = v
        print(f"{name:55s} n={n} {v:8s} {secs:6.1f}s", flush=True)
        if v in ("failed", "hung") and args.logs:
            os.makedirs(args.logs, exist_ok=True)
            with open(os.path.join(args.logs, f"{name}.n{n}.log"), "w") as f:
                f.write(out)

    jobs = [(node, n) for node in nodes for n in args.sizes]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, jobs))
    print()
    print("| n | passed | failed | skipped | hung |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        counts = {k: sum(1 for r in results.values() if r[n] == k) for k in ("passed", "failed", "skipped", "hung")}
        print(f"| {n} | {counts['passed']} | {counts['failed']} | {counts['skipped']} | {counts['hung']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
