"""Protocols: exact training examples on tiny data, and no leakage from the test truth."""

import numpy as np
import pandas as pd
import pytest

from recommender import columns as C
from recommender.dataset import BankData
from recommender.errors import ConfigError
from recommender.features import FeatureBuilder
from recommender.protocol import leave_one_out_split, split, temporal_split
from recommender.synthetic import generate
from tests.helpers import bank

D1, D2, D3 = "2024-01-31", "2024-02-29", "2024-03-31"


def tiny() -> BankData:
    return bank(
        [
            ("a", "acc", D1),
            ("a", "acc", D2),
            ("a", "card", D2),
            ("a", "acc", D3),
            ("a", "card", D3),
            ("a", "loan", D3),
            ("b", "acc", D1),
            ("b", "acc", D2),
            ("b", "acc", D3),
            ("b", "card", D3),
            ("c", "card", D1),
            ("c", "card", D2),
            ("c", "acc", D3),
            ("c", "card", D3),
        ],
        products=["acc", "card", "loan"],
    )


def test_temporal_examples_are_the_acquisitions_before_the_test_snapshot() -> None:
    s = temporal_split(tiny())
    # only D1 -> D2 is training: a acquired card; the test is D2 -> D3
    assert s.train.state.customer_ids.tolist() == ["a"]
    assert s.train.targets.tolist() == [[False, True, False]]
    assert s.train.state.held.tolist() == [[True, False, False]]
    assert s.test.state.customer_ids.tolist() == ["a", "b", "c"]
    assert s.test.targets.tolist() == [
        [False, False, True],
        [False, True, False],
        [True, False, False],
    ]
    assert s.test.state.held.tolist() == [
        [True, True, False],
        [True, False, False],
        [False, True, False],
    ]
    assert s.test_date == pd.Timestamp(D3)


def test_temporal_needs_three_snapshots_and_a_real_test_date() -> None:
    with pytest.raises(ConfigError, match="3\\+ snapshots"):
        temporal_split(bank([("a", "acc", D1), ("a", "card", D2)]))
    with pytest.raises(ConfigError, match="not a snapshot"):
        temporal_split(tiny(), pd.Timestamp("2024-03-15"))
    assert split(tiny()).protocol == "temporal"
    assert split(bank([("a", "acc", D1)])).protocol == "leave-one-out"


def _perturb_last_snapshot(data: BankData, rng: np.random.Generator) -> BankData:
    """Change everything at the test snapshot: who holds what, and their attributes."""
    last = data.snapshots[-1]
    h = data.holdings.astype({C.CUSTOMER_ID: object, C.PRODUCT_ID: object})
    before = h[h[C.SNAPSHOT_DATE] < last]
    ids = data.customers[C.CUSTOMER_ID].to_numpy()
    fake = pd.DataFrame(
        {
            C.CUSTOMER_ID: rng.choice(ids, 500),
            C.PRODUCT_ID: rng.choice(data.product_ids, 500),
            C.SNAPSHOT_DATE: last,
        }
    ).drop_duplicates([C.CUSTOMER_ID, C.PRODUCT_ID])
    holdings = pd.concat([before, fake], ignore_index=True)
    holdings[C.CUSTOMER_ID] = holdings[C.CUSTOMER_ID].astype("category")
    holdings[C.PRODUCT_ID] = holdings[C.PRODUCT_ID].astype("category")
    return BankData(data.customers, holdings, data.products, data.directory)


def _synthetic_data(n: int = 3000, months: int = 5) -> BankData:
    import tempfile
    from pathlib import Path

    from tests.helpers import write_and_load

    b = generate(n, months, seed=11)
    rows = np.argwhere(b.held)
    holdings = pd.DataFrame(
        {
            C.CUSTOMER_ID: b.customers[C.CUSTOMER_ID].to_numpy()[rows[:, 1]],
            C.PRODUCT_ID: np.asarray(b.product_ids)[rows[:, 2]],
            C.SNAPSHOT_DATE: [b.snapshot_dates[t].date().isoformat() for t in rows[:, 0]],
        }
    )
    products = pd.DataFrame({C.PRODUCT_ID: b.product_ids})
    return write_and_load(b.customers, holdings, products, Path(tempfile.mkdtemp()))


def test_nothing_from_the_test_snapshot_reaches_training_or_features() -> None:
    data = _synthetic_data()
    changed = _perturb_last_snapshot(data, np.random.default_rng(0))
    a, b = temporal_split(data), temporal_split(changed)
    assert not np.array_equal(a.test.targets.sum(), b.test.targets.sum())  # truth did change
    for x, y in ((a.train, b.train),):
        assert np.array_equal(x.state.customer_ids, y.state.customer_ids)
        assert np.array_equal(x.targets, y.targets)
        assert np.array_equal(x.state.held, y.state.held)
    builder_a = FeatureBuilder().fit(a.train.state, data.product_ids)
    builder_b = FeatureBuilder().fit(b.train.state, data.product_ids)
    assert builder_a.vocabulary_ == builder_b.vocabulary_
    assert (builder_a.transform(a.train.state) != builder_b.transform(b.train.state)).nnz == 0
    # test queries are described by what was known before the test snapshot only
    common = np.intersect1d(a.test.state.customer_ids, b.test.state.customer_ids)
    ia = pd.Index(a.test.state.customer_ids).get_indexer(common)
    ib = pd.Index(b.test.state.customer_ids).get_indexer(common)
    fa = builder_a.transform(a.test.state.take(ia))
    fb = builder_b.transform(b.test.state.take(ib))
    assert len(common) > 0 and (fa != fb).nnz == 0


def test_leakage_check_catches_a_split_that_sees_the_test_snapshot() -> None:
    """The comparison above is sensitive: training on the full data changes the examples."""
    from recommender.protocol import acquisition_examples
    from recommender.state import HoldingsCube, StateOptions

    data = _synthetic_data()
    changed = _perturb_last_snapshot(data, np.random.default_rng(0))
    leaky_a = acquisition_examples(HoldingsCube.from_data(data), StateOptions())
    leaky_b = acquisition_examples(HoldingsCube.from_data(changed), StateOptions())
    assert leaky_a.targets.shape != leaky_b.targets.shape or not np.array_equal(
        leaky_a.targets, leaky_b.targets
    )


def test_leave_one_out_hides_one_held_product_of_held_out_customers() -> None:
    data = _synthetic_data(4000, 1)
    s = leave_one_out_split(data)
    assert s.protocol == "leave-one-out"
    assert (s.test.targets.sum(axis=1) == 1).all()
    assert not (s.test.targets & s.test.state.held).any()  # hidden product is not an input
    assert not (s.test.targets & (s.test.state.held_months != 0)).any()
    assert not set(s.train.state.customer_ids) & set(s.test.state.customer_ids)
    assert s.n_candidates == round(0.2 * 4000)
    # every training example is a held product with the remaining holdings as the state
    assert (s.train.targets.sum(axis=1) == 1).all()
    assert not (s.train.targets & s.train.state.held).any()
    again = leave_one_out_split(data)
    assert np.array_equal(again.test.targets, s.test.targets)  # seeded
