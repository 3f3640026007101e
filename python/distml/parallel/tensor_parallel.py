"""Tensor parallelism: one linear layer's weight split across a group of ranks.

Conventions (those of :class:`distml.nn.Linear`): the weight has shape
``(in_features, out_features)`` and ``y = x @ W + b``. A split of ``n``
items over the ``P`` ranks of the group is ``numpy.array_split``: rank r gets
``n // P + 1`` items if ``r < n % P``, else ``n // P`` (possibly none), so
sizes need not divide evenly.

- :class:`ColumnParallelLinear` splits the *columns* (output features):
  rank r holds ``W[:, cols_r]`` and ``b[cols_r]``. Every rank sees the whole
  input; each produces its slice of the output. Backward: each rank's slice
  contributes a partial input gradient ``dy_r @ W_r.T``; their sum over the
  group (one allreduce) is the input gradient.
- :class:`RowParallelLinear` splits the *rows* (input features): rank r holds
  ``W[rows_r, :]`` and the whole bias. Each rank multiplies its slice of the
  input; the partial products are summed over the group (one allreduce) and
  the bias is added once, after the sum. Backward needs no communication:
  the output gradient is replicated, and each rank's input gradient is its
  own slice ``dy @ W_r.T``.

Column followed by row (with an element-wise activation between, which acts
on the column layer's output slice where it lies) is the Megatron MLP block:
the hidden activation never leaves its rank, and the block costs one
allreduce in forward (the row layer's) and one in backward (the column
layer's).

Initialisation with ``seed`` draws exactly the numbers ``distml.nn.Linear(in,
out, rng=seed)`` would, and keeps this rank's part: a model built with the
same seeds is the same model at every P. The draw streams the full weight in
blocks of rows, so no rank ever holds more than one block of the full matrix.

Both layers follow :class:`distml.nn.Module`'s contract (``parameters``,
``grads``, ``bind_grads``, gradients overwritten by backward, forward state
kept in underscore attributes), so they sit in a :class:`distml.nn.Sequential`
and their parameters (this rank's slices) go to any optimizer. For a data
dimension as well, give the layers ``grid.tensor`` and the optimizer
(:class:`distml.DistributedOptimizer` or :class:`distml.ShardedOptimizer`)
``grid.data`` of a :class:`distml.parallel.ProcessGrid`: the ranks of a data
group hold the same slices, so averaging over it is ordinary data
parallelism.

``forward`` and ``backward`` communicate (except RowParallelLinear.backward)
and must be called on all ranks of the group, in the same order.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from .._partition import split_range
from ..nn import WeightBias
from .data_parallel import _default_comm

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "split_range"]

# Rows of the full weight drawn at a time by the seeded initialisation.
_INIT_BLOCK_ROWS = 256




def _seeded_part(in_features: int, out_features: int, seed: Any, dtype: Any, bias: bool,
                 rows: slice, cols: slice) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``W[rows, cols]`` and ``b[cols]`` of ``nn.Linear(in, out, rng=seed)``.

    nn.Linear draws the weight row-major and then the bias from one
    generator; uniform doubles are drawn one per generator step, so drawing
    the weight a block of rows at a time consumes the same stream.
    """
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(in_features)
    weight = np.empty((rows.stop - rows.start, cols.stop - cols.start), dtype=dtype)
    for r0 in range(0, in_features, _INIT_BLOCK_ROWS):
        r1 = min(r0 + _INIT_BLOCK_ROWS, in_features)
        block = rng.uniform(-bound, bound, size=(r1 - r0, out_features))
        lo, hi = max(r0, rows.start), min(r1, rows.stop)
        if lo < hi:
            weight[lo - rows.start:hi - rows.start] = block[lo - r0:hi - r0, cols]
    b = rng.uniform(-bound, bound, size=(out_features,)).astype(dtype)[cols].copy() if bias else None
    return weight, b


def _gather_columns(comm: Any, part: np.ndarray, total: int) -> np.ndarray:
    """The ``(rows, total)`` array whose columns ``split_range(total, P, r)``
    are rank r's ``part``. Must be called on all ranks of ``comm``."""
    # allgather concatenates equal pieces along axis 0; the column slices
    # differ by one at most, so each rank sends its slice transposed and
    # padded to the largest, and the padding is dropped on arrival.
    P = comm.size
    if P == 1:
        return part
    width = split_range(total, P, 0)[1]
    rows = part.shape[0]
    send = np.zeros((width, rows), dtype=part.dtype)
    send[:part.shape[1]] = part.T
    gathered = comm.allgather(send).reshape(P, width, rows)
    out = np.empty((rows, total), dtype=part.dtype)
    for r in range(P):
        lo, hi = split_range(total, P, r)
        out[:, lo:hi] = gathered[r, :hi - lo].T
    return out


