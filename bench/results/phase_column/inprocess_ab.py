"""Does reading the phase between rounds move a row? One set of processes
times each row again and again, with the reading (sweep.time_interleaved_phased
with machine.phase_reading) and without it, alternating, so that both see
the same phases of the machine; prints per row and mode the median over
repetitions of distml's ratio to MPI, its quartiles, and the share of slow
rounds in the repetitions with the reading.

    mpiexec -n P .venv/bin/python bench/results/phase_column/inprocess_ab.py SECONDS_PER_ROW COLL:SIZE ...
"""
import functools
import sys
import time

import numpy as np
from mpi4py import MPI

import distml
from distml.bench.common import parse_size
from distml.bench.machine import SLOW_PHASE_RATIO, phase_cpus, phase_reading
from distml.bench.sweep import Case, iteration_counts, time_interleaved_phased
from distml.bench.cli import build_parser


def main() -> None:
    seconds = float(sys.argv[1])
    rows = [(c, parse_size(s)) for c, s in (a.split(":") for a in sys.argv[2:])]
    w = MPI.COMM_WORLD
    mcomm = w.Dup()
    comm = distml.Communicator(w)
    args = build_parser().parse_args([])
    cpus = mcomm.bcast(phase_cpus() if w.rank == 0 else None, root=0)
    reading = functools.partial(phase_reading, mcomm, cpus)
    for name, nbytes in rows:
        case = Case(name, nbytes, np.dtype(np.float32), w.rank, w.size, 3)
        iters, warmup = iteration_counts(case.nbytes, args)
        runs = [case.baseline_call(mcomm), case.distml_call(comm, "auto")]
        got = {True: [], False: []}
        slow = []
        end = time.time() + seconds
        k = 0
        while mcomm.bcast(time.time() < end, root=0):
            on = k % 2 == 0
            times, readings = time_interleaved_phased(mcomm, runs, iters, warmup, reading if on else None)
            med = np.median(times, axis=1)
            got[on].append(med[0] / med[1])
            if on:
                slow.append(float(np.mean(readings >= SLOW_PHASE_RATIO)))
            k += 1
        if w.rank == 0:
            for on in (True, False):
                r = got[on]
                print(f"P={w.size} {name} {nbytes} reading={'on ' if on else 'off'} reps={len(r)} "
                      f"ratio {np.median(r):.2f} ({np.percentile(r, 25):.2f}-{np.percentile(r, 75):.2f})"
                      + (f" slow rounds {np.mean(slow):.0%}" if on else ""), flush=True)
    comm.free()
    mcomm.Free()


if __name__ == "__main__":
    main()
