"""Building blocks of the serving tests: a small synthetic bank, a real (temporary) MLflow
store with a trained model, API keys per role, and the app running in a real uvicorn
server on a free port, driven over HTTP with httpx.

Nothing is written to the repository: stores, keys, event databases and local model
copies live in temporary directories, which are also the working directory while MLflow
writes artifacts (its ./mlruns).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pandas as pd
import pytest
import uvicorn
from fastapi import FastAPI

from recommender import columns as C
from recommender.models.hybrid import HybridConfig
from recommender.synthetic import generate, write_bank
from serving.keys import ROLES, add_key
from serving.settings import ServiceSettings
from training.registry import promote
from training.tracking import DEFAULT_MODEL_NAME, configure
from training.train import TrainOutcome, train

SMALL = HybridConfig(epochs=5, no_components=16, ensemble=1, num_threads=1)
MODEL_NAME = DEFAULT_MODEL_NAME
CHAMPION_URI = f"models:/{MODEL_NAME}@champion"
UNREACHABLE_MLFLOW = "http://127.0.0.1:1"
API_KEY = "X-API-Key"


@dataclass(frozen=True)
class World:
    """A bank, an MLflow store with one trained champion, and a keys file (one key per
    role; the plaintext keys are kept here, the file only holds their hashes)."""

    home: Path
    bank_dir: Path
    tracking_uri: str
    keys_file: Path
    keys: dict[str, str]
    version: str

    def settings(self, tag: str, **overrides: Any) -> ServiceSettings:
        """Every setting the tests rely on, explicit (ServiceSettings also reads env)."""
        values: dict[str, Any] = {
            "model_uri": CHAMPION_URI,
            "tracking_uri": self.tracking_uri,
            "data_dir": self.bank_dir,
            "events_url": f"sqlite:///{self.home / f'{tag}-events.db'}",
            "api_keys_file": self.keys_file,
            "local_model_dir": self.home / f"{tag}-models",
            "spill_dir": self.home / f"{tag}-spill",
            "poll_seconds": 0,
            "max_batch": 1000,
            "eligibility_rules": True,
            "suitability_rules": True,
            "family_rules": True,
            "reasons_per_offer": 3,
            "decline_suppress_days": 0,  # the contact policy has its own tests
            "max_offers_per_week": 0,
            "experiment_refresh_seconds": 0,
            # Per-key limits off: tests send more than an officer would; the limits have
            # their own tests (tests/test_limits.py).
            "rate_limit_per_minute": 0,
            "rate_limit_concurrency": 0,
            "max_experiments": 1000,
        }
        values.update(overrides)
        return ServiceSettings(**values)


def make_bank(directory: Path) -> Path:
    write_bank(generate(3000, 5, seed=3), directory)
    return directory


def store_uri(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow.db'}"


def train_into(
    bank_dir: Path, tracking_uri: str, home: Path, config: HybridConfig | None = None
) -> TrainOutcome:
    """A real `train` into the store (with `config`, else the module's SMALL, read at call
    time: tests patch it); MLflow's pip-requirement inference (a subprocess of several
    seconds) is skipped."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)
        patch.setattr(mlflow.models, "infer_pip_requirements", lambda *a, **kw: ["mlflow"])
        return train(bank_dir, config=config or SMALL, tracking_uri=tracking_uri)


def promote_to_champion(tracking_uri: str, version: str) -> None:
    configure(tracking_uri)
    promote(MODEL_NAME, version, force=True)


def make_keys(path: Path) -> dict[str, str]:
    return {role: add_key(path, f"{role}-app", role) for role in ROLES}


def make_world(home: Path) -> World:
    bank_dir = make_bank(home / "bank")
    uri = store_uri(home)
    outcome = train_into(bank_dir, uri, home)
    keys_file = home / "api_keys.json"
    return World(home, bank_dir, uri, keys_file, make_keys(keys_file), outcome.version)


def latest_holdings(bank_dir: Path) -> dict[str, set[str]]:
    """Products each client holds at the latest snapshot, from the bank's own files."""
    holdings = pd.read_parquet(bank_dir / "holdings.parquet")
    dates = pd.to_datetime(holdings[C.SNAPSHOT_DATE])
    latest = holdings[dates == dates.max()]
    out: dict[str, set[str]] = {}
    for customer, product in zip(latest[C.CUSTOMER_ID], latest[C.PRODUCT_ID], strict=True):
        out.setdefault(str(customer), set()).add(str(product))
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """The app in a real uvicorn server (a background thread) on a free local port."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="uvicorn")

    def start(self, timeout: float = 120) -> None:
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server stopped during start-up; see the log above")
            if time.monotonic() > end:
                raise RuntimeError(f"the server did not start within {timeout} s")
            time.sleep(0.02)
        with self.client() as client:
            assert client.get("/healthz").status_code == 200

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def services(self) -> Any:
        return self.app.state.services

    def client(self, key: str | None = None, timeout: float = 60) -> httpx.Client:
        headers = {API_KEY: key} if key is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


@contextmanager
def live_server(app: FastAPI) -> Iterator[LiveServer]:
    server = LiveServer(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one sample in Prometheus text output (None when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        found = dict(
            part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part
        )
        found = {k: v.strip('"') for k, v in found.items()}
        if labels is None or all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None
