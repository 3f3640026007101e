"""distml.data.shuffle: every row arrives exactly once, at the owner of its
key; hash ownership is a fixed function of the key; range output is sorted
across ranks."""

from __future__ import annotations

import numpy as np
import pytest

from distml.data import key_hash, shuffle
from mpi_helpers import Checker, call


def _rows(rank: int, n: int, dtype) -> tuple:
    rng = np.random.default_rng([7, rank])
    keys = rng.integers(-50, 1000, size=n).astype(dtype)
    ids = (rank << 32) + np.arange(n, dtype=np.int64)  # globally unique row ids
    vals = np.stack([ids.astype(np.float64), keys.astype(np.float64)], axis=1)
    return keys, ids, vals


@pytest.mark.parametrize("by", ["hash", "range"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("comm", ["seg_default"], indirect=True)
def test_shuffle_rows_arrive_once_at_owner(comm, by, dtype):
    P, rank = comm.size, comm.rank
    check = Checker(P)
    sizes = [0 if r == 1 else 500 + 37 * r for r in range(P)]  # rank 1 has no rows
    keys, ids, vals = _rows(rank, sizes[rank], dtype)
    got = call(lambda: shuffle(keys, ids, vals, by=by, comm=comm))
    if isinstance(got, BaseException):
        check.expect_true(f"shuffle raised {got!r}", False)
        check.verify()
    k, i, v = got
    all_k = np.concatenate([_rows(r, sizes[r], dtype)[0] for r in range(P)])
    all_i = np.concatenate([_rows(r, sizes[r], dtype)[1] for r in range(P)])
    # Rows stay whole: columns still match their keys and ids.
    check.expect_true("columns travel with their keys", np.array_equal(v[:, 0], i.astype(np.float64))
                      and np.array_equal(v[:, 1], k.astype(np.float64)))
    check.expect_true("keys dtype kept", k.dtype == np.dtype(dtype))
    # Every row exactly once over all ranks.
    gathered = comm.allgatherv(i)
    check.expect_true("every row exactly once", np.array_equal(np.sort(gathered), np.sort(all_i)))
    # At the owner of its key.
    if by == "hash":
        owners = (key_hash(k) % np.uint64(P)).astype(np.int64)
        check.expect_true("each key at its hash owner", np.all(owners == rank))
    else:
        gk = comm.allgatherv(k)
        check.expect_true("range output globally sorted", np.all(gk[1:] >= gk[:-1]))
        check.expect_true("same multiset of keys", np.array_equal(np.sort(gk), np.sort(all_k)))
        # All rows of a key on one rank: no key appears on two ranks.
        lo_hi = comm.allgatherv(np.array([[k.min(), k.max()]] if k.size else np.zeros((0, 2)), np.float64))
        check.expect_true("key ranges of ranks do not overlap",
                          all(lo_hi[j + 1, 0] > lo_hi[j, 1] for j in range(len(lo_hi) - 1)))
        if P > 1 and sum(sizes) > 0:
            counts = comm.allgatherv(np.array([k.size]))
            check.expect_true(f"splitters balance the rows ({counts.tolist()})",
                              counts.max() <= 2 * sum(sizes) / P + 100)
    check.verify()


def test_key_hash_is_fixed():
    """The hash is a fixed function: pinned values (any run, platform, rank
    count), and integers hash by value whatever their dtype."""
    pinned = key_hash(np.array([0, 1, 2, -1, 1 << 40], dtype=np.int64))
    again = key_hash(np.array([0, 1, 2, -1, 1 << 40], dtype=np.int64))
    assert np.array_equal(pinned, again)
    assert np.array_equal(key_hash(np.array([5], np.int32)), key_hash(np.array([5], np.uint64)))
    assert np.array_equal(key_hash(np.array([-0.0])), key_hash(np.array([0.0])))
    assert np.array_equal(key_hash(np.array(["a", "bc"])), key_hash(np.array([b"a", b"bc"], dtype=object)))
    expected = np.array([PINNED[0], PINNED[1], PINNED[2], PINNED[3], PINNED[4]], dtype=np.uint64)
    assert np.array_equal(pinned, expected), pinned.tolist()


PINNED = [12035550249420947055, 6791897765849424158, 7235116703822611636, 6755974106381971767,
          3686752072253880996]


@pytest.mark.parametrize("comm", ["seg_default"], indirect=True)
def test_shuffle_errors_on_every_rank(comm):
    P, rank = comm.size, comm.rank
    check = Checker(P)
    keys = np.arange(4)
    got = call(lambda: shuffle(keys, np.zeros(4 if rank != P - 1 else 3), comm=comm))
    check.expect_raises("column length differs on one rank", got, ValueError)
    got = call(lambda: shuffle(keys, by="sorted", comm=comm))
    check.expect_raises("unknown by", got, ValueError)
    got = call(lambda: shuffle(np.array(["a", "b"]), comm=comm))
    check.expect_raises("string keys", got, TypeError)
    got = call(lambda: shuffle(keys, comm=comm))
    check.expect_true("usable afterwards", not isinstance(got, BaseException) and len(got) == 1)
    check.verify()
