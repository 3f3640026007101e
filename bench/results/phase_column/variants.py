"""One collective timed through three communicators in one set of
processes, alternating call by call in an order drawn anew each round: one
that chooses its variant by times (the default), one with DISTML_SHM_TUNE
off (the thresholds alone), and one with both single-copy thresholds past
every size (staged); and MPI's own collective. Each sample prints the machine's phase reading, the median
time of each (slowest rank), and the shares of the choosing communicator's
calls that ran the single copy and staging with streaming stores.

    mpiexec -n P .venv/bin/python bench/results/phase_column/variants.py COLLECTIVE BYTES SAMPLES CALLS

BYTES is the input of allreduce, reduce_scatter and broadcast (root 0),
and the gathered output of allgather.
"""
import sys
import time

import numpy as np
from mpi4py import MPI

import distml
from distml.bench.machine import cross_core_ratio, phase_cpus


def main() -> None:
    kind, nbytes, samples, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    w = MPI.COMM_WORLD
    tuned = distml.Communicator()
    plain = distml.Communicator()
    plain._core.shm_tune = False
    staged = distml.Communicator()
    staged._core.shm_tune = False
    staged._core.shm_single_copy_bytes = 1 << 62
    staged._core.shm_single_copy_blocks_bytes = 1 << 62
    comms = {"tuned": tuned, "thresholds": plain, "staged": staged, "mpi": None}
    x = np.ones(nbytes // 4, np.float32)
    part = np.ones(nbytes // 4 // w.size, np.float32)

    out = np.empty_like(x)
    mpi_rs = np.empty_like(part)
    mpi_ag = np.empty(part.size * w.size, np.float32)

    def mpi():
        if kind == "allreduce":
            w.Allreduce(x, out)
        elif kind == "reduce_scatter":
            w.Reduce_scatter_block(x, mpi_rs)
        elif kind == "broadcast":
            w.Bcast(x, root=0)
        else:
            w.Allgather(part, mpi_ag)

    def call(c):
        if c is None:
            return mpi()
        if kind == "allreduce":
            return c.allreduce(x)
        if kind == "reduce_scatter":
            return c.reduce_scatter(x)
        if kind == "broadcast":
            return c.broadcast(x, root=0)
        return c.allgather(part)

    rng = np.random.default_rng(12345)
    tuned._core.set_trace(True)
    cpus = phase_cpus()
    for _ in range(samples):
        phase = cross_core_ratio(cpus) if w.rank == 0 and cpus else float("nan")
        times = {name: [] for name in comms}
        for _ in range(calls):
            # A new order each round, the same on every rank: the first
            # after the round's time exchange was slower at P = 4 (30-34
            # against 27-30 us for the same communicator).
            for name in rng.permutation(list(comms)):
                c = comms[name]
                w.Barrier()
                t = time.perf_counter()
                call(c)
                times[name].append(w.allreduce(time.perf_counter() - t, op=MPI.MAX))
        events = tuned._core.drain_trace()
        single = sum("cross-memory" in e["schedule"] for e in events) / max(1, len(events))
        streaming = sum("slots filled with streaming" in e["schedule"] for e in events) / max(1, len(events))
        if w.rank == 0:
            print(f"P={w.size} {kind} {nbytes} phase {phase:.1f} "
                  + " ".join(f"{k} {np.median(v) * 1e6:.0f} us" for k, v in times.items())
                  + f" tuned single-copy share {single:.2f} streaming share {streaming:.2f}", flush=True)
    for c in comms.values():
        if c is not None:
            c.free()


if __name__ == "__main__":
    main()
