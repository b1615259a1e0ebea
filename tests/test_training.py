"""The training edge against a real (temporary) MLflow store: train, register, promote,
the pyfunc model, batch scoring, the CLI and tuning.

One small synthetic bank (3,000 customers x 5 months) is shared by the module, and one
real training run on it by the tests that only read a registry. Tests that change a
registry train into a store of their own. Nothing is written to the repository: stores
live in temporary directories, which are also the working directory (MLflow's ./mlruns).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from recommender import columns as C
from recommender.errors import RecommenderError
from recommender.models.hybrid import HybridConfig
from recommender.synthetic import generate, write_bank
from training import charts
from training.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_FINGERPRINT,
    TAG_METRIC,
    PromotionRefused,
    alias_version,
    promote,
)
from training.scoring import load_bundle, score_directory, write_scores
from training.tracking import DEFAULT_MODEL_NAME, configure
from training.train import TrainOutcome, train
from training.tune import load_config, tune

SMALL_OPTIONS = {"epochs": 5, "no_components": 16, "ensemble": 1, "num_threads": 1}
SMALL = HybridConfig.from_dict(SMALL_OPTIONS)  # fast, and deterministic (one thread)
NAME = DEFAULT_MODEL_NAME
CHAMPION_URI = f"models:/{NAME}@{CHAMPION}"
K = 7
COMMAND = [sys.executable, "-m", "recommender"]


@dataclass(frozen=True)
class Trained:
    outcome: TrainOutcome
    uri: str


def sqlite_uri(directory: Path) -> str:
    return f"sqlite:///{directory / 'mlflow.db'}"


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("data") / "bank"
    write_bank(generate(3000, 5, seed=3), directory)
    return directory


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty MLflow SQLite store. Creating one takes seconds (schema
    migrations), so each test copies this file instead."""
    home = tmp_path_factory.mktemp("empty")
    MlflowClient(tracking_uri=sqlite_uri(home)).search_experiments()
    return home / "mlflow.db"


def new_store(directory: Path, empty_db: Path) -> str:
    shutil.copyfile(empty_db, directory / "mlflow.db")
    return sqlite_uri(directory)


@pytest.fixture(scope="module")
def trained(bank_dir: Path, empty_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One real `train` into a module store, shared by the tests that only read it."""
    home = tmp_path_factory.mktemp("store")
    uri = new_store(home, empty_db)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)  # MLflow's artifact root (./mlruns) lands here, not in the repo
        outcome = train(bank_dir, config=SMALL, tracking_uri=uri)
    plt.close("all")
    return Trained(outcome, uri)


@pytest.fixture
def store(tmp_path: Path, empty_db: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh tracking store in tmp_path, also the working directory and the env default."""
    uri = new_store(tmp_path, empty_db)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    configure(uri)
    yield uri
    plt.close("all")


@pytest.fixture
def quick_train(
    store: str, bank_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], TrainOutcome]:
    """`train` into the test's store. MLflow's pip-requirement inference (a subprocess of
    several seconds per model) is skipped; the module's real run goes through it."""
    monkeypatch.setattr(mlflow.models, "infer_pip_requirements", lambda *a, **kw: ["mlflow"])
    return lambda: train(bank_dir, config=SMALL, tracking_uri=store)


