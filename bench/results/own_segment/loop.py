"""allgather of BYTES gathered (out=, three buffer sets) in a loop of its
own: 400 calls, a barrier before each, the first 100 dropped; prints the
median of the slowest rank's times in microseconds.

    mpiexec -n P python bench/results/own_segment/loop.py BYTES
"""
import sys
import time

import numpy as np
from mpi4py import MPI

import distml

w = MPI.COMM_WORLD
c = distml.Communicator()
n = int(sys.argv[1]) // 4 // w.size
ins = [np.full(n, w.rank, np.float32) for _ in range(3)]
outs = [np.zeros(n * w.size, np.float32) for _ in range(3)]
ts = []
for i in range(400):
    w.Barrier()
    t = time.perf_counter()
    c.allgather(ins[i % 3], out=outs[i % 3])
    ts.append(time.perf_counter() - t)
ts = np.array(ts[100:])
w.Allreduce(MPI.IN_PLACE, ts, op=MPI.MAX)
if w.rank == 0:
    print("median", np.median(ts) * 1e6)
c.free()
