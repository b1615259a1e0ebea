"""The hybrid LightFM model: estimator contract, exact explanations, calibration, quality."""

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recommender.bundle import ModelBundle
from recommender.dataset import BankData, load_bank_data
from recommender.errors import ConfigError, NotFittedError
from recommender.evaluation import report, run_models
from recommender.explanation import describe
from recommender.features import FeatureOptions, coarse
from recommender.models import hybrid
from recommender.models.baselines import Popularity
from recommender.models.hybrid import HybridConfig, HybridModel
from recommender.pipeline import run_pipeline
from recommender.probability import ProbabilityCalibrator, fit_calibrator
from recommender.protocol import Split, split, temporal_split
from recommender.synthetic import generate, write_bank
from tests.helpers import synthetic_bank

SMALL = HybridConfig(epochs=10, no_components=16)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> BankData:
    return synthetic_bank(tmp_path_factory.mktemp("bank") / "bank", 6000, 6, seed=21)


@pytest.fixture(scope="module")
def the_split(data: BankData) -> Split:
    return split(data)


@pytest.fixture(scope="module")
def fitted(the_split: Split, data: BankData) -> HybridModel:
    return HybridModel(SMALL).fit(the_split.train, data.products)


def test_hybrid_beats_popularity_on_a_small_bank(the_split: Split, data: BankData) -> None:
    result = report(the_split, run_models(the_split, [HybridModel(SMALL), Popularity()], 7), 7)
    hybrid, popularity = (result["models"][m]["map@7"] for m in ("hybrid", "popularity"))
    assert hybrid > popularity * 1.1, (hybrid, popularity)


def test_contributions_add_up_to_the_score(fitted: HybridModel, the_split: Split) -> None:
    state = the_split.test.state.take(np.arange(50))
    scores = fitted.score(state)
    for product in (0, 5, 23):
        products = np.full(len(state), product)
        parts, base = fitted.contributions(state, products)
        total = np.asarray(parts.sum(axis=1)).ravel() + base
        assert np.allclose(total, scores[:, product], atol=1e-9)
        relative, rel_base = fitted.contributions(state, products, relative=True)
        centred = scores[:, product] - scores.mean(axis=1)
        assert np.allclose(np.asarray(relative.sum(axis=1)).ravel() + rel_base, centred)


def test_reasons_are_words_for_the_top_contributions(fitted: HybridModel, the_split: Split) -> None:
    state = the_split.test.state.take(np.arange(20))
    items, _ = fitted.recommend(state, 3)
    reasons = fitted.reasons(state, items)
    assert len(reasons) == 20 and all(len(r) == 3 for r in reasons)
    words = [w for row in reasons for rank in row for w in rank]
    assert words and all(isinstance(w, str) and "(missing)" not in w for w in words)


