"""Experiments as the service sees them: which one runs in a channel, which arm a client
is in, and which model serves that arm.

Definitions live in the event store, so all workers read the same ones; each worker
re-reads them every `experiment_refresh_seconds` in a background thread (and at once
after a change it made itself). Assignment needs no lookup: it is a hash of (salt,
customer_id), see `recommender.experiment`. A variant may name another version of the
served model (an alias, a version, or a full `models:/` URI with the served model's
registered name: nothing else, since a reference becomes a registry lookup and a local
folder); each distinct model is loaded once, by its own `ModelHolder` (same polling,
verified local copy and atomic swap as the main one). An experiment is served by a worker
only once all its models are loaded there, so no request mixes a variant with a stand-in
model.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from recommender.errors import ConfigError
from recommender.experiment import (
    HOLDOUT,
    MODEL_FORMS,
    Experiment,
    Variant,
    parse_model_reference,
)
from serving.events import EventStore
from serving.model_holder import ModelHolder, ServedModel

log = logging.getLogger("serving.experiments")


@dataclass(frozen=True)
class Arm:
    """What one request gets: the experiment and variant (None outside experiments),
    the model, the objective override and the offer policy."""

    experiment: str | None
    variant: str | None
    served: ServedModel | None  # None for the holdout
    objective: str | None = None
    policy: str = "model"

    @property
    def holdout(self) -> bool:
        return self.variant == HOLDOUT


class ExperimentBook:
    def __init__(self, store: EventStore, main: ModelHolder, refresh_seconds: float,
                 poll_seconds: float) -> None:  # fmt: skip
        self.store = store
        self.main = main
        self.refresh_seconds = refresh_seconds
        self.poll_seconds = poll_seconds
        self.experiments: list[Experiment] = []
        self.holders: dict[str, ModelHolder] = {}
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- definitions ---------------------------------------------------------------
    def start(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # the store may be down at start-up: retried by the loop
            self.last_error = f"cannot read experiments: {exc}"
            log.error(self.last_error)
        if self.refresh_seconds > 0:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name="experiments")  # fmt: skip
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            try:
                self.refresh()
            except Exception as exc:  # the store may be down; keep the last definitions
                self.last_error = f"cannot read experiments: {exc}"
                log.error(self.last_error)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for holder in list(self.holders.values()):
                holder.stop()

    def refresh(self) -> None:
        """Re-read definitions; load the models of current and scheduled experiments and
        let go of the models no experiment needs any more."""
        found = self.store.experiments()
        now = datetime.now(UTC)
        errors = []
        needed: set[str] = set()
        for experiment in found:
            if experiment.active(now) or experiment.start > now:
                for variant in experiment.variants:
                    try:
                        holder = self._holder(variant)
                    except Exception as exc:
                        errors.append(f"experiment {experiment.name!r}: {exc}")
                        log.error(errors[-1])
                        continue
                    if holder is not None and holder is not self.main:
                        needed.add(holder.model_uri)
                        if holder.current is None:
                            why = f"variant {variant.name!r} not loaded: {holder.last_error}"
                            errors.append(f"experiment {experiment.name!r}: {why}")
        self.experiments = found  # one reference assignment
        with self._lock:
            for uri in [u for u in self.holders if u not in needed]:
                self.holders.pop(uri).stop()
        self.last_error = "; ".join(errors) or None

    def create(self, experiment: Experiment) -> None:
        """Check every variant's model loads, then store (ConfigError, or
        ExperimentConflict from the store)."""
        for variant in experiment.variants:
            holder = self._holder(variant)
            if holder is not None and holder.current is None:
                error = holder.last_error
                if holder is not self.main and not self._in_use(holder.model_uri):
                    with self._lock:
                        self.holders.pop(holder.model_uri, None)
                    holder.stop()
                raise ConfigError(
                    f"variant {variant.name!r}: model {variant.model!r} could not be loaded "
                    f"({error}); name an alias or version of the registered model that exists"
                )
        self.store.create_experiment(experiment)
        self.refresh()

    def _in_use(self, uri: str) -> bool:
        now = datetime.now(UTC)
        return any(
            self._resolved(v.model) == uri
            for e in self.experiments if e.active(now) or e.start > now
            for v in e.variants if v.policy == "model" and v.model
        )  # fmt: skip

    def _resolved(self, reference: str) -> str | None:
        try:
            return self.resolve(reference)
        except ConfigError:
            return None

    def stop_experiment(self, name: str) -> Experiment | None:
        stopped = self.store.stop_experiment(name, datetime.now(UTC))
        self.refresh()
        return stopped

    # ---- per request -----------------------------------------------------------------
    def running(self, channel: str, now: datetime | None = None) -> Experiment | None:
        now = now or datetime.now(UTC)
        for experiment in self.experiments:
            if experiment.channel == channel and experiment.active(now):
                return experiment
        return None

    def arm(self, channel: str, customer_id: str | None) -> Arm:
        """The arm of a known client in the channel's running experiment; outside any
        experiment (no experiment, a client without id, or models still loading in this
        worker) the main model."""
        experiment = self.running(channel) if customer_id is not None else None
        if experiment is None or customer_id is None:
            return Arm(None, None, self.main.current)
        name = experiment.assign(customer_id)
        if name == HOLDOUT:
            return Arm(experiment.name, HOLDOUT, None)
        variant = experiment.variant(name)
        assert variant is not None
        served = self._served(variant)
        if served is None:
            log.warning("experiment %s: model of %s not loaded here yet; main model served "
                        "outside the experiment", experiment.name, variant.name)  # fmt: skip
            return Arm(None, None, self.main.current)
        return Arm(experiment.name, variant.name, served, variant.objective, variant.policy)

    def _served(self, variant: Variant) -> ServedModel | None:
        if variant.policy != "model" or variant.model is None:
            return self.main.current  # popularity ranks; the main model gives probabilities
        try:
            uri = self.resolve(variant.model)
        except ConfigError:  # the service's model_uri names no registered model
            return None
        if uri == self.main.model_uri:
            return self.main.current
        holder = self.holders.get(uri)
        return holder.current if holder is not None else None

    # ---- models ----------------------------------------------------------------------
    def resolve(self, reference: str) -> str:
        """A variant's model reference as the URI of a version of the served model: an
        alias, a version, or a full models:/ URI with the served model's registered name
        (ConfigError naming the allowed forms for anything else)."""
        parsed = parse_model_reference(reference)
        name = self.main.name
        if parsed.name is not None and parsed.name != name:
            raise ConfigError(
                f"model {reference!r}: a variant serves a version of the served model, "
                f"registered name {name!r}; {MODEL_FORMS}"
            )
        if parsed.version is not None:
            return f"models:/{name}/{parsed.version}"
        return f"models:/{name}@{parsed.alias}"

    def _holder(self, variant: Variant) -> ModelHolder | None:
        """The holder serving the variant's model (loaded on first use; the main holder
        when the reference is the main model's)."""
        if variant.policy != "model" or variant.model is None:
            return None
        uri = self.resolve(variant.model)
        if uri == self.main.model_uri:
            return self.main
        with self._lock:
            holder = self.holders.get(uri)
            if holder is None:  # one holder per model, kept (and polling) even if the first
                # load failed: its polling loads the model once the registry has it. Its
                # local copy lives in a folder of its own, named after the checked URI.
                folder = self.main.local_dir / "variants" / re.sub(r"[^A-Za-z0-9_.-]", "_", uri)
                holder = ModelHolder(uri, self.main.tracking_uri, self.main.directory,
                                     self.main.rules, Path(folder))  # fmt: skip
                holder.start()
                holder.start_polling(self.poll_seconds)
                self.holders[uri] = holder
            return holder

    def status(self) -> dict[str, object]:
        now = datetime.now(UTC)
        return {
            "running": [e.name for e in self.experiments if e.active(now)],
            "variant_models": {uri: h.status()["model"] for uri, h in self.holders.items()},
            "last_error": self.last_error,
        }


def popularity(held: np.ndarray) -> np.ndarray:
    """The popularity policy's ranking key: the share of clients holding each product."""
    return np.asarray(held.mean(axis=0), dtype=np.float64)
