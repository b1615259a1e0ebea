"""Run a protocol for several models and report their metrics side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.dataset import BankData
from recommender.metrics import summarise
from recommender.models.base import Recommender
from recommender.models.baselines import Cooccurrence, Oracle, Popularity, SegmentPopularity
from recommender.protocol import TEMPORAL, Split

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ModelResult:
    name: str
    recommended: np.ndarray  # (n_test, k) product indices, -1 = nothing to offer


def baseline_models() -> list[Recommender]:
    return [Popularity(), SegmentPopularity(), Cooccurrence()]


def truth_path(data: BankData) -> Path | None:
    if data.directory is None:
        return None
    path = data.directory / C.TRUTH_DIR / C.TRUTH_FILE
    return path if path.exists() else None


def oracle_for(split: Split, data: BankData) -> Oracle | None:
    """The oracle, when the data carries true probabilities for the test snapshot."""
    path = truth_path(data)
    if path is None or split.protocol != TEMPORAL or split.test_date != data.snapshots[-1]:
        return None
    return Oracle(pd.read_parquet(path), data.product_ids)


def run_models(
    split: Split, models: Sequence[Recommender], k: int, progress: Progress | None = None
) -> list[ModelResult]:
    results = []
    for model in models:
        if progress:
            progress(model.name)
        model.fit(split.train, split.cube.data.products)
        items, _ = model.recommend(split.test.state, k)
        results.append(ModelResult(model.name, items))
    return results


def _by_group(
    groups: np.ndarray, results: list[ModelResult], truth: np.ndarray, k: int
) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for group in sorted(set(groups.tolist())):
        rows = groups == group
        out[str(group)] = {r.name: summarise(r.recommended[rows], truth[rows], k) for r in results}
    return out


def report(split: Split, results: list[ModelResult], k: int) -> dict[str, Any]:
    """The evaluation report (the shape `evaluate --report` writes)."""
    truth = split.test.targets
    state = split.test.state
    return {
        "protocol": split.protocol,
        "k": k,
        "test_date": split.test_date.date().isoformat(),
        "n_customers_evaluated": len(truth),
        "n_candidates": split.n_candidates,
        "share_evaluated": len(truth) / max(split.n_candidates, 1),
        "n_train_examples": len(split.train),
        "models": {r.name: summarise(r.recommended, truth, k) for r in results},
        "tiers": _by_group(state.tier, results, truth, k),
        "segments": _by_group(state.segment, results, truth, k),
        "counts": {
            "tiers": pd.Series(state.tier).value_counts().sort_index().to_dict(),
            "segments": pd.Series(state.segment).value_counts().sort_index().to_dict(),
        },
    }


def per_product_hit_rate(
    split: Split, result: ModelResult, product_ids: list[str]
) -> dict[str, float]:
    """For each product: share of its acquisitions that appeared in the top k."""
    truth = split.test.targets
    rows = np.arange(len(truth))[:, None]
    hit = np.zeros_like(truth)
    valid = result.recommended >= 0
    hit[np.broadcast_to(rows, valid.shape)[valid], result.recommended[valid]] = True
    acquired = truth.sum(axis=0)
    caught = (hit & truth).sum(axis=0)
    return {p: float(caught[i] / acquired[i]) for i, p in enumerate(product_ids) if acquired[i]}
