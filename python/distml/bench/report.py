"""Results: the memory-bandwidth bound beside each row, the printed table,
the JSON file, and markdown summaries of result files."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .common import BASELINE, format_size


def memory_bound_factor(implementation: str, P: int, collective: str = "allreduce") -> Optional[float]:
    """Bytes a collective must move per rank through memory, in memcpys of
    the row's ``bytes`` (a memcpy of n bytes reads n and writes n); None
    where no bound is given.

    allreduce: out of place, a schedule that copies the input into shared
    memory, reduces a 1/P slice from every rank's copy and copies the result
    out moves about 2.5 memcpys' worth. In place on node-shared arrays
    (distml:shared-buffer) a rank reads its 1/P slice of every rank (n),
    writes it (n/P), and copies the other slices in ((P-1)/P n each way):
    (1 + 1/P + 2(P-1)/P) / 2 memcpys. None for MPI's in-place variant,
    whose schedule is MPI's own.

    The others, at least one copy of every block that changes rank (a
    single-copy schedule; staging through shared memory takes two):
    allgather (bytes: the gathered buffer) and alltoall (bytes: each rank's
    input) write all of a rank's output and read as much, 1 memcpy;
    reduce_scatter and reduce (bytes: each rank's input) read every rank's
    input once between them and write one result, (1 + 1/P) / 2; broadcast
    writes every other rank's copy, (P - 1) / P, shared among the P ranks.
    """
    if P < 2 or implementation == "mpi4py:in-place":
        return None
    if collective == "allreduce":
        if implementation == "distml:shared-buffer":
            return (1 + 1 / P + 2 * (P - 1) / P) / 2
        return 2.5
    if collective in ("allgather", "alltoall"):
        return 1.0
    if collective in ("reduce_scatter", "reduce"):
        return (1 + 1 / P) / 2
    if collective == "broadcast":
        return (P - 1) / P
    return None


def add_memory_bound(rows: List[Dict[str, Any]], memcpy_Bps: float, cores: int) -> None:
    """For rows with a bound (memory_bound_factor): the time the memory
    bound allows at the measured memcpy rate (``memory_bound_s``) and the
    fraction of it reached (``of_memory_bound``, above 1 where caches beat
    main memory). The baseline's row also gets ``max_ratio_at_bound``: the
    ratio to MPI a schedule running exactly at the bound would show.

    ``memcpy_Bps`` is one rank's rate; with more ranks than ``cores`` the
    ranks sharing a core copy one after the other, so the bound stretches
    by P / cores. Rows that carry ``size_memcpy_s`` (a memcpy of the row's
    bytes on every rank at once, timed with them: sweep.SizeMemcpy) take
    that instead; with more ranks than cores, the CPU time of that copy
    (``size_memcpy_cpu_s``) times P / cores where that is longer, since a
    copy shorter than the scheduler's slice runs whole while its rank has
    the core and its wall time leaves out the waiting for one.

    alltoall's rows that also carry the kernel's copy of their bytes
    (``size_kernel_copy_s``, process_vm_writev) get a second, tighter bound
    for arrays in each rank's private memory (``private_bound_s``,
    ``of_private_bound``, and the baseline's
    ``max_ratio_at_private_bound``): a rank's own block is one copy, each
    block from a peer leaves that peer's memory either by the kernel's copy
    or by two memcpys through shared memory, whichever is faster at this
    size: min(kernel, memcpy) / P + (P - 1) / P * min(kernel, 2 * memcpy)
    of the row's bytes. No schedule on private arrays moves a block between
    processes with less. allgather has none: its sender reads one block
    and writes it to every peer, so a memcpy of the output (a read and a
    write of every byte) overstates what it must move, and its single copy
    reached 1.2x the time such a bound gives at P = 4. For allgather and
    allreduce the copies alone, timed beside MPI in the same rounds
    (bench/results/floors/), say what a schedule on private arrays can
    show against MPI at a size."""
    def copy_time(r: Dict[str, Any], wall: str, cpu: str) -> Optional[float]:
        if not r.get(wall):
            return None
        t = r[wall]
        if r["P"] > cores and r.get(cpu):
            t = max(t, r[cpu] * r["P"] / max(1, cores))
        return t

    for r in rows:
        factor = memory_bound_factor(r["implementation"], r["P"], r["collective"])
        if factor is None:
            continue
        memcpy = copy_time(r, "size_memcpy_s", "size_memcpy_cpu_s")
        if memcpy is not None:
            bound = factor * memcpy
        else:
            bound = factor * r["bytes"] / memcpy_Bps * max(1.0, r["P"] / max(1, cores))
        r["memory_bound_s"] = bound
        r["of_memory_bound"] = bound / r["time_s"]
        if r["implementation"] == BASELINE:
            r["max_ratio_at_bound"] = r["time_s"] / bound
        kernel = copy_time(r, "size_kernel_copy_s", "size_kernel_copy_cpu_s")
        if memcpy is not None and kernel is not None and r["collective"] == "alltoall":
            P = r["P"]
            private = min(kernel, memcpy) / P + (P - 1) / P * min(kernel, 2 * memcpy)
            r["private_bound_s"] = private
            r["of_private_bound"] = private / r["time_s"]
            if r["implementation"] == BASELINE:
                r["max_ratio_at_private_bound"] = r["time_s"] / private


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


def _phase_cell(r: Dict[str, Any]) -> str:
    if "slow_share" not in r:
        return "-"
    fast, slow = r.get("ratio_fast"), r.get("ratio_slow")
    show = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    return f"{show(fast)} / {show(slow)} ({r['slow_share']:.0%})"


def markdown_table(paths: Sequence[str], collective: str = "allreduce", min_bytes: int = 0,
                   max_bytes: Optional[int] = None, field: str = "ratio") -> str:
    """A markdown table, one row per size, one column per (file, implementation):
    ``field`` is "ratio" (baseline / distml time), "time_us", "busbw",
    "bound" (fraction of the memory-bandwidth bound reached, where
    memory_bound_factor gives one) or "phase" (the ratio in the machine's
    fast and slow phase, and the share of the row's rounds in the slow one:
    "1.52 / 0.91 (30%)", "-" for a phase without rounds; sweep.phase_fields)."""
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
            if field in ("ratio", "phase") and impl == BASELINE:
                continue
            col = (pl, fi, impl)
            if col not in columns:
                columns.append(col)
            sizes.add(r["bytes"])
            if field == "ratio":
                v = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
            elif field == "time_us":
                v = f"{r['time_s'] * 1e6:.1f}"
            elif field == "phase":
                v = _phase_cell(r)
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


# The rows a peer table shows, in its column order: the in-place call every
# peer makes, MPI's two calls, and the peers (distml.bench.peers.LABELS).
_PEER_REFERENCE = "distml:in-place"
_PEER_COLUMNS = (("mpi4py", "MPI_Allreduce"), ("mpi4py:in-place", "MPI in place"),
                 ("deepspeed:shm", "DeepSpeed shm"), ("torch:gloo", "gloo"), ("oneccl", "oneCCL"))


def peers_table(paths: Sequence[str]) -> str:
    """Markdown tables of allreduce against MPI and the peers, one per P,
    from sweep files of runs with ``--peers``.

    Per size: the median over runs of each implementation's time, and the
    median over runs of the ratio (that implementation's time / distml's
    in-place time) taken inside each run, above 1 where distml is faster.
    A column appears only where some run has the row. Where the rows carry
    the memory bound (add_memory_bound), rows from 1 MiB also give the
    bound's time and, for distml and each peer, the fraction of it reached
    (medians over runs)."""
    by_p: Dict[int, List[Dict[str, Any]]] = {}
    for p in paths:
        with open(p) as f:
            res = json.load(f)
        by_p.setdefault(res["machine"]["P"], []).append(res)
    out: List[str] = []
    for P in sorted(by_p):
        runs = by_p[P]
        times: Dict[Tuple[int, str], List[float]] = {}
        ratios: Dict[Tuple[int, str], List[float]] = {}
        bounds: Dict[Tuple[int, str], List[float]] = {}
        reached: Dict[Tuple[int, str], List[float]] = {}
        for res in runs:
            rows = [r for r in res["rows"] if r["collective"] == "allreduce"]
            run = {(r["bytes"], r["implementation"]): r["time_s"] for r in rows}
            for r in rows:
                if "of_memory_bound" in r:
                    key = (r["bytes"], r["implementation"])
                    bounds.setdefault(key, []).append(r["memory_bound_s"])
                    reached.setdefault(key, []).append(r["of_memory_bound"])
            for (b, impl), t in run.items():
                times.setdefault((b, impl), []).append(t)
                ref = run.get((b, _PEER_REFERENCE))
                if ref:
                    ratios.setdefault((b, impl), []).append(t / ref)
        present = {impl for _, impl in times}
        cols = [(impl, label) for impl, label in _PEER_COLUMNS if impl in present]
        bound_cols = [(impl, label) for impl, label in [(_PEER_REFERENCE, "distml"), *cols]
                      if any(k[1] == impl for k in reached)]
        sizes = sorted({b for b, impl in times if impl == _PEER_REFERENCE})
        med = lambda v: float(np.median(v)) if v else None  # noqa: E731
        head = ("| size | distml in place us | " + " | ".join(f"{label} us" for _, label in cols) + " | "
                + " | ".join(f"vs {label}" for _, label in cols) + " |")
        rule = "|---:|---:|" + "---:|" * (2 * len(cols))
        if bound_cols:
            head += " memory bound us | " + " | ".join(f"{label} of bound" for _, label in bound_cols) + " |"
            rule += "---:|" * (1 + len(bound_cols))
        lines = [f"P={P}: {len(runs)} run(s)", "", head, rule]
        for b in sizes:
            cells = [f"{med(times[(b, _PEER_REFERENCE)]) * 1e6:.1f}"]
            for impl, _ in cols:
                t = med(times.get((b, impl), []))
                cells.append("" if t is None else f"{t * 1e6:.1f}")
            for impl, _ in cols:
                r = med(ratios.get((b, impl), []))
                cells.append("" if r is None else f"{r:.2f}")
            if bound_cols:
                large = b >= 1 << 20
                t = med(bounds.get((b, _PEER_REFERENCE), [])) if large else None
                cells.append("" if t is None else f"{t * 1e6:.1f}")
                for impl, _ in bound_cols:
                    f = med(reached.get((b, impl), [])) if large else None
                    cells.append("" if f is None else f"{f:.2f}")
            lines.append(f"| {format_size(b)} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)
