"""Per-key limits on the offer routes: a token bucket and a cap on requests in flight.

Why: one key could keep the service busy alone. A cold start costs ~10x a known client
(its attributes are parsed and encoded per request: a batch of 1,000 cold starts took
7.6 s against 0.67 s for 1,000 known ids), so requests are weighted: a known client costs
1 token, a cold start `rate_limit_cold_start_cost`, a batch the sum of its items. A key's
bucket holds up to `rate_limit_burst` tokens and refills at `rate_limit_per_minute`; a
request costing more than the burst (a full batch) is admitted when the bucket is full and
leaves it in debt, so the largest allowed batch is never refused for good but is paid for
by waiting afterwards. `rate_limit_concurrency` caps a key's requests in flight (a batch
holds a worker thread for seconds). Refusals are 429 with `Retry-After` and a message
naming the limit and its setting.

Where the counts live: in this worker's memory by default (N workers admit N times the
rate), or in Redis when `rate_limit_url` is set (`redis://host:6379/0`): one Lua script
per request, atomic across every worker, Redis's clock for all of them. If Redis cannot
be reached the worker falls back to its own memory for `REDIS_RETRY_SECONDS` and logs it
once: a limit store that is down must not take the offers down with it.

The limits run after the key check (an unknown caller cannot spend a key's tokens), so
the state is bounded by the number of keys in the keys file.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from recommender.errors import first_line

if TYPE_CHECKING:
    from serving.settings import ServiceSettings

log = logging.getLogger("serving.limits")
REDIS_RETRY_SECONDS = 5.0  # after a Redis error, this worker's own counts for this long
REDIS_TIMEOUT_SECONDS = 0.5
SLOT_TTL_MS = 300_000  # a request in flight is forgotten after this (a worker that died)
CONCURRENCY_RETRY_SECONDS = 1


@dataclass(frozen=True)
class Limits:
    per_minute: int  # 0: no rate limit
    burst: int
    concurrency: int  # 0: no cap
    cold_start_cost: int
    max_cold_starts: int  # per batch
    max_batch: int

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Limits:
        return cls(settings.rate_limit_per_minute, settings.rate_limit_burst,
                   settings.rate_limit_concurrency, settings.rate_limit_cold_start_cost,
                   settings.max_cold_starts_per_batch, settings.max_batch)  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    limit: str = ""  # "rate" or "concurrency" when refused
    wait: float = 0.0  # seconds until a retry can succeed


ADMITTED = Verdict(True)


class Store(Protocol):
    def admit(self, key: str, cost: int, limits: Limits, slot: str) -> Verdict: ...
    def leave(self, key: str, slot: str) -> None: ...


def refill(tokens: float, since: float, now: float, per_second: float, burst: int) -> float:
    """Tokens in a bucket `now`, having held `tokens` at `since` (never above the burst)."""
    return min(float(burst), tokens + max(0.0, now - since) * per_second)


class LocalStore:
    """Counts in this worker's memory (the default, and the stand-in while Redis is down)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, monotonic time)
        self._flight: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def admit(self, key: str, cost: int, limits: Limits, slot: str) -> Verdict:
        with self._lock:
            flight = self._flight.setdefault(key, set())
            if limits.concurrency and len(flight) >= limits.concurrency:
                return Verdict(False, "concurrency", CONCURRENCY_RETRY_SECONDS)
            if limits.per_minute:
                now, per_second = time.monotonic(), limits.per_minute / 60.0
                tokens, since = self._buckets.get(key, (float(limits.burst), now))
                tokens = refill(tokens, since, now, per_second, limits.burst)
                need = min(cost, limits.burst)
                if tokens < need:
                    return Verdict(False, "rate", (need - tokens) / per_second)
                self._buckets[key] = (tokens - cost, now)
            flight.add(slot)
            return ADMITTED

    def leave(self, key: str, slot: str) -> None:
        with self._lock:
            self._flight.get(key, set()).discard(slot)


