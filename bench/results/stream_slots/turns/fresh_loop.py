"""allreduce of BYTES in loops of 500 calls on one communicator: in place
(out=x), a new result dropped at once (y = allreduce(x), as the sweep's
`fresh` row does), and into another array (out=out); three rounds. Median
time per call (slowest rank) and rank 0's minor page faults per call.

    mpiexec -n P .venv/bin/python bench/results/stream_slots/turns/fresh_loop.py BYTES
"""
import resource
import sys
import time

import numpy as np
from mpi4py import MPI

import distml
from distml.bench.machine import cross_core_ratio, phase_cpus

w = MPI.COMM_WORLD
n = int(sys.argv[1]) // 4
c = distml.Communicator()
x = np.ones(n, np.float32)
out = np.empty_like(x)
for rep in range(3):
    ph = cross_core_ratio(phase_cpus()) if w.rank == 0 else None
    line = []
    for name in ("in place", "new result", "out=out"):
        w.Barrier()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ts = np.empty(500)
        for i in range(500):
            t = time.perf_counter()
            if name == "in place":
                c.allreduce(x, out=x)
            elif name == "new result":
                c.allreduce(x)
            else:
                c.allreduce(x, out=out)
            ts[i] = time.perf_counter() - t
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        w.Allreduce(MPI.IN_PLACE, ts, op=MPI.MAX)
        line.append(f"{name} {np.median(ts) * 1e6:.1f} us ({faults / 500:.2f} faults/call)")
    if w.rank == 0:
        print(f"phase {ph:.1f}: " + "; ".join(line), flush=True)
c.free()
