"""Step time of data-parallel training with ~25 M float32 parameters.

    mpiexec -n 2 python bench/bench_training.py
    mpiexec -n 4 python bench/bench_training.py --json bench/results/training_P4.json

One training step is a simulated backward pass (each gradient computed in
reverse parameter order, from a few element-wise passes over its parameter),
the gradient averaging, and an SGD update. The averaging is done five ways,
interleaved round-robin in the same run so that they share the machine's
noise:

- ``mpi4py_per_grad``: after backward, one ``MPI.Allreduce`` per gradient
  (in place), then a division by P: the simplest do-it-yourself version;
- ``mpi4py_fused``: gradients written into one flat buffer, one
  ``MPI.Allreduce`` of the whole buffer after backward, then a division;
- ``distml_no_overlap``: :class:`distml.DistributedOptimizer` with the
  buckets launched only by ``step()``;
- ``distml_overlap``: the same with ``mark_ready`` after every gradient, so
  buckets are reduced while backward continues;
- ``distml_overlap_private``: the same with the gradient buffer in ordinary
  memory (``node_shared=False``) instead of node-shared memory (which lets
  the allreduce work in place on one node); only where the installed distml
  has that option;
- ``compute_only``: backward and update with no communication.

Figures are medians over steps of the slowest rank's time. The share of
communication hidden by overlap is ``(no_overlap - overlap) /
(no_overlap - compute_only)``. ShardedOptimizer's optimizer-state bytes per
rank are compared with a replicated Adam's, and its step time is reported.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import time

import numpy as np
from mpi4py import MPI

import distml
from distml import optim


def model_shapes(layers: int, width: int):
    shapes = []
    for _ in range(layers):
        shapes += [(width, 2 * width), (2 * width,)]
    return shapes


def backward(params, grads, work: int, on_ready=None):
    """Simulated backward: gradient i depends on parameter i and costs
    ``work`` passes over it; produced last parameter first."""
    for i in reversed(range(len(params))):
        g = grads[i]
        np.multiply(params[i], 1e-3, out=g)
        for _ in range(work - 1):
            g *= 0.999
        if on_ready is not None:
            on_ready(i)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=1448, help="layer i holds width x 2*width weights + 2*width bias")
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--work", type=int, default=4, help="element-wise passes per gradient in the backward")
    ap.add_argument("--bucket-mib", type=float, default=25.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    world = MPI.COMM_WORLD
    comm = distml.init()
    P, rank = comm.size, comm.rank
    shapes = model_shapes(args.layers, args.width)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    numel = sum(p.size for p in params)
    lr = 1e-6

    # per-gradient baseline: separate arrays
    sep_grads = [np.empty_like(p) for p in params]
    sgd_sep = optim.SGD(params, lr=lr)
    # fused baseline: views of one flat buffer
    flat = distml.GradientBuffer(params, bucket_bytes=1 << 62)
    dopt = distml.DistributedOptimizer(optim.SGD(params, lr=lr), comm=comm,
                                       bucket_bytes=int(args.bucket_mib * (1 << 20)))

    def mpi4py_per_grad():
        backward(params, sep_grads, args.work)
        for g in sep_grads:
            world.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
            g /= P
        sgd_sep.step(sep_grads)

    def mpi4py_fused():
        backward(params, flat.grads, args.work)
        world.Allreduce(MPI.IN_PLACE, flat.buffer, op=MPI.SUM)
        flat.buffer /= P
        sgd_sep.step(flat.grads)

    def distml_no_overlap():
        backward(params, dopt.grads, args.work)
        dopt.step()

    def distml_overlap():
        backward(params, dopt.grads, args.work, on_ready=dopt.mark_ready)
        dopt.step()

    private = None
    if "node_shared" in inspect.signature(distml.DistributedOptimizer).parameters:
        private = distml.DistributedOptimizer(optim.SGD(params, lr=lr), comm=comm,
                                              bucket_bytes=int(args.bucket_mib * (1 << 20)), node_shared=False)

    def distml_overlap_private():
        backward(params, private.grads, args.work, on_ready=private.mark_ready)
        private.step()

    def compute_only():
        backward(params, flat.grads, args.work)
        sgd_sep.step(flat.grads)

    variants = {f.__name__: f for f in (mpi4py_per_grad, mpi4py_fused, distml_no_overlap, distml_overlap,
                                        compute_only)}
    if private is not None:
        variants["distml_overlap_private"] = distml_overlap_private
    times = {k: [] for k in variants}
    for f in variants.values():  # warm-up (page faults, first-touch)
        f()
    for _ in range(args.steps):
        for name, f in variants.items():
            world.Barrier()
            t0 = time.perf_counter()
            f()
            dt = time.perf_counter() - t0
            times[name].append(world.allreduce(dt, op=MPI.MAX))
    med = {k: statistics.median(v) for k, v in times.items()}

    # ShardedOptimizer: state bytes and step time (Adam, stage 1 and 2)
    replicated = optim.Adam([np.empty(numel, np.float32)])
    sharded_stats = {}
    for stage in (1, 2):
        sh = distml.ShardedOptimizer(optim.Adam, params, comm=comm, stage=stage, lr=lr)
        ts = []
        sh.step(flat.grads)
        for _ in range(max(3, args.steps // 2)):
            world.Barrier()
            t0 = time.perf_counter()
            backward(params, sh.grads, args.work)
            sh.step()
            ts.append(world.allreduce(time.perf_counter() - t0, op=MPI.MAX))
        sharded_stats[f"stage{stage}"] = {"state_bytes_per_rank": sh.state_nbytes(),
                                          "step_s": statistics.median(ts)}
        del sh
    world.Barrier()
    t0 = time.perf_counter()
    for _ in range(3):
        backward(params, flat.grads, args.work)
        replicated.step([flat.buffer])
    adam_local = (time.perf_counter() - t0) / 3

    if rank == 0:
        comm_time = med["distml_no_overlap"] - med["compute_only"]
        hidden = (med["distml_no_overlap"] - med["distml_overlap"]) / comm_time if comm_time > 0 else float("nan")
        print(f"P={P}: {numel / 1e6:.1f} M float32 parameters in {len(params)} arrays, "
              f"{len(dopt.grad_buffer.buckets)} buckets of <= {args.bucket_mib} MiB; median of {args.steps} steps "
              f"(slowest rank)\n")
        print("| variant | step (ms) | vs mpi4py per-gradient | vs mpi4py fused |")
        print("|---|---|---|---|")
        for k, v in med.items():
            print(f"| {k} | {v * 1e3:.1f} | {med['mpi4py_per_grad'] / v:.2f}x | {med['mpi4py_fused'] / v:.2f}x |")
        print(f"\nload average {os.getloadavg()}")
        print(f"\ncommunication (distml_no_overlap - compute_only): {comm_time * 1e3:.1f} ms; "
              f"share hidden by overlap: {hidden * 100:.0f}%")
        print(f"\nAdam state per rank: replicated {replicated.state_nbytes() / 2**20:.1f} MiB "
              f"(local Adam step incl. backward {adam_local * 1e3:.1f} ms)")
        for k, s in sharded_stats.items():
            print(f"  ShardedOptimizer {k}: {s['state_bytes_per_rank'] / 2**20:.1f} MiB "
                  f"({s['state_bytes_per_rank'] / replicated.state_nbytes():.3f} of replicated), "
                  f"step incl. backward {s['step_s'] * 1e3:.1f} ms")
        if args.json:
            os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
            with open(args.json, "w") as f:
                json.dump({"P": P, "numel": numel, "arrays": len(params), "args": vars(args),
                           "machine": {"node": platform.node(), "cpus": os.cpu_count(),
                                       "load_average": os.getloadavg()},
                           "median_step_s": med, "all_step_s": times,
                           "overlap_hidden_share": hidden, "adam_replicated_state_bytes": replicated.state_nbytes(),
                           "sharded": sharded_stats}, f, indent=1)


if __name__ == "__main__":
    main()
