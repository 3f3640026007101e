"""ZeRO-style sharded optimizer (stages 1 and 2).

Partition: all parameters, concatenated in parameter order, form one flat
vector of ``numel`` elements, padded with zeros to ``P * shard_size`` where
``shard_size = ceil(numel / P)``. Rank r owns elements
``[r * shard_size, (r + 1) * shard_size)`` — the part
``numpy.array_split(padded, P)[r]`` that ``reduce_scatter`` hands it. The
partition is a function of the shapes and P alone, computed on every rank
with no communication, and it ignores parameter boundaries: a parameter may
straddle ranks. That is what makes per-rank state exactly 1/P of the total
whatever the parameter sizes; it works because every optimizer in
:mod:`distml.optim` is element-wise, so the wrapped optimizer simply runs over
one flat parameter, this rank's shard.

One step:

1. stage 1: gradients -> flat padded gradient buffer (``self.grads`` are
   views of it, so writing them there avoids the copy), then allreduce(avg)
   of the whole buffer, of which the shard's part is used (every rank keeps
   the full averaged gradient, as in ZeRO-1);
   stage 2: the gradients are reduced bucket by bucket straight into this
   rank's gradient shard, and no buffer of the full size is kept (ZeRO-2).
   A *bucket* is a window of ``width`` elements at the same offset of every
   rank's shard: bucket k holds elements ``[j * shard_size + k * width, ...)``
   of the flat gradient for each rank j, ``P * width`` elements in all
   (about ``bucket_bytes``). Those pieces are copied from the gradients into
   the one bucket buffer, rank j's piece at position j, so that a
   reduce_scatter(avg) of the bucket hands each rank the average of its own
   piece, which is written into its shard at ``k * width``. A rank thus holds
   its averaged gradient shard and one bucket;
2. the wrapped optimizer updates the shard of the flat parameters, with
   state for the shard only;
3. allgather of the shards rebuilds the flat parameters on every rank, and
   they are copied back into the caller's parameter arrays.
"""

from __future__ import annotations

import bisect
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .data_parallel import _default_comm, aligned_empty

__all__ = ["ShardedOptimizer"]

_DEFAULT_BUCKET_BYTES = 4 << 20


