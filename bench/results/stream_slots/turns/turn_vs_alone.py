"""What a comparison in turn sees against each variant alone: for each
COLLECTIVE (1 MiB), three times, a new communicator runs CALLS calls (its
first comparison, and one more so that the comparison's last time is in:
28 where a turn is one call, build 94034c2; 37 where it is two) and prints
node rank 0's median for each variant, then 300 calls more (the variant
chosen) and their median; then the single copy
(DISTML_SHM_TUNE off) and staging (single-copy thresholds past every size)
each run 20 untimed and 300 timed calls in a loop of their own on new
communicators: median time per call, slowest rank.

    mpiexec -n 2 .venv/bin/python bench/results/stream_slots/turns/turn_vs_alone.py CALLS reduce_scatter allgather allreduce
"""
import sys, time, numpy as np
from mpi4py import MPI
import distml
from distml import _core
from distml.bench.machine import cross_core_ratio, phase_cpus
w = MPI.COMM_WORLD
P = w.size
V = _core.Variant
nbytes = 1 << 20
CALLS = int(sys.argv[1])
def call(c, kind, x, out, part, outg):
    if kind == "reduce_scatter": c.reduce_scatter(x, out=out)
    elif kind == "allgather": c.allgather(part, out=outg)
    else: c.allreduce(x, out=x)
for kind in sys.argv[2:]:
    x = np.ones(nbytes // 4, np.float32); out = np.empty(nbytes // 4 // P, np.float32)
    part = np.ones(nbytes // 4 // P, np.float32); outg = np.empty(nbytes // 4, np.float32)
    K = getattr(_core.Kind, kind)
    key_bytes = part.nbytes if kind == "allgather" else x.nbytes
    for rep in range(3):
        ph = cross_core_ratio(phase_cpus()) if w.rank == 0 else 0
        tuned = distml.Communicator()
        for i in range(CALLS): call(tuned, kind, x, out, part, outg)
        rot = {str(v).split('.')[-1]: tuned._core.tuned_median(K, key_bytes, v) * 1e6 for v in (V.single_copy, V.staged, V.staged_streaming)}
        res = {}
        ts = np.empty(300)
        for i in range(300):
            t = time.perf_counter(); call(tuned, kind, x, out, part, outg); ts[i] = time.perf_counter() - t
        w.Allreduce(MPI.IN_PLACE, ts, op=MPI.MAX)
        res["chosen"] = np.median(ts) * 1e6
        for name in ("single", "staged"):
            c = distml.Communicator(); c._core.shm_tune = False
            if name == "staged":
                c._core.shm_single_copy_bytes = 1 << 30; c._core.shm_single_copy_blocks_bytes = 1 << 30
            for i in range(20): call(c, kind, x, out, part, outg)
            ts = np.empty(300)
            for i in range(300):
                t = time.perf_counter(); call(c, kind, x, out, part, outg); ts[i] = time.perf_counter() - t
            w.Allreduce(MPI.IN_PLACE, ts, op=MPI.MAX)
            res[name] = np.median(ts) * 1e6
            c.free()
        tuned.free()
        if w.rank == 0:
            print(f"{kind} phase {ph:.1f} rotation medians " + " ".join(f"{k} {v:.0f}" for k, v in rot.items()) +
                  f" | then the choice {res['chosen']:.0f}, alone: single {res['single']:.0f} staged {res['staged']:.0f} us", flush=True)
