"""API keys: stored only as SHA-256 hashes, each with an id and a role.

The keys file is JSON: `{"keys": [{"id": "officer-app", "role": "officer",
"sha256": "<hex>"}]}`. `recommender keys add` creates a key, prints it once and stores
its hash. Presented keys are compared in constant time against every stored hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from recommender.errors import ConfigError

ROLES = ("officer", "analyst", "admin")


@dataclass(frozen=True)
class ApiKey:
    id: str
    role: str
    sha256: str


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @staticmethod
    def load(path: Path) -> KeyRing:
        if not path.exists():
            raise ConfigError(
                f"API keys file {path} not found; create one with "
                f"`recommender keys add --file {path} --id officer-app --role officer`"
            )
        try:
            entries = json.loads(path.read_text())["keys"]
            keys = [ApiKey(str(e["id"]), str(e["role"]), str(e["sha256"]).lower()) for e in entries]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f'{path}: expected {{"keys": [{{"id", "role", "sha256"}}, ...]}} ({exc})'
            ) from exc
        for key in keys:
            if key.role not in ROLES:
                raise ConfigError(
                    f"{path}: key {key.id!r} has role {key.role!r}; use {', '.join(ROLES)}"
                )
            if len(key.sha256) != 64:
                raise ConfigError(f"{path}: key {key.id!r} needs a 64-character SHA-256 hex digest")
        return KeyRing(keys)

    def identify(self, presented: str | None) -> ApiKey | None:
        """The key's record, comparing against every stored hash in constant time."""
        if not presented:
            return None
        candidate = digest(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(candidate, key.sha256):
                found = key
        return found


def add_key(path: Path, key_id: str, role: str) -> str:
    """Create a new random key, store its hash under `key_id`, return the key (shown once)."""
    if role not in ROLES:
        raise ConfigError(f"role {role!r}: use one of {', '.join(ROLES)}")
    entries = json.loads(path.read_text())["keys"] if path.exists() else []
    if any(e["id"] == key_id for e in entries):
        raise ConfigError(f"{path}: a key with id {key_id!r} exists; choose another id")
    key = secrets.token_urlsafe(32)
    entries.append({"id": key_id, "role": role, "sha256": digest(key)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": entries}, indent=2))
    tmp.replace(path)
    return key