class ShardedOptimizer:
    """Shards optimizer state (stage 1) and reduced gradients (stage 2)
    across the ranks of ``comm``.

    Args:
        optimizer_cls: an optimizer class from :mod:`distml.optim` (or one
            with the same element-wise state contract).
        params: the parameters, replicated on every rank, updated in place
            by :meth:`step`. One dtype for all.
        comm: a :class:`distml.Communicator` or mpi4py communicator (default:
            :func:`distml.init`'s).
        stage: 1 or 2, see the module docstring.
        bucket_bytes: stage 2: bytes of the bucket the gradients are reduced
            through (default 4 MiB; at least one element per rank).
        **optimizer_kwargs: passed to ``optimizer_cls``.

    Attributes:
        numel: elements in all parameters; shard_size: elements per rank;
        start, stop: this rank's shard of the flat vector (``stop`` may
        exceed ``numel`` on the last ranks: that part is padding).
        grads: one gradient array per parameter to write gradients into
            before calling ``step()`` without arguments. Stage 1: views of
            the flat gradient buffer. Stage 2: allocated on first access
            (they are then the caller's full-size gradients, held by this
            optimizer); to keep only the shard and one bucket, pass the
            model's own gradient arrays to :meth:`step` instead.

    Raises:
        ValueError: stage not 1 or 2, no parameters, mixed dtypes, or
            ``bucket_bytes`` < 1.

    The constructor, :meth:`step` and :meth:`broadcast_parameters` must be
    called on all ranks.
    """

    def __init__(self, optimizer_cls: Any, params: Sequence[np.ndarray], comm: Any = None, stage: int = 1,
                 *, bucket_bytes: int = _DEFAULT_BUCKET_BYTES, **optimizer_kwargs: Any) -> None:
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, not {stage!r}")
        params = list(params)
        if not params:
            raise ValueError("ShardedOptimizer needs at least one parameter")
        dtypes = {np.dtype(p.dtype) for p in params}
        if len(dtypes) != 1:
            raise ValueError(f"all parameters must share one dtype, got {sorted(map(str, dtypes))}")
        if int(bucket_bytes) < 1:
            raise ValueError(f"bucket_bytes must be >= 1, not {bucket_bytes}")
        self.comm = _default_comm(comm)
        self.stage = stage
        self.params = params
        self.dtype = dtypes.pop()
        P, r = self.comm.size, self.comm.rank
        self._sizes = [int(np.prod(p.shape, dtype=np.int64)) for p in params]
        self.offsets = [int(o) for o in np.cumsum([0] + self._sizes[:-1])]
        self._ends = [o + n for o, n in zip(self.offsets, self._sizes)]
        self.numel = int(sum(self._sizes))
        self.shard_size = -(-self.numel // P)
        padded = self.shard_size * P
        self.start, self.stop = r * self.shard_size, (r + 1) * self.shard_size

        self._flat_params = aligned_empty(padded, self.dtype)
        self._flat_params[self.numel:] = 0
        self._param_views = [self._flat_params[o:o + n].reshape(p.shape)
                             for o, n, p in zip(self.offsets, self._sizes, params)]
        for v, p in zip(self._param_views, params):
            np.copyto(v, p)
        self._flat_grads: Optional[np.ndarray] = None
        self._grads: Optional[List[np.ndarray]] = None
        if stage == 1:
            self._allocate_grads()
            self._grad_shard = None
            self._bucket = None
        else:
            self._grad_shard = aligned_empty(self.shard_size, self.dtype)
            # elements per rank per bucket: P * width elements in a bucket
            self.bucket_width = min(self.shard_size, max(1, int(bucket_bytes) // (P * self.dtype.itemsize)))
            self._bucket = aligned_empty(P * self.bucket_width, self.dtype)
        self._send = aligned_empty(self.shard_size, self.dtype)
        self.shard = self._flat_params[self.start:self.stop]
        self.optimizer = optimizer_cls([self.shard], **optimizer_kwargs)

    def _allocate_grads(self) -> None:
        self._flat_grads = aligned_empty(self.shard_size * self.comm.size, self.dtype)
        self._flat_grads.fill(0)
        self._grads = [self._flat_grads[o:o + n].reshape(p.shape)
                       for o, n, p in zip(self.offsets, self._sizes, self.params)]

    @property
    def grads(self) -> List[np.ndarray]:
        if self._grads is None:
            self._allocate_grads()
        return self._grads  # type: ignore[return-value]

    def grad_nbytes(self) -> int:
        """Bytes of gradient storage this rank holds: stage 1 the padded flat
        gradient buffer (all of the gradient); stage 2 its averaged gradient
        shard and one bucket (about ``numel / P`` elements plus
        ``bucket_bytes``), plus the arrays of :attr:`grads` if they were
        asked for."""
        held = [self._flat_grads, self._grad_shard, self._bucket]
        return sum(a.nbytes for a in held if a is not None)

    # ---- stepping ------------------------------------------------------------

    def step(self, grads: Optional[Sequence[np.ndarray]] = None) -> None:
        """Averages gradients across ranks, updates this rank's shard, and
        gathers the updated parameters into ``params`` on every rank.

        Args:
            grads: this rank's gradients, one per parameter, of the
                parameters' shapes. Stage 1 copies them into its flat buffer
                (unless they are ``self.grads``); stage 2 reads them bucket by
                bucket. None: the gradients are in ``self.grads``.

        Raises:
            ValueError: the wrong number or shapes of gradients, or (stage 2)
                none given and ``self.grads`` never asked for.

        Must be called on all ranks.
        """
        if grads is None:
            if self._grads is None:
                raise ValueError("step() got no gradients: pass them, or write them into self.grads first")
            grads = self._grads
        else:
            grads = list(grads)
            if len(grads) != len(self.params):
                raise ValueError(f"step got {len(grads)} gradients for {len(self.params)} parameters")
            for i, (g, p) in enumerate(zip(grads, self.params)):
                if np.shape(g) != p.shape:
                    raise ValueError(f"gradient {i} has shape {np.shape(g)}, expected {p.shape}")
        if self.stage == 1:
            for g, v in zip(grads, self._grads):  # type: ignore[arg-type]
                if g is not v:
                    np.copyto(v, g, casting="same_kind")
            self.comm.allreduce(self._flat_grads, op="avg", out=self._flat_grads)
            grad_shard = self._flat_grads[self.start:self.stop]  # type: ignore[index]
        else:
            self._reduce_scatter_buckets(grads)
            grad_shard = self._grad_shard
        self.optimizer.step([grad_shard])
        self._gather()

    def _reduce_scatter_buckets(self, grads: Sequence[np.ndarray]) -> None:
        """Stage 2: the averaged gradient shard, one bucket at a time (see the
        module docstring). Every rank runs the same buckets in the same order:
        their number and widths depend only on the partition."""
        flats = [np.ascontiguousarray(g).reshape(-1) for g in grads]
        P, S, width = self.comm.size, self.shard_size, self.bucket_width
        for lo in range(0, S, width):
            w = min(width, S - lo)
            bucket = self._bucket[:P * w]  # type: ignore[index]
            for j in range(P):
                self._copy_flat(flats, j * S + lo, bucket[j * w:(j + 1) * w])
            self.comm.reduce_scatter(bucket, op="avg", out=self._grad_shard[lo:lo + w])  # type: ignore[index]

    def _copy_flat(self, flats: Sequence[np.ndarray], lo: int, out: np.ndarray) -> None:
        """Copies elements [lo, lo + len(out)) of the concatenated gradients
        into ``out``; the padding past ``numel`` reads as zeros."""
        hi = lo + len(out)
        pos = lo
        i = bisect.bisect_right(self._ends, lo)  # the first parameter ending after lo
        while pos < hi and i < len(flats):
            o = self.offsets[i]
            end = min(hi, self._ends[i])
            np.copyto(out[pos - lo:end - lo], flats[i][pos - o:end - o], casting="same_kind")
            pos = end
            i += 1
        if pos < hi:
            out[pos - lo:] = 0

    def _gather(self) -> None:
        # The shard is part of the allgather's output, so it goes out from a
        # separate send buffer (allgather refuses overlapping in and out).
        np.copyto(self._send, self.shard)
        self.comm.allgather(self._send, out=self._flat_params)
        for p, v in zip(self.params, self._param_views):
            if p is not v:
                np.copyto(p, v)

    def zero_grad(self) -> None:
        """Zeroes :attr:`grads` (stage 2 keeps nothing else between steps)."""
        if self._flat_grads is not None:
            self._flat_grads.fill(0)

    def broadcast_parameters(self, root: int = 0) -> None:
        """Copies the parameters from ``root`` to every rank (into ``params``
        and the flat copy). Must be called on all ranks."""
        for v, p in zip(self._param_views, self.params):
            np.copyto(v, p)
        self.comm.broadcast(self._flat_params, root=root)
        for p, v in zip(self.params, self._param_views):
            np.copyto(p, v)

    def load_parameters(self) -> None:
        """Re-reads ``params`` into the flat copy the shards update (call after
        changing the parameter arrays from outside, e.g. after loading them).
        Does not communicate."""
        for v, p in zip(self._param_views, self.params):
            np.copyto(v, p)

    # ---- state ---------------------------------------------------------------

    def state_nbytes(self) -> int:
        """Bytes of optimizer state this rank holds (about 1/P of the total)."""
        return self.optimizer.state_nbytes()

    def state_dict(self) -> Dict[str, Any]:
        """This rank's shard of the optimizer state, with the partition it
        belongs to. For a different number of ranks use
        :mod:`distml.checkpoint`, which reshards."""
        sd = self.optimizer.state_dict()
        sd["partition"] = {"rank": self.comm.rank, "size": self.comm.size, "numel": self.numel,
                           "start": self.start, "stop": self.stop}
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned on this rank.

        Raises:
            ValueError: it was saved for another partition (rank, size or
                parameter count).
        """
        part = state_dict.get("partition", {})
        mine = {"rank": self.comm.rank, "size": self.comm.size, "numel": self.numel}
        theirs = {k: part.get(k) for k in mine}
        if theirs != mine:
            raise ValueError(f"state_dict is for partition {theirs}, this optimizer has {mine}; "
                             "use distml.checkpoint to load across world sizes")
        sd = {k: v for k, v in state_dict.items() if k != "partition"}
        self.optimizer.load_state_dict(sd)

    def __repr__(self) -> str:
        return (f"<distml.ShardedOptimizer stage {self.stage} {type(self.optimizer).__name__}, "
                f"shard [{self.start}, {self.stop}) of {self.numel} on rank {self.comm.rank}/{self.comm.size}>")
