"""API keys: stored only as SHA-256 hashes, each with an id, a role and optional limits.

The keys file is JSON: `{"keys": [{"id": "officer-app", "role": "officer",
"sha256": "<hex>"}]}`; an entry may also say which channels the key may ask for
(`"channels": ["branch", "phone"]`; absent: every channel) and whether it may send
cold-start requests (`"cold_start": false`; absent: it may). `recommender keys add`
creates a key, prints it once and stores its hash. Presented keys are compared in
constant time against every stored hash.

The file decides who may do what, so it is checked whole at start-up: a mistake in it
(a duplicate id or hash, a hash that is not hex, a misspelt field that would silently
lift a limit) stops the service with one line naming the file, the key and the fix,
instead of surfacing later as 500s or as the wrong key winning.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recommender.errors import ConfigError, first_line

log = logging.getLogger("serving.keys")

ROLES = ("officer", "analyst", "admin")
FIELDS = ("id", "role", "sha256", "channels", "cold_start")
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}$")
CHANNEL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # as the request's `channel` field
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ApiKey:
    id: str
    role: str
    sha256: str
    channels: frozenset[str] | None = None  # None: every channel
    cold_start: bool = True  # may send `customer` (a client the bank has not snapshotted)

    def may_use_channel(self, channel: str) -> bool:
        return self.channels is None or channel in self.channels


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @staticmethod
    def load(path: Path) -> KeyRing:
        """The keys of `path`, every entry checked (one-line `ConfigError`s); a file
        without keys is allowed (every protected route answers 401) but logged."""
        keys = read_keys(path)
        if not keys:
            log.warning("API keys file %s holds no keys: every request that needs a key "
                        "will get 401; add one with `recommender keys add --file %s`",
                        path, path)  # fmt: skip
        mode = path.stat().st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            log.warning("API keys file %s can be written by other users (mode %o): whoever "
                        "can write it can add an admin key; run `chmod 600 %s`",
                        path, stat.S_IMODE(mode), path)  # fmt: skip
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


def read_keys(path: Path) -> list[ApiKey]:
    """Every key of the keys file at `path`, validated as a whole."""
    add = f"`recommender keys add --file {path} --id officer-app --role officer`"
    if not path.exists():
        raise ConfigError(f"API keys file {path} not found; create one with {add}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"API keys file {path} cannot be read ({first_line(exc)}); make it a UTF-8 file "
            "readable by the service's user (and by nobody else: chmod 600)"
        ) from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"API keys file {path} is not valid JSON ({first_line(exc)}); fix it or create "
            f"it again with {add}"
        ) from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(
            f'API keys file {path}: expected {{"keys": [{{"id", "role", "sha256"}}, ...]}}; '
            f"create it with {add}"
        )
    keys = [_entry(path, i, entry) for i, entry in enumerate(entries)]
    _no_duplicates(path, keys)
    return keys


def _entry(path: Path, index: int, entry: Any) -> ApiKey:
    where = f"API keys file {path}, key #{index + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f'{where}: expected an object {{"id", "role", "sha256"}}')
    key_id = entry.get("id")
    if not isinstance(key_id, str) or not KEY_ID.match(key_id):
        raise ConfigError(
            f"{where}: id {key_id!r} must be 1 to 64 letters, digits or _ . @ : - "
            "(starting with a letter or digit)"
        )
    where = f"API keys file {path}, key {key_id!r}"
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {', '.join(map(repr, unknown))}; the fields are "
            f"{', '.join(FIELDS)} (a misspelt limit would not apply)"
        )
    role = entry.get("role")
    if role not in ROLES:
        raise ConfigError(f"{where}: role {role!r}; use one of {', '.join(ROLES)}")
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not SHA256_HEX.match(sha.lower()):
        raise ConfigError(
            f"{where}: sha256 must be the 64-character hex SHA-256 digest of the key; "
            "create keys with `recommender keys add` rather than by hand"
        )
    channels = entry.get("channels")
    if channels is not None:
        if not isinstance(channels, list) or not channels:
            raise ConfigError(
                f'{where}: channels must be a non-empty list such as ["branch", "phone"] '
                "(leave the field out to allow every channel)"
            )
        bad = [c for c in channels if not isinstance(c, str) or not CHANNEL.match(c)]
        if bad:
            raise ConfigError(
                f"{where}: channel {bad[0]!r} must be 1 to 64 letters, digits or _ . -"
            )
    cold_start = entry.get("cold_start", True)
    if not isinstance(cold_start, bool):
        raise ConfigError(f"{where}: cold_start must be true or false, not {cold_start!r}")
    allowed = None if channels is None else frozenset(channels)
    return ApiKey(key_id, str(role), sha.lower(), allowed, cold_start)


def _no_duplicates(path: Path, keys: list[ApiKey]) -> None:
    ids: set[str] = set()
    hashes: dict[str, str] = {}
    for key in keys:
        if key.id in ids:
            raise ConfigError(
                f"API keys file {path}: the id {key.id!r} is used twice; give each key its "
                "own id (audit rows name the key by it)"
            )
        ids.add(key.id)
        if key.sha256 in hashes:
            raise ConfigError(
                f"API keys file {path}: keys {hashes[key.sha256]!r} and {key.id!r} have the "
                "same hash (one key, two roles); remove one of them"
            )
        hashes[key.sha256] = key.id


def add_key(
    path: Path,
    key_id: str,
    role: str,
    *,
    channels: list[str] | None = None,
    cold_start: bool = True,
) -> str:
    """Create a new random key, store its hash under `key_id`, return the key (shown once).
    The file is replaced atomically and readable by its owner only (0600)."""
    if role not in ROLES:
        raise ConfigError(f"role {role!r}: use one of {', '.join(ROLES)}")
    if not KEY_ID.match(key_id):
        raise ConfigError(
            f"--id {key_id!r}: use 1 to 64 letters, digits or _ . @ : - (starting with a "
            "letter or digit)"
        )
    for channel in channels or []:
        if not CHANNEL.match(channel):
            raise ConfigError(f"--channel {channel!r}: use 1 to 64 letters, digits or _ . -")
    existing = read_keys(path) if path.exists() else []
    if any(k.id == key_id for k in existing):
        raise ConfigError(f"{path}: a key with id {key_id!r} exists; choose another id")
    key = secrets.token_urlsafe(32)
    entry: dict[str, Any] = {"id": key_id, "role": role, "sha256": digest(key)}
    if channels:
        entry["channels"] = sorted(set(channels))
    if not cold_start:
        entry["cold_start"] = False
    entries = [_stored(k) for k in existing] + [entry]
    _write_private(path, json.dumps({"keys": entries}, indent=2) + "\n")
    return key


def _stored(key: ApiKey) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": key.id, "role": key.role, "sha256": key.sha256}
    if key.channels is not None:
        entry["channels"] = sorted(key.channels)
    if not key.cold_start:
        entry["cold_start"] = False
    return entry


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (a temporary file in the same directory, then a
    rename), mode 0600 from the start: never a moment when others could read it."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:  # mkstemp: mode 0600
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
