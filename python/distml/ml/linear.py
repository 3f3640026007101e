"""Linear models over rows spread across ranks.

LinearRegression solves the normal equations: every rank forms the sums of
its rows (counts, feature and target sums, X^T X, X^T y), one allreduce adds
them up, and every rank solves the same small system. With an intercept the
system is centred from those sums (X^T X - n mean mean^T and so on), which
loses precision only when the features' means are large next to their
spread (centre such data first).

LogisticRegression minimises the L2-penalised log-loss with L-BFGS
(scipy.optimize.minimize). Every evaluation of the objective is one allreduce
of [summed loss | summed gradient] over this rank's rows; since every rank
gets the same sums, every rank's optimizer takes the same steps and all ranks
end with the same coefficients, with no broadcast.

Both start, like every estimator of distml.ml, with one allgather that
compares every rank's input (feature counts, parameters) and raises the same
error on every rank if any rank's input is bad.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Tuple

import numpy as np

from . import _collective as shared

__all__ = ["LinearRegression", "LogisticRegression", "ConvergenceWarning"]


class ConvergenceWarning(UserWarning):
    """An iterative fit stopped at its iteration limit before converging."""


def _targets(y: Any, rows: int) -> np.ndarray:
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise shared.InputProblem(f"y cannot be converted to float64: {e}", TypeError) from None
    if arr.ndim not in (1, 2):
        raise shared.InputProblem(f"y must be 1-D or 2-D, got shape {arr.shape}")
    if arr.shape[0] != rows:
        raise shared.InputProblem(f"X has {rows} rows but y has {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise shared.InputProblem("y contains NaN or infinity")
    return arr


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not _is_bool(value)


class LinearRegression:
    """Least squares (alpha = 0) or ridge regression (alpha > 0) over the rows of all ranks.

    Minimises ``||y - X w - b||^2 + alpha ||w||^2`` over all ranks' rows;
    the intercept ``b`` is not penalised. alpha = 0 gives the minimum-norm
    least-squares solution (as scikit-learn's LinearRegression), alpha > 0
    scikit-learn's Ridge.

    Args:
        fit_intercept: fit ``b`` (else b = 0).
        alpha: ridge penalty, >= 0.
        comm: the communicator (default: :func:`distml.init`'s).

    Attributes (after fit), the same on every rank:
        coef_: (n_features,) for 1-D y, (n_targets, n_features) for 2-D y.
        intercept_: float for 1-D y, (n_targets,) for 2-D y (zeros without
            an intercept).
        n_features_in_: number of features.
    """

    def __init__(self, fit_intercept: bool = True, alpha: float = 0.0, comm: Any = None) -> None:
        self.fit_intercept = fit_intercept
        self.alpha = alpha
        self.comm = comm

    def _check_params(self) -> None:
        if not _is_bool(self.fit_intercept):
            raise shared.InputProblem(f"fit_intercept must be a bool, got {self.fit_intercept!r}")
        if not (_is_number(self.alpha) and self.alpha >= 0):
            raise shared.InputProblem(f"alpha must be a number >= 0, got {self.alpha!r}")

    def fit(self, X: Any, y: Any) -> "LinearRegression":
        """Fits the model to the rows of all ranks.

        Args:
            X: this rank's rows, shape (n_rows, n_features) (n_rows may be 0).
            y: this rank's targets, shape (n_rows,) or (n_rows, n_targets).

        Returns:
            self.

        Raises:
            ValueError: on every rank, if any rank's X or y is malformed or
                holds NaN/inf, a parameter is invalid, or there are no rows.
            TypeError: on every rank, if any rank's X or y is not numeric.
            distml.MismatchError: on every rank, if ranks passed different
                numbers of features or targets, or different parameters.

        Must be called on all ranks.
        """
        comm = shared.resolve_comm(self.comm)
        problem, rows, targets = None, np.empty((0, 0)), np.empty(0)
        try:
            self._check_params()
            rows = shared.as_rows(X)
            targets = _targets(y, rows.shape[0])
        except shared.InputProblem as e:
            problem = e
        t = 1 if targets.ndim == 1 else targets.shape[1]
        numbers = (rows.shape[0], rows.shape[1], targets.ndim, t,
                   shared.crc(self.fit_intercept, float(self.alpha)) if problem is None else 0)
        info = shared.agree(comm, problem, numbers)
        d = shared.require_same(info[:, 1], "numbers of features")
        shared.require_same(info[:, 2], "y dimensions")
        shared.require_same(info[:, 3], "numbers of targets")
        shared.require_same(info[:, 4], "LinearRegression parameters (fit_intercept, alpha)")
        n = int(info[:, 0].sum())
        if n == 0:
            raise ValueError("LinearRegression.fit needs at least one row over all ranks")
        Y = targets.reshape(rows.shape[0], t)

        # One allreduce: [sum x | sum y | X^T X | X^T y].
        sizes = (d, t, d * d, d * t)
        buf = np.concatenate([rows.sum(axis=0), Y.sum(axis=0), (rows.T @ rows).reshape(-1),
                              (rows.T @ Y).reshape(-1)])
        comm.allreduce(buf, out=buf)
        sx, sy, xx, xy = np.split(buf, np.cumsum(sizes)[:-1])
        xx, xy = xx.reshape(d, d), xy.reshape(d, t)
        if self.fit_intercept:
            mx, my = sx / n, sy / n
            xx = xx - n * np.outer(mx, mx)
            xy = xy - n * np.outer(mx, my)
        else:
            mx, my = np.zeros(d), np.zeros(t)
        if self.alpha > 0:
            W = np.linalg.solve(xx + float(self.alpha) * np.eye(d), xy)
        else:
            W = np.linalg.lstsq(xx, xy, rcond=None)[0]
        b = my - mx @ W
        if targets.ndim == 1:
            self.coef_, self.intercept_ = W[:, 0].copy(), float(b[0])
        else:
            self.coef_, self.intercept_ = W.T.copy(), b
        self.n_features_in_ = d
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predictions for the rows ``X``. Local: no communication.

        Args:
            X: rows of shape (n, n_features).

        Returns:
            (n,) for a model fitted on 1-D y, else (n, n_targets).

        Raises:
            ValueError: X is malformed or has the wrong number of features, or
                the model is not fitted.
        """
        coef = self._fitted()
        rows = _local_rows(X, self.n_features_in_)
        return rows @ coef.T + self.intercept_

    def score(self, X: Any, y: Any) -> float:
        """R^2 of the predictions over all ranks' rows (averaged uniformly over
        targets; a constant target scores 1 if predicted exactly, else 0, as
        scikit-learn).

        Args:
            X: this rank's rows, shape (n_rows, n_features) (n_rows may be 0).
            y: this rank's targets, shaped as for :meth:`fit`.

        Returns:
            The R^2 score, the same on every rank.

        Raises:
            ValueError, TypeError, distml.MismatchError: as :meth:`fit`, on
                every rank.

        Must be called on all ranks.
        """
        coef = self._fitted()
        comm = shared.resolve_comm(self.comm)
        problem, rows, targets = None, np.empty((0, 0)), np.empty(0)
        try:
            rows = shared.as_rows(X)
            if rows.shape[1] != self.n_features_in_:
                raise shared.InputProblem(f"X has {rows.shape[1]} features, the model {self.n_features_in_}")
            targets = _targets(y, rows.shape[0])
            if targets.ndim != (1 if coef.ndim == 1 else 2) or (coef.ndim == 2 and targets.shape[1] != coef.shape[0]):
                raise shared.InputProblem(f"y has shape {targets.shape}, which does not fit the model's targets")
        except shared.InputProblem as e:
            problem = e
        info = shared.agree(comm, problem, (rows.shape[0],))
        n = int(info[:, 0].sum())
        if n == 0:
            raise ValueError("score needs at least one row over all ranks")
        t = 1 if coef.ndim == 1 else coef.shape[0]
        Y = targets.reshape(rows.shape[0], t)
        mean = shared.sum_all(comm, Y.sum(axis=0)) / n
        residual = Y - (rows @ coef.T + self.intercept_).reshape(rows.shape[0], t)
        sums = shared.sum_all(comm, np.concatenate([(residual ** 2).sum(axis=0), ((Y - mean) ** 2).sum(axis=0)]))
        ss_res, ss_tot = sums[:t], sums[t:]
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.where(ss_res == 0, 1.0, 0.0))
        return float(np.mean(r2))

    def _fitted(self) -> np.ndarray:
        coef = getattr(self, "coef_", None)
        if coef is None:
            raise ValueError("this LinearRegression is not fitted yet; call fit first")
        return coef


def _local_rows(X: Any, d: int) -> np.ndarray:
    try:
        rows = shared.as_rows(X)
    except shared.InputProblem as e:
        raise e.kind(str(e)) from None
    if rows.shape[1] != d:
        raise ValueError(f"X has {rows.shape[1]} features, the model {d}")
    return rows


def _scipy_optimize() -> Any:
    try:
        from scipy import optimize
    except ImportError:  # pragma: no cover - scipy comes with the "ml" extra
        raise ImportError("LogisticRegression needs scipy: pip install 'distml[ml]'") from None
    return optimize


def _expit(z: np.ndarray) -> np.ndarray:
    # 1 / (1 + exp(-z)) without overflow for either sign.
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


class LogisticRegression:
    """L2-regularised logistic regression over the rows of all ranks (L-BFGS).

    Minimises ``sum_i loss_i + 1/(2C) ||W||^2`` over all ranks' rows, with
    the intercepts unpenalised, as scikit-learn's ``LogisticRegression``
    with ``solver="lbfgs"``: with two classes the binary log-loss with one
    coefficient row (``coef_`` of shape (1, n_features), class
    ``classes_[1]`` the positive one), with more the multinomial (softmax)
    log-loss with one row per class.

    As scikit-learn, the optimizer works on the objective divided by the
    total number of rows, and stops when the largest absolute component of
    that objective's gradient is at most ``tol``, when an iteration lowers
    the objective by a relative 64 machine epsilons or less, or after
    ``max_iter`` iterations (with a :class:`ConvergenceWarning`).

    Args:
        C: inverse regularisation strength, > 0.
        max_iter: L-BFGS iteration limit.
        tol: gradient tolerance (above).
        fit_intercept: fit intercepts (else they are 0).
        comm: the communicator (default: :func:`distml.init`'s).

    Attributes (after fit), the same on every rank:
        classes_: sorted union of the labels of all ranks.
        coef_: (1, n_features) for two classes, else (n_classes, n_features).
        intercept_: (1,) or (n_classes,).
        n_iter_: L-BFGS iterations run (an int; scikit-learn keeps a
            one-element array).
        n_features_in_: number of features.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 100, tol: float = 1e-6, fit_intercept: bool = True,
                 comm: Any = None) -> None:
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.fit_intercept = fit_intercept
        self.comm = comm

    def _check_params(self) -> None:
        if not (_is_number(self.C) and self.C > 0):
            raise shared.InputProblem(f"C must be a number > 0, got {self.C!r}")
        if not isinstance(self.max_iter, (int, np.integer)) or _is_bool(self.max_iter) or self.max_iter < 0:
            raise shared.InputProblem(f"max_iter must be an int >= 0, got {self.max_iter!r}")
        if not (_is_number(self.tol) and self.tol >= 0):
            raise shared.InputProblem(f"tol must be a number >= 0, got {self.tol!r}")
        if not _is_bool(self.fit_intercept):
            raise shared.InputProblem(f"fit_intercept must be a bool, got {self.fit_intercept!r}")

    def _params_hash(self) -> int:
        return shared.crc(float(self.C), int(self.max_iter), float(self.tol), bool(self.fit_intercept))

    def fit(self, X: Any, y: Any) -> "LogisticRegression":
        """Fits the model to the rows of all ranks.

        Args:
            X: this rank's rows, shape (n_rows, n_features) (n_rows may be 0).
            y: this rank's labels, shape (n_rows,): numbers, booleans or
                strings, of the same kind on every rank.

        Returns:
            self.

        Raises:
            ValueError: on every rank, if any rank's X or y is malformed or
                holds NaN/inf, a parameter is invalid, or all ranks' labels
                together hold fewer than two classes.
            TypeError: on every rank, if any rank's X is not numeric or its
                labels are of an unsupported type.
            distml.MismatchError: on every rank, if ranks passed different
                numbers of features, labels of different kinds, or different
                parameters.
            ImportError: on every rank, if scipy is missing on any rank.

        Must be called on all ranks.
        """
        comm = shared.resolve_comm(self.comm)
        problem, rows, labels, kind, width = None, np.empty((0, 0)), np.empty(0), 0, 0
        optimize = None
        try:
            try:
                optimize = _scipy_optimize()
            except ImportError as e:
                raise shared.InputProblem(str(e), ImportError) from None
            self._check_params()
            rows = shared.as_rows(X)
            labels = shared.label_array(y, rows.shape[0])
            kind, width = shared.label_kind(labels)
        except shared.InputProblem as e:
            problem = e
        numbers = (rows.shape[0], rows.shape[1], kind, width, self._params_hash() if problem is None else 0)
        info = shared.agree(comm, problem, numbers)
        d = shared.require_same(info[:, 1], "numbers of features")
        kinds = info[:, 2]
        shared.require_same(kinds[kinds != 0], "kinds of labels (1 float, 2 int, 3 bool, 4 str)")
        shared.require_same(info[:, 4], "LogisticRegression parameters (C, max_iter, tol, fit_intercept)")
        n = int(info[:, 0].sum())
        classes = shared.labels_of(comm, labels, kinds, info[:, 3])
        if classes.size < 2:
            raise ValueError(f"LogisticRegression needs samples of at least 2 classes over all ranks; "
                             f"got {classes.size}: {classes.tolist()}")
        index = np.searchsorted(classes, labels)
        K = classes.size
        rows_out = 1 if K == 2 else K
        n_coef = rows_out * d
        n_params = n_coef + (rows_out if self.fit_intercept else 0)
        penalty = 1.0 / (float(self.C) * n)
        buf = np.empty(1 + n_params, dtype=np.float64)
        loss_grad = self._binary_loss if K == 2 else self._multinomial_loss
        target = (index == 1).astype(np.float64) if K == 2 else index

        def objective(w: np.ndarray) -> Tuple[float, np.ndarray]:
            W = w[:n_coef].reshape(rows_out, d)
            b = w[n_coef:] if self.fit_intercept else np.zeros(rows_out)
            buf[0], grad_W, grad_b = loss_grad(rows, target, W, b)
            buf[1: 1 + n_coef] = grad_W.reshape(-1)
            if self.fit_intercept:
                buf[1 + n_coef:] = grad_b
            comm.allreduce(buf, out=buf)
            coef = w[:n_coef]
            value = buf[0] / n + 0.5 * penalty * float(coef @ coef)
            grad = buf[1:] / n
            grad[:n_coef] += penalty * coef
            return value, grad

        result = optimize.minimize(
            objective, np.zeros(n_params), method="L-BFGS-B", jac=True,
            options={"maxiter": int(self.max_iter), "maxls": 50, "gtol": float(self.tol),
                     "ftol": 64 * np.finfo(float).eps},
        )
        if result.status != 0:
            warnings.warn(f"LogisticRegression: L-BFGS stopped without converging "
                          f"({result.message}); raise max_iter or scale the data", ConvergenceWarning,
                          stacklevel=2)
        w = result.x
        self.classes_ = classes
        self.coef_ = w[:n_coef].reshape(rows_out, d).copy()
        self.intercept_ = w[n_coef:].copy() if self.fit_intercept else np.zeros(rows_out)
        self.n_iter_ = int(min(result.nit, self.max_iter))
        self.n_features_in_ = d
        return self

    @staticmethod
    def _binary_loss(X: np.ndarray, y: np.ndarray, W: np.ndarray,
                     b: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
        z = X @ W[0] + b[0]
        loss = float(np.sum(np.logaddexp(0.0, z) - y * z))
        dz = _expit(z) - y
        return loss, (dz @ X).reshape(1, -1), np.array([dz.sum()])

    @staticmethod
    def _multinomial_loss(X: np.ndarray, y: np.ndarray, W: np.ndarray,
                          b: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
        Z = X @ W.T + b
        Z -= Z.max(axis=1, keepdims=True) if Z.shape[0] else 0.0
        expZ = np.exp(Z)
        total = expZ.sum(axis=1)
        rows = np.arange(Z.shape[0])
        loss = float(np.sum(np.log(total) - Z[rows, y]))
        P = expZ / total[:, None]
        P[rows, y] -= 1.0
        return loss, P.T @ X, P.sum(axis=0)

    # ---- use ---------------------------------------------------------------------

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores ``X W^T + b``. Local: no communication.

        Args:
            X: rows of shape (n, n_features).

        Returns:
            (n,) for two classes (positive: ``classes_[1]``), else (n, n_classes).

        Raises:
            ValueError: X is malformed or has the wrong number of features, or
                the model is not fitted.
        """
        coef = self._fitted()
        rows = _local_rows(X, self.n_features_in_)
        scores = rows @ coef.T + self.intercept_
        return scores[:, 0] if coef.shape[0] == 1 else scores

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities. Local: no communication.

        Args:
            X: rows of shape (n, n_features).

        Returns:
            (n, n_classes), columns in ``classes_`` order.

        Raises:
            ValueError: as :meth:`decision_function`.
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = _expit(scores)
            return np.column_stack([1.0 - p, p])
        scores = scores - scores.max(axis=1, keepdims=True) if scores.shape[0] else scores
        e = np.exp(scores)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row. Local: no communication.

        Args:
            X: rows of shape (n, n_features).

        Returns:
            (n,) labels taken from ``classes_``.

        Raises:
            ValueError: as :meth:`decision_function`.
        """
        scores = self.decision_function(X)
        index = (scores > 0).astype(np.int64) if scores.ndim == 1 else np.argmax(scores, axis=1)
        return self.classes_[index]

    def score(self, X: Any, y: Any) -> float:
        """Accuracy of :meth:`predict` over all ranks' rows.

        Args:
            X: this rank's rows, shape (n_rows, n_features) (n_rows may be 0).
            y: this rank's labels, shape (n_rows,).

        Returns:
            The fraction of rows predicted right, the same on every rank.

        Raises:
            ValueError, TypeError: on every rank, if any rank's X or y is
                malformed, or there are no rows over all ranks.

        Must be called on all ranks.
        """
        self._fitted()
        comm = shared.resolve_comm(self.comm)
        problem, correct, rows = None, 0, 0
        try:
            X_rows = shared.as_rows(X)
            if X_rows.shape[1] != self.n_features_in_:
                raise shared.InputProblem(f"X has {X_rows.shape[1]} features, the model {self.n_features_in_}")
            labels = shared.label_array(y, X_rows.shape[0])
            correct, rows = int(np.count_nonzero(self.predict(X_rows) == labels)), X_rows.shape[0]
        except shared.InputProblem as e:
            problem = e
        info = shared.agree(comm, problem, (correct, rows))
        total = int(info[:, 1].sum())
        if total == 0:
            raise ValueError("score needs at least one row over all ranks")
        return float(info[:, 0].sum()) / total

    def _fitted(self) -> np.ndarray:
        coef = getattr(self, "coef_", None)
        if coef is None:
            raise ValueError("this LogisticRegression is not fitted yet; call fit first")
        return coef
