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
    """The elementwise passes are torch's own fused batch-norm kernels, fed
    the global statistics as if they were running statistics (evaluation
    mode): one pass and one output tensor each way, instead of a chain of
    temporaries the size of the input."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # type: ignore[override]
        dims = _channel_dims(x)
        C = x.shape[1]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xa = x.detach().to(acc)
        count = x.numel() // max(C, 1)
        # Per-channel count, sum and sum of squares, from one fused pass.
        var_l, mean_l = torch.var_mean(xa, dims, correction=0)
        local = torch.cat([torch.tensor([count], dtype=acc), mean_l * count, (var_l + mean_l * mean_l) * count])
        total = mpi_ops.allreduce(local, op=mpi_ops.Sum)
        n = total[0]
        mean = total[1:1 + C] / n
        var = (total[1 + C:] / n - mean * mean).clamp_min(0)
        w = weight.detach().to(acc) if weight is not None else None
        b = bias.detach().to(acc) if bias is not None else None
        y = F.batch_norm(xa, mean, var, w, b, False, 0.0, eps)
        ctx.save_for_backward(xa, mean, var, w)
        ctx.count = float(n)
        ctx.eps = eps
        ctx.dtype = x.dtype
        ctx.wdtype = weight.dtype if weight is not None else None
        ctx.mark_non_differentiable(mean, var)
        return y.to(x.dtype), mean, var, float(n)

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var, _grad_count):  # type: ignore[override]
        xa, mean, var, w = ctx.saved_tensors
        C = xa.shape[1]
        shape = (1, C) + (1,) * (xa.dim() - 2)
        g = grad_y.to(xa.dtype).contiguous()
        # sum(g * xhat) and sum(g) per channel in one fused pass: the weight
        # and bias gradients of a batch norm evaluated with these statistics.
        _, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
            g, xa, w, mean, var, None, None, False, ctx.eps, [False, True, True])
        total = mpi_ops.allreduce(torch.cat([sum_dy, sum_dy_xhat]), op=mpi_ops.Sum)
        invstd = torch.rsqrt(var + ctx.eps)
        scale = invstd if w is None else invstd * w
        # grad_x = scale * (g - S1/n - xhat * S2/n), written per channel as
        # a*g + b*x + c so that it is one output tensor and two in-place passes.
        b = -scale * invstd * (total[C:] / ctx.count)
        c = -scale * (total[:C] / ctx.count) - b * mean
        grad_x = g * scale.view(shape)
        grad_x.addcmul_(xa, b.view(shape)).add_(c.view(shape))
        grad_w = sum_dy_xhat.to(ctx.wdtype) if ctx.wdtype is not None else None
        grad_b = sum_dy.to(ctx.wdtype) if ctx.wdtype is not None else None
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


