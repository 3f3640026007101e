"""Model-parallel figures: a tensor-parallel MLP block at P = 1, 2, 4 and the
pipeline bubble of GPipe and 1F1B against theory.

    mpiexec -n 4 python bench/bench_model_parallel.py --json bench/results/model_parallel_P4.json

Everything is measured in one launch, so that every figure shares the
machine's state: a configuration needing P ranks runs on the first P ranks
of the world (a sub-communicator), while the others wait in a sleeping
barrier (``Ibarrier`` polled with ``sleep``, so they leave the cores to the
ranks at work). Configurations are interleaved round-robin, rotating the
order each round, and figures are medians over rounds. Each rank runs one
BLAS thread (the ranks are the parallelism).

1. Tensor-parallel MLP block: ColumnParallelLinear(h, f) -> ReLU ->
   RowParallelLinear(f, h), h = f = 4096 by default, a batch of ``--tokens``
   rows, float32. One round is one forward and one backward; its time is the
   slowest rank's. The communication share is the time that rank spent
   inside the block's two allreduces (waiting for its peers included) over
   its total. Speed-up is relative to P = 1 of the same run.

2. Pipeline bubble: S stages whose forward sleeps ``--t-forward`` seconds
   and backward twice that (sleeping compute: the schedule, not the 2-core
   machine, sets the timing), activations of ``(rows, --width)`` float32
   sent between stages, M micro-batches. The bubble is the idle share of
   the pipeline's time: ``1 - mean_stage(busy) / max_stage(step time)``,
   against the ideal ``(S - 1) / (M + S - 1)`` (the same for GPipe and 1F1B,
   which both flush). Peak activations are stage 0's (micro-batches and
   bytes), where they are largest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import distml  # noqa: E402
from distml import nn  # noqa: E402
from distml.parallel import ColumnParallelLinear, Pipeline, RowParallelLinear  # noqa: E402


def idle_barrier(world) -> None:
    """A barrier that sleeps while it waits, leaving the cores to others."""
    request = world.Ibarrier()
    while not request.Test():
        time.sleep(2e-3)


def first_ranks(world, P: int):
    """A communicator of world ranks [0, P) (COMM_NULL elsewhere). Collective."""
    return world.Split(0 if world.rank < P else MPI.UNDEFINED, world.rank)


class Timed:
    """Adds the seconds spent in ``comm.allreduce`` to ``self.seconds``."""

    def __init__(self, comm) -> None:
        self.seconds = 0.0
        inner = comm.allreduce

        def allreduce(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        comm.allreduce = allreduce


class SleepStage(nn.Module):
    """A stand-in stage: forward sleeps ``t`` and backward ``2 t``; passes an
    activation of ``width`` features."""

    def __init__(self, t: float, width: int) -> None:
        self.t, self.width = t, width
        self._x = None

    def forward(self, x):
        self._x = x
        time.sleep(self.t)
        return np.ones((x.shape[0], self.width), dtype=np.float32)

    def backward(self, dy):
        time.sleep(2 * self.t)
        return np.ones(self._x.shape, dtype=np.float32)


class MeanLoss:
    """The mean of the last stage's output (only its timing matters here)."""

    def __call__(self, out, labels):
        self._shape = out.shape
        return float(out.mean())

    def backward(self):
        return np.full(self._shape, 1.0 / max(1, np.prod(self._shape)), dtype=np.float32)


def bench_tensor(world, args, sizes):
    h, f, N = args.hidden, args.ffn, args.tokens
    setups = {}
    for P in sizes:
        sub = first_ranks(world, P)
        if sub == MPI.COMM_NULL:
            setups[P] = None
            continue
        comm = distml.Communicator(sub)
        block = nn.Sequential(ColumnParallelLinear(h, f, comm=comm, seed=1), nn.ReLU(),
                              RowParallelLinear(f, h, comm=comm, seed=2))
        timer = Timed(comm)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((N, h), dtype=np.float32)
        dy = rng.standard_normal((N, h), dtype=np.float32)
        setups[P] = (comm, block, timer, x, dy)
    samples = {P: [] for P in sizes}  # this rank's (total, comm) per round
    for rnd in range(args.warmup + args.rounds):
        order = sizes[rnd % len(sizes):] + sizes[:rnd % len(sizes)]
        for P in order:
            idle_barrier(world)
            setup = setups[P]
            if setup is None:
                continue
            comm, block, timer, x, dy = setup
            timer.seconds = 0.0
            t0 = time.perf_counter()
            block.forward(x)
            block.backward(dy)
            total = time.perf_counter() - t0
            if rnd >= args.warmup:
                samples[P].append((total, timer.seconds))
    results = []
    everything = world.gather(samples, root=0)
    if world.rank == 0:
        for P in sizes:
            per_rank = [s[P] for s in everything[:P]]
            totals, shares = [], []
            for k in range(args.rounds):
                slowest = max(range(P), key=lambda r: per_rank[r][k][0])
                total, comm_s = per_rank[slowest][k]
                totals.append(total)
                shares.append(comm_s / total)
            flops = 3 * 2 * 2 * N * h * f  # two matmuls forward, four backward
            results.append(dict(P=P, median_s=statistics.median(totals), min_s=min(totals),
                                comm_share=statistics.median(shares),
                                gflops=flops / statistics.median(totals) / 1e9,
                                allreduce_bytes_per_step=2 * N * h * 4 if P > 1 else 0))
        base = results[0]["median_s"]
        for row in results:
            row["speedup_vs_P1"] = base / row["median_s"]
    for setup in setups.values():
        if setup is not None:
            setup[0].free()
    return results