class ColumnParallelLinear(WeightBias):
    """A linear layer whose output features are split across ``comm``.

    Args:
        in_features, out_features: the full layer's sizes.
        comm: a :class:`distml.Communicator` or mpi4py communicator (the
            tensor-parallel group; default :func:`distml.init`'s).
        bias: whether the layer has a bias.
        gather_output: forward returns the whole output (an allgather), and
            backward takes the whole output gradient; otherwise both are this
            rank's slice of the output features.
        seed: initial values are those of ``nn.Linear(in_features,
            out_features, rng=seed)``, this rank's columns.
        dtype: parameter dtype.

    Attributes:
        weight: ``(in_features, out_part)``, this rank's columns.
        bias: ``(out_part,)`` or None.
        out_start, out_stop: the columns of the full layer this rank holds.
        grad_weight, grad_bias: this rank's slices of the gradients.

    Creation and forward/backward must happen on all ranks of ``comm``.
    """

    def __init__(self, in_features: int, out_features: int, comm: Any = None, bias: bool = True,
                 gather_output: bool = False, seed: Any = 0, dtype: Any = np.float32,
                 _weights: Optional[Tuple[np.ndarray, Optional[np.ndarray]]] = None) -> None:
        if in_features < 0 or out_features < 0:
            raise ValueError(f"feature sizes must be >= 0, got ({in_features}, {out_features})")
        self.comm = _default_comm(comm)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.gather_output = bool(gather_output)
        self.out_start, self.out_stop = split_range(out_features, self.comm.size, self.comm.rank)
        cols = slice(self.out_start, self.out_stop)
        if _weights is None:
            self.weight, self.bias = _seeded_part(in_features, out_features, seed, dtype, bias,
                                                  slice(0, in_features), cols)
        else:
            self.weight, self.bias = _weights
        self._init_grads()

    @classmethod
    def from_dense(cls, W: np.ndarray, b: Optional[np.ndarray] = None, comm: Any = None,
                   gather_output: bool = False) -> "ColumnParallelLinear":
        """This rank's columns of the full weight ``W`` ``(in, out)`` and bias
        ``b`` ``(out,)`` (or None), which every rank holds. Copies; must be
        called on all ranks of ``comm``."""
        W = np.asarray(W)
        if W.ndim != 2:
            raise ValueError(f"W must be 2-D (in_features, out_features), got shape {W.shape}")
        if b is not None and np.shape(b) != (W.shape[1],):
            raise ValueError(f"b must have shape ({W.shape[1]},), got {np.shape(b)}")
        comm = _default_comm(comm)
        lo, hi = split_range(W.shape[1], comm.size, comm.rank)
        weights = (np.array(W[:, lo:hi]), None if b is None else np.array(np.asarray(b)[lo:hi]))
        return cls(W.shape[0], W.shape[1], comm=comm, bias=b is not None, gather_output=gather_output,
                   dtype=W.dtype, _weights=weights)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x @ W[:, mine] + b[mine]`` (the whole output with
        ``gather_output``). ``x`` is the whole input, the same on every rank.
        Must be called on all ranks (communicates only with gather_output)."""
        self._x = x
        y = x @ self.weight
        if self.bias is not None:
            y += self.bias
        return _gather_columns(self.comm, y, self.out_features) if self.gather_output else y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Fills this rank's ``grad_weight``/``grad_bias`` and returns the
        gradient of the whole input (summed over the group).

        Args:
            grad_out: the gradient of this rank's output slice, or of the
                whole output with ``gather_output``.

        Must be called on all ranks.
        """
        if self._x is None:
            raise RuntimeError("ColumnParallelLinear.backward called before forward")
        if self.gather_output:
            grad_out = grad_out[:, self.out_start:self.out_stop]
        np.matmul(self._x.T, grad_out, out=self.grad_weight)
        if self.bias is not None:
            np.sum(grad_out, axis=0, out=self.grad_bias)
        grad_in = np.ascontiguousarray(grad_out @ self.weight.T)
        if self.comm.size > 1:
            self.comm.allreduce(grad_in, op="sum", out=grad_in)
        return grad_in

    def __repr__(self) -> str:
        return (f"<distml.parallel.ColumnParallelLinear {self.in_features}x{self.out_features}, "
                f"columns [{self.out_start}, {self.out_stop}) on rank {self.comm.rank} of {self.comm.size}>")


