"""The model being served, and how it is replaced while the service runs.

A `ServedModel` is immutable: the bundle, its offer engine, and the features of every
known client precomputed for that model. Requests take `holder.current` once, so a swap
(one reference assignment) never mixes two models within a request. New champions are
found by polling the registry alias (and on `POST /v1/admin/reload`), loaded and
prepared in a background thread, then swapped in. A failed load leaves the old model
serving and is reported in logs, `/readyz` and metrics. The last good model is copied to
`local_model_dir` and used at start-up when MLflow cannot be reached.

Loading a bundle unpickles it, which runs code, so nothing is unpickled unless its
SHA-256 is the one the registry recorded at registration: from MLflow (see
`training.scoring.fetch_bundle`) and from the local copy, which keeps the registry's exact
bytes and their digest in its meta.json, and is checked against the registry as well when
the registry answers. A local copy is used only by the holder of the same model URI that
saved it, never for a model the registry says does not exist, and never outside its
folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
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
from recommender.experiment import parse_model_reference
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


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of a `models:/name@alias` or `models:/name/version` URI.

    The service serves registered models only: the registry holds the digest every
    bundle is checked against, and the name becomes the local copy's folder, so it is
    held to the registry-name pattern (no path, no newline)."""
    if not uri.startswith("models:/"):
        raise ConfigError(
            f"model URI {uri!r}: the service serves a registered model, "
            "models:/<name>@<alias> or models:/<name>/<version> (its bundle is checked "
            "against the SHA-256 the registry recorded); set RECOMMENDER_MODEL_URI to one"
        )
    reference = parse_model_reference(uri)
    return str(reference.name), reference.alias, reference.version


