"""Resident memory over many collectives (tests/test_robustness.py).

    mpiexec -n 2 python tests/fault_scripts/memory.py [COUNT]

Runs COUNT (default 10,000) collectives of mixed kinds and sizes (8 B to
256 KiB, blocking and async, every algorithm family, in-place and out=),
the same sequence on every rank, and reports the resident set size
(/proc/self/statm) after a warm-up of 1,000 and at the end. Leaked buffers,
handles or requests would make it grow.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

import numpy as np

import distml
from mpi4py import MPI

WORLD = MPI.COMM_WORLD
RANK, P = WORLD.rank, WORLD.size
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def one(comm, i: int, rng) -> None:
    kind = i % 9
    n = int(rng.choice([1, 7, 64, 1000, 4096, 65536]))
    dtype = [np.float32, np.float64, np.int32, np.float16][i % 4]
    x = np.full(n * P, RANK + 1, dtype=dtype)
    if kind == 0:
        y = comm.allreduce(x)
        assert y[0] == P * (P + 1) // 2
    elif kind == 1:
        comm.allreduce(x, out=x, algorithm=["auto", "ring", "recursive_doubling", "mpi"][i % 4])
    elif kind == 2:
        h = comm.allreduce(x, op="max", async_op=True)
        assert h.wait()[0] == P
    elif kind == 3:
        comm.broadcast(x, root=i % P)
    elif kind == 4:
        comm.allgather(x[:n], out=np.empty(n * P, dtype))
    elif kind == 5:
        comm.reduce_scatter(x, algorithm=["auto", "ring", "mpi"][i % 3])
    elif kind == 6:
        comm.alltoall(x)
    elif kind == 7:
        comm.reduce(x, root=(i // 9) % P, async_op=True).wait()
    else:
        comm.barrier(async_op=bool(i % 2)) if i % 2 == 0 else comm.barrier(async_op=True).wait()


def main(count: int) -> None:
    comm = distml.Communicator(WORLD, timeout=60.0)
    rng = np.random.default_rng(1234)  # the same sequence on every rank
    warm = min(1000, count // 10)
    start = time.monotonic()
    for i in range(warm):
        one(comm, i, rng)
    gc.collect()
    after_warmup = rss()
    samples = []
    for i in range(warm, count):
        one(comm, i, rng)
        if i % 1000 == 0:
            samples.append(rss())
    gc.collect()
    end = rss()
    sys.stdout.write("FAULT " + json.dumps({
        "case": "memory", "rank": RANK, "count": count, "rss_after_warmup": after_warmup, "rss_end": end,
        "rss_samples": samples, "seconds": time.monotonic() - start}) + "\n")
    sys.stdout.flush()
    comm.free()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
