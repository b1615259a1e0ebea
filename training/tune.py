"""`recommender tune`: Optuna search over hybrid hyperparameters, one nested MLflow run per
trial, scored on a validation split that never sees the evaluation's test truth."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recommender.dataset import load_bank_data
from recommender.evaluation import run_models
from recommender.metrics import summarise
from recommender.models.hybrid import HybridConfig, HybridModel
from recommender.protocol import Split, validation_split
from training.tracking import DEFAULT_EXPERIMENT, configure, metric_key

DEFAULT_CONFIG_PATH = Path("models") / "hybrid_config.json"


@dataclass(frozen=True)
class TuneOutcome:
    best: HybridConfig
    best_map: float
    default_map: float
    trials: int
    parent_run_id: str
    path: Path


def suggest(trial: Any, base: HybridConfig) -> HybridConfig:
    values = base.to_dict()
    values.update({
        "no_components": trial.suggest_int("no_components", 16, 128, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "epochs": trial.suggest_int("epochs", 10, 60),
        "user_alpha": trial.suggest_float("user_alpha", 1e-8, 1e-3, log=True),
        "item_alpha": trial.suggest_float("item_alpha", 1e-8, 1e-3, log=True),
        "max_sampled": trial.suggest_int("max_sampled", 5, 50, log=True),
        "features.n_bins": trial.suggest_int("features.n_bins", 5, 40),
        "features.held_set": trial.suggest_categorical("features.held_set", [True, False]),
        "features.held_for": trial.suggest_categorical("features.held_for", [True, False]),
        "features.dropped": trial.suggest_categorical("features.dropped", [True, False]),
        "features.lags": trial.suggest_int("features.lags", 0, 2),
        "features.held_before": trial.suggest_categorical("features.held_before", [True, False]),
        "features.since_drop": trial.suggest_categorical("features.since_drop", [True, False]),
        "recency_half_life": trial.suggest_categorical("recency_half_life", [0.0, 2.0, 6.0]),
    })  # fmt: skip
    return HybridConfig.from_dict(values)


def validation_map(split: Split, config: HybridConfig, k: int) -> float:
    (result,) = run_models(split, [HybridModel(config)], k)
    return summarise(result.recommended, split.test.targets, k)[f"map@{k}"]


def tune(
    data_dir: Path,
    trials: int,
    protocol: str = "auto",
    base: HybridConfig | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    out: Path = DEFAULT_CONFIG_PATH,
    k: int = 7,
    seed: int = 0,
    on_trial: Callable[[int, float, float], None] | None = None,
) -> TuneOutcome:
    import mlflow
    import optuna

    base = base or HybridConfig()
    data = load_bank_data(data_dir)
    split = validation_split(data, protocol)
    configure(tracking_uri)
    mlflow.set_experiment(experiment)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with mlflow.start_run(run_name=f"tune {Path(data_dir).name}") as parent:
        mlflow.log_params({"trials": trials, "protocol": split.protocol, "k": k, "seed": seed,
                           "validation_test_date": split.test_date.date().isoformat()})  # fmt: skip
        default_map = validation_map(split, base, k)
        mlflow.log_metric(metric_key("default", f"map@{k}"), default_map)
        best = [default_map]

        def objective(trial: Any) -> float:
            config = suggest(trial, base)
            with mlflow.start_run(run_name=f"trial {trial.number}", nested=True):
                mlflow.log_params(config.to_dict())
                score = validation_map(split, config, k)
                mlflow.log_metric(metric_key(f"map@{k}"), score)
            best[0] = max(best[0], score)
            if on_trial:
                on_trial(trial.number, score, best[0])
            return score

        study = optuna.create_study(direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=seed))  # fmt: skip
        study.optimize(objective, n_trials=trials)
        chosen = suggest(study.best_trial, base) if study.best_value > default_map else base
        best_map = max(study.best_value, default_map)
        mlflow.log_metric(metric_key("best", f"map@{k}"), best_map)
        mlflow.log_dict(chosen.to_dict(), "best_config.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(chosen.to_dict(), indent=2))
        return TuneOutcome(chosen, best_map, default_map, trials, parent.info.run_id, out)


def load_config(path: Path | None) -> tuple[HybridConfig, Path | None]:
    """`--config FILE`, else the tuned config at models/hybrid_config.json, else defaults."""
    from recommender.errors import ConfigError

    chosen = (
        path
        if path is not None
        else (DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None)
    )
    if chosen is None:
        return HybridConfig(), None
    try:
        values = json.loads(chosen.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{chosen}: cannot read the config ({exc}); expected a JSON object"
        ) from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{chosen}: expected a JSON object of hybrid options")
    return HybridConfig.from_dict(values), chosen
