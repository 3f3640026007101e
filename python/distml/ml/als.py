"""Alternating least squares for collaborative filtering, blocked as in
Spark MLlib's ALS.

Vocabulary. Users and items are *owned* by ranks: rank ``key_hash(id) %
size`` owns a user (or item), holds its factor row and every rating that
names it (its *in-block*, reached by one :func:`distml.data.shuffle` per
side at the start of ``fit``). To update its users, a rank needs the factor
rows of the items its users rated, which other ranks own: the *routes*,
computed once per fit, say which item rows each rank sends to which rank,
so each half-iteration ships exactly those rows, once per pair of ranks,
with one ``alltoallv``. Then every owned user's normal equations are built
from its ratings and the shipped rows and solved with numpy. Items are
updated the same way from the users' rows.

Regularisation follows Spark: the ridge term of a row is ``reg_param``
times its number of ratings (with implicit feedback, of positive ones).
Implicit feedback follows Hu, Koren and Volinsky (2008): rating r becomes a
preference ``p = r > 0`` with confidence ``c = 1 + alpha |r|``, and every
unobserved pair counts as ``p = 0, c = 1`` through the Gram matrix of all
of the other side's rows (one allreduce per half-iteration).

Initial factor rows are a function of (seed, side, id) only, and each row's
equations are built from its ratings in the order of the other side's ids,
so the factors do not depend on the number of ranks (to rounding: batches of
ids, and so BLAS's blocking, and the Gram matrix's sum over ranks differ).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

from ..data import key_hash, shuffle
from ..data.by_key import _mix64
from . import _collective as shared

__all__ = ["ALS", "ALSModel"]

_USER, _ITEM = 1, 2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _initial_factors(seed: int, side: int, ids: np.ndarray, rank: int) -> np.ndarray:
    """Rows of unit length with Gaussian directions, from (seed, side, id, column)."""
    ids = np.asarray(ids, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        base = _mix64(np.array([(int(seed) * 0x100000001B3 + side) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + _GOLDEN)
        row = _mix64(ids * _GOLDEN + base)
        cols = np.arange(2 * rank, dtype=np.uint64)
        z = _mix64(row[:, None] + (cols[None, :] + np.uint64(1)) * _GOLDEN)
    u = ((z >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)
    g = np.sqrt(-2.0 * np.log(u[:, :rank])) * np.cos(2.0 * np.pi * u[:, rank:])  # Box-Muller
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    return g / np.where(norms > 0, norms, 1.0)


def _owner(ids: np.ndarray, P: int) -> np.ndarray:
    return (key_hash(ids) % np.uint64(P)).astype(np.int64) if P > 1 else np.zeros(ids.shape[0], np.int64)


class _Side:
    """One side's in-block on this rank: its owned ids, its ratings sorted by
    (own id, other id), and the routes for the other side's rows."""

    def __init__(self, comm: Any, own: np.ndarray, other: np.ndarray, ratings: np.ndarray) -> None:
        P = comm.size
        order = np.lexsort((other, own))
        own, other, ratings = own[order], other[order], ratings[order]
        self.ids, self.row_of = np.unique(own, return_inverse=True)  # owned ids, sorted
        self.starts = np.flatnonzero(np.r_[True, own[1:] != own[:-1]]) if own.size else np.zeros(0, np.int64)
        self.ratings = ratings
        # The other side's rows this rank needs, requested from their owners
        # in (owner, id) order; they arrive in that order.
        needed = np.unique(other)
        owners = _owner(needed, P)
        by_owner = np.argsort(owners, kind="stable")
        self.requested = needed[by_owner]
        self.requested_counts = np.bincount(owners, minlength=P)
        # Where each rating's other-side row will be in the arriving array.
        pos_in_needed = np.searchsorted(needed, other)
        where = np.empty(needed.size, np.int64)
        where[by_owner] = np.arange(needed.size)
        self.src = where[pos_in_needed]

    def route(self, comm: Any, other_side: "_Side") -> None:
        """Tells every owner which of its rows this rank needs; the other
        side's object learns which of its rows to send where. Collective."""
        asked, counts = comm.alltoallv(self.requested, self.requested_counts)
        other_side.send_rows = np.searchsorted(other_side.ids, asked)
        other_side.send_counts = counts


