"""The "plain LightFM" reference of the quality benchmark, built from its description only.

The description (../shared/data/README.md, santander-june2015): "a plain LightFM, WARP, 32
components, 40 epochs, trained on every month's acquisitions; user features = attribute
deciles / top categories + products held now + products held at any earlier snapshot but
not now; no held-product handling, no ensemble, no tiers". Its authors measured MAP@7
0.741 on that set. Nothing here comes from the project's hybrid model:

- one user row per training example (state at t-1, products acquired at t as positives);
- user features only (no identity column per user), each active token weighted 1:
  numeric attributes -> deciles of the training rows (right-closed bins, as pandas.qcut)
  + `missing`; categorical -> the 20 most frequent training values + `other` + `missing`;
  dates -> years before the state's snapshot, then deciles; `held:P` for each product
  held now; `before:P` for each product held at any earlier snapshot but not now;
- item features: identity (one column per product);
- LightFM(no_components=32, loss="warp", learning_rate=0.05), 40 epochs;
- held products are excluded at recommendation time, as for every model.

    python -m bench.reference [--data DIR] [--seeds 42 43 44] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender.protocol import Split
from recommender.ranking import top_k
from recommender.state import CustomerState, HoldingsCube

SANTANDER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "santander-june2015"
PUBLISHED_MAP = 0.741
N_QUANTILES = 10
TOP_CATEGORIES = 20
NO_COMPONENTS = 32
EPOCHS = 40
LEARNING_RATE = 0.05
LOSS = "warp"
NUMERIC, CATEGORICAL, DATE = "numeric", "categorical", "date"


@dataclass(frozen=True)
class ColumnEncoder:
    """One attribute column as tokens: bins (`edges`) or `levels` + other, then missing."""

    column: str
    kind: str
    edges: np.ndarray | None = None
    levels: tuple[str, ...] = ()

    @property
    def n_tokens(self) -> int:
        if self.kind == CATEGORICAL:
            return len(self.levels) + 2  # levels, other, missing
        assert self.edges is not None
        return len(self.edges) + 2  # len(edges) + 1 bins, missing

    def codes(self, values: pd.Series, as_of: np.ndarray) -> np.ndarray:
        """The token index (0..n_tokens-1) of each value."""
        missing = self.n_tokens - 1
        if self.kind == CATEGORICAL:
            text = _text(values)
            index = pd.Index(self.levels).get_indexer(pd.Index(text.fillna("")))
            index = np.where(index < 0, len(self.levels), index)
            return np.where(text.isna().to_numpy(), missing, index)
        numbers = _numbers(values, self.kind, as_of)
        bins = np.searchsorted(np.asarray(self.edges), numbers, side="left")
        return np.where(np.isnan(numbers), missing, bins)


def fit_encoder(column: str, values: pd.Series, as_of: np.ndarray) -> ColumnEncoder:
    """Deciles for numbers and dates, the most frequent values for categories."""
    kind = _kind(values)
    if kind == CATEGORICAL:
        counts = _text(values).value_counts(dropna=True)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return ColumnEncoder(column, kind, levels=tuple(str(v) for v, _ in ranked[:TOP_CATEGORIES]))
    numbers = _numbers(values, kind, as_of)
    present = numbers[~np.isnan(numbers)]
    qs = np.linspace(0, 1, N_QUANTILES + 1)[1:-1]
    edges = np.unique(np.quantile(present, qs)) if len(present) else np.array([])
    return ColumnEncoder(column, kind, edges=edges)


def _kind(values: pd.Series) -> str:
    if pd.api.types.is_datetime64_any_dtype(values):
        return DATE
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return NUMERIC
    return CATEGORICAL


def _text(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.strip()
    return text.mask(text == "")


def _numbers(values: pd.Series, kind: str, as_of: np.ndarray) -> np.ndarray:
    if kind == DATE:
        dates = pd.to_datetime(values).to_numpy(dtype="datetime64[ns]")
        days = (as_of.astype("datetime64[ns]") - dates).astype("timedelta64[D]").astype(float)
        return np.where(np.isnat(dates), np.nan, days / 365.25)
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


def held_earlier(cube: HoldingsCube, state: CustomerState) -> np.ndarray:
    """(n, products) bool: held at any snapshot before the row's own, and not held now."""
    t = pd.Index(cube.dates).get_indexer(pd.DatetimeIndex(state.as_of))
    c = pd.Index(cube.customer_ids).get_indexer(pd.Index(state.customer_ids))
    if (t < 0).any() or (c < 0).any():
        raise ValueError("state rows must be customers and snapshot dates of the cube")
    seen = np.logical_or.accumulate(cube.held, axis=0)  # seen[t]: held at any s <= t
    before = np.concatenate([np.zeros_like(seen[:1]), seen[:-1]])  # any s < t
    earlier: np.ndarray = before[t, c] & ~state.held
    return earlier


