"""distml's ratio to MPI in each phase of the machine, per run set, from
sweeps that read the phase: for each (collective, size) and each set of
runs (the file name's first word), the median over runs of the row's ratio
in the fast phase and in the slow one (runs with rounds in that phase),
with the number of such runs. --impl names the rows (default
distml:auto; comma-separated for several, e.g. distml:auto,distml:in-place).

    python bench/results/phase_column/by_phase.py [--impl NAMES] DIR [DIR ...]
"""
import glob
import json
import os
import sys
from collections import defaultdict

import numpy as np

from distml.bench.common import format_size


def main(dirs, impls=("distml:auto",)) -> None:
    got = defaultdict(list)
    sets = []
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "*.json"))):
            name = os.path.basename(path).split("_")[0]
            with open(path) as f:
                res = json.load(f)
            label = f"P={res['machine']['P']} {name}"
            if label not in sets:
                sets.append(label)
            for r in res["rows"]:
                if r["implementation"] not in impls:
                    continue
                row = r["collective"] if len(impls) == 1 else f"{r['collective']} {r['implementation']}"
                for phase in ("fast", "slow"):
                    if f"ratio_{phase}" in r:
                        got[row, r["bytes"], label, phase].append(r[f"ratio_{phase}"])
    keys = sorted({(c, b) for c, b, _, _ in got}, key=lambda k: (k[1], k[0]))
    head = "| collective | size | " + " | ".join(f"{s} fast | {s} slow" for s in sets) + " |"
    print(head)
    print("|---|---:|" + "---:|" * (2 * len(sets)))
    for c, b in keys:
        cells = []
        for s in sets:
            for phase in ("fast", "slow"):
                v = got.get((c, b, s, phase), [])
                cells.append(f"{np.median(v):.2f} ({len(v)})" if v else "-")
        print(f"| {c} | {format_size(b)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--impl"]:
        main(args[2:], tuple(args[1].split(",")))
    else:
        main(args)
