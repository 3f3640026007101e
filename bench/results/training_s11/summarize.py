"""Medians over runs of the training benchmarks' step times and ratios
(bench/bench_training.py --json, bench/bench_torch.py --out), per P:

    python bench/results/training_s11/summarize.py bench/results/training_s11
"""
import glob
import json
import os
import statistics
import sys

d = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
med = statistics.median
for P in (2, 4):
    runs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(d, f"training_P{P}_run*.json")))]
    if runs:
        steps = {k: [r["median_step_s"][k] * 1e3 for r in runs] for k in runs[0]["median_step_s"]}
        base, fused = steps["mpi4py_per_grad"], steps["mpi4py_fused"]
        print(f"training P={P} ({len(runs)} runs): " + "; ".join(
            f"{k} {med(v):.1f} ms" for k, v in steps.items()))
        for k in ("distml_no_overlap", "distml_overlap"):
            per = [b / t for b, t in zip(base, steps[k])]
            fu = [f / t for f, t in zip(fused, steps[k])]
            print(f"  {k}: vs per-gradient {', '.join(f'{x:.2f}' for x in per)} (median {med(per):.2f}); "
                  f"vs fused {', '.join(f'{x:.2f}' for x in fu)} (median {med(fu):.2f})")
    runs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(d, f"torch_P{P}_run*.json")))]
    if runs:
        r = [x["ratio_ddp_over_distml"] for x in runs]
        m = {k: med(x["median_s"][k] * 1e3 for x in runs) for k in runs[0]["median_s"]}
        print(f"torch P={P} ({len(runs)} runs): DDP gloo / distml.torch {', '.join(f'{x:.2f}' for x in r)} "
              f"(median {med(r):.2f}); medians " + "; ".join(f"{k} {v:.0f} ms" for k, v in m.items()))
