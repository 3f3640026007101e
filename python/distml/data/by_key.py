"""The shuffle by key: rows moved to the rank that owns their key (by hash,
or by range with splitters sampled from every rank), over alltoallv."""

from __future__ import annotations

import zlib
from typing import Any, Optional, Tuple

import numpy as np


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    # SplitMix64's finaliser: a bijection of uint64 with full avalanche.
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def key_hash(keys: Any) -> np.ndarray:
    """A 64-bit hash of each key, the same on every run, platform and rank.

    Integers (and booleans) hash by value, whatever their dtype (``int32(5)``
    and ``uint64(5)`` agree); floats by the bits of their float64 value
    (``-0.0`` as ``0.0``); strings and bytes by the CRC-32 and length of
    their UTF-8 bytes. Python's ``hash()`` is not used: it is salted per
    process for strings.

    Args:
        keys: a 1-D array-like of integers, floats, strings or bytes.

    Returns:
        A uint64 array of the keys' hashes.

    Raises:
        TypeError: keys of another kind.
    """
    k = np.asarray(keys)
    if k.dtype.kind in "biu":
        z = k.astype(np.int64).view(np.uint64) if k.dtype.kind != "u" else k.astype(np.uint64)
    elif k.dtype.kind == "f":
        f = k.astype(np.float64) + 0.0  # -0.0 + 0.0 is 0.0
        z = f.view(np.uint64)
    elif k.dtype.kind in "USO":
        def one(v: Any) -> int:
            b = v if isinstance(v, bytes) else str(v).encode("utf-8")
            return (zlib.crc32(b) << 32) | (len(b) & 0xFFFFFFFF)
        z = np.fromiter((one(v) for v in k.ravel()), dtype=np.uint64, count=k.size).reshape(k.shape)
    else:
        raise TypeError(f"keys of dtype {k.dtype} cannot be hashed; use integers, floats or strings")
    with np.errstate(over="ignore"):
        return _mix64(_mix64(z + _GOLDEN) + _GOLDEN)


def shuffle(keys: Any, *columns: Any, by: str = "hash", comm: Any = None, samples_per_rank: int = 256
            ) -> Tuple[np.ndarray, ...]:
    """Moves every row to the rank that owns its key.

    ``by="hash"``: rank ``key_hash(key) % size`` owns a key (see
    :func:`key_hash`); the owner is the same on every run and platform, and
    rows arrive grouped by source rank, each group in its original order.
    ``by="range"``: the ranks sample their keys, agree on ``size - 1``
    splitters from the pooled sample, and rank r owns the keys between
    splitters r - 1 and r; each rank's output is sorted by key (stably), so
    the concatenation of the ranks' outputs in rank order is sorted. Ranks
    may end with unequal numbers of rows (all rows of one key go to one
    rank).

    Args:
        keys: this rank's keys, 1-D (any number, zero included): integers,
            booleans or floats, of one dtype on every rank. (For string keys,
            shuffle ``key_hash(strings)`` with the strings' row numbers.)
        *columns: arrays with as many rows (axis 0) as ``keys``; each column's
            dtype and shape beyond axis 0 must agree across ranks.
        by: ``"hash"`` or ``"range"``.
        comm: a :class:`distml.Communicator` (default: ``distml.init()``'s).
        samples_per_rank: keys each rank contributes to the splitter sample
            (``"range"``).

    Returns:
        A tuple ``(keys, *columns)`` of the rows this rank owns.

    Raises:
        ValueError: ``by`` unknown, columns of another length than keys,
            keys not 1-D, or a different number of columns on some rank
            (raised on every rank).
        TypeError: keys that cannot be hashed or sorted (on every rank).
        distml.MismatchError: ranks passed columns of different dtypes or
            row shapes.

    Must be called on all ranks.
    """
    from .._agree import agree

    if comm is None:
        import distml

        comm = distml.get_default()
    P = comm.size
    problem: Optional[BaseException] = None
    k = np.asarray(keys)
    cols = [np.asarray(c) for c in columns]
    try:
        if by not in ("hash", "range"):
            raise ValueError(f"by must be 'hash' or 'range', not {by!r}")
        if k.ndim != 1:
            raise ValueError(f"keys must be 1-D, got shape {k.shape}")
        for i, c in enumerate(cols):
            if c.ndim == 0 or c.shape[0] != k.shape[0]:
                raise ValueError(f"column {i} has {c.shape[0] if c.ndim else 0} rows, keys have {k.shape[0]}")
        if k.dtype.kind not in "biuf":
            raise TypeError(f"shuffle needs numeric keys (shuffle key_hash(strings) instead), got dtype {k.dtype}")
        if not isinstance(samples_per_rank, (int, np.integer)) or samples_per_rank < 1:
            raise ValueError(f"samples_per_rank must be a positive int, not {samples_per_rank!r}")
    except (TypeError, ValueError) as e:
        problem = e
    numbers = agree(comm, problem, [len(cols), zlib.crc32(by.encode()) if isinstance(by, str) else 0])
    for j, what in enumerate(("number of columns", "partitioning (by)")):
        if np.any(numbers[:, j] != numbers[0, j]):
            raise ValueError(f"ranks passed a different {what} to shuffle: "
                             + ", ".join(f"rank {r}: {int(v)}" for r, v in enumerate(numbers[:, j])))
    if by == "hash":
        owner = (key_hash(k) % np.uint64(P)).astype(np.int64) if P > 1 else np.zeros(k.shape[0], np.int64)
    else:
        # An evenly spaced sample of this rank's sorted keys; pooled, sorted,
        # cut at the quantiles into size parts.
        srt = np.sort(k, kind="stable")
        take = min(int(samples_per_rank), srt.shape[0])
        sample = srt[np.linspace(0, srt.shape[0] - 1, take).round().astype(np.int64)] if take else srt[:0]
        pooled = np.sort(comm.allgatherv(sample), kind="stable")
        if pooled.shape[0] and P > 1:
            splitters = pooled[(np.arange(1, P) * pooled.shape[0]) // P]
        else:
            splitters = pooled[:0]
        owner = np.searchsorted(splitters, k, side="right").astype(np.int64)
    # A stable sort of small integers is numpy's radix sort.
    order = np.argsort(owner.astype(np.int16) if P <= 32767 else owner, kind="stable")
    counts = np.bincount(owner, minlength=P)
    out = []
    for a in [k] + cols:
        got, _ = comm.alltoallv(np.take(a, order, axis=0), counts)
        out.append(got)
    if by == "range" and out[0].shape[0]:
        local = np.argsort(out[0], kind="stable")
        out = [a[local] for a in out]
    return tuple(out)
