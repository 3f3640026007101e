"""A memcpy on every rank at once, timed as the sweep times it (barrier,
slowest rank's wall time) and by the CPU time of the copy itself, at
1-16 MiB. With four ranks on two cores the wall time of a copy shorter than
the scheduler's slice is what one rank alone takes; the CPU time times
P / cores is what the node needs for all of them.

    mpiexec -n P .venv/bin/python bench/results/others_large/memcpy_cores.py   # P = 2, 3, 4
"""
import os, time, numpy as np
from mpi4py import MPI
from distml.bench.sweep import time_interleaved
w = MPI.COMM_WORLD.Dup(); P = w.size; r = w.rank; cores = os.cpu_count()
for nb in [1 << 20, 2 << 20, 4 << 20, 16 << 20]:
    nsets = 3
    src = [np.ones(nb, np.uint8) for _ in range(nsets)]
    dst = [np.ones(nb, np.uint8) for _ in range(nsets)]
    cpu = []
    def allcopy(i):
        t = time.thread_time(); np.copyto(dst[i % nsets], src[i % nsets]); cpu.append(time.thread_time() - t)
    t = time_interleaved(w, [allcopy], 100 if nb < 8 << 20 else 30, 10)
    c = np.array(cpu[10:]); cm = w.allreduce(float(np.median(c)), op=MPI.MAX)
    if r == 0:
        print(f"P={P} {nb>>20} MiB: wall {np.median(t[0])*1e6:.0f} us; cpu {cm*1e6:.0f} us; cpu x P/cores {cm*max(1,P/cores)*1e6:.0f} us")
