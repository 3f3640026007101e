"""Elastic training of a small float64 MLP on the digits, with ranks killed on purpose.

    distmlrun -n 4 --max-restarts 2 tests/fault_scripts/elastic_train.py --out DIR \
        --kill 0:1:25:epoch

--kill LAUNCH:RANK:STEP:WHERE (repeatable) SIGKILLs rank RANK of launch
LAUNCH (0 = the first) at global step STEP:

- ``epoch``: before the step's forward pass (its peers go on into the step's
  gradient allreduce and wait there);
- ``allreduce``: right after the backward pass, with the step's gradient
  buckets in flight (its peers are inside those allreduces);
- ``commit``: inside the commit made after step STEP, once its shard file is
  written and before rank 0 commits the manifest (the commit must not count);
- ``stop``: SIGSTOP instead of SIGKILL before the step: the rank hangs
  rather than dies, and its peers must time out (--timeout);
- ``busy``: as ``epoch``, but first the launcher (distmlrun's supervisor) is
  stopped for 3 s, so that it cannot watch while the process manager ends
  the other ranks: what a loaded machine does to it by chance.

--stop-after-commit S ends training cleanly after the commit at step S (the
first half of a reference run that then resumes at another size). Rank 0
writes the final parameters (one float64 vector) to DIR/params.npy and
prints ``RESULT {json}`` lines: one per launch (its size and the step it
started from) and a final one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

import distml
from distml import elastic, nn, optim


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def stop_the_launcher(seconds: float) -> None:
    """SIGSTOPs the nearest ancestor running distml.run, with a detached
    process that SIGCONTs it after ``seconds``."""
    pid = os.getppid()
    while pid > 1:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"distml.run" in f.read():
                break
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    else:
        raise RuntimeError("no distml.run above this rank")
    subprocess.Popen(["sh", "-c", f"sleep {seconds}; kill -CONT {pid}"], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.kill(pid, signal.SIGSTOP)
    # The stop is taken by each thread when it next runs: until the watching
    # thread has taken it, it may still see this rank's end alone. Wait
    # until every thread shows state T (bounded: the machine may be slow).
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and not _all_stopped(pid):
        time.sleep(0.005)


def _all_stopped(pid: int) -> bool:
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "T":
                    return False
    except OSError:
        return False
    return True


def load_data(path=None):
    if path:
        with np.load(path) as z:
            return z["X"], z["y"], z["X_test"], z["y_test"]
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.data / 16.0).astype(np.float64)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(X))
    return X[order[360:]], y[order[360:]], X[order[:360]], y[order[:360]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=None, help=".npz with X, y, X_test, y_test (default: scikit-learn's digits)")
    ap.add_argument("--directory", default=None, help="commit directory (default: the launcher's)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--commit-every", type=int, default=10)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--sharded", type=int, default=0, choices=[0, 1, 2])
    ap.add_argument("--kill", action="append", default=[])
    ap.add_argument("--stop-after-commit", type=int, default=None)
    ap.add_argument("--min-ranks", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()

    comm = distml.init()
    rank, P = comm.rank, comm.size
    launch = elastic.restart_count()
    kills = {}
    for spec in args.kill:
        g, r, s, where = spec.split(":")
        if int(g) == launch and int(r) == rank:
            kills[int(s)] = where

    X, y, X_test, y_test = load_data(args.data)
    f64 = np.float64
    model = nn.Sequential(nn.Linear(64, args.hidden, rng=1, dtype=f64), nn.ReLU(),
                          nn.Linear(args.hidden, 10, rng=2, dtype=f64))
    if args.sharded:
        opt = distml.ShardedOptimizer(optim.Adam, model.parameters(), comm=comm, stage=args.sharded, lr=3e-3)
        on_grads = None
    else:
        opt = distml.DistributedOptimizer(optim.Adam(model.parameters(), lr=3e-3), comm=comm, bucket_bytes=2048)
        model.bind_grads(opt.grads)
        on_grads = opt.mark_ready
    state = elastic.State(model.parameters(), opt, directory=args.directory, epoch=0, step=0)
    loss_fn = nn.SoftmaxCrossEntropy()
    per_epoch = len(X) // args.batch

    if "commit" in kills.values():
        from distml import checkpoint

        original = checkpoint._write_shard

        def write_then_die(path, arrays):
            result = original(path, arrays)
            if kills.get(state.step) == "commit":
                die()
            return result

        checkpoint._write_shard = write_then_die

    def train(state: elastic.State) -> None:
        if not state.restored_from:
            state.sync()
        print("RESULT " + json.dumps({"launch": launch, "size": P, "rank": rank, "start_step": state.step,
                                      "restored_from": state.restored_from}), flush=True)
        while state.step < args.steps:
            epoch, s = divmod(state.step, per_epoch)
            if kills.get(state.step) == "epoch":
                die()
            if kills.get(state.step) == "busy":
                stop_the_launcher(3.0)
                die()
            if kills.get(state.step) == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)  # hangs: its peers time out
            idx = elastic.batch_indices(len(X), args.batch, epoch, s, rank, P, seed=3)
            logits = model(X[idx])
            loss_fn(logits, y[idx])
            model.backward(loss_fn.backward(), on_grads=on_grads)
            if kills.get(state.step) == "allreduce":
                die()
            opt.step(model.grads())
            state.step += 1
            state.epoch = state.step // per_epoch
            state.progress()
            if state.step % args.commit_every == 0:
                state.commit()
                if state.step == args.stop_after_commit:
                    return

    elastic.run(train, state, min_ranks=args.min_ranks, timeout=args.timeout)
    flat = np.concatenate([p.reshape(-1) for p in model.parameters()])
    acc = float((model(X_test).argmax(1) == y_test).mean())
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        np.save(os.path.join(args.out, "params.npy"), flat)
        print("RESULT " + json.dumps({"final": True, "size": P, "step": state.step, "accuracy": acc,
                                      "commits": state.commits}), flush=True)


if __name__ == "__main__":
    main()
