"""Batch next-best-offer: score every customer of a data directory with a registered model."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.bundle import ModelBundle
from recommender.dataset import load_bank_data
from recommender.errors import ConfigError, RecommenderError, first_line
from recommender.experiment import parse_model_reference
from recommender.rules import RuleBook
from recommender.state import HoldingsCube
from recommender.storage import write_tables_atomically
from training.pyfunc import BUNDLE_FILE, bundle_digest, unpickle_bundle, verified_bundle
from training.registry import ModelNotRegistered, model_version, recorded_digest
from training.tracking import configure

CHUNK = 50_000
Advance = Callable[[int], None]


@dataclass(frozen=True)
class FetchedBundle:
    """A bundle and the exact bytes it was unpickled from (the local copy keeps those
    bytes, so that its digest stays the registry's)."""

    bundle: ModelBundle
    data: bytes
    sha256: str
    version: str | None  # the registry version; None for a run or a path


def fetch_bundle(model_uri: str, tracking_uri: str | None = None) -> FetchedBundle:
    """The bundle of a registered model (`models:/name@alias`, `models:/name/version`),
    unpickled only once its bytes have the SHA-256 the registry recorded at registration.

    Only the bundle file is read, never MLflow's pyfunc wrapper (python_model.pkl: a pickle
    in the same artifact store with no recorded digest). A `runs:/` URI or a path, which
    `recommender score --model` also accepts, has no registry record to check against:
    it is loaded as the caller's own file, unverified.
    """
    from mlflow.exceptions import MlflowException

    uri = configure(tracking_uri)
    where = f"cannot load model {model_uri!r} from {uri}"
    hint = "train one with `recommender train` or check --model / --tracking-uri"
    try:
        if not model_uri.startswith("models:/"):
            data = _download(f"{model_uri.rstrip('/')}/artifacts/{BUNDLE_FILE}")
            return FetchedBundle(unpickle_bundle(data, model_uri), data, bundle_digest(data),
                                 None)  # fmt: skip
        reference = parse_model_reference(model_uri)
        name = str(reference.name)
        record = model_version(name, alias=reference.alias, version=reference.version)
        version = str(record.version)
        expected = recorded_digest(record)
        data = _download(f"models:/{name}/{version}/artifacts/{BUNDLE_FILE}")
        bundle = verified_bundle(data, expected, f"model {name!r} version {version}")
        return FetchedBundle(bundle, data, expected, version)
    except ModelNotRegistered as exc:
        raise ModelNotRegistered(f"{where} ({exc}); {hint}") from exc
    except (MlflowException, OSError) as exc:
        raise RecommenderError(f"{where} ({first_line(exc)}); {hint}") from exc


def load_bundle(model_uri: str, tracking_uri: str | None = None) -> ModelBundle:
    """The bundle of a model URI (`models:/name@alias`, verified; `runs:/...`, a path)."""
    return fetch_bundle(model_uri, tracking_uri).bundle


def _download(artifact_uri: str) -> bytes:
    """One artifact's bytes (a local store's file is read in place)."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="nbo-bundle-") as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=tmp)
        return Path(path).read_bytes()


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