# KEYS: bucket hash, in-flight sorted set (slot -> expiry); ARGV: tokens per ms, burst,
# cost, concurrency, slot, slot ttl ms. Redis's clock (TIME) serves every worker.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local concurrency, ttl = tonumber(ARGV[4]), tonumber(ARGV[6])
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= concurrency then return {'concurrency', '0'} end
end
if rate > 0 then
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
  local tokens = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  local need = math.min(cost, burst)
  if tokens < need then return {'rate', tostring((need - tokens) / rate)} end
  tokens = tokens - cost
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 1000)
end
if concurrency > 0 then
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return {'ok', '0'}
"""


class RedisStore:
    """Counts in Redis, shared by every worker (and every host) using the same prefix."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.prefix = prefix
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        timeout = REDIS_TIMEOUT_SECONDS
        self.client = redis.Redis.from_url(url, socket_timeout=timeout,
                                           socket_connect_timeout=timeout)  # fmt: skip
        self._admit = self.client.register_script(_ADMIT)

    def _keys(self, key: str) -> list[str]:
        return [f"{self.prefix}rate:{key}", f"{self.prefix}flight:{key}"]

    def admit(self, key: str, cost: int, limits: Limits, slot: str) -> Verdict:
        per_ms = limits.per_minute / 60_000.0
        args: list[str | int] = [repr(per_ms), limits.burst, cost, limits.concurrency, slot,
                                 SLOT_TTL_MS]  # fmt: skip
        kind, wait_ms = self._admit(keys=self._keys(key), args=args)
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind == "ok":
            return ADMITTED
        if kind == "concurrency":
            return Verdict(False, kind, CONCURRENCY_RETRY_SECONDS)
        return Verdict(False, kind, float(wait_ms) / 1000.0)

    def leave(self, key: str, slot: str) -> None:
        self.client.zrem(self._keys(key)[1], slot)


class Gate:
    """The limits of one app (one worker): which store, and the answer to a refusal."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.limits = Limits.from_settings(settings)
        self.local = LocalStore()
        url = settings.rate_limit_url
        self.redis = RedisStore(url, settings.rate_limit_prefix) if url else None
        self._redis_down_until = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.limits.per_minute or self.limits.concurrency)

    @asynccontextmanager
    async def admitted(self, key: str, cost: int) -> AsyncIterator[None]:
        """Hold one of the key's slots and spend `cost` tokens, or raise the 429."""
        slot = uuid.uuid4().hex
        store, verdict = await self._admit(key, cost, slot)
        if not verdict.admitted:
            raise self._refusal(key, cost, verdict)
        try:
            yield
        finally:
            await self._leave(store, key, slot)

    async def _admit(self, key: str, cost: int, slot: str) -> tuple[Store, Verdict]:
        shared = self.redis
        if shared is not None and time.monotonic() >= self._redis_down_until:
            try:  # a network round trip: in a thread, not on the event loop
                return shared, await run_in_threadpool(shared.admit, key, cost, self.limits, slot)
            except shared.errors as exc:
                self._redis_failed(exc)
        return self.local, self.local.admit(key, cost, self.limits, slot)

    async def _leave(self, store: Store, key: str, slot: str) -> None:
        if store is self.local:
            self.local.leave(key, slot)
            return
        try:
            await run_in_threadpool(store.leave, key, slot)
        except Exception as exc:  # the slot expires in Redis after SLOT_TTL_MS anyway
            self._redis_failed(exc)

    def _redis_failed(self, exc: BaseException) -> None:
        if time.monotonic() >= self._redis_down_until:
            log.warning("rate limits: Redis unavailable (%s); this worker counts on its own "
                        "for %.0f s", first_line(exc), REDIS_RETRY_SECONDS)  # fmt: skip
        self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS

    def _refusal(self, key: str, cost: int, verdict: Verdict) -> HTTPException:
        retry = max(1, math.ceil(verdict.wait))
        limits = self.limits
        if verdict.limit == "concurrency":
            detail = (
                f"concurrency limit: key {key!r} already has {limits.concurrency} requests "
                f"in flight (RECOMMENDER_RATE_LIMIT_CONCURRENCY={limits.concurrency}); wait "
                "for one to finish, then retry"
            )
        else:
            detail = (
                f"rate limit: key {key!r} may spend {limits.per_minute} tokens a minute, "
                f"{limits.burst} at once (RECOMMENDER_RATE_LIMIT_PER_MINUTE, "
                f"RECOMMENDER_RATE_LIMIT_BURST); a known client costs 1, a cold start "
                f"{limits.cold_start_cost}, and this request {cost}; retry in {retry} s"
            )
        return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail=detail,
                             headers={"Retry-After": str(retry)})  # fmt: skip


