"""The distml benchmark sweep: every collective and algorithm against MPI.

Run under mpiexec, on all ranks::

    mpiexec -n 2 python -m distml.bench                       # everything
    mpiexec -n 4 python -m distml.bench --collectives allreduce
    python -m distml.bench plot bench/results/a.json b.json -o sweep.png
    python -m distml.bench table bench/results/a.json --field ratio   # markdown

For each collective, each of its algorithms and each message size, the sweep
times distml and, in the same run on the same buffers, the baseline: mpi4py's
own buffer collective (``Allreduce``, ``Bcast``, ...) on a duplicate of the
world communicator. A single-rank ``np.copyto`` of 256 MiB is timed too,
before and after the sweep: the memory bandwidth that any on-node collective
is bounded by.

Timing protocol (the same for distml and the baseline):

- the implementations of one (collective, size) run interleaved, one call
  of each per round in an order drawn anew each round (the same on every
  rank), so background load on a shared machine and the after-effects of
  the previous call affect them alike and their ratios stay meaningful;
- every call starts after a barrier and is timed with ``time.perf_counter``
  on every rank; a call's time is the maximum over ranks (one MPI MAX
  reduction of all the times at the end, so no extra traffic inside the
  timed loop); the figure reported is the median over rounds;
- 2-3 sets of input/output buffers are used in rotation where they fit the
  memory budget, so a message that fits in the last-level cache is not timed
  warm from the previous iteration; outputs are preallocated (``out=``);
- large messages run fewer iterations (a byte budget per size), so a full
  P = 2 sweep of allreduce takes a minute or two.

Reported per (collective, implementation, size): median time, algbw = bytes /
time, busbw = algbw x the NCCL-tests factor (allreduce 2(P-1)/P; allgather,
reduce_scatter and alltoall (P-1)/P; broadcast and reduce 1), and ratio =
baseline time / distml time (above 1: distml is faster). ``bytes`` is the
buffer a user thinks of: the reduced buffer for allreduce and reduce, the
full gathered buffer for allgather, the full input for reduce_scatter, and
each rank's send buffer for alltoall.

Rank 0 prints a table and writes JSON (machine info, memcpy ceiling, every
row) to ``bench/results/<name>.json``. matplotlib is needed only for ``plot``
and ``--png``.

The sweep must be started on all ranks with the same arguments.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

# The collectives, the algorithms each accepts (a fallback: the sweep asks the
# installed core, see accepted_algorithms), and the NCCL-tests bus-bandwidth
# factor as a function of P.
COLLECTIVES: Dict[str, Tuple[Tuple[str, ...], Callable[[int], float]]] = {
    "allreduce": (("auto", "ring", "recursive_doubling", "mpi"), lambda p: 2.0 * (p - 1) / p),
    "reduce": (("auto", "tree", "ring", "mpi"), lambda p: 1.0),
    "broadcast": (("auto", "tree", "scatter_allgather", "mpi"), lambda p: 1.0),
    "allgather": (("auto", "ring", "mpi"), lambda p: (p - 1) / p),
    "reduce_scatter": (("auto", "ring", "mpi"), lambda p: (p - 1) / p),
    "alltoall": (("auto", "pairwise", "mpi"), lambda p: (p - 1) / p),
}

BASELINE = "mpi4py"
KiB, MiB = 1 << 10, 1 << 20
DEFAULT_SIZES = [8 ** k for k in range(1, 10)]  # 8 B .. 128 MiB by powers of 8
DEFAULT_SIZES.append(256 * MiB)                 # and the largest size the protocol asks for
MEMCPY_BYTES = 256 * MiB


# ---- argument parsing ----------------------------------------------------------


def parse_size(text: str) -> int:
    """'8', '64K', '4MiB', '1g' -> bytes."""
    t = text.strip().lower().replace("ib", "").rstrip("b")
    mult = 1
    for suffix, m in (("k", KiB), ("m", MiB), ("g", 1 << 30)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        value = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 8, 64K, 4M, 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def format_size(nbytes: float) -> str:
    for unit, m in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", KiB)):
        if nbytes >= m:
            v = nbytes / m
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{int(nbytes)} B"


def _csv(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distml-bench",
        description="Sweep distml's collectives against mpi4py's on the same MPI "
        "(run under mpiexec on all ranks). 'distml-bench plot FILE.json ... -o OUT.png' draws results.",
    )
    p.add_argument("--collectives", type=_csv, default=list(COLLECTIVES),
                   help="comma-separated subset of: " + ", ".join(COLLECTIVES) + " (default: all)")
    p.add_argument("--algorithms", type=_csv, default=None,
                   help="comma-separated distml algorithms to time where a collective accepts them "
                   "(default: all that the installed core accepts; the mpi4py baseline is always timed)")
    p.add_argument("--sizes", type=lambda s: [parse_size(x) for x in _csv(s)], default=None,
                   help="comma-separated message sizes in bytes, K/M/G suffixes allowed "
                   "(default: 8 B to 256 MiB by powers of 8, plus 256 MiB)")
    p.add_argument("--max-bytes", type=parse_size, default=None, help="drop sizes above this")
    p.add_argument("--dtype", default="float32", help="element type (default float32)")
    p.add_argument("--iters", type=int, default=200,
                   help="timed iterations for small messages; large ones run fewer (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed iterations for small messages (default 20)")
    p.add_argument("--min-iters", type=int, default=8, help="timed iterations for the largest messages (default 8)")
    p.add_argument("--byte-budget", type=parse_size, default=parse_size("4G"),
                   help="bytes per size and implementation that set the iteration count of large "
                   "messages: iters = max(min-iters, min(iters, budget / bytes)) (default 4G)")
    p.add_argument("--rotate", type=int, default=3,
                   help="buffer sets used in rotation, fewer where they exceed --buffer-budget (default 3)")
    p.add_argument("--buffer-budget", type=parse_size, default=parse_size("768M"),
                   help="bytes of buffers per rank the rotation may use (default 768M)")
    p.add_argument("--no-check", action="store_true",
                   help="create the distml communicator with check=False (no cross-rank argument check "
                   "per call); default: distml's default (DISTML_CHECK, on)")
    p.add_argument("--segment-bytes", type=parse_size, default=None, help="distml segment size (tuning)")
    p.add_argument("--no-memcpy", action="store_true", help="skip the memcpy ceiling")
    p.add_argument("--no-extras", action="store_true",
                   help="allreduce: skip the in-place rows (MPI_IN_PLACE, distml on node-shared buffers)")
    p.add_argument("--out", default=None,
                   help="JSON path (default bench/results/<collectives>_P<P>_<date>.json); '-' for none")
    p.add_argument("--png", default=None, help="also plot the results to this PNG (rank 0, needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="print only the summary table")
    return p


# ---- machine information ----------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_sizes() -> Dict[str, str]:
    caches: Dict[str, str] = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            d = os.path.join(base, entry)
            try:
                with open(os.path.join(d, "level")) as f:
                    level = f.read().strip()
                with open(os.path.join(d, "type")) as f:
                    kind = f.read().strip()
                with open(os.path.join(d, "size")) as f:
                    size = f.read().strip()
            except OSError:
                continue
            if kind in ("Data", "Unified"):
                caches[f"L{level}"] = size
    except OSError:
        pass
    return caches


def machine_info(nranks: int) -> Dict[str, Any]:
    import mpi4py
    from mpi4py import MPI

    import distml
    from distml import _core

    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "caches_cpu0": _cache_sizes(),
        "kernel_isa": _core.kernel_current_isa(),
        "kernel_isas": list(_core.kernel_isas()),
        "mpi_library": " ".join(MPI.Get_library_version().strip().splitlines()[0].split()),
        "mpi_standard": "%d.%d" % MPI.Get_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "mpi4py": mpi4py.__version__,
        "distml": distml.__version__,
        "P": nranks,
    }


# ---- timing -------------------------------------------------------------------------


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
    from mpi4py import MPI

    n = len(runs)
    for w in range(warmup):
        for k, run in enumerate(runs):
            run(w * n + k)
    times = np.empty((n, iters), dtype=np.float64)
    perf = time.perf_counter
    barrier = mcomm.Barrier
    # A new order every round, the same on every rank (fixed seed), so that
    # each implementation follows every other one about equally often: the
    # after-effects of a call (caches, a peer still finishing) would
    # otherwise always land on the same successor, as they do when the order
    # only rotates.
    orders = np.random.default_rng(12345).permuted(np.tile(np.arange(n), (iters, 1)), axis=1)
    for i in range(iters):
        for j in range(n):
            k = int(orders[i, j])
            barrier()
            t0 = perf()
            runs[k](i * n + j)
            times[k, i] = perf() - t0
    mcomm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)
    return times


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def memcpy_ceiling(mcomm: Any, nbytes: int = MEMCPY_BYTES, iters: int = 10) -> Dict[str, Any]:
    """Rank 0's ``np.copyto`` bandwidth on ``nbytes`` (median), the others idle.

    The other ranks wait in a polled, sleeping non-blocking barrier rather
    than MPI_Barrier, whose busy polling would take a core from the copy on
    an oversubscribed machine. Bandwidth counts the bytes copied once (the
    memory system moves twice that: a read and a write).
    """
    result: Dict[str, Any] = {}
    if mcomm.Get_rank() == 0:
        src = np.ones(nbytes, dtype=np.uint8)
        dst = np.zeros(nbytes, dtype=np.uint8)
        np.copyto(dst, src)  # fault pages in
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        result = {"bytes": nbytes, "iters": iters, "time_s": med, "bandwidth_GBps": nbytes / med / 1e9,
                  "min_time_s": float(np.min(times))}
        del src, dst
    req = mcomm.Ibarrier()
    while not req.Test():
        time.sleep(0.002)
    return mcomm.bcast(result, root=0)


# ---- one collective: buffers and the calls timed ---------------------------------------


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
        raise ValueError(name)

    def inplace_baseline_call(self, mcomm: Any) -> Callable[[int], Any]:
        """MPI_Allreduce with MPI_IN_PLACE on the output buffers."""
        from mpi4py import MPI

        outs, n = self.outs, self.nsets
        return lambda i: mcomm.Allreduce(MPI.IN_PLACE, outs[i % n], op=MPI.SUM)

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
        raise ValueError(name)


def accepted_algorithms(comm: Any, name: str) -> Tuple[str, ...]:
    """The algorithms the installed core accepts for collective ``name``:
    "auto" first, "mpi" last, distml's own between.

    Read from the core's own refusal of an unknown name (the one place that
    lists them), so algorithms added to the core are swept without editing
    this file; the built-in list is the fallback.
    """
    import re

    from distml import comm as comm_mod

    kinds = {"allreduce": comm_mod._ALLREDUCE, "reduce": comm_mod._REDUCE, "broadcast": comm_mod._BROADCAST,
             "allgather": comm_mod._ALLGATHER, "reduce_scatter": comm_mod._REDUCE_SCATTER,
             "alltoall": comm_mod._ALLTOALL}
    try:
        comm._core.resolve(kinds[name], 8, 1024, "?")
    except ValueError as e:
        listed = str(e).split("'s:", 1)[-1]
        names = re.findall(r"'([a-z_0-9]+)'", listed)
        if "auto" in names and "mpi" in names:
            mine = [a for a in names if a not in ("auto", "mpi")]
            return tuple(["auto"] + mine + ["mpi"])
    except Exception:
        pass
    return COLLECTIVES[name][0]


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


def buffer_sets(name: str, nbytes: int, item: int, size: int, args: argparse.Namespace) -> int:
    # Per set: the input plus the output (allreduce, alltoall: both full size).
    per_set = {"broadcast": 1.0, "reduce_scatter": 1.0 + 1.0 / size, "allgather": 1.0 + 1.0 / size}.get(name, 2.0)
    per_set *= max(nbytes, item)
    return int(max(1, min(args.rotate, args.buffer_budget // per_set)))


# ---- the sweep -------------------------------------------------------------------------


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
    # Progress goes to stderr as rows are measured; the table follows on stdout.
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if rank == 0 and not args.quiet else (lambda *a: None)
    load_before = _loadavg()

    info = machine_info(nranks)
    memcpy = None if args.no_memcpy else memcpy_ceiling(mcomm)
    if memcpy:
        say(f"memcpy ceiling: np.copyto of {format_size(memcpy['bytes'])}: {memcpy['bandwidth_GBps']:.2f} GB/s")

    say(_HEADER)
    if args.algorithms is not None:
        known = {a for c in args.collectives for a in accepted_algorithms(comm, c)}
        bad = [a for a in args.algorithms if a not in known]
        if bad:
            comm.free()
            mcomm.Free()
            raise SystemExit(f"distml-bench: unknown algorithm(s) {', '.join(bad)} for "
                             f"{', '.join(args.collectives)}; expected some of {', '.join(sorted(known))}")
    rows: List[Dict[str, Any]] = []
    skipped: List[Dict[str, Any]] = []
    started = time.perf_counter()
    for name in args.collectives:
        factor_of = COLLECTIVES[name][1]
        algs = tuple(a for a in accepted_algorithms(comm, name) if args.algorithms is None or a in args.algorithms)
        algs, refused = usable_algorithms(comm, mcomm, name, algs, dtype, rank, nranks)
        for alg, why in refused.items():
            say(f"{name}: skipping distml:{alg}: {why}")
            skipped.append({"collective": name, "algorithm": alg, "reason": why})
        factor = factor_of(nranks)
        for nbytes in sizes:
            nsets = buffer_sets(name, nbytes, dtype.itemsize, nranks, args)
            case = Case(name, nbytes, dtype, rank, nranks, nsets)
            iters, warmup = iteration_counts(case.nbytes, args)
            impls: List[Tuple[str, str, Callable[[int], Any]]] = []
            try:
                impls.append((BASELINE, "", case.baseline_call(mcomm)))
            except (KeyError, TypeError, NotImplementedError):  # e.g. no MPI datatype for bfloat16
                pass
            impls += [(f"distml:{a}", a, case.distml_call(comm, a)) for a in algs]
            if name == "allreduce" and not args.no_extras:
                # In place, both sides: MPI with MPI_IN_PLACE, and distml on
                # arrays that live in node-shared memory (comm.empty).
                impls.append(("mpi4py:in-place", "", case.inplace_baseline_call(mcomm)))
                if comm.shared_memory == "one node":
                    impls.append(("distml:shared-buffer", "auto", case.shared_buffer_call(comm)))
            all_times = time_interleaved(mcomm, [run for _, _, run in impls], iters, warmup)
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
            base = next((m for m in measured if m["implementation"] == BASELINE), None)
            for m in measured:
                m["ratio"] = base["time_s"] / m["time_s"] if base else None
                say(_format_row(m))
            rows.extend(measured)
            del case
    elapsed = time.perf_counter() - started
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
                "baseline": "mpi4py buffer collective on COMM_WORLD.Dup()",
                "timing": "implementations interleaved, random order per round; barrier before every call; "
                          "per-call max over ranks; median over iterations",
                "busbw_factors": {n: COLLECTIVES[n][1](nranks) for n in args.collectives},
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


def memory_bound_factor(implementation: str, P: int) -> Optional[float]:
    """Bytes an allreduce must move per rank through memory, in memcpys of
    the message (a memcpy of n bytes reads n and writes n).

    Out of place, a schedule that copies the input into shared memory,
    reduces a 1/P slice from every rank's copy and copies the result out
    moves about 2.5 memcpys' worth. In place on node-shared arrays
    (distml:shared-buffer) a rank reads its 1/P slice of every rank (n),
    writes it (n/P), and copies the other slices in ((P-1)/P n each way):
    (1 + 1/P + 2(P-1)/P) / 2 memcpys. None for MPI's in-place variant,
    whose schedule is MPI's own.
    """
    if P < 2 or implementation == "mpi4py:in-place":
        return None
    if implementation == "distml:shared-buffer":
        return (1 + 1 / P + 2 * (P - 1) / P) / 2
    return 2.5


def add_memory_bound(rows: List[Dict[str, Any]], memcpy_Bps: float, cores: int) -> None:
    """For allreduce rows: the time the memory bound allows at the measured
    memcpy rate (``memory_bound_s``) and the fraction of it reached
    (``of_memory_bound``, above 1 where caches beat main memory). The
    baseline's row also gets ``max_ratio_at_bound``: the ratio to MPI a
    schedule running exactly at the 2.5-memcpy bound would show.

    ``memcpy_Bps`` is one rank's rate; with more ranks than ``cores`` the
    ranks sharing a core copy one after the other, so the bound stretches
    by P / cores."""
    for r in rows:
        factor = memory_bound_factor(r["implementation"], r["P"]) if r["collective"] == "allreduce" else None
        if factor is None:
            continue
        bound = factor * r["bytes"] / memcpy_Bps * max(1.0, r["P"] / max(1, cores))
        r["memory_bound_s"] = bound
        r["of_memory_bound"] = bound / r["time_s"]
        if r["implementation"] == BASELINE:
            r["max_ratio_at_bound"] = r["time_s"] / bound


_HEADER = f"{'collective':<15}{'implementation':<28}{'bytes':>10}{'time(us)':>12}{'algbw GB/s':>12}" \
          f"{'busbw GB/s':>12}{'ratio':>8}"


def _format_row(m: Dict[str, Any]) -> str:
    impl = m["implementation"]
    if m["algorithm"] == "auto" and m.get("resolved"):
        impl += f"({m['resolved']})"
    ratio = "" if m["ratio"] is None else f"{m['ratio']:.2f}"
    return (f"{m['collective']:<15}{impl:<28}{format_size(m['bytes']):>10}{m['time_s'] * 1e6:>12.1f}"
            f"{m['algbw_GBps']:>12.3f}{m['busbw_GBps']:>12.3f}{ratio:>8}")


def print_table(result: Dict[str, Any], file: Any = sys.stdout) -> None:
    mi = result["machine"]
    print(f"\ndistml {mi['distml']} | P={mi['P']} | {mi['cpu_model']} ({mi['cores']} cores) | kernels {mi['kernel_isa']}"
          f" | {mi['mpi_library']} | mpi4py {mi['mpi4py']} | numpy {mi['numpy']}", file=file)
    if result.get("memcpy"):
        mc = result["memcpy"]
        print(f"memcpy ceiling (np.copyto {format_size(mc['bytes'])}, one rank): {mc['bandwidth_GBps']:.2f} GB/s",
              file=file)
    if result.get("loadavg_before"):
        print(f"load average before/after: {result['loadavg_before'][0]} / {result['loadavg_after'][0]} "
              f"(on {mi['cores']} cores; above P, other work shared the machine)", file=file)
    print("ratio = mpi4py time / distml time (above 1: distml faster); busbw as in the NCCL tests\n", file=file)
    print(_HEADER, file=file)
    last = None
    for m in result["rows"]:
        key = (m["collective"], m["bytes"])
        if last is not None and key[0] != last[0]:
            print(file=file)
        last = key
        print(_format_row(m), file=file)
    print(f"\n{len(result['rows'])} rows in {result['elapsed_s']:.0f} s", file=file)


def write_json(result: Dict[str, Any], path: str) -> None:
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


# ---- plotting --------------------------------------------------------------------------


def plot(paths: Sequence[str], out: str, title: Optional[str] = None) -> str:
    """Draws busbw against size from result files: one panel per collective,
    one line per (file, implementation), each file's memcpy ceiling dashed.

    Returns ``out``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = []
    for p in paths:
        with open(p) as f:
            results.append(json.load(f))
    collectives = [c for c in COLLECTIVES if any(r["collective"] == c for res in results for r in res["rows"])]
    if not collectives:
        raise SystemExit("distml-bench plot: no rows in " + ", ".join(paths))
    ncols = min(3, len(collectives))
    nrows = -(-len(collectives) // ncols)
    width, height = (6.0, 4.4) if len(collectives) > 1 else (9.0, 6.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "v", "D", "x", "*"]
    # One colour and marker per implementation across all panels and files.
    impl_index: Dict[str, int] = {}
    for res in results:
        for r in res["rows"]:
            if r["implementation"] != BASELINE:
                impl_index.setdefault(r["implementation"], len(impl_index))
    for ax, coll in zip(axes.flat, collectives):
        for fi, res in enumerate(results):
            label_p = f"P={res['machine']['P']}" if len(results) > 1 else ""
            rows = [r for r in res["rows"] if r["collective"] == coll]
            for impl in dict.fromkeys(r["implementation"] for r in rows):
                pts = sorted((r["bytes"], r["busbw_GBps"]) for r in rows if r["implementation"] == impl)
                k = impl_index.get(impl, len(impl_index))
                color = "black" if impl == BASELINE else f"C{k % 10}"
                ax.plot([x for x, _ in pts], [y for _, y in pts], linestyle=styles[fi % len(styles)],
                        marker=markers[k % len(markers)], markersize=3.5, color=color,
                        linewidth=2.0 if impl == BASELINE else 1.3,
                        label=" ".join(s for s in (label_p, impl) if s))
            mc = res.get("memcpy")
            if mc:
                ax.axhline(mc["bandwidth_GBps"], color="grey", linestyle=styles[fi % len(styles)], linewidth=1,
                           label=" ".join(s for s in (label_p, f"memcpy {mc['bandwidth_GBps']:.1f} GB/s") if s))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(coll)
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel("busbw (GB/s)")
        ax.grid(True, which="major", alpha=0.3)
        lo = min(r["bytes"] for res in results for r in res["rows"] if r["collective"] == coll)
        hi = max(r["bytes"] for res in results for r in res["rows"] if r["collective"] == coll)
        ticks = [8 ** k for k in range(1, 11) if lo / 2 <= 8 ** k <= hi * 2] or [lo]
        ax.set_xticks(ticks)
        ax.set_xticklabels([format_size(t).replace(" ", "") for t in ticks], rotation=45, fontsize=7)
        ax.legend(fontsize=6.5, loc="lower right")
    for ax in list(axes.flat)[len(collectives):]:
        ax.set_visible(False)
    if title is None:
        mi = results[0]["machine"]
        ps = ", ".join(f"P={r['machine']['P']}" for r in results)
        title = (f"distml vs {BASELINE} ({' '.join(mi['mpi_library'].split())}), {results[0]['config']['dtype']}, {ps}; "
                 f"{mi['cpu_model']}, {mi['cores']} cores")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    d = os.path.dirname(out)
    if d:
        os.makedirs(d, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="distml-bench plot", description="Plot busbw vs size from sweep JSON files.")
    p.add_argument("files", nargs="+", help="result JSON files (one line style per file)")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: the first file with .png)")
    p.add_argument("--title", default=None)
    a = p.parse_args(argv)
    out = a.output or os.path.splitext(a.files[0])[0] + ".png"
    print(plot(a.files, out, a.title))
    return 0


