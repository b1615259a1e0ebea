"""`recommender train`: evaluate, refit, log one MLflow run, register the model.

Everything is computed before anything is written to MLflow, and the model is registered
only after its run finished successfully, so a failure at any step leaves the registry
and its aliases as they were.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recommender.bundle import DROPPED, HOLDINGS
from recommender.columns import CUSTOMER_ID
from recommender.dataset import fingerprint, load_bank_data
from recommender.models.hybrid import HybridConfig
from recommender.pipeline import PipelineResult, Progress, run_pipeline
from recommender.state import StateOptions
from training import charts
from training.pyfunc import (
    BUNDLE_ARTIFACT,
    BUNDLE_FILE,
    DEFAULT_PARAMS,
    NextBestOfferModel,
    bundle_digest,
    input_example,
    save_bundle,
)
from training.registry import TAG_FINGERPRINT, TAG_METRIC, TAG_PROTOCOL, register
from training.tracking import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME, configure, report_metrics


@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    model_name: str
    version: str
    alias: str
    report: dict[str, Any]
    tracking_uri: str


def train(
    data_dir: Path,
    protocol: str = "auto",
    config: HybridConfig | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    model_name: str = DEFAULT_MODEL_NAME,
    k: int = 7,
    options: StateOptions | None = None,
    progress: Progress | None = None,
) -> TrainOutcome:
    config = config or HybridConfig()
    data = load_bank_data(data_dir)
    data_id = fingerprint(data)
    result = run_pipeline(data, protocol, config, k, options, progress)
    if progress:
        progress("logging to MLflow")
    uri = configure(tracking_uri)
    run_id, model_uri, digest = _log_run(result, data, data_id, config, experiment)
    tags = {
        TAG_METRIC: repr(result.report["models"]["hybrid"][f"map@{k}"]),
        TAG_FINGERPRINT: str(data_id["id"]),
        TAG_PROTOCOL: result.report["protocol"],
        "k": str(k),
        "run_id": run_id,
    }
    version, alias = register(model_uri, model_name, tags, bundle_sha256=digest)
    return TrainOutcome(run_id, model_name, version, alias, result.report, uri)


def _log_run(
    result: PipelineResult,
    data: Any,
    data_id: dict[str, Any],
    config: HybridConfig,
    experiment: str,
) -> tuple[str, str, str]:
    """Log the run and the model; (run id, model URI, SHA-256 of the logged bundle file:
    the registry records it, and loading refuses a bundle that no longer has it)."""
    import mlflow
    from mlflow.models import infer_signature

    mlflow.set_experiment(experiment)
    report = result.report
    k = report["k"]
    bundle = result.bundle
    example = input_example(bundle, result.latest)
    output = bundle.recommend(bundle.state_from_frame(example), DEFAULT_PARAMS["k"])
    signature = _optional_attributes(infer_signature(example, output, params=DEFAULT_PARAMS))
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run() as run:
        mlflow.log_params(
            {
                **config.to_dict(),
                "protocol": report["protocol"],
                "k": k,
                "data.id": data_id["id"],
                "data.directory": str(data.directory),
            }
        )
        mlflow.set_tags({"data.snapshots": ",".join(data_id["snapshots"]),
                         "data.rows": json.dumps(data_id["rows"])})  # fmt: skip
        mlflow.log_metrics(report_metrics(report))
        mlflow.log_dict(report, "report.json")
        mlflow.log_dict(data_id, "data_fingerprint.json")
        mlflow.log_dict({"customer_features": bundle.model.vocabulary_,
                         "product_features": bundle.model.item_vocabulary_},
                        "feature_vocabulary.json")  # fmt: skip
        names = dict(zip(bundle.product_ids, bundle.products["name"].astype(str), strict=True))
        for figure, name in (
            (charts.map_by_model(report), "map_by_model.png"),
            (charts.map_by_tier(report), "map_by_tier.png"),
            (charts.hit_rate_by_product(result.hit_rates, names, k), "hit_rate_by_product.png"),
        ):
            mlflow.log_figure(figure, f"charts/{name}")
            charts.close(figure)
        path = save_bundle(bundle, Path(tmp) / BUNDLE_FILE)
        digest = bundle_digest(path.read_bytes())  # the exact bytes logged below
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=NextBestOfferModel(),
            artifacts={BUNDLE_ARTIFACT: str(path)},
            signature=signature,
            input_example=example,
        )
        return run.info.run_id, info.model_uri, digest


def _optional_attributes(signature: Any) -> Any:
    """Only customer_id and holdings are required: a cold-start client may lack attributes."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    columns: list[Any] = []
    for spec in signature.inputs.inputs:
        kind = Array(DataType.string) if spec.name == DROPPED else spec.type
        columns.append(ColSpec(kind, spec.name, required=spec.name in (CUSTOMER_ID, HOLDINGS)))
    return ModelSignature(Schema(columns), signature.outputs, signature.params)


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
