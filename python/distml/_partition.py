"""The split of a range over ranks, as ``numpy.array_split`` makes it: the
first ``n % parts`` parts hold one item more. One definition, the core's
(``Blocks`` in csrc/algorithms/schedule.h), so that what Python expects of a
shard is what the schedules move."""

from __future__ import annotations

from typing import Tuple

from . import _core


def split_range(n: int, parts: int, index: int) -> Tuple[int, int]:
    """``[start, stop)`` of part ``index`` when ``n`` items are split into
    ``parts``; ValueError when that part does not exist."""
    if n < 0:
        raise ValueError(f"cannot split {n} items")
    return _core.split_range(int(n), int(parts), int(index))


def part_size(n: int, parts: int, index: int) -> int:
    """The number of items in part ``index`` (see :func:`split_range`)."""
    start, stop = split_range(n, parts, index)
    return stop - start
