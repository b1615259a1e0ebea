"""The model as an MLflow pyfunc: records in, ranked offers out.

Input: one row per customer with `customer_id`, attribute columns and `holdings` (list
of held product ids; optional `dropped`). Params: `k`, `objective` (propensity |
expected_value), `explain`. Output: customer_id, rank, product_id, score, probability,
expected_value, reason.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.bundle import DROPPED, HOLDINGS, ModelBundle
from recommender.errors import ConfigError, RecommenderError
from recommender.state import CustomerState

BUNDLE_ARTIFACT = "bundle"
BUNDLE_FILE = "bundle.pkl"  # inside the logged model: artifacts/bundle.pkl
DEFAULT_PARAMS: dict[str, Any] = {"k": 7, "objective": "propensity", "explain": True}


class BundleIntegrityError(RecommenderError):
    """A bundle's bytes are not the ones recorded when it was registered (or saved): it is
    refused before it is unpickled, since unpickling runs whatever code the file names."""


def bundle_digest(data: bytes) -> str:
    """The SHA-256 (hex) recorded in the registry for each registered bundle."""
    return hashlib.sha256(data).hexdigest()


def verified_bundle(data: bytes, expected: str, where: str) -> ModelBundle:
    """Unpickle `data` only if its SHA-256 is `expected` (BundleIntegrityError otherwise)."""
    actual = bundle_digest(data)
    if not hmac.compare_digest(actual, expected.strip().lower()):
        raise BundleIntegrityError(
            f"{where}: the bundle's SHA-256 {actual} is not the one recorded at "
            f"registration ({expected}); it was changed since and is not loaded. Restore the "
            "file or register a new version; find out who could write there"
        )
    return unpickle_bundle(data, where)


def unpickle_bundle(data: bytes, where: str) -> ModelBundle:
    """The bundle in `data`. Only for bytes the caller trusts: unpickling runs code."""
    bundle = pickle.loads(data)
    if not isinstance(bundle, ModelBundle):
        raise RecommenderError(f"{where} does not hold a model bundle")
    return bundle


def save_bundle(bundle: ModelBundle, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump(bundle, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load_bundle_file(path: Path) -> ModelBundle:
    """The bundle of MLflow's own pyfunc loading (`mlflow.pyfunc.load_model`), which trusts
    the artifact store; the service and `recommender score` verify it instead, see
    `training.scoring.fetch_bundle`."""
    with path.open("rb") as handle:
        bundle = pickle.load(handle)
    if not isinstance(bundle, ModelBundle):
        raise ConfigError(f"{path} does not hold a model bundle")
    return bundle


class NextBestOfferModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    # The model is logged with an explicit signature; MLflow's type-hint inference is
    # not needed (and would warn about the untyped predict on every import).
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        self.bundle = load_bundle_file(Path(context.artifacts[BUNDLE_ARTIFACT]))

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        options = {**DEFAULT_PARAMS, **(params or {})}
        frame = pd.DataFrame(model_input)
        state = self.bundle.state_from_frame(frame)
        return self.bundle.recommend(
            state, int(options["k"]), str(options["objective"]), bool(options["explain"])
        )


def input_example(bundle: ModelBundle, state: CustomerState, n: int = 3) -> pd.DataFrame:
    """A few real customers as pyfunc input (ids, attributes, held product lists)."""
    rows = np.arange(min(n, len(state)))
    frame = state.attributes.iloc[rows].reset_index(drop=True).copy()
    frame.insert(0, C.CUSTOMER_ID, state.customer_ids[rows])
    ids = bundle.product_ids
    frame[HOLDINGS] = [[ids[j] for j in np.flatnonzero(row)] for row in state.held[rows]]
    frame[DROPPED] = [[ids[j] for j in np.flatnonzero(row)] for row in state.dropped[rows]]
    keep = [C.CUSTOMER_ID, *bundle.attribute_columns, HOLDINGS, DROPPED]
    return frame[[c for c in keep if c in frame.columns]]
