"""The tables of collectives_17.md's section on cold destinations, from
fresh_cold.py's runs and the bench sweeps beside them: per P and size, the
median over runs of each ratio (min-max over runs in brackets).

    python bench/results/readme_allreduce/fresh_cold_table.py
"""
import glob
import json
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))


def cell(vals, fmt="{:.2f}"):
    return f"{fmt.format(statistics.median(vals))} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"


DISTML = [("fresh", "inplace_hot", "fresh / `out=x`"), ("out_cold", "inplace_hot", "`out=y` cold / `out=x`"),
          ("fresh", "out_cold", "fresh / `out=y` cold"), ("out_coldpool", "out_cold", "`y` a pool block / cold"),
          ("out_coldhuge", "out_cold", "`y` on 2 MiB pages / cold"), ("fresh_np", "out_cold", "`out=np.empty` / cold"),
          ("out", "inplace_hot", "`out=y` shared sets / `out=x`"), ("inplace_own", "inplace_hot", "`out=x` own sets / hot")]
NUMPY = [("np1_new", "np1_inplace_hot", "new / `out=a`"), ("np1_new", "np1_out_cold", "new / `out=z`"),
         ("np1_out_hot", "np1_out_cold", "`out=c` / `out=z`"), ("np_new", "np_inplace_hot", "`add(a, b)`: new / `out=a`")]


def script_table(rows, times):
    head = "| P | size | " + " | ".join(f"{label} us" for _, label in times) + " | " + " | ".join(h for _, _, h in rows) + " |"
    print(head)
    print("|---" * (2 + len(times) + len(rows)) + "|")
    for P in (2, 4):
        runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(HERE, f"fresh_cold_P{P}_run*.json")))]
        for size in runs[0]["sizes"]:
            m = [{k: v["median_us"] for k, v in r["sizes"][size].items()} for r in runs]
            us = [statistics.median(x[k] for x in m) for k, _ in times]
            print(f"| {P} | {size[:-3]} MiB | " + " | ".join(f"{u:.0f}" for u in us) + " | "
                  + " | ".join(cell([x[a] / x[b] for x in m]) for a, b, _ in rows) + " |")
    print()


def sweep_table(P):
    print(f"P={P}: bench sweep, `distml:fresh` / `distml:in-place` time, median (min-max) over runs\n")
    print("| size | pool (as committed) | pool off (`DISTML_RESULT_POOL_BYTES=0`) | pool from 4 MiB only |")
    print("|---|---|---|---|")
    table = {}
    for kind in ("base", "nopool", "pool4M"):
        for p in sorted(glob.glob(os.path.join(HERE, f"fresh_sweep_{kind}_P{P}_run*.json"))):
            by = {}
            for r in json.load(open(p))["rows"]:
                by.setdefault(r["bytes"], {})[r["implementation"]] = r["time_s"]
            for b, t in by.items():
                table.setdefault(b, {}).setdefault(kind, []).append(t["distml:fresh"] / t["distml:in-place"])
    for b in sorted(table):
        row = table[b]
        print(f"| {b >> 20} MiB | " + " | ".join(f"{cell(row[k])} [{len(row[k])}]" for k in ("base", "nopool", "pool4M")) + " |")
    print()


print("distml (fresh, `out=x` hot, `out=y` cold)\n")
script_table(DISTML, (("fresh", "fresh"), ("inplace_hot", "`out=x`"), ("out_cold", "`out=y` cold")))
print("numpy alone (`np.add(a, 1.0)` new, `out=a`, `out=z`)\n")
script_table(NUMPY, (("np1_new", "new"), ("np1_inplace_hot", "`out=a`"), ("np1_out_cold", "`out=z`")))
for P in (2, 4):
    sweep_table(P)
