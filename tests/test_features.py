"""Feature encoding: bins, categories, dates, missing tokens, holdings history, tiers."""

import numpy as np
import pandas as pd
import pytest

from recommender.errors import NotFittedError
from recommender.features import FeatureBuilder, FeatureOptions
from recommender.state import CENSORED, CustomerState
from tests.test_temporal import only


def state(
    attributes: pd.DataFrame,
    held: list[list[int]],
    months: list[list[int]] | None = None,
    dropped: list[list[int]] | None = None,
) -> CustomerState:
    n = len(attributes)
    h = np.array(held, dtype=bool)
    return CustomerState(
        customer_ids=np.array([f"c{i}" for i in range(n)], dtype=object),
        as_of=np.full(n, np.datetime64("2024-12-31", "ns")),
        held=h,
        dropped=np.array(dropped, dtype=bool) if dropped else np.zeros_like(h),
        held_months=np.array(months, dtype=np.int16) if months else np.zeros(h.shape, np.int16),
        attributes=attributes.reset_index(drop=True),
        tier=np.array(["A", "B", "C", "C"][:n], dtype=object),
        segment=np.array(["s"] * n, dtype=object),
    )


def active(builder: FeatureBuilder, s: CustomerState, row: int) -> list[str]:
    x = builder.transform(s)
    return [builder.vocabulary_[j] for j in x[row].indices]


ATTRS = pd.DataFrame(
    {
        "income": [10.0, 20.0, 30.0, np.nan],
        "city": ["Oslo", "Oslo", "Rome", None],
        "birth_date": pd.to_datetime(["1990-12-31", "1980-12-31", "1970-12-31", "2000-12-31"]),
        "risk": [1.0, 2.0, 2.0, 1.0],
    }
)


def test_every_kind_of_attribute_gets_a_token() -> None:
    s = state(
        ATTRS,
        [[1, 0], [0, 0], [0, 1], [0, 0]],
        months=[[CENSORED, 0], [0, 0], [0, 4], [0, 0]],
        dropped=[[0, 1], [0, 0], [0, 0], [0, 0]],
    )
    builder = FeatureBuilder(FeatureOptions(n_bins=2, min_share=0.3, max_levels=2)).fit(
        s, ["acc", "card"]
    )
    row0 = active(builder, s, 0)
    assert "income=<20" in row0 and "city=Oslo" in row0 and "risk=1" in row0
    assert "birth_date=>=29 years ago" in row0 or any(t.startswith("birth_date=") for t in row0)
    assert {"held:acc", "dropped:card", "held_for:acc:since first snapshot", "tier:A"} <= set(row0)
    row3 = active(builder, s, 3)
    assert {"income=(missing)", "city=(missing)", "tier:C"} <= set(row3)
    assert "held_for:card:3-11m" in active(builder, s, 2)
    assert "city=(other)" in active(builder, s, 2)  # Rome is rarer than min_share


def test_date_becomes_age_in_years_at_the_snapshot() -> None:
    s = state(ATTRS, [[0, 0]] * 4)
    builder = FeatureBuilder(FeatureOptions(n_bins=2, max_levels=2)).fit(s, ["acc", "card"])
    ages = [t for t in builder.vocabulary_ if t.startswith("birth_date=")]
    assert ages[0] == "birth_date=<39 years ago" or "years ago" in ages[0]
    # customers of 34 and 44 (ages at 2024-12-31) fall on either side of the median edge
    assert active(builder, s, 0) != active(builder, s, 2)


def test_unseen_values_and_customers_can_be_encoded() -> None:
    train = state(ATTRS, [[0, 0]] * 4)
    builder = FeatureBuilder(FeatureOptions(min_share=0.3, max_levels=2)).fit(
        train, ["acc", "card"]
    )
    new = state(
        pd.DataFrame({"income": [1e9], "city": ["Paris"], "birth_date": [pd.NaT], "risk": [9.0]}),
        [[1, 1]],
    )
    tokens = active(builder, new, 0)
    assert "city=(other)" in tokens and "birth_date=(missing)" in tokens
    assert "risk=(other)" in tokens and any(t.startswith("income=>=") for t in tokens)
    assert builder.transform(new).shape == (1, len(builder.vocabulary_))


def test_options_switch_blocks_off_and_unfitted_raises() -> None:
    s = state(ATTRS, [[1, 0]] * 4)
    with pytest.raises(NotFittedError, match="call fit"):
        FeatureBuilder().transform(s)
    only_holdings = FeatureBuilder(only(holdings=True)).fit(s, ["acc", "card"])
    assert only_holdings.vocabulary_ == ["held:acc", "held:card"]


def test_low_cardinality_dates_and_numbers_become_categories() -> None:
    s = state(ATTRS, [[0, 0]] * 4)
    builder = FeatureBuilder(FeatureOptions(max_levels=5, min_share=0.2)).fit(s, ["acc", "card"])
    assert "birth_date=1990-12-31" in active(builder, s, 0)  # a cohort, e.g. Zimnat join months
    assert "income=10" in active(builder, s, 0)


def test_held_set_and_count_tokens() -> None:
    s = state(ATTRS, [[1, 1], [1, 1], [1, 0], [0, 0]])
    builder = FeatureBuilder(FeatureOptions(min_set_count=2)).fit(s, ["acc", "card"])
    assert "holds exactly:acc+card" in active(builder, s, 0)
    assert "holds exactly:(other)" in active(builder, s, 2)
    assert "products held:2" in active(builder, s, 0)
