"""k-means over rows spread across ranks: Lloyd's iterations with one
allreduce each, and k-means|| initialisation.

Schedule of :meth:`KMeans.fit` (every rank runs the same steps):

1. agree      one allgather of each rank's row/feature counts and
              hyper-parameter hashes (bad input raises on every rank here).
2. tolerance  two small allreduces: the global mean, then the global variance
              per feature; ``tol`` is scaled by the mean variance, as
              scikit-learn does.
3. init       explicit centers, k random rows, or k-means|| (below).
4. Lloyd      per iteration: assign this rank's rows to the nearest center,
              sum them per cluster, and one allreduce of
              [per-cluster sums | per-cluster counts | number of changed labels];
              every rank then computes the same new centers.
              Only when a cluster came out empty: one allgather of every
              rank's farthest rows (see "Empty clusters").
5. finish     labels for the final centers, one allreduce of the inertia.

Stopping, as scikit-learn's Lloyd: after the iteration in which no row
changed cluster ("strict convergence"), or in which the squared center
shift summed over clusters is at most ``tol * mean(per-feature variance)``,
or after ``max_iter`` iterations.

Empty clusters: when clusters come out of an iteration with no rows, they
take the rows farthest from the centers they were assigned to (squared
distance to their old center): the farthest row goes to the empty cluster of
lowest index, the next to the next, ties broken by the lower global row
index. Each such row is moved for the center update only (it counts in its
new cluster and is removed from its old one's sum), as scikit-learn does. A
cluster left with no rows keeps its previous center (also when every row
sits exactly on its center, where relocating is pointless).

k-means|| (Bahmani et al., 2012): one row drawn uniformly at random is the
first candidate; then for ``init_steps`` rounds every row is drawn
independently with probability ``min(1, l * d(x)^2 / phi)``, where ``d(x)``
is its distance to the nearest candidate, ``phi`` the sum of ``d(x)^2`` over
all rows, and ``l = oversampling * n_clusters``; the drawn rows (gathered on
every rank) join the candidates. Each candidate is weighted by the number of
rows nearest to it, and every rank reduces the candidates to
``n_clusters`` centers with weighted k-means++ (greedy, 2 + log k trials per
center) followed by up to 30 weighted Lloyd iterations, keeping the best of
up to 10 such reductions (fewer for large k and d), all seeded by ``seed``.
If the rounds drew fewer than ``n_clusters`` candidates, distinct rows drawn
uniformly at random fill the gap.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _collective as shared

__all__ = ["KMeans"]

# Weighted Lloyd iterations on the k-means|| candidates (as Spark MLlib).
_CANDIDATE_ITERATIONS = 30
# The candidates are reduced to k centers up to this many times from
# different seeds, keeping the lowest weighted cost, within a budget of
# about _REDUCTION_FLOPS multiply-adds for all of them (so large k and d get
# fewer restarts). A single reduction can leave two centers in one blob and
# none in another even when every blob holds candidates.
_REDUCTION_RESTARTS = 10
_REDUCTION_FLOPS = 10 ** 8


# Rows per block in the distance computations: a block of 8192 rows of a few
# dozen features stays in a 2 MiB L2 cache between its two matrix products.
_BLOCK = 8192


def _blocks_nearest(X: np.ndarray, centers: np.ndarray):
    """For each block of rows: (its slice, the rows, the index of each row's
    nearest center, ``|c|^2 - 2 x.c`` for all centers). One matrix product
    per block; ``|x|^2`` is left to callers that need true distances."""
    c_sq = np.einsum("ij,ij->i", centers, centers)
    for part in shared.chunks(X.shape[0], _BLOCK):
        block = X[part]
        d = block @ centers.T
        d *= -2.0
        d += c_sq
        yield part, block, np.argmin(d, axis=1), d


def _nearest(X: np.ndarray, centers: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(index of the nearest center, squared distance to it) for every row,
    the distance clipped at 0."""
    n = X.shape[0]
    labels = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float64)
    for part, block, lab, d in _blocks_nearest(X, centers):
        labels[part] = lab
        best = d[np.arange(lab.size), lab] + np.einsum("ij,ij->i", block, block)
        dist[part] = np.maximum(best, 0.0)
    return labels, dist


