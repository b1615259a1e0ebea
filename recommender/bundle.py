"""Everything needed to score customers, in one object that is saved with the model.

A `ModelBundle` holds the calibrated hybrid model, the product catalog, how value tiers
and segments are derived, and the snapshot it was trained up to. It turns customer
records (known customers or cold-start clients: attributes plus held product ids) into
states and states into ranked, explained offers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.errors import ConfigError
from recommender.models.hybrid import HybridModel
from recommender.ranking import top_k
from recommender.state import CENSORED, CustomerState, StateOptions
from recommender.tier import ValueTier, segment_labels

HOLDINGS = "holdings"
DROPPED = "dropped"
AS_OF = "as_of"
EXPECTED_VALUE = "expected_value"
OBJECTIVES = ("propensity", "expected_value")
RECORD_FIELDS = (C.CUSTOMER_ID, HOLDINGS, DROPPED, AS_OF)
# When no feature of the client pushes a product up, it was chosen for what it is.
FALLBACK_REASON = {"propensity": "popular with clients overall",
                   "expected_value": "high value of a sale"}  # fmt: skip


@dataclass
class ModelBundle:
    model: HybridModel
    products: pd.DataFrame
    tiering: ValueTier
    options: StateOptions
    as_of: pd.Timestamp
    attribute_columns: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def product_ids(self) -> list[str]:
        """Computed once: every request reads it (the catalog does not change)."""
        return [str(p) for p in self.products[C.PRODUCT_ID]]

    @cached_property
    def margins(self) -> np.ndarray:
        if C.MARGIN not in self.products.columns:
            return np.ones(len(self.products))
        return self.products[C.MARGIN].fillna(0).to_numpy(dtype=float)

    def state_from_frame(self, frame: pd.DataFrame) -> CustomerState:
        """States from records: customer_id, attributes, `holdings` / `dropped` product lists.

        Holding dates are unknown for such records, so every holding counts as held
        since before the records. Unknown product ids are an error naming them.
        """
        n = len(frame)
        held = self._product_matrix(frame.get(HOLDINGS), n)
        dropped = self._product_matrix(frame.get(DROPPED), n) & ~held
        months = np.where(held, CENSORED, 0).astype(np.int16)
        attributes = frame.reindex(columns=self.attribute_columns).reset_index(drop=True)
        as_of = None
        if AS_OF in frame.columns:
            as_of = pd.to_datetime(frame[AS_OF], errors="coerce", format="ISO8601")
            bad = frame[AS_OF].notna() & as_of.isna()
            if bad.any():
                raise ConfigError(f"as_of {_plain(frame[AS_OF][bad].iloc[0])!r} is not a date "
                                  "(expected YYYY-MM-DD)")  # fmt: skip
        dates = np.full(n, np.datetime64(self.as_of, "ns"))
        if as_of is not None:
            dates = np.where(as_of.isna(), dates, as_of.to_numpy(dtype="datetime64[ns]"))
        tier = self.tiering.transform(attributes, held, months)
        segment = segment_labels(attributes, tier, self.options.segment_col)
        ids = frame[C.CUSTOMER_ID].astype(str).to_numpy(dtype=object)
        return CustomerState(ids, dates, held, dropped, months, attributes, tier, segment,
                             self.tiering)  # fmt: skip

    def coerce_attributes(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Attribute values as the model saw them in training: dates as dates, numbers as
        numbers. Unknown attributes and unparsable values are errors naming them."""
        kinds = self.attribute_kinds()
        unknown = [c for c in frame.columns if c not in kinds and c not in RECORD_FIELDS]
        if unknown:
            raise ConfigError(
                f"unknown attribute {unknown[0]!r}; known: {', '.join(sorted(kinds))}"
            )
        out = frame.copy()
        for column, kind in kinds.items():
            if column not in out.columns or kind == "categorical":
                continue
            raw = out[column]
            if kind == "date":
                parsed = pd.to_datetime(raw, errors="coerce", format="ISO8601")
            else:
                parsed = pd.to_numeric(raw.map(_not_bool), errors="coerce")
                parsed = parsed.where(np.isfinite(parsed.astype(float)))
            bad = raw.notna() & parsed.isna()
            if bad.any():
                value = _plain(raw[bad].iloc[0])
                what = "a date (YYYY-MM-DD)" if kind == "date" else "a number"
                raise ConfigError(f"attribute {column}: {value!r} is not {what}")
            out[column] = parsed
        return out

    def attribute_kinds(self) -> dict[str, str]:
        """numeric | date | categorical, per attribute column the model encodes."""
        kinds: dict[str, str] = dict.fromkeys(self.attribute_columns, "categorical")
        for code in getattr(self.model.builder_, "columns_", []):
            if code.kind in ("numeric", "date"):
                kinds[code.column] = code.kind
        return kinds

    def _product_matrix(self, lists: pd.Series | None, n: int) -> np.ndarray:
        out = np.zeros((n, len(self.product_ids)), dtype=bool)
        if lists is None:
            return out
        index = {p: i for i, p in enumerate(self.product_ids)}
        for row, items in enumerate(lists):
            for item in _as_list(items):
                if item not in index:
                    raise ConfigError(
                        f"unknown product {item!r}; known products: {', '.join(self.product_ids)}"
                    )
                out[row, index[item]] = True
        return out

    def recommend(
        self,
        state: CustomerState,
        k: int = 7,
        objective: str = "propensity",
        explain: bool = True,
        exclude: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Long table: customer_id, rank, product_id, score, probability, expected_value,
        reason; held (and `exclude`d) products are never offered."""
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective {objective!r}: use {' or '.join(OBJECTIVES)}")
        scores = self.model.score(state)
        probability = self.model.predict_proba(state, scores)
        value = probability * self.margins
        key = scores if objective == "propensity" else value
        blocked = state.held if exclude is None else state.held | exclude
        items, _ = top_k(key, k, blocked)
        rows, ranks = np.nonzero(items >= 0)
        chosen = items[rows, ranks]
        frame = pd.DataFrame({
            C.CUSTOMER_ID: state.customer_ids[rows],
            C.RANK: ranks + 1,
            C.PRODUCT_ID: np.asarray(self.product_ids, dtype=object)[chosen],
            C.SCORE: scores[rows, chosen],
            C.PROBABILITY: probability[rows, chosen],
            EXPECTED_VALUE: value[rows, chosen],
        })  # fmt: skip
        if explain:
            reasons = self.model.reasons(state, items)
            fallback = FALLBACK_REASON[objective]
            frame[C.REASON] = [
                "; ".join(reasons[r][j]) or fallback for r, j in zip(rows, ranks, strict=True)
            ]
        return frame


def _as_list(items: Any) -> list[str]:
    if items is None or (isinstance(items, float) and np.isnan(items)):
        return []
    if isinstance(items, str):
        return [p.strip() for p in items.split(";") if p.strip()]
    return [str(p).strip() for p in items]


def _plain(value: Any) -> Any:
    """Numpy scalars as Python values, for messages."""
    return value.item() if isinstance(value, np.generic) else value


def _not_bool(value: Any) -> Any:
    """True/False are not numbers (an income of True is a mistake, not 1)."""
    return None if isinstance(value, bool | np.bool_) else value
