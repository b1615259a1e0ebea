"""The second stage: a gradient-boosted re-ranker over LightFM's candidates.

For each customer, LightFM's `candidates` best products not held are described by one row
of pair features: LightFM's score (its gap to the customer's best) and rank, the product,
that product's history on record for the customer (held 1..`lags` snapshots before,
months since the last add / drop, counts), the customer's holdings and attributes. A
LightGBM `lambdarank` model orders the candidates; products outside them stay below, in
LightFM's order. It is trained on LightFM scores the LightFM model did not see (fitted on
the other half of the customers), so it learns how far to trust them.

Reasons are exact: LightGBM's per-feature contributions (`pred_contrib`, SHAP values) of a
pair sum to its re-ranker score; the largest positive ones become words. LightFM's share
is explained by LightFM's own feature contributions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import pandas as pd

from recommender.errors import NotFittedError
from recommender.explanation import with_article
from recommender.history import NEVER
from recommender.probability import ranks_in_list
from recommender.state import CustomerState

FROM_LIGHTFM = ("hybrid_gap", "hybrid_rank")
MAX_LEVELS = 50  # categorical attributes: most frequent levels kept, the rest one code


@dataclass(frozen=True)
class RerankConfig:
    candidates: int = 10
    rounds: int = 200
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 50
    lags: int = 3
    random_state: int = 0
    num_threads: int = 0


def _candidate_pairs(scores: np.ndarray, held: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """(rows, products, ranks) of each customer's n best products not held."""
    open_scores = np.where(held, -np.inf, scores)
    order = np.argsort(-open_scores, axis=1, kind="stable")[:, :n]
    ranks = np.broadcast_to(np.arange(order.shape[1]), order.shape)
    keep = np.isfinite(np.take_along_axis(open_scores, order, axis=1))
    rows = np.broadcast_to(np.arange(len(scores))[:, None], order.shape)
    return rows[keep], order[keep], ranks[keep]


