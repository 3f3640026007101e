"""A new result against out= and out=x at 2 MiB, P = 2, with only distml's
calls interleaved (random order per round, barrier before each call,
median of 350 rounds per rank, slowest rank):

    mpiexec -n 2 .venv/bin/python bench/results/readme_allreduce/fresh_interleaved.py
"""
import numpy as np, time, sys, distml
from mpi4py import MPI
w = MPI.COMM_WORLD
comm = distml.Communicator(w)  # freed at the end
n = (2 << 20) // 4
ins = [np.ones(n, np.float32) for _ in range(3)]
outs = [np.ones(n, np.float32) for _ in range(3)]
cases = {
  "fresh": lambda i: comm.allreduce(ins[i % 3]),
  "fresh_shm": lambda i: comm.allreduce(ins[i % 3], algorithm="shm"),
  "out": lambda i: comm.allreduce(ins[i % 3], out=outs[i % 3]),
  "out_shm": lambda i: comm.allreduce(ins[i % 3], out=outs[i % 3], algorithm="shm"),
  "inplace": lambda i: comm.allreduce(outs[i % 3], out=outs[i % 3]),
  "fresh_np": lambda i: comm.allreduce(ins[i % 3], out=np.empty(n, np.float32)),
}
names = list(cases)
T = {k: [] for k in names}
rng = np.random.default_rng(1)
for it in range(400):
    for k in rng.permutation(names):
        w.Barrier(); t = time.perf_counter(); cases[k](it); T[k].append(time.perf_counter() - t)
res = {k: w.allreduce(np.median(v[50:]), op=MPI.MAX) for k, v in T.items()}
if w.rank == 0:
    print(" ".join(f"{k}:{v*1e6:.0f}" for k, v in res.items()), "algo:", comm.algorithm_for("allreduce", n * 4) if hasattr(comm, "algorithm_for") else "")
comm.free()
