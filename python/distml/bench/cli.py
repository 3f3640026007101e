"""The distml-bench command: sweep (default), plot and table."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


from .common import COLLECTIVES, _csv, parse_size
from .plot import plot
from .report import markdown_table, peers_table, print_table, write_json
from .sweep import default_name, run_sweep


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
    p.add_argument("--no-phase", action="store_true",
                   help="do not read the machine's phase between rounds (distml.bench.machine.phase_reading); "
                   "by default every row gets its rounds' share in the slow phase and its ratio in each phase")
    p.add_argument("--no-extras", action="store_true",
                   help="allreduce: skip the extra rows (MPI_IN_PLACE; distml in place, on node-shared buffers, and returning a new array)")
    p.add_argument("--peers", type=_csv, default=None,
                   help="allreduce: also time other libraries' allreduce in place on the same buffers, "
                   "comma-separated: deepspeed (DeepSpeed's CPU shm allreduce), gloo (torch.distributed); "
                   "needs pip install '.[peers]' (see distml.bench.peers)")
    p.add_argument("--out", default=None,
                   help="JSON path (default bench/results/<collectives>_P<P>_<date>.json); '-' for none")
    p.add_argument("--png", default=None, help="also plot the results to this PNG (rank 0, needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="print only the summary table")
    return p


def plot_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="distml-bench plot", description="Plot busbw vs size from sweep JSON files.")
    p.add_argument("files", nargs="+", help="result JSON files (one line style per file)")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: the first file with .png)")
    p.add_argument("--title", default=None)
    a = p.parse_args(argv)
    out = a.output or os.path.splitext(a.files[0])[0] + ".png"
    print(plot(a.files, out, a.title))
    return 0


def table_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="distml-bench table", description="Markdown table from sweep JSON files.")
    p.add_argument("files", nargs="+")
    p.add_argument("--collective", default="allreduce")
    p.add_argument("--field", choices=("ratio", "time_us", "busbw", "bound", "phase", "peers"), default="ratio",
                   help="ratio to MPI, time, bus bandwidth, (allreduce) the fraction of the "
                        "memory-bandwidth bound reached, the ratio to MPI in the machine's fast and slow "
                        "phase with the share of slow rounds, or (allreduce runs with --peers) times and "
                        "ratios against MPI and the peers, medians over the files of each P")
    p.add_argument("--min-bytes", type=parse_size, default=1)
    p.add_argument("--max-bytes", type=parse_size, default=None)
    a = p.parse_args(argv)
    if a.field == "peers":
        print(peers_table(a.files))
        return 0
    print(markdown_table(a.files, a.collective, a.min_bytes, a.max_bytes, a.field))
    return 0


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
