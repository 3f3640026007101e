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
import json
import os
import sys
import time

import numpy as np
from mpi4py import MPI

from distml.bench.common import parse_size
from distml.bench.machine import phase_cpus, phase_reading
from distml.bench.sweep import PHASE_READINGS

WARMUP = 20
NSETS = 3  # buffer sets a row rotates over, as the sweep does

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


def arguments():
    """(sizes, iters) from the command line: [SIZES] [ITERS]."""
    sizes = [parse_size(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "1M,2M,4M,16M").split(",")]
    return sizes, int(sys.argv[2]) if len(sys.argv) > 2 else 200


def node(w):
    """Every rank's process id, and ``w`` split by shared memory, which must
    hold every rank (the floors are for one node)."""
    shared = w.Split_type(MPI.COMM_TYPE_SHARED)
    assert shared.size == w.size, "one node only"
    return w.allgather(os.getpid()), shared


# Communicator settings that leave one variant of the shared-memory
# schedules running (the variant tuner off): the single copy between the
# ranks' arrays; staging through the slots; and, for allreduce, staging
# with the result written by streaming stores (a plan below the tuner's
# reach under 32 MiB). The tuner's third variant, slots filled by streaming
# stores, is not a setting and has no row.
_G = 1 << 40
VARIANT_SETTINGS = {
    "single": dict(shm_tune=False, shm_single_copy_max_bytes=_G),
    "staged": dict(shm_tune=False, shm_single_copy_bytes=_G, shm_single_copy_blocks_bytes=_G,
                   shm_stream_bytes=_G),
    "staged_stream_out": dict(shm_tune=False, shm_single_copy_bytes=_G, shm_single_copy_blocks_bytes=_G,
                              shm_stream_bytes=1),
}


def variant_comms(names):
    """A distml communicator per variant named (VARIANT_SETTINGS), made on
    every rank with the same settings; and with FLOOR_SLOTS=128K,1M,... one
    staged communicator per slot size (``staged@128K``)."""
    import distml

    def make(settings, slot=None):
        if slot is not None:
            os.environ["DISTML_SHM_SLOT_BYTES"] = str(slot)
        try:
            c = distml.Communicator()
        finally:
            os.environ.pop("DISTML_SHM_SLOT_BYTES", None)
        for attr, value in settings.items():
            setattr(c._core, attr, value)
        return c

    comms = {name: make(VARIANT_SETTINGS[name]) for name in names}
    for text in filter(None, os.environ.get("FLOOR_SLOTS", "").split(",")):
        comms[f"staged@{text}"] = make(VARIANT_SETTINGS["staged"], parse_size(text))
    return comms


def rows(mpi_call, distml_call, comm, ins, outs, floors, tiny_ins, tiny_outs, variants):
    """The rows of one size: MPI's and distml's collective, each called as
    ``call(ins[s], outs[s])`` on rotating buffer set ``s``; both again on
    the tiny arrays (``fixed:mpi4py``, ``fixed:distml``: a whole collective
    of a few bytes in the same rounds, its fixed cost there); distml's
    collective on each communicator of ``variants`` (``distml:NAME``, one
    variant forced); and every floor row twice, whole (``floor:X``) and its
    calls alone (``calls:X``): ``floors[name](tiny)`` makes the row.
    ``distml_call(c, x, y)`` calls distml's collective on communicator
    ``c``: ``comm`` (the tuner on) for distml:auto and fixed:distml."""
    def rotating(call, a, b):
        return lambda i: call(a[i % NSETS], b[i % NSETS])

    def on(c):
        return lambda x, y: distml_call(c, x, y)

    impls = {"mpi4py": rotating(mpi_call, ins, outs), "distml:auto": rotating(on(comm), ins, outs),
             "fixed:mpi4py": rotating(mpi_call, tiny_ins, tiny_outs),
             "fixed:distml": rotating(on(comm), tiny_ins, tiny_outs)}
    for name, c in variants.items():
        impls[f"distml:{name}"] = rotating(on(c), ins, outs)
    for name, make in floors.items():
        impls[name] = make(False)
        impls[name.replace("floor:", "calls:")] = make(True)
    return impls


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




