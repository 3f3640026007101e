"""Which variants distml's `auto` allgather runs, call by call, when its
calls alternate with MPI_Allgather (the sweep's setting), optionally with
a pause before each pair (a job whose calls of one size come far apart).

    mpiexec -n P python bench/results/tuner/trace.py MIB [CALLS] [GAP_SECONDS]

Rank 0 prints each ratio of medians, each schedule's calls and median
time, and the runs of one schedule longer than 20 calls (between them,
the comparisons of the variant tuner, engine/variant_tuner.h).
"""
import sys
import time
from collections import defaultdict

import numpy as np
from mpi4py import MPI

import distml

w = MPI.COMM_WORLD
P, me = w.size, w.rank
nbytes = int(float(sys.argv[1]) * (1 << 20))
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
gap = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
count = nbytes // P // 4
ins = [np.full(count, me + s, np.float32) for s in range(3)]
outs = [np.zeros(count * P, np.float32) for _ in range(3)]
comm = distml.Communicator()
comm._core.set_trace(True)
t_dist, t_mpi = [], []
for i in range(n):
    s = i % 3
    if gap:
        time.sleep(gap)
    w.Barrier()
    t = time.perf_counter()
    w.Allgather(ins[s], outs[s])
    t_mpi.append(time.perf_counter() - t)
    w.Barrier()
    t = time.perf_counter()
    comm.allgather(ins[s], out=outs[s])
    t_dist.append(time.perf_counter() - t)
events = comm._core.drain_trace()
assert len(events) == n
by = defaultdict(list)
for e, t in zip(events, t_dist):
    by[e["schedule"]].append(t)
if me == 0:
    print(f"P={P} {nbytes >> 10} KiB, gap {gap} s: MPI {np.median(t_mpi) * 1e6:.1f} us, distml "
          f"{np.median(t_dist) * 1e6:.1f} us -> {np.median(t_mpi) / np.median(t_dist):.2f}x")
    for name, times in by.items():
        print(f"  {len(times):5d} calls  median {np.median(times) * 1e6:8.1f} us  {name}")
    runs = []
    for e in events:
        if runs and runs[-1][0] == e["schedule"]:
            runs[-1][1] += 1
        else:
            runs.append([e["schedule"], 1])
    print("  runs of more than 20 calls:", [(name, k) for name, k in runs if k > 20])
comm.free()
