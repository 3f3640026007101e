"""SyncBatchNorm: batch normalisation with statistics over every rank's batch.

In training, each rank's per-channel count, sum and sum of squares are summed
over ranks by one allreduce, so every rank normalises with the mean and
variance of the global batch; the backward pass sums the two per-channel
gradient terms the same way. The input gradient is that of the loss summed
over ranks (as Horovod's and torch's SyncBatchNorm); the weight and bias
gradients are this rank's own (DistributedOptimizer averages them).
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from . import mpi_ops

__all__ = ["SyncBatchNorm"]


def _channel_dims(x: torch.Tensor) -> Tuple[int, ...]:
    return (0,) + tuple(range(2, x.dim()))


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # type: ignore[override]
        dims = _channel_dims(x)
        C = x.shape[1]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xa = x.detach().to(acc)
        local = torch.cat([
            torch.tensor([x.numel() // max(C, 1)], dtype=acc),
            xa.sum(dims),
            (xa * xa).sum(dims),
        ])
        total = mpi_ops.allreduce(local, op=mpi_ops.Sum)
        n = total[0]
        mean = total[1:1 + C] / n
        var = (total[1 + C:] / n - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + eps)
        shape = (1, C) + (1,) * (x.dim() - 2)
        xhat = (xa - mean.view(shape)) * invstd.view(shape)
        y = xhat
        if weight is not None:
            y = y * weight.detach().to(acc).view(shape) + bias.detach().to(acc).view(shape)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.count = float(n)
        ctx.dtype = x.dtype
        ctx.mark_non_differentiable(mean, var)
        return y.to(x.dtype), mean, var, float(n)

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var, _grad_count):  # type: ignore[override]
        xhat, invstd, weight = ctx.saved_tensors
        dims = _channel_dims(xhat)
        C = xhat.shape[1]
        shape = (1, C) + (1,) * (xhat.dim() - 2)
        g = grad_y.to(xhat.dtype)
        sum_dy = g.sum(dims)
        sum_dy_xhat = (g * xhat).sum(dims)
        total = mpi_ops.allreduce(torch.cat([sum_dy, sum_dy_xhat]), op=mpi_ops.Sum)
        scale = invstd if weight is None else invstd * weight.detach().to(xhat.dtype)
        grad_x = scale.view(shape) * (g - total[:C].view(shape) / ctx.count
                                      - xhat * total[C:].view(shape) / ctx.count)
        grad_w = sum_dy_xhat.to(weight.dtype) if weight is not None else None
        grad_b = sum_dy.to(weight.dtype) if weight is not None else None
        return grad_x.to(ctx.dtype), grad_w, grad_b, None


class SyncBatchNorm(_BatchNorm):
    """Batch normalisation over the batches of all ranks (Horovod's
    ``hvd.SyncBatchNorm``, with ``torch.nn.BatchNorm*d``'s arguments).

    In training mode every forward and backward pass runs one allreduce each:
    they must be called on all ranks, in the same order. In eval mode (or
    without ``track_running_stats`` outside training) it is a local batch
    norm with the running statistics.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        self._check_input_dim(input)
        if not self.training and self.track_running_stats:
            return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        y, mean, var, n = _SyncBatchNormFunction.apply(input, self.weight, self.bias, self.eps)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            unbiased = var * (n / max(n - 1.0, 1.0))
            with torch.no_grad():
                self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        return y


