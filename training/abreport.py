"""`recommender ab report`: the readout of an experiment from the event store (and,
optionally, later holdings snapshots), printed, written as JSON and PNG, and logged to
MLflow as a run tagged with the models the variants served."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recommender.dataset import load_bank_data
from recommender.errors import ConfigError
from recommender.outcome import SnapshotOutcomes, derive
from recommender.readout import readout
from training import charts
from training.tracking import configure, metric_key

AB_EXPERIMENT = "ab-tests"


def experiment_report(
    name: str,
    events_url: str,
    data_dir: Path | None = None,
    window_days: int = 30,
    out_dir: Path = Path("ab-reports"),
    tracking_uri: str | None = None,
    log_to_mlflow: bool = True,
) -> dict[str, Any]:
    from serving.events import EventStore

    store = EventStore(events_url)
    try:
        experiment = store.experiment(name)
        if experiment is None:
            known = [e.name for e in store.experiments()] or "none"
            raise ConfigError(
                f"no experiment named {name!r} in {events_url} (known: {known}); check "
                "--experiment and --events"
            )
        decisions = store.frame("decisions", name)
        exposures = store.frame("offers", name)
        feedback = store.frame("feedback", name)
    finally:
        store.close()
    snapshots = _snapshots(data_dir, decisions, exposures, window_days) if data_dir else None
    report = readout(experiment, decisions, exposures, feedback, snapshots, window_days)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    png_path = out_dir / f"{name}.png"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    figure = charts.experiment_readout(report)
    figure.savefig(png_path, dpi=110)
    charts.close(figure)
    report["files"] = {"json": str(json_path), "png": str(png_path)}
    if log_to_mlflow:
        report["mlflow_run_id"] = _log(report, json_path, png_path, tracking_uri)
    return report


def _snapshots(
    data_dir: Path, decisions: Any, exposures: Any, window_days: int
) -> SnapshotOutcomes:
    data = load_bank_data(data_dir)
    first = decisions.sort_values("created_at").drop_duplicates("customer_id")
    return derive(exposures, first[["customer_id", "created_at"]], data.holdings, window_days)


def _log(report: dict[str, Any], json_path: Path, png_path: Path, uri: str | None) -> str:
    import mlflow

    from training.tracking import quiet_mlflow

    quiet_mlflow()
    configure(uri)
    mlflow.set_experiment(AB_EXPERIMENT)
    exp = report["experiment"]
    with mlflow.start_run(run_name=f"ab-{exp['name']}") as run:
        mlflow.log_params({
            "experiment": exp["name"], "channel": exp["channel"], "control": exp["control"],
            "holdout": exp["holdout"], "window_days": report["window_days"],
            "outcomes_from_snapshots": report["outcomes_from_snapshots"],
            "variants": json.dumps(exp["variants"])[:6000],
        })  # fmt: skip
        tags = {"ab.experiment": exp["name"]}
        for arm, a in report["arms"].items():
            if a["models"]:
                tags[f"ab.model.{arm}"] = ", ".join(f"models:/{m}" for m in a["models"])
                tags.update(_source_runs(arm, a["models"]))
        mlflow.set_tags(tags)
        metrics: dict[str, float] = {"clients_total": float(report["clients_total"])}
        for arm, a in report["arms"].items():
            metrics[metric_key(arm, "clients")] = float(a["clients"])
            metrics[metric_key(arm, "exposures")] = float(a["exposures"])
            for name in ("acceptance", "conversion", "any_conversion"):
                if name in a and a[name]["rate"] is not None:
                    metrics[metric_key(arm, name)] = float(a[name]["rate"])
        for c in [*report["comparisons"], report["treated_vs_holdout"]]:
            if c and c["difference"] is not None:
                prefix = f"{c['variant']}_vs_{c['control']}.{c['metric']}"
                metrics[metric_key(prefix, "uplift")] = float(c["difference"])
                metrics[metric_key(prefix, "p_value")] = float(c["p_value"])
        if report["sample_ratio"]["p_value"] is not None:
            metrics["srm_p_value"] = float(report["sample_ratio"]["p_value"])
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(json_path))
        mlflow.log_artifact(str(png_path))
        return str(run.info.run_id)


def _source_runs(arm: str, models: list[str]) -> dict[str, str]:
    """The training run of each registered model version the arm served (if known)."""
    from mlflow import MlflowClient

    out = {}
    for model in models:
        name, _, version = model.rpartition("/")
        try:
            run_id = MlflowClient().get_model_version(name, version).run_id
        except Exception:  # a model from another registry: keep the URI tag only
            continue
        if run_id:
            out[f"ab.source_run.{arm}"] = run_id
    return out
