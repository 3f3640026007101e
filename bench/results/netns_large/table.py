"""Tables for bench/results/netns_large: per link, float32 allreduce against
MPI_Allreduce (ratio = MPI's time / distml's inside one run; median of the
runs) and bfloat16's elements per second over float32's at the same bytes
(2 x float32 time / bfloat16 time of distml's auto at the same bytes,
runs paired by number).

usage: .venv/bin/python bench/results/netns_large/table.py
"""
import glob
import json
import os
import re
import statistics

here = os.path.dirname(os.path.abspath(__file__))


def load(rate, dtype):
    runs = {}
    for f in glob.glob(os.path.join(here, f"2x2_{rate}_{dtype}_run*.json")):
        n = int(re.search(r"_run(\d+)\.json$", f).group(1))
        runs[n] = {(r["implementation"], r["bytes"]): r for r in json.load(open(f))["rows"]}
    return runs


for rate in ["none", "1gbit"]:
    f32, bf16 = load(rate, "float32"), load(rate, "bfloat16")
    if not f32:
        continue
    sizes = sorted({b for rows in f32.values() for (_, b) in rows})
    impls = ["distml:auto", "distml:hierarchical", "distml:ring"]
    print(f"### 2 x 2, {'unlimited' if rate == 'none' else rate} ({len(f32)} runs)")
    print("| size | MPI_Allreduce ms | " + " | ".join(i[7:] for i in impls) + " | bf16 elements/s over float32 (auto) |")
    print("|---|---:|" + "---:|" * (len(impls) + 1))
    for b in sizes:
        mpi = statistics.median(rows[("mpi4py", b)]["time_s"] for rows in f32.values()) * 1e3
        cells = []
        for i in impls:
            rs = [rows[(i, b)]["ratio"] for rows in f32.values()]
            cells.append(f"{statistics.median(rs):.2f} ({', '.join(f'{r:.2f}' for r in rs)})")
        # The same bytes hold twice the elements in bfloat16.
        pairs = [2 * f32[n][("distml:auto", b)]["time_s"] / bf16[n][("distml:auto", b)]["time_s"]
                 for n in sorted(f32) if n in bf16]
        factor = f"{statistics.median(pairs):.2f} ({', '.join(f'{p:.2f}' for p in pairs)})" if pairs else ""
        print(f"| {b >> 20} MiB | {mpi:.1f} | " + " | ".join(cells) + f" | {factor} |")
    print()