class Reranker:
    """LightGBM lambdarank over (customer, candidate product) pairs."""

    def __init__(self, config: RerankConfig | None = None) -> None:
        self.config = config

    def fit(self, state: CustomerState, scores: np.ndarray, targets: np.ndarray) -> Self:
        import lightgbm as lgb

        cfg = self.config or RerankConfig()
        attributes = state.attributes
        self.levels_ = {
            str(c): [str(v) for v in attributes[c].astype(str).value_counts().index[:MAX_LEVELS]]
            for c in attributes.columns
            if not (
                pd.api.types.is_numeric_dtype(attributes[c])
                or pd.api.types.is_datetime64_any_dtype(attributes[c])
            )
            or pd.api.types.is_bool_dtype(attributes[c])
        }
        self.n_products_ = scores.shape[1]
        self.attribute_columns_ = [str(c) for c in attributes.columns]
        rows, products, ranks = _candidate_pairs(scores, state.held, cfg.candidates)
        frame = self.pair_features(state, scores, rows, products, ranks)
        labels = targets[rows, products].astype(int)
        groups = np.bincount(rows, minlength=len(state))
        self.booster_ = lgb.train(
            self._params(cfg),
            lgb.Dataset(
                _matrix(frame),
                labels,
                group=groups[groups > 0],
                feature_name=[f"f{i}" for i in range(frame.shape[1])],
                categorical_feature=[list(frame.columns).index(c) for c in self._categorical()],
            ),
            num_boost_round=cfg.rounds,
        )
        self.feature_names_ = list(frame.columns)
        return self

    def _params(self, cfg: RerankConfig) -> dict[str, Any]:
        return {
            "objective": "lambdarank",
            "learning_rate": cfg.learning_rate,
            "num_leaves": cfg.num_leaves,
            "min_data_in_leaf": cfg.min_data_in_leaf,
            "feature_fraction": 0.8,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambdarank_truncation_level": cfg.candidates,
            "seed": cfg.random_state,
            "deterministic": True,
            "num_threads": cfg.num_threads,
            "verbose": -1,
        }

    def _categorical(self) -> list[str]:
        return ["product", "tier", *(f"attr:{c}" for c in self.levels_)]

    def pair_features(
        self,
        state: CustomerState,
        scores: np.ndarray,
        rows: np.ndarray,
        products: np.ndarray,
        ranks: np.ndarray,
    ) -> pd.DataFrame:
        """One row per (customer row, product) pair; names are what `words` reads."""
        cfg = self.config or RerankConfig()
        past = state.past
        best = np.where(state.held, -np.inf, scores).max(axis=1)
        depth = past.depth[rows]
        columns: dict[str, Any] = {
            "hybrid_gap": scores[rows, products] - best[rows],
            "hybrid_rank": ranks,
            "product": products,
        }
        for lag in range(1, cfg.lags + 1):
            held = past.held_ago(lag)[rows, products]
            columns[f"held_ago:{lag}"] = np.where(depth >= lag, held, np.nan)
        for name, months in (("since_add", past.since_add), ("since_drop", past.since_drop)):
            value = months[rows, products].astype(float)
            columns[name] = np.where(value == NEVER, np.nan, value)
        columns["adds"] = past.adds[rows, products]
        columns["drops"] = past.drops[rows, products]
        for q in range(state.held.shape[1]):
            columns[f"holds:{q}"] = state.held[rows, q].astype(np.int8)
        columns["n_held"] = state.held.sum(axis=1)[rows]
        columns["depth"] = depth
        columns["tier"] = pd.Index(["A", "B", "C"]).get_indexer(pd.Index(state.tier[rows]))
        attributes = state.attributes.reindex(columns=self.attribute_columns_)
        for column in self.attribute_columns_:  # the training columns, in training order
            columns[f"attr:{column}"] = self._attribute(attributes[column], state.as_of)[rows]
        return pd.DataFrame(columns)

    def _attribute(self, values: pd.Series, as_of: np.ndarray) -> np.ndarray:
        """Level codes (unknown levels one code past the known), dates as years before the
        snapshot (birth date -> age), numbers as they are."""
        name = str(values.name)
        if name in self.levels_:
            codes = pd.Index(self.levels_[name]).get_indexer(pd.Index(values.astype(str)))
            return np.where(codes < 0, len(self.levels_[name]), codes).astype(float)
        if pd.api.types.is_datetime64_any_dtype(values):
            dates = pd.to_datetime(values).to_numpy(dtype="datetime64[ns]")
            days = (as_of.astype("datetime64[ns]") - dates).astype("timedelta64[D]")
            return np.where(np.isnat(dates), np.nan, days.astype(float) / 365.25)
        return np.asarray(pd.to_numeric(values, errors="coerce"), dtype=float)

    def score(self, state: CustomerState, scores: np.ndarray) -> np.ndarray:
        """Candidates by the re-ranker; the rest one step apart below the customer's lowest
        candidate, in LightFM's order (scores on the re-ranker's scale, which is what an
        officer sees)."""
        if not hasattr(self, "booster_"):
            raise NotFittedError("Reranker is not fitted; call fit(state, scores, targets)")
        cfg = self.config or RerankConfig()
        rows, products, ranks = _candidate_pairs(scores, state.held, cfg.candidates)
        predicted = np.zeros(len(rows))
        if len(rows):
            frame = self.pair_features(state, scores, rows, products, ranks)
            predicted = np.asarray(self.booster_.predict(_matrix(frame)), dtype=float)
        floor = np.full(len(scores), np.inf)
        np.minimum.at(floor, rows, predicted)
        floor[np.isinf(floor)] = 0.0  # a customer with no candidate (everything held)
        out: np.ndarray = floor[:, None] - 1.0 - ranks_in_list(scores, state.held)
        out[rows, products] = predicted
        return out

    def contributions(
        self, state: CustomerState, scores: np.ndarray, rows: np.ndarray, products: np.ndarray
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(contributions, features) of each (row, product) pair: per-feature SHAP values
        whose columns plus `base` sum to the pair's re-ranker score, and the values read."""
        cfg = self.config or RerankConfig()
        if not len(rows):
            empty = pd.DataFrame(columns=[*self.feature_names_, "base"], dtype=float)
            return empty, pd.DataFrame(columns=self.feature_names_, dtype=float)
        all_rows, all_products, all_ranks = _candidate_pairs(scores, state.held, cfg.candidates)
        ranks = pd.Series(all_ranks, index=pd.MultiIndex.from_arrays([all_rows, all_products]))
        rank = ranks.reindex(pd.MultiIndex.from_arrays([rows, products])).fillna(cfg.candidates)
        frame = self.pair_features(state, scores, rows, products, rank.to_numpy(dtype=int))
        parts = self.booster_.predict(_matrix(frame), pred_contrib=True)
        matrix = np.asarray(parts)
        out = pd.DataFrame(matrix[:, :-1], columns=self.feature_names_)
        out["base"] = matrix[:, -1]
        return out, frame

    def reasons(
        self,
        contributions: pd.DataFrame,
        features: pd.DataFrame,
        first_stage: list[list[str]],
        names: list[str],
        n: int = 3,
    ) -> list[list[str]]:
        """Words for each pair: its largest positive contributions, distinct; LightFM's
        share (its score and rank) in LightFM's own words, `first_stage[pair]`."""
        values = contributions[self.feature_names_].to_numpy()
        order = np.argsort(-values, axis=1, kind="stable")
        out: list[list[str]] = []
        for pair in range(len(values)):
            chosen: list[str] = []
            for j in order[pair]:
                if values[pair, j] <= 0 or len(chosen) >= n:
                    break
                name = self.feature_names_[j]
                if name in FROM_LIGHTFM:
                    words = first_stage[pair]
                else:
                    product = int(features["product"].iloc[pair])
                    said = pair_words(name, features[name].iloc[pair], product, names,
                                      self.levels_)  # fmt: skip
                    words = [said] if said else []
                chosen += [w for w in words if w not in chosen][: n - len(chosen)]
            out.append(chosen)
        return out


def _matrix(frame: pd.DataFrame) -> np.ndarray:
    """The booster's input: positional columns (attribute names may hold any character)."""
    return frame.to_numpy(dtype=np.float64)


def _months(m: float) -> str:
    m = int(m)
    return "this month" if m == 0 else f"{m} month{'' if m == 1 else 's'} ago"


def _times(v: float) -> str:
    return "once" if int(v) == 1 else f"{int(v)} times"


def pair_words(
    name: str, value: float, product: int, names: list[str], levels: dict[str, list[str]]
) -> str | None:
    """Words for one pair feature's value (None: nothing worth saying), e.g.
    `since_drop` = 2 for a savings account -> 'closed a savings account 2 months ago'."""
    if pd.isna(value):
        return None
    offered = with_article(names[product])
    kind, _, rest = name.partition(":")
    if kind == "held_ago":
        lag = int(rest)
        return f"{'held' if value else 'did not hold'} {offered} {_months(lag)}"
    if kind == "holds":
        other = with_article(names[int(rest)])
        return f"holds {other}" if value else f"does not hold {other}"
    if kind == "attr":
        if rest in levels and int(value) >= len(levels[rest]):
            return None  # a rare or unseen level is no reason
        return f"{rest.replace('_', ' ')}: {_attribute_words(rest, value, levels)}"
    simple = {
        "product": f"{names[product]} is often taken next",
        "since_add": f"opened {offered} {_months(value)}",
        "since_drop": f"closed {offered} {_months(value)}",
        "adds": f"opened {offered} {_times(value)} before" if value else None,
        "drops": f"closed {offered} {_times(value)} before" if value else None,
        "n_held": f"holds {int(value)} product{'' if value == 1 else 's'}",
        "depth": f"{int(value)} month{'' if value == 1 else 's'} on record",
        "tier": f"value tier {'ABC'[int(value)]}" if 0 <= value < 3 else None,
    }
    return simple.get(kind)


def _attribute_words(column: str, value: float, levels: dict[str, list[str]]) -> str:
    if column in levels:
        return levels[column][int(value)]
    return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.3g}"
