"""Spark-MLlib-style algorithms on rows spread across ranks.

Every rank passes its own rows; ``fit`` (and ``score``) are collective: they
must be called on all ranks, in the same order, and every rank ends with the
same model. ``comm=None`` means the default communicator
(:func:`distml.init`). Bad input on any rank (a different number of
features, NaN, too few rows for the model) raises the same error on every
rank instead of leaving the others waiting.

- :class:`ALS`: matrix factorisation by alternating least squares, blocked
  as in Spark (users and items owned by hash; each half-iteration ships only
  the factor rows a rank needs, with alltoallv); explicit or implicit
  feedback.
- :class:`KMeans`: Lloyd's iterations with one allreduce each; k-means||
  or random initialisation, deterministic from a seed.
- :class:`LinearRegression`: least squares or ridge by the normal equations
  (one allreduce).
- :class:`LogisticRegression`: binary or multinomial, L2-penalised, L-BFGS
  over allreduced loss and gradient (needs scipy: ``pip install "distml[ml]"``).
"""

from __future__ import annotations

from .als import ALS, ALSModel
from .kmeans import KMeans
from .linear import ConvergenceWarning, LinearRegression, LogisticRegression

__all__ = ["ALS", "ALSModel", "KMeans", "LinearRegression", "LogisticRegression", "ConvergenceWarning"]
