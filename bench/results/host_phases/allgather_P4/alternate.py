"""allgather at P ranks on one node, staged through the slots against the
single copy (each rank writes its block into the peers' outputs), switched
every sample inside one set of processes, so that both see the same
phases of the machine (../../host_phases.md); MPI_Allgather beside each.

Needs a temporary build of the core with xsc.patch applied: with the
environment variable XSC set, shm allgather on nodes of more than two
ranks takes its single-copy variant (by default only alltoall does there).
The release build ignores XSC, and both halves then time the staged
schedule.

    mpiexec -n 4 .venv/bin/python alternate.py SECONDS BYTES_PER_RANK

Prints, per variant, the median time of distml and of MPI over the
samples (each the median of 20 calls, slowest rank) and the ratio's
median and quartiles.
"""
import os, sys, time
import numpy as np
from mpi4py import MPI
import distml
comm = distml.init()
w = MPI.COMM_WORLD
n = int(sys.argv[2]) // 4 if len(sys.argv) > 2 else (1 << 20) // 4
x = np.ones(n, np.float32)
outs = [np.empty(n * w.size, np.float32) for _ in range(3)]
mouts = [np.empty(n * w.size, np.float32) for _ in range(3)]
def timed(f, reps=20):
    ts = []
    for i in range(reps):
        w.Barrier(); t = time.perf_counter(); f(i % 3); ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e6
end = time.time() + float(sys.argv[1])
rows = []
k = 0
while w.bcast(time.time() < end, root=0):
    single = k % 2 == 1
    if single: os.environ["XSC"] = "1"
    else: os.environ.pop("XSC", None)
    w.Barrier()
    d = timed(lambda i: comm.allgather(x, out=outs[i]))
    m = timed(lambda i: w.Allgather(x, mouts[i]))
    d = w.allreduce(d, op=MPI.MAX); m = w.allreduce(m, op=MPI.MAX)
    rows.append((single, d, m))
    k += 1
if w.rank == 0:
    for b in (False, True):
        r = [(d, m) for bb, d, m in rows if bb == b]
        rat = [m / d for d, m in r]
        print(f"size={n*4} single_copy={b} n={len(r)} distml {np.median([d for d, _ in r]):.0f} us mpi {np.median([m for _, m in r]):.0f} us "
              f"ratio median {np.median(rat):.2f} p25 {np.percentile(rat, 25):.2f} p75 {np.percentile(rat, 75):.2f}")
