"""distml.ml.ALS: factors independent of the number of ranks (against a fit
on one rank, 1e-8), accuracy on generated low-rank data, implicit feedback
against a popularity ranking, and input problems raised on every rank."""

from __future__ import annotations

import numpy as np
import pytest

import distml
from distml.ml import ALS
from mpi_helpers import Checker, call


def low_rank(n_users=400, n_items=300, r=5, density=0.5, sigma=0.1, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(n_users, r))
    V = rng.normal(size=(n_items, r))
    users, items = np.nonzero(rng.random((n_users, n_items)) < density)
    # Ids that are not 0..n-1, so nothing relies on dense ids.
    users, items = users * 7 + 3, items * 11 - 50
    values = (U[(users - 3) // 7] * V[(items + 50) // 11]).sum(axis=1) + sigma * rng.normal(size=users.size)
    test = rng.random(users.size) < 0.1
    return users, items, values, test


@pytest.fixture(scope="module")
def single():
    from mpi4py import MPI

    c = distml.Communicator(MPI.COMM_SELF)
    yield c
    c.free()


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("comm", ["seg_default"], indirect=True)
def test_factors_do_not_depend_on_ranks(comm, single, implicit):
    P, rank = comm.size, comm.rank
    check = Checker(P)
    users, items, values, _ = low_rank(n_users=120, n_items=90, density=0.3, seed=1)
    if implicit:
        values = np.round(np.abs(values))  # counts, zeros included
    kw = dict(rank=4, max_iter=6, reg_param=0.05, implicit_prefs=implicit, alpha=2.0, seed=3)
    # Ratings dealt unevenly; rank 0 holds none when P > 1.
    owner = (np.arange(users.size) * 7919) % max(P - 1, 1) + (1 if P > 1 else 0)
    mine = owner == rank
    model = call(lambda: ALS(comm=comm, **kw).fit(users[mine], items[mine], values[mine]))
    oracle = ALS(comm=single, **kw).fit(users, items, values)
    if isinstance(model, BaseException):
        check.expect("fit", model, None)
    else:
        for what in ("user_factors", "item_factors"):
            ids, rows = getattr(model, what)()
            want_ids, want_rows = getattr(oracle, what)()
            check.expect(f"{what} ids", ids, want_ids)
            check.expect_true(f"{what} within 1e-8 of one rank's (max diff {np.abs(rows - want_rows).max():.2e})",
                              rows.shape == want_rows.shape and np.allclose(rows, want_rows, rtol=0, atol=1e-8))
    check.verify()


@pytest.mark.parametrize("comm", ["seg_default"], indirect=True)
def test_explicit_rmse_near_noise(comm):
    P, rank = comm.size, comm.rank
    check = Checker(P)
    sigma = 0.1
    users, items, values, test = low_rank(sigma=sigma)
    train = np.flatnonzero(~test)[rank::P]
    model = ALS(rank=5, max_iter=15, reg_param=0.001, comm=comm).fit(users[train], items[train], values[train])
    pred = model.predict(users[test], items[test])
    rmse = float(np.sqrt(np.mean((pred - values[test]) ** 2)))
    check.expect_true(f"test RMSE {rmse:.4f} within 10% of sigma {sigma}", abs(rmse - sigma) <= 0.1 * sigma)
    check.expect_true("unknown ids predict NaN", np.isnan(model.predict([-1], [items[0]])).all())
    check.verify()


def implicit_data(seed=0):
    """Users in 10 taste groups; each group interacts with its own 20 items
    (group sizes differ, so popularity is informative only across groups).
    One interaction per user is held out."""
    rng = np.random.default_rng(seed)
    n_users, groups, per_group = 400, 10, 20
    group = rng.integers(0, groups, size=n_users) ** 2 % groups  # uneven group sizes
    users, items, counts = [], [], []
    for u in range(n_users):
        chosen = rng.choice(per_group, size=8, replace=False) + group[u] * per_group
        noise = rng.choice(groups * per_group, size=1)
        for it in np.r_[chosen, noise]:
            users.append(u)
            items.append(it)
            counts.append(rng.integers(1, 5))
    users, items, counts = np.array(users), np.array(items), np.array(counts, dtype=np.float64)
    held = np.array([np.flatnonzero(users == u)[0] for u in range(n_users)])
    return users, items, counts, held, groups * per_group


def auc(scores, positive, seen):
    """Fraction of unseen negatives ranked below the held-out positive, per user."""
    out = []
    for s, pos, sn in zip(scores, positive, seen):
        neg = np.setdiff1d(np.arange(s.size), np.r_[list(sn), pos])
        out.append(np.mean(s[pos] > s[neg]))
    return float(np.mean(out))


@pytest.mark.parametrize("comm", ["seg_default"], indirect=True)
def test_implicit_beats_popularity(comm):
    P, rank = comm.size, comm.rank
    check = Checker(P)
    users, items, counts, held, n_items = implicit_data()
    train = np.setdiff1d(np.arange(users.size), held)
    mine = train[rank::P]
    model = ALS(rank=10, max_iter=10, reg_param=0.01, implicit_prefs=True, alpha=10.0, comm=comm).fit(
        users[mine], items[mine], counts[mine])
    item_ids, V = model.item_factors()
    user_ids, U = model.user_factors()
    full = np.full((n_items, U.shape[1]), 0.0)
    full[item_ids] = V
    scores = U @ full.T
    seen = [set(items[train][users[train] == u]) for u in user_ids]
    als = auc(scores, items[held][user_ids], seen)
    popularity = np.bincount(items[train], minlength=n_items).astype(np.float64)
    pop = auc(np.tile(popularity, (user_ids.size, 1)), items[held][user_ids], seen)
    check.expect_true(f"ALS AUC {als:.3f} above popularity's {pop:.3f} by 0.1", als > pop + 0.1)
    top, sc = model.recommend_for_users(user_ids[:5], 3)
    check.expect_true("recommend_for_users best first", top.shape == (5, 3) and np.all(np.diff(sc, axis=1) <= 0))
    check.verify()


@pytest.mark.parametrize("comm", ["seg_default"], indirect=True)
def test_bad_input_raises_everywhere(comm):
    P, rank = comm.size, comm.rank
    check = Checker(P)
    u = np.arange(4)
    r = np.ones(4)
    if rank == P - 1:
        r[0] = np.nan
    check.expect_raises("NaN rating on one rank", call(lambda: ALS(comm=comm).fit(u, u, r)), ValueError)
    if P > 1:
        got = call(lambda: ALS(rank=3 + (rank == 0), comm=comm).fit(u, u, np.ones(4)))
        check.expect_raises("ranks differ in rank", got, distml.MismatchError)
    got = call(lambda: ALS(comm=comm).fit(u, u[:3] if rank == 0 else u, np.ones(4)))
    check.expect_raises("lengths differ", got, ValueError)
    check.verify()
