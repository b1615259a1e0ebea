"""The model being served, and how it is replaced while the service runs.

A `ServedModel` is immutable: the bundle, its offer engine, and the features of every
known client precomputed for that model. Requests take `holder.current` once, so a swap
(one reference assignment) never mixes two models within a request. New champions are
found by polling the registry alias (and on `POST /v1/admin/reload`), loaded and
prepared in a background thread, then swapped in. A failed load leaves the old model
serving and is reported in logs, `/readyz` and metrics. The last good model is copied to
`local_model_dir` and used at start-up when MLflow cannot be reached.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recommender.bundle import ModelBundle
from recommender.errors import ConfigError, first_line
from recommender.offer import OfferEngine
from recommender.rules import ClientFacts, RuleBook, RuleSettings, client_facts
from serving.customers import CustomerDirectory

log = logging.getLogger("serving.models")


@dataclass(frozen=True)
class ServedModel:
    bundle: ModelBundle
    engine: OfferEngine
    features: sp.csr_matrix  # every known client, for this model
    facts: ClientFacts  # every known client's age, income, risk tolerance, segment
    name: str
    version: str
    alias: str | None
    source: str  # "mlflow" | "local copy"
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


def parse_model_uri(uri: str) -> tuple[str | None, str | None, str | None]:
    """(name, alias, version) of a `models:/name@alias` or `models:/name/version` URI."""
    if not uri.startswith("models:/"):
        return None, None, None
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    name, _, version = rest.partition("/")
    return name, None, version or None


class ModelHolder:
    def __init__(self, model_uri: str, tracking_uri: str | None, directory: CustomerDirectory,
                 rules: RuleSettings, local_dir: Path,
                 on_event: Callable[[str, str], None] | None = None) -> None:  # fmt: skip
        self.model_uri = model_uri
        self.tracking_uri = tracking_uri
        self.directory = directory
        self.rules = rules
        self.local_dir = local_dir
        self.on_event = on_event or (lambda kind, detail: None)
        self.name, self.alias, self.pinned_version = parse_model_uri(model_uri)
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self.last_check: str | None = None
        self.degraded = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- loading -------------------------------------------------------------------
    def start(self) -> None:
        """Initial load: MLflow, else the local copy. Catalog rule errors stop start-up."""
        try:
            self._load_from_mlflow(self._registry_version())
        except ConfigError:
            raise
        except Exception as exc:  # MLflow unreachable or model missing
            self._failed(f"cannot load {self.model_uri} from MLflow: {first_line(exc)}")
            self._load_local_copy()

    def check(self) -> str:
        """Load the alias's version if it is not the one serving. Returns what happened."""
        with self._lock:  # one check at a time
            self.last_check = datetime.now(UTC).isoformat()
            try:
                version = self._registry_version()
                if (
                    self.current is not None
                    and version == self.current.version
                    and self.current.source == "mlflow"
                ):
                    self.degraded = False
                    self.last_error = None
                    return f"version {version} is already serving"
                self._load_from_mlflow(version)
                return f"now serving version {version}"
            except Exception as exc:
                message = f"reload failed: {first_line(exc)}"
                self._failed(message)
                return message

    def _registry_version(self) -> str:
        if self.pinned_version or not self.name or not self.alias:
            return self.pinned_version or "unversioned"
        from mlflow import MlflowClient

        from training.tracking import configure

        configure(self.tracking_uri)
        return str(MlflowClient().get_model_version_by_alias(self.name, self.alias).version)

    def _load_from_mlflow(self, version: str) -> None:
        from training.scoring import load_bundle

        uri = f"models:/{self.name}/{version}" if self.name else self.model_uri
        bundle = load_bundle(uri, self.tracking_uri)
        served = self._prepare(bundle, version, "mlflow")
        self._save_local_copy(bundle, version)
        self._swap(served)

    def _prepare(self, bundle: ModelBundle, version: str, source: str) -> ServedModel:
        if self.directory.product_ids != bundle.product_ids:
            raise ConfigError(
                f"the data directory's catalog ({len(self.directory.product_ids)} products) is "
                f"not the model's ({len(bundle.product_ids)}) in the same order; retrain the "
                "model on this data or point RECOMMENDER_DATA_DIR at the data it was trained on"
            )
        state = self.directory.state(bundle.options)
        # business rules are data: the data directory's current catalog, not the model's copy
        catalog = self.directory.products
        rules = RuleBook(catalog, self.rules, self.directory.segments(bundle.options))
        features = bundle.model.features(state)
        facts = client_facts(state)
        engine = OfferEngine(bundle, rules)
        if len(state):  # builds the engine's caches before any request sees it
            first = np.array([0])
            engine.recommend(state.take(first), 1, x=features[0], facts=facts.take(first))
        return ServedModel(bundle, engine, features, facts, self.name or self.model_uri,
                           version, self.alias, source)  # fmt: skip

    def _swap(self, served: ServedModel) -> None:
        previous = self.current
        self.current = served  # one reference assignment: atomic for readers
        self.degraded = served.source != "mlflow"
        self.last_error = None if served.source == "mlflow" else self.last_error
        log.info("serving %s version %s (%s)", served.name, served.version, served.source)
        was = previous.version if previous else "none"
        self.on_event("swap", f"{was} -> {served.version}")

    def _failed(self, message: str) -> None:
        self.last_error = message
        self.degraded = True
        log.error(message)
        self.on_event("failure", message)

    # ---- local copy ----------------------------------------------------------------
    def _copy_dir(self) -> Path:
        return self.local_dir / (self.name or "model")

    def _save_local_copy(self, bundle: ModelBundle, version: str) -> None:
        folder = self._copy_dir()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "bundle.pkl.tmp"
        with tmp.open("wb") as handle:
            pickle.dump(bundle, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, folder / "bundle.pkl")
        meta = {
            "name": self.name,
            "version": version,
            "alias": self.alias,
            "saved_at": datetime.now(UTC).isoformat(),
            "model_uri": self.model_uri,
        }
        (folder / "meta.tmp").write_text(json.dumps(meta, indent=2))
        os.replace(folder / "meta.tmp", folder / "meta.json")

    def _load_local_copy(self) -> None:
        folder = self._copy_dir()
        if not (folder / "bundle.pkl").exists():
            log.error("no local copy of the model in %s; not ready until MLflow answers", folder)
            return
        from training.pyfunc import load_bundle_file

        meta = json.loads((folder / "meta.json").read_text())
        bundle = load_bundle_file(folder / "bundle.pkl")
        self._swap(self._prepare(bundle, str(meta["version"]), "local copy"))

    # ---- polling -------------------------------------------------------------------
    def start_polling(self, seconds: float) -> None:
        if seconds <= 0 or not self.alias:
            return
        self._thread = threading.Thread(target=self._poll, args=(seconds,), daemon=True,
                                        name="model-poll")  # fmt: skip
        self._thread.start()

    def _poll(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            self.check()

    def check_in_background(self) -> None:
        threading.Thread(target=self.check, daemon=True, name="model-reload").start()

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        current = self.current
        return {
            "model": None if current is None else {
                "name": current.name, "version": current.version, "alias": current.alias,
                "source": current.source, "loaded_at": current.loaded_at,
            },
            "degraded": self.degraded,
            "last_error": self.last_error,
            "last_check": self.last_check,
        }  # fmt: skip


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
