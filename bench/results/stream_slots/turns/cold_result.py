"""A new result against out=out with both destinations equally cold: before
every call each rank writes 8 MiB of other memory (the L2 is 1 MiB), then
a barrier; allreduce of BYTES, 300 calls per kind, three rounds; median
per call, slowest rank. In the sweep the `out=` rows share their output
arrays with every other distml row, while the result pool's array is
touched only by the new-result row.

    mpiexec -n 2 .venv/bin/python bench/results/stream_slots/turns/cold_result.py BYTES
"""
import sys
import time

import numpy as np
from mpi4py import MPI
import distml
from distml.bench.machine import cross_core_ratio, phase_cpus
w = MPI.COMM_WORLD
n = int(sys.argv[1]) // 4
c = distml.Communicator()
x = np.ones(n, np.float32); out = np.empty_like(x); scratch = np.ones(8 << 20, np.uint8)
for rep in range(3):
    ph = cross_core_ratio(phase_cpus()) if w.rank == 0 else 0
    line = []
    for name in ("new result", "out=out", "in place"):
        ts = np.empty(300)
        for i in range(300):
            scratch += 1  # 8 MiB written between calls: the destinations go cold alike
            w.Barrier()
            t = time.perf_counter()
            if name == "new result": c.allreduce(x)
            elif name == "out=out": c.allreduce(x, out=out)
            else: c.allreduce(x, out=x)
            ts[i] = time.perf_counter() - t
        w.Allreduce(MPI.IN_PLACE, ts, op=MPI.MAX)
        line.append(f"{name} {np.median(ts)*1e6:.1f}")
    if w.rank == 0: print(f"phase {ph:.1f}: " + "; ".join(line) + " us", flush=True)
c.free()
