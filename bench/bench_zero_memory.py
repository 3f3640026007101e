"""Gradient memory per rank of ShardedOptimizer, stage 1 next to stage 2.

    python bench/bench_zero_memory.py [--sizes 1 2 4] [--numel 25000000]

Launches itself under mpiexec at each world size P. Every rank builds the
same model (float32 matrices and biases, about ``--numel`` parameters, with
gradient arrays of its own, as a model's backward pass leaves them), then for
each stage constructs a ShardedOptimizer (plain SGD, so there is no optimizer
state to count) and takes ``--steps`` steps with ``step(grads)``. Per rank it
records:

- ``grad_bytes``: the gradient storage the optimizer holds
  (``grad_nbytes()``): stage 1 the padded flat gradient, stage 2 the
  gradient shard and one bucket;
- ``kept_bytes``: what tracemalloc sees still allocated after the steps, minus
  the optimizer's flat copy of the parameters and its allgather send buffer
  (the parts that are the same in both stages): the gradient memory measured
  from outside;
- ``step_peak_bytes``: the tracemalloc peak during the steps above what was
  allocated before them: transient memory of the reduction and of the
  update (SGD's ``lr * grad`` is one shard-sized temporary);
- ``step_s``: the median step time (slowest rank).

Writes bench/results/zero_memory.json and bench/results/zero_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def model_shapes(numel: int):
    """Ten square layers with biases, about ``numel`` parameters in all."""
    side = int((numel / 10) ** 0.5)
    return [s for _ in range(10) for s in ((side, side), (side,))]


def inner(args) -> None:
    import tracemalloc

    import numpy as np
    from mpi4py import MPI

    import distml
    from distml import optim

    world = MPI.COMM_WORLD
    comm = distml.init()
    rng = np.random.default_rng(0)
    shapes = model_shapes(args.numel)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    numel = sum(p.size for p in params)
    rows = []
    for stage in (1, 2):
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        opt = distml.ShardedOptimizer(optim.SGD, params, comm=comm, stage=stage, lr=1e-6,
                                      bucket_bytes=args.bucket_mib << 20)
        built = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        times = []
        for _ in range(args.steps):
            world.Barrier()
            t0 = time.perf_counter()
            opt.step(grads)
            times.append(world.allreduce(time.perf_counter() - t0, op=MPI.MAX))
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        same_in_both = opt._flat_params.nbytes + opt._send.nbytes
        row = {"P": comm.size, "stage": stage, "rank": comm.rank, "numel": numel,
               "grad_bytes": opt.grad_nbytes(), "kept_bytes": current - before - same_in_both,
               "step_peak_bytes": peak - built, "step_s": statistics.median(times)}
        rows.append(world.gather(row, root=0))
        del opt
    if comm.rank == 0:
        print("ROWS " + json.dumps([r for per_stage in rows for r in per_stage]), flush=True)


def outer(args) -> None:
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    rows = []
    for P in args.sizes:
        cmd = [mpiexec, "-n", str(P), sys.executable, os.path.abspath(__file__), "--inner",
               "--numel", str(args.numel), "--steps", str(args.steps), "--bucket-mib", str(args.bucket_mib)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1200).stdout
        line = next(x for x in out.splitlines() if x.startswith("ROWS "))
        rows += json.loads(line[len("ROWS "):])
    numel = rows[0]["numel"]
    full = numel * 4
    mib = 1 << 20
    lines = [
        f"# ShardedOptimizer gradient memory per rank ({numel / 1e6:.1f} M float32 parameters, "
        f"full gradient {full / mib:.1f} MiB, stage 2 bucket {args.bucket_mib} MiB)",
        "",
        f"`python bench/bench_zero_memory.py --sizes {' '.join(map(str, args.sizes))} --numel {args.numel}`; "
        "largest value over ranks; the model's own gradient arrays (what backward writes) are not counted. "
        "The transient column is the tracemalloc peak during the steps above the memory before them: "
        "the reductions allocate nothing, it is SGD's `lr * grad` temporary (one shard).",
        "",
        "| P | stage | gradient bytes held (`grad_nbytes`) | of the full gradient | kept after the step "
        "(tracemalloc) | transient during a step | step (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    table = []
    for P in args.sizes:
        for stage in (1, 2):
            rs = [r for r in rows if r["P"] == P and r["stage"] == stage]
            entry = {"P": P, "stage": stage, "grad_bytes": max(r["grad_bytes"] for r in rs),
                     "kept_bytes": max(r["kept_bytes"] for r in rs),
                     "step_peak_bytes": max(r["step_peak_bytes"] for r in rs), "step_s": rs[0]["step_s"]}
            table.append(entry)
            lines.append(f"| {P} | {stage} | {entry['grad_bytes'] / mib:.1f} MiB | {entry['grad_bytes'] / full:.3f} | "
                         f"{entry['kept_bytes'] / mib:.1f} MiB | {entry['step_peak_bytes'] / mib:.1f} MiB | "
                         f"{entry['step_s'] * 1e3:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "zero_memory.md"), "w") as f:
        f.write(text)
    with open(os.path.join(RESULTS, "zero_memory.json"), "w") as f:
        json.dump({"numel": numel, "args": vars(args), "rows": rows, "table": table,
                   "machine": {"node": platform.node(), "cpus": os.cpu_count(),
                               "load_average": os.getloadavg()}}, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--numel", type=int, default=25_000_000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--bucket-mib", type=int, default=4)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    main()
