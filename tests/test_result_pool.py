"""The result pool (csrc/buffers/result_pool.h) alone, in one process: blocks
handed out as arrays, reused once every view is gone, the cache bounded, and
everything unmapped after close."""

from __future__ import annotations

import gc

import ml_dtypes
import numpy as np
import pytest

from distml import _core


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_arrays_of_any_dtype_and_shape():
    pool = _core.ResultPool(1 << 20)
    for dtype in (np.float32, np.int8, np.float64, ml_dtypes.bfloat16):
        a = pool.empty((3, 5, 7), np.dtype(dtype))
        assert a.shape == (3, 5, 7) and a.dtype == np.dtype(dtype)
        assert a.flags.c_contiguous and a.flags.writeable and not a.flags.owndata
        assert _addr(a) % 64 == 0
        a[...] = 3
        assert (a == 3).all()
    z = pool.empty((0,), np.dtype(np.float32))
    assert z.shape == (0,)
    pool.close()


def test_block_returns_only_when_every_view_is_gone():
    pool = _core.ResultPool(64 << 20)
    a = pool.empty((1 << 18,), np.dtype(np.float32))
    first = _addr(a)
    view = a[10:20]
    del a
    gc.collect()
    b = pool.empty((1 << 18,), np.dtype(np.float32))
    second = _addr(b)
    assert second != first  # the view still holds the first block
    assert pool.stats()["held_blocks"] == 2
    del view, b
    s = pool.stats()
    assert s["held_blocks"] == 0 and s["cached_blocks"] == 2
    c = pool.empty((1 << 18,), np.dtype(np.float32))
    assert pool.stats()["reused"] == 1
    assert _addr(c) in (first, second) and pool.stats()["cached_blocks"] == 1
    del c
    pool.close()


def test_fit_wastes_at_most_a_quarter():
    pool = _core.ResultPool(64 << 20)
    a = pool.empty((1 << 20,), np.dtype(np.uint8))
    addr = _addr(a)
    del a
    small = pool.empty((1 << 18,), np.dtype(np.uint8))  # a quarter: maps its own
    assert _addr(small) != addr
    fits = pool.empty(((1 << 20) - (1 << 17),), np.dtype(np.uint8))
    assert _addr(fits) == addr
    del small, fits
    pool.close()


def test_cache_is_bounded_oldest_first():
    cap = 4 << 20
    pool = _core.ResultPool(cap)
    arrays = [pool.empty((n,), np.dtype(np.uint8)) for n in (1 << 20, 2 << 20, 1 << 20, 3 << 20)]
    addrs = [_addr(a) for a in arrays]
    for i in range(len(arrays)):
        arrays[i] = None
        assert pool.stats()["cached_bytes"] <= cap
    # Returned in order 1, 2, 1, 3 MiB: the 3 MiB block pushed out the first two.
    s = pool.stats()
    assert s["cached_bytes"] == 4 << 20 and s["cached_blocks"] == 2
    again = pool.empty((1 << 20,), np.dtype(np.uint8))
    assert _addr(again) == addrs[2]
    big = pool.empty((8 << 20,), np.dtype(np.uint8))  # larger than the cap: never cached
    del big
    assert pool.stats()["cached_bytes"] <= cap
    del again
    pool.close()


def test_close_unmaps_the_cache_and_later_returns():
    pool = _core.ResultPool(64 << 20)
    kept = pool.empty((1 << 20,), np.dtype(np.float32))
    kept[...] = 7
    gone = pool.empty((1 << 20,), np.dtype(np.float32))
    del gone
    assert pool.stats()["cached_blocks"] == 1
    pool.close()
    s = pool.stats()
    assert s["cached_blocks"] == 0 and s["cached_bytes"] == 0 and s["held_blocks"] == 1
    assert (kept == 7).all()
    del kept
    s = pool.stats()
    assert s["held_blocks"] == 0 and s["cached_blocks"] == 0
    after = pool.empty((16,), np.dtype(np.float32))  # still works, never cached
    del after
    assert pool.stats()["cached_blocks"] == 0


def test_no_memory_raises_memory_error():
    pool = _core.ResultPool(1 << 20)
    with pytest.raises(MemoryError):
        pool.empty((1 << 62,), np.dtype(np.uint8))
    pool.close()
