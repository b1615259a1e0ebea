"""The HTTP/1.1 edge: what a client without a key can make the server hold, bounded.

uvicorn's httptools protocol keeps a request's head (request line and headers) in memory
until it is complete, has no limit on its size or on the number of header fields, and
no deadline for it; its `limit_concurrency` counts open connections, so sockets that
never finish their headers use up the request slots and even `/healthz` answers 503.
`EdgeProtocol` is that protocol with these limits, checked in its parser callbacks (the
request path keeps the speed of httptools, see the README's serving figures):

- the head: at most `max_header_bytes` and `max_headers` fields, else 431 and the
  connection closed, as soon as the limit is passed (a 200 MB header costs ~one read);
- time: the head within `header_timeout` seconds (from the connection, or from the first
  byte of a later request on a kept-alive one) and the body within `body_timeout`
  seconds of the head, else 408 and closed: silent and trickling sockets do not stay;
- requests in flight: at most `max_requests` per worker, else 503; `/healthz` and
  `/readyz` are exempt (within a small headroom), so the orchestrator still sees a live,
  ready service while its slots are busy; idle connections take no slot;
- connections: at most `max_connections` open per worker, beyond which new ones are
  closed at once.

Per-client caps (connections, request rate) belong in the reverse proxy in front.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from asyncio.events import TimerHandle
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from serving.security import SECURITY_HEADERS

HEALTH_PATHS = frozenset({b"/healthz", b"/readyz"})
HEALTH_HEADROOM = 16  # health checks admitted beyond max_requests, so a flood of them is bounded
STARTUP_FAILURE = 3  # uvicorn's exit code when the app did not start

log = logging.getLogger("serving.transport")


@dataclass(frozen=True)
class EdgeLimits:
    """What one worker admits; the `recommender serve` options of the same names."""

    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_requests: int = 256
    max_connections: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_headers", "max_requests", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("header_timeout", "body_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be above 0 seconds, got {getattr(self, name)}")


class EdgeConfig(uvicorn.Config):
    """uvicorn's Config serving with `EdgeProtocol` under `limits` (a module-level class,
    so it pickles into the worker processes of `--workers N`)."""

    def __init__(self, app: Any, *, limits: EdgeLimits | None = None, **kwargs: Any) -> None:
        self.edge = limits or EdgeLimits()
        kwargs.update(http=EdgeProtocol, ws="none", limit_concurrency=None,
                      h11_max_incomplete_event_size=self.edge.max_header_bytes)  # fmt: skip
        super().__init__(app, **kwargs)


class HeadTooLarge(Exception):
    """Raised in a parser callback; httptools re-raises it as the error's context."""


class _Throttled:
    """One log line per kind of refusal per interval, with the count since the last: a
    flood of bad connections must not become a flood of log lines."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.last: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def warn(self, kind: str, message: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = time.monotonic()
        if now - self.last.get(kind, -self.interval) >= self.interval:
            log.warning("%s (%d since the last such line)", message, self.counts.pop(kind))
            self.last[kind] = now


_refusals = _Throttled()


async def too_busy(scope: Any, receive: Any, send: Any) -> None:
    """The 503 for a request beyond the worker's requests in flight (JSON, like the API)."""
    body = b'{"detail":"too many requests in flight; retry shortly"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
               (b"retry-after", b"1"), *_SECURITY]  # fmt: skip
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


_SECURITY = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]


class EdgeProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with bounded heads, head and body deadlines, requests in flight
    counted apart from connections, and health checks exempt from that count."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: EdgeLimits = getattr(config, "edge", None) or EdgeLimits()
        self.admitted_app = self.app
        self.in_head = True  # between the end of a request (or the connection) and its headers
        self.in_body = False  # between a request's headers and the end of its body
        self.head_started_here = False  # the current head began inside the current read
        self.head_bytes = 0  # bytes read for the current head, counted per read
        self.head_exact = 0  # header bytes parsed so far (names, values, separators)
        self.head_timer: TimerHandle | None = None
        self.body_timer: TimerHandle | None = None

    # -- connection -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            _refusals.warn("connections", f"over {self.limits.max_connections} open connections "
                           "(--limit-connections): new ones are closed")  # fmt: skip
            self.refuse(503, "too many open connections; retry shortly")
            return
        self.head_timer = self.loop.call_later(self.limits.header_timeout, self.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_timers()
        super().connection_lost(exc)

    def cancel_timers(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self.head_started_here = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadTooLarge):  # raised in a callback below
                _refusals.warn("head", f"request head refused (431): {exc.__context__}")
                self.refuse(431, str(exc.__context__))
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # the API has no WebSocket route
        if self.in_head:
            # Every byte of this read belongs to the unfinished head, except when the head
            # began inside it (after the end of the previous request): that read is not
            # counted, so a head can exceed the limit by at most one read before refusal.
            if not self.head_started_here:
                self.head_bytes += len(data)
                if self.head_bytes > self.limits.max_header_bytes:
                    _refusals.warn("head", "request head refused (431): over "
                                   f"{self.limits.max_header_bytes:,} bytes")  # fmt: skip
                    self.refuse(431, self.head_limit_message())
                    return
            if self.head_timer is None and not self.transport.is_closing():
                self.head_timer = self.loop.call_later(self.limits.header_timeout,
                                                       self.head_timeout)  # fmt: skip
        elif self.in_body and self.body_timer is None:
            self.body_timer = self.loop.call_later(self.limits.body_timeout, self.body_timeout)

    # -- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_exact = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_header_bytes:
            raise HeadTooLarge(self.head_limit_message())

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self.head_exact += len(name) + len(value) + 4
        if len(self.url) + self.head_exact > self.limits.max_header_bytes:
            raise HeadTooLarge(self.head_limit_message())
        if len(self.headers) > self.limits.max_headers:
            raise HeadTooLarge(f"more than {self.limits.max_headers} header fields; send fewer")

    def on_headers_complete(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        self.in_head = False
        self.in_body = True
        self.app = self.admitted_app if self.has_slot() else too_busy
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.in_body = False
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        self.in_head = True
        self.head_started_here = True
        self.head_bytes = 0
        super().on_message_complete()

    # -- limits ---------------------------------------------------------------------------

    def has_slot(self) -> bool:
        """Requests in flight in this worker (not connections: an idle socket takes no
        slot) under the limit; health checks within a headroom above it."""
        running = len(self.tasks)
        if running < self.limits.max_requests:
            return True
        if self.url.split(b"?", 1)[0] in HEALTH_PATHS:
            return running < self.limits.max_requests + HEALTH_HEADROOM
        _refusals.warn("busy", f"over {self.limits.max_requests} requests in flight "
                       "(--limit-concurrency): 503")  # fmt: skip
        return False

    def head_limit_message(self) -> str:
        return (f"request line and headers over {self.limits.max_header_bytes:,} bytes; "
                "send smaller headers")  # fmt: skip

    def head_timeout(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or not self.in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is still being made (the next request was pipelined behind it):
            # the next head's deadline counts from when the connection is free again.
            self.head_timer = self.loop.call_later(self.limits.header_timeout,
                                                   self.head_timeout)  # fmt: skip
            return
        _refusals.warn("slow-head", "request head not complete within "
                       f"{self.limits.header_timeout:g} s: connection closed (408)")  # fmt: skip
        self.refuse(408, f"request headers not received within {self.limits.header_timeout:g} "
                    "s; send the whole head at once")  # fmt: skip

    def body_timeout(self) -> None:
        self.body_timer = None
        if self.transport.is_closing() or not self.in_body:
            return
        _refusals.warn("slow-body", "request body not complete within "
                       f"{self.limits.body_timeout:g} s: connection closed (408)")  # fmt: skip
        cycle = self.cycle
        if cycle is None or cycle.response_started:
            self.transport.close()  # answered already: only the unread rest is cut off
            return
        cycle.disconnected = True  # the app sees a disconnect, and its late answer is dropped
        cycle.message_event.set()
        self.refuse(408, f"request body not received within {self.limits.body_timeout:g} s")

    def refuse(self, status: int, detail: str) -> None:
        """Answer `status` with a JSON detail (and the security headers) and close."""
        self.cancel_timers()
        body = json.dumps({"detail": detail}).encode()
        head = [STATUS_LINE[status], b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body), b"connection: close\r\n"]  # fmt: skip
        head += [name + b": " + value + b"\r\n" for name, value in _SECURITY]
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()


def run(app: str, *, host: str, port: int, workers: int, limits: EdgeLimits,
        timeout_keep_alive: int = 5) -> None:  # fmt: skip
    """`uvicorn.run` with `EdgeConfig` (uvicorn.run builds its own Config)."""
    from uvicorn.supervisors import Multiprocess

    config = EdgeConfig(app, limits=limits, factory=True, host=host, port=port, workers=workers,
                        log_level="info", access_log=False, timeout_keep_alive=timeout_keep_alive,
                        timeout_graceful_shutdown=30)  # fmt: skip
    server = uvicorn.Server(config)
    try:
        if config.workers > 1:
            sock = config.bind_socket()
            Multiprocess(config, sockets=[sock]).run()
        else:
            server.run()
    except KeyboardInterrupt:  # pragma: no cover
        pass
    if config.uds and os.path.exists(config.uds):  # pragma: no cover
        os.remove(config.uds)
    if not server.started and config.workers == 1:
        sys.exit(STARTUP_FAILURE)
