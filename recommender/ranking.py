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


def top_k_distinct(
    scores: np.ndarray, k: int, exclude: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top k with at most one item per group (group -1: no group).

    Returns items and scores as `top_k` does, and `displaced` (n, items): the list
    position (0-based) of the same-group item that kept an item out, or -1.
    """
    masked = np.where(exclude, -np.inf, np.asarray(scores, dtype=np.float64))
    n, n_items = masked.shape
    k = min(k, n_items)
    rows = np.arange(n)
    items = np.full((n, k), -1)
    values = np.full((n, k), -np.inf)
    displaced = np.full((n, n_items), -1)
    for j in range(k):
        best = np.argmax(masked, axis=1)
        value = masked[rows, best]
        valid = np.isfinite(value)
        items[valid, j] = best[valid]
        values[valid, j] = value[valid]
        masked[rows[valid], best[valid]] = -np.inf
        group = groups[best]
        same = (groups[None, :] == group[:, None]) & (group[:, None] >= 0) & valid[:, None]
        displaced[same & np.isfinite(masked)] = j
        masked[same] = -np.inf
    return items, values, displaced
