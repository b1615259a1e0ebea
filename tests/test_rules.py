"""Business rules from the catalog, and one product per family in a list."""

import numpy as np
import pandas as pd
import pytest

from recommender.errors import ConfigError
from recommender.ranking import top_k_distinct
from recommender.rules import RuleBook, RuleSettings, client_age
from recommender.state import CustomerState

CATALOG = pd.DataFrame({
    "product_id": ["acc", "plus", "card", "fund", "junior", "vip"],
    "name": ["current account", "plus account", "credit card", "funds", "junior account",
             "private banking"],
    "risk_level": [1, 1, 3, 5, 1, 2],
    "min_age": [0, 18, 18, 18, 0, 18],
    "max_age": [120, 120, 120, 120, 17, 120],
    "min_income": [0, 0, 10_000, 0, 0, 0],
    "segments": ["", "", "", "", "", "top"],
    "family": ["main", "main", "", "", "main", ""],
})  # fmt: skip


def state(held: list[list[int]], attributes: dict[str, list[object]]) -> CustomerState:
    n = len(held)
    attrs = pd.DataFrame(attributes)
    return CustomerState(
        customer_ids=np.array([f"c{i}" for i in range(n)], dtype=object),
        as_of=np.full(n, np.datetime64("2026-10-31", "ns")),
        held=np.array(held, dtype=bool),
        dropped=np.zeros((n, 6), dtype=bool),
        held_months=np.zeros((n, 6), dtype=np.int16),
        attributes=attrs,
        tier=np.array(["A"] * n, dtype=object),
        segment=attrs["segment"].to_numpy(dtype=object),
    )


def reasons_of(book: RuleBook, s: CustomerState, row: int) -> dict[str, str]:
    decision = book.decide(s)
    return {CATALOG.product_id[p]: why for p, why in decision.reasons[row].items()}


def test_each_rule_gives_its_reason() -> None:
    s = state(
        [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]],
        {"segment": ["individual", "top"], "age": [35, 12], "income": [5_000, np.nan],
         "risk_tolerance": [3, np.nan]},
    )  # fmt: skip
    book = RuleBook(CATALOG, known_segments={"individual", "top"})
    adult = reasons_of(book, s, 0)
    assert adult["acc"] == "already held"
    assert adult["junior"] == "eligibility: maximum age 17 (client 35)"
    assert adult["card"] == "eligibility: minimum income 10,000 (client 5,000)"
    assert adult["fund"] == "suitability: risk level 5 exceeds the client's risk tolerance 3"
    assert adult["vip"] == "eligibility: only for segments top (client: individual)"
    assert adult["plus"] == "family main: already holds current account"
    child = reasons_of(book, s, 1)
    assert child["card"] == "eligibility: minimum age 18 (client 12)"  # unknown income: no rule
    assert "fund" in child and "suitability" not in child["fund"]  # unknown tolerance: no rule
    assert "acc" not in child and "junior" not in child  # the top segment may have vip...
    assert child["vip"] == "eligibility: minimum age 18 (client 12)"  # ...from 18


def test_rules_can_be_switched_off() -> None:
    s = state([[1, 0, 0, 0, 0, 0]], {"segment": ["individual"], "age": [35],
                                     "income": [5_000], "risk_tolerance": [1]})  # fmt: skip
    book = RuleBook(CATALOG, RuleSettings(eligibility=False, suitability=False, families=False))
    assert reasons_of(book, s, 0) == {"acc": "already held"}


def test_age_from_birth_date() -> None:
    s = state([[0] * 6], {"segment": ["x"], "birth_date": pd.to_datetime(["2000-10-31"])})
    assert client_age(s)[0] == pytest.approx(26.0, abs=0.01)


def test_catalog_errors_fail_when_the_book_is_built() -> None:
    bad = CATALOG.assign(min_age=[0, 18, 18, 18, 30, 18])
    with pytest.raises(ConfigError, match="junior has min_age 30 above max_age 17"):
        RuleBook(bad)
    with pytest.raises(ConfigError, match="vip allows segments \\['top'\\] that no client has"):
        RuleBook(CATALOG, known_segments={"individual"})


def test_one_product_per_family_in_a_list() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    groups = np.array([0, 0, -1, -1, 0, -1])
    items, _, displaced = top_k_distinct(scores, 3, np.zeros((1, 6), dtype=bool), groups)
    assert items.tolist() == [[0, 2, 3]]
    assert displaced[0].tolist() == [-1, 0, -1, -1, 0, -1]  # kept out by rank 1's family
    items, _, _ = top_k_distinct(scores, 6, np.array([[1, 0, 0, 0, 0, 0]], dtype=bool), groups)
    assert items.tolist() == [[1, 2, 3, 5, -1, -1]]
