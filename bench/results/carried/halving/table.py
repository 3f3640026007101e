"""Markdown tables for bench/results/carried/halving: per configuration,
ratio = MPI_Allreduce's time / the implementation's, each taken inside one
run, median over the runs, then [median time of one call, us].

usage: .venv/bin/python bench/results/carried/halving/table.py [DIR]
"""
import glob
import json
import os
import re
import statistics
import sys

here = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
ORDER = ["mpi4py", "distml:auto", "distml:halving_doubling", "distml:recursive_doubling", "distml:ring",
         "distml:hierarchical"]


def size_name(b):
    return f"{b >> 20} MiB" if b >= 1 << 20 else f"{b >> 10} KiB" if b >= 1024 else f"{b} B"


for tag in ["4x1", "4x1_1gbit", "2x2", "2x2_1gbit"]:
    files = sorted(glob.glob(os.path.join(here, f"{tag}_run*.json")))
    if not files:
        continue
    ratio, time_us, resolved = {}, {}, {}
    for f in files:
        for r in json.load(open(f))["rows"]:
            key = (r["implementation"], r["bytes"])
            ratio.setdefault(key, []).append(r["ratio"])
            time_us.setdefault(key, []).append(r["time_s"] * 1e6)
            if r["implementation"] == "distml:auto":
                resolved.setdefault(r["bytes"], set()).add(r["resolved"])
    impls = [i for i in ORDER if any(k[0] == i for k in ratio)]
    sizes = sorted({k[1] for k in ratio})
    print(f"### {tag} ({len(files)} runs)")
    print("| size | " + " | ".join(i.replace("distml:", "") for i in impls) + " | auto took |")
    print("|---|" + "---|" * (len(impls) + 1))
    for b in sizes:
        cells = []
        for i in impls:
            if (i, b) not in ratio:
                cells.append("")
                continue
            cells.append(f"{statistics.median(ratio[i, b]):.2f} [{statistics.median(time_us[i, b]):.0f}]")
        print(f"| {size_name(b)} | " + " | ".join(cells) + f" | {', '.join(sorted(resolved.get(b, [])))} |")
    print()
