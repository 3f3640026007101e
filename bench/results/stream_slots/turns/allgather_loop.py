"""allgather(part, out=out) in loops of CALLS calls on one communicator
that chooses its variant by times: four loops, each with the machine's
phase reading before it, the loop's median time per call (slowest rank)
and node rank 0's medians for each variant (-1e6: none, the choice off).

    mpiexec -n P .venv/bin/python bench/results/stream_slots/turns/allgather_loop.py BYTES CALLS
"""
import sys, time, numpy as np
from mpi4py import MPI
import distml
from distml import _core
from distml.bench.machine import cross_core_ratio, phase_cpus
w = MPI.COMM_WORLD
nbytes = int(sys.argv[1]); calls = int(sys.argv[2])
c = distml.Communicator()
part = np.ones(nbytes // 4 // w.size, np.float32)
out = np.empty(nbytes // 4, np.float32)
V = _core.Variant
for rep in range(4):
    ph = cross_core_ratio(phase_cpus()) if w.rank == 0 else None
    w.Barrier()
    ts = []
    for i in range(calls):
        t = time.perf_counter(); c.allgather(part, out=out); ts.append(time.perf_counter() - t)
    ts = np.array(ts); w.Allreduce(MPI.IN_PLACE, ts, op=MPI.MAX)
    if w.rank == 0:
        med = {str(v).split('.')[-1]: round(c._core.tuned_median(_core.Kind.allgather, part.nbytes, v) * 1e6, 1) for v in (V.single_copy, V.staged, V.staged_streaming)}
        print(f"phase {ph:.1f} loop median {np.median(ts)*1e6:.1f} us tuner medians {med}", flush=True)
c.free()
