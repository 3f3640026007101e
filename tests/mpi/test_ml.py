"""distml.ml at any world size, against scikit-learn on the concatenated rows.

The global data set of every test is generated identically on every rank;
rank r of P takes block r of ``numpy.array_split`` (contiguous, so the
global row order is the concatenation in rank order) and scikit-learn, run
on every rank with no communication, fits the whole set as the oracle.

Tolerances:
- KMeans with an explicit init runs the same Lloyd iterations as
  scikit-learn's ``algorithm="lloyd"``; only the order of floating-point sums
  differs, so centers agree within 1e-9 and the iteration counts exactly.
- LinearRegression solves the same normal equations as scikit-learn's
  least squares (well-conditioned data): 1e-9.
- LogisticRegression: both run scipy's L-BFGS-B with the same stopping
  rules on the objective averaged over rows: the largest projected gradient
  component at most tol = 1e-8, or an iteration's relative reduction of the
  objective at most 64 machine epsilons. The test requires L-BFGS to report
  convergence by one of them; when it reports the gradient rule, it
  evaluates the gradient itself (plain numpy) at distml's solution and
  requires it within tol (plus 1e-12 for the different order of sums). It
  bounds the objective gap to scikit-learn's solution by convexity
  (f(a) - f(b) <= grad f(a) . (a - b)), and requires probabilities within
  1e-4 of scikit-learn's.

All collectives of a test run before any assertion (see conftest.py).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from mpi4py import MPI

import distml
from distml.ml import KMeans, LinearRegression, LogisticRegression
from mpi_helpers import Checker, call

sklearn = pytest.importorskip("sklearn")
threadpoolctl = pytest.importorskip("threadpoolctl")
from sklearn import cluster, linear_model  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    # The ranks already fill the cores; BLAS thread pools per rank would
    # compete with each other and with the collectives' polling.
    with threadpoolctl.threadpool_limits(1):
        yield


def _mine(a: np.ndarray, comm) -> np.ndarray:
    return np.array_split(a, comm.size)[comm.rank]


def _identical_everywhere(comm, arrays) -> bool:
    """Whether ``arrays`` hold the same bytes on every rank (collective)."""
    flat = np.concatenate([np.ascontiguousarray(a, dtype=np.float64).reshape(-1) for a in arrays])
    gathered = comm.allgather(flat).reshape(comm.size, -1)
    return bool(np.all(gathered.view(np.uint64) == gathered[0].view(np.uint64)))


def _blobs(n=403, d=5, k=4, spread=4.0, std=1.5, seed=11):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * spread
    X = centers[rng.integers(0, k, size=n)] + rng.normal(size=(n, d)) * std
    return X, centers


# ---- KMeans ------------------------------------------------------------------

KMEANS_CASES = {
    "tol": dict(tol=1e-4, max_iter=300),
    "strict": dict(tol=0.0, max_iter=300),
    "max_iter": dict(tol=0.0, max_iter=2),
    "empty_cluster": dict(tol=1e-4, max_iter=300, far=True),
    # Overlapping blobs converge slowly, in small steps, so a tol relative to
    # the data's variance (about 2e4 here) stops Lloyd long before the labels
    # settle; the test checks that scikit-learn did stop early.
    "tol_relative": dict(tol=1e-2, max_iter=300, data=dict(spread=1.0, std=1.0, scale=100.0)),
}


@pytest.mark.parametrize("case", list(KMEANS_CASES))
def test_kmeans_explicit_init_matches_sklearn(comm_default, case):
    comm = comm_default
    params = dict(KMEANS_CASES[case])
    far = params.pop("far", False)
    data = dict(params.pop("data", {}))
    scale = data.pop("scale", 1.0)
    X, _ = _blobs(**data)
    X *= scale
    init = X[[0, 1, 2, 3]].copy()
    if far:
        init[3] = 100.0  # no row is nearest to it: empty after the first assignment
    ours = call(lambda: KMeans(4, init=init, comm=comm, **params).fit(_mine(X, comm)))
    same = call(lambda: _identical_everywhere(comm, [ours.cluster_centers_, [ours.inertia_, ours.n_iter_]]))

    ref = cluster.KMeans(4, init=init, n_init=1, algorithm="lloyd", **params).fit(X)
    check = Checker(comm.size)
    check.expect_true("fit", not isinstance(ours, BaseException) or ours)
    if not isinstance(ours, BaseException):
        diff = np.abs(ours.cluster_centers_ - ref.cluster_centers_).max()
        check.expect_true(f"centers within 1e-9 (max diff {diff:.3g})", diff <= 1e-9)
        check.expect_true(f"n_iter {ours.n_iter_} == {ref.n_iter_}", ours.n_iter_ == ref.n_iter_)
        check.expect_true(f"inertia {ours.inertia_!r} vs {ref.inertia_!r}",
                          abs(ours.inertia_ - ref.inertia_) <= 1e-9 * ref.inertia_)
        check.expect("labels_ of this rank", ours.labels_, _mine(ref.labels_, comm).astype(np.int32))
        check.expect("predict", ours.predict(X), ref.predict(X).astype(np.int32))
        if far:
            check.expect_true("the empty cluster was relocated", np.abs(ours.cluster_centers_).max() < 50)
        if case == "tol_relative":
            settled = cluster.KMeans(4, init=init, n_init=1, algorithm="lloyd", tol=0.0, max_iter=300).fit(X)
            check.expect_true(f"stopped by tol ({ref.n_iter_} < {settled.n_iter_} iterations)",
                              ref.n_iter_ < settled.n_iter_)
    check.expect_true("same model on every rank", same)
    check.verify()


def test_kmeans_init_independent_of_world_size(comm_default):
    """k-means|| and "random" pick the same rows at any P: the P-rank fit
    equals a one-process fit of the concatenated rows (on COMM_SELF)."""
    comm = comm_default
    X, true = _blobs(n=600, d=4, k=6, spread=10.0, std=0.3, seed=3)
    results = {}
    for init in ("k-means||", "random"):
        results[init] = call(lambda: KMeans(6, init=init, seed=5, comm=comm).fit(_mine(X, comm)))
    same = call(lambda: _identical_everywhere(comm, [results["k-means||"].cluster_centers_]))
    with distml.Communicator(MPI.COMM_SELF) as alone:
        oracle = {init: KMeans(6, init=init, seed=5, comm=alone).fit(X) for init in results}

    check = Checker(comm.size)
    for init, ours in results.items():
        if isinstance(ours, BaseException):
            check.fail(init, f"raised {ours!r}")
            continue
        diff = np.abs(ours.cluster_centers_ - oracle[init].cluster_centers_).max()
        check.expect_true(f"{init}: centers as one process (max diff {diff:.3g})", diff <= 1e-9)
        check.expect_true(f"{init}: n_iter as one process", ours.n_iter_ == oracle[init].n_iter_)
    ours = results["k-means||"]
    if not isinstance(ours, BaseException):
        # Well-separated blobs (std 0.3, centers about 10 apart): k-means||
        # must find every blob, not merge two.
        nearest = np.sqrt(((true[:, None, :] - ours.cluster_centers_[None]) ** 2).sum(-1)).min(axis=1)
        check.expect_true(f"k-means|| finds every blob (distances {np.round(nearest, 3)})", nearest.max() < 0.5)
    check.expect_true("same model on every rank", same)
    check.verify()


def test_kmeans_seed_changes_draws(comm_default):
    comm = comm_default
    X, _ = _blobs(n=300, d=3, k=8, spread=1.0, std=1.0, seed=4)
    a = call(lambda: KMeans(8, init="random", seed=1, max_iter=1, comm=comm).fit(_mine(X, comm)))
    b = call(lambda: KMeans(8, init="random", seed=2, max_iter=1, comm=comm).fit(_mine(X, comm)))
    check = Checker(comm.size)
    check.expect_true("both fit", not isinstance(a, BaseException) and not isinstance(b, BaseException))
    if not isinstance(a, BaseException) and not isinstance(b, BaseException):
        check.expect_true("different seeds, different centers",
                          not np.array_equal(a.cluster_centers_, b.cluster_centers_))
    check.verify()


def _bad_inputs(comm, X, rank_bad):
    """(label, callable, expected exception) for inputs bad on one rank."""
    last = comm.size - 1
    mine = _mine(X, comm)
    nan = mine.copy()
    if comm.rank == last and nan.size:
        nan[0, 0] = np.nan
    wide = np.hstack([mine, mine[:, :1]]) if comm.rank == 0 else mine
    flat = mine.reshape(-1) if comm.rank == last else mine
    cases = [
        ("NaN on the last rank", lambda: KMeans(3, comm=comm).fit(nan), ValueError),
        ("1-D X on the last rank", lambda: KMeans(3, comm=comm).fit(flat), ValueError),
        ("n_clusters > rows", lambda: KMeans(X.shape[0] + 1, comm=comm).fit(mine), ValueError),
        ("bad parameter on rank 0", lambda: KMeans(3 if comm.rank else 0, comm=comm).fit(mine), ValueError),
    ]
    if comm.size > 1:
        init = X[:3] + (comm.rank == last)
        cases += [
            ("feature counts differ", lambda: KMeans(3, comm=comm).fit(wide), distml.MismatchError),
            ("init arrays differ", lambda: KMeans(3, init=init, comm=comm).fit(mine), distml.MismatchError),
        ]
    return cases


def test_bad_input_raises_on_every_rank(comm_default):
    comm = comm_default
    X, _ = _blobs(n=40, d=3, k=3)
    mine = _mine(X, comm)
    y = X @ np.arange(1.0, 4.0)
    labels = (X[:, 0] > 0).astype(int)
    last = comm.size - 1
    cases = _bad_inputs(comm, X, last)
    cases += [
        ("y too short on the last rank",
         lambda: LinearRegression(comm=comm).fit(mine, _mine(y, comm)[: -1 if comm.rank == last else None]),
         ValueError),
        ("one class over all ranks", lambda: LogisticRegression(comm=comm).fit(mine, np.zeros(len(mine), int)),
         ValueError),
        ("NaN label on rank 0",
         lambda: LogisticRegression(comm=comm).fit(mine, np.where(comm.rank == 0, np.nan, _mine(labels, comm) * 1.0)),
         ValueError),
    ]
    if comm.size > 1:
        kinds = _mine(labels, comm).astype(str) if comm.rank == 0 else _mine(labels, comm)
        cases.append(("labels of different kinds", lambda: LogisticRegression(comm=comm).fit(mine, kinds),
                      distml.MismatchError))
    outcomes = [(label, call(fn), exc) for label, fn, exc in cases]
    # The communicator stays usable after all of them.
    after = call(lambda: KMeans(3, init=X[:3], comm=comm).fit(mine).n_iter_)

    check = Checker(comm.size)
    for label, got, exc in outcomes:
        check.expect_raises(label, got, exc)
        if isinstance(got, exc) and label not in ("n_clusters > rows", "one class over all ranks"):
            check.expect_true(f"{label}: message names a rank ({got})", "rank " in str(got))
    check.expect_true("a good fit after the errors", isinstance(after, int))
    check.verify()


# ---- LinearRegression --------------------------------------------------------


def _regression(n=257, d=6, targets=None, seed=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + rng.normal(size=d) * 3
    W = rng.normal(size=(d,) if targets is None else (d, targets))
    y = X @ W + 1.5 + rng.normal(size=y_shape(n, targets)) * 0.3
    return X, y


def y_shape(n, targets):
    return (n,) if targets is None else (n, targets)


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("alpha", [0.0, 3.0])
@pytest.mark.parametrize("targets", [None, 3])
def test_linear_regression_matches_sklearn(comm_default, fit_intercept, alpha, targets):
    comm = comm_default
    X, y = _regression(targets=targets)
    # Rank 0 holds no rows when there are several ranks: empty shards count too.
    rows = np.arange(len(X))
    split = [rows[:0]] + np.array_split(rows, comm.size - 1) if comm.size > 1 else [rows]
    idx = np.asarray(split[comm.rank], dtype=np.int64)
    ours = call(lambda: LinearRegression(fit_intercept=fit_intercept, alpha=alpha, comm=comm).fit(X[idx], y[idx]))
    score = call(lambda: ours.score(X[idx], y[idx]))
    same = call(lambda: _identical_everywhere(comm, [ours.coef_, np.atleast_1d(ours.intercept_)]))

    if alpha == 0:
        ref = linear_model.LinearRegression(fit_intercept=fit_intercept).fit(X, y)
    else:
        ref = linear_model.Ridge(alpha=alpha, fit_intercept=fit_intercept, solver="cholesky").fit(X, y)
    check = Checker(comm.size)
    check.expect_true("fit", not isinstance(ours, BaseException) or ours)
    if not isinstance(ours, BaseException):
        scale = np.abs(ref.coef_).max()
        check.expect_true(f"coef within 1e-9 ({np.abs(ours.coef_ - ref.coef_).max():.3g})",
                          ours.coef_.shape == ref.coef_.shape and np.abs(ours.coef_ - ref.coef_).max() <= 1e-9 * scale)
        check.expect_true(f"intercept within 1e-9 ({ours.intercept_} vs {ref.intercept_})",
                          np.allclose(ours.intercept_, ref.intercept_, rtol=1e-9, atol=1e-9))
        check.expect_true(f"score {score} vs {ref.score(X, y)}",
                          not isinstance(score, BaseException) and abs(score - ref.score(X, y)) <= 1e-12)
        check.expect_true("predict within 1e-9", np.allclose(ours.predict(X), ref.predict(X), rtol=1e-9, atol=1e-9))
    check.expect_true("same model on every rank", same)
    check.verify()


# ---- LogisticRegression ------------------------------------------------------

TOL = 1e-8


def _objective(X, index, W, b, C):
    """(objective averaged over rows, max |gradient|), scikit-learn's
    convention, in plain numpy; index: class index of each row."""
    n = X.shape[0]
    if W.shape[0] == 1:
        t = (index == 1).astype(float)
        z = X @ W[0] + b[0]
        f = np.sum(np.logaddexp(0.0, z) - t * z)
        dz = 0.5 * (1.0 + np.tanh(0.5 * z)) - t
        gW, gb = (dz @ X)[None], np.array([dz.sum()])
    else:
        Z = X @ W.T + b
        lse = np.logaddexp.reduce(Z, axis=1)
        f = np.sum(lse - Z[np.arange(n), index])
        P = np.exp(Z - lse[:, None])
        P[np.arange(n), index] -= 1.0
        gW, gb = P.T @ X, P.sum(axis=0)
    f = f / n + 0.5 / (C * n) * np.sum(W * W)
    grad = np.concatenate([(gW / n + W / (C * n)).ravel(), gb / n])
    return f, grad


@pytest.mark.parametrize("classes", ["binary", "multinomial"])
def test_logistic_regression_matches_sklearn_on_digits(comm_default, classes, monkeypatch):
    comm = comm_default
    import scipy.optimize

    runs = []
    minimize = scipy.optimize.minimize

    def recording(*args, **kwargs):
        result = minimize(*args, **kwargs)
        runs.append(result)
        return result

    monkeypatch.setattr(scipy.optimize, "minimize", recording)
    digits = load_digits()
    keep = np.isin(digits.target, [3, 8]) if classes == "binary" else np.ones(len(digits.target), bool)
    X, y = digits.data[keep] / 16.0, digits.target[keep]
    # Sorted by class, so ranks see different subsets of the classes.
    order = np.argsort(y, kind="stable")
    X, y = X[order], y[order]
    C = 1.0
    ours = call(lambda: LogisticRegression(C=C, tol=TOL, max_iter=2000, comm=comm).fit(_mine(X, comm), _mine(y, comm)))
    score = call(lambda: ours.score(_mine(X, comm), _mine(y, comm)))
    same = call(lambda: _identical_everywhere(comm, [ours.coef_, ours.intercept_]))

    monkeypatch.undo()
    ref = linear_model.LogisticRegression(C=C, tol=TOL, max_iter=2000).fit(X, y)
    check = Checker(comm.size)
    check.expect_true("fit", not isinstance(ours, BaseException) or ours)
    if not isinstance(ours, BaseException):
        result = runs[-1]
        check.expect_true(f"L-BFGS converged ({result.message})", result.status == 0)
        by_gradient = "GRADIENT" in str(result.message).upper()
        check.expect_true(f"coef_ shape {ours.coef_.shape}", ours.coef_.shape == ref.coef_.shape)
        index = np.searchsorted(ref.classes_, y)
        f_ours, g_ours = _objective(X, index, ours.coef_, ours.intercept_, C)
        f_ref, _ = _objective(X, index, ref.coef_, ref.intercept_, C)
        if by_gradient:
            check.expect_true(f"gradient at distml's solution within tol ({np.abs(g_ours).max():.3g})",
                              np.abs(g_ours).max() <= TOL + 1e-12)
        step = np.concatenate([(ours.coef_ - ref.coef_).ravel(), ours.intercept_ - ref.intercept_])
        bound = abs(float(g_ours @ step)) + 1e-14
        check.expect_true(f"objective gap {f_ours - f_ref:.3g} within the convexity bound {bound:.3g}",
                          f_ours - f_ref <= bound)
        gap = np.abs(ours.predict_proba(X) - ref.predict_proba(X)).max()
        check.expect_true(f"predict_proba within 1e-4 ({gap:.3g})", gap <= 1e-4)
        check.expect_true(f"score {score} vs {ref.score(X, y)}",
                          not isinstance(score, BaseException) and abs(score - ref.score(X, y)) <= 1.0 / len(y))
        check.expect_true(f"n_iter_ {ours.n_iter_} within max_iter", 0 < ours.n_iter_ < 2000)
    check.expect_true("same model on every rank", same)
    check.verify()


def test_logistic_regression_string_labels(comm_default):
    """String labels that sort like the numeric ones give the same model, bit
    for bit, and predictions in the strings."""
    comm = comm_default
    digits = load_digits()
    keep = np.isin(digits.target, [1, 7, 9])
    X, y = digits.data[keep] / 16.0, digits.target[keep]
    names = np.char.add("digit-", y.astype(str))
    numeric = call(lambda: LogisticRegression(tol=1e-6, max_iter=500, comm=comm).fit(_mine(X, comm), _mine(y, comm)))
    text = call(lambda: LogisticRegression(tol=1e-6, max_iter=500, comm=comm).fit(_mine(X, comm), _mine(names, comm)))
    check = Checker(comm.size)
    check.expect_true("both fit", not isinstance(numeric, BaseException) and not isinstance(text, BaseException))
    if not isinstance(numeric, BaseException) and not isinstance(text, BaseException):
        check.expect_true(f"classes_ {text.classes_}", list(text.classes_) == ["digit-1", "digit-7", "digit-9"])
        check.expect("coef_", text.coef_, numeric.coef_, mode="bits")
        check.expect("intercept_", text.intercept_, numeric.intercept_, mode="bits")
        check.expect_true("predict", list(text.predict(X)) == ["digit-%d" % v for v in numeric.predict(X)])
    check.verify()


def test_missing_scipy_on_one_rank_raises_everywhere(comm_default, monkeypatch):
    comm = comm_default
    X, _ = _blobs(n=40, d=3, k=2)
    y = (X[:, 0] > 0).astype(int)
    if comm.rank == comm.size - 1:
        monkeypatch.setitem(sys.modules, "scipy", None)
    got = call(lambda: LogisticRegression(comm=comm).fit(_mine(X, comm), _mine(y, comm)))
    monkeypatch.undo()
    check = Checker(comm.size)
    check.expect_raises("ImportError on every rank", got, ImportError)
    check.expect_true(f"names the extra ({got})", "distml[ml]" in str(got))
    check.verify()
