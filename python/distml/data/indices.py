"""Deterministic sharding of a data set's indices across ranks, reshuffled
per epoch from a seed, with no communication."""

from __future__ import annotations

from typing import Optional

import numpy as np


def shard_indices(n: int, rank: Optional[int] = None, size: Optional[int] = None, shuffle: bool = True,
                  seed: int = 0, epoch: int = 0, drop_last: bool = False) -> np.ndarray:
    """This rank's indices into a data set of ``n`` samples for one epoch.

    Every rank computes the same permutation of ``range(n)`` from
    ``(seed, epoch)`` with no communication, and takes every ``size``-th
    element of it starting at ``rank`` (a strided, not a blocked, split).
    The strided split means that the first ``k * size`` elements of the
    permutation, the first global batch of ``k * size`` samples, are exactly
    the union of every rank's first ``k`` indices; so P ranks taking local
    batches of ``B / P`` consecutive indices from their shards see the same
    global batches as one process taking batches of ``B`` from the
    permutation.

    Shards have equal length. If ``size`` does not divide ``n``: with
    ``drop_last`` the last ``n % size`` elements of the permutation are left
    out (shards of ``n // size``); otherwise the permutation is padded by
    repeating its first elements (shards of ``ceil(n / size)``, a few
    samples seen twice per epoch).

    Args:
        n: number of samples.
        rank, size: this rank and the number of ranks (default: those of the
            default communicator, :func:`distml.init`).
        shuffle: permute (else the order is ``range(n)``).
        seed, epoch: the permutation is a function of both; change ``epoch``
            every epoch to reshuffle.
        drop_last: drop instead of pad, see above.

    Returns:
        An int64 array of this rank's indices.
    """
    if rank is None or size is None:
        import distml

        comm = distml.get_default()
        rank = comm.rank if rank is None else rank
        size = comm.size if size is None else size
    n, rank, size = int(n), int(rank), int(size)
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} is out of range for size {size}")
    if shuffle:
        order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    else:
        order = np.arange(n, dtype=np.int64)
    if drop_last:
        order = order[: (n // size) * size]
    else:
        total = -(-n // size) * size
        if total > n:
            # n > 0 here, since total > n; a tiny n may need several wraps
            order = np.resize(order, total)
    return order[rank::size].astype(np.int64, copy=False)


# ---- sharded files -------------------------------------------------------------
#
# read_shards lays the listed files end to end, in listing order, as one
# stream of bytes of length S, and gives rank r of P the bytes
# [floor(r S / P), floor((r + 1) S / P)). A unit of data belongs to the rank
# whose bytes hold the unit's midpoint. Units are whole files ("files"), or
# within files ("rows"): Parquet row groups, or rows of a .npy array. Every
# unit has exactly one midpoint, so every row is read by exactly one rank;
# the ranks' rows, concatenated in rank order, are the files' rows in
# listing order; and a rank opens only files that overlap its bytes (in
# "files" mode: only the files whose midpoint it holds). The sizes come from
# the listing, so the assignment needs no communication and no file opened.
