"""Synthetic-data training throughput of a torchvision model with PyTorch DDP (gloo).

The baseline for Horovod-style synthetic benchmarks run through distml.torch:
the same model (torchvision, with batch norm synchronised over the ranks as
``norm_layer=hvd.SyncBatchNorm`` does there), the same fixed random batch,
plain SGD with lr = 0.01 * size, warm-up batches, then iterations of timed
batches; it prints images/second per rank and in total.

torch's own ``nn.SyncBatchNorm`` refuses CPU tensors, so the synchronised
batch norm here is a small one over ``torch.distributed.all_reduce`` (gloo):
one allreduce of (sum, sum of squares, count) per layer in the forward pass
and one of (sum of dy, sum of dy * (x - mean)) in the backward pass, the
same traffic as distml.torch.SyncBatchNorm. ``--no-sync-bn`` uses plain
BatchNorm2d instead.

Launch one process per rank, under mpiexec (ranks from PMI_RANK/PMI_SIZE)
or torchrun (RANK/WORLD_SIZE):

    mpiexec -n 2 python bench/bench_torch_synthetic.py --model resnet18 --batch-size 16

Set the intra-op threads the same way on both sides of a comparison
(``OMP_NUM_THREADS`` or ``--threads``).
"""

from __future__ import annotations

import argparse
import os
import timeit

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F


def _rank_size():
    for r, s in (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("RANK", "WORLD_SIZE")):
        if r in os.environ and s in os.environ:
            return int(os.environ[r]), int(os.environ[s])
    return 0, 1


class _SyncBNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        C = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        local = torch.cat([x.sum(dims), (x * x).sum(dims), torch.tensor([x.numel() / C], dtype=x.dtype)])
        dist.all_reduce(local)
        n = local[-1]
        mean = local[:C] / n
        var = local[C:2 * C] / n - mean * mean
        invstd = torch.rsqrt(var + eps)
        shape = [1, C] + [1] * (x.dim() - 2)
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.n = n
        ctx.shape = shape
        ctx.dims = dims
        return xhat * weight.view(shape) + bias.view(shape), mean, var * n / torch.clamp(n - 1, min=1)

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        xhat, weight, invstd = ctx.saved_tensors
        shape, dims = ctx.shape, ctx.dims
        sums = torch.cat([dy.sum(dims), (dy * xhat).sum(dims)])
        dist.all_reduce(sums)
        C = weight.shape[0]
        sum_dy, sum_dy_xhat = sums[:C], sums[C:]
        # The parameters' gradients stay local (the optimizer averages them).
        dweight = (dy * xhat).sum(dims)
        dbias = dy.sum(dims)
        dx = (dy - (sum_dy / ctx.n).view(shape) - xhat * (sum_dy_xhat / ctx.n).view(shape)) \
            * (weight * invstd).view(shape)
        return dx, dweight, dbias, None


class GlooSyncBatchNorm(torch.nn.BatchNorm2d):
    """Batch norm whose training statistics cover every rank's batch."""

    def forward(self, x):
        if not self.training or dist.get_world_size() == 1:
            return super().forward(x)
        y, mean, var = _SyncBNFunction.apply(x, self.weight, self.bias, self.eps)
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean, alpha=m)
            self.running_var.mul_(1 - m).add_(var, alpha=m)
            self.num_batches_tracked.add_(1)
        return y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-warmup-batches", type=int, default=10)
    ap.add_argument("--num-batches-per-iter", type=int, default=10)
    ap.add_argument("--num-iters", type=int, default=10)
    ap.add_argument("--no-sync-bn", action="store_true", help="plain BatchNorm2d (no statistics across ranks)")
    ap.add_argument("--bucket-cap-mb", type=float, default=25.0, help="DDP's bucket size")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from torchvision import models

    rank, size = _rank_size()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29541")
    dist.init_process_group("gloo", rank=rank, world_size=size)

    norm = torch.nn.BatchNorm2d if args.no_sync_bn else GlooSyncBatchNorm
    model = getattr(models, args.model)(norm_layer=norm)
    model = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=args.bucket_cap_mb)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01 * size)

    data = torch.randn(args.batch_size, 3, 224, 224)
    target = torch.LongTensor(args.batch_size).random_() % 1000

    def benchmark_step():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()

    def log(s):
        if rank == 0:
            print(s, flush=True)

    log(f"Model: {args.model}")
    log(f"Batch size: {args.batch_size}")
    log(f"Number of CPUs: {size} (DDP gloo, torch threads {torch.get_num_threads()})")
    timeit.timeit(benchmark_step, number=args.num_warmup_batches)
    img_secs = []
    for x in range(args.num_iters):
        t = timeit.timeit(benchmark_step, number=args.num_batches_per_iter)
        img_sec = args.batch_size * args.num_batches_per_iter / t
        log(f"Iter #{x}: {img_sec:.1f} img/sec per CPU")
        img_secs.append(img_sec)
    mean, conf = np.mean(img_secs), 1.96 * np.std(img_secs)
    log(f"Img/sec per CPU: {mean:.1f} +-{conf:.1f}")
    log(f"Total img/sec on {size} CPU(s): {size * mean:.1f} +-{size * conf:.1f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
