"""ZeRO-style sharded optimizer (stages 1 and 2), over the core's gradient
buffer in shard mode (``csrc/buffers/grad_buffer.h``).

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

1. the gradients are reduced (averaged) straight into this rank's gradient
   shard by reduce_scatter.
   Stage 1 keeps a flat padded gradient buffer (``self.grads`` are views of
   it, so writing them there avoids the copy) and reduces it whole, in one
   reduce_scatter read straight from the buffer.
   Stage 2 keeps no buffer of the full size: the gradients are reduced
   bucket by bucket. A *bucket* is a window of ``width`` elements at the
   same offset of every rank's shard: bucket k holds elements
   ``[j * shard_size + lo, ...)`` of the flat gradient for each rank j,
   ``P * width`` elements in all (about ``bucket_bytes``). The core copies
   those pieces from the gradients into its one staging slot, rank j's piece
   at position j, so that a reduce_scatter(avg) of the slot hands each rank
   the average of its own piece, written into its shard at ``lo``. A rank
   thus holds its averaged gradient shard and one bucket;
2. the wrapped optimizer updates the shard of the flat parameters, with
   state for the shard only;
3. allgather of the shards rebuilds the flat parameters on every rank, and
   they are copied back into the caller's parameter arrays.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .. import _core
from .._dtypes import dtype_code
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
        P = self.comm.size
        self._sizes = [int(np.prod(p.shape, dtype=np.int64)) for p in params]
        self.offsets = [int(o) for o in np.cumsum([0] + self._sizes[:-1])]
        # Stage 1 reduces its whole flat buffer in one window; stage 2 in
        # windows of about bucket_bytes, through one staging slot.
        self._buf = _core.GradBuffer(
            self.comm._core, self._sizes, [dtype_code(self.dtype, "parameters")] * len(params), shard=True,
            op=_core.Op.avg, bucket_bytes=(1 << 62) if stage == 1 else int(bucket_bytes), flat=stage == 1, slots=1)
        self.numel = int(self._buf.numel)
        self.shard_size = int(self._buf.shard)
        self.start, self.stop = int(self._buf.start), int(self._buf.start) + self.shard_size
        if stage == 2:
            self.bucket_width = int(self._buf.width)

        self._flat_params = aligned_empty(self.shard_size * P, self.dtype)
        self._flat_params[self.numel:] = 0
        self._param_views = [self._flat_params[o:o + n].reshape(p.shape)
                             for o, n, p in zip(self.offsets, self._sizes, params)]
        for v, p in zip(self._param_views, params):
            np.copyto(v, p)
        self._grads: Optional[List[np.ndarray]] = None
        if stage == 1:
            self._attach_grads()
        self._grad_shard = self._buf.grad_shard().view(self.dtype)
        self.shard = self._flat_params[self.start:self.stop]
        self.optimizer = optimizer_cls([self.shard], **optimizer_kwargs)

    def _attach_grads(self) -> None:
        self._buf.allocate_flat()
        flat = self._buf.flat(0).view(self.dtype)
        self._grads = [flat[o:o + n].reshape(p.shape) for o, n, p in zip(self.offsets, self._sizes, self.params)]

    @property
    def grads(self) -> List[np.ndarray]:
        if self._grads is None:
            self._attach_grads()
        return self._grads  # type: ignore[return-value]

    def grad_nbytes(self) -> int:
        """Bytes of gradient storage this rank holds: stage 1 the padded flat
        gradient buffer (all of the gradient) and its averaged shard; stage 2
        its averaged gradient shard and one bucket (about ``numel / P``
        elements plus ``bucket_bytes``), plus the arrays of :attr:`grads` if
        they were asked for."""
        return int(self._buf.grad_bytes)

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
        held = []  # gradients read in place this step, alive until the reduction is done
        for i, g in enumerate(grads):
            mine = self._grads[i] if self._grads is not None else None
            if g is mine:
                continue
            if self.stage == 1:
                np.copyto(mine, g, casting="same_kind")
                continue
            a = np.asarray(g)
            if a.dtype != self.dtype or not a.flags.c_contiguous:
                if not np.can_cast(a.dtype, self.dtype, casting="same_kind"):
                    raise TypeError(f"gradient {i} has dtype {a.dtype}, which does not cast to {self.dtype}")
                a = np.ascontiguousarray(a, dtype=self.dtype)
            held.append((i, a))
        for i, a in held:
            self._buf.set_source(i, a, self._sizes[i] * self.dtype.itemsize)
        self._buf.wait_all()
        del held
        self.optimizer.step([self._grad_shard])
        self._gather()

    def _gather(self) -> None:
        self._buf.gather(self._flat_params)
        for p, v in zip(self.params, self._param_views):
            if p is not v:
                np.copyto(p, v)

    def zero_grad(self) -> None:
        """Zeroes :attr:`grads` (stage 2 keeps nothing else between steps)."""
        self._buf.zero()

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
