"""Each collective target checked against the runs given: per P, collective
and size, the median over runs of each figure, whether it meets its target,
and the cells that miss with every run's value.

Targets (ratios are MPI's time / distml's, or the peer's / distml's, inside
one run; medians over runs):
    every collective, `auto`, every size           >= 1.0x MPI's own
    every collective, `auto`, from 1 MiB           >= 1.5x MPI's own
    allreduce, a new result / `out=x` (time)       <= 1.2
    allreduce in place against each peer           >= 1.0x
    allreduce, `auto`, from 16 MiB                 >= 0.8 of the memory bound

    python bench/results/closing/targets.py bench/results/closing/*_run*.json
"""
import json
import statistics
import sys

from distml.bench.common import format_size

PEERS = ("deepspeed:shm", "oneccl", "torch:gloo")
MiB = 1 << 20


def rows_by_cell(path):
    """{(P, collective, size): {implementation: row}} of one sweep file."""
    by = {}
    for r in json.load(open(path))["rows"]:
        by.setdefault((r["P"], r["collective"], r["bytes"]), {})[r["implementation"]] = r
    return by


def collect(paths):
    """{(target, P, collective, size): [value per run]} and the slow-phase
    share of distml's rows per (P, collective, size)."""
    cells, slow = {}, {}
    for p in paths:
        for (P, coll, b), impls in rows_by_cell(p).items():
            auto, mpi = impls.get("distml:auto"), impls.get("mpi4py")
            if auto is None or mpi is None:
                continue
            peers = [name for name in PEERS if name in impls]

            def add(target, value):
                cells.setdefault((target, P, coll, b), []).append(value)
            if not peers:  # the peers' runs time allreduce a second time: count each run once
                add("vs MPI", auto["ratio"])
                if b >= MiB:
                    add("vs MPI from 1 MiB", auto["ratio"])
                slow.setdefault((P, coll, b), []).append(auto.get("slow_share", float("nan")))
            if "distml:fresh" in impls:
                add("new result / out=x", impls["distml:fresh"]["time_s"] / impls["distml:in-place"]["time_s"])
            for name in peers:
                add(f"vs {name}", impls[name]["time_s"] / impls["distml:in-place"]["time_s"])
            if coll == "allreduce" and b >= 16 * MiB and "of_memory_bound" in auto and not peers:
                add("of memory bound", auto["of_memory_bound"])
    return cells, slow


def meets(target, value):
    if target == "new result / out=x":
        return value <= 1.2
    if target == "vs MPI from 1 MiB":
        return value >= 1.5
    if target == "of memory bound":
        return value >= 0.8
    return value >= 1.0


def main(paths):
    cells, slow = collect(paths)
    med = statistics.median
    targets = sorted({k[0] for k in cells}, key=lambda t: (not t.startswith("vs MPI"), t))
    print("| target | P | cells | met | missed |")
    print("|---|---:|---:|---:|---|")
    misses = []
    for t in targets:
        for P in sorted({k[1] for k in cells if k[0] == t}):
            keys = sorted(k for k in cells if k[0] == t and k[1] == P)
            missed = [k for k in keys if not meets(t, med(cells[k]))]
            misses += missed
            names = ", ".join(f"{k[2]} {format_size(k[3])}" for k in missed)
            print(f"| {t} | {P} | {len(keys)} | {len(keys) - len(missed)} | {names or '-'} |")
    print()
    print("| target | P | collective | size | median | runs | slow-phase share (runs) |")
    print("|---|---:|---|---:|---:|---|---|")
    for t, P, coll, b in misses:
        v = cells[(t, P, coll, b)]
        share = ", ".join(f"{s:.2f}" for s in slow.get((P, coll, b), []))
        print(f"| {t} | {P} | {coll} | {format_size(b)} | {med(v):.2f} | {', '.join(f'{x:.2f}' for x in v)} | "
              f"{share} |")


if __name__ == "__main__":
    main(sys.argv[1:])
