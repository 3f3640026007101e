"""Parameter-server benchmarks (distml.ps), run under mpiexec:

    mpiexec -n 2 python bench/bench_ps.py throughput --out bench/results/ps_throughput_P2.json
    mpiexec -n 2 python bench/bench_ps.py straggler --out bench/results/ps_straggler_P2.json
    python bench/bench_ps.py report bench/results/ps_*.json --md bench/results/ps.md

throughput: step() (push + pull) of a 25 M-parameter float32 model in async
mode (one request per server), colocated (every rank serves a shard) and
with one dedicated server, as bytes moved per second per worker (and, in
the same rounds, push() then pull() as two requests); beside it, in the
same run, the same messages moved by MPI alone (mpi4py Isend/Irecv of
every worker's slice to every server, then every shard back: the step's
pattern without the parameter server), and MPI point-to-point bandwidth
between ranks 0 and 1 for one shard's bytes. Rounds alternate between the implementations.
Per rank, the share of the wall time its threads ran on a core and waited
runnable for one (cpu_by_rank, runqueue_by_rank; /proc schedstat), and per
worker the share of its waiting before every server had begun answering
(wait_for_server_by_rank).

straggler: the digits MLP (hidden 512, batch 64 per worker, Adam), one
worker slowed by sleeping (f - 1) times its own compute time each step,
f = 2 and 4; a budget of samples over all workers; samples/s, time to 0.95
test accuracy (from copies of rank 0's parameters after every step,
evaluated after the run, the copies' time off the clock) and final
accuracy, for sync DistributedOptimizer (allreduce), the parameter server
in bounded (s = 1, 4) and async mode, repeated in rotating order.

delays (one process, no mpiexec): the straggler runs' training with every
update's gradients taken d updates late, for each d of --delays, at the
same budget: the accuracy that staleness alone costs.

    python bench/bench_ps.py delays --workers 2 --batch 512 --epochs 40

Every run records `cat /proc/loadavg` before and after: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np


def cpu_clocks() -> dict:
    """Per thread of this process (by tid): nanoseconds run on a CPU and
    waited runnable for one, from /proc/self/task/*/schedstat."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ran, waited, _ = f.read().split()
        except (OSError, ValueError):
            continue
        out[tid] = (int(ran), int(waited))
    return out


def cpu_split(before: dict, after: dict, wall: float) -> dict:
    """Seconds this process ran and waited runnable (all its threads) between
    two cpu_clocks(), as fractions of `wall` (threads that ended between the
    two are missed)."""
    ran = sum(a[0] - before.get(t, (0, 0))[0] for t, a in after.items()) * 1e-9
    waited = sum(a[1] - before.get(t, (0, 0))[1] for t, a in after.items()) * 1e-9
    return dict(cpu=ran / wall, runqueue=waited / wall)


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


# ---- throughput ---------------------------------------------------------------------

SHAPES_25M = [(4096, 4096), (4096,), (4096, 1024), (1024,), (1024, 4096), (4096, 512), (512,)]


def throughput(args) -> dict:
    import distml
    from mpi4py import MPI

    from distml import optim
    from distml.ps import ParameterServer

    comm = distml.init(timeout=300)
    world = MPI.COMM_WORLD
    rank, P = comm.rank, comm.size
    total = sum(int(np.prod(s)) for s in SHAPES_25M)
    rows = []
    layouts = [None] + ([1] if P >= 3 else [])
    # --pieces: the same run for each DISTML_PS_PIECE_BYTES in turn (read by
    # the constructor on every rank; the same value everywhere).
    cases = [(piece, servers) for piece in (args.pieces or [None]) for servers in layouts]
    for piece, servers in cases:
        if piece is not None:
            os.environ["DISTML_PS_PIECE_BYTES"] = str(piece)
        piece_bytes = int(os.environ.get("DISTML_PS_PIECE_BYTES", str(1 << 21)))
        server_ranks = list(range(P)) if servers is None else list(range(P - servers, P))
        workers = list(range(P)) if servers is None else list(range(P - servers))
        S = len(server_ranks)
        bounds = [0]
        for i in range(S):
            bounds.append(bounds[-1] + total // S + (1 if i < total % S else 0))
        params = [np.full(s, 0.01, dtype=np.float32) for s in SHAPES_25M]
        grads = [np.full(s, 1e-3, dtype=np.float32) for s in SHAPES_25M]
        flat_send = np.full(total, 1e-3, dtype=np.float32)
        flat_recv = np.empty(total, dtype=np.float32)
        shard = np.empty(bounds[1] - bounds[0] + 1, dtype=np.float32)
        incoming = [np.empty_like(shard) for _ in workers]
        step_times, split_times, mpi_times, p2p_times, copy_all_times, copy_alone_times = [], [], [], [], [], []

        def mpi_pattern():
            # push: every worker's slice i to server i; pull: shard i to every worker.
            reqs = []
            me_server = rank in server_ranks
            if me_server:
                i = server_ranks.index(rank)
                n = bounds[i + 1] - bounds[i]
                reqs += [world.Irecv(incoming[k][:n], source=w, tag=11) for k, w in enumerate(workers)]
            if rank in workers:
                reqs += [world.Isend(flat_send[bounds[i]:bounds[i + 1]], dest=s, tag=11)
                         for i, s in enumerate(server_ranks)]
            MPI.Request.Waitall(reqs)
            reqs = []
            if rank in workers:
                reqs += [world.Irecv(flat_recv[bounds[i]:bounds[i + 1]], source=s, tag=12)
                         for i, s in enumerate(server_ranks)]
            if me_server:
                i = server_ranks.index(rank)
                n = bounds[i + 1] - bounds[i]
                reqs += [world.Isend(shard[:n], dest=w, tag=12) for w in workers]
            MPI.Request.Waitall(reqs)

        def p2p():
            n = bounds[1] - bounds[0]
            if rank == 0:
                world.Send(flat_send[:n], dest=1, tag=13)
            elif rank == 1:
                world.Recv(flat_recv[:n], source=0, tag=13)

        def copy_shard(which):
            # One shard's bytes copied in memory; the buffers rotate so that
            # no copy starts from cache.
            n = bounds[1] - bounds[0]
            src = flat_send[:n] if which % 2 == 0 else flat_recv[n:2 * n] if 2 * n <= total else flat_recv[:n]
            dst = flat_recv[:n] if which % 2 == 0 else flat_send[total - n:]
            t = time.perf_counter()
            np.copyto(dst, src)
            return time.perf_counter() - t

        # Where each rank's time goes while the workers step: the share of
        # the wall time its threads ran, and waited runnable for a core
        # (dedicated servers: from before the constructor, which serves, to
        # its return; workers: their timed rounds).
        clocks0, wall0 = cpu_clocks(), time.perf_counter()
        ps = ParameterServer(params, optim.SGD, comm=comm, mode="async", servers=servers, lr=1e-6)
        if ps.is_worker:
            ps.step(grads)  # warm-up
            ps.push(grads)
            ps.pull()
            clocks0, wall0 = cpu_clocks(), time.perf_counter()
            st0 = ps.stats()
        # Dedicated servers are inside the constructor now: only the workers
        # time step(); the MPI rounds run on every rank after close(). Each
        # round also times push() then pull(), the same bytes in two
        # requests (async step() is one: its reply overlaps the update).
        for _ in range(args.rounds if ps.is_worker else 0):
            t = time.perf_counter()
            ps.step(grads)
            step_times.append(time.perf_counter() - t)
            if args.steps_only:
                continue
            t = time.perf_counter()
            ps.push(grads)
            ps.pull()
            split_times.append(time.perf_counter() - t)
        st = ps.stats()
        sched = cpu_split(clocks0, cpu_clocks(), time.perf_counter() - wall0)
        if ps.is_server:
            # Of that wall time, the share in updates (the optimizer, and a
            # colocated rank's copies of its own shard).
            sched["update"] = st["server"]["busy_seconds"] / (time.perf_counter() - wall0)
        if ps.is_worker:
            sched["wait_for_server"] = st["wait_for_server_seconds"] - st0["wait_for_server_seconds"]
            sched["wait"] = st["wait_seconds"] - st0["wait_seconds"]
        ps.close()
        world.Barrier()
        mpi_pattern()
        for r in range(args.rounds):
            world.Barrier()
            t = time.perf_counter()
            mpi_pattern()
            mpi_times.append(time.perf_counter() - t)
            world.Barrier()
            t = time.perf_counter()
            p2p()
            p2p_times.append(time.perf_counter() - t)
            # memcpy rate: every rank at once (as in a colocated step), and
            # the first server alone while the others sleep (a dedicated
            # server's work; MPI's barrier would poll).
            world.Barrier()
            copy_all_times.append(copy_shard(r))
            world.Barrier()
            if rank == server_ranks[0]:
                copy_alone_times.append(copy_shard(r + 1))
            else:
                time.sleep(0.25)
        mine = dict(rank=rank, step=step_times, split=split_times, mpi=mpi_times, p2p=p2p_times, copy_all=copy_all_times,
                    copy_alone=copy_alone_times, wait=st.get("wait_seconds", 0.0),
                    most=st.get("server", {}).get("most_in_flight", 0), sched=sched)
        every = world.gather(mine, root=0)
        if rank == 0:
            step_bytes = 2 * total * 4  # push + pull per worker
            # The slowest worker's median step; the slowest rank's MPI round.
            step_med = max(statistics.median(e["step"]) for e in every if e["step"])
            split_med = max((statistics.median(e["split"]) for e in every if e["split"]), default=float("nan"))
            mpi_med = statistics.median([max(e["mpi"][r] for e in every) for r in range(args.rounds)])
            p2p_med = statistics.median([max(every[0]["p2p"][r], every[1]["p2p"][r]) for r in range(args.rounds)])
            shard_bytes = (bounds[1] - bounds[0]) * 4
            copy_all = statistics.median([max(e["copy_all"][r] for e in every) for r in range(args.rounds)])
            copy_alone = statistics.median(every[server_ranks[0]]["copy_alone"])
            # The least work a step needs, in copies of one shard (a copy of
            # n bytes reads n and writes n; MPICH moves a large message
            # between ranks of a node with one copy, CMA). Colocated, every
            # rank at once: (W - 1) workers' slices in, (S - 1) other shards
            # pulled, its own shard copied into its parameters, and W
            # updates, each reading parameters and gradient and writing the
            # parameters (1.5 copies); at the memcpy rate of every rank at
            # once. Dedicated: the first server's W slices in and W updates,
            # at the rate of one rank alone (its workers' copies of the
            # replies run beside it). MPI "same messages" does 2W copies
            # (colocated: its self-messages too) and no update.
            W = len(workers)
            if servers is None:
                units, rate = (W - 1) + (S - 1) + 1 + 1.5 * W, shard_bytes / copy_all
            else:
                units, rate = W + 1.5 * W, shard_bytes / copy_alone
            best = units * shard_bytes / rate
            row = dict(P=P, layout="colocated" if servers is None else f"{servers} dedicated", piece_bytes=piece_bytes,
                       most_in_flight=max(e["most"] for e in every),
                       workers=len(workers), servers=S, params=total, shard_bytes=shard_bytes,
                       step_seconds=step_med, step_bytes_per_s=step_bytes / step_med,
                       push_pull_seconds=split_med, ratio_push_pull_to_mpi_pattern=mpi_med / split_med,
                       mpi_pattern_seconds=mpi_med, mpi_pattern_bytes_per_s=step_bytes / mpi_med,
                       ratio_to_mpi_pattern=mpi_med / step_med,
                       p2p_bytes_per_s=shard_bytes / p2p_med, ratio_to_p2p=(step_bytes / step_med) / (shard_bytes / p2p_med),
                       memcpy_all_bytes_per_s=shard_bytes / copy_all, memcpy_alone_bytes_per_s=shard_bytes / copy_alone,
                       best_copies=units, best_seconds=best, ratio_to_best=best / step_med,
                       cpu_by_rank=[round(e["sched"]["cpu"], 3) for e in every],
                       runqueue_by_rank=[round(e["sched"]["runqueue"], 3) for e in every],
                       update_by_rank=[round(e["sched"].get("update", 0), 3) for e in every],
                       wait_for_server_by_rank=[round(e["sched"].get("wait_for_server", 0) / e["sched"]["wait"], 3)
                                                if e["sched"].get("wait") else None for e in every])
            rows.append(row)
            print(json.dumps(row), flush=True)
    return dict(rows=rows)


# ---- straggler ----------------------------------------------------------------------

def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(X))
    n_test = len(X) // 5
    return X[order[n_test:]], y[order[n_test:]], X[order[:n_test]], y[order[:n_test]]


def digits_mlp(hidden):
    """The straggler runs' model: 64 -> hidden -> hidden -> 10, fixed seeds."""
    from distml import nn

    return nn.Sequential(nn.Linear(64, hidden, rng=0), nn.ReLU(), nn.Linear(hidden, hidden, rng=1), nn.ReLU(),
                         nn.Linear(hidden, 10, rng=2))


def straggler_run(comm, method, slow_factor, args, data):
    import distml
    from distml import nn, optim
    from distml.data import shard_indices
    from distml.ps import ParameterServer

    X, y, Xt, yt = data
    rank, P = comm.rank, comm.size
    slow_rank = P - 1
    model = digits_mlp(args.hidden)
    loss_fn = nn.SoftmaxCrossEntropy()
    b = args.batch
    budget = args.epochs * len(X)
    lr = 2e-3
    comm.barrier()
    start = time.perf_counter()
    reached = None
    done = 0
    epoch, order, at = 0, shard_indices(len(X), rank, P, seed=0, epoch=0), 0

    def batch():
        nonlocal epoch, order, at
        if at + b > len(order):
            epoch += 1
            order, at = shard_indices(len(X), rank, P, seed=0, epoch=epoch), 0
        idx = order[at:at + b]
        at += b
        return idx

    # --moving: each step of each worker is slow with probability 1 / P (so
    # one worker in P on average, a different one from step to step), from
    # a generator seeded by the rank; otherwise the last rank always is.
    slow_draw = np.random.default_rng(1000 + rank)

    def compute(idx):
        t0 = time.perf_counter()
        loss_fn(model(X[idx]), y[idx])
        model.backward(loss_fn.backward())
        slow = slow_draw.random() < 1 / P if args.moving else rank == slow_rank
        if slow and slow_factor > 1:
            time.sleep((slow_factor - 1) * (time.perf_counter() - t0))

    # Time to accuracy, after every step: rank 0 keeps a copy of the
    # parameters and the time, off the clock (the copies' time is taken
    # out of it), and evaluates the copies after the run, so that the
    # measurement neither slows rank 0's steps nor rounds to a few steps.
    snaps, off_clock = [], 0.0

    def check(step):
        nonlocal off_clock
        if rank == 0:
            t0 = time.perf_counter()
            snaps.append((t0 - start - off_clock, [p.copy() for p in model.parameters()]))
            off_clock += time.perf_counter() - t0

    if method == "sync_allreduce":
        opt = distml.DistributedOptimizer(optim.Adam(model.parameters(), lr=lr), comm=comm)
        model.bind_grads(opt.grads)
        opt.broadcast_parameters(root=0)
        steps = int(np.ceil(budget / (P * b)))
        for s in range(steps):
            compute(batch())
            opt.step(model.grads())
            done += b
            check(s)
        staleness = 0
    else:
        mode, s_bound = ("async", None) if method == "async" else ("bounded", int(method.split("_s")[1]))
        ps = ParameterServer(model.parameters(), optim.Adam, comm=comm, mode=mode, staleness=s_bound, lr=lr)
        per_update = b if mode == "async" else b * P
        s = 0
        while ps.stats()["updates_applied"] * per_update < budget:
            compute(batch())
            ps.step(model.grads())
            done += b
            check(s)
            s += 1
        staleness = ps.stats()["max_staleness"]
        ps.close()
    elapsed = time.perf_counter() - start - off_clock
    accuracy = float((model(Xt).argmax(1) == yt).mean())
    final = [p.copy() for p in model.parameters()]
    for t, values in snaps:
        for p, v in zip(model.parameters(), values):
            p[...] = v
        if float((model(Xt).argmax(1) == yt).mean()) >= args.target:
            reached = t
            break
    for p, v in zip(model.parameters(), final):
        p[...] = v
    every = comm.allgather(np.array([done, elapsed, -1 if reached is None else reached, staleness], dtype=np.float64))
    every = every.reshape(P, 4)
    return dict(method=method, slow_factor=slow_factor, P=P, samples=float(every[:, 0].sum()),
                seconds=float(every[:, 1].max()), samples_per_s=float(every[:, 0].sum() / every[:, 1].max()),
                time_to_target=None if every[0, 2] < 0 else float(every[0, 2]), accuracy=accuracy,
                samples_per_worker=[int(v) for v in every[:, 0]], max_staleness=int(every[:, 3].max()))


def straggler(args) -> dict:
    import distml

    comm = distml.init(timeout=300)
    data = digits()
    methods = ["sync_allreduce", "bounded_s1", "bounded_s4", "async"]
    runs = []
    for rep in range(args.reps):
        for f in args.slow:
            rot = methods[rep % len(methods):] + methods[:rep % len(methods)]
            for m in rot:
                r = straggler_run(comm, m, f, args, data)
                r["rep"] = rep
                runs.append(r)
                if comm.rank == 0:
                    print(json.dumps(r), flush=True)
    return dict(runs=runs, target=args.target, epochs=args.epochs, batch=args.batch, hidden=args.hidden,
                moving=args.moving)


def delays(args) -> dict:
    """What stale gradients alone cost in accuracy, in one process: the
    straggler runs' model, data, Adam and budget in clocks (updates of P
    workers' batches each), every clock's update the average of P batches'
    gradients taken at the parameters of `d` updates before. d = 0 is sync
    training; bounded staleness s lets a worker's gradient be up to s
    updates old. No communication: the accuracy left after the budget is
    the staleness's doing."""
    from distml import nn, optim
    from distml.data import shard_indices

    X, y, Xt, yt = digits()
    P, b = args.workers, args.batch
    clocks = int(np.ceil(args.epochs * len(X) / (b * P)))
    rows = []
    for d in args.delays:
        model = digits_mlp(args.hidden)
        loss_fn = nn.SoftmaxCrossEntropy()
        params = model.parameters()
        opt = optim.Adam(params, lr=2e-3)
        history = [[p.copy() for p in params]]
        epochs = [0] * P
        orders = [shard_indices(len(X), r, P, seed=0, epoch=0) for r in range(P)]
        at = [0] * P
        reached = None
        for c in range(clocks):
            now = [p.copy() for p in params]
            for p, v in zip(params, history[max(0, len(history) - 1 - d)]):
                p[...] = v
            total = None
            for r in range(P):
                if at[r] + b > len(orders[r]):
                    epochs[r] += 1
                    orders[r], at[r] = shard_indices(len(X), r, P, seed=0, epoch=epochs[r]), 0
                idx = orders[r][at[r]:at[r] + b]
                at[r] += b
                loss_fn(model(X[idx]), y[idx])
                model.backward(loss_fn.backward())
                g = [x.copy() for x in model.grads()]
                total = g if total is None else [t + x for t, x in zip(total, g)]
            for p, v in zip(params, now):
                p[...] = v
            opt.step([t / P for t in total])
            history.append([p.copy() for p in params])
            if reached is None and float((model(Xt).argmax(1) == yt).mean()) >= args.target:
                reached = c + 1
        row = dict(delay=d, workers=P, batch=b, clocks=clocks, accuracy=float((model(Xt).argmax(1) == yt).mean()),
                   clocks_to_target=reached)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return dict(rows=rows, target=args.target, epochs=args.epochs, hidden=args.hidden)


# ---- report -------------------------------------------------------------------------

def report(paths, md_path):
    lines = []
    for path in paths:
        with open(path) as f:
            res = json.load(f)
        lines.append(f"### {os.path.basename(path)}\n")
        lines.append(f"`{res['command']}`; load before/after: {res['loadavg_before']} / {res['loadavg_after']}\n")
        if res["part"] == "throughput":
            lines.append("| P | layout | workers | shard | piece | step() per worker | MPI, same messages | ratio | "
                         "MPI p2p (one shard) | ratio | MPI same messages / p2p | memcpy (all ranks) | least work | "
                         "ratio | push() then pull(): ratio to MPI, same messages |")
            lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in res["rows"]:
                best = (f"{r['best_copies']:g} copies, {r['best_seconds'] * 1e3:.0f} ms | {r['ratio_to_best']:.2f}"
                        if "best_seconds" in r else "- | -")
                memcpy = f"{r['memcpy_all_bytes_per_s'] / 1e9:.1f} GB/s" if "memcpy_all_bytes_per_s" in r else "-"
                p2p_ratio = r["step_bytes_per_s"] / r["p2p_bytes_per_s"]
                split = (f"{r['ratio_push_pull_to_mpi_pattern']:.2f} ({r['push_pull_seconds'] * 1e3:.0f} ms)"
                         if "push_pull_seconds" in r else "-")
                piece = f"{r['piece_bytes'] / 2**10:g} KiB" if "piece_bytes" in r else "2048 KiB"
                lines.append(f"| {r['P']} | {r['layout']} | {r['workers']} | {r['shard_bytes'] / 2**20:.1f} MiB | "
                             f"{piece} | "
                             f"{r['step_bytes_per_s'] / 1e9:.2f} GB/s ({r['step_seconds'] * 1e3:.0f} ms) | "
                             f"{r['mpi_pattern_bytes_per_s'] / 1e9:.2f} GB/s | {r['ratio_to_mpi_pattern']:.2f} | "
                             f"{r['p2p_bytes_per_s'] / 1e9:.2f} GB/s | {p2p_ratio:.2f} | "
                             f"{r['mpi_pattern_bytes_per_s'] / r['p2p_bytes_per_s']:.2f} | {memcpy} | {best} | {split} |")
        else:
            who = ("each step of each worker slowed with probability 1/P (a moving straggler)"
                   if res.get("moving") else "the last rank slowed at every step")
            lines.append(f"digits MLP hidden {res['hidden']}, batch {res['batch']} per worker, "
                         f"{res['epochs']} epochs of samples in all, {who}; "
                         f"medians of {max(r['rep'] for r in res['runs']) + 1} runs\n")
            lines.append("| P | slowdown | method | samples/s | vs sync allreduce | time to "
                         f"{res['target']} | accuracy | max staleness | samples per worker |")
            lines.append("|---|---:|---|---:|---:|---:|---:|---:|---|")
            keys = sorted({(r["slow_factor"], r["method"]) for r in res["runs"]},
                          key=lambda k: (k[0], ["sync_allreduce", "bounded_s1", "bounded_s4", "async"].index(k[1])))
            med = {}
            for f, m in keys:
                rs = [r for r in res["runs"] if r["slow_factor"] == f and r["method"] == m]
                tt = [r["time_to_target"] for r in rs if r["time_to_target"] is not None]
                med[(f, m)] = dict(
                    sps=statistics.median(r["samples_per_s"] for r in rs),
                    tt=statistics.median(tt) if len(tt) == len(rs) else None,
                    acc=statistics.median(r["accuracy"] for r in rs),
                    stale=max(r["max_staleness"] for r in rs),
                    spw=rs[len(rs) // 2]["samples_per_worker"], P=rs[0]["P"])
            for f, m in keys:
                d = med[(f, m)]
                base = med[(f, "sync_allreduce")]["sps"]
                tt = "not reached" if d["tt"] is None else f"{d['tt']:.2f} s"
                lines.append(f"| {d['P']} | {f:g}x | {m} | {d['sps']:,.0f} | {d['sps'] / base:.2f} | {tt} | "
                             f"{d['acc']:.4f} | {d['stale']} | {d['spw']} |")
        lines.append("")
    text = "\n".join(lines)
    if md_path:
        with open(md_path, "w") as f:
            f.write(text + "\n")
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["throughput", "straggler", "delays", "report"])
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--out", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--slow", type=float, nargs="+", default=[2.0, 4.0])
    ap.add_argument("--epochs", type=float, default=6.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--moving", action="store_true",
                    help="straggler: slow a random worker's step (probability 1/P each) instead of the last rank's every step")
    ap.add_argument("--steps-only", action="store_true",
                    help="throughput: time step() alone, without the push() then pull() rounds (so that the "
                         "servers' CPU shares are those of steps)")
    ap.add_argument("--delays", type=int, nargs="+", default=[0, 1, 2, 4],
                    help="delays: the gradients' ages, in updates, to train with (one process, no MPI)")
    ap.add_argument("--workers", type=int, default=2, help="delays: batches averaged in each update")
    ap.add_argument("--pieces", type=int, nargs="+", default=None,
                    help="throughput: DISTML_PS_PIECE_BYTES values to run in turn (default: the environment's)")
    args = ap.parse_args()
    if args.part == "report":
        report(args.paths, args.md)
        return
    before = loadavg()
    if args.part == "delays":
        res = delays(args)
        res.update(part=args.part, command="python " + " ".join(sys.argv), loadavg_before=before,
                   loadavg_after=loadavg(), time=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)
        return
    res = throughput(args) if args.part == "throughput" else straggler(args)
    from mpi4py import MPI

    if MPI.COMM_WORLD.rank == 0:
        res.update(part=args.part, command="mpiexec -n %d python %s" % (MPI.COMM_WORLD.size, " ".join(sys.argv)),
                   loadavg_before=before, loadavg_after=loadavg(), machine=platform.machine(),
                   cpus=os.cpu_count(), time=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
