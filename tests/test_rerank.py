"""The second stage: LightGBM lambdarank over LightFM's candidates, its exact reasons, and
the words for pair features."""

import math
import pickle
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from recommender.dataset import BankData
from recommender.errors import ConfigError, ModelFitError, NotFittedError
from recommender.models.hybrid import HybridConfig, HybridModel
from recommender.models.rerank import Reranker, _candidate_pairs, pair_words
from recommender.protocol import Split, split
from tests.helpers import synthetic_bank

CANDIDATES = 10
RERANK = HybridConfig(
    rerank=True,
    rerank_candidates=CANDIDATES,
    rerank_rounds=20,
    ensemble=1,
    epochs=5,
    no_components=16,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> BankData:
    return synthetic_bank(tmp_path_factory.mktemp("bank") / "bank", 3000, 6, seed=21)


@pytest.fixture(scope="module")
def the_split(data: BankData) -> Split:
    return split(data)


@pytest.fixture(scope="module")
def model(the_split: Split, data: BankData) -> HybridModel:
    return HybridModel(RERANK).fit(the_split.train, data.products)


def test_a_reranked_model_fits_and_says_so(model: HybridModel, the_split: Split) -> None:
    assert model.reranked and isinstance(model.reranker_, Reranker)
    scores = model.score(the_split.test.state)
    assert scores.shape == (len(the_split.test), 24) and np.isfinite(scores).all()
    first = HybridModel(HybridConfig(ensemble=1, epochs=1))
    assert not first.reranked  # unfitted: no second stage either


def test_recommendations_never_offer_held_products(model: HybridModel, the_split: Split) -> None:
    state = the_split.test.state
    items, _ = model.recommend(state, 7)
    rows, ranks = np.nonzero(items >= 0)
    assert len(rows) and not state.held[rows, items[rows, ranks]].any()


def test_only_lightfm_candidates_are_reordered(model: HybridModel, the_split: Split) -> None:
    """The top of the list is LightFM's best products not held, in the re-ranker's order;
    every other product follows in LightFM's order, one step apart below the lowest
    candidate (scores an officer can read, not an offset of a million)."""
    state = the_split.test.state
    first = model.first_stage(model.features(state))
    scores = model.score(state)
    rows, products, _ = _candidate_pairs(first, state.held, CANDIDATES)
    candidate = np.zeros(scores.shape, dtype=bool)
    candidate[rows, products] = True
    assert (candidate.sum(axis=1) == np.minimum(CANDIDATES, (~state.held).sum(axis=1))).all()
    floor = np.where(candidate, scores, np.inf).min(axis=1)
    order = np.argsort(-np.where(state.held, -np.inf, first), axis=1, kind="stable")
    for row in range(20):
        rest = [p for p in order[row] if not candidate[row, p] and not state.held[row, p]]
        expected = floor[row] - 1.0 - np.arange(len(rest)) - candidate[row].sum()
        assert np.allclose(scores[row, rest], expected)
    assert np.abs(scores).max() < 100
    items, _ = model.recommend(state, 3)
    assert candidate[np.arange(len(state))[:, None], items].all()
    by_lightfm = np.argsort(-np.where(state.held, -np.inf, first), axis=1, kind="stable")[:, :3]
    assert not np.array_equal(items, by_lightfm), "the re-ranker changed no order"


def test_reasons_are_words_for_most_items(model: HybridModel, the_split: Split) -> None:
    state = the_split.test.state.take(np.arange(40))
    items, _ = model.recommend(state, 3)
    reasons = model.reasons(state, items)
    assert len(reasons) == 40 and all(len(row) == 3 for row in reasons)
    per_item = [reasons[r][j] for r in range(40) for j in range(3) if items[r, j] >= 0]
    assert all(len(words) <= 3 for words in per_item)
    assert all(isinstance(w, str) and w for words in per_item for w in words)
    assert sum(1 for words in per_item if words) >= 0.8 * len(per_item)
    assert all(len(set(words)) == len(words) for words in per_item)  # no repeats


def test_pickle_round_trip_gives_the_same_scores_and_reasons(
    model: HybridModel, the_split: Split
) -> None:
    state = the_split.test.state
    restored = pickle.loads(pickle.dumps(model))
    assert restored.reranked
    assert np.array_equal(restored.score(state), model.score(state))
    few = state.take(np.arange(10))
    items, _ = model.recommend(few, 3)
    assert restored.reasons(few, items) == model.reasons(few, items)


def test_fitting_again_gives_the_same_scores(
    model: HybridModel, the_split: Split, data: BankData
) -> None:
    again = HybridModel(HybridConfig.from_dict(RERANK.to_dict())).fit(
        the_split.train, data.products
    )
    state = the_split.test.state
    assert np.array_equal(again.score(state), model.score(state))


def test_attribute_order_does_not_matter(model: HybridModel, the_split: Split) -> None:
    """Records may list attributes in any order: the re-ranker reads them by name."""
    state = the_split.test.state
    shuffled = replace(state, attributes=state.attributes[state.attributes.columns[::-1]])
    assert np.array_equal(model.score(shuffled), model.score(state))


def test_scoring_from_features_needs_the_state(model: HybridModel, the_split: Split) -> None:
    state = the_split.test.state
    x = model.features(state)
    with pytest.raises(ConfigError, match="re-ranked model scores from the customers' state"):
        model.score_features(x)
    assert np.array_equal(model.score_features(x, state), model.score(state))


def test_contributions_add_up_to_the_boosters_raw_score(
    model: HybridModel, the_split: Split
) -> None:
    state = the_split.test.state.take(np.arange(40))
    first = model.first_stage(model.features(state))
    rows, products, _ = _candidate_pairs(first, state.held, CANDIDATES)
    reranker = model.reranker_
    assert reranker is not None
    parts, features = reranker.contributions(state, first, rows, products)
    assert list(parts.columns) == [*reranker.feature_names_, "base"]
    total = parts.to_numpy().sum(axis=1)
    raw = reranker.booster_.predict(features.to_numpy(dtype=np.float64), raw_score=True)
    assert np.allclose(total, raw, atol=1e-9)
    assert np.allclose(total, model.score(state)[rows, products], atol=1e-9)
    assert features["product"].tolist() == products.tolist()


def test_a_reranker_needs_two_customers() -> None:
    from tests.test_protocol import tiny

    s = split(tiny())
    assert len(set(s.train.state.customer_ids)) == 1
    with pytest.raises(ModelFitError, match="2\\+ customers"):
        HybridModel(RERANK).fit(s.train)


def test_unfitted_reranker_raises(the_split: Split) -> None:
    state = the_split.test.state
    with pytest.raises(NotFittedError, match="call fit"):
        Reranker().score(state, np.zeros(state.held.shape))


@pytest.mark.parametrize("option", ["rerank_candidates", "rerank_rounds"])
def test_rerank_options_are_validated(option: str) -> None:
    with pytest.raises(ConfigError, match=f"{option} must be at least 1 \\(got 0\\)"):
        HybridConfig(**{option: 0})


NAMES = ["savings account", "credit card", "e-account"]
LEVELS = {"segment": ["top", "mass"]}


@pytest.mark.parametrize(
    ("name", "value", "product", "words"),
    [
        ("since_drop", 2.0, 0, "closed a savings account 2 months ago"),
        ("since_drop", 1.0, 0, "closed a savings account 1 month ago"),
        ("since_add", 0.0, 2, "opened an e-account this month"),
        ("since_drop", math.nan, 0, None),
        ("held_ago:1", 1.0, 1, "held a credit card 1 month ago"),
        ("held_ago:3", 0.0, 0, "did not hold a savings account 3 months ago"),
        ("held_ago:2", math.nan, 0, None),  # before the record
        ("holds:1", 0.0, 0, "does not hold a credit card"),
        ("holds:2", 1.0, 0, "holds an e-account"),
        ("adds", 0.0, 0, None),
        ("adds", 1.0, 0, "opened a savings account once before"),
        ("drops", 3.0, 1, "closed a credit card 3 times before"),
        ("product", 2.0, 2, "e-account is often taken next"),
        ("n_held", 1.0, 0, "holds 1 product"),
        ("n_held", 4.0, 0, "holds 4 products"),
        ("depth", 5.0, 0, "5 months on record"),
        ("depth", 1.0, 0, "1 month on record"),
        ("tier", 0.0, 0, "value tier A"),
        ("tier", 2.0, 0, "value tier C"),
        ("tier", -1.0, 0, None),  # a tier the re-ranker never saw
        ("attr:segment", 1.0, 0, "segment: mass"),
        ("attr:segment", 2.0, 0, None),  # a level the re-ranker never kept is no reason
        ("attr:monthly_income", 45000.0, 0, "monthly income: 45,000"),
        ("attr:risk", 2.5, 0, "risk: 2.5"),
        ("hybrid_gap", -0.3, 0, None),  # LightFM's share is said in LightFM's words
    ],
)
def test_pair_words(name: str, value: float, product: int, words: str | None) -> None:
    assert pair_words(name, value, product, NAMES, LEVELS) == words


def test_reasons_when_nothing_is_left_to_offer(model: HybridModel, the_split: Split) -> None:
    state = the_split.test.state.take(np.arange(3))
    everything = replace(state, held=np.ones_like(state.held))
    items, _ = model.recommend(everything, 3)
    assert (items == -1).all()
    assert model.reasons(everything, items) == [[[], [], []]] * 3


def test_no_reason_says_an_attribute_is_other(model: HybridModel, the_split: Split) -> None:
    state = the_split.test.state
    items, _ = model.recommend(state, 3)
    words = {w for row in model.reasons(state, items) for rank in row for w in rank}
    assert not [w for w in words if w.endswith(": other")]


def test_reasons_take_the_largest_positive_contributions_in_order() -> None:
    """Literal contributions: LightFM's share becomes LightFM's words; a feature with
    nothing to say is skipped; non-positive contributions are never reasons."""
    reranker = Reranker()
    reranker.feature_names_ = ["hybrid_gap", "hybrid_rank", "since_drop", "holds:1", "adds"]
    reranker.levels_ = {}
    contributions = pd.DataFrame(
        [
            [0.5, 0.1, 0.3, 0.0, 0.05, -1.0],
            [-0.5, -0.1, 0.0, 0.0, -0.2, 2.0],
            [-0.1, 0.0, -0.3, 0.2, 0.4, 0.0],
            [0.0, 0.2, 0.1, 0.0, 0.0, 0.0],
        ],
        columns=[*reranker.feature_names_, "base"],
    )
    features = pd.DataFrame(
        {
            "hybrid_gap": [0.0, -1.0, -0.5, -0.2],
            "hybrid_rank": [0, 3, 1, 2],
            "product": [0, 2, 0, 2],
            "since_drop": [2.0, math.nan, 1.0, math.nan],
            "holds:1": [1, 0, 1, 0],
            "adds": [1, 0, 0, 0],
        }
    )
    first_stage = [["lightfm a", "lightfm b"], ["lightfm c"], [], ["lightfm d", "lightfm d2"]]
    assert reranker.reasons(contributions, features, first_stage, NAMES) == [
        ["lightfm a", "lightfm b", "closed a savings account 2 months ago"],
        [],  # nothing positive: the base alone is no reason
        ["holds a credit card"],  # adds = 0 has no words; since_drop pulled down
        ["lightfm d", "lightfm d2"],  # since_drop NaN: nothing to say
    ]
    assert reranker.reasons(contributions, features, first_stage, NAMES, n=1)[0] == ["lightfm a"]
