"""Top-k selection on score arrays, with exclusions, without Python loops over rows."""

from __future__ import annotations

import numpy as np


def top_k(
    scores: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best items per row, best first.

    Excluded items (True in `exclude`) are never returned; rows with fewer than k
    eligible items are padded with index -1 and score -inf. Ties go to the lower index.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if exclude is not None:
        scores = np.where(exclude, -np.inf, scores)
    n_items = scores.shape[1]
    k = min(k, n_items)
    # A stable sort of catalog-sized rows is faster than argpartition's per-row overhead.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    chosen = np.take_along_axis(scores, order, axis=1)
    items = np.where(np.isneginf(chosen), -1, order)
    return items, chosen
