"""A parameter-server rank stops for good (SIGSTOP, or SIGKILL) while the
others train.

    mpiexec -n P python ps_faults.py CASE MODE LAYOUT TIMEOUT OUTDIR [SIGNAL]

CASE: "worker" (the last worker stops after 3 steps) or "server" (the last
rank, a server, stops about a second in, whatever it is doing). MODE: sync,
bounded or async. LAYOUT: "colocated" or "dedicated" (one dedicated server,
the last rank). SIGNAL: STOP (default) or KILL.

A stopped process is what a dead one looks like to its peers; it is used
because MPICH's Hydra ends every rank once one is killed (even with
-disable-auto-cleanup), so survivors of a SIGKILL never get to report.
Survivors write OUTDIR/rank-R.json: what they raised (or "ok"), its message,
the stage, the steps done, and the seconds from the failed call's start to
the raise; then they wait to be killed (the test ends the job).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import numpy as np

import distml
from distml import optim
from distml.ps import ParameterServer


def report(outdir, **fields):
    path = os.path.join(outdir, f"rank-{fields['rank']}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(fields, f)
    os.replace(path + ".tmp", path)


def main() -> None:
    case, mode, layout, timeout, outdir = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
    sig = signal.SIGKILL if len(sys.argv) > 6 and sys.argv[6] == "KILL" else signal.SIGSTOP
    comm = distml.init()
    rank, P = comm.rank, comm.size
    servers = None if layout == "colocated" else 1
    workers = list(range(P)) if servers is None else list(range(P - 1))
    victim = workers[-1] if case == "worker" else P - 1
    params = [np.full((64, 32), 0.5), np.zeros(1000)]
    if case == "server" and rank == victim:
        # Dies a second in, whatever it is doing (a dedicated server is
        # inside the constructor, serving, with the GIL released).
        threading.Timer(1.0, lambda: os.kill(os.getpid(), sig)).start()
    started = time.monotonic()
    saw, msg, stage, steps = "ok", "", "constructor", 0
    call_start = started
    try:
        ps = ParameterServer(params, optim.SGD, comm=comm, mode=mode, servers=servers,
                             staleness=1 if mode == "bounded" else None, timeout=timeout, lr=0.01)
        if ps.is_worker:
            stage = "train"
            while time.monotonic() - started < 3 * timeout + 10:
                if case == "worker" and rank == victim and steps == 3:
                    with open(os.path.join(outdir, "victim.json"), "w") as f:
                        json.dump({"pid": os.getpid(), "t": time.time()}, f)
                    os.kill(os.getpid(), sig)
                call_start = time.monotonic()
                ps.step([np.ones_like(p) * (rank + 1) for p in params])
                steps += 1
                time.sleep(0.01)
                if case == "worker" and mode == "async" and steps == 40:
                    break  # the survivors trained on; closing reports the dead worker
            stage = "close"
            call_start = time.monotonic()
            ps.close()
    except Exception as e:  # noqa: BLE001 - reported, checked by the test
        saw, msg = type(e).__name__, str(e)
    report(outdir, rank=rank, case=case, mode=mode, layout=layout, victim=victim, saw=saw, msg=msg[:500],
           stage=stage, steps=steps, seconds=round(time.monotonic() - call_start, 3))
    time.sleep(600)  # MPI_Finalize would wait for the stopped rank: the test ends the job
    os._exit(0)


if __name__ == "__main__":
    main()
