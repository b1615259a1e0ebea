"""Customer features: a sparse indicator matrix with a readable vocabulary.

Encoding (learnt by `fit` on training states, applied unchanged by `transform`):
- numeric attributes -> quantile bins (`income=[45000, 90000)`); numeric columns with at
  most `max_levels` distinct values are treated as categories (`risk_tolerance=3`);
- categorical attributes -> one indicator per value held by at least `min_share` of
  customers (at most `max_categories`), the rest share `col=other`;
- date attributes -> years before the snapshot (`birth_date` -> age), then quantile bins;
- missing values -> an explicit `col=missing` token;
- holdings at the snapshot: `held:P`, recently dropped `dropped:P` (held within the last
  `drop_window` snapshots, not now), time since acquired `held_for:P:BUCKET`;
- the value tier `tier:A|B|C`;
- time, from the history on record (`temporal`): held l snapshots before `held_ago:P:l`,
  months since the last add / drop `added:P:2m` / `closed:P:2m`, counts `adds:P:2+`, held
  before but not now `held_before:P`, the offer month `month:Jun`, value against the
  segment's median `renta vs segment:above`.
Every customer row activates one token per attribute, so any customer (including one never
seen in training) can be encoded.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender import temporal as T
from recommender.errors import ConfigError, NotFittedError
from recommender.history import MAX_LAGS
from recommender.state import CENSORED, CustomerState
from recommender.tier import VALUE_COLUMNS

MISSING = "(missing)"
OTHER = "(other)"
HELD_FOR_BUCKETS = ((0, "0-2m"), (3, "3-11m"), (12, "12m+"))
N_HELD_CAP = 5
TEMPORAL_BLOCKS = ("lags", "since_add", "since_drop", "counts", "held_before", "month", "relative")


@dataclass(frozen=True)
class FeatureOptions:
    n_bins: int = 20
    coarse_bins: int = 5  # extra bins for numbers and dates that are also used as levels
    max_levels: int = 150
    min_share: float = 0.001
    max_categories: int = 250
    attributes: bool = True
    holdings: bool = True
    dropped: bool = True
    held_for: bool = True
    held_set: bool = True
    cross_held: bool = False  # one token per (held product, attribute token) pair
    min_set_count: int = 20
    tier: bool = True
    # Time (see `temporal`): tokens read from the customer's history on record.
    # Defaults: what held up on the temporal validation split of real monthly data (README).
    lags: int = 1  # held 1..lags snapshots before
    since_add: bool = False  # months since the last acquisition of each product
    since_drop: bool = False  # months since the last drop of each product
    counts: bool = False  # acquisitions and drops on record, per product and in total
    held_before: bool = True  # held at an earlier snapshot, not now ("ever held")
    month: bool = False  # the offer's calendar month, when training saw it (see temporal)
    relative: bool = False  # income / value columns against the segment's median
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.lags <= MAX_LAGS:
            raise ConfigError(f"features.lags must be in 0..{MAX_LAGS} (got {self.lags})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def coarse(options: FeatureOptions) -> FeatureOptions:
    """The coarse view of an encoding: deciles, numbers with up to 10 values as levels,
    levels held by 1%+ of customers, holdings without held_for / held_set / dropped / tier
    tokens; time options and exclusions as given."""
    return replace(options, n_bins=10, max_levels=10, min_share=0.01, held_for=False,
                   held_set=False, dropped=False, tier=False, cross_held=False)  # fmt: skip


@dataclass(frozen=True)
class ColumnCode:
    """How one attribute column becomes tokens."""

    column: str
    kind: str  # "numeric" | "categorical" | "date"
    edges: tuple[float, ...] = ()
    levels: tuple[str, ...] = ()

    @property
    def tokens(self) -> list[str]:
        if self.kind == "categorical":  # levels (possibly none: then other or missing)
            return [f"{self.column}={v}" for v in (*self.levels, OTHER, MISSING)]
        bounds = [f"{e:.4g}" for e in self.edges]
        ranges = [f"<{bounds[0]}"] if bounds else ["any"]
        ranges += [f"[{a}, {b})" for a, b in itertools.pairwise(bounds)]
        ranges += [f">={bounds[-1]}"] if bounds else []
        unit = " years ago" if self.kind == "date" else ""
        return [f"{self.column}={r}{unit}" for r in ranges] + [f"{self.column}={MISSING}"]

    def codes(self, values: pd.Series, as_of: np.ndarray) -> np.ndarray:
        """Index into `tokens` for each value."""
        if self.kind == "categorical":
            codes, text = _factorized_text(values)
            index = pd.Index(self.levels).get_indexer(pd.Index(text))
            n = len(self.levels)
            index = np.where(text.isna(), n + 1, np.where(index < 0, n, index))
            mapped: np.ndarray = np.append(index, n + 1)[codes]  # code -1 -> missing (last)
            return mapped
        numbers = _as_number(values, self.kind, as_of)
        bins = np.searchsorted(np.asarray(self.edges), numbers, side="right")
        return np.where(np.isnan(numbers), len(self.edges) + 1, bins)


def _factorized_text(values: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """Codes per row (-1 for missing) and the clean text of each distinct value; only the
    distinct values are converted, which keeps encoding a million rows fast."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return codes, _as_text(pd.Series(uniques, dtype=values.dtype))


