"""A short tour of distml's collectives: ``mpiexec -n 2 python -m distml.demo``.

Runs every collective once on small arrays and shows what each rank got,
checked against numpy, then times allreduce against MPI's own
``MPI_Allreduce`` (through mpi4py) at a few sizes.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from mpi4py import MPI

import distml


def _show(comm: distml.Communicator, label: str, value: object) -> None:
    """Prints one line per rank, in rank order."""
    lines = comm.mpi_comm.gather(f"  rank {comm.rank}: {value}", root=0)
    if comm.rank == 0:
        print(label)
        print("\n".join(lines))


def _median_time(fn, iters: int, comm: MPI.Comm) -> float:
    times = []
    for _ in range(iters):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    # The slowest rank decides how long a collective took.
    return comm.allreduce(float(np.median(times)), op=MPI.MAX)


def tour(comm: distml.Communicator) -> bool:
    r, p = comm.rank, comm.size
    ok = True

    x = np.arange(4, dtype=np.float32) + 10 * r
    y = comm.allreduce(x)
    ok &= np.array_equal(y, sum(np.arange(4, dtype=np.float32) + 10 * i for i in range(p)))
    _show(comm, f"allreduce(sum) of arange(4) + 10*rank over {p} ranks:", y)

    y = comm.allreduce(x, op="max")
    ok &= np.array_equal(y, np.arange(4, dtype=np.float32) + 10 * (p - 1))
    _show(comm, "allreduce(max):", y)

    b = np.full(3, r, dtype=np.int64)
    comm.broadcast(b, root=p - 1)
    ok &= np.array_equal(b, np.full(3, p - 1))
    _show(comm, f"broadcast from rank {p - 1}:", b)

    g = comm.allgather(np.array([r, r * r], dtype=np.int32))
    ok &= np.array_equal(g, np.array([[i, i * i] for i in range(p)], dtype=np.int32).ravel())
    _show(comm, "allgather of [rank, rank**2]:", g)

    s = comm.reduce_scatter(np.ones(2 * p + 1, dtype=np.float64))
    ok &= np.array_equal(s, np.full(len(np.array_split(np.zeros(2 * p + 1), p)[r]), float(p)))
    _show(comm, f"reduce_scatter of ones({2 * p + 1}):", s)

    a = comm.alltoall(np.arange(p, dtype=np.int16) + 100 * r)
    ok &= np.array_equal(a, np.array([100 * i + r for i in range(p)], dtype=np.int16))
    _show(comm, "alltoall of arange(P) + 100*rank:", a)

    red = comm.reduce(np.array([r + 1.0], dtype=distml.bfloat16), root=0, op="prod")
    if r == 0:
        ok &= float(red[0]) == float(np.prod(np.arange(1, p + 1)))
    _show(comm, "reduce(prod) of [rank+1] in bfloat16 to rank 0:", red)

    h = comm.allreduce(np.full(2, r, dtype=np.int32), op="sum", async_op=True)
    _show(comm, "async allreduce handle, waited:", h.wait())
    return bool(comm.mpi_comm.allreduce(ok, op=MPI.LAND))


def speed(comm: distml.Communicator, sizes: list) -> None:
    mcomm = comm.mpi_comm.Dup()
    p = comm.size
    if comm.rank == 0:
        print(f"\nallreduce, float32 sum, {p} ranks: median time of distml ('auto') vs MPI_Allreduce")
        print(f"  {'bytes':>10} {'distml':>11} {'MPI':>11} {'MPI/distml':>10} {'busbw GB/s':>11}")
    for nbytes in sizes:
        n = max(1, nbytes // 4)
        x = np.ones(n, dtype=np.float32)
        out = np.empty_like(x)
        iters = 200 if nbytes <= 1 << 16 else (20 if nbytes <= 1 << 22 else 5)
        comm.allreduce(x, out=out)
        mcomm.Allreduce(x, out, op=MPI.SUM)
        t_d = _median_time(lambda: comm.allreduce(x, out=out), iters, mcomm)
        t_m = _median_time(lambda: mcomm.Allreduce(x, out, op=MPI.SUM), iters, mcomm)
        busbw = 2 * (p - 1) / p * n * 4 / t_d / 1e9 if p > 1 else float("nan")
        if comm.rank == 0:
            print(f"  {n * 4:>10} {t_d * 1e6:>9.1f}us {t_m * 1e6:>9.1f}us {t_m / t_d:>10.2f} {busbw:>11.2f}")
    mcomm.Free()


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[8, 1 << 10, 1 << 16, 1 << 20, 1 << 24],
                        help="allreduce sizes to time, in bytes")
    args = parser.parse_args(argv)
    comm = distml.init()
    if comm.rank == 0:
        print(f"distml {distml.__version__} on {comm.size} ranks; MPI: "
              f"{MPI.Get_library_version().splitlines()[0].strip()}; kernels: {distml._core.kernel_current_isa()}")
    ok = tour(comm)
    speed(comm, args.sizes)
    if comm.rank == 0:
        print("\nevery result matched numpy" if ok else "\nSOME RESULTS DID NOT MATCH NUMPY")
    distml.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
