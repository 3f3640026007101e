"""The sweep: the calls timed for each collective and algorithm, their
interleaved timing against the baseline, and the run over sizes."""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .common import BASELINE, COLLECTIVES, DEFAULT_SIZES, format_size
from .machine import SLOW_PHASE_RATIO, _loadavg, machine_info, memcpy_ceiling, phase_cpus, phase_reading
from .report import _HEADER, _format_row, add_memory_bound


def iteration_counts(nbytes: int, args: argparse.Namespace) -> Tuple[int, int]:
    """(timed, warm-up) iterations for a message of ``nbytes``."""
    iters = max(args.min_iters, min(args.iters, args.byte_budget // max(nbytes, 1)))
    warmup = min(args.warmup, max(1, iters // 4))
    return int(iters), int(warmup)


def time_interleaved(mcomm: Any, runs: Sequence[Callable[[int], Any]], iters: int, warmup: int) -> np.ndarray:
    """Times several implementations of one collective, interleaved.

    Round ``i`` runs every implementation once, each after a barrier on
    ``mcomm``, in an order drawn anew for each round, so all of them see the
    same background load and the same predecessors: on a shared machine a
    slow phase then shifts every implementation alike instead of whichever
    happened to be running. ``runs[k](j)`` performs one call of
    implementation ``k``; ``j`` counts calls across implementations, so
    consecutive calls use different buffer sets.

    Returns times in seconds, shape ``(len(runs), iters)``, each the maximum
    over ranks (one MAX reduction at the end, none inside the timed loop).
    """
    return time_interleaved_phased(mcomm, runs, iters, warmup)[0]


# Readings of the machine's phase per row and implementation set (see
# time_interleaved_phased).
PHASE_READINGS = 16


def time_interleaved_phased(mcomm: Any, runs: Sequence[Callable[[int], Any]], iters: int, warmup: int,
                            phase: Optional[Callable[[], Optional[float]]] = None
                            ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """time_interleaved, and the machine's phase in every timed round.

    ``phase()`` (collective over ``mcomm``, e.g. machine.phase_reading) is
    called before the first timed round and then before every
    ``ceil(iters / PHASE_READINGS)``-th, between rounds and outside the
    timed calls; each round gets the reading taken last before it. Returns
    ``(times, readings)``: ``readings`` has one value per timed round (NaN
    where the reading was None), or is None without ``phase``.
    """
    from mpi4py import MPI

    n = len(runs)
    for w in range(warmup):
        for k, run in enumerate(runs):
            run(w * n + k)
    times = np.empty((n, iters), dtype=np.float64)
    readings = np.full(iters, np.nan) if phase is not None else None
    every = max(1, -(-iters // PHASE_READINGS))
    reading = np.nan
    perf = time.perf_counter
    barrier = mcomm.Barrier
    # A new order every round, the same on every rank (fixed seed), so that
    # each implementation follows every other one about equally often: the
    # after-effects of a call (caches, a peer still finishing) would
    # otherwise always land on the same successor, as they do when the order
    # only rotates.
    orders = np.random.default_rng(12345).permuted(np.tile(np.arange(n), (iters, 1)), axis=1)
    for i in range(iters):
        if readings is not None:
            if i % every == 0:
                value = phase()
                reading = np.nan if value is None else value
            readings[i] = reading
        for j in range(n):
            k = int(orders[i, j])
            barrier()
            t0 = perf()
            runs[k](i * n + j)
            times[k, i] = perf() - t0
    mcomm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)
    return times, readings


def phase_fields(times: np.ndarray, base: Optional[np.ndarray], readings: np.ndarray,
                 slow_ratio: float) -> Dict[str, Any]:
    """A row's figures split by the machine's phase: ``times`` are the row's
    per-round times, ``base`` the baseline's in the same rounds (None for
    the baseline's own row or where there is none), ``readings`` the phase
    in each round (NaN: not read). A round is slow where its reading is at
    least ``slow_ratio``. Gives the share of slow rounds, and for each phase
    with rounds the median time and, with ``base``, the ratio of medians as
    the row's ``ratio`` is taken; {} where no round has a reading."""
    known = ~np.isnan(readings)
    if not known.any():
        return {}
    slow = known & (readings >= slow_ratio)
    out: Dict[str, Any] = {"phase_median": float(np.median(readings[known])),
                           "slow_share": float(slow.sum() / known.sum())}
    for label, mask in (("fast", known & ~slow), ("slow", slow)):
        if not mask.any():
            continue
        out[f"time_{label}_s"] = float(np.median(times[mask]))
        if base is not None:
            out[f"ratio_{label}"] = float(np.median(base[mask])) / out[f"time_{label}_s"]
    return out


class Case:
    """Buffers for one (collective, size), and the calls that time it.

    ``count`` elements per rank's input (allgather: per rank's part);
    ``nbytes`` as defined in the module docstring.
    """

    def __init__(self, name: str, nbytes: int, dtype: np.dtype, rank: int, size: int, nsets: int) -> None:
        self.name = name
        self.rank, self.size = rank, size
        item = dtype.itemsize
        elems = max(1, nbytes // item)
        if name == "allgather":
            # nbytes is the gathered buffer; each rank contributes a 1/P part.
            part = max(1, -(-elems // size))
            in_count, out_count = part, part * size
            self.count, self.nbytes = part, part * size * item
        elif name in ("reduce_scatter", "alltoall"):
            elems = -(-elems // size) * size  # a whole number of elements per rank
            in_count = elems
            out_count = elems // size if name == "reduce_scatter" else elems
            self.count, self.nbytes = elems, elems * item
        else:
            in_count = out_count = elems
            self.count, self.nbytes = elems, elems * item
        if name == "barrier":
            in_count = out_count = 0
            self.count, self.nbytes = 0, 0
        if name == "broadcast":
            out_count = 0  # in place
        if name == "reduce" and rank != 0:
            out_count = 0
        # Small values that stay exact through repeated sums, in every dtype.
        fill = np.asarray(1, dtype=dtype)
        self.ins = [np.full(in_count, fill, dtype=dtype) for _ in range(nsets)]
        # Written once so that no page is first touched inside a timed call.
        self.outs = [np.full(out_count, fill, dtype=dtype) for _ in range(nsets)]
        self.nsets = nsets
        self.footprint = (in_count + out_count) * item * nsets

    def distml_call(self, comm: Any, algorithm: str) -> Callable[[int], Any]:
        ins, outs, n = self.ins, self.outs, self.nsets
        name = self.name
        if name == "allreduce":
            return lambda i: comm.allreduce(ins[i % n], "sum", out=outs[i % n], algorithm=algorithm)
        if name == "reduce":
            if self.rank == 0:
                return lambda i: comm.reduce(ins[i % n], 0, "sum", out=outs[i % n], algorithm=algorithm)
            return lambda i: comm.reduce(ins[i % n], 0, "sum", algorithm=algorithm)
        if name == "broadcast":
            return lambda i: comm.broadcast(ins[i % n], 0, algorithm=algorithm)
        if name == "allgather":
            return lambda i: comm.allgather(ins[i % n], out=outs[i % n], algorithm=algorithm)
        if name == "reduce_scatter":
            return lambda i: comm.reduce_scatter(ins[i % n], "sum", out=outs[i % n], algorithm=algorithm)
        if name == "alltoall":
            return lambda i: comm.alltoall(ins[i % n], out=outs[i % n], algorithm=algorithm)
        if name == "barrier":
            return lambda i: comm.barrier(algorithm=algorithm)
        raise ValueError(name)

    def inplace_baseline_call(self, mcomm: Any) -> Callable[[int], Any]:
        """MPI_Allreduce with MPI_IN_PLACE on the output buffers."""
        from mpi4py import MPI

        outs, n = self.outs, self.nsets
        return lambda i: mcomm.Allreduce(MPI.IN_PLACE, outs[i % n], op=MPI.SUM)

    def fresh_call(self, comm: Any) -> Callable[[int], Any]:
        """distml's allreduce returning a new array, as numpy functions do
        (``y = comm.allreduce(x)``); the result is dropped at once."""
        ins, n = self.ins, self.nsets
        return lambda i: comm.allreduce(ins[i % n], "sum")

    def inplace_call(self, comm: Any) -> Callable[[int], Any]:
        """distml's allreduce in place on ordinary arrays (``out=x``), on the
        output buffers, as the MPI_IN_PLACE row."""
        outs, n = self.outs, self.nsets
        return lambda i: comm.allreduce(outs[i % n], "sum", out=outs[i % n])

    def shared_buffer_call(self, comm: Any) -> Callable[[int], Any]:
        """distml's in-place allreduce on arrays in node-shared memory
        (allocated here: collective, so every rank builds the same Case)."""
        shared = []
        for src in self.ins:
            a = comm.empty(src.shape, src.dtype)
            a[...] = src
            shared.append(a)
        self.shared = shared
        n = self.nsets
        return lambda i: comm.allreduce(shared[i % n], "sum", out=shared[i % n])

    def baseline_call(self, mcomm: Any) -> Callable[[int], Any]:
        from mpi4py import MPI

        ins, outs, n = self.ins, self.outs, self.nsets
        if ins and ins[0].dtype.kind == "V":  # bfloat16: MPI has no datatype for it
            raise NotImplementedError("mpi4py cannot send ml_dtypes.bfloat16 arrays")
        SUM = MPI.SUM
        name = self.name
        if name == "allreduce":
            return lambda i: mcomm.Allreduce(ins[i % n], outs[i % n], op=SUM)
        if name == "reduce":
            if self.rank == 0:
                return lambda i: mcomm.Reduce(ins[i % n], outs[i % n], op=SUM, root=0)
            return lambda i: mcomm.Reduce(ins[i % n], None, op=SUM, root=0)
        if name == "broadcast":
            return lambda i: mcomm.Bcast(ins[i % n], root=0)
        if name == "allgather":
            return lambda i: mcomm.Allgather(ins[i % n], outs[i % n])
        if name == "reduce_scatter":
            return lambda i: mcomm.Reduce_scatter_block(ins[i % n], outs[i % n], op=SUM)
        if name == "alltoall":
            return lambda i: mcomm.Alltoall(ins[i % n], outs[i % n])
        if name == "barrier":
            return lambda i: mcomm.Barrier()
        raise ValueError(name)


def accepted_algorithms(name: str) -> Tuple[str, ...]:
    """The algorithms the installed core accepts for collective ``name``:
    "auto" first, "mpi" last, distml's own between (so algorithms added to
    the core are swept without editing this file)."""
    from distml import _core

    names = _core.accepted_algorithms(_core.Kind.__members__[name])
    return tuple(["auto"] + [a for a in names if a not in ("auto", "mpi")] + ["mpi"])


def usable_algorithms(comm: Any, mcomm: Any, name: str, algs: Sequence[str], dtype: np.dtype,
                      rank: int, nranks: int) -> Tuple[Tuple[str, ...], Dict[str, str]]:
    """(algorithms that run here, {refused algorithm: reason}).

    Some algorithms refuse a topology (e.g. a hierarchical schedule on one
    node). The core refuses before any communication and on every rank
    alike, so one small call per algorithm finds out; the verdict is then
    agreed across ranks all the same.
    """
    from distml import DistmlError

    ok, refused = [], {}
    for alg in algs:
        case = Case(name, 64 * nranks, dtype, rank, nranks, 1)
        why = ""
        try:
            case.distml_call(comm, alg)(0)
        except (ValueError, DistmlError) as e:
            why = str(e) or type(e).__name__
        reasons = [r for r in mcomm.allgather(why) if r]
        if reasons:
            refused[alg] = reasons[0]
        else:
            ok.append(alg)
    return tuple(ok), refused


# From this size on, each size's rows get a memcpy of the row's bytes on
# every rank at once, timed interleaved with them (see SizeMemcpy).
SIZE_MEMCPY_MIN_BYTES = 1 << 20


class SizeMemcpy:
    """``np.copyto`` of a row's bytes on every rank at once, rotating over
    as many buffer pairs as the row's collective uses: the memcpy rate at
    that size, with the ranks sharing the memory system as the collective
    does. The single rank's 256 MiB ceiling overstates it at sizes of
    16-64 MiB on these machines (6.0-7.0 GB/s each with two ranks copying
    at once, against 11.3-12.1 GB/s alone at 256 MiB;
    bench/results/others_large.md).

    With more ranks than cores, a rank's wall time does not show the
    sharing of the cores when the copy is shorter than the scheduler's
    slice: four ranks on two cores each timed 87-93 us for a 1 MiB copy,
    as two ranks alone do, while the node needs twice that to make the four
    copies. So each call also records the CPU time its copy took
    (``cpu_s``); the bound then takes that times P / cores where it is
    longer (report.add_memory_bound).

    ``kernel_call`` times the same bytes copied by the kernel
    (process_vm_writev into this process's own array, the call the
    single-copy schedules make towards a peer), where the kernel allows it:
    the other way a block can leave one process's private memory for
    another's, the first being two memcpys through shared memory."""

    def __init__(self, nbytes: int, nsets: int) -> None:
        self.src = [np.ones(nbytes, np.uint8) for _ in range(nsets)]
        # Written once so that no page is first touched inside a timed call.
        self.dst = [np.ones(nbytes, np.uint8) for _ in range(nsets)]
        self.cpu_s: List[float] = []
        self.kernel_cpu_s: List[float] = []

    def _timed(self, copy: Callable[[np.ndarray, np.ndarray], Any], cpu: List[float]) -> Callable[[int], Any]:
        """Call ``i``: ``copy`` of buffer pair ``i``, its CPU time appended to ``cpu``."""
        src, dst, n = self.src, self.dst, len(self.src)
        clock = time.thread_time

        def run(i: int) -> None:
            t = clock()
            copy(src[i % n], dst[i % n])
            cpu.append(clock() - t)
        return run

    def call(self) -> Callable[[int], Any]:
        return self._timed(lambda s, d: np.copyto(d, s), self.cpu_s)

    def kernel_call(self) -> Optional[Callable[[int], Any]]:
        """The kernel's copy of the row's bytes, or None where the kernel
        refuses process_vm_writev (or it is not Linux)."""
        write = _process_vm_writev()
        if write is None:
            return None
        try:
            write(self.src[0], self.dst[0])
        except OSError:
            return None
        return self._timed(write, self.kernel_cpu_s)


@functools.lru_cache(maxsize=None)
def _process_vm_writev() -> Optional[Callable[[np.ndarray, np.ndarray], None]]:
    """``write(src, dst)``: process_vm_writev of src into dst, both arrays of
    this process; None where libc has no such call. Made once per process
    (the sweep asks for it at every size)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.process_vm_writev
    except (OSError, AttributeError):
        return None

    class IoVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    fn.argtypes = [ctypes.c_int, ctypes.POINTER(IoVec), ctypes.c_ulong, ctypes.POINTER(IoVec), ctypes.c_ulong,
                   ctypes.c_ulong]
    fn.restype = ctypes.c_ssize_t
    pid = os.getpid()

    def write(src: np.ndarray, dst: np.ndarray) -> None:
        done, total = 0, src.nbytes
        while done < total:
            local = IoVec(src.ctypes.data + done, total - done)
            remote = IoVec(dst.ctypes.data + done, total - done)
            got = fn(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if got <= 0:
                err = ctypes.get_errno()
                raise OSError(err, f"process_vm_writev: {os.strerror(err)}")
            done += got
    return write


def buffer_sets(name: str, nbytes: int, item: int, size: int, args: argparse.Namespace) -> int:
    # Per set: the input plus the output (allreduce, alltoall: both full size).
    per_set = {"broadcast": 1.0, "reduce_scatter": 1.0 + 1.0 / size, "allgather": 1.0 + 1.0 / size}.get(name, 2.0)
    per_set *= max(nbytes, item)
    return int(max(1, min(args.rotate, args.buffer_budget // per_set)))


def _check_args(args: argparse.Namespace) -> None:
    unknown = [c for c in args.collectives if c not in COLLECTIVES]
    if unknown:
        raise SystemExit(f"distml-bench: unknown collective(s) {', '.join(unknown)}; "
                         f"expected some of {', '.join(COLLECTIVES)}")
    if args.iters < 1 or args.min_iters < 1 or args.warmup < 0 or args.rotate < 1:
        raise SystemExit("distml-bench: --iters, --min-iters and --rotate must be >= 1, --warmup >= 0")


def default_name(collectives: Sequence[str], nranks: int, dtype: str) -> str:
    coll = "all" if list(collectives) == list(COLLECTIVES) else "-".join(collectives)
    suffix = "" if dtype == "float32" else f"_{dtype}"
    return f"{coll}_P{nranks}{suffix}_{_dt.date.today().isoformat()}"


def run_sweep(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """Runs the sweep on all ranks; returns the results on rank 0, None elsewhere."""
    from mpi4py import MPI

    import distml

    _check_args(args)
    world = MPI.COMM_WORLD
    rank, nranks = world.Get_rank(), world.Get_size()
    dtype = np.dtype(distml.bfloat16 if args.dtype == "bfloat16" else args.dtype)
    sizes = sorted(set(args.sizes or DEFAULT_SIZES))
    if args.max_bytes is not None:
        sizes = [s for s in sizes if s <= args.max_bytes]

    mcomm = world.Dup()  # the baseline's and the harness's communicator
    comm = distml.Communicator(world, check=False if args.no_check else None, segment_bytes=args.segment_bytes)
    peer_names = list(getattr(args, "peers", None) or [])
    if peer_names and "allreduce" not in args.collectives:
        comm.free()
        mcomm.Free()
        raise SystemExit("distml-bench: --peers times allreduce only; add allreduce to --collectives")
    # Progress goes to stderr as rows are measured; the table follows on stdout.
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if rank == 0 and not args.quiet else (lambda *a: None)
    load_before = _loadavg()

    info = machine_info(nranks)
    # The machine's phase, read between rounds (time_interleaved_phased):
    # rank 0's first two CPUs, or none where rank 0 may use only one.
    phase = None
    if not getattr(args, "no_phase", False):
        cpus = mcomm.bcast(phase_cpus() if rank == 0 else None, root=0)
        if cpus is not None:
            phase = functools.partial(phase_reading, mcomm, cpus)
        else:
            say("phase: not read (rank 0 may run on one CPU only)")
    memcpy = None if args.no_memcpy else memcpy_ceiling(mcomm)
    if memcpy:
        say(f"memcpy ceiling: np.copyto of {format_size(memcpy['bytes'])}: {memcpy['bandwidth_GBps']:.2f} GB/s")

    say(_HEADER)
    if args.algorithms is not None:
        known = {a for c in args.collectives for a in accepted_algorithms(c)}
        bad = [a for a in args.algorithms if a not in known]
        if bad:
            comm.free()
            mcomm.Free()
            raise SystemExit(f"distml-bench: unknown algorithm(s) {', '.join(bad)} for "
                             f"{', '.join(args.collectives)}; expected some of {', '.join(sorted(known))}")
    rows: List[Dict[str, Any]] = []
    skipped: List[Dict[str, Any]] = []
    peers: List[Any] = []
    if peer_names:
        from .peers import LABELS, close_peers, open_peers

        peers, refused_peers = open_peers(peer_names, dtype, comm, mcomm)
        for peer_name, why in refused_peers.items():
            say(f"allreduce: skipping {LABELS[peer_name]}: {why}")
            skipped.append({"collective": "allreduce", "algorithm": LABELS[peer_name], "reason": why})
    started = time.perf_counter()
    for name in args.collectives:
        factor_of = COLLECTIVES[name]
        algs = tuple(a for a in accepted_algorithms(name) if args.algorithms is None or a in args.algorithms)
        algs, refused = usable_algorithms(comm, mcomm, name, algs, dtype, rank, nranks)
        for alg, why in refused.items():
            say(f"{name}: skipping distml:{alg}: {why}")
            skipped.append({"collective": name, "algorithm": alg, "reason": why})
        factor = factor_of(nranks)
        for nbytes in ([0] if name == "barrier" else sizes):
            nsets = buffer_sets(name, nbytes, dtype.itemsize, nranks, args)
            case = Case(name, nbytes, dtype, rank, nranks, nsets)
            iters, warmup = iteration_counts(case.nbytes, args)
            impls: List[Tuple[str, str, Callable[[int], Any]]] = []
            try:
                impls.append((BASELINE, "", case.baseline_call(mcomm)))
            except (KeyError, TypeError, NotImplementedError):  # e.g. no MPI datatype for bfloat16
                pass
            impls += [(f"distml:{a}", a, case.distml_call(comm, a)) for a in algs]
            if name == "allreduce" and (peers or not args.no_extras):
                # In place, both sides: MPI with MPI_IN_PLACE, and distml on
                # ordinary arrays; the peers work in place on the same
                # buffers, so these two rows are what they compare with.
                impls.append(("mpi4py:in-place", "", case.inplace_baseline_call(mcomm)))
                impls.append(("distml:in-place", "auto", case.inplace_call(comm)))
                impls += [(LABELS[p.name], "", p.call(case.outs)) for p in peers]
            if name == "allreduce" and not args.no_extras:
                # A new result as numpy functions return it, and distml on
                # arrays that live in node-shared memory (comm.empty).
                impls.append(("distml:fresh", "auto", case.fresh_call(comm)))
                if comm.shared_memory == "one node":
                    impls.append(("distml:shared-buffer", "auto", case.shared_buffer_call(comm)))
            size_memcpy = (SizeMemcpy(case.nbytes, nsets) if memcpy and name != "barrier"
                           and case.nbytes >= SIZE_MEMCPY_MIN_BYTES else None)
            copies: List[Callable[[int], Any]] = []
            timed_kernel = False
            if size_memcpy:
                copies.append(size_memcpy.call())
            if size_memcpy and name == "alltoall":  # the only rows with a bound from it (add_memory_bound)
                kernel = size_memcpy.kernel_call()
                # Every rank times the same calls, or the barriers would pair wrongly.
                timed_kernel = mcomm.allreduce(kernel is not None, op=MPI.LAND)
                if timed_kernel:
                    copies.append(kernel)
            runs = [run for _, _, run in impls] + copies
            all_times, readings = time_interleaved_phased(mcomm, runs, iters, warmup, phase)
            extra: Dict[str, float] = {}
            if size_memcpy:
                # Wall times are already the slowest rank's; CPU times too.
                cpu_med = lambda v: mcomm.allreduce(float(np.median(v[warmup:] or v)), op=MPI.MAX)  # noqa: E731
                extra["size_memcpy_s"] = float(np.median(all_times[len(impls)]))
                extra["size_memcpy_cpu_s"] = cpu_med(size_memcpy.cpu_s)
                if timed_kernel:
                    extra["size_kernel_copy_s"] = float(np.median(all_times[len(impls) + 1]))
                    extra["size_kernel_copy_cpu_s"] = cpu_med(size_memcpy.kernel_cpu_s)
            all_times = all_times[:len(impls)]
            del size_memcpy, copies
            measured: List[Dict[str, Any]] = []
            for (impl, alg, _), times in zip(impls, all_times):
                med = float(np.median(times))
                algbw = case.nbytes / med
                measured.append({
                    "collective": name, "implementation": impl, "algorithm": alg,
                    # Arrays in a shared window always take the shared-memory path.
                    "resolved": ("shm" if impl == "distml:shared-buffer"
                                 else comm.algorithm_for(name, case.nbytes) if alg == "auto" else alg),
                    "bytes": case.nbytes, "count": case.count, "dtype": str(dtype), "P": nranks,
                    "iters": iters, "warmup": warmup, "buffer_sets": nsets,
                    "time_s": med, "min_time_s": float(times.min()),
                    "p90_time_s": float(np.percentile(times, 90)),
                    "algbw_GBps": algbw / 1e9, "busbw_GBps": algbw * factor / 1e9,
                })
                measured[-1].update(extra)
            base = next((m for m in measured if m["implementation"] == BASELINE), None)
            if readings is not None:
                base_times = all_times[measured.index(base)] if base else None
                for m, times in zip(measured, all_times):
                    m.update(phase_fields(times, None if m is base else base_times, readings, SLOW_PHASE_RATIO))
            for m in measured:
                m["ratio"] = base["time_s"] / m["time_s"] if base else None
                say(_format_row(m))
            rows.extend(measured)
            del case
    elapsed = time.perf_counter() - started
    if peers:
        close_peers(peers, mcomm)
    if memcpy:
        # Measured again after the sweep; the ceiling is the better of the
        # two, since other work on a shared machine only ever lowers it.
        again = memcpy_ceiling(mcomm)
        memcpy["runs_GBps"] = [memcpy["bandwidth_GBps"], again["bandwidth_GBps"]]
        if again["bandwidth_GBps"] > memcpy["bandwidth_GBps"]:
            again["runs_GBps"] = memcpy["runs_GBps"]
            memcpy = again

    if memcpy:
        add_memory_bound(rows, memcpy["bandwidth_GBps"] * 1e9, os.cpu_count() or 1)
    result = None
    if rank == 0:
        result = {
            "schema": "distml-bench/1",
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "machine": info,
            "config": {
                "collectives": list(args.collectives), "algorithms": args.algorithms, "dtype": str(dtype),
                "sizes": sizes, "iters": args.iters, "warmup": args.warmup, "min_iters": args.min_iters,
                "byte_budget": args.byte_budget, "rotate": args.rotate, "buffer_budget": args.buffer_budget,
                "check": comm.check, "segment_bytes": args.segment_bytes,
                "peers": peer_names, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "baseline": "mpi4py buffer collective on COMM_WORLD.Dup()",
                "timing": "implementations interleaved, random order per round; barrier before every call; "
                          "per-call max over ranks; median over iterations",
                "busbw_factors": {n: COLLECTIVES[n](nranks) for n in args.collectives},
                "phase": (None if phase is None else
                          {"cpus": list(phase.args[1]), "slow_ratio": SLOW_PHASE_RATIO,
                           "readings_per_row": PHASE_READINGS,
                           "reading": "rewrite of lines the other CPU read / the same copy within one CPU "
                                      "(distml.bench.machine.cross_core_ratio), between rounds"}),
            },
            "memcpy": memcpy,
            "elapsed_s": elapsed,
            # Other work on the machine shows up here: on a shared machine
            # absolute figures drift, ratios (measured interleaved) much less.
            "loadavg_before": load_before, "loadavg_after": _loadavg(),
            "rows": rows,
            "skipped": skipped,
        }
    comm.free()
    mcomm.Free()
    return result
