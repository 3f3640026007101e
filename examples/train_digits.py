"""Data-parallel MLP on scikit-learn's handwritten digits (8x8 images, no download).

    mpiexec -n 4 python examples/train_digits.py
    python examples/train_digits.py              # the 1-rank reference

Each step takes one global batch of --batch-size samples; rank r of P trains
on its strided share of it (distml.data.shard_indices), and the optimizer
averages the gradients across ranks, overlapping each layer's allreduce with
the backward pass of the layers below it. With the same seed and global batch
size, every P computes the same sequence of models up to floating-point
rounding, so the final test accuracy matches the 1-rank run.

Rank 0 draws a progress bar and prints, per epoch, the mean training loss and
accuracy over all ranks, and samples per second over all ranks.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import distml
from distml import nn, optim
from distml.data import shard_indices


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


class Bar:
    """A one-line text progress bar (redrawn in place on a terminal, printed
    once at the end otherwise)."""

    def __init__(self, total: int, label: str, enabled: bool, width: int = 30) -> None:
        self.total, self.label, self.enabled, self.width = total, label, enabled, width
        self.tty = enabled and sys.stdout.isatty()

    def update(self, done: int, note: str = "") -> None:
        if not self.tty:
            return
        filled = self.width * done // max(self.total, 1)
        sys.stdout.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} {note}")
        sys.stdout.flush()

    def close(self, summary: str) -> None:
        if self.enabled:
            prefix = "\r" if self.tty else ""
            sys.stdout.write(f"{prefix}{self.label} [{'#' * self.width}] {self.total}/{self.total} {summary}\n")
            sys.stdout.flush()


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=96, help="global batch (divisible by the number of ranks)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adam")
    ap.add_argument("--lr", type=float, default=None, help="default 0.1 for sgd, 3e-3 for adam(w)")
    ap.add_argument("--sharded", type=int, choices=[0, 1, 2], default=0, help="ZeRO stage (0: DistributedOptimizer)")
    ap.add_argument("--compression", choices=["fp16", "bf16"], default=None)
    ap.add_argument("--bucket-bytes", type=int, default=25 << 20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="directory to save a checkpoint to after every epoch")
    ap.add_argument("--resume", action="store_true", help="load --checkpoint first")
    args = ap.parse_args(argv)

    comm = distml.init()
    rank, P = comm.rank, comm.size
    if args.batch_size % P:
        sys.exit(f"--batch-size {args.batch_size} is not divisible by {P} ranks")
    local_batch = args.batch_size // P
    X_train, y_train, X_test, y_test = load_data(args.seed)

    model = nn.Sequential(nn.Linear(64, args.hidden, rng=args.seed), nn.ReLU(),
                          nn.Linear(args.hidden, args.hidden, rng=args.seed + 1), nn.ReLU(),
                          nn.Linear(args.hidden, 10, rng=args.seed + 2))
    cls = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW}[args.optimizer]
    kw = dict(lr=args.lr or (0.1 if args.optimizer == "sgd" else 3e-3))
    if args.optimizer == "sgd":
        kw["momentum"] = 0.9
    if args.sharded:
        opt = distml.ShardedOptimizer(cls, model.parameters(), comm=comm, stage=args.sharded, **kw)
        if args.sharded == 1:
            model.bind_grads(opt.grads)  # stage 1 keeps a full gradient buffer anyway
        # stage 2 holds only its gradient shard: step() reads the model's own gradients
        opt.broadcast_parameters(root=0)
        on_grads = None
    else:
        opt = distml.DistributedOptimizer(cls(model.parameters(), **kw), comm=comm,
                                          bucket_bytes=args.bucket_bytes, compression=args.compression)
        model.bind_grads(opt.grads)  # backward writes straight into the gradient buffer
        opt.broadcast_parameters(root=0)
        opt.broadcast_optimizer_state(root=0)
        on_grads = opt.mark_ready
    first_epoch = 0
    if args.resume and args.checkpoint:
        manifest = distml.checkpoint.load(args.checkpoint, params=model.parameters(), optimizer=opt)
        first_epoch = int(manifest["extra"]["epoch"]) + 1

    if rank == 0:
        print(f"digits: {len(X_train)} train / {len(X_test)} test samples; {P} rank(s), global batch "
              f"{args.batch_size} ({local_batch} per rank); {args.optimizer} {kw}; "
              f"{'ZeRO stage %d' % args.sharded if args.sharded else 'DistributedOptimizer'}")
    loss_fn = nn.SoftmaxCrossEntropy()
    steps = len(X_train) // args.batch_size
    totals = np.zeros(3, dtype=np.float64)  # loss sum, correct, samples (this rank)
    for epoch in range(first_epoch, args.epochs):
        mine = shard_indices(len(X_train), rank, P, seed=args.seed, epoch=epoch)
        bar = Bar(steps, f"epoch {epoch + 1:>3}/{args.epochs}", enabled=rank == 0)
        totals[:] = 0
        comm.barrier()
        start = time.perf_counter()
        for s in range(steps):
            idx = mine[s * local_batch:(s + 1) * local_batch]
            xb, yb = X_train[idx], y_train[idx]
            logits = model(xb)
            loss = loss_fn(logits, yb)
            model.backward(loss_fn.backward(), on_grads=on_grads)
            opt.step(model.grads())
            totals += (loss * len(idx), float((logits.argmax(1) == yb).sum()), len(idx))
            if s % 2 == 0:
                bar.update(s + 1, f"loss {loss:.4f}")
        comm.allreduce(totals, op="sum", out=totals)
        elapsed = time.perf_counter() - start
        bar.close(f"loss {totals[0] / totals[2]:.4f}  acc {totals[1] / totals[2]:.4f}  "
                  f"{totals[2] / elapsed:,.0f} samples/s")
        if args.checkpoint:
            distml.checkpoint.save(args.checkpoint, params=model.parameters(), optimizer=opt, extra={"epoch": epoch})

    # Every rank holds the same model; rank 0 evaluates.
    accuracy = float((model(X_test).argmax(1) == y_test).mean())
    if rank == 0:
        print(f"test accuracy {accuracy:.4f} ({int(round(accuracy * len(y_test)))}/{len(y_test)})")
    return accuracy


if __name__ == "__main__":
    main()
