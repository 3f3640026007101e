"""Collaborative filtering with distml.ml.ALS on a MovieLens-layout ratings
file, or on generated low-rank ratings.

    mpiexec -n 4 python examples/recommend.py                      # generated, 200k ratings
    mpiexec -n 4 python examples/recommend.py --ratings ml-1m/ratings.dat
    python examples/recommend.py --ratings ml-latest-small/ratings.csv

A ratings file is "user::item::rating::timestamp" lines (MovieLens 1M/10M)
or a CSV with a header "userId,movieId,rating,timestamp" (MovieLens
latest); every rank reads its own share of the lines. 10 % of the ratings,
chosen by a hash of (user, item), are held out; rank 0 prints the test RMSE
and the time per iteration. Generated data is rank-10 factors plus Gaussian
noise of --sigma, so a good fit has a test RMSE close to sigma.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread per rank

import numpy as np  # noqa: E402

import distml  # noqa: E402
from distml.data import key_hash  # noqa: E402
from distml.ml import ALS  # noqa: E402


def read_ratings(path: str, rank: int, size: int):
    """This rank's share of the lines (every size-th line from rank)."""
    users, items, values = [], [], []
    with open(path, encoding="latin-1") as f:
        first = f.readline()
        lines = [first] if first[:1].isdigit() else []
        for n, line in enumerate(f if not lines else ([first] + list(f))):
            if n % size != rank:
                continue
            parts = line.strip().replace("::", ",").split(",")
            if len(parts) < 3:
                continue
            users.append(int(parts[0]))
            items.append(int(parts[1]))
            values.append(float(parts[2]))
    return np.array(users, np.int64), np.array(items, np.int64), np.array(values)


def generated(n_ratings: int, sigma: float, rank: int, size: int, seed: int = 0):
    """Rank-10 ratings on a 3:2 user/item grid; rank r draws ratings r, r + size, ..."""
    n_users = int(np.sqrt(n_ratings / 0.05 * 1.5))
    n_items = int(n_users / 1.5)
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(n_users, 10)) / np.sqrt(10) * 2
    V = rng.normal(size=(n_items, 10)) / np.sqrt(10) * 2
    pairs = rng.choice(n_users * n_items, size=n_ratings, replace=False)[rank::size]
    users, items = pairs // n_items, pairs % n_items
    noise = np.random.default_rng([seed, rank]).normal(size=users.size) * sigma
    return users, items, (U[users] * V[items]).sum(axis=1) + noise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratings", help="MovieLens ratings file (ratings.dat or ratings.csv)")
    ap.add_argument("--n-ratings", type=int, default=200_000, help="generated ratings (default 200k)")
    ap.add_argument("--sigma", type=float, default=0.5, help="noise of generated ratings")
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--max-iter", type=int, default=10)
    ap.add_argument("--reg-param", type=float, default=None, help="default 0.05 (file) or 0.01 (generated)")
    args = ap.parse_args()

    comm = distml.init()
    if args.ratings:
        users, items, values = read_ratings(args.ratings, comm.rank, comm.size)
        reg = 0.05 if args.reg_param is None else args.reg_param
        source = args.ratings
    else:
        users, items, values = generated(args.n_ratings, args.sigma, comm.rank, comm.size)
        reg = 0.01 if args.reg_param is None else args.reg_param
        source = f"generated rank-10 ratings, noise sigma {args.sigma}"
    test = (key_hash(users * 1_000_003 + items) % np.uint64(10)) == 0
    total = comm.allreduce(np.array([users.size, int(test.sum())], np.int64))
    if comm.rank == 0:
        print(f"{source}: {total[0]} ratings ({total[1]} held out), {comm.size} ranks")

    t0 = time.perf_counter()
    als = ALS(rank=args.rank, max_iter=args.max_iter, reg_param=reg, seed=0)
    model = als.fit(users[~test], items[~test], values[~test])
    fit_seconds = time.perf_counter() - t0

    pred = model.predict(users[test], items[test])
    known = ~np.isnan(pred)
    sums = comm.allreduce(np.array([np.sum((pred[known] - values[test][known]) ** 2), known.sum()], np.float64))
    rmse = float(np.sqrt(sums[0] / max(sums[1], 1)))
    per_iter = comm.allreduce(np.array(als.iteration_seconds_ or [0.0]), op="max")
    if comm.rank == 0:
        print(f"test RMSE {rmse:.4f} on {int(sums[1])} ratings with known users and items")
        print(f"fit {fit_seconds:.2f} s; per iteration {np.mean(per_iter):.3f} s "
              f"(slowest rank, mean of {len(per_iter)})")
        ids, _ = model.user_factors()
        items_top, scores = model.recommend_for_users(ids[:1], 5)
        print(f"top 5 items for user {ids[0]}: {items_top[0].tolist()}")


if __name__ == "__main__":
    main()
