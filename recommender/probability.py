"""Calibrated acquisition probabilities from ranking scores.

A ranking model's scores order products but are not probabilities. A calibrator is fit on
held-out (state, product) pairs — scores of products the customer did not hold, labelled
1 when acquired — and maps any score to a probability, so offers can be ranked by
probability x margin. Isotonic regression (monotone, no shape assumed) by default;
Platt scaling (a logistic curve) as the alternative.
"""

from __future__ import annotations

from typing import Self

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from recommender.errors import ConfigError, ModelFitError, NotFittedError

METHODS = ("isotonic", "platt")


class ProbabilityCalibrator:
    def __init__(self, method: str = "isotonic") -> None:
        if method not in METHODS:
            raise ConfigError(f"calibration method {method!r}: use {' or '.join(METHODS)}")
        self.method = method

    def fit(self, scores: np.ndarray, labels: np.ndarray) -> Self:
        scores = np.asarray(scores, dtype=float).ravel()
        labels = np.asarray(labels, dtype=float).ravel()
        if len(np.unique(labels)) < 2:
            raise ModelFitError("calibration needs both acquired and not-acquired examples")
        if self.method == "isotonic":
            model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            model.fit(scores, labels)
        else:
            model = LogisticRegression().fit(scores[:, None], labels)
        self.model_ = model
        self.base_rate_ = float(labels.mean())
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        if not hasattr(self, "model_"):
            raise NotFittedError("ProbabilityCalibrator is not fitted; call fit(scores, labels)")
        flat = np.asarray(scores, dtype=float).ravel()
        if self.method == "isotonic":
            p = self.model_.predict(flat)
        else:
            p = self.model_.predict_proba(flat[:, None])[:, 1]
        return np.asarray(p, dtype=float).reshape(np.shape(scores))


def calibration_pairs(
    scores: np.ndarray, held: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and 0/1 labels of every (customer, product) the customer did not hold."""
    open_pairs = ~held
    return scores[open_pairs], targets[open_pairs].astype(float)


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
    method: str = "isotonic",
    seed: int = 0,
) -> tuple[ProbabilityCalibrator, dict[str, float]]:
    """Fit on a random half of the customers, report reliability on the other half."""
    order = np.random.default_rng(seed).permutation(len(scores))
    fit_rows, check_rows = np.array_split(order, 2)
    calibrator = ProbabilityCalibrator(method).fit(
        *calibration_pairs(scores[fit_rows], held[fit_rows], targets[fit_rows])
    )
    check_scores, labels = calibration_pairs(
        scores[check_rows], held[check_rows], targets[check_rows]
    )
    quality = reliability(calibrator.predict(check_scores), labels)
    return calibrator, quality
