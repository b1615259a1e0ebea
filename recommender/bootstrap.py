"""Percentile bootstrap intervals for per-client means (e.g. MAP@7 over clients).

`bootstrap_interval` resamples clients (rows) with replacement and takes the mean of each
resample; the interval is the (1 - level) / 2 and (1 + level) / 2 quantiles of those means.
`paired_difference_interval` does the same for the mean of `a - b`, with the same
resampled clients for both arrays (a paired bootstrap, as when two models are scored on
the same clients). Resamples are drawn in chunks so memory stays bounded for 100k+ rows.
"""

from __future__ import annotations

import numpy as np

MAX_CHUNK_ELEMENTS = 1 << 22  # indices drawn at once: 4M int64 = 32 MB


def bootstrap_interval(
    values: np.ndarray, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean over rows and its percentile bootstrap interval."""
    x = _validated(values, "values", n_resamples, level)
    means = _resampled_means(x, n_resamples=n_resamples, seed=seed)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(low), float(high)


def paired_difference_interval(
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean of a - b, low, high), resampling the same rows (clients) in both arrays."""
    x = _validated(a, "a", n_resamples, level)
    y = _validated(b, "b", n_resamples, level)
    if x.shape != y.shape:
        raise ValueError(
            f"a and b must have one value per client each, in the same order "
            f"(got {len(x)} and {len(y)} values)"
        )
    return bootstrap_interval(x - y, n_resamples=n_resamples, level=level, seed=seed)


def _resampled_means(x: np.ndarray, *, n_resamples: int, seed: int) -> np.ndarray:
    """The mean of each of `n_resamples` resamples of x with replacement."""
    rng = np.random.default_rng(seed)
    n = len(x)
    chunk = max(1, MAX_CHUNK_ELEMENTS // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        rows = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = x[rows].mean(axis=1)
    return means


def _validated(values: np.ndarray, name: str, n_resamples: int, level: float) -> np.ndarray:
    if not 0 < level < 1:
        raise ValueError(f"level must be strictly between 0 and 1 (e.g. 0.95), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1 (e.g. 1000), got {n_resamples}")
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D array with one value per client, got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values; drop or fill them first")
    return x