def _solve(side: _Side, rows: np.ndarray, rank: int, reg: float, implicit: bool, alpha: float,
           gram: Optional[np.ndarray]) -> np.ndarray:
    """New factor rows for the owned ids of ``side`` from the other side's
    ``rows`` (aligned with side.src).

    Ids are taken in order of their number of ratings, in batches whose
    ratings are laid out as (ids x longest x rank) with zero rows as padding
    (little of it: neighbours in that order have similar counts), so each
    batch's normal equations are one batched matrix product and one batched
    solve."""
    n = side.ids.size
    out = np.empty((n, rank))
    if n == 0:
        return out
    r = side.ratings
    if implicit:
        c1 = alpha * np.abs(r)
        weight, target = c1, np.where(r > 0, 1.0 + c1, 0.0)
        counted = (r > 0).astype(np.float64)
    else:
        weight, target, counted = np.ones_like(r), r, np.ones_like(r)
    bounds = np.r_[side.starts, r.size]
    lengths = np.diff(bounds)
    nreg = np.add.reduceat(counted, side.starts) if r.size else np.zeros(n)
    by_length = np.argsort(lengths, kind="stable")
    budget = max(1 << 16, (1 << 21) // rank)  # padded ratings per batch
    eye = np.eye(rank)
    first = 0
    while first < n:
        longest = int(lengths[by_length[min(n - 1, first)]])
        # Lengths grow along by_length: the batch's last id is its longest.
        count = max(1, budget // max(longest, 1))
        last = min(n, first + count)
        while last - first > 1 and int(lengths[by_length[last - 1]]) * (last - first) > budget:
            last = first + max(1, (last - first) // 2)
        ids = by_length[first:last]
        width = int(lengths[ids].max())
        offs = np.arange(width)
        valid = offs[None, :] < lengths[ids][:, None]
        at = np.where(valid, bounds[ids][:, None] + offs[None, :], 0)
        f = rows[side.src[at]] * valid[:, :, None]
        A = np.matmul((f * weight[at][:, :, None]).transpose(0, 2, 1), f)
        b = np.einsum("glk,gl->gk", f, target[at] * valid)
        if gram is not None:
            A += gram
        A += (reg * nreg[ids])[:, None, None] * eye
        out[ids] = np.linalg.solve(A, b[:, :, None])[:, :, 0]
        first = last
    return out


class ALSModel:
    """A fitted ALS model: every rank holds every factor row (gathered at the
    end of ``fit``), so its methods are local (no communication)."""

    def __init__(self, user_ids: np.ndarray, user_rows: np.ndarray, item_ids: np.ndarray, item_rows: np.ndarray,
                 rank: int) -> None:
        self._uids, self._U = user_ids, user_rows
        self._iids, self._V = item_ids, item_rows
        self.rank = rank

    def user_factors(self) -> Tuple[np.ndarray, np.ndarray]:
        """(user ids sorted, their factor rows (n_users x rank)). Local."""
        return self._uids, self._U

    def item_factors(self) -> Tuple[np.ndarray, np.ndarray]:
        """(item ids sorted, their factor rows (n_items x rank)). Local."""
        return self._iids, self._V

    @staticmethod
    def _lookup(ids: np.ndarray, known: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(known, ids)
        pos = np.minimum(pos, max(known.size - 1, 0))
        found = (known.size > 0) & (known[pos] == ids) if known.size else np.zeros(ids.shape, bool)
        return pos, found

    def predict(self, user_ids: Any, item_ids: Any) -> np.ndarray:
        """Predicted ratings (dot products of the factor rows) of each
        (user, item) pair; NaN where the user or item was not in the
        training data (Spark's cold-start strategy "nan"). Local.

        Args:
            user_ids, item_ids: integer arrays of equal length.

        Returns:
            A float64 array.

        Raises:
            ValueError: lengths differ.
        """
        u, i = np.asarray(user_ids).ravel(), np.asarray(item_ids).ravel()
        if u.shape != i.shape:
            raise ValueError(f"user_ids and item_ids differ in length ({u.size} and {i.size})")
        pu, fu = self._lookup(u, self._uids)
        pi, fi = self._lookup(i, self._iids)
        out = np.full(u.shape, np.nan)
        ok = fu & fi
        out[ok] = np.einsum("ij,ij->i", self._U[pu[ok]], self._V[pi[ok]])
        return out

    def recommend_for_users(self, user_ids: Any, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` items of highest predicted rating for each user. Local.

        Args:
            user_ids: integer array of users.
            k: items per user (at most the number of items).

        Returns:
            ``(items, scores)``, both of shape (len(user_ids), k), best first;
            rows of unknown users are -1 and NaN.

        Raises:
            ValueError: k is not a positive int.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, not {k!r}")
        u = np.asarray(user_ids).ravel()
        k = min(int(k), self._iids.size)
        pu, fu = self._lookup(u, self._uids)
        items = np.full((u.size, k), -1, np.int64)
        scores = np.full((u.size, k), np.nan)
        for lo in range(0, u.size, 1024):
            sel = np.flatnonzero(fu[lo:lo + 1024]) + lo
            if sel.size == 0 or k == 0:
                continue
            s = self._U[pu[sel]] @ self._V.T
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
            ts = np.take_along_axis(s, top, axis=1)
            # Best first; ties by item id.
            order = np.lexsort((self._iids[top], -ts), axis=1) if ts.size else top
            top = np.take_along_axis(top, order, axis=1)
            items[sel] = self._iids[top]
            scores[sel] = np.take_along_axis(s, top, axis=1)
        return items, scores


class ALS:
    """Matrix factorisation by alternating least squares (Spark MLlib's ALS).

    Args:
        rank: number of latent factors.
        max_iter: iterations (each updates items, then users).
        reg_param: regularisation; a row's ridge term is ``reg_param`` times
            its number of ratings (positive ratings, with implicit feedback).
        implicit_prefs: treat ratings as implicit feedback (Hu, Koren and
            Volinsky 2008) instead of explicit ratings.
        alpha: confidence scale of implicit feedback (``c = 1 + alpha |r|``).
        seed: initial factors are a function of (seed, id).
        comm: a :class:`distml.Communicator` (default: ``distml.init()``'s).
    """

    def __init__(self, rank: int = 10, max_iter: int = 10, reg_param: float = 0.1, implicit_prefs: bool = False,
                 alpha: float = 1.0, seed: int = 0, comm: Any = None) -> None:
        self.rank = rank
        self.max_iter = max_iter
        self.reg_param = reg_param
        self.implicit_prefs = implicit_prefs
        self.alpha = alpha
        self.seed = seed
        self.comm = comm
        self.iteration_seconds_: list = []

    def _check(self) -> None:
        for name in ("rank", "max_iter", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise shared.InputProblem(f"{name} must be an int, not {v!r}")
        if self.rank < 1 or self.max_iter < 0:
            raise shared.InputProblem(f"rank must be >= 1 and max_iter >= 0 (got {self.rank}, {self.max_iter})")
        for name in ("reg_param", "alpha"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise shared.InputProblem(f"{name} must be a finite number >= 0, not {v!r}")

    def fit(self, user_ids: Any, item_ids: Any, ratings: Any) -> ALSModel:
        """Fits the factors to every rank's ratings.

        Args:
            user_ids, item_ids: this rank's ratings' integer ids (any ranks
                may hold any ratings, none included); each (user, item) pair
                should appear once over all ranks.
            ratings: their float values.

        Returns:
            An :class:`ALSModel` (the same on every rank).

        Raises:
            ValueError: arrays of different lengths, non-integer ids, ratings
                not finite, bad hyper-parameters, or hyper-parameters that
                differ between ranks (raised on every rank).

        Must be called on all ranks.
        """
        import time

        comm = shared.resolve_comm(self.comm)
        problem = None
        try:
            self._check()
            u = np.asarray(user_ids)
            i = np.asarray(item_ids)
            r = np.asarray(ratings, dtype=np.float64)
            if not (u.ndim == i.ndim == r.ndim == 1 and u.shape == i.shape == r.shape):
                raise shared.InputProblem(
                    f"user_ids, item_ids and ratings must be 1-D of one length (shapes {u.shape}, {i.shape}, {r.shape})")
            if u.size and (u.dtype.kind not in "iu" or i.dtype.kind not in "iu"):
                raise shared.InputProblem("user_ids and item_ids must be integers")
            if not np.isfinite(r).all():
                raise shared.InputProblem("ratings contain NaN or infinity")
            u, i = u.astype(np.int64), i.astype(np.int64)
        except (shared.InputProblem, TypeError, ValueError) as e:
            problem = e
        params = shared.crc(int(self.rank) if problem is None else 0, int(self.max_iter) if problem is None else 0,
                            float(self.reg_param) if problem is None else 0, bool(self.implicit_prefs),
                            float(self.alpha) if problem is None else 0, int(self.seed) if problem is None else 0)
        info = shared.agree(comm, problem, [params])
        shared.require_same(info[:, 0], "ALS parameters (rank, max_iter, reg_param, implicit_prefs, alpha, seed)")
        k, reg, alpha, implicit = int(self.rank), float(self.reg_param), float(self.alpha), bool(self.implicit_prefs)

        # In-blocks: every rating at the owner of its user, and at the owner of its item.
        uu, ui, ur = shuffle(u, i, r, by="hash", comm=comm)
        ii, iu, ir = shuffle(i, u, r, by="hash", comm=comm)
        users = _Side(comm, uu, ui, ur)
        items = _Side(comm, ii, iu, ir)
        users.route(comm, items)   # which item rows go where, for the user updates
        items.route(comm, users)   # which user rows go where, for the item updates
        U = _initial_factors(self.seed, _USER, users.ids, k)
        V = _initial_factors(self.seed, _ITEM, items.ids, k)

        def ship(rows: np.ndarray, sender: _Side) -> np.ndarray:
            got, _ = comm.alltoallv(np.ascontiguousarray(rows[sender.send_rows]), sender.send_counts)
            return got

        def gram(rows: np.ndarray) -> Optional[np.ndarray]:
            if not implicit:
                return None
            g = rows.T @ rows
            return comm.allreduce(g, out=g)

        self.iteration_seconds_ = []
        for _ in range(int(self.max_iter)):
            t0 = time.perf_counter()
            V = _solve(items, ship(U, users), k, reg, implicit, alpha, gram(U))
            U = _solve(users, ship(V, items), k, reg, implicit, alpha, gram(V))
            self.iteration_seconds_.append(time.perf_counter() - t0)

        def gathered(ids: np.ndarray, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
            all_ids = comm.allgatherv(ids)
            all_rows = comm.allgatherv(np.ascontiguousarray(rows.reshape(-1, k)))
            order = np.argsort(all_ids, kind="stable")
            return all_ids[order], all_rows[order]

        return ALSModel(*gathered(users.ids, U), *gathered(items.ids, V), rank=k)
