"""Medians of probe.py's columns in the two phases its handoff column shows
(the threshold between them: twice the run's lowest handoff), and the
fraction of samples in the slow one.

    python bench/results/host_phases/summary.py bench/results/host_phases/<run>.txt
"""
import statistics
import sys


def main(path: str) -> None:
    with open(path) as f:
        head, *rows = [line.split() for line in f if line.strip()]
    rows = [[float(v) for v in r] for r in rows if len(r) == len(head)]
    cut = 2 * min(r[1] for r in rows)
    phases = {"fast": [r for r in rows if r[1] < cut], "slow": [r for r in rows if r[1] >= cut]}
    print(f"{path}: {len(rows)} samples, handoff threshold {cut:.0f} us, "
          f"{len(phases['slow']) / len(rows):.0%} of them slow")
    print("| column | " + " | ".join(f"{k} phase (n={len(v)})" for k, v in phases.items()) + " | slow / fast |")
    print("|---|---:|---:|---:|")
    for i, name in enumerate(head[1:], start=1):
        med = {k: statistics.median(r[i] for r in v) if v else float("nan") for k, v in phases.items()}
        print(f"| {name} | {med['fast']:.0f} | {med['slow']:.0f} | {med['slow'] / med['fast']:.2f} |")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        main(p)
