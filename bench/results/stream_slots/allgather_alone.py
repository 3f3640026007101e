"""allgather alone, as a sweep row times it, with the variant of every call:
BYTES gathered (BYTES / P per rank), ITERS rounds over SETS rotating
buffer sets with out=, a barrier before each call, interleaved with
MPI_Allgather, and (with "phase") the phase read every ceil(ITERS / 16)
rounds. Prints the phase, MPI's time / distml's (medians), the median time
of each variant's calls (slowest rank) and the choosing rank's own medians,
then the variant of each call (1 single copy, t staged, s staged with
streaming stores).

    mpiexec -n 2 .venv/bin/python bench/results/stream_slots/allgather_alone.py BYTES ITERS SETS [phase]
"""
import sys, time
import numpy as np
from mpi4py import MPI
import distml
from distml import _core
from distml.bench.machine import cross_core_ratio, phase_cpus
w = MPI.COMM_WORLD
nbytes, iters, nsets = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
read_phase = len(sys.argv) > 4 and sys.argv[4] == "phase"
cpus = phase_cpus()
c = distml.Communicator()
P = w.size
blk = nbytes // 4 // P
ins = [np.full(blk, w.rank + k, np.float32) for k in range(nsets)]
outs = [np.empty(blk * P, np.float32) for k in range(nsets)]
mouts = [np.empty(blk * P, np.float32) for k in range(nsets)]
c._core.set_trace(True)
ts, tm, ph = [], [], []
every = -(-iters // 16)
for i in range(20):
    c.allgather(ins[i % nsets], out=outs[i % nsets]); w.Allgather(ins[i % nsets], mouts[i % nsets])
for i in range(iters):
    if read_phase and i % every == 0:
        if w.rank == 0: ph.append(cross_core_ratio(cpus))
        w.Barrier()
    w.Barrier(); t = time.perf_counter(); c.allgather(ins[i % nsets], out=outs[i % nsets]); ts.append(time.perf_counter() - t)
    w.Barrier(); t = time.perf_counter(); w.Allgather(ins[i % nsets], mouts[i % nsets]); tm.append(time.perf_counter() - t)
ts = np.array(ts)
ev = c._core.drain_trace()[20:]
var = ["1" if "cross-memory" in e["schedule"] else "s" if "slots filled" in e["schedule"] else "t" for e in ev]
allts = w.gather(ts, root=0); alltm = w.gather(np.array(tm), root=0)
if w.rank == 0:
    ts = np.max(allts, axis=0); tm = np.max(alltm, axis=0)
    K = _core.Kind.allgather
    tun = {str(v).split('.')[-1]: round(c._core.tuned_median(K, blk * 4, v) * 1e6, 1) for v in (_core.Variant.single_copy, _core.Variant.staged, _core.Variant.staged_streaming)}
    meas = {v: round(np.median([t for t, vv in zip(ts, var) if vv == v]) * 1e6, 1) if v in var else None for v in "1ts"}
    print(f"phase {np.median(ph) if ph else cross_core_ratio(cpus):.1f} ratio {np.median(tm)/np.median(ts):.2f} mpi {np.median(tm)*1e6:.1f} measured {meas} tuner {tun}")
    print("".join(var))
c.free()
