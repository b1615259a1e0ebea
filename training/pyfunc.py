"""The model as an MLflow pyfunc: records in, ranked offers out.

Input: one row per customer with `customer_id`, attribute columns and `holdings` (list
of held product ids; optional `dropped`). Params: `k`, `objective` (propensity |
expected_value), `explain`. Output: customer_id, rank, product_id, score, probability,
expected_value, reason.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.bundle import DROPPED, HOLDINGS, ModelBundle
from recommender.errors import ConfigError
from recommender.state import CustomerState

BUNDLE_ARTIFACT = "bundle"
DEFAULT_PARAMS: dict[str, Any] = {"k": 7, "objective": "propensity", "explain": True}


def save_bundle(bundle: ModelBundle, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump(bundle, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load_bundle_file(path: Path) -> ModelBundle:
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
