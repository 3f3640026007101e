"""The one split of a range over ranks (the core's Blocks, bound as
_core.split_range) against numpy.array_split, the contract every layer
relies on: reduce_scatter's parts, tensor-parallel columns, checkpoint shards."""

from __future__ import annotations

import numpy as np
import pytest

from distml._partition import part_size, split_range


@pytest.mark.parametrize("n", [0, 1, 2, 7, 10, 33, 1000, 2**33 + 5])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7])
def test_split_range_is_array_split(n, parts):
    if n > 10**6:  # numpy cannot hold it: the formula then, in exact integers
        sizes = [n // parts + (1 if i < n % parts else 0) for i in range(parts)]
    else:
        sizes = [len(p) for p in np.array_split(np.arange(n), parts)]
    start = 0
    for i, size in enumerate(sizes):
        assert split_range(n, parts, i) == (start, start + size)
        assert part_size(n, parts, i) == size
        start += size
    assert start == n


@pytest.mark.parametrize("parts, index", [(0, 0), (2, 2), (3, -1)])
def test_missing_part_raises(parts, index):
    with pytest.raises(ValueError, match="does not exist"):
        split_range(10, parts, index)


def test_negative_count_raises():
    with pytest.raises(ValueError, match="cannot split"):
        split_range(-1, 2, 0)
