"""New result arrays (no ``out=``): correct, independent of each other, their
memory reused once freed (from the communicator's result pool, for large
ones), bounded, and released when the communicator is freed."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from mpi_helpers import BF16, Checker, call, inputs, reduce_ref

# Elements of 4 bytes: under the pool's 128 KiB, just over it, and a few MiB.
COUNTS = [1000, 2 ** 15 + 3, 2 ** 20 + 7]


def _new_comm(monkeypatch, cap=None):
    import distml
    from conftest import COMM_TIMEOUT

    if cap is not None:
        monkeypatch.setenv("DISTML_RESULT_POOL_BYTES", str(cap))
    return distml.Communicator(timeout=COMM_TIMEOUT)


def _exact_ref(key, dtype, shape, P):
    xs = inputs(key, dtype, shape, "small", P)
    return xs, reduce_ref(xs, "sum").astype(dtype)


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), BF16, np.dtype(np.int64)], ids=str)
@pytest.mark.parametrize("count", COUNTS)
def test_fresh_results_of_every_collective(comm_default, dtype, count):
    comm, P, r = comm_default, comm_default.size, comm_default.rank
    n = count // dtype.itemsize * 4 // P * P or P  # a multiple of P, for alltoall
    key = ("fresh", str(dtype), n)
    xs, total = _exact_ref(key, dtype, (n,), P)
    x = xs[r]
    got = {
        "allreduce": call(lambda: comm.allreduce(x)),
        "allreduce async": call(lambda: comm.allreduce(x, async_op=True).wait()),
        "reduce": call(lambda: comm.reduce(x, root=P - 1)),
        "allgather": call(lambda: comm.allgather(x)),
        "reduce_scatter": call(lambda: comm.reduce_scatter(x)),
        "alltoall": call(lambda: comm.alltoall(x)),
    }
    part = n // P
    want = {
        "allreduce": total,
        "allreduce async": total,
        "reduce": total if r == P - 1 else None,
        "allgather": np.concatenate(xs),
        "reduce_scatter": np.array_split(total, P)[r],
        "alltoall": np.concatenate([xs[s][r * part:(r + 1) * part] for s in range(P)]),
    }
    chk = Checker(P)
    for name, y in got.items():
        chk.expect(name, y, want[name])
        if isinstance(y, np.ndarray) and not (y.flags.c_contiguous and y.flags.writeable):
            chk.fail(name, "the result is not a writable C-contiguous array")
    chk.verify()


def test_results_are_independent(comm_default):
    """A later call never writes into an earlier result still held, also
    when it is held only through a view; the results of a loop stay as they
    were computed."""
    comm, P, r = comm_default, comm_default.size, comm_default.rank
    n = 2 ** 18 + 1  # 1 MiB of float32: from the pool
    held = []
    refs = []
    for i in range(4):
        xs, total = _exact_ref(("independent", i), np.dtype(np.float32), (n,), P)
        y = comm.allreduce(xs[r])
        held.append(y[5:] if i % 2 else y)  # a view keeps the block as the array does
        refs.append(total[5:] if i % 2 else total)
        del y
    gc.collect()
    xs, total = _exact_ref(("independent", "last"), np.dtype(np.float32), (n,), P)
    last = comm.allreduce(xs[r])
    for h, ref in zip(held, refs):
        np.testing.assert_array_equal(h, ref)
        assert not np.may_share_memory(h, last)
    np.testing.assert_array_equal(last, total)
    addrs = {h.__array_interface__["data"][0] for h in held}
    assert len(addrs) == len(held)


def test_freed_memory_is_reused(monkeypatch):
    comm = _new_comm(monkeypatch)
    try:
        x = np.ones(2 ** 20, np.float32) * (comm.rank + 1)
        y = comm.allreduce(x)
        addr = y.__array_interface__["data"][0]
        before = comm._pool.stats()
        del y
        y = comm.allreduce(x)
        after = comm._pool.stats()
        assert y.__array_interface__["data"][0] == addr
        assert after["reused"] == before["reused"] + 1
        assert after["mapped"] == before["mapped"]
        np.testing.assert_array_equal(y, np.full(2 ** 20, comm.size * (comm.size + 1) / 2, np.float32))
        # A smaller result reuses a block up to a third larger than it; a
        # much smaller one maps its own.
        del y
        z = comm.allreduce(x[: 2 ** 20 - 2 ** 17])
        assert z.__array_interface__["data"][0] == addr
        del z
        w = comm.allreduce(x[: 2 ** 18])
        assert w.__array_interface__["data"][0] != addr
        del w
    finally:
        comm.free()


def test_pool_is_bounded_and_released_at_free(monkeypatch):
    cap = 3 << 20
    comm = _new_comm(monkeypatch, cap)
    try:
        assert comm._pool.cap_bytes == cap
        kept = None
        for i, n in enumerate([2 ** 18, 2 ** 19, 2 ** 18 + 2 ** 17, 2 ** 20, 3 * 2 ** 18, 2 ** 21]):
            y = comm.allgather(np.full(n // comm.size, i, np.float32))
            assert y.shape == (n // comm.size * comm.size,)
            assert (y == i).all()
            if i == 2:
                kept = y  # held across the rest of the loop
            del y
            s = comm._pool.stats()
            assert s["cached_bytes"] <= cap
        held = comm._pool.stats()["held_bytes"]
        assert held >= kept.nbytes
    finally:
        comm.free()
    s = comm._pool.stats()
    assert s["cached_bytes"] == 0 and s["cached_blocks"] == 0
    assert (kept == 2).all()  # still readable after free
    del kept
    gc.collect()
    s = comm._pool.stats()
    assert s["held_bytes"] == 0 and s["held_blocks"] == 0


def test_pool_off(monkeypatch):
    comm = _new_comm(monkeypatch, 0)
    try:
        assert comm._pool is None
        y = comm.allreduce(np.ones(2 ** 20, np.float32))
        assert y.flags.owndata
        np.testing.assert_array_equal(y, np.full(2 ** 20, comm.size, np.float32))
    finally:
        comm.free()


def test_bad_pool_setting_raises(monkeypatch):
    import distml

    monkeypatch.setenv("DISTML_RESULT_POOL_BYTES", "lots")
    with pytest.raises(ValueError, match="DISTML_RESULT_POOL_BYTES"):
        distml.Communicator()


def test_byte_settings_take_units_and_name_a_bad_value(monkeypatch):
    import distml

    monkeypatch.setenv("DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES", "1G")
    monkeypatch.setenv("DISTML_SHM_STREAM_BYTES", "64KiB")
    monkeypatch.setenv("DISTML_RESULT_POOL_BYTES", "8M")
    comm = distml.Communicator()
    try:
        assert comm._core.shm_single_copy_blocks_bytes == 1 << 30
        assert comm._core.shm_stream_bytes == 64 << 10
        assert comm._pool.cap_bytes == 8 << 20
    finally:
        comm.free()
    for value, says in (("lots", "is not a number of bytes"), ("1.5", "is not a number of bytes"),
                        ("inf", "is not a number of bytes"), ("-4K", "is negative")):
        monkeypatch.setenv("DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES", value)
        with pytest.raises(ValueError, match=f"DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES='{value}' {says}"):
            distml.Communicator()
