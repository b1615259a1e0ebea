"""The HTTP edge under hostile clients without a key, against the real `recommender serve`
in a subprocess, over raw sockets: huge and numerous headers (431, memory flat), silent
and trickling sockets (closed after the head deadline, health still answering), busy
request slots (health exempt), the key checked before the body (401, not 422, and no
upload swallowed), and /docs from pinned same-origin files under a CSP that admits them.

The server runs with small limits (4 requests in flight, a 1 s head deadline, a 2 s body
deadline) so that each attack shows in about a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from serving.security import SECURITY_HEADERS
from tests.serving_fixtures import API_KEY, World, free_port, make_world

REPO = Path(__file__).resolve().parents[1]
SLOTS = 4  # --limit-concurrency
HEAD_TIMEOUT = 1.0  # --header-timeout
BODY_TIMEOUT = 2.0  # --body-timeout
CONNECTIONS = 48  # --limit-connections
MAX_BODY = 16 * 1024 * 1024  # RECOMMENDER_MAX_BODY_BYTES: a 10 MB body is under it
SERVE_OPTIONS = ["--limit-concurrency", str(SLOTS), "--header-timeout", str(HEAD_TIMEOUT),
                 "--body-timeout", str(BODY_TIMEOUT),
                 "--limit-connections", str(CONNECTIONS)]  # fmt: skip
DEFAULT_CSP = SECURITY_HEADERS["Content-Security-Policy"]


@dataclass(frozen=True)
class Served:
    url: str
    port: int
    pid: int
    world: World
    log: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("transport"))


def _env(world: World) -> dict[str, str]:
    """The service's settings as RECOMMENDER_* variables; PYTHONPATH makes the subprocess
    run the code next to this test file (also in a worktree of an older commit)."""
    settings = world.settings("transport", max_body_bytes=MAX_BODY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECOMMENDER_")}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if value is not None:
            text = value if isinstance(value, str | Path) else json.dumps(value, default=str)
            env[f"RECOMMENDER_{name.upper()}"] = str(text)
    env["PYTHONPATH"] = str(REPO)
    env["NO_COLOR"] = "1"
    return env


@pytest.fixture(scope="module")
def served(world: World) -> Iterator[Served]:
    port = free_port()
    log = world.home / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "recommender", "serve", "--port", str(port), *SERVE_OPTIONS],
            cwd=world.home, env=_env(world), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"serve stopped:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"serve not ready:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield Served(url, port, process.pid, world, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- raw sockets ------------------------------------------------------------------------------


def connect(served: Served, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=timeout)
    return sock


def read_answer(sock: socket.socket, timeout: float) -> tuple[int | None, bytes]:
    """(status, raw bytes) of what the server sends until it closes or `timeout` passes;
    status None when nothing came (a reset counts as nothing). Raises TimeoutError when
    the server neither answered nor closed."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                if length and len(body) >= int(length.group(1)):
                    break
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        if not data:
            raise
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(match.group(1)) if match else None), data


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def send_huge_header(served: Served, total: int, result: dict[str, object]) -> None:
    """Stream one header value of `total` bytes (1 MiB at a time, never built whole), then
    end the head if the server is still listening; record what happened."""
    chunk = b"a" * (1 << 20)
    sent = 0
    sock = connect(served, timeout=60)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Padding: ")
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
        sock.sendall(b"\r\n\r\n")
    except (ConnectionResetError, BrokenPipeError):
        result.update(sent=sent, cut=True)
        result["status"] = read_answer(sock, 5)[0] if sent else None
        sock.close()
        return
    result.update(sent=sent, cut=False, status=read_answer(sock, 60)[0])
    sock.close()


# -- finding 1: request heads are bounded ------------------------------------------------------


