"""Training step time: distml.torch.DistributedOptimizer vs torch DistributedDataParallel (gloo).

Run under mpiexec (every rank runs both, in the same process, interleaved per
round in a random order so that drifts of the machine and the after-effects
of one variant hit the others alike)::

    mpiexec -n 2 python bench/bench_torch.py --out bench/results/torch_P2_run1.json  # three runs per P
    python bench/bench_torch.py --markdown bench/results/torch_P*_run*.json > bench/results/torch.md

The model is an MLP of about 25 M float32 parameters; each rank trains on its
own batch. A step is forward, backward (with the gradient allreduce
overlapped, both for distml's hooks and DDP's buckets) and an SGD update.
``distml_no_overlap`` is distml's step with its hooks removed, so every
bucket is reduced by ``step()`` after the backward: the share of
communication hidden by overlap is ``(no_overlap - distml) / (no_overlap -
compute_only)``.
One torch thread per rank, so P ranks on a small machine do not fight over
cores for compute. Rank 0 reports the median over rounds of the max over
ranks of each step's time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time


def _model(torch, width: int, depth: int):
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers)


def run(args) -> None:
    import torch
    import torch.distributed as dist
    from mpi4py import MPI

    import distml.torch as hvd

    torch.set_num_threads(1)
    world = MPI.COMM_WORLD
    P, r = world.size, world.rank
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(args.port))
    dist.init_process_group("gloo", rank=r, world_size=P)
    hvd.init()

    torch.manual_seed(0)
    n_params = sum(p.numel() for p in _model(torch, args.width, args.depth).parameters())
    x = torch.randn(args.batch, args.width, generator=torch.Generator().manual_seed(r))
    y = torch.randint(0, 10, (args.batch,), generator=torch.Generator().manual_seed(100 + r))

    torch.manual_seed(0)
    m_distml = _model(torch, args.width, args.depth)
    opt_distml = hvd.DistributedOptimizer(torch.optim.SGD(m_distml.parameters(), lr=1e-3),
                                          named_parameters=m_distml.named_parameters(),
                                          bucket_bytes=args.bucket_mib << 20)
    torch.manual_seed(0)
    m_plain = _model(torch, args.width, args.depth)
    opt_plain = hvd.DistributedOptimizer(torch.optim.SGD(m_plain.parameters(), lr=1e-3),
                                         named_parameters=m_plain.named_parameters(),
                                         bucket_bytes=args.bucket_mib << 20)
    opt_plain.remove_hooks()

    def step_no_overlap() -> None:
        opt_plain.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(m_plain(x), y).backward()
        opt_plain.step()

    torch.manual_seed(0)
    m_ddp = torch.nn.parallel.DistributedDataParallel(_model(torch, args.width, args.depth),
                                                      bucket_cap_mb=args.ddp_bucket_mib)
    opt_ddp = torch.optim.SGD(m_ddp.parameters(), lr=1e-3)

    def step_distml() -> None:
        opt_distml.zero_grad()
        torch.nn.functional.cross_entropy(m_distml(x), y).backward()
        opt_distml.step()

    def step_ddp() -> None:
        opt_ddp.zero_grad()
        torch.nn.functional.cross_entropy(m_ddp(x), y).backward()
        opt_ddp.step()

    m_local = _model(torch, args.width, args.depth)
    opt_local = torch.optim.SGD(m_local.parameters(), lr=1e-3)

    def local_step() -> None:  # the same step with no communication: the compute floor
        opt_local.zero_grad()
        torch.nn.functional.cross_entropy(m_local(x), y).backward()
        opt_local.step()

    impls = {"distml": step_distml, "ddp_gloo": step_ddp, "compute_only": local_step,
             "distml_no_overlap": step_no_overlap}
    times = {k: [] for k in impls}
    for _ in range(args.warmup):
        for fn in impls.values():
            world.Barrier()
            fn()
    names = list(impls)
    # A new order every round, the same on every rank (fixed seed), so each
    # variant follows each other one about equally often.
    rng = random.Random(12345)
    for i in range(args.rounds):
        order = rng.sample(names, len(names))
        for name in order:
            world.Barrier()
            t0 = time.perf_counter()
            impls[name]()
            dt = time.perf_counter() - t0
            times[name].append(world.allreduce(dt, op=MPI.MAX))
    # Both trained on the same data from the same start: their models agree.
    diff = max(float((a.detach() - b.detach()).abs().max()) for a, b in zip(m_distml.parameters(), m_ddp.module.parameters()))
    if r == 0:
        med = {k: statistics.median(v) for k, v in times.items()}
        comm_time = med["distml_no_overlap"] - med["compute_only"]
        result = {
            "P": P, "params": n_params, "batch_per_rank": args.batch, "width": args.width,
            "depth": args.depth, "rounds": args.rounds, "bucket_mib_distml": args.bucket_mib,
            "bucket_mib_ddp": args.ddp_bucket_mib, "torch": torch.__version__, "threads_per_rank": 1,
            "median_s": med, "times_s": times,
            "ratio_ddp_over_distml": med["ddp_gloo"] / med["distml"],
            "overlap_hidden_share": (med["distml_no_overlap"] - med["distml"]) / comm_time if comm_time > 0 else None,
            "load_average": os.getloadavg(),
            "max_param_diff_distml_vs_ddp": diff,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": sys.version.split()[0]},
        }
        print(json.dumps({k: v for k, v in result.items() if k != "times_s"}, indent=1))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    dist.destroy_process_group()
    hvd.shutdown()


def markdown(paths) -> str:
    rows = []
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        m = d["median_s"]
        rows.append(f"| {d['P']} | {d['params'] / 1e6:.1f} M | {d['batch_per_rank']} | "
                    f"{m['compute_only'] * 1e3:.0f} | {m['distml'] * 1e3:.0f} | {m['ddp_gloo'] * 1e3:.0f} | "
                    f"**{d['ratio_ddp_over_distml']:.2f}x** | {d['rounds']} |")
    head = ("| P | parameters | batch/rank | compute only (ms) | distml.torch (ms) | DDP gloo (ms) | "
            "DDP / distml | rounds |\n|---|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--bucket-mib", type=int, default=25)
    ap.add_argument("--ddp-bucket-mib", type=int, default=25)
    ap.add_argument("--port", type=int, default=29517)
    ap.add_argument("--out")
    ap.add_argument("--markdown", nargs="+", metavar="JSON")
    args = ap.parse_args()
    if args.markdown:
        sys.stdout.write(markdown(args.markdown))
    else:
        run(args)


if __name__ == "__main__":
    main()
