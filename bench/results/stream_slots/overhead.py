"""What the choice by times costs a call it covers: allreduce(x, out=out)
of BYTES in a loop of 200 calls, through a communicator that chooses and one
with DISTML_SHM_TUNE off, alternating REPS times; median time per call,
slowest rank.

    mpiexec -n P .venv/bin/python bench/results/stream_slots/overhead.py BYTES REPS
"""
import sys, time
import numpy as np
from mpi4py import MPI
import distml
w = MPI.COMM_WORLD
n = int(sys.argv[1]) // 4
tuned = distml.Communicator(); plain = distml.Communicator(); plain._core.shm_tune = False
x = np.ones(n, np.float32); out = np.empty_like(x)
res = {"tuned": [], "plain": []}
for rep in range(int(sys.argv[2])):
    for name, c in (("tuned", tuned), ("plain", plain)):
        w.Barrier(); t = time.perf_counter()
        for i in range(200): c.allreduce(x, out=out)
        res[name].append(w.allreduce(time.perf_counter() - t, op=MPI.MAX) / 200)
if w.rank == 0:
    print(" ".join(f"{k} {np.median(v)*1e6:.2f} us" for k, v in res.items()), flush=True)
tuned.free(); plain.free()