def use(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.chdir(tmp_path)
    configure(uri)
    return MlflowClient()


def versions(name: str = NAME) -> list[str]:
    found = MlflowClient().search_model_versions(f"name='{name}'")
    return sorted(str(v.version) for v in found)


def alias(name: str) -> str | None:
    found = alias_version(NAME, name)
    return None if found is None else str(found.version)


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def latest_holdings(bank_dir: Path) -> pd.DataFrame:
    holdings = pd.read_parquet(bank_dir / "holdings.parquet")
    dates = pd.to_datetime(holdings[C.SNAPSHOT_DATE])
    return holdings[dates == dates.max()].astype({C.CUSTOMER_ID: str, C.PRODUCT_ID: str})


# -- train ---------------------------------------------------------------------------------


def test_train_logs_one_complete_run_and_registers_the_champion(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = use(trained.uri, tmp_path, monkeypatch)
    outcome = trained.outcome
    assert (outcome.version, outcome.alias) == ("1", CHAMPION)
    assert alias(CHAMPION) == "1"

    run = mlflow.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["loss"] == "warp"
    assert params["no_components"] == "16"
    assert params["protocol"] == "temporal"  # 5 snapshots -> auto picks temporal
    version = client.get_model_version(NAME, "1")
    assert params["data.id"] == version.tags[TAG_FINGERPRINT]
    assert len(params["data.id"]) == 16

    metrics = run.data.metrics
    report = outcome.report
    for model in ("hybrid", "popularity", "cooccurrence", "oracle"):
        assert metrics[f"{model}.map_at_7"] == pytest.approx(report["models"][model]["map@7"])
    assert metrics["tier_A.hybrid.map_at_7"] == pytest.approx(
        report["tiers"]["A"]["hybrid"]["map@7"]
    )
    assert metrics["calibration.brier"] == pytest.approx(report["calibration"]["brier"])
    assert 0 < metrics["calibration.brier"] < 1

    assert artifact_paths(client, outcome.run_id) >= {
        "report.json",
        "data_fingerprint.json",
        "feature_vocabulary.json",
        "charts/map_by_model.png",
        "charts/map_by_tier.png",
        "charts/hit_rate_by_product.png",
    }
    # MLflow 3 keeps the model as a LoggedModel of the run, not under the run's artifacts.
    model_id = version.source.removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == outcome.run_id
    model_files = {a.path for a in client.list_logged_model_artifacts(model_id)}
    assert {"MLmodel", "artifacts", "python_model.pkl"} <= model_files
    bundle = {a.path for a in client.list_logged_model_artifacts(model_id, "artifacts")}
    assert bundle == {"artifacts/bundle.pkl"}

    logged_report = mlflow.artifacts.load_dict(f"runs:/{outcome.run_id}/report.json")
    assert logged_report["models"]["hybrid"]["map@7"] == report["models"]["hybrid"]["map@7"]
    logged_id = mlflow.artifacts.load_dict(f"runs:/{outcome.run_id}/data_fingerprint.json")
    assert logged_id["id"] == params["data.id"]
    assert float(version.tags[TAG_METRIC]) == report["models"]["hybrid"]["map@7"]
    assert version.tags["run_id"] == outcome.run_id

    hybrid = report["models"]["hybrid"]["map@7"]
    popularity = report["models"]["popularity"]["map@7"]
    assert hybrid > popularity


def test_train_closes_its_chart_figures(quick_train: Callable[[], TrainOutcome]) -> None:
    plt.close("all")
    quick_train()
    assert plt.get_fignums() == []  # figures left open accumulate in a long-lived process


def test_second_train_registers_a_challenger_and_keeps_the_champion(
    quick_train: Callable[[], TrainOutcome],
) -> None:
    first = quick_train()
    second = quick_train()
    assert (first.version, first.alias) == ("1", CHAMPION)
    assert (second.version, second.alias) == ("2", CHALLENGER)
    assert second.run_id != first.run_id
    assert (alias(CHAMPION), alias(CHALLENGER)) == ("1", "2")
    assert versions() == ["1", "2"]


# -- promote -------------------------------------------------------------------------------


def test_promotion_gate(quick_train: Callable[[], TrainOutcome]) -> None:
    client = MlflowClient()
    quick_train()
    quick_train()
    champion_map = float(client.get_model_version(NAME, "1").tags[TAG_METRIC])
    low, high = champion_map - 0.1234, champion_map + 0.0567

    client.set_model_version_tag(NAME, "2", TAG_METRIC, repr(low))
    with pytest.raises(PromotionRefused) as refused:
        promote(NAME)
    assert f"{low:.4f}" in str(refused.value)
    assert f"{champion_map:.4f}" in str(refused.value)
    assert (alias(CHAMPION), alias(CHALLENGER)) == ("1", "2")

    client.set_model_version_tag(NAME, "2", TAG_METRIC, repr(high))
    promotion = promote(NAME)
    assert (promotion.version, str(promotion.previous)) == ("2", "1")
    assert promotion.challenger_map == pytest.approx(high)
    assert promotion.champion_map == pytest.approx(champion_map)
    assert (alias(CHAMPION), alias(CHALLENGER)) == ("2", None)

    third = quick_train()
    assert (third.version, third.alias) == ("3", CHALLENGER)
    client.set_model_version_tag(NAME, "3", TAG_METRIC, repr(high + 0.1))
    client.set_model_version_tag(NAME, "3", TAG_FINGERPRINT, "0123456789abcdef")
    with pytest.raises(PromotionRefused, match="different data"):
        promote(NAME)
    assert alias(CHAMPION) == "2"
    forced = promote(NAME, force=True)
    assert (forced.version, str(forced.previous)) == ("3", "2")
    assert (alias(CHAMPION), alias(CHALLENGER)) == ("3", None)


def test_promotion_reports_versions_as_strings(quick_train: Callable[[], TrainOutcome]) -> None:
    quick_train()
    quick_train()
    promotion = promote(NAME, force=True)
    assert promotion.version == "2"
    assert promotion.previous == "1"  # `Promotion.previous: str | None`, like `version`


def test_promote_refuses_the_current_champion_and_a_missing_challenger(
    quick_train: Callable[[], TrainOutcome],
) -> None:
    quick_train()
    with pytest.raises(RecommenderError, match="has no challenger"):
        promote(NAME)
    with pytest.raises(RecommenderError, match="already the champion"):
        promote(NAME, version="1")
    assert alias(CHAMPION) == "1"


# -- atomicity -----------------------------------------------------------------------------


def boom(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("injected failure")


@pytest.mark.parametrize(
    "target",
    [
        (charts, "map_by_tier"),
        (mlflow.pyfunc, "log_model"),
        (MlflowClient, "set_registered_model_alias"),
    ],
    ids=["chart", "log_model", "alias"],
)
def test_a_failing_step_leaves_the_registry_as_it_was(
    quick_train: Callable[[], TrainOutcome],
    monkeypatch: pytest.MonkeyPatch,
    target: tuple[Any, str],
) -> None:
    quick_train()
    experiment = mlflow.get_experiment_by_name("next-best-offer").experiment_id
    before = len(MlflowClient().search_runs([experiment]))
    with monkeypatch.context() as patch:
        patch.setattr(*target, boom)
        with pytest.raises(RuntimeError, match="injected failure"):
            quick_train()
    assert versions() == ["1"]
    assert (alias(CHAMPION), alias(CHALLENGER)) == ("1", None)
    assert mlflow.active_run() is None
    runs = MlflowClient().search_runs([experiment])
    assert len(runs) == before + 1
    # the failed run is marked failed unless it finished before registration failed
    finished_before_failing = target[1] == "set_registered_model_alias"
    assert runs[0].info.status == ("FINISHED" if finished_before_failing else "FAILED")
    after = quick_train()  # nothing stale left behind: the next version is a plain challenger
    assert after.alias == CHALLENGER
    assert (alias(CHAMPION), alias(CHALLENGER)) == ("1", after.version)


# -- pyfunc --------------------------------------------------------------------------------


def test_pyfunc_recommends_for_a_cold_start_client(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(trained.uri, tmp_path, monkeypatch)
    model = mlflow.pyfunc.load_model(CHAMPION_URI)
    held = ["ind_cco_fin_ult1", "ind_recibo_ult1"]
    row = pd.DataFrame({C.CUSTOMER_ID: ["new-1"], "holdings": [held], "income": [250_000.0]})

    offers = model.predict(row)
    assert len(offers) == K
    assert offers[C.RANK].tolist() == list(range(1, K + 1))
    assert set(offers[C.CUSTOMER_ID]) == {"new-1"}
    assert not set(offers[C.PRODUCT_ID]) & set(held)
    assert offers[C.PRODUCT_ID].is_unique
    assert offers[C.PROBABILITY].between(0, 1).all()
    assert offers[C.SCORE].is_monotonic_decreasing
    assert all(isinstance(r, str) and r.strip() for r in offers[C.REASON])

    by_value = model.predict(row, params={"objective": "expected_value"})
    assert len(by_value) == K
    assert by_value["expected_value"].is_monotonic_decreasing
    assert not set(by_value[C.PRODUCT_ID]) & set(held)
    assert by_value[C.PRODUCT_ID].tolist() != offers[C.PRODUCT_ID].tolist()
    assert by_value["expected_value"].iloc[0] >= offers["expected_value"].max()

    short = model.predict(row, params={"k": 3, "explain": False})
    assert short[C.PRODUCT_ID].tolist() == offers[C.PRODUCT_ID].tolist()[:3]
    assert C.REASON not in short.columns


def test_pyfunc_names_an_unknown_product(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(trained.uri, tmp_path, monkeypatch)
    model = mlflow.pyfunc.load_model(CHAMPION_URI)
    row = pd.DataFrame({C.CUSTOMER_ID: ["new-2"], "holdings": [["ctacte"]]})
    with pytest.raises(RecommenderError, match="unknown product 'ctacte'"):
        model.predict(row)


# -- batch scoring -------------------------------------------------------------------------


def test_batch_scoring_offers_every_customer_only_products_not_held(
    trained: Trained, bank_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(trained.uri, tmp_path, monkeypatch)
    bundle = load_bundle(CHAMPION_URI, trained.uri)
    frame = score_directory(bank_dir, bundle, K, rules=False)  # held exclusion alone
    out = write_scores(frame, tmp_path / "scores.parquet")
    scores = pd.read_parquet(out)

    customers = pd.read_parquet(bank_dir / "customers.parquet")[C.CUSTOMER_ID].astype(str)
    held = latest_holdings(bank_dir)
    n_products = len(bundle.product_ids)
    expected_rows = (
        held.groupby(C.CUSTOMER_ID)
        .size()
        .reindex(customers, fill_value=0)
        .rsub(n_products)
        .clip(upper=K)
    )
    rows = scores.groupby(C.CUSTOMER_ID).size()
    assert set(rows.index) == set(customers)
    pd.testing.assert_series_equal(
        rows.sort_index(), expected_rows.sort_index(), check_names=False, check_index_type=False
    )
    offered = set(zip(scores[C.CUSTOMER_ID], scores[C.PRODUCT_ID], strict=True))
    owned = set(zip(held[C.CUSTOMER_ID], held[C.PRODUCT_ID], strict=True))
    assert not offered & owned
    assert not scores.duplicated([C.CUSTOMER_ID, C.PRODUCT_ID]).any()
    assert scores[C.PROBABILITY].between(0, 1).all()


def test_batch_scoring_of_tier_a_keeps_only_the_top_fifth_by_income(
    trained: Trained, bank_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(trained.uri, tmp_path, monkeypatch)
    bundle = load_bundle(CHAMPION_URI, trained.uri)
    scores = score_directory(bank_dir, bundle, K, tier="A", rules=False)

    customers = pd.read_parquet(bank_dir / "customers.parquet")
    income = customers["income"].fillna(customers["income"].median())
    top = set(customers.loc[income > np.quantile(income, 0.8), C.CUSTOMER_ID].astype(str))
    assert set(scores[C.CUSTOMER_ID]) == top
    assert len(top) == pytest.approx(0.2 * len(customers), abs=2)


def test_scoring_data_with_a_different_catalog_is_refused(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(trained.uri, tmp_path, monkeypatch)
    bundle = load_bundle(CHAMPION_URI, trained.uri)
    other = tmp_path / "other"
    other.mkdir()
    (other / "customers.csv").write_text("customer_id,income\nc1,10\n")
    (other / "holdings.csv").write_text("customer_id,product_id,snapshot_date\nc1,p1,2026-10-31\n")
    with pytest.raises(RecommenderError, match="catalog differs"):
        score_directory(other, bundle, K)


def test_an_unknown_model_uri_cannot_be_loaded(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(trained.uri, tmp_path, monkeypatch)
    with pytest.raises(
        RecommenderError, match="cannot load model 'models:/no-such-model@champion'"
    ):
        load_bundle("models:/no-such-model@champion", trained.uri)


def test_write_scores_refuses_other_extensions(tmp_path: Path) -> None:
    with pytest.raises(RecommenderError, match=r"use a \.csv or \.parquet"):
        write_scores(pd.DataFrame({C.CUSTOMER_ID: ["c1"]}), tmp_path / "scores.json")
    assert not (tmp_path / "scores.json").exists()


# -- command line --------------------------------------------------------------------------


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RECOMMENDER_DEBUG", "FORCE_COLOR")}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [*COMMAND, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def test_cli_train_promote_score(bank_dir: Path, store: str, tmp_path: Path) -> None:
    config = tmp_path / "small.json"
    config.write_text(json.dumps(SMALL_OPTIONS))

    trained = run(tmp_path, "train", str(bank_dir), "--tracking-uri", store, "--report", "r.json",
                  "--config", str(config))  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert f"registered {NAME} version 1 as @champion" in trained.stdout
    assert "Traceback" not in trained.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["protocol"] == "temporal"
    assert set(report["models"]) >= {"hybrid", "popularity", "cooccurrence", "oracle"}

    promoted = run(tmp_path, "promote")  # tracking store from MLFLOW_TRACKING_URI
    assert promoted.returncode == 2, promoted.stderr
    lines = promoted.stderr.strip().splitlines()
    assert len(lines) == 1, promoted.stderr
    assert lines[0].startswith("error: ") and "has no challenger" in lines[0]

    scored = run(
        tmp_path, "score", str(bank_dir), "--out", "s.csv", "--tracking-uri", store, "--no-rules"
    )
    assert scored.returncode == 0, scored.stderr
    scores = pd.read_csv(tmp_path / "s.csv")
    assert scores[C.CUSTOMER_ID].nunique() == 3000
    assert scores[C.RANK].between(1, K).all()
    assert "for 3,000 customers to s.csv" in scored.stdout


def test_cli_score_with_an_unknown_model_is_one_line(
    bank_dir: Path, store: str, tmp_path: Path
) -> None:
    result = run(
        tmp_path, "score", str(bank_dir), "--out", "s.csv", "--model", "models:/nope@champion"
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot load model 'models:/nope@champion'")
    assert not (tmp_path / "s.csv").exists()


# -- tune ----------------------------------------------------------------------------------


def test_tune_logs_nested_trials_and_writes_a_loadable_config(
    bank_dir: Path, store: str, tmp_path: Path
) -> None:
    out = tmp_path / "best.json"
    outcome = tune(bank_dir, trials=2, tracking_uri=store, out=out, base=SMALL)

    assert out.exists()
    config, path = load_config(out)
    assert path == out
    assert config == outcome.best
    assert isinstance(config, HybridConfig)
    assert config.ensemble == 1  # options the search does not touch come from `base`

    parent = mlflow.get_run(outcome.parent_run_id)
    assert parent.data.params["trials"] == "2"
    assert parent.data.metrics["best.map_at_7"] == pytest.approx(outcome.best_map)
    assert parent.data.metrics["default.map_at_7"] == pytest.approx(outcome.default_map)
    children = mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'",
        output_format="list",
    )
    assert len(children) == 2
    assert all("map_at_7" in child.data.metrics for child in children)
    best_trial = max(child.data.metrics["map_at_7"] for child in children)
    assert outcome.best_map == pytest.approx(max(best_trial, outcome.default_map))
    logged = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/best_config.json")
    assert HybridConfig.from_dict(logged) == config


def test_batch_scoring_applies_the_business_rules(
    trained: Trained, bank_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recommender.dataset import load_bank_data
    from recommender.rules import RuleBook
    from recommender.state import HoldingsCube

    use(trained.uri, tmp_path, monkeypatch)
    bundle = load_bundle(CHAMPION_URI, trained.uri)
    scores = score_directory(bank_dir, bundle, K)
    data = load_bank_data(bank_dir)
    state = HoldingsCube.from_data(data).state_at(len(data.snapshots) - 1, bundle.options)
    blocked = RuleBook(data.products).blocked(state)
    rows = pd.Index(state.customer_ids).get_indexer(scores[C.CUSTOMER_ID])
    cols = pd.Index(bundle.product_ids).get_indexer(scores[C.PRODUCT_ID])
    assert not blocked[rows, cols].any()  # no offer breaks a rule
    unruled = score_directory(bank_dir, bundle, K, rules=False)
    rows = pd.Index(state.customer_ids).get_indexer(unruled[C.CUSTOMER_ID])
    cols = pd.Index(bundle.product_ids).get_indexer(unruled[C.PRODUCT_ID])
    assert blocked[rows, cols].any()  # ...which the model alone would have broken