def _assign(X: np.ndarray, centers: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(index of the nearest center for every row, (k, d) sums of the rows
    of each cluster): Lloyd's assignment and the sums for its update in one
    pass, each block summed by a one-hot matrix product while in cache."""
    n, k = X.shape[0], centers.shape[0]
    labels = np.empty(n, dtype=np.int64)
    sums = np.zeros((k, X.shape[1]), dtype=np.float64)
    one_hot = np.eye(k)
    for part, block, lab, _ in _blocks_nearest(X, centers):
        labels[part] = lab
        sums += one_hot[lab].T @ block
    return labels, sums


def _cluster_sums(X: np.ndarray, labels: np.ndarray, k: int, weights: np.ndarray) -> np.ndarray:
    """(k, d) sums of the weighted rows of each cluster."""
    d = X.shape[1]
    sums = np.empty((k, d), dtype=np.float64)
    for j in range(d):
        sums[:, j] = np.bincount(labels, weights=X[:, j] * weights, minlength=k)
    return sums


def _exact_inertia(X: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> float:
    total = 0.0
    for part in shared.chunks(X.shape[0]):
        diff = X[part] - centers[labels[part]]
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


def _weighted_kmeans(points: np.ndarray, weights: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k centers for weighted ``points``: the best, by weighted cost, of a
    few reductions (greedy k-means++ seeding, then up to
    _CANDIDATE_ITERATIONS weighted Lloyd iterations). No communication; the
    same on every rank for the same arguments."""
    m, d = points.shape
    if m <= k:
        return points.copy()
    w = weights.astype(np.float64)
    per_run = _CANDIDATE_ITERATIONS * m * k * max(d, 1)
    restarts = max(1, min(_REDUCTION_RESTARTS, _REDUCTION_FLOPS // per_run))
    best, best_cost = None, np.inf
    for run in range(restarts):
        centers = _reduce_once(points, w, k, np.random.default_rng([int(seed), 7, run]))
        _, dist = _nearest(points, centers)
        cost = float(w @ dist)
        if cost < best_cost:
            best, best_cost = centers, cost
    return best


def _reduce_once(points: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    m = points.shape[0]
    trials = 2 + int(math.log(k))
    total_w = w.sum()
    first = int(rng.choice(m, p=w / total_w)) if total_w > 0 else 0
    chosen = [first]
    closest = ((points - points[first]) ** 2).sum(axis=1)
    potential = float((w * closest).sum())
    for _ in range(1, k):
        if potential <= 0.0:
            # Every weighted point sits on a chosen center: take the next
            # unchosen points in order (duplicates of chosen ones).
            rest = np.setdiff1d(np.arange(m), chosen)[: k - len(chosen)]
            chosen.extend(int(i) for i in rest)
            break
        cumulative = np.cumsum(w * closest)
        ids = np.searchsorted(cumulative, rng.random(trials) * cumulative[-1], side="right")
        ids = np.minimum(ids, m - 1)
        dist = ((points[None, :, :] - points[ids][:, None, :]) ** 2).sum(axis=2)
        np.minimum(dist, closest, out=dist)
        pots = (dist * w).sum(axis=1)
        pick = int(np.argmin(pots))
        chosen.append(int(ids[pick]))
        closest = dist[pick]
        potential = float(pots[pick])
    centers = points[chosen].copy()
    for _ in range(_CANDIDATE_ITERATIONS):
        labels, _ = _nearest(points, centers)
        sums = _cluster_sums(points, labels, k, w)
        mass = np.bincount(labels, weights=w, minlength=k)
        filled = mass > 0
        new = centers.copy()
        new[filled] = sums[filled] / mass[filled, None]
        if np.array_equal(new, centers):
            break
        centers = new
    return centers


class KMeans:
    """k-means clustering of rows spread across ranks (Lloyd's algorithm).

    Every rank passes its own rows to :meth:`fit`; the model is the one
    k-means would fit on all ranks' rows together (in rank order), and every
    rank ends with the same centers.

    Args:
        n_clusters: number of clusters k.
        init: "k-means||" (default), "random" (k distinct rows drawn
            uniformly at random), or an array of shape (k, n_features), the
            same on every rank.
        max_iter: maximum number of Lloyd iterations.
        tol: convergence tolerance relative to the data: iterations stop once
            the squared center shift summed over clusters is at most
            ``tol * mean(per-feature variance of the data)``.
        seed: seeds every random choice (init).
        comm: the communicator (default: :func:`distml.init`'s).
        init_steps: k-means|| sampling rounds.
        oversampling: k-means|| draws about ``oversampling * n_clusters`` rows
            per round.

    Attributes (after fit):
        cluster_centers_: (k, n_features) float64, the same on every rank.
        inertia_: sum over all ranks' rows of the squared distance to their
            center.
        n_iter_: Lloyd iterations run.
        labels_: cluster index of each of this rank's rows.
        n_features_in_: number of features.

    Determinism: the result is a function of the concatenated rows and
    ``seed``. The random draws of "random" and k-means|| belong to global
    row indices, so the same rows split across any number of ranks in
    contiguous blocks give the same draws; what may differ between numbers of
    ranks is rounding in sums over all rows (the k-means|| normaliser ``phi``
    and the center sums), so a row whose draw falls within rounding of its
    sampling threshold could be drawn at one number of ranks and not at
    another, and centers agree to rounding rather than bit for bit.
    """

    def __init__(self, n_clusters: int = 8, init: Union[str, np.ndarray] = "k-means||", max_iter: int = 20,
                 tol: float = 1e-4, seed: int = 0, comm: Any = None, *, init_steps: int = 2,
                 oversampling: float = 2.0) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self.comm = comm
        self.init_steps = init_steps
        self.oversampling = oversampling

    # ---- validation -----------------------------------------------------------

    def _check_params(self) -> Optional[np.ndarray]:
        """The explicit init array, if any; InputProblem for bad parameters."""
        k = self.n_clusters
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise shared.InputProblem(f"n_clusters must be a positive int, got {k!r}")
        if not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 1:
            raise shared.InputProblem(f"max_iter must be a positive int, got {self.max_iter!r}")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise shared.InputProblem(f"tol must be a number >= 0, got {self.tol!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise shared.InputProblem(f"seed must be an int >= 0, got {self.seed!r}")
        if not isinstance(self.init_steps, (int, np.integer)) or self.init_steps < 0:
            raise shared.InputProblem(f"init_steps must be an int >= 0, got {self.init_steps!r}")
        if not (isinstance(self.oversampling, (int, float)) and self.oversampling > 0):
            raise shared.InputProblem(f"oversampling must be > 0, got {self.oversampling!r}")
        if isinstance(self.init, str):
            if self.init not in ("k-means||", "random"):
                raise shared.InputProblem(f"init must be 'k-means||', 'random' or an array, got {self.init!r}")
            return None
        init = shared.as_rows(self.init, "init")
        if init.shape[0] != k:
            raise shared.InputProblem(f"init has {init.shape[0]} rows but n_clusters is {k}")
        return init

    def _params_hash(self, init: Optional[np.ndarray]) -> int:
        return shared.crc(int(self.n_clusters), self.init if init is None else init, int(self.max_iter),
                     float(self.tol), int(self.seed), int(self.init_steps), float(self.oversampling))

    # ---- fit --------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> "KMeans":
        """Clusters the rows of all ranks.

        Args:
            X: this rank's rows, shape (n_rows, n_features) (n_rows may be 0).
            y: ignored.

        Returns:
            self.

        Raises:
            ValueError: on every rank, if any rank's X is not 2-D or holds
                NaN/inf, or n_clusters exceeds the total number of rows, or a
                parameter is invalid.
            TypeError: on every rank, if any rank's X is not numeric.
            distml.MismatchError: on every rank, if ranks passed different
                numbers of features or different parameters (init arrays
                included).

        Must be called on all ranks.
        """
        comm = shared.resolve_comm(self.comm)
        problem, init, rows = None, None, np.empty((0, 0))
        try:
            init = self._check_params()
            rows = shared.as_rows(X)
            if init is not None and init.shape[1] != rows.shape[1]:
                raise shared.InputProblem(f"init has {init.shape[1]} features but X has {rows.shape[1]}")
        except shared.InputProblem as e:
            problem = e
        numbers = (rows.shape[0], rows.shape[1], self._params_hash(init) if problem is None else 0)
        info = shared.agree(comm, problem, numbers)
        d = shared.require_same(info[:, 1], "numbers of features")
        shared.require_same(info[:, 2], "KMeans parameters (n_clusters, init, max_iter, tol, seed, ...)")
        n_total, first = shared.row_layout(info[:, 0], comm.rank)
        k = int(self.n_clusters)
        if k > n_total:
            raise ValueError(f"n_clusters={k} is larger than the number of rows over all ranks ({n_total})")
        X = rows

        tol = self._tolerance(comm, X, n_total)
        if init is not None:
            centers = init.copy()
        elif self.init == "random":
            rng = np.random.default_rng([int(self.seed), 1])
            centers = shared.rows_at(comm, X, first, rng.choice(n_total, size=k, replace=False))
        else:
            centers = self._kmeans_parallel(comm, X, first, n_total, k)

        centers, labels, n_iter, strict = self._lloyd(comm, X, first, centers, tol)
        if not strict:
            labels, _ = _assign(X, centers)
        inertia = shared.sum_all(comm, [_exact_inertia(X, centers, labels)])[0]

        self.cluster_centers_ = centers
        self.labels_ = labels.astype(np.int32)
        self.inertia_ = float(inertia)
        self.n_iter_ = n_iter
        self.n_features_in_ = d
        return self

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """:meth:`fit`, then this rank's ``labels_``.

        Args:
            X: this rank's rows, as for :meth:`fit`.
            y: ignored.

        Returns:
            int32 cluster index of each of this rank's rows.

        Raises:
            As :meth:`fit`.

        Must be called on all ranks.
        """
        return self.fit(X).labels_

    def _tolerance(self, comm: Any, X: np.ndarray, n_total: int) -> float:
        if self.tol == 0:
            return 0.0
        d = X.shape[1]
        mean = shared.sum_all(comm, X.sum(axis=0))[:d] / n_total if d else np.zeros(0)
        centred = X - mean
        variance = shared.sum_all(comm, np.einsum("ij,ij->j", centred, centred)) / n_total if d else np.zeros(1)
        return float(np.mean(variance)) * float(self.tol)

    def _kmeans_parallel(self, comm: Any, X: np.ndarray, first: int, n_total: int, k: int) -> np.ndarray:
        seed = int(self.seed)
        ell = float(self.oversampling) * k
        start = min(int(shared.uniform(seed, 0, np.array([0]))[0] * n_total), n_total - 1)
        chosen = [np.array([start], dtype=np.int64)]
        candidates = shared.rows_at(comm, X, first, chosen[0])
        _, closest = _nearest(X, candidates)
        global_rows = np.arange(first, first + X.shape[0], dtype=np.int64)
        for step in range(1, int(self.init_steps) + 1):
            phi = shared.sum_all(comm, [closest.sum()])[0]
            if phi <= 0.0:
                break  # every row sits on a candidate
            drawn = shared.uniform(seed, step, global_rows) < ell * closest / phi
            local = np.empty((int(drawn.sum()), X.shape[1] + 1), dtype=np.float64)
            local[:, 0] = global_rows[drawn]  # exact: indices < 2**53
            local[:, 1:] = X[drawn]
            counts = comm.allgather(np.array([local.shape[0]], dtype=np.int64))
            new = shared.allgather_rows(comm, local, counts)
            if new.shape[0] == 0:
                continue
            chosen.append(new[:, 0].astype(np.int64))
            candidates = np.vstack([candidates, new[:, 1:]])
            _, dist = _nearest(X, new[:, 1:])
            np.minimum(closest, dist, out=closest)
        taken = np.concatenate(chosen)
        if taken.size < k:
            # Too few candidates (tiny data or few rounds): distinct random rows.
            rng = np.random.default_rng([seed, 2])
            pool = rng.choice(n_total, size=min(n_total, k + taken.size), replace=False)
            extra = pool[~np.isin(pool, taken)][: k - taken.size]
            candidates = np.vstack([candidates, shared.rows_at(comm, X, first, extra)])
        labels, _ = _nearest(X, candidates)
        weights = shared.sum_all(comm, np.bincount(labels, minlength=candidates.shape[0]).astype(np.float64))
        return _weighted_kmeans(candidates, weights, k, seed)

    def _lloyd(self, comm: Any, X: np.ndarray, first: int, centers: np.ndarray,
               tol: float) -> Tuple[np.ndarray, np.ndarray, int, bool]:
        k, d = centers.shape
        labels = np.full(X.shape[0], -1, dtype=np.int64)
        buf = np.empty(k * d + k + 1, dtype=np.float64)
        n_iter, strict = 0, False
        for n_iter in range(1, int(self.max_iter) + 1):
            new_labels, sums = _assign(X, centers)
            buf[: k * d] = sums.reshape(-1)
            buf[k * d: k * d + k] = np.bincount(new_labels, minlength=k)
            buf[-1] = np.count_nonzero(new_labels != labels)
            comm.allreduce(buf, out=buf)
            sums = buf[: k * d].reshape(k, d).copy()
            counts = buf[k * d: k * d + k].copy()
            if np.any(counts == 0):
                self._relocate(comm, X, first, new_labels, centers, sums, counts)
            filled = counts > 0
            new_centers = centers.copy()
            new_centers[filled] = sums[filled] / counts[filled, None]
            shift = float(((new_centers - centers) ** 2).sum())
            centers, labels = new_centers, new_labels
            if buf[-1] == 0:
                strict = True
                break
            if shift <= tol:
                break
        return centers, labels, n_iter, strict

    @staticmethod
    def _relocate(comm: Any, X: np.ndarray, first: int, labels: np.ndarray, centers: np.ndarray,
                  sums: np.ndarray, counts: np.ndarray) -> None:
        """Moves the rows farthest from their centers into the empty clusters
        (updating ``sums`` and ``counts`` in place). One allgather; called on
        every rank alike, since ``counts`` is the same everywhere."""
        empty = np.flatnonzero(counts == 0)
        e, d = empty.size, X.shape[1]
        dist = np.einsum("ij,ij->i", X - centers[labels], X - centers[labels]) if X.shape[0] else np.zeros(0)
        # This rank's e farthest rows, farthest first, ties by lower index.
        order = np.lexsort((np.arange(dist.size), -dist))[:e]
        # Record per row: [distance, global index, old label, row...]; padding
        # has distance -1, below any real distance.
        local = np.full((e, d + 3), -1.0)
        local[: order.size, 0] = dist[order]
        local[: order.size, 1] = first + order
        local[: order.size, 2] = labels[order]
        local[: order.size, 3:] = X[order]
        gathered = comm.allgather(local)
        gathered = gathered[gathered[:, 0] >= 0]
        if gathered.shape[0] == 0 or gathered[:, 0].max() == 0.0:
            return  # every row on its center: nothing to gain by moving one
        best = gathered[np.lexsort((gathered[:, 1], -gathered[:, 0]))][:e]
        for cluster, record in zip(empty, best):
            old = int(record[2])
            point = record[3:]
            sums[old] -= point
            counts[old] -= 1
            sums[cluster] = point
            counts[cluster] = 1

    # ---- use ---------------------------------------------------------------------

    def predict(self, X: Any) -> np.ndarray:
        """The nearest center's index for each row of ``X``. Local: no communication.

        Args:
            X: rows of shape (n, n_features).

        Returns:
            int32 array of n cluster indices.

        Raises:
            ValueError: X is not 2-D, holds NaN/inf, or has the wrong number of
                features, or the model is not fitted.
        """
        centers = self._fitted()
        try:
            rows = shared.as_rows(X)
        except shared.InputProblem as e:
            raise e.kind(str(e)) from None
        if rows.shape[1] != centers.shape[1]:
            raise ValueError(f"X has {rows.shape[1]} features, the model {centers.shape[1]}")
        return _nearest(rows, centers)[0].astype(np.int32)

    def _fitted(self) -> np.ndarray:
        centers = getattr(self, "cluster_centers_", None)
        if centers is None:
            raise ValueError("this KMeans is not fitted yet; call fit first")
        return centers
