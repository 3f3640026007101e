"""Broadcast between two ranks of one node that may copy between each
other's arrays (ShmGroup::single_copy): past the one-way path `auto` takes
the shared-memory schedule's single-copy variant, in which the other rank
reads the first half of the root's array while the root writes the second
half into the other's. Results against numpy for odd sizes, every root,
views, read-only roots and dtypes; what ran, from the trace; a mismatch
still raises on both ranks."""
import numpy as np
import pytest

from distml import MismatchError

from mpi_helpers import Checker, call, traced


def _pair_on_one_node(comm):
    return comm.size == 2 and comm._core.one_node


@pytest.fixture
def pair(comm_default):
    if not _pair_on_one_node(comm_default):
        pytest.skip("needs two ranks on one node")
    if not comm_default._core.single_copy:
        pytest.skip("the ranks may not copy between each other's memory here (ptrace rules)")
    return comm_default


SIZES = [16 * 1024 + 1, 20000, 65536 + 63, (1 << 20) + 3, 5 * (1 << 20) + 1]


def test_results_every_root_and_size(pair):
    comm = pair
    check = Checker(comm.size)
    for dtype in (np.uint8, np.float32, np.float64):
        for nbytes in SIZES:
            n = max(1, nbytes // np.dtype(dtype).itemsize)
            for root in range(comm.size):
                want = (np.arange(n) * 7 + root + 1).astype(dtype)
                x = want.copy() if comm.rank == root else np.zeros(n, dtype)
                got = call(lambda: comm.broadcast(x, root=root))
                check.expect(f"{dtype.__name__} n={n} root={root}", got if isinstance(got, BaseException) else x,
                             want, dtype=dtype)
    check.verify()


def test_views_and_read_only_root(pair):
    comm = pair
    check = Checker(comm.size)
    n = 300001
    base = np.arange(2 * n, dtype=np.float32)
    want = base[::2].copy()
    # A strided view goes through a contiguous copy; a read-only root is read, never written.
    x = base[::2].copy() if comm.rank == 0 else np.zeros(2 * n, np.float32)[::2]
    if comm.rank == 0:
        x.setflags(write=False)
    got = call(lambda: comm.broadcast(x, root=0))
    check.expect("strided / read-only", got if isinstance(got, BaseException) else np.ascontiguousarray(x), want,
                 dtype=np.float32)
    check.verify()


def test_trace_names_the_single_copy_variant(pair):
    comm = pair
    x = np.ones(1 << 18, np.float32)
    events = [e for e in traced(comm, lambda: comm.broadcast(x, root=1)) if e["collective"] == "broadcast"]
    assert len(events) == 1 and events[0]["algorithm"] == "shm", events
    assert "cross-memory" in events[0].get("schedule", events[0].get("variant", "")), events


def test_mismatch_raises_on_both_ranks(pair):
    comm = pair
    n = (1 << 20) if comm.rank == 0 else (1 << 20) + 16
    x = np.zeros(n, np.float32)
    with pytest.raises(MismatchError):
        comm.broadcast(x, root=0)
    assert not x.any()
    y = np.full(1 << 20, comm.rank + 1.0, np.float32)
    comm.broadcast(y, root=1)
    assert (y == 2.0).all()