def test_row_by_row_reasons_equal_the_matrix_ones(
    fitted: HybridModel, the_split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request path (a few rows, non-zeros only) and the batch path (matrices) give
    the same words in the same order, for every client of the test split."""
    state = the_split.test.state
    items, _ = fitted.recommend(state, 3)
    matrix = fitted.reasons(state, items)  # many rows: the matrix path
    assert len(state) > hybrid.FEW_ROWS
    monkeypatch.setattr(hybrid, "FEW_ROWS", len(state))
    assert fitted.reasons(state, items) == matrix


def test_estimator_contract(the_split: Split, data: BankData) -> None:
    model = HybridModel(SMALL)
    with pytest.raises(NotFittedError, match="call fit"):
        model.score(the_split.test.state)
    assert model.fit(the_split.train, data.products) is model
    once = model.score(the_split.test.state)
    model.fit(the_split.train, data.products)
    assert np.array_equal(once, model.score(the_split.test.state))  # seeded, one thread each
    rebuilt = HybridModel(HybridConfig.from_dict(SMALL.to_dict())).fit(
        the_split.train, data.products
    )
    assert np.array_equal(once, rebuilt.score(the_split.test.state))
    restored = pickle.loads(pickle.dumps(model))
    assert np.array_equal(once, restored.score(the_split.test.state))
    state = the_split.test.state
    single = np.vstack([model.score(state.take(np.array([i]))) for i in range(5)])
    assert np.allclose(single, once[:5])
    other_seed = HybridModel(HybridConfig(**{**SMALL.__dict__, "random_state": 1}))
    assert not np.array_equal(once, other_seed.fit(the_split.train, data.products).score(state))


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="loss"):
        HybridConfig(loss="hinge")
    with pytest.raises(ConfigError, match="unknown hybrid option 'epoch'"):
        HybridConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="at least 1"):
        HybridConfig(epochs=0)


def test_hybrid_never_sees_the_test_snapshot(data: BankData) -> None:
    """The hybrid is fitted on split.train only: rewriting the test snapshot changes
    nothing it learns or how it scores the test customers."""
    from tests.test_protocol import _perturb_last_snapshot

    a = temporal_split(data)
    b = temporal_split(_perturb_last_snapshot(data, np.random.default_rng(1)))
    model_a = HybridModel(SMALL).fit(a.train, data.products)
    model_b = HybridModel(SMALL).fit(b.train, data.products)
    probe = a.train.state.take(np.arange(100))
    assert np.array_equal(model_a.score(probe), model_b.score(probe))


def test_calibrated_probabilities(fitted: HybridModel, the_split: Split) -> None:
    held_out = the_split.calibration
    scores = fitted.score(held_out.state)
    calibrator, quality = fit_calibrator(scores, held_out.state.held, held_out.targets)
    fitted.calibrate(calibrator)
    p = fitted.predict_proba(held_out.state, scores)
    assert ((p >= 0) & (p <= 1)).all() and (p[held_out.state.held] == 0).all()
    assert quality["ece"] < 0.5 * quality["base_rate"]  # calibrated on the other half
    # a better-ranked product gets a higher probability, on average
    order = np.argsort(-np.where(held_out.state.held, -np.inf, scores), axis=1)
    first, fifth = (np.take_along_axis(p, order[:, [r]], axis=1).mean() for r in (0, 4))
    assert first > fifth
    with pytest.raises(NotFittedError):
        ProbabilityCalibrator().predict(scores, held_out.state.held)


def test_bundle_scores_cold_start_clients(data: BankData) -> None:
    result = run_pipeline(data, config=SMALL)
    bundle: ModelBundle = result.bundle
    frame = pd.DataFrame({
        "customer_id": ["new-1", "new-2"],
        "holdings": [["ind_cco_fin_ult1", "ind_nomina_ult1"], []],
        "segment": ["top", None],
    })  # fmt: skip
    offers = bundle.recommend(bundle.state_from_frame(frame), k=5, objective="expected_value")
    first = offers[offers.customer_id == "new-1"]
    assert list(first["rank"]) == [1, 2, 3, 4, 5]
    assert not {"ind_cco_fin_ult1", "ind_nomina_ult1"} & set(first.product_id)
    assert (np.diff(first.expected_value.to_numpy()) <= 1e-12).all()
    assert first.reason.str.len().gt(0).all()
    with pytest.raises(ConfigError, match="unknown product 'mortgage'"):
        bundle.state_from_frame(pd.DataFrame({"customer_id": ["x"], "holdings": [["mortgage"]]}))
    assert "hybrid" in result.report["models"] and result.calibration["brier"] > 0


@pytest.mark.parametrize(
    ("token", "words"),
    [
        ("held:p1", "holds a payroll"),
        ("held:p2", "holds an e-account"),
        ("dropped:p1", "recently closed payroll"),
        ("held_for:p1:0-2m", "opened a payroll in the last 3 months"),
        ("segment=top", "segment: top"),
        ("income=[4.5e+04, 9e+04)", "income: 45,000-90,000"),
        ("birth_date=[24.14, 32.18) years ago", "age 24-32 years"),
        ("join_date=>=14.17 years ago", "client for 14 years or more"),
        ("tier:A", "value tier A"),
        ("holds exactly:p1+p2", "holds only payroll and e-account"),
        ("products held:1", "holds 1 product"),
    ],
)
def test_describe(token: str, words: str) -> None:
    assert describe(token, {"p1": "payroll", "p2": "e-account"}) == words


def test_zimnat_like_single_snapshot_trains(tmp_path: Path) -> None:
    """Leave-one-out data (one snapshot) goes through the whole pipeline too."""
    bank = generate(3000, 1, seed=2)
    write_bank(bank, tmp_path / "one")
    result = run_pipeline(load_bank_data(tmp_path / "one"), config=SMALL)
    assert result.report["protocol"] == "leave-one-out"
    assert (
        result.report["models"]["hybrid"]["map@7"] > result.report["models"]["popularity"]["map@7"]
    )


def test_coarse_view_scores_are_the_mean_of_each_view_fitted_alone(
    the_split: Split, data: BankData
) -> None:
    """The coarse view is one more member on `coarse(features)`: the joined model scores
    exactly what the two single-view models average to, and explains from both vocabularies."""
    joined = HybridModel(replace(SMALL, coarse_view=True)).fit(the_split.train, data.products)
    alone = replace(SMALL, coarse_view=False)
    fine = HybridModel(alone).fit(the_split.train, data.products)
    rough = HybridModel(replace(alone, features=coarse(alone.features)))
    rough.fit(the_split.train, data.products)
    state = the_split.test.state
    expected = (fine.score(state) + rough.score(state)) / 2
    assert np.allclose(joined.score(state), expected, atol=1e-5)
    assert joined.vocabulary_ == fine.builder_.vocabulary_ + rough.builder_.vocabulary_
    assert "held_for" not in " ".join(rough.builder_.vocabulary_)
    items, _ = joined.recommend(state.take(np.arange(5)), 3)
    parts, base = joined.contributions(state.take(np.arange(5)), items[:, 0])
    scores = joined.score(state.take(np.arange(5)))[np.arange(5), items[:, 0]]
    assert np.allclose(np.asarray(parts.sum(axis=1)).ravel() + base, scores, atol=1e-5)


def test_coarse_options_keep_time_and_exclusions() -> None:
    options = coarse(FeatureOptions(lags=2, since_drop=True, exclude=("city",), n_bins=30))
    assert (options.n_bins, options.max_levels, options.min_share) == (10, 10, 0.01)
    assert not (options.held_for or options.held_set or options.dropped or options.tier)
    assert options.lags == 2 and options.since_drop and options.exclude == ("city",)