class RowParallelLinear(WeightBias):
    """A linear layer whose input features are split across ``comm``.

    Args:
        in_features, out_features: the full layer's sizes.
        comm: a :class:`distml.Communicator` or mpi4py communicator (the
            tensor-parallel group; default :func:`distml.init`'s).
        bias: whether the layer has a bias (held whole on every rank and
            added once, after the reduction).
        input_is_parallel: forward takes this rank's slice of the input
            features (as a ColumnParallelLinear without gather_output
            produces) and backward returns the gradient of that slice;
            otherwise forward takes the whole input, uses its own slice, and
            backward returns the gradient of the whole input (an allgather).
        seed: initial values are those of ``nn.Linear(in_features,
            out_features, rng=seed)``, this rank's rows.
        dtype: parameter dtype.

    Attributes:
        weight: ``(in_part, out_features)``, this rank's rows.
        bias: ``(out_features,)`` or None.
        in_start, in_stop: the rows of the full layer this rank holds.

    Creation and forward must happen on all ranks of ``comm``; so must
    backward with ``input_is_parallel=False``.
    """

    def __init__(self, in_features: int, out_features: int, comm: Any = None, bias: bool = True,
                 input_is_parallel: bool = True, seed: Any = 0, dtype: Any = np.float32,
                 _weights: Optional[Tuple[np.ndarray, Optional[np.ndarray]]] = None) -> None:
        if in_features < 0 or out_features < 0:
            raise ValueError(f"feature sizes must be >= 0, got ({in_features}, {out_features})")
        self.comm = _default_comm(comm)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.input_is_parallel = bool(input_is_parallel)
        self.in_start, self.in_stop = split_range(in_features, self.comm.size, self.comm.rank)
        if _weights is None:
            self.weight, self.bias = _seeded_part(in_features, out_features, seed, dtype, bias,
                                                  slice(self.in_start, self.in_stop), slice(0, out_features))
        else:
            self.weight, self.bias = _weights
        self._init_grads()

    @classmethod
    def from_dense(cls, W: np.ndarray, b: Optional[np.ndarray] = None, comm: Any = None,
                   input_is_parallel: bool = True) -> "RowParallelLinear":
        """This rank's rows of the full weight ``W`` ``(in, out)``, and the
        whole bias ``b`` (or None), which every rank holds. Copies; must be
        called on all ranks of ``comm``."""
        W = np.asarray(W)
        if W.ndim != 2:
            raise ValueError(f"W must be 2-D (in_features, out_features), got shape {W.shape}")
        if b is not None and np.shape(b) != (W.shape[1],):
            raise ValueError(f"b must have shape ({W.shape[1]},), got {np.shape(b)}")
        comm = _default_comm(comm)
        lo, hi = split_range(W.shape[0], comm.size, comm.rank)
        weights = (np.array(W[lo:hi]), None if b is None else np.array(b))
        return cls(W.shape[0], W.shape[1], comm=comm, bias=b is not None, input_is_parallel=input_is_parallel,
                   dtype=W.dtype, _weights=weights)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``sum over ranks(x_r @ W[rows_r]) + b``: the whole output, the same
        on every rank. Must be called on all ranks."""
        if not self.input_is_parallel:
            x = x[:, self.in_start:self.in_stop]
        if x.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"RowParallelLinear on rank {self.comm.rank} expects {self.weight.shape[0]} input "
                             f"features (its slice [{self.in_start}, {self.in_stop})), got {x.shape[-1]}")
        self._x = x
        y = np.ascontiguousarray(x @ self.weight)
        if self.comm.size > 1:
            self.comm.allreduce(y, op="sum", out=y)
        if self.bias is not None:
            y += self.bias
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Fills this rank's ``grad_weight`` and the whole ``grad_bias``;
        returns the gradient of this rank's input slice (of the whole input
        when ``input_is_parallel=False``, gathered over the group).

        Args:
            grad_out: the gradient of the whole output, the same on every rank.
        """
        if self._x is None:
            raise RuntimeError("RowParallelLinear.backward called before forward")
        np.matmul(self._x.T, grad_out, out=self.grad_weight)
        if self.bias is not None:
            np.sum(grad_out, axis=0, out=self.grad_bias)
        grad_in = grad_out @ self.weight.T
        if self.input_is_parallel:
            return grad_in
        return _gather_columns(self.comm, grad_in, self.in_features)

    def __repr__(self) -> str:
        return (f"<distml.parallel.RowParallelLinear {self.in_features}x{self.out_features}, "
                f"rows [{self.in_start}, {self.in_stop}) on rank {self.comm.rank} of {self.comm.size}>")
