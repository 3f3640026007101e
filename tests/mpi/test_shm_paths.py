"""The shared-memory allreduce's paths, each reached on purpose: one shot
(small), staged chunks through the slots (several slots' worth), single copy
(peers read each other's arrays), and arrays that live in node-shared memory
(reduced where they lie, also at an offset inside a larger one); each with
results written through the cache and with streaming stores.

In all of them one rank computes each element's final value, averages
included (it divides its own slice before the others copy it), so besides
the numpy reference every rank's result must be bitwise equal to every
other rank's."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from mpi_helpers import BF16, Checker, call, inputs, reduce_ref, require

DTYPES = [np.dtype(np.float32), np.dtype(np.float16), BF16, np.dtype(np.float64), np.dtype(np.int32)]
OPS = ["sum", "avg", "max"]

# Elements per path for 4-byte types: 1001 (4 KiB, under the one-shot limit),
# and 2**19 + 5 (2 MiB and a bit: two slots plus a remainder when staged, and
# above the single-copy threshold).
SMALL, LARGE = 1001, 2 ** 19 + 5


def _mode(dtype, op):
    if op == "max":
        return "exact"
    return "tol" if dtype.kind in "fV" else "exact"


def _kind(dtype, op):
    return "full" if op == "max" or dtype.kind in "iu" else "small"


class _Settings:
    """Within the block, large messages take the staged path or the
    single-copy one (where peers' memory is readable), and write their
    results with streaming stores or not, whatever their size."""

    def __init__(self, comm, single_copy: bool, stream: bool) -> None:
        self.core = comm._core
        self.want = {"shm_single_copy_bytes": 0 if single_copy else 1 << 62,
                     "shm_single_copy_max_bytes": 1 << 62,
                     "shm_stream_bytes": 0 if stream else 1 << 62,
                     # The thresholds alone decide (no choice by times:
                     # test_variant_tuner.py).
                     "shm_tune": False}

    def __enter__(self):
        self.saved = {k: getattr(self.core, k) for k in self.want}
        for k, v in self.want.items():
            setattr(self.core, k, v)
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            setattr(self.core, k, v)


def _digest(world, a) -> bool:
    """Whether every rank holds the same bytes."""
    if not isinstance(a, np.ndarray):
        return False
    crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).tobytes())
    return len(set(world.allgather(crc))) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["cached", "stream"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", ["one_shot", "staged", "single_copy", "shared_array", "shared_offset"])
def test_allreduce_shm_paths(comm_default, world, dtype, path, stream):
    comm = comm_default
    require(comm, "allreduce", "shm")
    P, rank = comm.size, comm.rank
    count = SMALL if path == "one_shot" else LARGE
    check = Checker(P)
    same = {}
    for op in OPS:
        xs = inputs(("shm_paths", str(dtype), op, count), dtype, (count,), _kind(dtype, op), P)
        label = f"{path} op={op} count={count}"
        if path in ("one_shot", "staged", "single_copy"):
            with _Settings(comm, single_copy=path == "single_copy", stream=stream):
                got = call(lambda: comm.allreduce(xs[rank], op=op, algorithm="shm"))
            check.expect(label, got, reduce_ref(xs, op), _mode(dtype, op), dtype=dtype)
        else:
            offset = 0 if path == "shared_array" else 37
            big = comm.empty(count + 2 * offset + 1, dtype)
            big[...] = 7
            a = big[offset:offset + count]
            a[...] = xs[rank]
            with _Settings(comm, single_copy=True, stream=stream):
                got = call(lambda: comm.allreduce(a, op=op, out=a))
            check.expect(label, got, reduce_ref(xs, op), _mode(dtype, op), dtype=dtype, same=a)
            rest = np.concatenate([big[:offset], big[offset + count:]])
            check.expect(label + " (rest of the shared array untouched)", rest,
                         np.full(rest.shape, 7, dtype), "bits")
        same[label] = _digest(world, got)
    for label, agreed in same.items():
        check.expect_true(label + ": every rank's result bitwise equal", agreed)
    check.verify()


def test_auto_allreduce_choices_on_one_node(comm_default, world):
    """What "auto" runs for allreduce on one node by the sizes alone (no
    choice by times), read back from the trace: on a node of two ranks,
    ordinary arrays of 2 MiB to 64 MiB take the ring over MPI and everything
    else the shared-memory path; arrays in a shared window always reduce
    where they lie. (With the choice by times the ring is one of the
    variants compared there: test_variant_tuner.py.)"""
    comm = comm_default
    require(comm, "allreduce", "shm")
    P = comm.size
    mib = 1 << 20
    cases = [(mib // 2, "shm"), (4 * mib, "ring" if P == 2 else "shm"), (64 * mib, "shm")]
    check = Checker(P)
    core = comm._core
    saved = core.shm_tune
    core.shm_tune = False
    core.set_trace(True)
    try:
        core.drain_trace()
        for nbytes, _ in cases:
            comm.allreduce(np.ones(nbytes // 4, np.float32))
        shared = comm.empty(mib, np.float32)  # 4 MiB in a shared window
        shared[...] = 1
        got_shared = call(lambda: comm.allreduce(shared, out=shared))
        events = core.drain_trace()
        ran = [e["algorithm"] for e in events if e["collective"] == "allreduce"]
        picked = [comm.algorithm_for("allreduce", nbytes) for nbytes, _ in cases]
    finally:
        core.set_trace(False)
        core.shm_tune = saved
    check.expect_true(f"traced {len(ran)} allreduces, expected {len(cases) + 1}", len(ran) == len(cases) + 1)
    for (nbytes, want), algo, named in zip(cases, ran, picked):
        check.expect_true(f"{nbytes} bytes ran {algo}, expected {want}", algo == want)
        check.expect_true(f"algorithm_for({nbytes}) gave {named}, expected {want}", named == want)
    if len(ran) == len(cases) + 1:
        check.expect_true(f"shared window ran {ran[-1]}, expected shm", ran[-1] == "shm")
        # The schedule names the path, not only the algorithm.
        schedule = [e["schedule"] for e in events if e["collective"] == "allreduce"][-1]
        check.expect_true(f"shared window's schedule is {schedule!r}", "in place in a shared window" in schedule)
    check.expect("shared window result", got_shared, np.full(mib, P, np.float32), same=shared)
    check.verify()
