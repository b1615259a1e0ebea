"""An A/B experiment as data, and the deterministic, sticky assignment of clients to arms.

An experiment names its variants (each a traffic weight, a model reference and/or a
ranking objective or offer policy) and an optional holdout share that gets no offer at
all (the global control). A client's arm is a pure function of (salt, customer_id):

    u = first 8 bytes of SHA-256(salt ":" customer_id) / 2**64        in [0, 1)
    u < holdout                      -> the holdout
    otherwise (u - holdout) / (1 - holdout) picks a variant by cumulative weight

so every worker, every restart and every replay agrees without a lookup, and two
experiments with different salts split clients independently.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from recommender.errors import ConfigError

HOLDOUT = "holdout"
POLICIES = ("model", "popularity")
OBJECTIVES = ("propensity", "expected_value")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # whole string: fullmatch
# Weights are relative: 1 and 3 split 25/75. Bounded so that sums stay exact and finite
# (two weights of 1e308 overflowed to inf and sent every client to the last variant).
MAX_WEIGHT = 1000.0
# Each variant may keep a model loaded in every worker, and each splits the traffic thinner.
MAX_VARIANTS = 10
_SCALE = float(2**64)
# A variant's model reference becomes a registry lookup and the folder of the model's local
# copy, so only these forms are accepted (matched whole: no path, no newline gets through).
MODEL_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
MODEL_VERSION = re.compile(r"[0-9]{1,10}")
REGISTERED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MODEL_FORMS = (
    "use an alias of the served model (1-64 letters, digits, '_' or '-', starting with a "
    "letter, e.g. challenger), a version number (e.g. 7), or "
    "models:/<registered name>@<alias> or models:/<registered name>/<version>"
)


@dataclass(frozen=True)
class ModelReference:
    """A parsed model reference: `name` is None for a bare alias or version (the served
    model's own); exactly one of `alias` and `version` is set."""

    name: str | None
    alias: str | None = None
    version: str | None = None


def parse_model_reference(reference: str) -> ModelReference:
    """`challenger`, `7`, `models:/name@alias` or `models:/name/version`, checked whole
    (ConfigError naming the allowed forms otherwise)."""
    name: str | None = None
    rest = reference
    if reference.startswith("models:/"):
        name, separator, rest = _split_uri(reference.removeprefix("models:/"))
        if not (separator and REGISTERED_NAME.fullmatch(name)):
            raise ConfigError(f"model {reference!r}: {MODEL_FORMS}")
        if separator == "@" and MODEL_ALIAS.fullmatch(rest):
            return ModelReference(name, alias=rest)
        if separator == "/" and MODEL_VERSION.fullmatch(rest):
            return ModelReference(name, version=str(int(rest)))
        raise ConfigError(f"model {reference!r}: {MODEL_FORMS}")
    if MODEL_VERSION.fullmatch(rest):
        return ModelReference(None, version=str(int(rest)))
    if MODEL_ALIAS.fullmatch(rest):
        return ModelReference(None, alias=rest)
    raise ConfigError(f"model {reference!r}: {MODEL_FORMS}")


def _split_uri(rest: str) -> tuple[str, str, str]:
    """(name, "@" or "/" or "", alias or version) at the first "@" or "/"."""
    cut = min((i for i in (rest.find("@"), rest.find("/")) if i >= 0), default=-1)
    if cut < 0:
        return rest, "", ""
    return rest[:cut], rest[cut], rest[cut + 1 :]


@dataclass(frozen=True)
class Variant:
    """One arm. `model`: a registry alias (`champion`), a version (`7`) or a full
    `models:/name@alias` URI (`parse_model_reference`); None serves the service's own
    model. `objective`: None keeps the request's. `policy`: `model` ranks by the model,
    `popularity` by how many clients hold each product (a baseline offer policy)."""

    name: str
    weight: float = 1.0
    model: str | None = None
    objective: str | None = None
    policy: str = "model"

    def __post_init__(self) -> None:
        where = f"variant {self.name!r}"
        if not _NAME.fullmatch(self.name or ""):
            raise ConfigError(
                f"{where}: a name is 1-64 letters, digits, '_', '-' or '.', starting with "
                "a letter or digit"
            )
        if self.name == HOLDOUT:
            raise ConfigError(f"{where}: '{HOLDOUT}' is reserved for the holdout share")
        if not (np.isfinite(self.weight) and 0 < self.weight <= MAX_WEIGHT):
            raise ConfigError(
                f"{where}: weight must be a positive number, got {self.weight}; a relative "
                f"traffic weight in (0, {MAX_WEIGHT:g}], e.g. 1 and 3 for a 25/75 split"
            )
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise ConfigError(
                f"{where}: objective {self.objective!r}: use {' or '.join(OBJECTIVES)}"
            )
        if self.policy not in POLICIES:
            raise ConfigError(f"{where}: policy {self.policy!r}: use {' or '.join(POLICIES)}")
        if self.policy == "popularity" and self.model is not None:
            raise ConfigError(f"{where}: the popularity policy uses no model; drop 'model'")
        if self.model is not None:
            if not isinstance(self.model, str):
                raise ConfigError(f"{where}: model {self.model!r} is not text; {MODEL_FORMS}")
            try:
                parse_model_reference(self.model)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    variants: tuple[Variant, ...]
    holdout: float = 0.0
    channel: str = "branch"
    control: str | None = None  # the variant uplift is measured against (default: first)
    start: datetime = field(default_factory=lambda: datetime.now(UTC))
    end: datetime | None = None
    stopped_at: datetime | None = None
    description: str = ""

    def __post_init__(self) -> None:
        where = f"experiment {self.name!r}"
        if not _NAME.fullmatch(self.name or ""):
            raise ConfigError(
                f"{where}: a name is 1-64 letters, digits, '_', '-' or '.', starting with "
                "a letter or digit"
            )
        if not self.salt:
            raise ConfigError(f"{where}: salt must not be empty (any string unique to it)")
        if not self.variants:
            raise ConfigError(f"{where}: needs at least one variant")
        if len(self.variants) > MAX_VARIANTS:
            raise ConfigError(
                f"{where}: at most {MAX_VARIANTS} variants, got {len(self.variants)}; "
                "run fewer arms at once"
            )
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: variant names must be unique, got {names}")
        if not 0.0 <= self.holdout < 1.0:
            raise ConfigError(f"{where}: holdout is a share in [0, 1), got {self.holdout}")
        if self.control is None:
            object.__setattr__(self, "control", names[0])
        if self.control not in names:
            raise ConfigError(f"{where}: control {self.control!r} is not a variant ({names})")
        naive = [t for t in (self.start, self.end, self.stopped_at)
                 if t is not None and t.tzinfo is None]  # fmt: skip
        if naive:
            raise ConfigError(
                f"{where}: start, end and stopped_at need a time zone, e.g. 2026-12-01T00:00Z"
            )
        if self.end is not None and self.end <= self.start:
            raise ConfigError(f"{where}: end ({self.end}) must be after start ({self.start})")

    @property
    def control_name(self) -> str:
        return str(self.control)

    @property
    def arms(self) -> list[str]:
        """Variant names, then the holdout if there is one."""
        return [v.name for v in self.variants] + ([HOLDOUT] if self.holdout > 0 else [])

    def shares(self) -> dict[str, float]:
        """Expected share of clients per arm (the weights, normalised, and the holdout)."""
        total = sum(v.weight for v in self.variants)
        out = {v.name: (1.0 - self.holdout) * v.weight / total for v in self.variants}
        if self.holdout > 0:
            out[HOLDOUT] = self.holdout
        return out

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)

    def active(self, now: datetime) -> bool:
        if self.stopped_at is not None and self.stopped_at <= now:
            return False
        return self.start <= now and (self.end is None or now < self.end)

    def overlaps(self, other: Experiment) -> bool:
        """Same channel and intersecting [start, end or stop) windows."""
        if self.channel != other.channel:
            return False
        inf = datetime.max.replace(tzinfo=UTC)
        a_end, b_end = _finish(self) or inf, _finish(other) or inf
        return self.start < b_end and other.start < a_end

    def assign(self, customer_id: str) -> str:
        """The arm of one client: a variant name or `holdout`."""
        return str(self.assign_many([customer_id])[0])

    def assign_many(self, customer_ids: Iterable[str]) -> np.ndarray:
        u = np.array([_unit(self.salt, str(c)) for c in customer_ids], dtype=np.float64)
        arms = np.array([*self.arms, ""], dtype=object)
        weights = np.array([v.weight for v in self.variants], dtype=np.float64)
        edges = np.cumsum(weights / weights.sum())
        edges[-1] = 1.0  # no client falls past the last edge by rounding
        rescaled = (u - self.holdout) / (1.0 - self.holdout)
        picks = np.minimum(np.searchsorted(edges, rescaled, side="right"), len(edges) - 1)
        out = arms[picks]
        if self.holdout > 0:
            out[u < self.holdout] = HOLDOUT
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "salt": self.salt,
            "channel": self.channel,
            "control": self.control_name,
            "holdout": self.holdout,
            "variants": [v.__dict__ for v in self.variants],
            "start": self.start.isoformat(),
            "end": self.end.isoformat() if self.end else None,
            "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Experiment:
        known = {"name", "salt", "channel", "control", "holdout", "variants", "start", "end",
                 "stopped_at", "description"}  # fmt: skip
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"experiment: unknown field(s) {unknown}; known: {sorted(known)}")
        missing = [f for f in ("name", "variants") if f not in raw]
        if missing:
            raise ConfigError(f"experiment: {' and '.join(missing)} missing")
        try:
            variants = tuple(Variant(**v) for v in raw["variants"])
        except TypeError as exc:
            raise ConfigError(f"experiment variants: {exc}") from exc
        try:
            holdout = float(raw.get("holdout") or 0.0)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"experiment: holdout {raw.get('holdout')!r} is not a share") from exc
        return cls(
            name=str(raw["name"]),
            salt=str(raw.get("salt") or raw["name"]),
            variants=variants,
            holdout=holdout,
            channel=str(raw.get("channel") or "branch"),
            control=raw.get("control"),
            start=_time(raw.get("start")) or datetime.now(UTC),
            end=_time(raw.get("end")),
            stopped_at=_time(raw.get("stopped_at")),
            description=str(raw.get("description") or ""),
        )


def _finish(experiment: Experiment) -> datetime | None:
    ends = [t for t in (experiment.end, experiment.stopped_at) if t is not None]
    return min(ends) if ends else None


def _unit(salt: str, customer_id: str) -> float:
    digest = hashlib.sha256(f"{salt}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def _time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError as exc:
            raise ConfigError(
                f"{value!r} is not an ISO 8601 time such as 2026-12-01T00:00Z"
            ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
