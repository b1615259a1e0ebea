"""Baselines on literal cases, the shared model contract, and Zimnat reference values."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recommender import columns as C
from recommender.errors import NotFittedError
from recommender.evaluation import baseline_models, report, run_models
from recommender.models.baselines import Cooccurrence, Oracle, Popularity, SegmentPopularity
from recommender.protocol import Examples, leave_one_out_split
from recommender.state import CustomerState
from recommender.wide import import_wide
from tests.helpers import shared_data

ZIMNAT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "zimnat" / "train.csv"


def state(held: list[list[int]], segments: list[str]) -> CustomerState:
    n = len(held)
    return CustomerState(
        customer_ids=np.array([f"c{i}" for i in range(n)], dtype=object),
        as_of=np.full(n, np.datetime64("2024-01-31", "ns")),
        held=np.array(held, dtype=bool),
        dropped=np.zeros((n, len(held[0])), dtype=bool),
        held_months=np.zeros((n, len(held[0])), dtype=np.int16),
        attributes=pd.DataFrame({"segment": segments}),
        tier=np.array(["A"] * n, dtype=object),
        segment=np.array(segments, dtype=object),
    )


def examples() -> Examples:
    # products 0,1,2. Students acquire 2, others 1; whoever holds 0 acquires 1.
    s = state(
        [[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
        ["adult", "adult", "student", "student", "student"],
    )
    targets = np.array([[0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]], dtype=bool)
    return Examples(s, targets)


def test_popularity_ranks_by_acquisition_counts() -> None:
    model = Popularity().fit(examples())
    items, _ = model.recommend(state([[0, 0, 0], [0, 0, 1]], ["x", "x"]), k=2)
    assert items.tolist() == [[2, 1], [1, 0]]  # held product 2 excluded for the second


def test_segment_popularity_uses_the_segment_and_falls_back() -> None:
    model = SegmentPopularity(prior=0.1).fit(examples())
    items, _ = model.recommend(state([[0, 0, 0]] * 3, ["adult", "student", "new"]), k=1)
    assert items[:, 0].tolist() == [1, 2, 2]  # unseen segment -> global popularity


def test_cooccurrence_follows_what_is_held() -> None:
    model = Cooccurrence().fit(examples())
    items, _ = model.recommend(state([[1, 0, 0], [0, 0, 0]], ["x", "x"]), k=1)
    assert items[:, 0].tolist() == [1, 2]


def test_oracle_ranks_by_true_probabilities() -> None:
    truth = pd.DataFrame(
        {
            C.CUSTOMER_ID: ["c0"] * 3 + ["c1"] * 3,
            C.PRODUCT_ID: ["p0", "p1", "p2"] * 2,
            C.PROBABILITY: [0.1, 0.5, 0.2, 0.3, 0.0, 0.01],
        }
    )
    model = Oracle(truth, ["p0", "p1", "p2"]).fit(examples())
    items, _ = model.recommend(state([[0, 0, 0], [0, 0, 0]], ["x", "x"]), k=3)
    assert items.tolist() == [[1, 2, 0], [0, 2, 1]]


@pytest.mark.parametrize("model", baseline_models(), ids=lambda m: m.name)
def test_model_contract(model: object) -> None:
    ex = examples()
    with pytest.raises(NotFittedError, match="call fit"):
        model.score(ex.state)  # type: ignore[attr-defined]
    assert model.fit(ex) is model  # type: ignore[attr-defined]
    once = model.score(ex.state).copy()  # type: ignore[attr-defined]
    model.fit(ex)  # type: ignore[attr-defined]
    assert np.array_equal(once, model.score(ex.state))  # type: ignore[attr-defined]
    batch = model.score(ex.state)  # type: ignore[attr-defined]
    single = np.vstack([model.score(ex.state.take(np.array([i]))) for i in range(len(ex))])  # type: ignore[attr-defined]
    assert np.allclose(batch, single)


@pytest.fixture(scope="module")
def zimnat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shared_data("zimnat", "train.csv")
    out = tmp_path_factory.mktemp("zimnat") / "bank"
    import_wide(ZIMNAT, out, "ID", "P5DA:ECY3", snapshot_date="2020-01-01")
    return out


def test_zimnat_leave_one_out_baselines_match_reference(zimnat: Path) -> None:
    from recommender.dataset import load_bank_data

    data = load_bank_data(zimnat)
    split = leave_one_out_split(data)
    assert len(split.test) == round(0.2 * 29_132)
    result = report(split, run_models(split, baseline_models(), 7), 7)
    # reference values measured outside the project (shared/data/README.md)
    assert result["models"]["popularity"]["map@7"] == pytest.approx(0.821, abs=0.015)
    assert result["models"]["cooccurrence"]["map@7"] == pytest.approx(0.874, abs=0.015)
    assert set(result["tiers"]) == {"A", "B", "C"}
