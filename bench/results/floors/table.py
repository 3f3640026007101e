"""Markdown tables of the floor runs: per collective, P and size, each run's
phase reading, MPI / distml, MPI / floor (the floor row net of its calls)
and the fraction of the floor distml reached, then the medians over runs
by phase (fast below 12, slow from 12: distml.bench.machine).

    python bench/results/floors/table.py bench/results/floors/allgather/*.json
"""
import json
import sys
from collections import defaultdict

import numpy as np

runs = defaultdict(list)
for path in sys.argv[1:]:
    with open(path) as f:
        for r in json.load(f)["rows"]:
            runs[(r["P"], r["bytes"])].append(r)
print("| P | size | runs (phase: MPI/distml, MPI/floor, distml of floor) | fast: MPI/distml, MPI/floor | slow: MPI/distml, MPI/floor |")
print("|---:|---:|---|---|---|")
for (P, nbytes), rows in sorted(runs.items()):
    cells = ", ".join(f"{r['phase_median']:.0f}: {r['mpi_over_distml']:.2f} / {r['mpi_over_floor']:.2f} / "
                      f"{r['distml_of_floor']:.2f}" for r in rows)
    by = []
    for fast in (True, False):
        sel = [r for r in rows if (r["phase_median"] < 12) == fast]
        by.append(f"{np.median([r['mpi_over_distml'] for r in sel]):.2f} / "
                  f"{np.median([r['mpi_over_floor'] for r in sel]):.2f} ({len(sel)})" if sel else "-")
    print(f"| {P} | {nbytes >> 20} MiB | {cells} | {by[0]} | {by[1]} |")
