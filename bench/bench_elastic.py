"""Which recovery path works on this MPI, and how long recovery takes.

    python bench/bench_elastic.py ulfm [--trials 3]            # in-job recovery (ULFM) probe
    python bench/bench_elastic.py recover [--sizes 3,4] [--trials 3] [--out bench/results/elastic.json]

``ulfm`` runs a small mpi4py program under mpiexec in each configuration
(Hydra with and without ``-disable-auto-cleanup``, ``MPIR_CVAR_ENABLE_FT``
off and on, ch4's ucx and ofi netmods, and the gforker process manager): the
last rank SIGKILLs itself, the others call ``MPI_Allreduce`` on a
communicator with ``MPI_ERRORS_RETURN`` and then ``Comm.Revoke`` /
``Comm.Agree`` / ``Comm.Shrink``. What each rank got that far is printed;
the outcome of each trial is classified.

``recover`` kills rank 1 of tests/fault_scripts/elastic_train.py at step 25
(commits every 10 steps) under ``distmlrun --max-restarts 1`` and reads the
launcher's report: from the lost rank's end to mpiexec's exit, to the
relaunch, to training resumed (restore done on rank 0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from distml.elastic._supervisor import remove_segments

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PROBE = r'''
import os, signal, sys, time
from mpi4py import MPI
comm = MPI.COMM_WORLD.Dup()
comm.Set_errhandler(MPI.ERRORS_RETURN)
rank, size = comm.Get_rank(), comm.Get_size()
say = lambda *a: print(f"PROBE {rank}", *a, flush=True)
comm.Barrier()
say("up")
if rank == size - 1:
    os.kill(os.getpid(), signal.SIGKILL)
t0 = time.monotonic()
try:
    comm.allreduce(1)
    say("allreduce-ok")
except MPI.Exception as e:
    say("allreduce-error", e.Get_error_class(), f"{time.monotonic() - t0:.3f}")
for name in ("Revoke", "Agree", "Shrink"):
    try:
        r = getattr(comm, name)(*((1,) if name == "Agree" else ()))
        say(name.lower() + "-ok", r.Get_size() if name == "Shrink" else "")
    except Exception as e:
        say(name.lower() + "-error", type(e).__name__)
say("end")
'''

CONFIGS = [
    ("hydra", [], {}),
    ("hydra -disable-auto-cleanup", ["-disable-auto-cleanup"], {}),
    ("hydra -disable-auto-cleanup, MPIR_CVAR_ENABLE_FT=1", ["-disable-auto-cleanup"], {"MPIR_CVAR_ENABLE_FT": "1"}),
    ("hydra -disable-auto-cleanup, ch4:ofi", ["-disable-auto-cleanup"], {"MPIR_CVAR_CH4_NETMOD": "ofi"}),
    ("hydra -disable-auto-cleanup, ch4:ofi, MPIR_CVAR_ENABLE_FT=1", ["-disable-auto-cleanup"],
     {"MPIR_CVAR_CH4_NETMOD": "ofi", "MPIR_CVAR_ENABLE_FT": "1"}),
    ("hydra -disable-auto-cleanup, ch4:ucx, MPIR_CVAR_ENABLE_FT=1", ["-disable-auto-cleanup"],
     {"MPIR_CVAR_CH4_NETMOD": "ucx", "MPIR_CVAR_ENABLE_FT": "1"}),
    ("gforker", None, {}),
]


def _bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def _shm() -> set:
    try:
        return {f for f in os.listdir("/dev/shm") if f.startswith("mpich_shm_")}
    except OSError:
        return set()


def classify(out: str, code) -> str:
    lines = [l for l in out.splitlines() if "PROBE" in l]
    if "ch4_request.h" in out or "Assertion failed" in out:
        return "MPI_Init fails (assertion in ch4_request.h)"
    if "assert (!closed) failed" in out:
        return "mpiexec itself fails (pmiserv_cb.c assert)"
    if any("shrink-ok" in l for l in lines):
        return "survivors shrink the communicator"
    if any("allreduce-error" in l for l in lines):
        return "survivors get an error, shrink fails"
    if code is None:
        return "survivors hang in MPI_Allreduce (killed at the time limit)"
    return f"survivors ended by the process manager (exit {code}) before returning from MPI_Allreduce"


def ulfm(trials: int, limit: float) -> list:
    rows = []
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(PROBE)
        probe = f.name
    try:
        for label, flags, env in CONFIGS:
            outcomes = []
            for _ in range(trials):
                before = _shm()
                if flags is None:
                    cmd = [_bin("mpiexec.gforker"), "-n", "3", sys.executable, probe]
                else:
                    cmd = [_bin("mpiexec"), *flags, "-n", "3", sys.executable, probe]
                t0 = time.monotonic()
                proc = subprocess.Popen(cmd, env=dict(os.environ, **env), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
                try:
                    out, _ = proc.communicate(timeout=limit)
                    code = proc.returncode
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    out, _ = proc.communicate()
                    code = None
                took = time.monotonic() - t0
                time.sleep(0.5)
                # What the probe's MPI left behind: new segments nobody maps (others' jobs may run too).
                left = remove_segments([os.path.join("/dev/shm", n) for n in sorted(_shm() - before)])
                outcomes.append({"outcome": classify(out, code), "exit_code": code, "seconds": round(took, 2),
                                 "shm_left": len(left)})
            rows.append({"config": label, "command": " ".join(cmd[:-2]) + " python probe.py", "env": env,
                         "trials": outcomes})
            print(f"{label}: " + "; ".join(f"{o['outcome']} ({o['seconds']} s, {o['shm_left']} shm left)"
                                           for o in outcomes), flush=True)
    finally:
        os.remove(probe)
    return rows


def recover(sizes, trials: int, data: str) -> list:
    rows = []
    for P in sizes:
        for t in range(trials):
            with tempfile.TemporaryDirectory() as d:
                report = os.path.join(d, "report.json")
                cmd = [sys.executable, "-m", "distml.run", "-n", str(P), "--max-restarts", "1", "--elastic-report",
                       report, os.path.join(ROOT, "tests", "fault_scripts", "elastic_train.py"), "--out", d,
                       "--data", data, "--kill", "0:1:25:epoch"]
                subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
                with open(report) as f:
                    launches = json.load(f)["launches"]
            a, b = launches[0], launches[1]
            lost_at = a["first_ended_at"]
            row = {"P": P, "trial": t, "mpiexec_exit": a["exited"] - lost_at,
                   "relaunched": b["started"] - lost_at, "registered": b["registered"] - lost_at,
                   "resumed": b["resumed"]["time"] - lost_at,
                   "redone_steps": b["resumed"]["redone_steps"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["ulfm", "recover"])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--limit", type=float, default=20.0, help="seconds before a probe counts as hung")
    ap.add_argument("--sizes", default="3,4")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    info = {"machine": platform.node(), "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load": os.getloadavg()}
    try:
        from mpi4py import MPI

        info["mpi"] = MPI.Get_library_version().splitlines()[0]
    except Exception:  # noqa: BLE001
        pass
    if args.what == "ulfm":
        rows = ulfm(args.trials, args.limit)
    else:
        import numpy as np
        from sklearn.datasets import load_digits

        with tempfile.TemporaryDirectory() as d:
            data = os.path.join(d, "digits.npz")
            dg = load_digits()
            X, y = (dg.data / 16.0).astype(np.float64), dg.target.astype(np.int64)
            order = np.random.default_rng(0).permutation(len(X))
            np.savez(data, X=X[order[360:]], y=y[order[360:]], X_test=X[order[:360]], y_test=y[order[:360]])
            rows = recover([int(s) for s in args.sizes.split(",")], args.trials, data)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"info": info, "what": args.what, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