def test_four_200_mb_headers_at_once_are_cut_off_early_and_memory_stays_flat(
    served: Served,
) -> None:
    """Four connections each stream a 200 MB header with no key. Each is refused (431 or
    a reset) after a few MB at most, and the server's peak memory hardly moves (it rose
    by ~200 MB per connection before the fix, and the request was answered 200)."""
    Path(f"/proc/{served.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM)
    before = memory_kb(served.pid, "VmRSS")
    results: list[dict[str, object]] = [{} for _ in range(4)]
    threads = [threading.Thread(target=send_huge_header, args=(served, 200 << 20, r))
               for r in results]  # fmt: skip
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    seconds = time.monotonic() - started
    peak = memory_kb(served.pid, "VmHWM")
    assert peak - before < 40 * 1024, f"peak RSS rose {(peak - before) / 1024:.0f} MB: {results}"
    for result in results:
        assert result.get("status") in (431, None), result
        assert result.get("cut") or result.get("status") == 431, result
        assert int(result["sent"]) <= 64 << 20, result  # type: ignore[call-overload]
    assert seconds < 30
    assert httpx.get(f"{served.url}/healthz").status_code == 200


def test_a_head_over_the_byte_or_field_limit_gets_431_and_normal_heads_pass(
    served: Served,
) -> None:
    too_many = "".join(f"X-Field-{i}: {i}\r\n" for i in range(101))
    too_big = "X-Padding: " + "b" * 40_000 + "\r\n"  # one read, over 32 KiB
    fine = "Cookie: " + "c" * 20_000 + "\r\n" + "".join(f"X-F{i}: {i}\r\n" for i in range(90))
    answers = {}
    for name, extra in [("too_many", too_many), ("too_big", too_big), ("fine", fine)]:
        with connect(served) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: edge\r\n{extra}\r\n".encode())
            answers[name] = read_answer(sock, 5)
    assert answers["too_many"][0] == 431, answers["too_many"]
    assert b"more than 100 header fields" in answers["too_many"][1]
    assert answers["too_big"][0] == 431, answers["too_big"]
    assert b"over 32,768 bytes" in answers["too_big"][1]
    assert answers["fine"][0] == 200, answers["fine"]


# -- finding 2: idle and slow connections do not shut the service out ------------------------


def trickle(sock: socket.socket, stop: threading.Event, closed_at: list[float]) -> None:
    """One byte of a request head every 0.25 s, until the server closes the socket."""
    head = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Slow: " + b"s" * 1000
    for byte in head:
        if stop.is_set():
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            closed_at.append(time.monotonic())
            return
        time.sleep(0.25)


def test_silent_and_trickling_sockets_are_closed_and_health_answers_meanwhile(
    served: Served,
) -> None:
    """Twelve silent sockets and four trickling one header byte every 0.25 s, four times
    the request slots: /healthz, /readyz and an officer's request are answered while they
    are open (before the fix: 503 for as long as they stayed, which was forever), and
    every one of them is closed once the 1 s head deadline passes."""
    opened = time.monotonic()
    silent = [connect(served) for _ in range(12)]
    slow = [connect(served) for _ in range(4)]
    stop = threading.Event()
    closed_at: list[float] = []
    threads = [threading.Thread(target=trickle, args=(s, stop, closed_at)) for s in slow]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        officer = {API_KEY: served.world.keys["officer"]}
        with httpx.Client(base_url=served.url, timeout=5) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 200
            offer = client.post("/v1/recommendations", json={"customer_id": "C0000001"},
                                headers=officer)  # fmt: skip
            assert offer.status_code == 200, offer.text
        for sock in silent:
            status, data = read_answer(sock, HEAD_TIMEOUT + 3)
            assert status in (408, None), data
            assert time.monotonic() - opened < HEAD_TIMEOUT + 2.5
        for thread in threads:
            thread.join(timeout=HEAD_TIMEOUT + 3)
        assert len(closed_at) == len(slow), "a trickling socket was still open"
        assert max(closed_at) - opened < HEAD_TIMEOUT + 2.5
    finally:
        stop.set()
        for sock in silent + slow:
            sock.close()


def test_health_answers_while_every_request_slot_is_busy(served: Served) -> None:
    """Four officer requests that never send their bodies fill the four request slots: a
    fifth request gets 503, /healthz and /readyz still 200 (before the fix: 503 too); the
    body deadline then frees the slots (408 to the stalled clients)."""
    key = served.world.keys["officer"]
    stalled = []
    for _ in range(SLOTS):
        sock = connect(served)
        sock.sendall(
            f"POST /v1/recommendations HTTP/1.1\r\nHost: edge\r\n{API_KEY}: {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
        )
        stalled.append(sock)
    try:
        time.sleep(0.3)
        with httpx.Client(base_url=served.url, timeout=5, headers={API_KEY: key}) as client:
            busy = client.post("/v1/recommendations", json={"customer_id": "C0000001"})
            assert busy.status_code == 503
            assert "too many requests in flight" in busy.json()["detail"]
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 200
            for sock in stalled:
                assert read_answer(sock, BODY_TIMEOUT + 3)[0] in (408, None)
            time.sleep(0.2)
            again = client.post("/v1/recommendations", json={"customer_id": "C0000001"})
            assert again.status_code == 200, again.text
    finally:
        for sock in stalled:
            sock.close()


def test_connections_beyond_the_cap_are_closed_at_once(served: Served) -> None:
    socks = [connect(served) for _ in range(CONNECTIONS)]
    try:
        time.sleep(0.2)
        with connect(served) as extra:
            status, _ = read_answer(extra, 1.0)
        assert status == 503
    finally:
        for sock in socks:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{served.url}/healthz").status_code == 200


# -- finding 13: the key before the body -------------------------------------------------------


@pytest.mark.parametrize("key", [None, "not-a-key"])
def test_malformed_json_without_a_valid_key_gets_401_not_422(
    served: Served, key: str | None
) -> None:
    headers = {"content-type": "application/json"} | ({API_KEY: key} if key else {})
    for path in ("/v1/recommendations", "/v1/recommendations/batch", "/v1/feedback",
                 "/v1/experiments"):  # fmt: skip
        answer = httpx.post(f"{served.url}{path}", content=b'{"customer_id": ', headers=headers)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.json()["detail"].startswith("missing or invalid API key")
        assert answer.headers["www-authenticate"] == API_KEY
    good = {API_KEY: served.world.keys["officer"], "content-type": "application/json"}
    answer = httpx.post(f"{served.url}/v1/recommendations", content=b"{", headers=good)
    assert answer.status_code == 422


def test_a_bad_key_with_a_10_mb_body_is_refused_before_the_body_is_read(served: Served) -> None:
    """Only the head and 1 KB of a declared 10 MB body are sent (under the 16 MB body
    limit): the 401 comes at once, and the server closes the connection rather than
    swallow the rest (before the fix it waited for the whole body, to parse it)."""
    with connect(served) as sock:
        sock.sendall(
            f"POST /v1/recommendations/batch HTTP/1.1\r\nHost: edge\r\n{API_KEY}: wrong\r\n"
            f"Content-Type: application/json\r\nContent-Length: {10 << 20}\r\n\r\n".encode()
            + b'{"requests": ['
            + b" " * 1024
        )
        started = time.monotonic()
        status, data = read_answer(sock, 5)
        assert status == 401, data
        assert time.monotonic() - started < 1.5
        assert b"connection: close" in data.lower()
        sock.settimeout(2)
        try:
            rest = sock.recv(1)
        except ConnectionResetError:
            rest = b""
        assert rest == b"", "the connection was left open for the unread body"


# -- finding 14: /docs from pinned local files ------------------------------------------------


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, dict[str, str | None]]] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("src", "href"):
            if found.get(name):
                self.refs.append((tag, str(found[name]), found))
        self._in_script = tag == "script"
        if tag in ("style",) or any(name.startswith("on") or name == "style" for name in found):
            self.inline_scripts += 1

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def parse_csp(value: str) -> dict[str, list[str]]:
    policy = {}
    for directive in value.split(";"):
        name, *sources = directive.split()
        policy[name.lower()] = sources
    return policy


