"""Collectives on more than 2**31 int8 elements, at P = 2 (tests/test_robustness.py).

    mpiexec -n 2 python tests/fault_scripts/large.py [COLLECTIVE:ALGORITHM ...]

(default: every collective with "auto").

Inputs repeat a tile of odd prime length T, different on each rank, so a
misplaced block (an offset truncated to 32 bits is off by a multiple of
2**31, which T does not divide) shows up as wrong values. Every element of
every result is compared, in chunks, against the tile it must hold. Arrays
are freed between cases; the peak is about 3 GiB per rank.
"""

from __future__ import annotations

import gc
import json
import sys
import time

import numpy as np

import distml
from mpi4py import MPI

WORLD = MPI.COMM_WORLD
RANK, P = WORLD.rank, WORLD.size
N = 2**31 + 77
T = 1_000_003  # prime
SAMPLES = [0, 1, T, 2**31 - 1, 2**31, 2**31 + 1, N - 1]


def tile(rank: int) -> np.ndarray:
    return ((np.arange(T, dtype=np.int64) * 31 + 7 * rank) % 60).astype(np.int8)


def filled(n: int, pattern: np.ndarray) -> np.ndarray:
    a = np.empty(n, np.int8)
    rows = n // T
    a[:rows * T].reshape(rows, T)[...] = pattern
    a[rows * T:] = pattern[:n - rows * T]
    return a


def mismatches(a: np.ndarray, pattern: np.ndarray) -> int:
    """How many elements of ``a`` differ from ``pattern`` repeated."""
    bad, step = 0, 64 * T
    for start in range(0, a.size, step):
        seg = a[start:start + step]
        rows = seg.size // T
        bad += int(np.count_nonzero(seg[:rows * T].reshape(rows, T) != pattern))
        bad += int(np.count_nonzero(seg[rows * T:] != pattern[:seg.size - rows * T]))
    return bad


def report(**fields) -> None:
    sys.stdout.write("FAULT " + json.dumps({"case": "large", "rank": RANK, **fields}) + "\n")
    sys.stdout.flush()


def main(specs) -> None:
    comm = distml.Communicator(WORLD, timeout=300.0)
    total = sum(tile(r).astype(np.int64) for r in range(P)).astype(np.int8)
    todo = [tuple(s.split(":")) for s in specs]

    def algorithms(collective):
        return [a for c, a in todo if c == collective]

    for algorithm in algorithms("allreduce"):
        x = filled(N, tile(RANK))
        WORLD.Barrier()
        t = time.monotonic()
        comm.allreduce(x, out=x, algorithm=algorithm)
        seconds = time.monotonic() - t
        report(collective="allreduce", algorithm=algorithm, count=N, seconds=seconds, bad=mismatches(x, total),
               samples={i: int(x[i]) for i in SAMPLES}, expect={i: int(total[i % T]) for i in SAMPLES})
        del x
        gc.collect()

    for algorithm in algorithms("broadcast"):
        x = filled(N, tile(0)) if RANK == 0 else np.zeros(N, np.int8)
        WORLD.Barrier()
        t = time.monotonic()
        comm.broadcast(x, root=0, algorithm=algorithm)
        seconds = time.monotonic() - t
        report(collective="broadcast", algorithm=algorithm, count=N, seconds=seconds, bad=mismatches(x, tile(0)))
        del x
        gc.collect()

    for algorithm in algorithms("allgather"):
        # Each rank's part is over 2**30 elements; the output over 2**31.
        m = N // 2 + 1
        x = filled(m, tile(RANK))
        WORLD.Barrier()
        t = time.monotonic()
        out = comm.allgather(x, algorithm=algorithm)
        seconds = time.monotonic() - t
        del x
        bad = sum(mismatches(out[r * m:(r + 1) * m], tile(r)) for r in range(P))
        report(collective="allgather", algorithm=algorithm, count=out.size, seconds=seconds, bad=bad)
        del out
        gc.collect()

    for algorithm in algorithms("reduce_scatter"):
        x = filled(N, tile(RANK))
        WORLD.Barrier()
        t = time.monotonic()
        part = comm.reduce_scatter(x, algorithm=algorithm)
        seconds = time.monotonic() - t
        del x
        offset = sum(len(range(r, N, P)) for r in range(RANK))  # array_split's part sizes
        want = np.roll(total, -(offset % T))
        report(collective="reduce_scatter", algorithm=algorithm, count=N, part=part.size, seconds=seconds,
               bad=mismatches(part, want))
        del part
        gc.collect()
    comm.free()


if __name__ == "__main__":
    main(sys.argv[1:] or [f"{c}:auto" for c in ("allreduce", "broadcast", "allgather", "reduce_scatter")])
