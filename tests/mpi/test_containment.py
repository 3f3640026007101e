"""The engine owns what is in flight: queued collectives keep their arrays
alive when the caller drops them (and the handle), and settings changes wait
for the collectives queued before them."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import distml
from mpi_helpers import Checker, call


def test_dropped_handles_and_arrays(comm_default):
    """Async allreduces whose handle and arrays the caller drops at once still
    run on live memory (large arrays are unmapped when freed, so a collective
    writing freed memory crashes here, and AddressSanitizer names it), and
    the communicator stays in step."""
    comm = comm_default
    P, rank = comm.size, comm.rank
    check = Checker(P)
    n = 1 << 20  # 4 MiB of float32: its own mapping, unmapped when freed
    for i in range(24):
        x = np.full(n, float(rank + i), np.float32)
        out = np.empty_like(x)
        comm.allreduce(x, out=out, async_op=True)
        comm.allgather(x[: 1 << 16], async_op=True)
        del x, out
        if i % 6 == 0:
            gc.collect()
    y = np.full(1000, rank + 1.0)
    check.expect("blocking allreduce after the dropped ones", call(lambda: comm.allreduce(y)),
                 np.full(1000, P * (P + 1) / 2.0))
    check.verify()


def test_settings_change_waits_for_queued_work(comm_default):
    """A setter returns only once the collectives queued before it have run,
    so none of them runs with half of a change."""
    comm = comm_default
    check = Checker(comm.size)
    before = comm._core.segment_bytes
    xs = [np.full(1 << 18, float(i), np.float32) for i in range(8)]
    handles = [comm.allreduce(x, algorithm="ring", async_op=True) for x in xs]
    comm._core.segment_bytes = 4096  # must be set on every rank: it shapes the ring's messages
    check.expect_true("every queued collective had completed when the setter returned",
                      all(h.test() for h in handles))
    for i, h in enumerate(handles):
        check.expect(f"queued allreduce {i}", call(h.wait), np.full(1 << 18, float(i) * comm.size, np.float32))
    check.expect("ring with the new segment size",
                 call(lambda: comm.allreduce(xs[1], algorithm="ring")), np.full(1 << 18, float(comm.size), np.float32))
    comm._core.segment_bytes = before
    check.verify()


def test_check_is_chosen_at_creation(world):
    """`check` selects how ranks agree, so it is fixed when the communicator
    is made (a per-rank change later would have ranks speak different
    protocols)."""
    with distml.Communicator(world, check=False) as comm:
        with pytest.raises(AttributeError):
            comm.check = True
        assert comm.check is False
