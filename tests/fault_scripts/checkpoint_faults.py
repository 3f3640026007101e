"""Faults on one rank during distml.checkpoint.save and load, run under mpiexec.

    mpiexec -n P python checkpoint_faults.py DIR CASE [CASE ...]

DIR is a directory every rank can see. The communicator has no timeout (the
default configuration), so a rank left waiting for a failed peer would hang
and the launcher's time limit would end the job. Each rank reports what it
saw as ``FAULT {json}`` lines on stdout (see faults.py).

Cases (VICTIM is a rank number; "last" means P - 1):
    disk_full:VICTIM     the victim's file size limit (RLIMIT_FSIZE, with
                         SIGXFSZ ignored) is below its shard's size, so
                         writing its shard fails with EFBIG
    commit               rank 0 cannot create the manifest's temporary file
                         (a directory is in the way)
    load_missing:VICTIM  every rank loads from its own copy of a checkpoint
                         (as with node-local disks); the victim's copy lacks
                         a shard file
    load_corrupt:VICTIM  the same, with one byte of a shard flipped instead
    memory:NUMEL         tracemalloc peak of saving and loading one float32
                         parameter of NUMEL elements
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import sys
import time
import tracemalloc

import numpy as np
from mpi4py import MPI

import distml
from distml import checkpoint, optim

from faults import attempt, report

WORLD = MPI.COMM_WORLD
RANK, P = WORLD.rank, WORLD.size
SHAPES = [(300, 40), (77,)]
FSIZE_LIMIT = 4096  # bytes: below every rank's shard file at P <= 4


def exception_of(fn):
    """(type name or "ok", message, seconds, the exception or None)."""
    start = time.monotonic()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - reported
        return type(exc).__name__, str(exc), time.monotonic() - start, exc
    return "ok", "", time.monotonic() - start, None


def setup(comm, directory):
    """Parameters and a sharded Adam after one step, saved into
    ``directory``; returns (params, optimizer, copy of the saved params)."""
    rng = np.random.default_rng(11)
    params = [rng.standard_normal(s) for s in SHAPES]
    opt = distml.ShardedOptimizer(optim.Adam, params, comm=comm, lr=0.1)
    opt.step([np.ones_like(p) for p in params])
    checkpoint.save(directory, optimizer=opt)
    saved = [p.copy() for p in params]
    opt.step([np.ones_like(p) for p in params])  # now differs from the checkpoint
    return params, opt, saved


def previous_intact(directory, saved):
    """Whether ``directory`` still loads (this process alone) to ``saved``."""
    restored = [np.zeros_like(p) for p in saved]
    saw, msg, _, _ = attempt(lambda: checkpoint.load(directory, params=restored))
    if saw != "ok":
        return f"{saw}: {msg}"
    return "intact" if all(np.array_equal(a, b) for a, b in zip(restored, saved)) else "changed"


def victim_of(arg):
    return P - 1 if arg == "last" else int(arg)


def case_save_fault(comm, base, kind, arg):
    victim = victim_of(arg) if kind == "disk_full" else 0
    directory = os.path.join(base, f"{kind}-{arg}")
    params, opt, saved = setup(comm, directory)
    before = sorted(os.listdir(directory))
    WORLD.Barrier()  # every rank has listed before the victim changes anything
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    blocker = os.path.join(directory, f"{checkpoint.MANIFEST}.tmp-{os.getpid()}")
    if RANK == victim:
        if kind == "disk_full":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, limits[1]))
        else:
            os.mkdir(blocker)
    saw, msg, seconds, exc = exception_of(lambda: checkpoint.save(directory, optimizer=opt))
    if RANK == victim:
        if kind == "disk_full":
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        else:
            os.rmdir(blocker)
    cause = getattr(exc, "__cause__", None) if exc is not None else None
    WORLD.Barrier()
    after_files = sorted(os.listdir(directory))
    previous = previous_intact(directory, saved)
    WORLD.Barrier()
    follow, follow_msg, _, _ = attempt(lambda: checkpoint.save(directory, optimizer=opt))
    reloaded = [np.zeros_like(p) for p in params]
    WORLD.Barrier()
    attempt(lambda: checkpoint.load(directory, params=reloaded))
    report("save", variant=f"{kind}:{arg}", victim=victim, role="victim" if RANK == victim else "other",
           saw=saw, msg=msg, seconds=seconds,
           cause=type(cause).__name__ if cause is not None else None,
           cause_errno=errno.errorcode.get(getattr(cause, "errno", None) or -1),
           files_unchanged=before == after_files, files=after_files, previous=previous,
           after="ok" if follow == "ok" and all(np.array_equal(a, b) for a, b in zip(reloaded, params))
           else f"{follow}: {follow_msg}")


def case_load_fault(comm, base, kind, arg):
    victim = victim_of(arg)
    directory = os.path.join(base, f"{kind}-{arg}")
    params, opt, saved = setup(comm, directory)
    current = [p.copy() for p in params]
    # Every rank's own copy, as on nodes with local disks.
    local = os.path.join(base, f"{kind}-{arg}-rank{RANK}")
    shutil.copytree(directory, local)
    shard = sorted(f for f in os.listdir(local) if f.startswith("shard-"))[-1]
    if RANK == victim:
        if kind == "load_missing":
            os.remove(os.path.join(local, shard))
        else:
            with open(os.path.join(local, shard), "r+b") as f:
                f.seek(os.path.getsize(os.path.join(local, shard)) // 2)
                byte = f.read(1)
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([byte[0] ^ 0xFF]))
    WORLD.Barrier()
    saw, msg, seconds, _ = exception_of(lambda: checkpoint.load(local, optimizer=opt))
    untouched = all(np.array_equal(a, b) for a, b in zip(params, current))
    follow, follow_msg, _, _ = attempt(lambda: checkpoint.load(directory, optimizer=opt))
    loaded = all(np.array_equal(a, b) for a, b in zip(params, saved))
    report("load", variant=f"{kind}:{arg}", victim=victim, role="victim" if RANK == victim else "other",
           saw=saw, msg=msg, seconds=seconds, shard=shard, untouched=untouched,
           after="ok" if follow == "ok" and loaded else f"{follow}: {follow_msg} (loaded: {loaded})")


def case_memory(comm, base, numel):
    numel = int(numel)
    directory = os.path.join(base, "memory")
    x = np.arange(numel, dtype=np.float32)
    y = np.zeros_like(x)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        saw_save, msg_save, t_save, _ = attempt(lambda: checkpoint.save(directory, params=[x], comm=comm))
        save_peak = tracemalloc.get_traced_memory()[1] - start
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        saw_load, msg_load, t_load, _ = attempt(lambda: checkpoint.load(directory, params=[y], comm=comm))
        load_peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    report("memory", variant=f"memory:{numel}", numel=numel, itemsize=x.itemsize,
           saw=saw_save if saw_save != "ok" else saw_load, msg=msg_save or msg_load,
           save_peak=save_peak, load_peak=load_peak, save_seconds=t_save, load_seconds=t_load,
           equal=bool(np.array_equal(x, y)))


def main() -> None:
    base = sys.argv[1]
    comm = distml.Communicator(WORLD)  # no timeout: a stranded rank would hang
    for spec in sys.argv[2:]:
        kind, _, arg = spec.partition(":")
        if kind in ("disk_full", "commit"):
            case_save_fault(comm, base, kind, arg)
        elif kind in ("load_missing", "load_corrupt"):
            case_load_fault(comm, base, kind, arg)
        elif kind == "memory":
            case_memory(comm, base, arg)
        else:
            raise SystemExit(f"unknown case {spec!r}")
        WORLD.Barrier()
    comm.free()


if __name__ == "__main__":
    main()