def gate_of(request: Request) -> Gate:
    """The app's gate, made on first use (the app factory knows nothing of it)."""
    state = request.app.state
    gate: Gate | None = getattr(state, "limits", None)
    if gate is None:
        gate = state.limits = Gate(request.app.state.services.settings)
    return gate


@dataclass(frozen=True)
class Cost:
    tokens: int
    items: int
    cold_starts: int
    batch: bool


def cost_of(payload: Any, limits: Limits) -> Cost:
    """What an offer request's JSON costs: one request, or a batch's `requests`. Read
    from the raw JSON because the limit is taken before the body is validated; a body of
    another shape costs 1 (validation refuses it next)."""
    items = payload.get("requests") if isinstance(payload, dict) else None
    batch = isinstance(items, list)
    if not isinstance(items, list):
        items = [payload]
    cold = sum(1 for item in items if isinstance(item, dict) and item.get("customer") is not None)
    tokens = max(1, len(items) - cold + cold * limits.cold_start_cost)
    return Cost(tokens, len(items), cold, batch)


async def _json_or_none(request: Request) -> Any:
    """The body as JSON (already read and parsed by FastAPI: cached), or None when it is
    not JSON or is nested past the parser's depth (validation answers it next)."""
    try:
        return await request.json()
    except (ValueError, RecursionError):
        return None


@asynccontextmanager
async def offer_limits(request: Request, key_id: str) -> AsyncIterator[None]:
    """The limits of `/v1/recommendations` and its batch: a batch with too many cold
    starts is a 422 before any token is spent (so is one over `max_batch`, by the route:
    it is not charged here); then the key's tokens and slot."""
    gate = gate_of(request)
    cost = cost_of(await _json_or_none(request), gate.limits)
    cold = cost.cold_starts
    if cost.batch and cold > gate.limits.max_cold_starts:
        cap = gate.limits.max_cold_starts
        raise RequestValidationError([{
            "loc": ("body", "requests"), "type": "too_many_cold_starts", "input": None,
            "msg": f"at most {cap} cold starts (items with 'customer') per batch (got "
                   f"{cold}): a cold start costs ~10x a known client; split the batch or "
                   "raise RECOMMENDER_MAX_COLD_STARTS_PER_BATCH",
        }])  # fmt: skip
    if not gate.enabled or (cost.batch and cost.items > gate.limits.max_batch):
        yield
        return
    async with gate.admitted(key_id, cost.tokens):
        yield


@asynccontextmanager
async def key_limits(request: Request, key_id: str, *, items_field: str | None = None
                     ) -> AsyncIterator[None]:  # fmt: skip
    """The key's rate and concurrency limits on its other routes (the client view, the
    feedback routes): a request costs 1 token, a batch the number of its `items_field`
    entries, so reading the whole client base or flooding feedback is paced like offers."""
    gate = gate_of(request)
    if not gate.enabled:
        yield
        return
    tokens = 1
    if items_field is not None:
        payload = await _json_or_none(request)
        items = payload.get(items_field) if isinstance(payload, dict) else None
        if isinstance(items, list):
            tokens = max(1, len(items))
    async with gate.admitted(key_id, tokens):
        yield
