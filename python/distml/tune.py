"""Measure which algorithm is fastest at each size, and let ``"auto"`` use it.

``mpiexec -n P python -m distml.tune`` (or ``distml-tune``) times every
algorithm each collective can run on this communicator's topology, at sizes
from 8 B to 64 MiB, and writes the winners to a table (by default
``~/.cache/distml/tune.json``, or ``DISTML_TUNE_FILE``). Communicators read
that table when they are created, if it was measured with the same number
of ranks and the same topology; otherwise the built-in defaults apply.

The table is read on rank 0 and broadcast, so that every rank resolves
``"auto"`` identically even where ranks see different files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import _core

__all__ = ["default_path", "load_table", "apply_table", "measure", "main"]

# The collectives a table can tune (alltoall takes a table too, but its
# schedules are not measured here), and the algorithms each may choose.
_TUNED = ("allreduce", "reduce", "broadcast", "allgather", "reduce_scatter")
_CANDIDATES = {name: [a for a in _core.accepted_algorithms(_core.Kind.__members__[name]) if a != "auto"]
               for name in _TUNED}


def default_path() -> Path:
    env = os.environ.get("DISTML_TUNE_FILE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "distml" / "tune.json"


def _available(comm: Any, algorithm: str) -> bool:
    if algorithm == "shm":
        return comm.shared_memory == "one node"
    if algorithm == "hierarchical":
        return comm.shared_memory == "hierarchical"
    return True


def load_table(comm: Any, path: Optional[Path] = None) -> Optional[dict]:
    """Rank 0 reads the table at ``path``; every rank gets it (or None).

    Must be called on all ranks of ``comm``.
    """
    table = None
    if comm.rank == 0:
        p = Path(path) if path is not None else default_path()
        try:
            data = json.loads(p.read_text())
            if data.get("world_size") == comm.size and data.get("topology") == comm.shared_memory:
                table = data.get("tables")
        except (OSError, ValueError):
            table = None
    return comm.mpi_comm.bcast(table, root=0)


def apply_table(comm: Any, tables: Optional[dict]) -> None:
    """Makes ``"auto"`` on ``comm`` follow ``tables`` (as written by :func:`measure`)."""
    if not tables:
        return
    for name, rows in tables.items():
        if name in _core.Kind.__members__:
            comm._core.set_table(_core.Kind.__members__[name], [(int(b), str(a)) for b, a in rows])


def _time(comm: Any, fn, iters: int) -> float:
    mcomm = comm.mpi_comm
    times = []
    for _ in range(iters):
        mcomm.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    from mpi4py import MPI

    return mcomm.allreduce(float(np.median(times)), op=MPI.MAX)


def measure(comm: Any, max_bytes: int = 64 << 20, collectives: Optional[list] = None, verbose: bool = False) -> dict:
    """Times each available algorithm per collective and size; returns the
    tables (rows of (max bytes, fastest algorithm)). Must be called on all ranks."""
    sizes = []
    b = 8
    while b <= max_bytes:
        sizes.append(b)
        b *= 4
    tables = {}
    for name in collectives or list(_CANDIDATES):
        algos = [a for a in _CANDIDATES[name] if _available(comm, a)]
        rows = []
        for nbytes in sizes:
            n = max(comm.size, nbytes // 4)
            x = np.ones(n, dtype=np.float32)
            out = {
                "allgather": np.empty(n * comm.size, np.float32),
                "reduce_scatter": np.empty(len(np.array_split(np.empty(n), comm.size)[comm.rank]), np.float32),
            }.get(name, np.empty(n, np.float32))
            iters = 50 if nbytes <= 1 << 16 else (10 if nbytes <= 1 << 22 else 4)
            best, best_t = None, float("inf")
            for algo in algos:
                if name == "allreduce":
                    fn = lambda: comm.allreduce(x, out=out, algorithm=algo)  # noqa: E731
                elif name == "reduce":
                    fn = lambda: comm.reduce(x, out=out, algorithm=algo)  # noqa: E731
                elif name == "broadcast":
                    fn = lambda: comm.broadcast(x, algorithm=algo)  # noqa: E731
                elif name == "allgather":
                    fn = lambda: comm.allgather(x, out=out, algorithm=algo)  # noqa: E731
                else:
                    fn = lambda: comm.reduce_scatter(x, out=out, algorithm=algo)  # noqa: E731
                fn()
                t = _time(comm, fn, iters)
                if t < best_t:
                    best, best_t = algo, t
            if verbose and comm.rank == 0:
                print(f"  {name:>15} {nbytes:>10} B: {best} ({best_t * 1e6:.1f} us)", flush=True)
            if rows and rows[-1][1] == best:
                rows[-1][0] = nbytes
            else:
                rows.append([nbytes, best])
        if rows:
            rows[-1][0] = 2**63 - 1  # the largest size's winner covers everything above
        tables[name] = rows
    return tables


def main(argv: Optional[list] = None) -> int:
    import distml

    parser = argparse.ArgumentParser(description="Measure the fastest algorithm per size for 'auto'.")
    parser.add_argument("--out", type=Path, default=None, help=f"table file (default {default_path()})")
    parser.add_argument("--max-bytes", type=int, default=64 << 20)
    parser.add_argument("--collectives", nargs="*", default=None, choices=list(_CANDIDATES))
    args = parser.parse_args(argv)
    comm = distml.Communicator()
    if comm.rank == 0:
        print(f"tuning on {comm.size} ranks, shared memory: {comm.shared_memory}", flush=True)
    tables = measure(comm, args.max_bytes, args.collectives, verbose=True)
    if comm.rank == 0:
        path = args.out or default_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "world_size": comm.size,
            "topology": comm.shared_memory,
            "host": platform.node(),
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "distml": distml.__version__,
            "tables": tables,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
        print(f"wrote {path}")
    comm.free()
    return 0


if __name__ == "__main__":
    sys.exit(main())
