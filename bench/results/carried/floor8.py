"""8-byte allreduce across virtual hosts: distml against MPI_Allreduce and
against the same two rounds of messages sent from user code.

Per repetition, interleaved, CALLS calls each (after a warm-up): mpi4py's
Allreduce of 2 float32; distml's allreduce (auto, mismatch check on, the
check carried in recursive doubling's messages); distml with check=False
(bare recursive doubling); two rounds of MPI_Sendrecv of 24 bytes (8 bytes
of data and the 16-byte header distml's carried messages add) between
recursive doubling's partners (rank ^ 1, then rank ^ 2), from mpi4py.
Rank 0 prints one JSON line with the per-repetition medians (us per call;
each figure the slowest rank's mean over the repetition).

usage (root, from the repository; 4 ranks, a power of two):
    MPIEXEC=.venv/bin/mpiexec tools/netns_cluster.sh run 4 -- .venv/bin/python bench/results/carried/floor8.py
    MPIEXEC=.venv/bin/mpiexec tools/netns_cluster.sh run 2 --ranks-per-host 2 -- .venv/bin/python bench/results/carried/floor8.py
"""
import json
import os
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

import distml

CALLS = int(os.environ.get("FLOOR_CALLS", "3000"))
REPS = int(os.environ.get("FLOOR_REPS", "5"))


def main() -> None:
    world = MPI.COMM_WORLD
    P, rank = world.Get_size(), world.Get_rank()
    if P & (P - 1):
        sys.exit("needs a power of two of ranks")
    hosts = len(set(world.allgather(MPI.Get_processor_name())))
    mpi = world.Dup()
    checked = distml.Communicator(world.Dup())
    bare = distml.Communicator(world.Dup(), check=False)
    x = np.ones(2, np.float32)
    y = np.empty_like(x)
    send = np.ones(6, np.float32)  # 24 bytes
    recv = np.empty_like(send)
    partners = []
    d = 1
    while d < P:
        partners.append(rank ^ d)
        d <<= 1

    def two_rounds():
        for peer in partners:
            mpi.Sendrecv(send, peer, 7, recv, peer, 7)

    impls = {
        "MPI_Allreduce (mpi4py)": lambda: mpi.Allreduce(x, y),
        "distml allreduce, check carried": lambda: checked.allreduce(x, out=y),
        "distml allreduce, check=False": lambda: bare.allreduce(x, out=y),
        "log2(P) rounds of MPI_Sendrecv from mpi4py (24 bytes)": two_rounds,
    }
    per = {name: [] for name in impls}
    for name, f in impls.items():  # warm-up
        for _ in range(200):
            f()
    for _ in range(REPS):
        for name, f in impls.items():
            world.Barrier()
            t = time.perf_counter()
            for _ in range(CALLS):
                f()
            dt = (time.perf_counter() - t) / CALLS
            per[name].append(world.allreduce(dt, op=MPI.MAX) * 1e6)
    if rank == 0:
        print(json.dumps({"P": P, "hosts": hosts, "calls": CALLS, "reps": REPS, "loadavg": open("/proc/loadavg").read().split()[:3],
                          "us_per_call": {k: round(statistics.median(v), 1) for k, v in per.items()},
                          "runs": {k: [round(t, 1) for t in v] for k, v in per.items()}}))
    checked.free()
    bare.free()


if __name__ == "__main__":
    main()
