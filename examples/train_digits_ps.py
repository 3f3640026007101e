"""The digits MLP trained through a parameter server, synchronously, with
bounded staleness or asynchronously, optionally with one slow worker.

    mpiexec -n 4 python examples/train_digits_ps.py --mode async --slow-rank 1 --slow-factor 3
    mpiexec -n 4 python examples/train_digits_ps.py --mode bounded --staleness 2
    mpiexec -n 3 python examples/train_digits_ps.py --mode sync --servers 1   # ranks 0-1 work, rank 2 serves

Every worker takes local batches of --batch-size samples from its own shard
of the training set (distml.data.shard_indices, reshuffled every pass) and
calls ps.step(grads): push the gradients, pull the parameters. The workers
stop together once the servers have applied --epochs passes over the
training set in total, counted from the updates they report: fast workers
contribute more batches than slow ones in async mode, every worker the same
number in sync mode. The slow worker sleeps (factor - 1) times its own
compute time each step.

Rank 0 prints the test accuracy (every rank holds the same final parameters
after close()) and the samples per second of all workers together.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import distml
from distml import nn, optim
from distml.data import shard_indices
from distml.ps import ParameterServer


def load_data(seed: int):
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("this example needs scikit-learn: pip install 'distml[train]'")
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = len(X) // 5
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["sync", "bounded", "async"], default="async")
    ap.add_argument("--staleness", type=int, default=2, help="the bound of --mode bounded")
    ap.add_argument("--servers", type=int, default=None, help="dedicated server ranks (default: every rank serves)")
    ap.add_argument("--epochs", type=float, default=15, help="passes over the training set, all workers together")
    ap.add_argument("--batch-size", type=int, default=32, help="per worker")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adam")
    ap.add_argument("--lr", type=float, default=None, help="default 0.05 for sgd, 2e-3 for adam(w)")
    ap.add_argument("--compression", choices=["fp16", "bf16"], default=None)
    ap.add_argument("--slow-rank", type=int, default=None)
    ap.add_argument("--slow-factor", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    comm = distml.init(timeout=120)
    rank, P = comm.rank, comm.size
    X_train, y_train, X_test, y_test = load_data(args.seed)
    model = nn.Sequential(nn.Linear(64, args.hidden, rng=args.seed), nn.ReLU(),
                          nn.Linear(args.hidden, args.hidden, rng=args.seed + 1), nn.ReLU(),
                          nn.Linear(args.hidden, 10, rng=args.seed + 2))
    cls = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW}[args.optimizer]
    kw = dict(lr=args.lr or (0.05 if args.optimizer == "sgd" else 2e-3))
    if args.optimizer == "sgd":
        kw["momentum"] = 0.9
    n_workers = P if args.servers is None else P - args.servers
    if rank == 0:
        slow = f"; rank {args.slow_rank} slowed {args.slow_factor:g}x" if args.slow_rank is not None else ""
        print(f"digits: {len(X_train)} train / {len(X_test)} test; {P} ranks, {n_workers} workers, "
              f"{'every rank serves' if args.servers is None else f'{args.servers} dedicated servers'}; "
              f"mode {args.mode}{f' (s={args.staleness})' if args.mode == 'bounded' else ''}; "
              f"{args.optimizer} {kw}{slow}", flush=True)

    comm.barrier()
    start = time.perf_counter()
    ps = ParameterServer(model.parameters(), cls, comm=comm, mode=args.mode, servers=args.servers,
                         staleness=args.staleness if args.mode == "bounded" else None,
                         compression=args.compression, **kw)
    budget = args.epochs * len(X_train)  # samples, all workers together
    # What one update stands for: one worker's batch (async) or every worker's (sync, bounded).
    per_update = args.batch_size * (1 if args.mode == "async" else n_workers)
    loss_fn = nn.SoftmaxCrossEntropy()
    mine_done = 0
    if ps.is_worker:
        worker = rank  # workers are the first ranks
        epoch, order, at = 0, shard_indices(len(X_train), worker, n_workers, seed=args.seed, epoch=0), 0
        while ps.stats()["updates_applied"] * per_update < budget:
            if at + args.batch_size > len(order):
                epoch += 1
                order, at = shard_indices(len(X_train), worker, n_workers, seed=args.seed, epoch=epoch), 0
            idx = order[at:at + args.batch_size]
            at += args.batch_size
            t0 = time.perf_counter()
            loss_fn(model(X_train[idx]), y_train[idx])
            model.backward(loss_fn.backward())
            if rank == args.slow_rank and args.slow_factor > 1:
                time.sleep((args.slow_factor - 1) * (time.perf_counter() - t0))
            ps.step(model.grads())
            mine_done += len(idx)
        stats = ps.stats()
        ps.close()
    else:
        stats = ps.stats()  # a dedicated server: the constructor served until the workers closed
    elapsed = time.perf_counter() - start
    done = comm.allgather(np.array([mine_done, elapsed, stats.get("max_staleness", 0)], dtype=np.float64))
    done = done.reshape(P, 3)
    accuracy = float((model(X_test).argmax(1) == y_test).mean())
    if rank == 0:
        per_worker = ", ".join(f"r{r}: {int(done[r, 0])}" for r in range(n_workers))
        print(f"samples per worker: {per_worker}; max staleness {int(done[:, 2].max())}")
        print(f"test accuracy {accuracy:.4f}  {done[:, 0].sum() / done[:, 1].max():,.0f} samples/s "
              f"({done[:, 1].max():.2f} s)")
    return accuracy


if __name__ == "__main__":
    main()
