"""allreduce between two ranks, in place and out of place, on the ring over
MPI and on the shared-memory schedule, timed side by side: which should
`auto` take for ordinary arrays of 1-64 MiB?

Every round times each implementation once, in a new random order, on
rotating buffer sets, a barrier before each call; a call's time is the
slowest rank's. Rounds carry the machine's phase (distml.bench.machine):
the medians are given per phase.

    mpiexec -n 2 python bench/results/closing/inplace_ring.py [SIZES] [ROUNDS]
"""
import random
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

import distml
from distml.bench.common import format_size, parse_size
from distml.bench.machine import SLOW_PHASE_RATIO, phase_cpus, phase_reading

w = MPI.COMM_WORLD
mcomm = w.Dup()
sizes = [parse_size(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "1M,2M,4M,16M,32M,64M").split(",")]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 40
comm = distml.Communicator()
cpus = phase_cpus()
SETS = 3

for nbytes in sizes:
    n = nbytes // 4
    xs = [np.full(n, 1.0 + w.rank, np.float32) for _ in range(SETS)]
    outs = [np.empty(n, np.float32) for _ in range(SETS)]

    def inplace(algo):
        def run(s):
            xs[s].fill(1.0 + w.rank)  # the same input every call (in place overwrites it)
            t = time.perf_counter()
            comm.allreduce(xs[s], out=xs[s], algorithm=algo)
            return time.perf_counter() - t
        return run

    def outplace(algo):
        def run(s):
            t = time.perf_counter()
            comm.allreduce(xs[s], out=outs[s], algorithm=algo)
            return time.perf_counter() - t
        return run

    def mpi_in(s):
        xs[s].fill(1.0 + w.rank)
        t = time.perf_counter()
        mcomm.Allreduce(MPI.IN_PLACE, xs[s])
        return time.perf_counter() - t

    def mpi_out(s):
        t = time.perf_counter()
        mcomm.Allreduce(xs[s], outs[s])
        return time.perf_counter() - t

    impls = {"mpi out": mpi_out, "mpi in place": mpi_in}
    for algo in ("auto", "ring", "shm"):
        impls[f"in place {algo}"] = inplace(algo)
        impls[f"out {algo}"] = outplace(algo)
    for name, f in impls.items():  # warm-up, and the result checked once
        f(0)
        want = 3.0 if name.startswith(("in place", "mpi in")) else None
        if want is not None and not np.all(xs[0] == want):
            raise SystemExit(f"{name}: wrong sum")
    times = {k: [] for k in impls}
    phases = []
    rng = random.Random(7)
    for i in range(rounds):
        phases.append(phase_reading(mcomm, cpus) if cpus else float("nan"))
        order = list(impls)
        rng.shuffle(order)
        for k in order:
            mcomm.Barrier()
            t = impls[k](i % SETS)
            times[k].append(mcomm.allreduce(t, op=MPI.MAX))
    if w.rank == 0:
        slow = [p >= SLOW_PHASE_RATIO for p in phases]
        for label, keep in (("fast", [not s for s in slow]), ("slow", slow)):
            m = sum(keep)
            if m < 3:
                continue
            med = {k: statistics.median([t for t, c in zip(v, keep) if c]) for k, v in times.items()}
            cells = "  ".join(f"{k} {med[k] * 1e6:7.0f}" for k in impls)
            print(f"{format_size(nbytes):>7} {label} ({m} rounds): {cells}")
            print(f"{'':>7} ratio to mpi out: " + "  ".join(
                f"{k} {med['mpi out'] / med[k]:.2f}" for k in impls if k != "mpi out"), flush=True)
comm.free()
