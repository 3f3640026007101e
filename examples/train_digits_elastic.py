"""Elastic data-parallel MLP on scikit-learn's digits: training that survives a lost rank.

    distmlrun -n 4 --max-restarts 2 examples/train_digits_elastic.py --kill-rank 1 --kill-at-step 20
    distmlrun -n 4 --max-restarts 2 examples/train_digits_elastic.py      # the uninterrupted run

The model, data and optimizer are those of examples/train_digits.py. The
training state (parameters, Adam's moments, epoch and step) is committed
every --commit-every steps. With --kill-rank R --kill-at-step S, rank R
kills itself (SIGKILL, as a lost machine would vanish) at step S of the
first launch; distmlrun cleans up the job, relaunches it on the ranks that
are left, and training resumes from the last commit, resharded for the new
number of ranks. Every step trains on the same global batch whatever the
number of ranks (distml.elastic.batch_indices), so the final model is the
one the uninterrupted run reaches, up to floating-point rounding.

The log (stderr) says what happened: which rank was lost, how the job was
relaunched, which commit it resumed from and how many steps are redone.
Under plain mpiexec (no relaunching), pass --checkpoint DIR for the commits.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import numpy as np

import distml
from distml import elastic, nn, optim


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
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=96,
                    help="global batch (divisible by every number of ranks the job may run at)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--sharded", type=int, choices=[0, 1, 2], default=0, help="ZeRO stage (0: DistributedOptimizer)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commit-every", type=int, default=8, help="steps between commits")
    ap.add_argument("--min-ranks", type=int, default=1)
    ap.add_argument("--checkpoint", default=None, help="commit directory (default: distmlrun's, in memory)")
    ap.add_argument("--kill-rank", type=int, default=None, help="rank to kill in the first launch")
    ap.add_argument("--kill-at-step", type=int, default=20)
    args = ap.parse_args(argv)

    if elastic.run_dir() is None and args.checkpoint is None:
        sys.exit("run under distmlrun --max-restarts N (which relaunches after a lost rank), "
                 "or pass --checkpoint DIR")

    comm = distml.init()
    rank, P = comm.rank, comm.size
    X_train, y_train, X_test, y_test = load_data(args.seed)
    model = nn.Sequential(nn.Linear(64, args.hidden, rng=args.seed), nn.ReLU(),
                          nn.Linear(args.hidden, args.hidden, rng=args.seed + 1), nn.ReLU(),
                          nn.Linear(args.hidden, 10, rng=args.seed + 2))
    if args.sharded:
        opt = distml.ShardedOptimizer(optim.Adam, model.parameters(), comm=comm, stage=args.sharded, lr=args.lr)
        on_grads = None
    else:
        opt = distml.DistributedOptimizer(optim.Adam(model.parameters(), lr=args.lr), comm=comm)
        model.bind_grads(opt.grads)
        on_grads = opt.mark_ready
    state = elastic.State(model.parameters(), opt, directory=args.checkpoint, epoch=0, step=0, samples=0)
    loss_fn = nn.SoftmaxCrossEntropy()
    per_epoch = len(X_train) // args.batch_size
    total = per_epoch * args.epochs
    victim = args.kill_rank is not None and rank == args.kill_rank and elastic.restart_count() == 0

    def train(state: elastic.State) -> None:
        if state.restored_from is None:
            state.sync()  # a fresh start: every rank begins with rank 0's model
        start_step, started = state.step, time.perf_counter()
        totals = np.zeros(3)  # loss sum, correct, samples, over this epoch's steps on this rank
        while state.step < total:
            epoch, s = divmod(state.step, per_epoch)
            if victim and state.step == args.kill_at_step:
                print(f"rank {rank}: killing myself (SIGKILL) at step {state.step}", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            idx = elastic.batch_indices(len(X_train), args.batch_size, epoch, s, rank, P, seed=args.seed)
            logits = model(X_train[idx])
            loss = loss_fn(logits, y_train[idx])
            model.backward(loss_fn.backward(), on_grads=on_grads)
            opt.step(model.grads())
            totals += (loss * len(idx), float((logits.argmax(1) == y_train[idx]).sum()), len(idx))
            state.step += 1
            state.samples += args.batch_size
            state.epoch = state.step // per_epoch
            state.progress()
            if state.step % args.commit_every == 0 or state.step == total:
                state.commit()
            if state.step % per_epoch == 0:
                comm.allreduce(totals, op="sum", out=totals)
                if rank == 0:
                    print(f"epoch {epoch + 1:>3}/{args.epochs}  {P} rank(s)  loss {totals[0] / totals[2]:.4f}  "
                          f"acc {totals[1] / totals[2]:.4f}", flush=True)
                totals[:] = 0
        if rank == 0:
            took = time.perf_counter() - started
            print(f"this launch: {P} rank(s), steps {start_step}..{state.step} in {took:.1f} s", flush=True)

    elastic.run(train, state, min_ranks=args.min_ranks)
    accuracy = float((model(X_test).argmax(1) == y_test).mean())
    if rank == 0:
        print(f"test accuracy {accuracy:.4f} ({int(round(accuracy * len(y_test)))}/{len(y_test)}) "
              f"after {state.step} steps; {P} rank(s) at the end, launch {elastic.restart_count()}", flush=True)
    return accuracy


if __name__ == "__main__":
    main()
