# Per-call time at P = 2, back to back (no barrier between calls): mpi4py, distml's Python call, and the
# core's entry called directly with the arguments the short path passes. Best of 5 x 4000 calls, max over ranks.
# mpiexec -n 2 .venv/bin/python bench/results/collectives_p2small/percall.py 2
import time, sys, numpy as np
from mpi4py import MPI
import distml
from distml import comm as C
mc = MPI.COMM_WORLD.Dup()
check = "--nocheck" not in sys.argv
comm = distml.Communicator(check=check)
r, P = comm.rank, comm.size
n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 2
x = np.ones(n, np.float32); o = np.ones(n, np.float32); og = np.ones(n * P, np.float32)
xs = np.ones(n * P, np.float32); os_ = np.ones(n, np.float32); oa = np.ones(n * P, np.float32)
core = comm._core
f32 = C._DTYPE_INTS[x.dtype]
comm.allreduce(x)  # fill op cache
SUM = C._OP_INTS[("sum", x.dtype)]
cases = {
 "reduce": [lambda: mc.Reduce(x, o if r == 0 else None, op=MPI.SUM, root=0),
            (lambda: comm.reduce(x, 0, "sum", out=o)) if r == 0 else (lambda: comm.reduce(x, 0, "sum")),
            lambda: core.run(C._REDUCE, f32, SUM, n, 1, 0, "auto", (), x, o if r == 0 else None)],
 "allgather": [lambda: mc.Allgather(x, og), lambda: comm.allgather(x, out=og),
               lambda: core.run(C._ALLGATHER, f32, C._NO_OP, n, 1, 0, "auto", (n,), x, og)],
 "reduce_scatter": [lambda: mc.Reduce_scatter_block(xs, os_, op=MPI.SUM), lambda: comm.reduce_scatter(xs, "sum", out=os_),
                    lambda: core.run(C._REDUCE_SCATTER, f32, SUM, n * P, 1, 0, "auto", (n * P,), xs, os_)],
 "alltoall": [lambda: mc.Alltoall(xs, oa), lambda: comm.alltoall(xs, out=oa),
              lambda: core.run(C._ALLTOALL, f32, C._NO_OP, n * P, 1, 0, "auto", (n * P,), xs, oa)],
 "broadcast": [lambda: mc.Bcast(x, root=0), lambda: comm.broadcast(x, 0),
               lambda: core.run(C._BROADCAST, f32, C._NO_OP, n, 1, 0, "auto", (), x, x)],
 "allreduce": [lambda: mc.Allreduce(x, o, op=MPI.SUM), lambda: comm.allreduce(x, "sum", out=o),
               lambda: core.run(C._ALLREDUCE, f32, SUM, n, 1, 0, "auto", (), x, o)],
 "barrier": [lambda: mc.Barrier(), lambda: comm.barrier(), lambda: core.run(C._BARRIER, C._U8, C._NO_OP, 0, 1, 0, "auto", (), None, None)],
}
N = 4000
res = {}
for name, fs in cases.items():
    best = [1e9] * 3
    for rep in range(5):
        for k, f in enumerate(fs):
            for _ in range(200): f()
            mc.Barrier()
            t = time.perf_counter()
            for _ in range(N): f()
            dt = (time.perf_counter() - t) / N * 1e6
            dt = mc.allreduce(dt, op=MPI.MAX)
            best[k] = min(best[k], dt)
    res[name] = best
if r == 0:
    print(f"n={n} check={check}  back-to-back us/call (best of 5): mpi4py  distml  core.run")
    for name, b in res.items():
        print(f"{name:15s} {b[0]:6.2f} {b[1]:6.2f} {b[2]:6.2f}   ratio mpi/distml {b[0]/b[1]:.2f}")
comm.free()