def bench_pipeline(world, args, stage_counts):
    configs = [(S, M, sched) for S in stage_counts for M in args.micro_batches for sched in ("gpipe", "1f1b")]
    pipes, comms = {}, {}
    for S in stage_counts:
        sub = first_ranks(world, S)
        comms[S] = None if sub == MPI.COMM_NULL else distml.Communicator(sub)
    for S, M, sched in configs:
        if comms[S] is not None:
            stage = SleepStage(args.t_forward, args.width)
            pipes[(S, M, sched)] = Pipeline(stage, comm=comms[S], micro_batches=M, schedule=sched)
    rows = args.rows
    x = np.ones((rows, args.width), dtype=np.float32)
    y = np.zeros(rows, dtype=np.int64)
    samples = {c: [] for c in configs}
    for rnd in range(args.pipeline_rounds):
        shift = rnd % len(configs)
        for c in configs[shift:] + configs[:shift]:
            idle_barrier(world)
            pipe = pipes.get(c)
            if pipe is None:
                continue
            pipe.train_step(x, y, MeanLoss())
            samples[c].append((pipe.busy_time, pipe.step_time, pipe.peak_activations, pipe.peak_activation_bytes))
    everything = world.gather(samples, root=0)
    results = []
    if world.rank == 0:
        for S, M, sched in configs:
            per_rank = [s[(S, M, sched)] for s in everything[:S]]
            bubbles = []
            for k in range(args.pipeline_rounds):
                busy = [per_rank[r][k][0] for r in range(S)]
                span = max(per_rank[r][k][1] for r in range(S))
                bubbles.append(1 - statistics.mean(busy) / span)
            results.append(dict(stages=S, micro_batches=M, schedule=sched,
                                bubble=statistics.median(bubbles), bubble_theory=(S - 1) / (M + S - 1),
                                step_s=statistics.median(max(per_rank[r][k][1] for r in range(S))
                                                         for k in range(args.pipeline_rounds)),
                                peak_activations_stage0=per_rank[0][0][2],
                                peak_activation_bytes_stage0=per_rank[0][0][3],
                                peak_activations_per_stage=[per_rank[r][0][2] for r in range(S)]))
    for pipe in pipes.values():
        pipe.free()
    for c in comms.values():
        if c is not None:
            c.free()
    return results


def markdown(tensor, pipeline) -> str:
    lines = ["| P | fwd+bwd median (s) | speed-up vs P=1 | GFLOP/s | communication share |",
             "|---|---|---|---|---|"]
    for r in tensor:
        lines.append(f"| {r['P']} | {r['median_s']:.3f} | {r['speedup_vs_P1']:.2f} | {r['gflops']:.1f} | "
                     f"{100 * r['comm_share']:.1f}% |")
    lines += ["", "| stages | micro-batches | schedule | bubble measured | bubble theory | "
              "peak activations stage 0 (micro-batches / KiB) |", "|---|---|---|---|---|---|"]
    for r in pipeline:
        lines.append(f"| {r['stages']} | {r['micro_batches']} | {r['schedule']} | {r['bubble']:.3f} | "
                     f"{r['bubble_theory']:.3f} | {r['peak_activations_stage0']} / "
                     f"{r['peak_activation_bytes_stage0'] / 1024:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=4096, help="the block's inner width")
    ap.add_argument("--tokens", type=int, default=64, help="rows of the block's input")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--t-forward", type=float, default=0.005, help="seconds per stage forward (backward: twice)")
    ap.add_argument("--width", type=int, default=1024, help="activation features between stages")
    ap.add_argument("--rows", type=int, default=64, help="rows per batch in the pipeline runs")
    ap.add_argument("--micro-batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--pipeline-rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    world = MPI.COMM_WORLD
    W = world.size
    sizes = [P for P in (1, 2, 4) if P <= W]
    stage_counts = [S for S in (2, 4) if S <= W]
    tensor = bench_tensor(world, args, sizes)
    pipeline = bench_pipeline(world, args, stage_counts) if stage_counts else []
    if world.rank == 0:
        table = markdown(tensor, pipeline)
        print(table)
        record = dict(
            benchmark="model_parallel", world_size=W, argv=sys.argv, args=vars(args),
            machine=dict(node=platform.node(), cpus=os.cpu_count(), python=platform.python_version(),
                         numpy=np.__version__, mpi=MPI.Get_library_version().splitlines()[0],
                         blas_threads=os.environ.get("OPENBLAS_NUM_THREADS")),
            tensor_parallel_mlp=tensor, pipeline=pipeline, markdown=table)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as fh:
                json.dump(record, fh, indent=2)
            print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
