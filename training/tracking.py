"""MLflow set-up and naming. The default store is an embedded SQLite file."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "next-best-offer"
DEFAULT_MODEL_NAME = "cross-sell-recommender"
DEFAULT_STORE = "mlflow.db"


def tracking_uri(explicit: str | None = None) -> str:
    """`--tracking-uri`, else MLFLOW_TRACKING_URI, else ./mlflow.db (SQLite)."""
    if explicit:
        return explicit
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    return f"sqlite:///{Path(DEFAULT_STORE).resolve()}"


def configure(explicit: str | None = None) -> str:
    import mlflow

    uri = tracking_uri(explicit)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def metric_key(*parts: str) -> str:
    """MLflow-safe metric name: `map@7` -> `map_at_7`; other odd characters -> `_`."""
    text = ".".join(parts).replace("@", "_at_")
    return re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", text)


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Every metric of every model, overall, per tier and per segment, flat."""
    out: dict[str, float] = {}
    for model, values in report["models"].items():
        out.update({metric_key(model, m): v for m, v in values.items()})
    for group in ("tiers", "segments"):
        for label, models in report.get(group, {}).items():
            for model, values in models.items():
                prefix = f"{group[:-1]}_{label}"
                out.update({metric_key(prefix, model, m): v for m, v in values.items()})
    for name, value in report.get("calibration", {}).items():
        out[metric_key("calibration", name)] = value
    out["n_customers_evaluated"] = float(report["n_customers_evaluated"])
    out["share_evaluated"] = float(report["share_evaluated"])
    return out


def quiet_mlflow() -> None:
    """Keep MLflow's own chatter (info logs, schema hints, download bars) off the terminal."""
    import logging
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401  (configures its loggers on import; quiet them afterwards)

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\..*)?")
