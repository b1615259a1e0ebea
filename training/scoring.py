"""Batch next-best-offer: score every customer of a data directory with a registered model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.bundle import ModelBundle
from recommender.dataset import load_bank_data
from recommender.errors import ConfigError, RecommenderError, first_line
from recommender.rules import RuleBook
from recommender.state import HoldingsCube
from recommender.storage import write_tables_atomically
from training.tracking import configure

CHUNK = 50_000
Advance = Callable[[int], None]


def load_bundle(model_uri: str, tracking_uri: str | None = None) -> ModelBundle:
    """The bundle inside an MLflow pyfunc model (`models:/name@alias`, `runs:/...`, a path)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = configure(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        first = first_line(exc)
        raise RecommenderError(
            f"cannot load model {model_uri!r} from {uri} ({first}); train one with "
            "`recommender train` or check --model / --tracking-uri"
        ) from exc
    bundle = getattr(model.unwrap_python_model(), "bundle", None)
    if not isinstance(bundle, ModelBundle):
        raise RecommenderError(f"{model_uri} is not a next-best-offer model")
    return bundle


def score_directory(
    data_dir: Path,
    bundle: ModelBundle,
    k: int = 7,
    as_of: pd.Timestamp | None = None,
    tier: str | None = None,
    objective: str = "propensity",
    explain: bool = True,
    rules: bool = True,
    advance: Advance | None = None,
    start: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Top-k offers for every customer at the as-of snapshot (default: the latest); with
    `rules`, the catalog's business rules (eligibility, suitability, families) apply too."""
    data = load_bank_data(data_dir)
    missing = sorted(set(bundle.product_ids) ^ set(data.product_ids))
    if missing:
        raise ConfigError(
            f"the model's catalog differs from {data_dir}'s ({', '.join(missing[:5])})"
        )
    cube = HoldingsCube.from_data(data)
    t = len(cube.dates) - 1 if as_of is None else _index(cube.dates, as_of)
    state = cube.state_at(t, bundle.options)
    if tier is not None:
        if tier not in C.TIERS:
            raise ConfigError(f"--tier {tier!r}: use one of {', '.join(C.TIERS)}")
        state = state.take(np.flatnonzero(state.tier == tier))
    if start:
        start(len(state))
    book = (
        RuleBook(data.products, known_segments={str(s) for s in state.segment}) if rules else None
    )
    parts = []
    for begin in range(0, len(state), CHUNK):
        rows = np.arange(begin, min(begin + CHUNK, len(state)))
        chunk = state.take(rows)
        exclude = book.blocked(chunk) if book is not None else None
        parts.append(bundle.recommend(chunk, k, objective, explain, exclude=exclude))
        if advance:
            advance(len(rows))
    columns = [C.CUSTOMER_ID, C.RANK, C.PRODUCT_ID, C.SCORE, C.PROBABILITY, "expected_value"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def write_scores(frame: pd.DataFrame, out: Path) -> Path:
    if out.suffix not in (".csv", ".parquet"):
        raise ConfigError(f"--out {out}: use a .csv or .parquet file name")
    write_tables_atomically({out.name: frame}, out.parent, other_formats=False)
    return out


def _index(dates: list[pd.Timestamp], as_of: pd.Timestamp) -> int:
    if as_of not in dates:
        shown = ", ".join(d.date().isoformat() for d in dates[-5:])
        raise ConfigError(f"--as-of {as_of.date()} is not a snapshot (latest: {shown})")
    return dates.index(as_of)
