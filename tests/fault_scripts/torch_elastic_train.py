"""Horovod-style elastic torch training (``hvd.elastic``) with a rank killed on purpose.

    distmlrun -n 3 --max-restarts 1 tests/fault_scripts/torch_elastic_train.py --out DIR --kill 0:1:6

--kill LAUNCH:RANK:STEP SIGKILLs rank RANK of launch LAUNCH before global
step STEP. Every rank appends JSON lines to DIR/launch-L-rank-R.jsonl: one
per step (epoch, step, the sample indices it trained on), one per commit
(rank 0: a digest of the model and optimizer state) and one after a
relaunch restored a commit (from the reset callback: the same digest of what
was loaded, the ranks now, the sampler's processed count).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys

import torch

import distml.torch as hvd
from distml.elastic import restart_count


def digest(model: torch.nn.Module, opt: torch.optim.Optimizer) -> str:
    h = hashlib.sha256()
    for _, v in sorted(model.state_dict().items()):
        h.update(v.detach().contiguous().numpy().tobytes())
    for _, s in sorted(opt.state_dict()["state"].items()):
        for _, v in sorted(s.items()):
            h.update(v.detach().contiguous().numpy().tobytes() if torch.is_tensor(v) else repr(v).encode())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--commit-every", type=int, default=4)
    ap.add_argument("--kill", action="append", default=[])
    args = ap.parse_args()

    torch.set_num_threads(1)
    hvd.init()
    launch, me = restart_count(), hvd.rank()
    kill_at = {int(s) for g, r, s in (k.split(":") for k in args.kill) if int(g) == launch and int(r) == me}
    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, f"launch-{launch}-rank-{me}.jsonl"), "a")

    def say(**rec) -> None:
        log.write(json.dumps(dict(rec, launch=launch, rank=me, size=hvd.size())) + "\n")
        log.flush()

    g = torch.Generator().manual_seed(0)
    X = torch.randn(args.samples, 6, generator=g)
    y = X @ torch.randn(6, 1, generator=g) + 0.1 * torch.randn(args.samples, 1, generator=g)
    dataset = torch.utils.data.TensorDataset(X, y)
    torch.manual_seed(1 + me)  # different on every rank: the first sync must make them equal
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = hvd.DistributedOptimizer(torch.optim.Adam(model.parameters(), lr=0.01),
                                   named_parameters=model.named_parameters())
    sampler = hvd.elastic.ElasticSampler(dataset, shuffle=True, seed=7)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, sampler=sampler)
    state = hvd.elastic.TorchState(model, opt, train_sampler=sampler, epoch=0, batch=0, step=0)
    state.register_reset_callbacks([lambda: say(event="reset", commit=state.commits, step=state.step,
                                                 digest=digest(model, opt),
                                                 processed=len(sampler.processed_indices))])

    @hvd.elastic.run
    def train(state) -> None:
        while state.epoch < args.epochs:
            for batch_idx, (xb, yb) in enumerate(loader):
                if state.step in kill_at:
                    log.flush()
                    sys.stdout.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(xb), yb).backward()
                opt.step()
                say(event="step", epoch=state.epoch, step=state.step,
                    indices=sampler.get_indices(batch_idx, args.batch))
                sampler.record_batch(batch_idx, args.batch)
                state.batch = batch_idx + 1
                state.step += 1
                if state.step % args.commit_every == 0:
                    state.commit()
                    if me == 0:
                        say(event="commit", commit=state.commits, step=state.step, digest=digest(model, opt))
            state.epoch += 1
            state.batch = 0
            sampler.set_epoch(state.epoch)
            state.commit()
            if me == 0:
                say(event="commit", commit=state.commits, step=state.step, digest=digest(model, opt))
        say(event="done", step=state.step, digest=digest(model, opt))

    train(state)


if __name__ == "__main__":
    main()