# ---- markdown summary ------------------------------------------------------------------


def markdown_table(paths: Sequence[str], collective: str = "allreduce", min_bytes: int = 0,
                   max_bytes: Optional[int] = None, field: str = "ratio") -> str:
    """A markdown table, one row per size, one column per (file, implementation):
    ``field`` is "ratio" (baseline / distml time), "time_us", "busbw" or
    "bound" (allreduce: fraction of the memory-bandwidth bound reached)."""
    results = []
    for p in paths:
        with open(p) as f:
            results.append(json.load(f))
    columns: List[Tuple[str, int, str]] = []
    cells: Dict[Tuple[int, str, int], str] = {}
    sizes = set()
    for fi, res in enumerate(results):
        pl = f"P={res['machine']['P']}"
        for r in res["rows"]:
            if r["collective"] != collective or r["bytes"] < min_bytes or (max_bytes and r["bytes"] > max_bytes):
                continue
            impl = r["implementation"]
            if field == "ratio" and impl == BASELINE:
                continue
            col = (pl, fi, impl)
            if col not in columns:
                columns.append(col)
            sizes.add(r["bytes"])
            if field == "ratio":
                v = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
            elif field == "time_us":
                v = f"{r['time_s'] * 1e6:.1f}"
            elif field == "bound":
                v = f"{r['of_memory_bound']:.2f}" if "of_memory_bound" in r else "-"
            else:
                v = f"{r['busbw_GBps']:.2f}"
            cells[(r["bytes"], impl, fi)] = v
    head = "| size | " + " | ".join(f"{pl} {impl}" for pl, _, impl in columns) + " |"
    sep = "|---:|" + "---:|" * len(columns)
    lines = [head, sep]
    for b in sorted(sizes):
        lines.append(f"| {format_size(b)} | " + " | ".join(cells.get((b, impl, fi), "") for _, fi, impl in columns) + " |")
    return "\n".join(lines)


