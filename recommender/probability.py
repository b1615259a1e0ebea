"""Calibrated acquisition probabilities from ranking scores.

A ranking model's scores order products but are not probabilities. A calibrator is fit on
held-out (customer, product) pairs — products the customer did not hold, labelled 1 when
acquired — and maps scores to probabilities, so offers can be ranked by probability x
margin.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from recommender.errors import ConfigError, ModelFitError, NotFittedError

METHODS = ("rank", "isotonic", "platt")


class ProbabilityCalibrator:
    """Maps a customer's product scores to acquisition probabilities.

    `rank` (default): a logistic model on the product and its rank in the customer's list.
    Ranks mean the same for any refit of the model, so a calibrator fitted on held-out
    scores of one fit stays valid for the next. `isotonic` / `platt`: on raw scores.
    Held products get probability 0.
    """

    def __init__(self, method: str = "rank") -> None:
        if method not in METHODS:
            raise ConfigError(f"calibration method {method!r}: use one of {', '.join(METHODS)}")
        self.method = method

    def fit(self, scores: np.ndarray, held: np.ndarray, targets: np.ndarray) -> Self:
        labels = targets[~held].astype(float)
        if len(np.unique(labels)) < 2:
            raise ModelFitError("calibration needs both acquired and not-acquired examples")
        self.n_products_ = scores.shape[1]
        x = self._design(scores, held)
        if self.method == "isotonic":
            self.model_: Any = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            self.model_.fit(x.ravel(), labels)
        else:
            self.model_ = LogisticRegression(max_iter=1000).fit(x, labels)
        return self

    def predict(self, scores: np.ndarray, held: np.ndarray) -> np.ndarray:
        if not hasattr(self, "model_"):
            raise NotFittedError("ProbabilityCalibrator is not fitted; call fit(...) first")
        if self.method == "rank":  # logit = w[product] + w[rank] + b, on whole arrays
            weights = self.model_.coef_.ravel()
            p = self.n_products_
            logit = weights[:p][None, :] + weights[p:][ranks_in_list(scores, held)]
            probability = 1.0 / (1.0 + np.exp(-(logit + self.model_.intercept_[0])))
            return np.where(held, 0.0, probability)
        x = self._design(scores, held)
        if self.method == "isotonic":
            values = self.model_.predict(x.ravel())
        else:
            values = self.model_.predict_proba(x)[:, 1]
        out = np.zeros(scores.shape)
        out[~held] = values
        return out

    def _design(self, scores: np.ndarray, held: np.ndarray) -> Any:
        """Features of every open (customer, product) pair, in row-major order."""
        if self.method != "rank":
            return scores[~held][:, None]
        ranks = ranks_in_list(scores, held)
        rows, products = np.nonzero(~held)
        n = len(rows)
        p = self.n_products_
        data = np.ones(2 * n)
        cols = np.concatenate([products, p + ranks[rows, products]])
        return sp.csr_matrix((data, (np.tile(np.arange(n), 2), cols)), shape=(n, 2 * p))


def ranks_in_list(scores: np.ndarray, held: np.ndarray) -> np.ndarray:
    """0-based rank of each product in its customer's list (held products last)."""
    order = np.argsort(-np.where(held, -np.inf, scores), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :], axis=1)
    return ranks


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict[str, float]:
    """Brier score and expected calibration error (ECE) over equal-count bins."""
    p = np.asarray(probabilities, dtype=float).ravel()
    y = np.asarray(labels, dtype=float).ravel()
    order = np.argsort(p, kind="stable")
    ece = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            ece += len(chunk) / len(p) * abs(p[chunk].mean() - y[chunk].mean())
    return {"brier": float(np.mean((p - y) ** 2)), "ece": float(ece), "base_rate": float(y.mean())}


def fit_calibrator(
    scores: np.ndarray,
    held: np.ndarray,
    targets: np.ndarray,
    method: str = "rank",
    seed: int = 0,
) -> tuple[ProbabilityCalibrator, dict[str, float]]:
    """Fit on a random half of the customers, report reliability on the other half."""
    order = np.random.default_rng(seed).permutation(len(scores))
    fit_rows, check_rows = (np.sort(part) for part in np.array_split(order, 2))
    calibrator = ProbabilityCalibrator(method).fit(
        scores[fit_rows], held[fit_rows], targets[fit_rows]
    )
    open_pairs = ~held[check_rows]
    predicted = calibrator.predict(scores[check_rows], held[check_rows])[open_pairs]
    return calibrator, reliability(predicted, targets[check_rows][open_pairs])
