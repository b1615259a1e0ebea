"""Feature tokens that carry time: lags, recency and counts of adds and drops, products held
before, the month of the offer, and value relative to the segment.

Each block is a list of tokens (fixed at fit) and an encoder giving, for a batch of
states, the (row, token index) pairs that are on. `FeatureBuilder` places the blocks after
the attribute and holdings tokens; `explanation.describe` has the words for each token.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recommender.history import NEVER
from recommender.state import CustomerState

# (first month, label): months since an add or drop, 0 = at this snapshot
RECENCY_BUCKETS = ((0, "0m"), (1, "1m"), (2, "2m"), (3, "3-5m"), (6, "6-11m"), (12, "12m+"))
COUNT_LABELS = ("1", "2+")
TOTAL_LABELS = ("0", "1", "2", "3+")
# (ratio from, label): a value against the median of the customer's segment
RELATIVE_BUCKETS = ((0.0, "far below"), (0.5, "below"), (0.8, "typical"), (1.25, "above"),
                    (2.0, "far above"))  # fmt: skip
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
Entries = tuple[np.ndarray, np.ndarray]  # (rows, token indices within the block)


def lag_tokens(product_ids: list[str], lags: int) -> list[str]:
    return [f"held_ago:{p}:{lag}" for p in product_ids for lag in range(1, lags + 1)]


def lag_entries(state: CustomerState, lags: int) -> Entries:
    """`held_ago:P:l`: held l snapshots before this one."""
    past = state.past
    rows, cols = [], []
    for lag in range(1, lags + 1):
        r, p = np.nonzero(past.held_ago(lag))
        rows.append(r)
        cols.append(p * lags + lag - 1)
    return np.concatenate(rows), np.concatenate(cols)


def recency_tokens(kind: str, product_ids: list[str]) -> list[str]:
    return [f"{kind}:{p}:{label}" for p in product_ids for _, label in RECENCY_BUCKETS]


def recency_entries(months: np.ndarray) -> Entries:
    """`added:P:2m` / `closed:P:2m`: the last add / drop of P was that long ago."""
    rows, products = np.nonzero(months != NEVER)
    value = months[rows, products]
    bucket = np.zeros(len(value), dtype=np.int64)
    for i, (start, _) in enumerate(RECENCY_BUCKETS):
        bucket[value >= start] = i
    return rows, products * len(RECENCY_BUCKETS) + bucket


def count_tokens(product_ids: list[str]) -> list[str]:
    per_product = [
        f"{kind}:{p}:{label}" for kind in ("adds", "drops") for p in product_ids
        for label in COUNT_LABELS
    ]  # fmt: skip
    totals = [f"{kind} total:{label}" for kind in ("adds", "drops") for label in TOTAL_LABELS]
    return per_product + totals


def count_entries(state: CustomerState) -> Entries:
    """`adds:P:1|2+`, `drops:P:1|2+` per product; `adds total:N`, `drops total:N`."""
    past = state.past
    n_products = state.held.shape[1]
    rows, cols = [], []
    for block, counts in enumerate((past.adds, past.drops)):
        r, p = np.nonzero(counts > 0)
        rows.append(r)
        cols.append((block * n_products + p) * 2 + (counts[r, p] >= 2))
    totals_at = 2 * 2 * n_products
    for block, counts in enumerate((past.adds, past.drops)):
        total = np.minimum(counts.sum(axis=1), len(TOTAL_LABELS) - 1)
        known = np.flatnonzero(past.depth > 0)  # no record, no count
        rows.append(known)
        cols.append(totals_at + block * len(TOTAL_LABELS) + total[known])
    return np.concatenate(rows), np.concatenate(cols)


def held_before_tokens(product_ids: list[str]) -> list[str]:
    return [f"held_before:{p}" for p in product_ids]


def held_before_entries(state: CustomerState) -> Entries:
    """`held_before:P`: held at an earlier snapshot, not now."""
    rows, products = np.nonzero(state.past.held_before() & ~state.held)
    return rows, products


def offer_month(as_of: np.ndarray) -> np.ndarray:
    """1..12: the calendar month after each state's snapshot (when the offer is taken up)."""
    month = pd.DatetimeIndex(as_of).month.to_numpy()
    return np.asarray(month % 12 + 1)


def fit_months(state: CustomerState) -> list[int]:
    """Offer months the training states cover; none when they cover a single month (a
    month seen once cannot be told from the overall level: nothing to learn)."""
    months = sorted(set(offer_month(state.as_of).tolist()))
    return months if len(months) > 1 else []


def month_tokens(months: list[int]) -> list[str]:
    return [f"month:{MONTHS[m - 1]}" for m in months]


def month_entries(state: CustomerState, months: list[int]) -> Entries:
    """`month:Jun` for a state whose offer month was seen in training; nothing otherwise
    (a month the model never saw would be an extrapolation, not seasonality)."""
    index = pd.Index(months).get_indexer(pd.Index(offer_month(state.as_of)))
    rows = np.flatnonzero(index >= 0)
    return rows, index[rows]


def fit_relative(state: CustomerState, columns: list[str]) -> dict[str, dict[str, float]]:
    """Median of each value column per segment (positive values only), plus overall."""
    out: dict[str, dict[str, float]] = {}
    for column in columns:
        values = pd.to_numeric(state.attributes[column], errors="coerce")
        values = values.where(values > 0)
        medians = values.groupby(pd.Series(state.segment).to_numpy()).median().dropna()
        overall = values.median()
        if pd.isna(overall):
            continue
        out[column] = {**{str(k): float(v) for k, v in medians.items()}, "": float(overall)}
    return out


def relative_tokens(medians: dict[str, dict[str, float]]) -> list[str]:
    return [f"{c} vs segment:{label}" for c in medians for _, label in RELATIVE_BUCKETS]


def relative_entries(state: CustomerState, medians: dict[str, dict[str, float]]) -> Entries:
    """`renta vs segment:above`: the value against the median of the customer's segment."""
    rows, cols = [], []
    for block, (column, by_segment) in enumerate(medians.items()):
        values = pd.to_numeric(state.attributes[column], errors="coerce").to_numpy(float)
        median = pd.Series(state.segment).map(by_segment).fillna(by_segment[""]).to_numpy()
        ratio = values / median
        known = np.flatnonzero(np.isfinite(ratio))
        edges = np.array([start for start, _ in RELATIVE_BUCKETS[1:]])
        bucket = np.searchsorted(edges, ratio[known], side="right")
        rows.append(known)
        cols.append(block * len(RELATIVE_BUCKETS) + bucket)
    if not rows:
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    return np.concatenate(rows), np.concatenate(cols)