def table_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="distml-bench table", description="Markdown table from sweep JSON files.")
    p.add_argument("files", nargs="+")
    p.add_argument("--collective", default="allreduce")
    p.add_argument("--field", choices=("ratio", "time_us", "busbw", "bound"), default="ratio",
                   help="ratio to MPI, time, bus bandwidth, or (allreduce) the fraction of the "
                        "memory-bandwidth bound reached")
    p.add_argument("--min-bytes", type=parse_size, default=1)
    p.add_argument("--max-bytes", type=parse_size, default=None)
    a = p.parse_args(argv)
    print(markdown_table(a.files, a.collective, a.min_bytes, a.max_bytes, a.field))
    return 0


# ---- entry point -------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "plot":
        return plot_main(argv[1:])
    if argv and argv[0] == "table":
        return table_main(argv[1:])
    args = build_parser().parse_args(argv)
    result = run_sweep(args)
    if result is None:
        return 0
    print_table(result)
    if args.out != "-":
        path = args.out or os.path.join("bench", "results",
                                        default_name(args.collectives, result["machine"]["P"], args.dtype) + ".json")
        write_json(result, path)
        print(f"wrote {path}")
        if args.png:
            print(f"wrote {plot([path], args.png)}")
    elif args.png:
        tmp = args.png + ".json"
        write_json(result, tmp)
        plot([tmp], args.png)
        os.remove(tmp)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
