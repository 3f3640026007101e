"""Markdown tables of the others_large runs: per (collective, size), MPI's
time, distml auto's ratio in each run and its median, what auto took, and
the memory bound (distml.bench.memory_bound_factor at the memcpy rate each
run measured): the bound's time, the fraction of it MPI and distml reach,
and the ratio to MPI a schedule exactly at the bound would show. Where the
runs timed the kernel's copy (process_vm_writev) as well, the same for the
bound on private arrays (distml.bench.add_memory_bound: each block from a
peer crosses by the kernel's copy or two memcpys, whichever is faster).

    python bench/results/others_large/table.py bench/results/others_large/<tag>_P2_run*.json
"""
import json
import statistics
import sys

from distml.bench.common import format_size


def main(paths):
    cells = {}
    for p in paths:
        res = json.load(open(p))
        by = {}
        for r in res["rows"]:
            by.setdefault((r["collective"], r["bytes"]), {})[r["implementation"]] = r
        for key, impls in by.items():
            mpi, auto = impls.get("mpi4py"), impls.get("distml:auto")
            if not mpi or not auto:
                continue
            c = cells.setdefault(key, {"mpi_us": [], "ratio": [], "took": set(), "bound_us": [], "mpi_of": [],
                                       "auto_of": [], "max": [], "pbound_us": [], "mpi_pof": [],
                                       "auto_pof": [], "pmax": []})
            c["mpi_us"].append(mpi["time_s"] * 1e6)
            c["ratio"].append(auto["ratio"])
            c["took"].add(auto.get("resolved") or "")
            if "size_memcpy_s" in mpi:  # sizes with a memcpy of their own (from 1 MiB)
                c["bound_us"].append(mpi["memory_bound_s"] * 1e6)
                c["mpi_of"].append(mpi["of_memory_bound"])
                c["auto_of"].append(auto["of_memory_bound"])
                c["max"].append(mpi["max_ratio_at_bound"])
            if "private_bound_s" in mpi and "of_private_bound" in auto:
                c["pbound_us"].append(mpi["private_bound_s"] * 1e6)
                c["mpi_pof"].append(mpi["of_private_bound"])
                c["auto_pof"].append(auto["of_private_bound"])
                c["pmax"].append(mpi["max_ratio_at_private_bound"])
    med = statistics.median
    private = any(c["pbound_us"] for c in cells.values())
    head = ("| collective | size | MPI us | distml auto: runs | median | auto took | bound us | MPI of bound | "
            "distml of bound | ratio at bound |")
    rule = "|---|---|---:|---|---:|---|---:|---:|---:|---:|"
    if private:
        head += " private bound us | MPI of it | distml of it | ratio at it |"
        rule += "---:|---:|---:|---:|"
    print(head)
    print(rule)
    for (coll, b), c in sorted(cells.items()):
        bound = (f"{med(c['bound_us']):.0f} | {med(c['mpi_of']):.2f} | {med(c['auto_of']):.2f} | {med(c['max']):.2f}"
                 if c["bound_us"] else "- | - | - | -")
        print(f"| {coll} | {format_size(b)} | {med(c['mpi_us']):.0f} | "
              f"{', '.join(f'{x:.2f}' for x in c['ratio'])} | **{med(c['ratio']):.2f}** | "
              f"{', '.join(sorted(c['took']))} | {bound} |"
              + (f" {med(c['pbound_us']):.0f} | {med(c['mpi_pof']):.2f} | {med(c['auto_pof']):.2f} | "
                 f"{med(c['pmax']):.2f} |" if c["pbound_us"] else (" - | - | - | - |" if private else "")))


if __name__ == "__main__":
    main(sys.argv[1:])
