"""The distml benchmark sweep: every collective and algorithm against MPI.

Run under mpiexec, on all ranks::

    mpiexec -n 2 python -m distml.bench                       # everything
    mpiexec -n 4 python -m distml.bench --collectives allreduce
    python -m distml.bench plot bench/results/a.json b.json -o sweep.png
    python -m distml.bench table bench/results/a.json --field ratio   # markdown
    OMP_NUM_THREADS=1 mpiexec -n 2 python -m distml.bench --collectives allreduce --peers deepspeed
                                                  # beside another library's (distml.bench.peers)

For each collective, each of its algorithms and each message size, the sweep
times distml and, in the same run on the same buffers, the baseline: mpi4py's
own buffer collective (``Allreduce``, ``Bcast``, ...) on a duplicate of the
world communicator. A single-rank ``np.copyto`` of 256 MiB is timed too,
before and after the sweep: the memory bandwidth that any on-node collective
is bounded by.

Timing protocol (the same for distml and the baseline):

- the implementations of one (collective, size) run interleaved, one call
  of each per round in an order drawn anew each round (the same on every
  rank), so background load on a shared machine and the after-effects of
  the previous call affect them alike and their ratios stay meaningful;
- every call starts after a barrier and is timed with ``time.perf_counter``
  on every rank; a call's time is the maximum over ranks (one MPI MAX
  reduction of all the times at the end, so no extra traffic inside the
  timed loop); the figure reported is the median over rounds;
- 2-3 sets of input/output buffers are used in rotation where they fit the
  memory budget, so a message that fits in the last-level cache is not timed
  warm from the previous iteration; outputs are preallocated (``out=``);
- large messages run fewer iterations (a byte budget per size), so a full
  P = 2 sweep of allreduce takes a minute or two;
- the machine's phase is read about 16 times per (collective, size),
  between rounds and outside the timed calls: on some virtual machines
  moving cache lines between two cores gets 3-5x dearer for seconds to
  minutes at a time (bench/results/host_phases.md). Every row then also
  carries the share of its rounds in the slow phase and its ratio within
  each phase (``table --field phase``); ``--no-phase`` turns it off.

Reported per (collective, implementation, size): median time, algbw = bytes /
time, busbw = algbw x the NCCL-tests factor (allreduce 2(P-1)/P; allgather,
reduce_scatter and alltoall (P-1)/P; broadcast and reduce 1), and ratio =
baseline time / distml time (above 1: distml is faster). ``bytes`` is the
buffer a user thinks of: the reduced buffer for allreduce and reduce, the
full gathered buffer for allgather, the full input for reduce_scatter, and
each rank's send buffer for alltoall.

Rank 0 prints a table and writes JSON (machine info, memcpy ceiling, every
row) to ``bench/results/<name>.json``. matplotlib is needed only for ``plot``
and ``--png``.

The sweep must be started on all ranks with the same arguments.
"""

from __future__ import annotations

from .common import BASELINE, COLLECTIVES, DEFAULT_SIZES, KiB, MiB, MEMCPY_BYTES, format_size, parse_size
from .machine import machine_info, memcpy_ceiling, phase_reading
from .sweep import Case, accepted_algorithms, run_sweep, time_interleaved, time_interleaved_phased, usable_algorithms
from .report import add_memory_bound, markdown_table, memory_bound_factor, peers_table, print_table, write_json
from .plot import plot
from .cli import build_parser, main

__all__ = ["BASELINE", "COLLECTIVES", "DEFAULT_SIZES", "KiB", "MiB", "MEMCPY_BYTES", "format_size", "parse_size",
           "machine_info", "memcpy_ceiling", "phase_reading", "Case", "accepted_algorithms", "run_sweep",
           "time_interleaved", "time_interleaved_phased", "usable_algorithms", "add_memory_bound", "markdown_table", "memory_bound_factor", "peers_table", "print_table",
           "write_json", "plot", "build_parser", "main"]