def check(w, impls, outs, expect, what):
    """Runs every row but the calls once per buffer set and checks the
    result on every rank: ``expect(s)`` is set ``s``'s right output."""
    for name, run in impls.items():
        if name.startswith(("calls:", "fixed:")):
            continue
        for s, out in enumerate(outs):
            out[:] = -1
            w.Barrier()  # no peer writes into this rank's output before it is cleared
            run(s)
            w.Barrier()  # the peers' writes into this rank's output are done
            ok = w.allreduce(bool(np.array_equal(out, expect(s))), op=MPI.LAND)
            assert ok, f"{name} {what}"


def measure(w, impls, floors, nbytes, iters):
    """Times the rows as spans, the machine's phase read between rounds, and
    returns the size's row of results: each row's median and minimum, the
    floor (the fastest floor row net of its calls), and the ratios; rank 0
    prints it."""
    names = list(impls)
    cpus = phase_cpus()
    times, readings = spans(w, [impls[n] for n in names], iters, WARMUP, lambda: phase_reading(w, cpus))
    med = {n: float(np.median(times[k])) for k, n in enumerate(names)}
    net = {n: med[n] - med[n.replace("floor:", "calls:")] for n in floors}
    floor_name = min(net, key=net.get)
    floor = net[floor_name]
    # The floor with a collective's fixed cost put back: the cheaper of
    # MPI's and distml's whole collective on a few bytes in these rounds.
    fixed = min(med["fixed:mpi4py"], med["fixed:distml"])
    variants = {n: med[n] for n in names if n.startswith("distml:") and n != "distml:auto"}
    row = {"bytes": nbytes, "P": w.size, "iters": iters, "median_s": med,
           "min_s": {n: float(times[k].min()) for k, n in enumerate(names)},
           "phase_median": float(np.nanmedian(readings)),
           "floor": floor_name, "floor_s": floor, "floor_net_s": net, "mpi_over_floor": med["mpi4py"] / floor,
           "mpi_over_distml": med["mpi4py"] / med["distml:auto"],
           "distml_of_floor": floor / med["distml:auto"],
           "fixed_s": fixed, "floor_fixed_s": floor + fixed,
           "mpi_over_floor_fixed": med["mpi4py"] / (floor + fixed),
           "distml_of_floor_fixed": (floor + fixed) / med["distml:auto"],
           "best_variant": min(variants, key=variants.get) if variants else None,
           "auto_of_best_variant": min(variants.values()) / med["distml:auto"] if variants else None}
    if w.rank == 0:
        cells = "  ".join(f"{n} {med[n] * 1e6:.1f}" for n in names)
        print(f"P={w.size} {nbytes >> 10} KiB phase {row['phase_median']:.1f}: {cells} us | MPI/distml "
              f"{row['mpi_over_distml']:.2f}  MPI/floor {row['mpi_over_floor']:.2f} ({floor_name} net of its calls)  "
              f"distml at {row['distml_of_floor']:.2f} of floor | with the fixed cost {fixed * 1e6:.1f} us: MPI/floor "
              f"{row['mpi_over_floor_fixed']:.2f}, distml at {row['distml_of_floor_fixed']:.2f}", flush=True)
    return row


def write_rows(w, results):
    """Rank 0 writes the rows to $FLOOR_OUT, if set, with the command."""
    if w.rank == 0 and os.environ.get("FLOOR_OUT"):
        with open(os.environ["FLOOR_OUT"], "w") as f:
            json.dump({"command": " ".join(["mpiexec", "-n", str(w.size), "python"] + sys.argv), "rows": results},
                      f, indent=1)
