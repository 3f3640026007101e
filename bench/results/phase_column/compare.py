"""Ratios to MPI with the phase read between rounds against without, from
ab.sh's runs: per (collective, size), the median over runs and the range of
distml's ratio in each set, and the share of rounds in the slow phase.

    python bench/results/phase_column/compare.py bench/results/phase_column/P2
"""
import glob
import json
import os
import sys
from collections import defaultdict

import numpy as np

from distml.bench.common import format_size


def main(d: str) -> None:
    ratios = defaultdict(list)
    slow = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(d, "*.json"))):
        mode = os.path.basename(path).split("_")[0]
        with open(path) as f:
            res = json.load(f)
        for r in res["rows"]:
            if r["implementation"] != "distml:auto":
                continue
            key = (r["collective"], r["bytes"])
            ratios[key, mode].append(r["ratio"])
            if "slow_share" in r:
                slow[key].append(r["slow_share"])
    keys = sorted({k for k, _ in ratios})
    print(f"{d}: {len(ratios[keys[0], 'phase'])} runs with the phase read, "
          f"{len(ratios[keys[0], 'nophase'])} without\n")
    print("| collective | size | with: median (range) | without: median (range) | with / without | slow rounds |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in keys:
        w, wo = ratios[k, "phase"], ratios[k, "nophase"]
        cell = lambda v: f"{np.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"  # noqa: E731
        print(f"| {k[0]} | {format_size(k[1])} | {cell(w)} | {cell(wo)} | {np.median(w) / np.median(wo):.2f} | "
              f"{np.mean(slow[k]):.0%} |")


if __name__ == "__main__":
    main(sys.argv[1])