class UserFeatures:
    """Attribute encoders fitted on training rows; `transform` adds held and before tokens."""

    def fit(self, state: CustomerState) -> UserFeatures:
        attrs = state.attributes
        self.encoders_ = [fit_encoder(col, attrs[col], state.as_of) for col in attrs.columns]
        return self

    def transform(self, state: CustomerState, cube: HoldingsCube) -> sp.csr_matrix:
        blocks = [
            _one_hot(e.codes(state.attributes[e.column], state.as_of), e.n_tokens)
            for e in self.encoders_
        ]
        blocks += [sp.csr_matrix(state.held), sp.csr_matrix(held_earlier(cube, state))]
        return sp.hstack(blocks, format="csr", dtype=np.float32)


def _one_hot(codes: np.ndarray, n_tokens: int) -> sp.csr_matrix:
    n = len(codes)
    ones = np.ones(n, dtype=np.float32)
    return sp.csr_matrix((ones, (np.arange(n), codes)), shape=(n, n_tokens))


class ReferenceRun(NamedTuple):
    items: np.ndarray  # (n_test, k) recommended product indices, -1 padding
    fit_seconds: float  # LightFM.fit alone (feature building not included)


def plain_lightfm_map(
    split: Split, *, k: int = 7, seed: int = 42, num_threads: int = 1
) -> ReferenceRun:
    """Fit the plain LightFM on `split.train` and recommend k products to `split.test`.
    (Score the items with `recommender.metrics.summarise(items, split.test.targets, k)`.)"""
    from lightfm import LightFM

    encoder = UserFeatures().fit(split.train.state)
    train_users = encoder.transform(split.train.state, split.cube)
    test_users = encoder.transform(split.test.state, split.cube)
    items = sp.identity(split.train.targets.shape[1], dtype=np.float32, format="csr")
    interactions = sp.coo_matrix(split.train.targets.astype(np.float32))
    model = LightFM(
        no_components=NO_COMPONENTS, loss=LOSS, learning_rate=LEARNING_RATE, random_state=seed
    )
    start = time.perf_counter()
    model.fit(
        interactions,
        user_features=train_users,
        item_features=items,
        epochs=EPOCHS,
        num_threads=num_threads,
    )
    fit_seconds = time.perf_counter() - start
    user_bias, user_repr = model.get_user_representations(test_users)
    item_bias, item_repr = model.get_item_representations(items)
    scores = user_repr @ item_repr.T + item_bias[None, :] + user_bias[:, None]
    recommended, _ = top_k(scores, k, split.test.state.held)
    return ReferenceRun(recommended, fit_seconds)


def main() -> None:
    from recommender.dataset import load_bank_data
    from recommender.metrics import summarise
    from recommender.protocol import split as make_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SANTANDER)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--k", type=int, default=7)
    args = parser.parse_args()
    the_split = make_split(load_bank_data(args.data), "temporal")
    print(
        f"{args.data.name}: {len(the_split.train):,} training examples, "
        f"{len(the_split.test):,} test clients, test snapshot {the_split.test_date.date()}"
    )
    print(f"| seed | MAP@{args.k} | fit seconds |\n|---|---|---|")
    maps = []
    for seed in args.seeds:
        run = plain_lightfm_map(the_split, k=args.k, seed=seed, num_threads=args.threads)
        maps.append(summarise(run.items, the_split.test.targets, args.k)[f"map@{args.k}"])
        print(f"| {seed} | {maps[-1]:.4f} | {run.fit_seconds:.1f} |")
    print(f"mean MAP@{args.k} {np.mean(maps):.4f} (published: {PUBLISHED_MAP})")


if __name__ == "__main__":
    main()
