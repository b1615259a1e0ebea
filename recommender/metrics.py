"""Ranking metrics over top-k recommendations (padding item -1 never hits).

AP@k = sum of precision@i at each hit / min(|truth|, k); NDCG@k with binary gains;
hit@n = a relevant product in the first n; MRR = 1 / rank of the first hit within k
(0 when none); coverage = share of the catalog recommended to anyone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def hits_matrix(recommended: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(n, k) bool: is recommended[i, j] in row i's truth."""
    rows = np.arange(len(recommended))[:, None]
    valid = recommended >= 0
    return np.where(valid, truth[rows, np.where(valid, recommended, 0)], False)


def per_customer(recommended: np.ndarray, truth: np.ndarray, k: int) -> pd.DataFrame:
    """One row of metrics per customer."""
    hits = hits_matrix(recommended[:, :k], truth).astype(float)
    ranks = np.arange(1, hits.shape[1] + 1)
    n_relevant = np.minimum(truth.sum(axis=1), k)
    precision = np.cumsum(hits, axis=1) / ranks
    ap = (precision * hits).sum(axis=1) / np.maximum(n_relevant, 1)
    discounts = 1.0 / np.log2(ranks + 1)
    ideal = np.cumsum(discounts)[np.maximum(n_relevant, 1) - 1]
    ndcg = (hits * discounts).sum(axis=1) / ideal
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.inf)
    return pd.DataFrame(
        {
            f"map@{k}": np.where(n_relevant > 0, ap, 0.0),
            f"ndcg@{k}": np.where(n_relevant > 0, ndcg, 0.0),
            "hit@1": hits[:, :1].any(axis=1).astype(float),
            "hit@3": hits[:, :3].any(axis=1).astype(float),
            "mrr": 1.0 / first,
        }
    )


def coverage(recommended: np.ndarray, n_products: int) -> float:
    return float(len(np.unique(recommended[recommended >= 0])) / n_products)


def summarise(recommended: np.ndarray, truth: np.ndarray, k: int) -> dict[str, float]:
    """Mean of every per-customer metric, plus catalog coverage."""
    if len(truth) == 0:
        return {}
    means = per_customer(recommended, truth, k).mean()
    out = {str(name): float(value) for name, value in means.items()}
    out["coverage"] = coverage(recommended[:, :k], truth.shape[1])
    return out
