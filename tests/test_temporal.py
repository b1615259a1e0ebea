"""Temporal feature tokens, their words, and recency weighting, on hand-checked cases.

States come from the two-customer cube of test_history (its table is in that module's
docstring); the snapshot t4 is 2024-05-31, so its offer month is June.
"""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from recommender import temporal as T
from recommender.errors import ConfigError
from recommender.explanation import describe
from recommender.features import FeatureBuilder, FeatureOptions
from recommender.history import NEVER
from recommender.models import hybrid
from recommender.models.hybrid import HybridConfig, recency_weights
from recommender.protocol import Examples
from recommender.state import CustomerState, HoldingsCube
from tests.helpers import bank
from tests.test_history import two_customer_cube

PRODUCTS = ["sav", "card"]
# everything that is not time switched off: the vocabulary is exactly the option's tokens
NOTHING = FeatureOptions(
    attributes=False,
    holdings=False,
    dropped=False,
    held_for=False,
    held_set=False,
    tier=False,
    lags=0,
    held_before=False,
)


def only(**options: object) -> FeatureOptions:
    return replace(NOTHING, **options)


def tokens(builder: FeatureBuilder, state: CustomerState) -> list[set[str]]:
    x = builder.transform(state)
    assert x.shape == (len(state), len(builder.vocabulary_))
    return [{builder.vocabulary_[j] for j in x[row].indices} for row in range(len(state))]


@pytest.fixture(scope="module")
def cube() -> HoldingsCube:
    return two_customer_cube()


def fitted(options: FeatureOptions, state: CustomerState) -> FeatureBuilder:
    return FeatureBuilder(options).fit(state, PRODUCTS)


def test_defaults_are_one_lag_and_held_before(cube: HoldingsCube) -> None:
    o = FeatureOptions()
    assert (o.lags, o.held_before) == (1, True)
    assert not (o.since_add or o.since_drop or o.counts or o.month or o.relative)
    vocabulary = fitted(replace(o, attributes=False), cube.state_at(4)).vocabulary_
    temporal = [t for t in vocabulary if t.startswith(("held_ago:", "held_before:"))]
    assert temporal == [
        "held_ago:sav:1",
        "held_ago:card:1",
        "held_before:sav",
        "held_before:card",
    ]
    prefixes = ("added:", "closed:", "adds", "drops", "month:")
    assert not [t for t in vocabulary if t.startswith(prefixes) or " vs segment:" in t]


def test_nothing_but_an_option_gives_nothing(cube: HoldingsCube) -> None:
    builder = fitted(NOTHING, cube.state_at(4))
    assert builder.vocabulary_ == []
    assert tokens(builder, cube.state_at(4)) == [set(), set()]


def test_lags(cube: HoldingsCube) -> None:
    state = cube.state_at(4)
    builder = fitted(only(lags=4), state)
    assert builder.vocabulary_ == [f"held_ago:{p}:{lag}" for p in PRODUCTS for lag in (1, 2, 3, 4)]
    assert tokens(builder, state) == [
        {
            "held_ago:sav:3",
            "held_ago:sav:4",
            "held_ago:card:1",
            "held_ago:card:2",
            "held_ago:card:3",
        },
        {"held_ago:card:2", "held_ago:card:4"},
    ]
    # lags beyond the record (depth 4) are never on
    assert tokens(fitted(only(lags=6), state), state) == tokens(builder, state)
    assert tokens(fitted(only(lags=1), state), state) == [{"held_ago:card:1"}, set()]


@pytest.mark.parametrize("lags", [-1, 33, 100])
def test_lags_outside_the_bits_are_a_config_error(lags: int) -> None:
    with pytest.raises(ConfigError, match=f"features.lags must be in 0..32 \\(got {lags}\\)"):
        FeatureOptions(lags=lags)
    with pytest.raises(ConfigError, match=r"features\.lags"):
        HybridConfig.from_dict({"features.lags": lags})


def test_lags_zero_and_thirty_two_are_allowed(cube: HoldingsCube) -> None:
    assert fitted(only(lags=0), cube.state_at(4)).vocabulary_ == []
    assert len(fitted(only(lags=32), cube.state_at(4)).vocabulary_) == 64