def admitted(policy: dict[str, list[str]], directive: str, url: str, page: str) -> bool:
    """Whether the CSP lets `page` load `url` for `directive` (the sources this test
    needs: 'self' and schemes; falls back to default-src)."""
    sources = policy.get(directive, policy.get("default-src", []))
    if "'none'" in sources:
        return False
    target, origin = urlsplit(url), urlsplit(page)
    same = (target.scheme, target.netloc) == (origin.scheme, origin.netloc)
    return ("'self'" in sources and same) or f"{target.scheme}:" in sources


def test_docs_serve_pinned_same_origin_assets_under_a_csp_that_admits_exactly_them(
    served: Served,
) -> None:
    page = f"{served.url}/docs"
    docs = httpx.get(page)
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    policy = parse_csp(docs.headers["content-security-policy"])
    refs = _Refs()
    refs.feed(docs.text)
    assert refs.inline_scripts == 0, "inline script or style on /docs"
    kinds = {"script": ("script-src", "javascript"), "link": ("style-src", "text/css")}
    assert sorted(tag for tag, _, _ in refs.refs) == ["link", "script", "script"]
    for tag, ref, attrs in refs.refs:
        url = urljoin(page, ref)
        assert urlsplit(url).netloc == urlsplit(page).netloc, f"{ref} is not same-origin"
        directive, media = kinds[tag]
        assert admitted(policy, directive, url, page), (directive, url, policy)
        asset = httpx.get(url)
        assert asset.status_code == 200, url
        assert media in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert asset.headers["x-content-type-options"] == "nosniff"
        from serving.docs import FILES, PINNED

        name = url.rsplit("/", 1)[1]
        assert attrs["integrity"].startswith("sha384-")  # type: ignore[union-attr]
        if name in PINNED:
            assert hashlib.sha256(asset.content).hexdigest() == PINNED[name]
            assert FILES[name].read_bytes() == asset.content
    # The script's calls for the OpenAPI document and "Try it out" go to this origin only;
    # nothing else may load: no other host, no inline code, no eval, no frames, no forms.
    assert admitted(policy, "connect-src", f"{served.url}/openapi.json", page)
    assert not admitted(policy, "connect-src", "https://cdn.jsdelivr.net/x.js", page)
    assert not admitted(policy, "script-src", "https://cdn.jsdelivr.net/x.js", page)
    assert set(policy["script-src"]) == {"'self'"}
    assert set(policy["style-src"]) == {"'self'"}
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert httpx.get(f"{served.url}/redoc").status_code in (401, 404)