_DIGEST = re.compile(r"[0-9a-f]{64}")
BUNDLE = "bundle.pkl"
META = "meta.json"


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
        # background checks: at most one running and one pending, however many are asked
        self._background = threading.Lock()
        self._check_running = False
        self._check_pending = False

    # ---- loading -------------------------------------------------------------------
    def start(self) -> None:
        """Initial load: MLflow, else the local copy (unless the registry says the model
        does not exist). Catalog rule errors stop start-up."""
        from training.registry import ModelNotRegistered

        try:
            self._load_from_mlflow(self._registry_version())
        except ConfigError:
            raise
        except Exception as exc:  # MLflow unreachable, model missing, bundle refused
            message = f"cannot load {self.model_uri} from MLflow: {first_line(exc)}"
            if isinstance(exc, ModelNotRegistered):
                self._failed(f"{message}; the registry does not have it, so no local copy "
                             "is used for it either")  # fmt: skip
                return
            self._failed(message)
            try:
                self._load_local_copy()
            except ConfigError:
                raise
            except Exception as refused:  # a copy that fails its checks is not unpickled
                self._failed(f"{message}; local copy refused: {first_line(refused)}")

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
        if self.pinned_version or not self.alias:
            return str(self.pinned_version)
        from training.registry import model_version
        from training.tracking import configure

        configure(self.tracking_uri)
        return str(model_version(self.name, alias=self.alias).version)

    def _load_from_mlflow(self, version: str) -> None:
        from training import scoring

        fetched = scoring.fetch_bundle(f"models:/{self.name}/{version}", self.tracking_uri)
        served = self._prepare(fetched.bundle, version, "mlflow")
        self._save_local_copy(fetched.data, fetched.sha256, version)
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
        return ServedModel(bundle, engine, features, facts, self.name, version, self.alias,
                           source)  # fmt: skip

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
        """local_dir/<registered name>, and never anywhere else (the name is checked when
        parsed; this holds even if it were not, or the folder were a link elsewhere)."""
        base = self.local_dir.resolve()
        folder = (base / self.name).resolve()
        if folder.parent != base:
            raise ConfigError(
                f"model {self.model_uri!r}: its local copy would be {folder}, outside "
                f"{base}; local copies stay directly inside RECOMMENDER_LOCAL_MODEL_DIR"
            )
        return folder

    def _save_local_copy(self, data: bytes, sha256: str, version: str) -> None:
        """The registry's verified bytes (not a re-pickle: its digest stays the registry's),
        readable by the service's user only."""
        folder = self._copy_dir()
        self.local_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)  # also a folder made by an older version with the umask's mode
        _write_private(folder / BUNDLE, data)
        meta = {
            "name": self.name,
            "version": version,
            "alias": self.alias,
            "saved_at": datetime.now(UTC).isoformat(),
            "model_uri": self.model_uri,
            "bundle_sha256": sha256,
        }
        _write_private(folder / META, json.dumps(meta, indent=2).encode())

    def _load_local_copy(self) -> None:
        """The copy this holder's model URI saved, checked before it is unpickled: its
        digest against meta.json, and against the registry's record when the registry
        answers (BundleIntegrityError otherwise)."""
        from training.pyfunc import BundleIntegrityError, verified_bundle

        folder = self._copy_dir()
        if not (folder / BUNDLE).exists():
            log.error("no local copy of the model in %s; not ready until MLflow answers", folder)
            return
        where = f"local copy {folder / BUNDLE}"
        meta = json.loads((folder / META).read_text())
        if not isinstance(meta, dict) or meta.get("model_uri") != self.model_uri:
            found = meta.get("model_uri") if isinstance(meta, dict) else None
            raise BundleIntegrityError(
                f"{where} was saved for {found!r}, not {self.model_uri!r}; not loaded"
            )
        expected = str(meta.get("bundle_sha256", ""))
        if not _DIGEST.fullmatch(expected):
            raise BundleIntegrityError(
                f"{where} has no SHA-256 in its meta.json (saved by an older version); not "
                "loaded: start once with MLflow reachable to replace it"
            )
        version = str(meta.get("version"))
        data = (folder / BUNDLE).read_bytes()
        self._check_with_registry(where, version, expected)
        bundle = verified_bundle(data, expected, where)
        self._swap(self._prepare(bundle, version, "local copy"))

    def _check_with_registry(self, where: str, version: str, expected: str) -> None:
        """When the registry answers, the copy must be the bundle it registered as
        `version`; when it does not, the copy's own meta.json is all there is."""
        from training.pyfunc import BundleIntegrityError
        from training.registry import ModelNotRegistered, model_version, recorded_digest
        from training.tracking import configure

        try:
            configure(self.tracking_uri)
            record = model_version(self.name, version=version)
        except ModelNotRegistered as exc:
            raise BundleIntegrityError(
                f"{where}: the registry has no version {version} of {self.name!r} "
                f"({first_line(exc)}); not loaded"
            ) from exc
        except Exception as exc:  # the registry cannot be asked: the usual reason to be here
            log.warning("%s checked against its meta.json only: the registry did not answer "
                        "(%s)", where, first_line(exc))  # fmt: skip
            return
        recorded = recorded_digest(record)
        if recorded != expected:
            raise BundleIntegrityError(
                f"{where}: its SHA-256 {expected} is not the one the registry recorded for "
                f"{self.name!r} version {version} ({recorded}); not loaded"
            )

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

    def check_in_background(self) -> bool:
        """A check in a background thread, coalesced: while one runs, further requests
        only ask for one more run after it (at most one thread and one pending check per
        model, however many reloads are posted), and the last request is never lost.
        True if a thread was started."""
        with self._background:
            if self._check_running:
                self._check_pending = True
                return False
            self._check_running = True
        try:
            threading.Thread(target=self._background_checks, daemon=True,
                             name="model-reload").start()  # fmt: skip
        except BaseException:
            with self._background:
                self._check_running = False
            raise
        return True

    def _background_checks(self) -> None:
        try:
            while True:
                self.check()
                with self._background:
                    if not self._check_pending:
                        self._check_running = False
                        return
                    self._check_pending = False
        except BaseException:
            with self._background:
                self._check_running = self._check_pending = False
            raise

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


def _write_private(path: Path, data: bytes) -> None:
    """Write `path` atomically (a temporary file, then a rename), mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
