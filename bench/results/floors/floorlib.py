"""What the floor scripts share: the kernel's copies between processes
(process_vm_writev / process_vm_readv, permitted to any process of this
user) and the timing of rows as spans.

Every row is timed as a span: from the first rank's start to the last
rank's end (CLOCK_MONOTONIC is one clock for all processes of a node), a
barrier before each call, the rows interleaved in an order drawn anew each
round. The floor rows do not wait for one another, so with more ranks than
cores one rank's copies may run whole while another has not started; each
rank's own time (the sweep's measure) then leaves out the waiting for a
core, and only the span counts it.
"""
import ctypes
import os
import time

import numpy as np
from mpi4py import MPI

from distml.bench.sweep import PHASE_READINGS

libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PTRACER, PR_SET_PTRACER_ANY = 0x59616D61, ctypes.c_ulong(-1).value
libc.prctl(PR_SET_PTRACER, ctypes.c_ulong(PR_SET_PTRACER_ANY), 0, 0, 0)


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


for name in ("process_vm_writev", "process_vm_readv"):
    fn = getattr(libc, name)
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(IoVec), ctypes.c_ulong, ctypes.POINTER(IoVec), ctypes.c_ulong,
                   ctypes.c_ulong]
    fn.restype = ctypes.c_ssize_t


def kernel_copy(fn, pid, local, remote, n):
    done = 0
    while done < n:
        lv, rv = IoVec(local + done, n - done), IoVec(remote + done, n - done)
        got = fn(pid, ctypes.byref(lv), 1, ctypes.byref(rv), 1, 0)
        if got <= 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        done += got


def spans(mcomm, runs, iters, warmup, phase):
    """Per row and round: the last rank's end minus the first rank's start."""
    n = len(runs)
    for i in range(warmup):
        for k, run in enumerate(runs):
            mcomm.Barrier()
            run(i * n + k)
    starts, ends = np.empty((n, iters)), np.empty((n, iters))
    readings = np.full(iters, np.nan)
    every = max(1, -(-iters // PHASE_READINGS))
    orders = np.random.default_rng(12345).permuted(np.tile(np.arange(n), (iters, 1)), axis=1)
    clock = time.monotonic
    reading = np.nan
    for i in range(iters):
        if i % every == 0:
            value = phase()
            reading = np.nan if value is None else value
        readings[i] = reading
        for j in range(n):
            k = int(orders[i, j])
            mcomm.Barrier()
            starts[k, i] = clock()
            runs[k](i * n + j)
            ends[k, i] = clock()
    mcomm.Allreduce(MPI.IN_PLACE, starts, op=MPI.MIN)
    mcomm.Allreduce(MPI.IN_PLACE, ends, op=MPI.MAX)
    return ends - starts, readings