def test_every_other_response_keeps_default_src_none(served: Served) -> None:
    officer = {API_KEY: served.world.keys["officer"]}
    answers = [
        httpx.get(f"{served.url}/healthz"),
        httpx.get(f"{served.url}/openapi.json"),
        httpx.get(f"{served.url}/docs/swagger-ui-bundle.js"),
        httpx.get(f"{served.url}/docs/"),
        httpx.get(f"{served.url}/v1/products"),  # 401
        httpx.get(f"{served.url}/v1/products", headers=officer),
        httpx.post(f"{served.url}/v1/recommendations", headers=officer, json={}),  # 422
    ]
    for answer in answers:
        assert answer.headers["content-security-policy"] == DEFAULT_CSP, answer.url


BROWSER = shutil.which("chromium-headless-shell") or shutil.which("chromium")


@pytest.mark.skipif(BROWSER is None, reason="apt-get install chromium-headless-shell to run it")
def test_docs_render_in_headless_chromium_without_csp_violations(
    served: Served, tmp_path: Path
) -> None:
    assert BROWSER is not None
    run = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={tmp_path}", "--virtual-time-budget=15000", "--dump-dom",
         f"{served.url}/docs"],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    dom, log = run.stdout, run.stderr
    assert "Content Security Policy" not in log and "Refused to" not in log, log[-3000:]
    assert "swagger-ui" in dom
    assert "/v1/recommendations" in dom, dom[-2000:]  # the operations were rendered
    assert json.loads(httpx.get(f"{served.url}/openapi.json").text)["info"]["title"] in dom
