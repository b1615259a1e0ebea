"""Security hygiene of the service and the CLI (issue 11, findings 4, 9, 10 and 11), each
test replaying the attack of the adversarial review:

- credentials in the tracking and event-store URLs reach no answer and no log line, and
  `/readyz` tells a caller without a key only whether the service is ready;
- CSV files hold no cell a spreadsheet would run as a formula, and the API refuses such
  client ids;
- an untrusted newline cannot forge a log line;
- the keys file is checked whole at start-up, written 0600, and the files the service
  creates (audit database, spill files, the local model copy) are its user's only.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import logging.config
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pandas as pd
import pytest
import uvicorn.config

# What this file tests is imported where it is used, so that every test runs (and shows
# its attack failing) against the code from before the fixes too.
from recommender.errors import ConfigError, first_line
from recommender.storage import write_tables_atomically
from serving.app import create_app
from serving.keys import ROLES, ApiKey, KeyRing, add_key, digest
from tests.serving_fixtures import (
    API_KEY,
    CHAMPION_URI,
    MODEL_NAME,
    World,
    free_port,
    live_server,
    make_world,
)

ROOT = Path(__file__).resolve().parents[1]
TRACKING_SECRET = "tracking-secret-4711"
EVENTS_SECRET = "events-secret-4711"
CREDENTIALED_MLFLOW = f"http://mlflow-user:{TRACKING_SECRET}@127.0.0.1:9/"
CREDENTIALED_EVENTS = f"postgresql+psycopg://events-user:{EVENTS_SECRET}@127.0.0.1:9/events"
SECRETS = (TRACKING_SECRET, EVENTS_SECRET)
FORMULA_IDS = ['=HYPERLINK("http://x")', "+1+cmd|' /C calc'!A0", "@SUM(1,1)", "-2+3"]
FORGED = "INFO: fake"
FORMULA_START = tuple("=+-@\t\r")  # what a spreadsheet may run as a formula


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("hygiene"))


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[Any]:
    with live_server(create_app(world.settings("main"))) as live:
        yield live


@pytest.fixture
def offline_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """No retries against the unreachable tracking server (MLflow's default: minutes)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def get(live: Any, path: str, key: str | None = None) -> httpx.Response:
    with live.client(key) as client:
        return client.get(path)


def texts(value: Any) -> Iterator[str]:
    """Every string in a JSON answer (keys and values)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from texts(v)


def logged_text(records: list[logging.LogRecord]) -> str:
    lines = []
    for record in records:
        lines.append(record.getMessage())
        if record.exc_info:
            lines.append(logging.Formatter().formatException(record.exc_info))
        if record.exc_text:
            lines.append(record.exc_text)
    return "\n".join(lines)


# -- finding 4: credentials ------------------------------------------------------------------


def test_redact_hides_url_passwords_and_keeps_what_an_operator_needs() -> None:
    from recommender.errors import redact

    assert redact(CREDENTIALED_MLFLOW) == "http://mlflow-user:***@127.0.0.1:9/"
    assert redact("postgresql://u:p@ss:w@rd@db.internal:5432/x?password=abc&sslmode=require") == (
        "postgresql://u:***@db.internal:5432/x?password=***&sslmode=require"
    )
    assert redact("host=db password=hunter2 user=u") == "host=db password=*** user=u"
    assert redact("sqlite:///events.db and https://host/a@b") == (
        "sqlite:///events.db and https://host/a@b"
    )
    # found by the adversarial review: unencoded / ? # in a password, a token as the user
    assert redact("postgresql://svc:pa/ss?w#rd@db.internal/events") == (
        "postgresql://svc:***@db.internal/events"
    )
    assert redact("https://dapi0123456789secret@mlflow.internal") == "https://***@mlflow.internal"
    assert redact("x redis://:pw@r:6379/0 y") == "x redis://:***@r:6379/0 y"
    error = ConnectionError(f"cannot reach {CREDENTIALED_MLFLOW}api\nsecond line")
    assert first_line(error) == "cannot reach http://mlflow-user:***@127.0.0.1:9/api"


def test_credentials_reach_no_answer_and_no_log_line(
    world: World, offline_mlflow: None, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreachable tracking server and event store whose URLs carry passwords: before,
    `/readyz` (no key needed) showed the tracking password in `last_error`, the log did
    too, and `/v1/admin/settings` returned both passwords."""
    caplog.set_level(logging.DEBUG)
    settings = world.settings("creds", tracking_uri=CREDENTIALED_MLFLOW,
                              events_url=CREDENTIALED_EVENTS,
                              local_model_dir=world.home / "creds-models")  # fmt: skip
    assert not any(secret in repr(settings) for secret in SECRETS)
    with live_server(create_app(settings)) as live:
        for key in (None, "", "not-a-key"):
            anonymous = get(live, "/readyz", key)
            assert anonymous.status_code == 503
            assert anonymous.json() == {"ready": False}
        for role in ROLES:
            ready = get(live, "/readyz", world.keys[role])
            assert ready.status_code == 503
            payload = ready.json()
            assert payload["ready"] is False and payload["degraded"] is True
            assert payload["last_error"].startswith(f"cannot load {CHAMPION_URI} from MLflow")
            assert payload["event_store"]["up"] is False
            assert not any(secret in ready.text for secret in SECRETS), ready.text
            assert not any("\n" in text or "\r" in text for text in texts(payload)), payload

        shown = get(live, "/v1/admin/settings", world.keys["admin"])
        assert shown.status_code == 200
        assert not any(secret in shown.text for secret in SECRETS), shown.text
        assert shown.json()["tracking_uri"] == "http://mlflow-user:***@127.0.0.1:9/"
        assert shown.json()["events_url"] == (
            "postgresql+psycopg://events-user:***@127.0.0.1:9/events"
        )
        with live.client(world.keys["admin"]) as client:
            reloaded = client.post("/v1/admin/reload", params={"wait": "true"})
        assert reloaded.json()["result"].startswith("reload failed: ")
        assert not any(secret in reloaded.text for secret in SECRETS), reloaded.text
    logged = logged_text(caplog.records)
    assert f"cannot load {CHAMPION_URI} from MLflow" in logged  # the failure is logged...
    assert not any(secret in logged for secret in SECRETS), logged  # ...without the password


def test_readiness_details_need_a_key(server: Any, world: World) -> None:
    anonymous = get(server, "/readyz")
    assert anonymous.status_code == 200
    assert anonymous.json() == {"ready": True}
    detailed = get(server, "/readyz", world.keys["analyst"])
    assert detailed.status_code == 200
    payload = detailed.json()
    assert payload["model"]["version"] == world.version
    assert payload["event_store"] == {"up": True, "queued_events": 0, "last_error": None}


# -- finding 9: CSV formula injection --------------------------------------------------------


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_scores_csv_holds_no_formula(world: World, tmp_path: Path) -> None:
    """Clients whose ids are spreadsheet formulas, scored with `recommender score` into a
    CSV: before, the ids were written as they are (`=HYPERLINK(...)` ran when an officer
    opened the file)."""
    bank = tmp_path / "bank"
    bank.mkdir()
    renamed = {f"C{i:07d}": formula for i, formula in enumerate(FORMULA_IDS, start=1)}
    for name in ("customers", "holdings", "products"):
        frame = pd.read_parquet(world.bank_dir / f"{name}.parquet")
        if "customer_id" in frame:
            frame["customer_id"] = frame["customer_id"].astype(str).replace(renamed)
        frame.to_parquet(bank / f"{name}.parquet", index=False)
    uri = world.tracking_uri
    out = tmp_path / "scores.csv"
    result = subprocess.run(
        [sys.executable, "-m", "recommender", "score", str(bank), "--out", str(out),
         "--model", CHAMPION_URI, "--tracking-uri", uri, "--k", "3"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with out.open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    assert len(body) > 3000  # up to 3 offers for each of the 3,000 clients
    for row in body:
        for column, cell in zip(header, row, strict=True):
            assert _is_number(cell) or not cell.startswith(FORMULA_START), (column, cell)
    ids = {row[header.index("customer_id")] for row in body}
    assert {f"'{formula}" for formula in FORMULA_IDS} <= ids
    scores = pd.read_csv(out)
    assert pd.api.types.is_float_dtype(scores["score"])  # numbers stay numbers


def test_csv_files_neutralise_text_cells_only(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["-2+3", "@x", "\tcalc", "\r=1", "C1", "a=b"],
                          "balance": [-1.5, 2.0, -3.25, 0.0, 1.0, -7.0],
                          "count": [-3, 1, 2, 3, 4, 5]})  # fmt: skip
    [path] = write_tables_atomically({"table.csv": frame}, tmp_path / "out")
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert [row[0] for row in rows[1:]] == ["'-2+3", "'@x", "'\tcalc", "'\r=1", "C1", "a=b"]
    back = pd.read_csv(path)
    assert back["balance"].tolist() == frame["balance"].tolist()
    assert back["count"].tolist() == frame["count"].tolist()


@pytest.mark.parametrize("customer_id", [*FORMULA_IDS, "C0000001\nINFO: fake", " C0000001"])
def test_the_api_refuses_a_formula_customer_id(server: Any, world: World, customer_id: str) -> None:
    """Before: 404 (looked up as an id, and echoed into batch answers and logs)."""
    with server.client(world.keys["officer"]) as client:
        one = client.post("/v1/recommendations", json={"customer_id": customer_id})
        batch = client.post("/v1/recommendations/batch",
                            json={"requests": [{"customer_id": customer_id}]})  # fmt: skip
    assert one.status_code == 422, one.text
    assert one.json()["detail"][0]["loc"] == ["body", "customer_id"]
    assert batch.status_code == 422, batch.text
    with server.client(world.keys["officer"]) as client:  # the client view's path too
        view = client.get(f"/v1/customers/{quote(customer_id, safe='')}")
    if "/" in customer_id:  # decoded by the server: no route matches, nothing looked up
        assert view.status_code == 404 and view.json() == {"detail": "Not Found"}
    else:
        assert view.status_code == 422, view.text
        assert view.json()["detail"][0]["loc"] == ["path", "customer_id"]


def test_real_client_ids_match_the_pattern(server: Any, world: World) -> None:
    from serving.schemas import CUSTOMER_ID_PATTERN

    pattern = re.compile(CUSTOMER_ID_PATTERN)
    for real in ("1375586", "15892", "4WKQSBB", "ID_00X1", "C0000042", "prospect-17", "a.b:c"):
        assert pattern.match(real), real
    with server.client(world.keys["officer"]) as client:
        served = client.post("/v1/recommendations", json={"customer_id": "C0000001"})
    assert served.status_code == 200, served.text


# -- finding 10: log forging -----------------------------------------------------------------


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The installed setup changes process-wide logging: put it back afterwards."""
    names = ["", "serving", "recommender", "training", "uvicorn", "uvicorn.error"]
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    filters = {id(h): list(h.filters) for _, (_, hs) in saved.items() for h in hs}
    formatters = {id(h): h.formatter for _, (_, hs) in saved.items() for h in hs}
    try:
        yield
    finally:
        for name, (level, handlers) in saved.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.handlers = handlers
            for handler in handlers:
                handler.filters = filters[id(handler)]
                handler.setFormatter(formatters[id(handler)])


def test_an_untrusted_newline_cannot_forge_a_log_line(restored_logging: None) -> None:
    """Before: `variant ... model 'x\\nINFO: fake'` printed a second line `INFO: fake`."""
    from serving.logs import configure_logging

    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)  # as `recommender serve` does
    ours = configure_logging("text")
    stream = io.StringIO()
    ours.setStream(stream)  # type: ignore[attr-defined]
    [uvicorn_handler] = logging.getLogger("uvicorn").handlers  # uvicorn.error propagates
    uvicorn_stream = io.StringIO()
    uvicorn_handler.setStream(uvicorn_stream)  # type: ignore[attr-defined]

    log = logging.getLogger("serving.experiments")
    log.error("experiment %r: cannot load %s", "e1", f"x\n{FORGED}\r\x1b[2J")
    try:
        raise ValueError(f"bad value\n{FORGED}")
    except ValueError:
        log.exception("unexpected error in request %s", "r1")
    logging.getLogger("uvicorn.error").error("Invalid HTTP request: %s", f"GET /\n{FORGED}")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert not any(line.startswith(FORGED) or "\x1b" in line for line in lines), lines
    assert "cannot load x\\nINFO: fake\\r\\x1b[2J" in lines[0]
    assert "Traceback" in lines[1] and "bad value\\nINFO: fake" in lines[1]
    uvicorn_lines = uvicorn_stream.getvalue().splitlines()
    assert len(uvicorn_lines) == 1 and "GET /\\nINFO: fake" in uvicorn_lines[0]


def test_json_logs_are_one_object_per_line(restored_logging: None) -> None:
    from serving.logs import OneLine, configure_logging

    handler = configure_logging("json")
    stream = io.StringIO()
    handler.setStream(stream)  # type: ignore[attr-defined]
    logging.getLogger("serving").warning("value %s", f"x\n{FORGED} {CREDENTIALED_MLFLOW}")
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "serving"
    assert entry["message"] == "value x\\nINFO: fake http://mlflow-user:***@127.0.0.1:9/"
    assert any(isinstance(f, OneLine) for f in handler.filters)


# -- finding 11: keys file and file modes ----------------------------------------------------


def _keys_file(path: Path, entries: Any) -> Path:
    path.write_text(json.dumps({"keys": entries}))
    return path


def _entry(key_id: str, sha: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": key_id, "role": "officer", "sha256": sha or digest(key_id), **extra}


BAD_KEYS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("duplicate-id", [_entry("a"), {**_entry("b"), "id": "a"}], ("'a'", "used twice")),
    ("duplicate-hash", [_entry("a"), _entry("b", digest("a"))], ("'a'", "'b'", "same hash")),
    ("not-hex", [_entry("a", "z" * 64)], ("'a'", "sha256", "keys add")),
    ("not-ascii", [_entry("a", "é" * 64)], ("'a'", "sha256")),
    ("short-hash", [_entry("a", "ab" * 10)], ("'a'", "sha256")),
    ("bad-role", [{**_entry("a"), "role": "boss"}], ("'a'", "'boss'", "officer, analyst")),
    ("misspelt-field", [_entry("a", channel=["branch"])], ("'a'", "'channel'", "channels")),
    ("channels-not-list", [_entry("a", channels="branch")], ("'a'", "channels", "list")),
    ("bad-channel", [_entry("a", channels=["branch", "x y"])], ("'a'", "'x y'")),
    ("cold-start-text", [_entry("a", cold_start="no")], ("'a'", "cold_start", "true or false")),
    ("bad-id", [_entry("a\nb")], ("id", "letters")),
    ("entry-not-object", ["a"], ("key #1",)),
]


@pytest.mark.parametrize(("case", "entries", "parts"), BAD_KEYS, ids=[c[0] for c in BAD_KEYS])
def test_a_bad_keys_file_is_one_line_naming_file_key_and_fix(
    tmp_path: Path, case: str, entries: Any, parts: tuple[str, ...]
) -> None:
    path = _keys_file(tmp_path / "keys.json", entries)
    with pytest.raises(ConfigError) as raised:
        KeyRing.load(path)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message
    for part in parts:
        assert part in message, message


@pytest.mark.parametrize("content", ["{not json", '{"keys": {}}', "[]", b"\xff\xfe\x00"])
def test_an_unreadable_keys_file_is_one_line(tmp_path: Path, content: str | bytes) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as raised:
        KeyRing.load(path)
    assert "\n" not in str(raised.value) and str(path) in str(raised.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        KeyRing.load(tmp_path)  # a directory: before, IsADirectoryError's traceback


def test_no_keys_starts_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _keys_file(tmp_path / "keys.json", [])
    with caplog.at_level(logging.WARNING, logger="serving.keys"):
        assert KeyRing.load(path).keys == []
    assert any("holds no keys" in r.getMessage() for r in caplog.records)


def test_a_keys_file_others_can_write_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _keys_file(tmp_path / "keys.json", [_entry("a")])
    path.chmod(0o666)
    with caplog.at_level(logging.WARNING, logger="serving.keys"):
        KeyRing.load(path)
    assert any("chmod 600" in r.getMessage() for r in caplog.records)


def test_key_limits_are_read_and_keys_stay_hashable(tmp_path: Path) -> None:
    path = _keys_file(tmp_path / "keys.json", [
        _entry("any"), _entry("phone", channels=["phone", "branch"], cold_start=False),
    ])  # fmt: skip
    anywhere, phone = KeyRing.load(path).keys
    assert (anywhere.channels, anywhere.cold_start) == (None, True)
    assert (phone.channels, phone.cold_start) == (frozenset({"phone", "branch"}), False)
    assert phone.may_use_channel("phone") and not phone.may_use_channel("hold")
    assert len({anywhere, phone, ApiKey("x", "admin", digest("x"))}) == 3


def test_keys_add_writes_a_private_file_with_the_limits(tmp_path: Path) -> None:
    """Before: the keys file was created 0644 (0600 now, atomically, its new folder 0700)."""
    path = tmp_path / "secrets" / "keys.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "recommender", "keys", "add", "--file", str(path), "--id",
         "phone-app", "--role", "officer", "--channel", "phone", "--channel", "branch",
         "--no-cold-start"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"keys": [{
        "id": "phone-app", "role": "officer", "sha256": digest(key),
        "channels": ["branch", "phone"], "cold_start": False,
    }]}  # fmt: skip
    found = KeyRing.load(path).identify(key)
    assert found == ApiKey("phone-app", "officer", digest(key), frozenset({"phone", "branch"}),
                           False)  # fmt: skip
    second = add_key(path, "admin-app", "admin")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeyRing.load(path).identify(second) == ApiKey("admin-app", "admin", digest(second))
    assert [p.name for p in path.parent.iterdir()] == ["keys.json"]  # no temporary left


# -- the service process: `recommender serve` ------------------------------------------------


def _serve_env(world: World, tag: str, **overrides: Any) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}  # fmt: skip
    for name, value in world.settings(tag, **overrides).model_dump(mode="json").items():
        if value is not None:
            env[f"RECOMMENDER_{name.upper()}"] = (
                json.dumps(value) if isinstance(value, list) else str(value)
            )
    return env


class Serve:
    """`recommender serve` in a subprocess (its stderr in a file), stopped with SIGTERM."""

    def __init__(self, world: World, tag: str, **overrides: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = world.home / f"{tag}-serve.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "recommender", "serve", "--port", str(self.port)],
                env=_serve_env(world, tag, **overrides), cwd=world.home,
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready in {timeout} s: {self.log.read_text()}")

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        return self.log.read_text()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_serve_creates_private_files_and_writes_one_line_logs(world: World) -> None:
    """Before: events.db, the model copy (bundle.pkl: unpickled at the next start) and its
    folders were created 0644/0755, and the review's variant model `x\\nINFO: fake`
    printed a forged `INFO: fake` line in the server's log (the reference is also refused
    with a 422 now, finding 5; the escaping holds for any value that reaches a log)."""
    serve = Serve(world, "proc")
    try:
        serve.wait_ready()
        officer = {API_KEY: world.keys["officer"]}
        served = httpx.post(f"{serve.url}/v1/recommendations", headers=officer,
                            json={"customer_id": "C0000001"}, timeout=60)  # fmt: skip
        assert served.status_code == 200, served.text
        experiment = {
            "name": "forge",
            "variants": [{"name": "a"}, {"name": "b", "model": f"x\n{FORGED}"}],
        }
        httpx.post(f"{serve.url}/v1/experiments", headers={API_KEY: world.keys["admin"]},
                   json=experiment, timeout=60)  # fmt: skip
    finally:
        log = serve.stop()
    assert serve.process.returncode in (0, -signal.SIGTERM), log
    copy = world.home / "proc-models"
    expected = {world.home / "proc-events.db": 0o600, copy: 0o700, copy / MODEL_NAME: 0o700,
                copy / MODEL_NAME / "bundle.pkl": 0o600,
                copy / MODEL_NAME / "meta.json": 0o600}  # fmt: skip
    problems = [f"{path.name} is {_mode(path):o}, not {mode:o}"
                for path, mode in expected.items() if _mode(path) != mode]  # fmt: skip
    problems += [f"forged line: {line!r}" for line in log.splitlines() if line.startswith(FORGED)]
    assert problems == [], log


def test_serve_spills_privately_and_logs_no_password(server: Any, world: World) -> None:
    """The event store down (its URL with a password), MLflow unreachable (with one too),
    the model from the local copy: events still queued at shutdown are spilled to files
    only the service's user can read, and the password is in no log line."""
    source = world.home / "main-models"  # the local copy the in-process server wrote
    copy = world.home / "spill-models"
    copy.mkdir()
    for path in source.rglob("*"):
        target = copy / path.relative_to(source)
        if path.is_dir():
            target.mkdir()
        else:
            target.write_bytes(path.read_bytes())
    serve = Serve(world, "spill", tracking_uri=CREDENTIALED_MLFLOW,
                  events_url=CREDENTIALED_EVENTS, local_model_dir=copy,
                  shutdown_flush_seconds=1)  # fmt: skip
    try:
        serve.wait_ready()
        served = httpx.post(f"{serve.url}/v1/recommendations",
                            headers={API_KEY: world.keys["officer"]},
                            json={"customer_id": "C0000001"}, timeout=60)  # fmt: skip
        assert served.status_code == 200, served.text
    finally:
        log = serve.stop()
    spill = world.home / "spill-spill"
    files = list(spill.glob("unwritten-*.jsonl"))
    assert len(files) == 1, log
    assert _mode(spill) == 0o700 and _mode(files[0]) == 0o600
    assert "cannot load" in log, log
    assert not any(secret in log for secret in SECRETS), log


def test_serve_refuses_a_bad_keys_file_with_one_line(world: World, tmp_path: Path) -> None:
    """Before: a 64-character hash that is not hex was accepted and every authenticated
    request then failed with a 500 (hmac.compare_digest on non-ASCII text)."""
    keys = _keys_file(tmp_path / "keys.json", [_entry("a", "é" * 64), *[
        _entry(f"{role}-app", digest(key)) for role, key in world.keys.items()]])  # fmt: skip
    env = _serve_env(world, "badkeys", api_keys_file=keys)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "recommender", "serve", "--port", str(port)],
        env=env, cwd=world.home, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    statuses = []
    try:
        end = time.monotonic() + 90
        while process.poll() is None and time.monotonic() < end:
            try:  # the attack of the review: an authenticated request on the started service
                answer = httpx.get(
                    f"http://127.0.0.1:{port}/v1/products",
                    headers={API_KEY: world.keys["officer"]},
                    timeout=5,
                )
                statuses.append(answer.status_code)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
    finally:
        if process.poll() is None:
            process.terminate()
        _, stderr = process.communicate(timeout=60)
    assert statuses == [], f"the service started and answered {statuses}"
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr
    [line] = stderr.strip().splitlines()
    assert line.startswith("error: API keys file ") and "key 'a'" in line and "sha256" in line


@pytest.mark.parametrize("name", ["a\n", "a\nINFO: fake", "ok\r", "x\x1b[31m"])
def test_experiment_and_variant_names_end_where_the_pattern_ends(name: str) -> None:
    """`re.match` with `$` admits a trailing newline: names are matched whole, so no name
    can carry a line break into a log line or a report."""
    from recommender.experiment import Experiment, Variant

    with pytest.raises(ConfigError, match="a name is 1-64"):
        Variant(name)
    with pytest.raises(ConfigError, match="a name is 1-64"):
        Experiment(name=name, salt="s", variants=[Variant("a"), Variant("b")])
