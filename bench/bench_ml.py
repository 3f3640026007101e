"""distml.ml against Spark MLlib (local mode) on the same data and hyper-parameters.

Four sub-commands; the data is generated once into Parquet files that both
sides read:

    python bench/bench_ml.py generate --data /tmp/distml-ml-bench
    mpiexec -n 2 python bench/bench_ml.py distml --data /tmp/distml-ml-bench --out bench/results/ml_distml_P2.json
    python bench/bench_ml.py spark --data /tmp/distml-ml-bench --cores 2 --out bench/results/ml_spark_local2.json
    python bench/bench_ml.py report --results bench/results --out bench/results/ml.md

ALS and the shuffle have sub-commands of their own (their JSON files are
reported by hand in bench/results/ml.md):

    python bench/bench_ml.py als-generate --data /tmp/distml-ml-bench
    mpiexec -n 2 python bench/bench_ml.py als-distml --data /tmp/distml-ml-bench --out bench/results/ml_als_distml_P2.json
    python bench/bench_ml.py als-spark --data /tmp/distml-ml-bench --cores 2 --out bench/results/ml_als_spark_local2.json
    mpiexec -n 2 python bench/bench_ml.py shuffle --out bench/results/ml_shuffle_P2.json

Workloads:
- KMeans: 1,000,000 x 20 points around 10 centers, k = 10, k-means||
  initialisation (2 rounds, as Spark's default initSteps), at most 20
  iterations, seed 0. The stopping rules differ: distml (as scikit-learn)
  stops once the summed squared center shift is <= tol * mean feature
  variance (tol = 1e-4), Spark once every center moved less than tol = 1e-4;
  both report their iterations and the inertia (Spark: trainingCost).
- LogisticRegression: 500,000 x 50 rows, two classes drawn from a logistic
  model, C = 1 (Spark: regParam = 1 / (C n), standardization off, no elastic
  net), at most 100 iterations, tol = 1e-6 (distml: gradient, Spark: relative
  change of the loss). Both report iterations, training accuracy and the
  objective mean(log-loss) + ||w||^2 / (2 C n), evaluated by this script in
  the same way for both models.

Timed: the fit alone, as the median of --runs fits, after --warmup untimed
fits on both sides (Spark's first fits run partly interpreted until the JVM
has compiled its code; all timings, warm-up included, are in the JSON). Not
timed: Spark's session start, reading and caching the DataFrame (counted
once before the first fit), distml's reading of the files (read_shards;
reported separately). distml times are those of the slowest rank, between two
barriers. The load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import sys
import time

# One BLAS thread per rank: the ranks already fill the cores. Set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

KMEANS = dict(rows=1_000_000, features=20, clusters=10, files=8, max_iter=20, tol=1e-4, seed=0, init_steps=2)
LOGREG = dict(rows=500_000, features=50, files=8, C=1.0, max_iter=100, tol=1e-6)
# ALS: explicit ratings of rank-10 factors plus noise, 10 % held out by a hash of (user, item).
ALSW = dict(ratings=1_000_000, users=8000, items=6000, true_rank=10, sigma=0.5, files=4, rank=10, max_iter=10,
            reg_param=0.01, seed=0)


def _machine() -> dict:
    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count()}


# ---- generate ------------------------------------------------------------------


def generate(data: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(2026)
    k, d = KMEANS["clusters"], KMEANS["features"]
    centers = rng.normal(size=(k, d)) * 1.2
    folder = os.path.join(data, "kmeans")
    os.makedirs(folder, exist_ok=True)
    for i, rows in enumerate(np.array_split(np.arange(KMEANS["rows"]), KMEANS["files"])):
        X = centers[rng.integers(0, k, size=rows.size)] + rng.normal(size=(rows.size, d))
        pq.write_table(pa.table({f"f{j}": X[:, j] for j in range(d)}), os.path.join(folder, f"part-{i:03d}.parquet"))

    d = LOGREG["features"]
    w = rng.normal(size=d) / np.sqrt(d) * 2.0
    folder = os.path.join(data, "logreg")
    os.makedirs(folder, exist_ok=True)
    for i, rows in enumerate(np.array_split(np.arange(LOGREG["rows"]), LOGREG["files"])):
        X = rng.normal(size=(rows.size, d))
        p = 1.0 / (1.0 + np.exp(-(X @ w + 0.3)))
        y = (rng.random(rows.size) < p).astype(np.float64)
        cols = {f"f{j}": X[:, j] for j in range(d)}
        cols["label"] = y
        pq.write_table(pa.table(cols), os.path.join(folder, f"part-{i:03d}.parquet"))
    print(f"wrote {data}/kmeans and {data}/logreg")


def _numpy(table, features: int):
    X = np.column_stack([table[f"f{j}"].to_numpy() for j in range(features)])
    y = table["label"].to_numpy() if "label" in table.column_names else None
    return np.ascontiguousarray(X), y


def _log_loss_sum(X: np.ndarray, y: np.ndarray, w: np.ndarray, b: float) -> float:
    z = X @ w + b
    return float(np.sum(np.logaddexp(0.0, z) - y * z))


# ---- distml ----------------------------------------------------------------------


def run_distml(data: str, runs: int, warmup: int, out: str) -> None:
    import distml
    from distml.data import read_shards
    from distml.ml import KMeans, LogisticRegression

    comm = distml.init()
    load_start = os.getloadavg()

    def timed(fn):
        comm.barrier()
        t = time.perf_counter()
        result = fn()
        comm.barrier()
        elapsed = np.array([time.perf_counter() - t])
        return result, float(comm.allreduce(elapsed, op="max")[0])

    (table, read_s) = timed(lambda: read_shards(os.path.join(data, "kmeans", "*.parquet"), comm=comm))
    X, _ = _numpy(table, KMEANS["features"])
    fits, model = [], None
    for _ in range(warmup + runs):
        model, s = timed(lambda: KMeans(KMEANS["clusters"], init="k-means||", max_iter=KMEANS["max_iter"],
                                        tol=KMEANS["tol"], seed=KMEANS["seed"], init_steps=KMEANS["init_steps"],
                                        comm=comm).fit(X))
        fits.append(s)
    kmeans = {"fit_seconds": fits[warmup:], "warmup_seconds": fits[:warmup],
              "median_seconds": statistics.median(fits[warmup:]), "read_seconds": read_s,
              "inertia": model.inertia_, "n_iter": model.n_iter_}
    del X, table

    (table, read_s) = timed(lambda: read_shards(os.path.join(data, "logreg", "*.parquet"), comm=comm))
    X, y = _numpy(table, LOGREG["features"])
    fits = []
    for _ in range(warmup + runs):
        model, s = timed(lambda: LogisticRegression(C=LOGREG["C"], max_iter=LOGREG["max_iter"], tol=LOGREG["tol"],
                                                    comm=comm).fit(X, y))
        fits.append(s)
    accuracy = model.score(X, y)
    n = comm.allreduce(np.array([float(len(y))]))[0]
    loss = comm.allreduce(np.array([_log_loss_sum(X, y, model.coef_[0], float(model.intercept_[0]))]))[0]
    objective = loss / n + float(model.coef_[0] @ model.coef_[0]) / (2 * LOGREG["C"] * n)
    logreg = {"fit_seconds": fits[warmup:], "warmup_seconds": fits[:warmup],
              "median_seconds": statistics.median(fits[warmup:]), "read_seconds": read_s,
              "accuracy": accuracy, "objective": objective, "n_iter": model.n_iter_}

    if comm.rank == 0:
        record = {"tool": "distml", "P": comm.size, "kmeans": kmeans, "logreg": logreg,
                  "params": {"kmeans": KMEANS, "logreg": LOGREG}, "loadavg_start": load_start,
                  "loadavg_end": os.getloadavg(), "machine": _machine(),
                  "command": f"mpiexec -n {comm.size} python " + " ".join(sys.argv)}
        _write(out, record)


# ---- Spark -----------------------------------------------------------------------


def run_spark(data: str, cores: int, runs: int, warmup: int, out: str) -> None:
    from pyspark.ml.classification import LogisticRegression as SparkLR
    from pyspark.ml.clustering import KMeans as SparkKMeans
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import SparkSession

    import pyarrow.parquet as pq

    load_start = os.getloadavg()
    spark = (SparkSession.builder.master(f"local[{cores}]").appName("distml-bench")
             .config("spark.driver.memory", "8g").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", str(cores)).getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")

    def frame(name: str, features: int, label: bool):
        df = spark.read.parquet(os.path.join(data, name))
        cols = [f"f{j}" for j in range(features)]
        df = VectorAssembler(inputCols=cols, outputCol="features").transform(df)
        df = df.select("features", "label") if label else df.select("features")
        df = df.repartition(cores).cache()
        df.count()  # materialise the cache outside the timed fits
        return df

    df = frame("kmeans", KMEANS["features"], False)
    fits, model = [], None
    for _ in range(warmup + runs):
        km = SparkKMeans(k=KMEANS["clusters"], initMode="k-means||", initSteps=KMEANS["init_steps"],
                         maxIter=KMEANS["max_iter"], tol=KMEANS["tol"], seed=KMEANS["seed"])
        t = time.perf_counter()
        model = km.fit(df)
        fits.append(time.perf_counter() - t)
    kmeans = {"fit_seconds": fits[warmup:], "warmup_seconds": fits[:warmup],
              "median_seconds": statistics.median(fits[warmup:]),
              "inertia": model.summary.trainingCost, "n_iter": model.summary.numIter}
    df.unpersist()

    df = frame("logreg", LOGREG["features"], True)
    n = LOGREG["rows"]
    fits = []
    for _ in range(warmup + runs):
        lr = SparkLR(regParam=1.0 / (LOGREG["C"] * n), elasticNetParam=0.0, standardization=False,
                     maxIter=LOGREG["max_iter"], tol=LOGREG["tol"], fitIntercept=True, family="binomial")
        t = time.perf_counter()
        model = lr.fit(df)
        fits.append(time.perf_counter() - t)
    summary = model.summary
    X, y = _numpy(pq.read_table(os.path.join(data, "logreg")), LOGREG["features"])
    w = model.coefficients.toArray()
    objective = _log_loss_sum(X, y, w, model.intercept) / n + float(w @ w) / (2 * LOGREG["C"] * n)
    logreg = {"fit_seconds": fits[warmup:], "warmup_seconds": fits[:warmup],
              "median_seconds": statistics.median(fits[warmup:]), "accuracy": summary.accuracy,
              "objective": objective, "n_iter": summary.totalIterations}
    spark.stop()
    record = {"tool": "spark", "cores": cores, "kmeans": kmeans, "logreg": logreg,
              "params": {"kmeans": KMEANS, "logreg": LOGREG}, "loadavg_start": load_start,
              "loadavg_end": os.getloadavg(), "machine": _machine(),
              "spark": __import__("pyspark").__version__, "command": "python " + " ".join(sys.argv)}
    _write(out, record)


# ---- ALS and the shuffle -------------------------------------------------------------


def als_generate(data: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(2027)
    w = ALSW
    U = rng.normal(size=(w["users"], w["true_rank"])) * np.sqrt(2.0 / w["true_rank"])
    V = rng.normal(size=(w["items"], w["true_rank"])) * np.sqrt(2.0 / w["true_rank"])
    pairs = rng.choice(w["users"] * w["items"], size=w["ratings"], replace=False)
    users, items = pairs // w["items"], pairs % w["items"]
    ratings = (U[users] * V[items]).sum(axis=1) + w["sigma"] * rng.normal(size=pairs.size)
    test = (users * 1_000_003 + items) % 10 == 0
    folder = os.path.join(data, "als")
    for part, mask in (("train", ~test), ("test", test)):
        os.makedirs(os.path.join(folder, part), exist_ok=True)
        idx = np.flatnonzero(mask)
        for i, rows in enumerate(np.array_split(idx, w["files"])):
            pq.write_table(pa.table({"user": users[rows].astype(np.int32), "item": items[rows].astype(np.int32),
                                     "rating": ratings[rows].astype(np.float32)}),
                           os.path.join(folder, part, f"part-{i:03d}.parquet"))


def run_als_distml(data: str, runs: int, warmup: int, out: str) -> None:
    import distml
    from distml.data import read_shards
    from distml.ml import ALS

    comm = distml.init()
    load_start = os.getloadavg()
    w = ALSW
    train = read_shards(os.path.join(data, "als", "train", "*.parquet"), comm=comm)
    test = read_shards(os.path.join(data, "als", "test", "*.parquet"), comm=comm)
    cols = [train[c].to_numpy() for c in ("user", "item", "rating")]
    fits, model, per_iter = [], None, []
    for _ in range(warmup + runs):
        als = ALS(rank=w["rank"], max_iter=w["max_iter"], reg_param=w["reg_param"], seed=w["seed"], comm=comm)
        comm.barrier()
        t = time.perf_counter()
        model = als.fit(cols[0], cols[1], cols[2].astype(np.float64))
        comm.barrier()
        fits.append(float(comm.allreduce(np.array([time.perf_counter() - t]), op="max")[0]))
        per_iter.append(float(comm.allreduce(np.array([np.mean(als.iteration_seconds_)]), op="max")[0]))
    pred = model.predict(test["user"].to_numpy(), test["item"].to_numpy())
    err = pred - test["rating"].to_numpy().astype(np.float64)
    sums = comm.allreduce(np.array([np.nansum(err ** 2), float(np.sum(~np.isnan(err)))]))
    if comm.rank == 0:
        record = {"tool": "distml", "P": comm.size, "fit_seconds": fits[warmup:], "warmup_seconds": fits[:warmup],
                  "median_seconds": statistics.median(fits[warmup:]),
                  "seconds_per_iteration": statistics.median(per_iter[warmup:]),
                  "test_rmse": float(np.sqrt(sums[0] / sums[1])), "test_rows": int(sums[1]), "params": w,
                  "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "machine": _machine(),
                  "command": f"mpiexec -n {comm.size} python " + " ".join(sys.argv)}
        _write(out, record)


def run_als_spark(data: str, cores: int, runs: int, warmup: int, out: str) -> None:
    from pyspark.ml.recommendation import ALS as SparkALS
    from pyspark.sql import SparkSession, functions as F

    load_start = os.getloadavg()
    w = ALSW
    spark = (SparkSession.builder.master(f"local[{cores}]").appName("distml-bench-als")
             .config("spark.driver.memory", "8g").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", str(cores)).getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    train = spark.read.parquet(os.path.join(data, "als", "train")).repartition(cores).cache()
    test = spark.read.parquet(os.path.join(data, "als", "test")).cache()
    train.count()
    test.count()
    fits, model = [], None
    for _ in range(warmup + runs):
        als = SparkALS(rank=w["rank"], maxIter=w["max_iter"], regParam=w["reg_param"], seed=w["seed"],
                       userCol="user", itemCol="item", ratingCol="rating", numUserBlocks=cores,
                       numItemBlocks=cores, coldStartStrategy="drop")
        t = time.perf_counter()
        model = als.fit(train)
        model.userFactors.count()  # the fit is lazy in part: materialise the factors
        model.itemFactors.count()
        fits.append(time.perf_counter() - t)
    pred = model.transform(test)
    row = pred.select(F.sqrt(F.avg((F.col("prediction") - F.col("rating")) ** 2)).alias("rmse"),
                      F.count("*").alias("n")).collect()[0]
    spark.stop()
    record = {"tool": "spark", "cores": cores, "fit_seconds": fits[warmup:], "warmup_seconds": fits[:warmup],
              "median_seconds": statistics.median(fits[warmup:]), "test_rmse": float(row["rmse"]),
              "test_rows": int(row["n"]), "params": w, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
              "machine": _machine(), "spark": __import__("pyspark").__version__,
              "command": "python " + " ".join(sys.argv)}
    _write(out, record)


def run_shuffle(rows: int, runs: int, out: str) -> None:
    """distml.data.shuffle by hash of rows (int64 key + 8 float64 columns)
    against alltoall of the same bytes per rank; GB/s = all ranks' input
    bytes / time (slowest rank)."""
    import distml
    from distml.data import shuffle

    comm = distml.init()
    P, rank = comm.size, comm.rank
    rng = np.random.default_rng([5, rank])
    keys = rng.integers(0, 1 << 40, size=rows)
    cols = rng.normal(size=(rows, 8))
    nbytes = keys.nbytes + cols.nbytes
    flat = np.zeros(nbytes // P * P, np.uint8)

    def timed(fn):
        comm.barrier()
        t = time.perf_counter()
        fn()
        comm.barrier()
        return float(comm.allreduce(np.array([time.perf_counter() - t]), op="max")[0])

    timed(lambda: shuffle(keys, cols, comm=comm))
    timed(lambda: comm.alltoall(flat))
    sh = [timed(lambda: shuffle(keys, cols, comm=comm)) for _ in range(runs)]
    a2a = [timed(lambda: comm.alltoall(flat)) for _ in range(runs)]
    total = nbytes * P
    if rank == 0:
        record = {"tool": "distml", "P": P, "rows_per_rank": rows, "bytes_per_rank": nbytes,
                  "shuffle_seconds": sh, "alltoall_seconds": a2a,
                  "shuffle_GBps": total / statistics.median(sh) / 1e9,
                  "alltoall_GBps": total / statistics.median(a2a) / 1e9,
                  "loadavg_start": None, "loadavg_end": os.getloadavg(), "machine": _machine(),
                  "command": f"mpiexec -n {P} python " + " ".join(sys.argv)}
        _write(out, record)


# ---- report ----------------------------------------------------------------------


def _write(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(json.dumps(record, indent=2))


def report(results: str, out: str) -> None:
    distml = {r["P"]: r for r in map(_load, sorted(glob.glob(os.path.join(results, "ml_distml_P*.json"))))}
    spark = {r["cores"]: r for r in map(_load, sorted(glob.glob(os.path.join(results, "ml_spark_local*.json"))))}
    lines = ["# distml.ml against Spark MLlib (local mode), same data and hyper-parameters", ""]
    lines += ["Generated by `python bench/bench_ml.py report`; the workloads and what is timed are described in",
              "bench/bench_ml.py's docstring. Fit times are medians of the timed runs listed in the JSON files,",
              "after one untimed warm-up fit (distml: slowest rank). Ratio = Spark time / distml time (above 1:",
              "distml faster). The machine has 2 cores: at P = 4 / local[4] the ranks or threads share them.", ""]
    lines += ["## KMeans (1,000,000 x 20, k = 10, k-means||, at most 20 iterations)", "",
              "| ranks / cores | distml fit | Spark fit | ratio | distml iterations | Spark iterations "
              "| distml inertia | Spark inertia |",
              "|---|---|---|---|---|---|---|---|"]
    for P in sorted(set(distml) | set(spark)):
        a, b = distml.get(P), spark.get(P)
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            P, _s(a, "kmeans"), _s(b, "kmeans"), _ratio(a, b, "kmeans"), _v(a, "kmeans", "n_iter"),
            _v(b, "kmeans", "n_iter"), _v(a, "kmeans", "inertia", "{:.6g}"), _v(b, "kmeans", "inertia", "{:.6g}")))
    lines += ["", "## LogisticRegression (500,000 x 50, two classes, C = 1, at most 100 iterations)", "",
              "| ranks / cores | distml fit | Spark fit | ratio | distml iterations | Spark iterations "
              "| distml accuracy | Spark accuracy | distml objective | Spark objective |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for P in sorted(set(distml) | set(spark)):
        a, b = distml.get(P), spark.get(P)
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            P, _s(a, "logreg"), _s(b, "logreg"), _ratio(a, b, "logreg"), _v(a, "logreg", "n_iter"),
            _v(b, "logreg", "n_iter"), _v(a, "logreg", "accuracy", "{:.5f}"), _v(b, "logreg", "accuracy", "{:.5f}"),
            _v(a, "logreg", "objective", "{:.9f}"), _v(b, "logreg", "objective", "{:.9f}")))
    lines += ["", "distml's reading of the Parquet files with read_shards (not in the fit times):", ""]
    for P, r in sorted(distml.items()):
        lines.append(f"- P = {P}: KMeans data {r['kmeans']['read_seconds']:.2f} s, "
                     f"LogisticRegression data {r['logreg']['read_seconds']:.2f} s")
    lines += ["", "Load average (1, 5, 15 min) before and after each run:", ""]
    for P, r in sorted(distml.items()):
        lines.append(f"- distml P = {P}: {_load_avg(r)}")
    for P, r in sorted(spark.items()):
        lines.append(f"- Spark local[{P}]: {_load_avg(r)}")
    lines += ["", "Commands:", "", "```"]
    lines += [r["command"] for _, r in sorted(distml.items())] + [r["command"] for _, r in sorted(spark.items())]
    lines += ["```", ""]
    with open(out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _s(r, key):
    return "-" if r is None else f"{r[key]['median_seconds']:.2f} s"


def _ratio(a, b, key):
    return "-" if a is None or b is None else f"{b[key]['median_seconds'] / a[key]['median_seconds']:.2f}x"


def _v(r, key, field, fmt="{}"):
    return "-" if r is None else fmt.format(r[key][field])


def _load_avg(r):
    return " / ".join("{:.2f}, {:.2f}, {:.2f}".format(*r[k]) for k in ("loadavg_start", "loadavg_end"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--data", required=True)
    d = sub.add_parser("distml")
    d.add_argument("--data", required=True)
    d.add_argument("--runs", type=int, default=3)
    d.add_argument("--warmup", type=int, default=1)
    d.add_argument("--out", required=True)
    s = sub.add_parser("spark")
    s.add_argument("--data", required=True)
    s.add_argument("--cores", type=int, required=True)
    s.add_argument("--runs", type=int, default=3)
    s.add_argument("--warmup", type=int, default=1)
    s.add_argument("--out", required=True)
    ag = sub.add_parser("als-generate")
    ag.add_argument("--data", required=True)
    ad = sub.add_parser("als-distml")
    ad.add_argument("--data", required=True)
    ad.add_argument("--runs", type=int, default=3)
    ad.add_argument("--warmup", type=int, default=1)
    ad.add_argument("--out", required=True)
    asp = sub.add_parser("als-spark")
    asp.add_argument("--data", required=True)
    asp.add_argument("--cores", type=int, required=True)
    asp.add_argument("--runs", type=int, default=3)
    asp.add_argument("--warmup", type=int, default=1)
    asp.add_argument("--out", required=True)
    sh = sub.add_parser("shuffle")
    sh.add_argument("--rows", type=int, default=1_000_000, help="rows per rank")
    sh.add_argument("--runs", type=int, default=5)
    sh.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    r.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.data)
    elif args.command == "distml":
        run_distml(args.data, args.runs, args.warmup, args.out)
    elif args.command == "spark":
        run_spark(args.data, args.cores, args.runs, args.warmup, args.out)
    elif args.command == "als-generate":
        als_generate(args.data)
    elif args.command == "als-distml":
        run_als_distml(args.data, args.runs, args.warmup, args.out)
    elif args.command == "als-spark":
        run_als_spark(args.data, args.cores, args.runs, args.warmup, args.out)
    elif args.command == "shuffle":
        run_shuffle(args.rows, args.runs, args.out)
    else:
        report(args.results, args.out)


if __name__ == "__main__":
    main()
