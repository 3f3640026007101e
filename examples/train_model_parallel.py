"""The digits MLP of train_digits.py, split across ranks by tensor or pipeline
parallelism (and data parallelism on what is left of the ranks).

    mpiexec -n 2 python examples/train_model_parallel.py --mode tensor     # 2-way tensor
    mpiexec -n 4 python examples/train_model_parallel.py --mode tensor     # 2 x 2: data x tensor
    mpiexec -n 2 python examples/train_model_parallel.py --mode pipeline   # 2 stages
    mpiexec -n 4 python examples/train_model_parallel.py --mode pipeline   # 2 stages x 2 data
    python examples/train_digits.py                                         # the data-parallel reference

The model is 64 -> hidden -> hidden -> 10 with ReLUs, initialised from the
same seeds as train_digits.py, so every run below starts from the same model
and (with the same global batch) takes the same steps up to float rounding:

- ``--mode tensor``: ColumnParallelLinear(64, h) -> ReLU -> RowParallelLinear(h,
  h) -> ReLU -> ColumnParallelLinear(h, 10, gather_output=True) on the tensor
  groups of a ProcessGrid; each data group averages its slices' gradients.
- ``--mode pipeline``: the five layers cut into ``--stages`` contiguous stages,
  ``--micro-batches`` per batch, GPipe or 1F1B; each stage's data group
  averages its gradients.

Rank 0 prints, per epoch, the mean training loss over the global batch and
the epoch's time, and at the end the test accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# One BLAS thread per rank: the ranks already fill the cores, and a BLAS
# thread pool per rank competing with its peers' (and with MPI's polling)
# makes every small matrix product many times slower. Set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import distml  # noqa: E402
from distml import nn, optim  # noqa: E402
from distml.data import shard_indices  # noqa: E402
from distml.parallel import ColumnParallelLinear, Pipeline, ProcessGrid, RowParallelLinear  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import load_data  # noqa: E402  (same data and split as the reference)


def tensor_parallel_model(hidden: int, seed: int, group) -> nn.Sequential:
    return nn.Sequential(ColumnParallelLinear(64, hidden, comm=group, seed=seed), nn.ReLU(),
                         RowParallelLinear(hidden, hidden, comm=group, seed=seed + 1), nn.ReLU(),
                         ColumnParallelLinear(hidden, 10, comm=group, seed=seed + 2, gather_output=True))


def pipeline_stage(hidden: int, seed: int, stages: int, index: int) -> nn.Sequential:
    layers = [nn.Linear(64, hidden, rng=seed), nn.ReLU(),
              nn.Linear(hidden, hidden, rng=seed + 1), nn.ReLU(),
              nn.Linear(hidden, 10, rng=seed + 2)]
    # Cut after the second ReLU first: the last linear layer is the smallest.
    cuts = {1: [5], 2: [4, 5], 3: [2, 4, 5], 4: [1, 2, 4, 5], 5: [1, 2, 3, 4, 5]}[stages]
    start = 0 if index == 0 else cuts[index - 1]
    return nn.Sequential(*layers[start:cuts[index]])


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["tensor", "pipeline"], default="tensor")
    ap.add_argument("--tensor", type=int, default=None, help="tensor group size (default: 2 if it divides P, else P)")
    ap.add_argument("--stages", type=int, default=None, help="pipeline stages (default: 2 if it divides P, else P)")
    ap.add_argument("--micro-batches", type=int, default=4)
    ap.add_argument("--schedule", choices=["1f1b", "gpipe"], default="1f1b")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=96, help="global batch (divisible by the data group size)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    world = distml.init()
    P = world.size
    split = args.tensor if args.mode == "tensor" else args.stages
    if split is None:
        split = 2 if P % 2 == 0 else P
    if args.mode == "tensor":
        grid = ProcessGrid(world, data=None, tensor=split)
    else:
        if split > 5:
            sys.exit("the model has five layers: at most 5 stages")
        grid = ProcessGrid(world, data=None, pipeline=split)
    D = grid.data_size
    if args.batch_size % D:
        sys.exit(f"--batch-size {args.batch_size} is not divisible by the data group size {D}")
    local_batch = args.batch_size // D
    X_train, y_train, X_test, y_test = load_data(args.seed)

    pipe = None
    if args.mode == "tensor":
        model = tensor_parallel_model(args.hidden, args.seed, grid.tensor)
        params = model.parameters()
    else:
        model = pipeline_stage(args.hidden, args.seed, grid.pipeline_size, grid.pipeline_rank)
        pipe = Pipeline(model, comm=grid.pipeline, micro_batches=args.micro_batches, schedule=args.schedule)
        params = model.parameters()
    opt = distml.DistributedOptimizer(optim.Adam(params, lr=args.lr), comm=grid.data)
    model.bind_grads(opt.grads)  # backward (or the pipeline's accumulation) writes into the buffer

    if world.rank == 0:
        layout = (f"tensor {grid.tensor_size}" if args.mode == "tensor"
                  else f"pipeline {grid.pipeline_size} stages, {args.micro_batches} micro-batches, {args.schedule}")
        print(f"digits: {len(X_train)} train / {len(X_test)} test; {P} rank(s) = {layout} x data {D}; "
              f"global batch {args.batch_size} ({local_batch} per data rank); adam lr={args.lr}")
    loss_fn = nn.SoftmaxCrossEntropy()
    steps = len(X_train) // args.batch_size
    for epoch in range(args.epochs):
        mine = shard_indices(len(X_train), grid.data_rank, D, seed=args.seed, epoch=epoch)
        loss_sum = np.zeros(1)
        world.barrier()
        start = time.perf_counter()
        for s in range(steps):
            idx = mine[s * local_batch:(s + 1) * local_batch]
            xb, yb = X_train[idx], y_train[idx]
            if pipe is None:
                loss = loss_fn(model(xb), yb)
                model.backward(loss_fn.backward())
            else:
                loss = pipe.train_step(xb, yb, loss_fn)
            opt.step()
            loss_sum += loss
        grid.data.allreduce(loss_sum, op="avg", out=loss_sum)  # equal local batches: the global mean
        world.barrier()
        elapsed = time.perf_counter() - start
        if world.rank == 0:
            extra = ""
            if pipe is not None:
                extra = (f"  stage-0 bubble {1 - pipe.busy_time / pipe.step_time:.2f}  peak activations "
                         f"{pipe.peak_activations} micro-batches ({pipe.peak_activation_bytes / 1024:.0f} KiB)")
            print(f"epoch {epoch + 1:>3}/{args.epochs}  loss {loss_sum[0] / steps:.4f}  time {elapsed:.3f}s{extra}",
                  flush=True)

    logits = model(X_test) if pipe is None else pipe.predict(X_test)
    accuracy = float((logits.argmax(1) == y_test).mean())
    if world.rank == 0:
        print(f"test accuracy {accuracy:.4f} ({int(round(accuracy * len(y_test)))}/{len(y_test)})")
    if pipe is not None:
        pipe.free()
    grid.free()
    return accuracy


if __name__ == "__main__":
    main()
