"""Baselines every model is compared with: popularity, segment popularity,
item co-occurrence, and (on synthetic data) the oracle."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.errors import DataError
from recommender.models.base import Recommender
from recommender.protocol import Examples
from recommender.state import CustomerState


class Popularity(Recommender):
    """Rank by how often each product was acquired in training."""

    name = "popularity"

    def _fit(self, train: Examples, products: pd.DataFrame | None) -> None:
        self.counts_ = train.targets.sum(axis=0).astype(float)

    def _score(self, state: CustomerState) -> np.ndarray:
        return np.broadcast_to(self.counts_, (len(state), self.n_products_))


class SegmentPopularity(Recommender):
    """Popularity of acquisitions within the customer's segment, shrunk to the global one.

    `prior` is the weight (in examples) of the global popularity in each segment's mix,
    so a small or unseen segment falls back to the global ranking.
    """

    name = "segment_popularity"

    def __init__(self, prior: float = 10.0) -> None:
        self.prior = prior

    def _fit(self, train: Examples, products: pd.DataFrame | None) -> None:
        targets = train.targets.astype(float)
        global_share = targets.sum(axis=0) / max(targets.sum(), 1.0)
        frame = pd.DataFrame(targets).groupby(train.state.segment).sum()
        mixed = frame.to_numpy() + self.prior * global_share
        self.global_ = global_share
        self.shares_ = pd.DataFrame(mixed / mixed.sum(axis=1, keepdims=True), index=frame.index)

    def _score(self, state: CustomerState) -> np.ndarray:
        known = self.shares_.reindex(state.segment).to_numpy()
        return np.where(np.isnan(known), self.global_, known)


class Cooccurrence(Recommender):
    """score(p) = sum over held q of P(acquire p | hold q), plus global popularity.

    A tiny popularity term breaks ties and scores customers who hold nothing.
    """

    name = "cooccurrence"

    def _fit(self, train: Examples, products: pd.DataFrame | None) -> None:
        held = train.state.held.astype(float)
        targets = train.targets.astype(float)
        together = held.T @ targets
        self.conditional_ = together / np.maximum(held.sum(axis=0), 1.0)[:, None]
        self.popularity_ = targets.sum(axis=0) / max(len(targets), 1)

    def _score(self, state: CustomerState) -> np.ndarray:
        return np.asarray(state.held.astype(float) @ self.conditional_ + 1e-3 * self.popularity_)


class Oracle(Recommender):
    """Ranks by the generator's true acquisition probabilities (the ceiling).

    Only meaningful for the snapshot the truth file describes; customers not in the
    truth score zero everywhere.
    """

    name = "oracle"

    def __init__(self, truth: pd.DataFrame, product_ids: list[str]) -> None:
        self.truth = truth
        self.product_ids = product_ids

    def _fit(self, train: Examples, products: pd.DataFrame | None) -> None:
        wide = self.truth.pivot(index=C.CUSTOMER_ID, columns=C.PRODUCT_ID, values=C.PROBABILITY)
        missing = set(self.product_ids) - set(wide.columns.astype(str))
        if missing:
            raise DataError(f"truth file lacks products {sorted(missing)[:3]}")
        wide.columns = wide.columns.astype(str)
        wide.index = wide.index.astype(str)
        self.probability_ = wide[self.product_ids]

    def _score(self, state: CustomerState) -> np.ndarray:
        found = self.probability_.reindex(state.customer_ids.astype(str)).to_numpy()
        return np.asarray(np.nan_to_num(found, nan=0.0))
