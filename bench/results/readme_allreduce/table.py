"""The README's allreduce table from the runs here: per size, the median over
runs of MPI_Allreduce's time / distml's (auto, and in place on node-shared
memory), of a new result's time / `out=x`'s, and of the fraction of the
memory bound auto reaches (distml.bench.add_memory_bound).

    python bench/results/readme_allreduce/table.py bench/results/readme_allreduce/allreduce_P2_run*.json
"""
import json
import statistics
import sys

from distml.bench.common import format_size


def main(paths):
    cells = {}
    for p in paths:
        by = {}
        for r in json.load(open(p))["rows"]:
            if r["collective"] == "allreduce":
                by.setdefault(r["bytes"], {})[r["implementation"]] = r
        for b, impls in by.items():
            c = cells.setdefault(b, {"auto": [], "shared": [], "fresh": [], "bound": [], "mpi_us": []})
            c["auto"].append(impls["distml:auto"]["ratio"])
            if "distml:shared-buffer" in impls:
                c["shared"].append(impls["distml:shared-buffer"]["ratio"])
            c["fresh"].append(impls["distml:fresh"]["time_s"] / impls["distml:in-place"]["time_s"])
            c["mpi_us"].append(impls["mpi4py"]["time_s"] * 1e6)
            if "of_memory_bound" in impls["distml:auto"]:
                c["bound"].append(impls["distml:auto"]["of_memory_bound"])
    med = statistics.median
    print("| size | MPI us | `auto` (runs) | median | shared buffer | new result / `out=x` | auto of bound |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for b in sorted(cells):
        c = cells[b]
        print(f"| {format_size(b)} | {med(c['mpi_us']):.1f} | {', '.join(f'{x:.2f}' for x in c['auto'])} | "
              f"**{med(c['auto']):.2f}** | {med(c['shared']):.2f} | {med(c['fresh']):.2f} | "
              f"{med(c['bound']):.2f} |" if c["shared"] and c["bound"] else
              f"| {format_size(b)} | {med(c['mpi_us']):.1f} | {', '.join(f'{x:.2f}' for x in c['auto'])} | "
              f"**{med(c['auto']):.2f}** | {med(c['shared']) if c['shared'] else '-'} | {med(c['fresh']):.2f} | - |")


if __name__ == "__main__":
    main(sys.argv[1:])
