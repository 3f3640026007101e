"""Markdown tables of the floor runs: per collective, P and size, each run's
phase reading, MPI / distml, MPI / floor (the floor row net of its calls)
and the fraction of the floor distml reached, then the medians over runs
by phase (fast below 12, slow from 12: distml.bench.machine). Runs that
timed a collective's fixed cost (fixed:*) and the forced variants get a
second table: MPI / the floor with that cost put back, distml's fraction of
it, and the variant that was fastest and auto's fraction of it.

    python bench/results/floors/table.py bench/results/floors/allgather/*.json
"""
import json
import sys
from collections import defaultdict

import numpy as np



def by_phase(rows, keys):
    """The medians of ``keys`` over the rows of the fast phase and of the
    slow one (with their number of runs), two cells."""
    cells = []
    for fast in (True, False):
        sel = [r for r in rows if (r["phase_median"] < 12) == fast]
        cells.append(" / ".join(f"{np.median([r[k] for r in sel]):.2f}" for k in keys) + f" ({len(sel)})"
                     if sel else "-")
    return cells


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
    by = by_phase(rows, ("mpi_over_distml", "mpi_over_floor"))
    print(f"| {P} | {nbytes >> 20} MiB | {cells} | {by[0]} | {by[1]} |")

fixed = {k: [r for r in rows if "floor_fixed_s" in r] for k, rows in runs.items()}
if any(fixed.values()):
    print()
    print("| P | size | runs (phase: fixed us, MPI/floor+fixed, distml of it, fastest variant, auto of it) "
          "| fast: MPI/distml, MPI/floor+fixed, distml of it, auto of fastest | slow: the same |")
    print("|---:|---:|---|---|---|")
    for (P, nbytes), rows in sorted(fixed.items()):
        if not rows:
            continue
        cells = ", ".join(f"{r['phase_median']:.0f}: {r['fixed_s'] * 1e6:.0f} / {r['mpi_over_floor_fixed']:.2f} / "
                          f"{r['distml_of_floor_fixed']:.2f} / {r['best_variant'].split(':')[1]} / "
                          f"{r['auto_of_best_variant']:.2f}" for r in rows)
        by = by_phase(rows, ("mpi_over_distml", "mpi_over_floor_fixed", "distml_of_floor_fixed",
                             "auto_of_best_variant"))
        print(f"| {P} | {nbytes >> 20} MiB | {cells} | {by[0]} | {by[1]} |")
