"""Customer value, the bank's ABC value tiers, and segments.

Tier A is the top 20% of customers by value, B the next 30%, C the rest. Value is an
income / assets / balance column when the data has one (set its name, or it is found
among `VALUE_COLUMNS`), otherwise product breadth with how long products have been held.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.errors import ConfigError, NotFittedError

VALUE_COLUMNS = ("value", "aum", "balance", "income", "renta")
SEGMENT_COLUMNS = (C.SEGMENT, "segmento")
TIER_SHARES = {"A": 0.2, "B": 0.3}  # C is the rest
UNKNOWN = "unknown"


def value_column(attributes: pd.DataFrame, name: str | None) -> str | None:
    if name is not None:
        if name not in attributes.columns:
            raise ConfigError(
                f"value column {name!r} is not a customer attribute "
                f"(have: {', '.join(map(str, attributes.columns))})"
            )
        return name
    return next((c for c in VALUE_COLUMNS if c in attributes.columns), None)


def customer_value(
    attributes: pd.DataFrame, held: np.ndarray, held_months: np.ndarray, name: str | None = None
) -> np.ndarray:
    """A number per customer; higher is more valuable to the bank."""
    column = value_column(attributes, name)
    if column is not None:
        values = pd.to_numeric(attributes[column], errors="coerce").to_numpy(float)
        if np.isfinite(values).any():
            filled: np.ndarray = np.where(np.isfinite(values), values, np.nanmedian(values))
            return filled
    longest = np.where(held_months < 0, 99, np.clip(held_months, 0, 99)).max(axis=1)
    value: np.ndarray = held.sum(axis=1) + 0.01 * longest
    return value


class ValueTier:
    """Thresholds learnt from a population's values; A above the 80th percentile, etc.

    Value comes from `customer_value(attributes, held, held_months, value_col)`.
    """

    def __init__(
        self, value_col: str | None = None, shares: dict[str, float] | None = None
    ) -> None:
        self.value_col = value_col
        self.shares = shares

    def fit(self, attributes: pd.DataFrame, held: np.ndarray, held_months: np.ndarray) -> ValueTier:
        values = customer_value(attributes, held, held_months, self.value_col)
        shares = self.shares or TIER_SHARES
        self.threshold_a_ = float(np.quantile(values, 1 - shares["A"]))
        self.threshold_b_ = float(np.quantile(values, 1 - shares["A"] - shares["B"]))
        return self

    def transform(
        self, attributes: pd.DataFrame, held: np.ndarray, held_months: np.ndarray
    ) -> np.ndarray:
        if not hasattr(self, "threshold_a_"):
            raise NotFittedError("ValueTier is not fitted; call fit(attributes, held, ...) first")
        values = customer_value(attributes, held, held_months, self.value_col)
        tiers = np.full(len(values), "C", dtype=object)
        tiers[values > self.threshold_b_] = "B"
        tiers[values > self.threshold_a_] = "A"
        return tiers


def segment_labels(attributes: pd.DataFrame, tier: np.ndarray, name: str | None) -> np.ndarray:
    """The segment attribute as clean strings, or `tier X` when the data has none."""
    if name is not None and name not in attributes.columns:
        raise ConfigError(f"segment column {name!r} is not a customer attribute")
    column = name or next((c for c in SEGMENT_COLUMNS if c in attributes.columns), None)
    if column is None:
        return np.char.add("tier ", tier.astype(str)).astype(object)
    labels = attributes[column].astype("string").str.strip().fillna(UNKNOWN)
    return labels.replace("", UNKNOWN).to_numpy(dtype=object)