def test_since_add(cube: HoldingsCube) -> None:
    state = cube.state_at(4)
    builder = fitted(only(since_add=True), state)
    labels = ["0m", "1m", "2m", "3-5m", "6-11m", "12m+"]
    assert builder.vocabulary_ == [f"added:{p}:{b}" for p in PRODUCTS for b in labels]
    # a re-added sav at t4 (0 months), card 2024-02-29 (3 months); b's card 2024-03-31
    assert tokens(builder, state) == [{"added:sav:0m", "added:card:3-5m"}, {"added:card:2m"}]


def test_since_drop(cube: HoldingsCube) -> None:
    state = cube.state_at(4)
    builder = fitted(only(since_drop=True), state)
    assert builder.vocabulary_[:2] == ["closed:sav:0m", "closed:sav:1m"]
    assert tokens(builder, state) == [{"closed:sav:2m"}, {"closed:card:1m"}]
    # at t3 b's card was dropped at that very snapshot
    assert tokens(builder, cube.state_at(3)) == [{"closed:sav:1m"}, {"closed:card:0m"}]


def test_recency_buckets_edges() -> None:
    months = np.array([[NEVER, 0, 1, 2, 3, 5, 6, 11, 12, 40]], dtype=np.int16)
    rows, cols = T.recency_entries(months)
    assert rows.tolist() == [0] * 9
    labels = [T.RECENCY_BUCKETS[c % 6][1] for c in cols]
    assert labels == ["0m", "1m", "2m", "3-5m", "3-5m", "6-11m", "6-11m", "12m+", "12m+"]
    assert (cols // 6).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]  # the product of each


def test_counts(cube: HoldingsCube) -> None:
    state = cube.state_at(4)
    builder = fitted(only(counts=True), state)
    assert builder.vocabulary_ == [
        "adds:sav:1",
        "adds:sav:2+",
        "adds:card:1",
        "adds:card:2+",
        "drops:sav:1",
        "drops:sav:2+",
        "drops:card:1",
        "drops:card:2+",
        "adds total:0",
        "adds total:1",
        "adds total:2",
        "adds total:3+",
        "drops total:0",
        "drops total:1",
        "drops total:2",
        "drops total:3+",
    ]
    assert tokens(builder, state) == [
        {"adds:sav:1", "adds:card:1", "drops:sav:1", "adds total:2", "drops total:1"},
        {"adds:card:1", "drops:card:2+", "adds total:1", "drops total:2"},
    ]
    assert tokens(builder, cube.state_at(1)) == [
        {"adds:card:1", "adds total:1", "drops total:0"},
        {"drops:card:1", "adds total:0", "drops total:1"},
    ]


def test_counts_need_a_record(cube: HoldingsCube) -> None:
    """At the first snapshot nothing is on record: no count, not even 'adds total:0'."""
    builder = fitted(only(counts=True), cube.state_at(4))
    assert tokens(builder, cube.state_at(0)) == [set(), set()]


def test_counts_cap_at_three_or_more() -> None:
    state = two_customer_cube().state_at(4)
    adds = np.array([[3, 2], [0, 0]], dtype=np.int16)
    busy = replace(state, history=replace(state.past, adds=adds))
    builder = fitted(only(counts=True), state)
    assert tokens(builder, busy)[0] == {
        "adds:sav:2+",
        "adds:card:2+",
        "drops:sav:1",
        "adds total:3+",
        "drops total:1",
    }


def test_held_before(cube: HoldingsCube) -> None:
    builder = fitted(only(held_before=True), cube.state_at(4))
    assert builder.vocabulary_ == ["held_before:sav", "held_before:card"]
    # t4: a holds both again (held now is not 'before'); b held card at t0 and t2
    assert tokens(builder, cube.state_at(4)) == [set(), {"held_before:card"}]
    assert tokens(builder, cube.state_at(3)) == [{"held_before:sav"}, {"held_before:card"}]
    assert tokens(builder, cube.state_at(0)) == [set(), set()]


def test_no_history_no_time_tokens(cube: HoldingsCube) -> None:
    """A client known only from a request (history None) activates no time token."""
    state = cube.state_at(4)
    options = only(lags=4, since_add=True, since_drop=True, counts=True, held_before=True)
    builder = fitted(options, state)
    assert len(builder.vocabulary_) == 8 + 12 + 12 + 16 + 2
    assert tokens(builder, replace(state, history=None)) == [set(), set()]


def test_offer_month_is_the_month_after_the_snapshot() -> None:
    as_of = pd.to_datetime(["2024-05-31", "2024-12-31", "2025-01-31", "2015-01-28"])
    assert T.offer_month(as_of.to_numpy()).tolist() == [6, 1, 2, 2]


def test_month_token_for_months_seen_in_training(cube: HoldingsCube) -> None:
    train = CustomerState.concat([cube.state_at(3), cube.state_at(4)])  # offers in May, June
    builder = fitted(only(month=True), train)
    assert builder.vocabulary_ == ["month:May", "month:Jun"]
    assert tokens(builder, cube.state_at(4)) == [{"month:Jun"}, {"month:Jun"}]
    assert tokens(builder, cube.state_at(3)) == [{"month:May"}, {"month:May"}]
    assert tokens(builder, cube.state_at(2)) == [set(), set()]  # April: never seen


def test_no_month_token_when_training_covers_one_month(cube: HoldingsCube) -> None:
    builder = fitted(only(month=True), cube.state_at(4))
    assert builder.vocabulary_ == []
    assert tokens(builder, cube.state_at(3)) == [set(), set()]


def test_month_is_off_by_default(cube: HoldingsCube) -> None:
    train = CustomerState.concat([cube.state_at(3), cube.state_at(4)])
    vocabulary = fitted(replace(FeatureOptions(), attributes=False), train).vocabulary_
    assert not [t for t in vocabulary if t.startswith("month:")]


def income_bank_state() -> CustomerState:
    """Medians of positive income: s1 (100, 100, 300) 100; s2 (50, 100) 75;
    s3 (10, 20, 40) 20; overall (10, 20, 40, 50, 100, 100, 100, 300) 75."""
    incomes = {
        "c1": ("s1", 100.0),
        "c2": ("s1", 100.0),
        "c3": ("s1", 300.0),
        "c4": ("s1", 0.0),  # not a value: left out of the median, far below it
        "c5": ("s1", float("nan")),
        "d1": ("s2", 50.0),
        "d2": ("s2", 100.0),
        "e1": ("s3", 10.0),
        "e2": ("s3", 20.0),
        "e3": ("s3", 40.0),
    }
    data = bank(
        [(c, "sav", "2024-05-31") for c in incomes],
        customers={c: {"segment": s, "income": v} for c, (s, v) in incomes.items()},
        products=PRODUCTS,
    )
    return HoldingsCube.from_data(data).state_at(0)


def relative_labels(builder: FeatureBuilder, state: CustomerState) -> dict[str, set[str]]:
    rows = tokens(builder, state)
    return dict(zip(state.customer_ids.tolist(), rows, strict=True))


def test_relative_to_the_segment_median() -> None:
    state = income_bank_state()
    builder = fitted(only(relative=True), state)
    labels = ["far below", "below", "typical", "above", "far above"]
    assert builder.vocabulary_ == [f"income vs segment:{b}" for b in labels]
    assert builder.medians_ == {"income": {"s1": 100.0, "s2": 75.0, "s3": 20.0, "": 75.0}}

    def on(label: str) -> set[str]:
        return {f"income vs segment:{label}"}

    assert relative_labels(builder, state) == {
        "c1": on("typical"),
        "c2": on("typical"),
        "c3": on("far above"),  # 3x the median of s1
        "c4": on("far below"),
        "c5": set(),  # no income, no comparison
        "d1": on("below"),  # 50 / 75
        "d2": on("above"),  # 100 / 75
        "e1": on("below"),  # 0.5 exactly: the bucket starting there
        "e2": on("typical"),
        "e3": on("far above"),  # 2.0 exactly
    }


def test_relative_for_an_unseen_segment_uses_the_overall_median() -> None:
    state = income_bank_state()
    builder = fitted(only(relative=True), state)
    moved = replace(state, segment=np.full(len(state), "new", dtype=object))
    rows = relative_labels(builder, moved)
    assert rows["c3"] == {"income vs segment:far above"}  # 300 / 75 = 4
    assert rows["c1"] == {"income vs segment:above"}  # 100 / 75
    assert rows["e1"] == {"income vs segment:far below"}  # 10 / 75


def test_relative_is_off_by_default_and_follows_exclude() -> None:
    state = income_bank_state()
    assert not FeatureOptions().relative
    assert fitted(only(relative=True, exclude=("income",)), state).vocabulary_ == []
    no_income = replace(state, attributes=state.attributes.drop(columns=["income"]))
    assert fitted(only(relative=True), no_income).vocabulary_ == []


NAMES = {"sav": "savings account", "card": "credit card", "od": "overdraft"}


@pytest.mark.parametrize(
    ("token", "words"),
    [
        ("held_ago:sav:1", "held a savings account 1 month ago"),
        ("held_ago:sav:2", "held a savings account 2 months ago"),
        ("held_ago:od:3", "held an overdraft 3 months ago"),
        ("added:card:0m", "opened a credit card this month"),
        ("added:card:1m", "opened a credit card 1 month ago"),
        ("added:card:3-5m", "opened a credit card 3-5 months ago"),
        ("added:card:12m+", "opened a credit card 12 or more months ago"),
        ("closed:sav:2m", "closed a savings account 2 months ago"),
        ("closed:od:6-11m", "closed an overdraft 6-11 months ago"),
        ("adds:sav:1", "opened a savings account once before"),
        ("adds:sav:2+", "opened a savings account twice or more before"),
        ("drops:od:1", "closed an overdraft once before"),
        ("drops:card:2+", "closed a credit card twice or more before"),
        ("adds total:0", "opened 0 products on record"),
        ("adds total:1", "opened 1 product on record"),
        ("drops total:3+", "closed 3+ products on record"),
        ("held_before:od", "had an overdraft before"),
        ("held_before:sav", "had a savings account before"),
        ("month:Jun", "offer month: Jun"),
        ("income vs segment:far above", "income far above the segment's typical"),
        ("income vs segment:typical", "income typical for the segment"),
        ("risk_level vs segment:below", "risk level below the segment's typical"),
        ("held_ago:unnamed:2", "held an unnamed 2 months ago"),  # id when no name
    ],
)
def test_words_for_each_time_token(token: str, words: str) -> None:
    assert describe(token, NAMES) == words


def test_every_time_token_of_a_builder_has_its_own_words(cube: HoldingsCube) -> None:
    options = only(lags=2, since_add=True, since_drop=True, counts=True, held_before=True)
    vocabulary = fitted(options, cube.state_at(4)).vocabulary_
    words = [describe(t, NAMES) for t in vocabulary]
    assert len(set(words)) == len(vocabulary)
    assert not [w for w in words if ":" in w or "_" in w]


DAYS = 30.44  # history.DAYS_PER_MONTH


def test_recency_weights_halve_per_half_life() -> None:
    # 2024-05-31, 2024-03-31 (61 days before), 2024-01-30 (122 days before)
    as_of = pd.to_datetime(["2024-03-31", "2024-05-31", "2024-01-30"]).to_numpy()
    half_life = 61 / DAYS  # exactly 61 days in months
    assert recency_weights(as_of, half_life).tolist() == [0.5, 1.0, 0.25]
    weights = recency_weights(as_of, 2.0)
    assert weights == pytest.approx([0.5 ** (61 / DAYS / 2), 1.0, 0.5 ** (122 / DAYS / 2)])


def test_recency_weights_off() -> None:
    as_of = pd.to_datetime(["2024-03-31", "2024-05-31"]).to_numpy()
    assert recency_weights(as_of, 0.0).tolist() == [1.0, 1.0]
    assert recency_weights(as_of[:0], 3.0).tolist() == []


@pytest.mark.parametrize("half_life", [-1.0, -0.01])
def test_negative_half_life_is_a_config_error(half_life: float) -> None:
    with pytest.raises(ConfigError, match=f"recency_half_life .* \\(got {half_life}\\)"):
        HybridConfig(recency_half_life=half_life)
    with pytest.raises(ConfigError, match="recency_half_life"):
        HybridConfig.from_dict({"recency_half_life": half_life})


def test_half_life_round_trips_through_the_config_dict() -> None:
    config = HybridConfig(recency_half_life=6.0, features=FeatureOptions(lags=3, month=True))
    assert HybridConfig.from_dict(config.to_dict()) == config


def test_acquisitions_are_weighted_by_recency(cube: HoldingsCube) -> None:
    """Two examples two months apart (t2 2024-03-31, t4 2024-05-31, 61 days); with a
    half-life of 61 days the older acquisition weighs 0.5."""
    state = CustomerState.concat([cube.state_at(2).take(np.array([0])), cube.state_at(4)])
    targets = np.array([[False, True], [True, False], [False, True]])
    train = Examples(state, targets)
    interactions, weights = hybrid._interactions(train, False, 61 / DAYS)
    assert interactions.toarray().tolist() == [[0, 1], [1, 0], [0, 1]]
    assert weights.toarray().tolist() == [[0, 0.5], [1, 0], [0, 1]]
    _, unweighted = hybrid._interactions(train, False, 0.0)
    assert unweighted.data.tolist() == [1.0, 1.0, 1.0]