def _as_text(values: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        values = pd.to_datetime(values).dt.strftime("%Y-%m-%d")
    elif pd.api.types.is_float_dtype(values):
        values = values.map(lambda v: v if pd.isna(v) else f"{v:g}")
    text = values.astype("string").str.strip()
    return text.mask(text == "")


def _as_number(values: pd.Series, kind: str, as_of: np.ndarray) -> np.ndarray:
    if kind == "date":
        dates = pd.to_datetime(values).to_numpy(dtype="datetime64[ns]")
        days = (as_of.astype("datetime64[ns]") - dates).astype("timedelta64[D]").astype(float)
        return np.where(np.isnat(dates), np.nan, days / 365.25)
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


def _fit_column(
    column: str, values: pd.Series, as_of: np.ndarray, o: FeatureOptions
) -> list[ColumnCode]:
    """One code per column; numbers and dates with few levels get a level code and bins."""
    if pd.api.types.is_datetime64_any_dtype(values):
        kind = "date"
    elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        kind = "numeric"
    else:
        kind = "categorical"
    if kind != "categorical":
        numbers = _as_number(values, kind, as_of)
        present = numbers[~np.isnan(numbers)]
        many = values.nunique() > o.max_levels
        n_bins = o.n_bins if many else o.coarse_bins
        qs = np.linspace(0, 1, n_bins + 1)[1:-1]
        edges = np.unique(np.quantile(present, qs)) if len(present) else np.array([])
        binned = ColumnCode(column, kind, edges=tuple(float(e) for e in edges))
        if many:
            return [binned]
    codes, text = _factorized_text(values)
    counts = np.bincount(codes[codes >= 0], minlength=len(text))
    shares = pd.Series(counts, index=text).groupby(level=0).sum() / max(len(values), 1)
    shares = shares.sort_values(ascending=False, kind="stable")
    frequent = shares[shares >= o.min_share].index[: o.max_categories]
    levels = ColumnCode(column, "categorical", levels=tuple(str(v) for v in sorted(frequent)))
    if kind == "categorical":
        return [levels]
    return [levels, binned] if len(frequent) else [binned]  # no level worth a token


def _set_keys(held: np.ndarray) -> np.ndarray:
    """A key per row naming the exact set of held products (by index)."""
    weights = 1 << np.arange(held.shape[1], dtype=np.int64)
    return np.asarray(held.astype(np.int64) @ weights)


def _set_name(key: int, product_ids: list[str]) -> str:
    names = [p for i, p in enumerate(product_ids) if key >> i & 1]
    return "+".join(names) if names else "(nothing)"


def _frequent_sets(held: np.ndarray, min_count: int) -> list[int]:
    keys, counts = np.unique(_set_keys(held), return_counts=True)
    return [int(k) for k in keys[counts >= min_count]]


def _held_for_bucket(months: np.ndarray) -> np.ndarray:
    """0.. per HELD_FOR_BUCKETS; censored holdings (since the first snapshot) last."""
    bucket = np.zeros(months.shape, dtype=np.int64)
    for i, (start, _) in enumerate(HELD_FOR_BUCKETS):
        bucket[months >= start] = i
    return np.where(months == CENSORED, len(HELD_FOR_BUCKETS), bucket)


class FeatureBuilder:
    """Encode customer states as a sparse (customers, features) indicator matrix."""

    def __init__(self, options: FeatureOptions | None = None) -> None:
        self.options = options

    def fit(self, state: CustomerState, product_ids: list[str]) -> FeatureBuilder:
        o = self.options or FeatureOptions()
        columns = [c for c in state.attributes.columns if c not in o.exclude]
        self.columns_ = [
            code
            for c in (columns if o.attributes else [])
            for code in _fit_column(str(c), state.attributes[c], state.as_of, o)
        ]
        self.product_ids_ = list(product_ids)
        vocabulary = [t for code in self.columns_ for t in code.tokens]
        self.held_sets_ = _frequent_sets(state.held, o.min_set_count) if o.held_set else []
        self.offsets_: dict[str, int] = {}
        buckets = [label for _, label in HELD_FOR_BUCKETS] + ["since first snapshot"]
        n_attr = len(vocabulary)
        blocks = {
            "held": [f"held:{p}" for p in product_ids] if o.holdings else [],
            "dropped": [f"dropped:{p}" for p in product_ids] if o.dropped else [],
            "held_for": [f"held_for:{p}:{b}" for p in product_ids for b in buckets]
            if o.held_for
            else [],
            "held_set": [f"holds exactly:{_set_name(k, product_ids)}" for k in self.held_sets_]
            + ["holds exactly:(other)"]
            if o.held_set
            else [],
            "n_held": [f"products held:{n}" for n in range(N_HELD_CAP)]
            + [f"products held:{N_HELD_CAP}+"]
            if o.held_set
            else [],
            "tier": [f"tier:{t}" for t in ("A", "B", "C")] if o.tier else [],
            "cross_held": [f"held:{p} & {a}" for p in product_ids for a in vocabulary[:n_attr]]
            if o.cross_held
            else [],
            **self._fit_temporal(state, o),
        }
        for name, tokens in blocks.items():
            if tokens:
                self.offsets_[name] = len(vocabulary)
                vocabulary += tokens
        self.vocabulary_ = vocabulary
        return self

    def _fit_temporal(self, state: CustomerState, o: FeatureOptions) -> dict[str, list[str]]:
        ids = self.product_ids_
        self.months_ = T.fit_months(state) if o.month else []
        value_columns = [c for c in VALUE_COLUMNS if c in state.attributes and c not in o.exclude]
        self.medians_ = T.fit_relative(state, value_columns) if o.relative else {}
        return {
            "lags": T.lag_tokens(ids, o.lags),
            "since_add": T.recency_tokens("added", ids) if o.since_add else [],
            "since_drop": T.recency_tokens("closed", ids) if o.since_drop else [],
            "counts": T.count_tokens(ids) if o.counts else [],
            "held_before": T.held_before_tokens(ids) if o.held_before else [],
            "month": T.month_tokens(self.months_),
            "relative": T.relative_tokens(self.medians_),
        }

    def _temporal_entries(self, name: str, state: CustomerState) -> T.Entries:
        o = self.options or FeatureOptions()
        if name == "lags":
            return T.lag_entries(state, o.lags)
        if name == "since_add":
            return T.recency_entries(state.past.since_add)
        if name == "since_drop":
            return T.recency_entries(state.past.since_drop)
        if name == "counts":
            return T.count_entries(state)
        if name == "held_before":
            return T.held_before_entries(state)
        if name == "month":
            return T.month_entries(state, self.months_)
        return T.relative_entries(state, self.medians_)

    def transform(self, state: CustomerState) -> sp.csr_matrix:
        if not hasattr(self, "vocabulary_"):
            raise NotFittedError("FeatureBuilder is not fitted; call fit(state, product_ids)")
        n = len(state)
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        offset = 0
        attr_cols = []
        for code in self.columns_:
            rows.append(np.arange(n))
            attr_cols.append(offset + code.codes(state.attributes[code.column], state.as_of))
            offset += len(code.tokens)
        cols += attr_cols
        held_rows, held_products = np.nonzero(state.held)
        if "cross_held" in self.offsets_ and attr_cols:
            per_row = np.column_stack(attr_cols)[held_rows]  # (held pairs, attribute columns)
            rows.append(np.repeat(held_rows, per_row.shape[1]))
            cols.append(
                (self.offsets_["cross_held"] + held_products[:, None] * offset + per_row).ravel()
            )
        if "held" in self.offsets_:
            rows.append(held_rows)
            cols.append(self.offsets_["held"] + held_products)
        if "dropped" in self.offsets_:
            r, p = np.nonzero(state.dropped)
            rows.append(r)
            cols.append(self.offsets_["dropped"] + p)
        if "held_for" in self.offsets_:
            bucket = _held_for_bucket(state.held_months[held_rows, held_products])
            rows.append(held_rows)
            cols.append(
                self.offsets_["held_for"] + held_products * (len(HELD_FOR_BUCKETS) + 1) + bucket
            )
        if "held_set" in self.offsets_:
            keys = pd.Index(self.held_sets_).get_indexer(pd.Index(_set_keys(state.held)))
            rows += [np.arange(n), np.arange(n)]
            cols.append(self.offsets_["held_set"] + np.where(keys < 0, len(self.held_sets_), keys))
            cols.append(self.offsets_["n_held"] + np.minimum(state.held.sum(axis=1), N_HELD_CAP))
        if "tier" in self.offsets_:
            rows.append(np.arange(n))
            cols.append(
                self.offsets_["tier"] + pd.Index(["A", "B", "C"]).get_indexer(pd.Index(state.tier))
            )
        for name in TEMPORAL_BLOCKS:
            if name in self.offsets_:
                r, c = self._temporal_entries(name, state)
                rows.append(r)
                cols.append(self.offsets_[name] + c)
        r_all = np.concatenate(rows) if rows else np.array([], dtype=np.int64)
        c_all = np.concatenate(cols) if cols else np.array([], dtype=np.int64)
        values = np.ones(len(r_all), dtype=np.float32)
        return sp.csr_matrix((values, (r_all, c_all)), shape=(n, len(self.vocabulary_)))

    def fit_transform(self, state: CustomerState, product_ids: list[str]) -> sp.csr_matrix:
        return self.fit(state, product_ids).transform(state)
