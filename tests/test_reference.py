from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.reference import UserFeatures, fit_encoder, held_earlier, plain_lightfm_map
from recommender.dataset import load_bank_data
from recommender.metrics import summarise
from recommender.protocol import Split, split
from recommender.ranking import top_k
from recommender.state import HoldingsCube
from recommender.synthetic import generate, write_bank
from tests.helpers import bank

JAN, FEB, MAR = "2024-01-31", "2024-02-29", "2024-03-31"


def test_held_earlier_is_any_earlier_snapshot_but_not_now() -> None:
    data = bank(
        [
            ("c1", "loan", JAN),  # dropped in Feb, still "before" in Mar
            ("c1", "card", FEB),
            ("c1", "card", MAR),  # held now: not "before"
            ("c2", "fund", JAN),
            ("c2", "fund", MAR),  # dropped and taken again: held now
            ("c2", "card", MAR),  # first held now: not "before"
        ],
        products=["card", "fund", "loan"],
    )
    cube = HoldingsCube.from_data(data)
    march = cube.state_at(2)
    february = cube.state_at(1)
    january = cube.state_at(0)
    assert held_earlier(cube, march).tolist() == [[False, False, True], [False, False, False]]
    assert held_earlier(cube, february).tolist() == [[False, False, True], [False, True, False]]
    assert not held_earlier(cube, january).any()


def test_numbers_become_deciles_and_categories_the_most_frequent_values() -> None:
    as_of = np.full(100, np.datetime64("2024-01-31", "ns"))
    numbers = pd.Series(np.append(np.arange(99.0), np.nan))
    encoder = fit_encoder("income", numbers, as_of)
    assert encoder.n_tokens == 11  # 9 edges -> 10 bins, plus missing
    codes = encoder.codes(pd.Series([0.0, 9.8, 9.9, 1000.0, np.nan]), as_of[:5])
    assert codes.tolist() == [0, 0, 1, 9, 10]  # right-closed bins, like pandas.qcut
    words = pd.Series([f"v{i}" for i in range(25) for _ in range(25 - i)] + [None])
    category = fit_encoder("channel", words, np.full(len(words), as_of[0]))
    assert category.levels == tuple(f"v{i}" for i in range(20))
    assert category.codes(pd.Series(["v0", "v24", None]), as_of[:3]).tolist() == [0, 20, 21]


def test_user_features_are_attributes_held_and_before_without_identity() -> None:
    data = bank(
        [("c1", "loan", JAN), ("c1", "card", FEB), ("c2", "card", JAN), ("c2", "card", FEB)],
        customers={"c1": {"segment": "top"}, "c2": {"segment": "student"}},
    )
    cube = HoldingsCube.from_data(data)
    state = cube.state_at(1)
    x = UserFeatures().fit(state).transform(state, cube)
    # segment: 2 levels + other + missing; held: card, loan; before: card, loan
    assert x.shape == (2, 4 + 2 + 2)
    assert x.toarray().tolist() == [[0, 1, 0, 0, 1, 0, 0, 1], [1, 0, 0, 0, 1, 0, 0, 0]]


@pytest.fixture(scope="module")
def synthetic_split(tmp_path_factory: pytest.TempPathFactory) -> Split:
    directory = Path(tmp_path_factory.mktemp("reference")) / "bank"
    write_bank(generate(3000, 5, seed=3), directory)
    return split(load_bank_data(directory), "temporal")


def test_plain_lightfm_beats_random_ranking(synthetic_split: Split) -> None:
    run = plain_lightfm_map(synthetic_split, k=7, seed=1)
    truth, held = synthetic_split.test.targets, synthetic_split.test.state.held
    assert run.items.shape == (len(truth), 7)
    assert not held[np.arange(len(held))[:, None], np.maximum(run.items, 0)][run.items >= 0].any()
    assert run.fit_seconds > 0
    random_items, _ = top_k(np.random.default_rng(0).random(truth.shape), 7, held)
    model_map = summarise(run.items, truth, 7)["map@7"]
    random_map = summarise(random_items, truth, 7)["map@7"]
    assert model_map > 1.5 * random_map


def test_same_seed_same_recommendations(synthetic_split: Split) -> None:
    a = plain_lightfm_map(synthetic_split, seed=3)
    b = plain_lightfm_map(synthetic_split, seed=3)
    assert np.array_equal(a.items, b.items)
