"""allgather on one node, staged against the single copy, switched every
sample inside one set of processes through the threshold the core reads
at run time (shm_single_copy_blocks_bytes: its default, or never); MPI_Allgather
beside each. On nodes of more than two ranks the release build never takes
allgather's single copy; these runs used a build whose blocks_single_copy
also let allgather through there (xsc.patch without the getenv test).

    mpiexec -n P .venv/bin/python threshold_ab.py SECONDS BYTES_PER_RANK
"""
import sys, time
import numpy as np
from mpi4py import MPI
import distml
comm = distml.init(); w = MPI.COMM_WORLD; core = comm._core
n = int(sys.argv[2]) // 4
x = np.ones(n, np.float32)
outs = [np.empty(n * w.size, np.float32) for _ in range(3)]
mouts = [np.empty(n * w.size, np.float32) for _ in range(3)]
default = core.shm_single_copy_blocks_bytes
def timed(f, reps=20):
    ts = []
    for i in range(reps):
        w.Barrier(); t = time.perf_counter(); f(i % 3); ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e6
end = time.time() + float(sys.argv[1]); rows = []; k = 0
while w.bcast(time.time() < end, root=0):
    single = k % 2 == 1
    core.shm_single_copy_blocks_bytes = default if single else 1 << 62
    d = timed(lambda i: comm.allgather(x, out=outs[i])); m = timed(lambda i: w.Allgather(x, mouts[i]))
    rows.append((single, w.allreduce(d, op=MPI.MAX), w.allreduce(m, op=MPI.MAX))); k += 1
if w.rank == 0:
    for b in (False, True):
        r = [(d, m) for s, d, m in rows if s == b]; rat = [m / d for d, m in r]
        print(f"P={w.size} bytes={n*4} single_copy={b} n={len(r)} distml {np.median([d for d,_ in r]):.0f} mpi {np.median([m for _,m in r]):.0f} ratio {np.median(rat):.2f} ({np.percentile(rat,25):.2f}-{np.percentile(rat,75):.2f})")
