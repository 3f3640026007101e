"""Two compact tables from the closing runs: distml `auto`'s ratio to MPI's
own collective for every collective, size and P (medians over runs); and
distml's in-place allreduce against each peer, in place on the same
buffers (peer's time / distml's, medians over runs).

    python bench/results/closing/summary.py bench/results/closing/*_run*.json
"""
import statistics
import sys

from distml.bench.common import format_size
from targets import PEERS, rows_by_cell  # this directory's

COLLECTIVES = ("allreduce", "broadcast", "reduce", "allgather", "reduce_scatter", "alltoall")  # barrier: a line below


def main(paths):
    mpi, peers = {}, {}
    for p in paths:
        for (P, coll, b), impls in rows_by_cell(p).items():
            found = [name for name in PEERS if name in impls]
            for name in found:
                peers.setdefault((P, name, b), []).append(
                    impls[name]["time_s"] / impls["distml:in-place"]["time_s"])
            if not found and "distml:auto" in impls:
                mpi.setdefault((P, coll, b), []).append(impls["distml:auto"]["ratio"])
    med = statistics.median
    Ps = sorted({k[0] for k in mpi})
    cols = [(c, P) for c in COLLECTIVES for P in Ps if any(k[:2] == (P, c) for k in mpi)]
    print("| size | " + " | ".join(f"{c} P={P}" for c, P in cols) + " |")
    print("|---:|" + "---:|" * len(cols))
    for b in sorted({k[2] for k in mpi if k[1] != "barrier"}):
        cells = [f"{med(mpi[(P, c, b)]):.2f}" if (P, c, b) in mpi else "" for c, P in cols]
        print(f"| {format_size(b)} | " + " | ".join(cells) + " |")
    barrier = [(P, mpi[(P, c, b)]) for (P, c, b) in mpi if c == "barrier"]
    if barrier:
        print("\nbarrier: " + ", ".join(f"P={P} {med(v):.2f}" for P, v in sorted(barrier)))
    if not peers:
        return
    pcols = [(name, P) for name in PEERS for P in Ps if any(k[:2] == (P, name) for k in peers)]
    print("\n| size | " + " | ".join(f"vs {n} P={P}" for n, P in pcols) + " |")
    print("|---:|" + "---:|" * len(pcols))
    for b in sorted({k[2] for k in peers}):
        cells = [f"{med(peers[(P, n, b)]):.2f}" if (P, n, b) in peers else "" for n, P in pcols]
        print(f"| {format_size(b)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
