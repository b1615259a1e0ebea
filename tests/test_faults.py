"""Faults: the event store down, locked or cut off; the process killed mid-write; MLflow
stopped and restarted. Each test breaks a real part and checks the service keeps
answering, loses no event, and recovers by itself.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from serving.app import build_services, create_app
from serving.events import EventStore
from serving.model_holder import wait_until
from tests.serving_fixtures import (
    API_KEY,
    LiveServer,
    World,
    free_port,
    live_server,
    make_world,
    metric_value,
)
from tests.tcp_proxy import TcpProxy
from tests.test_events import POSTGRES, _postgres_admin

REC = "/v1/recommendations"
BATCH = "/v1/recommendations/batch"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("faults"))


def post(
    live: LiveServer, world: World, path: str, body: Any, role: str = "officer"
) -> httpx.Response:
    with live.client(world.keys[role]) as client:
        return client.post(path, json=body)


def get(live: LiveServer, world: World, path: str, role: str = "analyst") -> httpx.Response:
    with live.client(world.keys[role]) as client:
        return client.get(path)


def metric(live: LiveServer, world: World, name: str) -> float | None:
    return metric_value(get(live, world, "/metrics").text, name)


def decision_ids(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(text("SELECT request_id FROM decisions")).scalars())
    finally:
        engine.dispose()


def break_store(services: Any, world: World) -> Any:
    """Point the store at a file that cannot be opened; returns the good engine."""
    good = services.events.engine
    services.events.engine = create_engine(f"sqlite:///{world.home / 'no-such-dir' / 'e.db'}")
    return good


# -- the event store down ------------------------------------------------------------------


def test_offers_are_served_while_the_store_is_down_and_written_when_it_returns(
    world: World,
) -> None:
    settings = world.settings("down", decline_suppress_days=30, max_offers_per_week=6)
    services = build_services(settings)
    with live_server(create_app(services=services)) as live:
        good = break_store(services, world)
        served = []
        for i in range(1, 6):
            response = post(live, world, REC, {"customer_id": f"C{i:07d}"})
            assert response.status_code == 200, response.text
            assert response.json()["recommendations"]
            served.append(response.json()["request_id"])
        many = post(live, world, BATCH, {"requests": [{"customer_id": "C0000010"},
                                                      {"customer_id": "C0000011"}]})  # fmt: skip
        assert many.status_code == 200
        served += [r["request_id"] for r in many.json()["results"]]

        ready = get(live, world, "/readyz")
        assert ready.status_code == 200  # degraded, still serving
        body = ready.json()
        assert body["ready"] is True and body["degraded"] is True
        assert body["event_store"]["up"] is False
        assert body["event_store"]["queued_events"] == len(served)
        assert "unable to open database file" in body["event_store"]["last_error"]
        assert metric(live, world, "event_store_up") == 0.0
        assert metric(live, world, "audit_queue_events") == len(served)
        assert metric(live, world, "audit_deferred_total") == 6.0  # 5 single, 1 batch
        assert metric(live, world, "contact_policy_skipped_total") >= 5.0

        answer = {"request_id": served[0], "product_id": "x", "outcome": "shown"}
        feedback = post(live, world, "/v1/feedback", answer)
        assert feedback.status_code == 503
        assert feedback.json() == {"detail": "the event store is unavailable; retry shortly"}
        view = get(live, world, "/v1/customers/C0000001", role="officer")
        assert view.status_code == 200 and view.json()["offers_unavailable"] is True

        services.events.engine = good  # the store is back
        assert wait_until(lambda: services.audit.pending == 0, timeout=15)
        assert set(served) <= decision_ids(settings.events_url)
        assert metric(live, world, "event_store_up") == 1.0
        assert get(live, world, "/readyz").json()["event_store"]["up"] is True
        view = get(live, world, "/v1/customers/C0000001", role="officer").json()
        assert view["offers_unavailable"] is False and view["offers"]


def test_a_full_queue_refuses_offers_and_counts_them(world: World) -> None:
    services = build_services(world.settings("full", audit_max_pending=100, max_batch=100))
    with live_server(create_app(services=services)) as live:
        break_store(services, world)
        hundred = {"requests": [{"customer_id": f"C{i:07d}"} for i in range(1, 101)]}
        assert post(live, world, BATCH, hundred).status_code == 200  # fills the queue
        refused = post(live, world, REC, {"customer_id": "C0000200"})
        assert refused.status_code == 503
        assert "queue of unwritten events is full" in refused.json()["detail"]
        assert "recommendations" not in refused.text
        assert post(live, world, BATCH, {"requests": [{"customer_id": "C1"}]}).status_code in (
            200, 503)  # fmt: skip
        assert metric(live, world, "audit_rejected_total") >= 1.0
        assert services.audit.pending == 100  # bounded


def test_shutdown_spills_unwritten_events_and_the_next_start_writes_them(world: World) -> None:
    settings = world.settings("spill", shutdown_flush_seconds=1)
    services = build_services(settings)
    with live_server(create_app(services=services)) as live:
        break_store(services, world)
        served = [post(live, world, REC, {"customer_id": f"C{i:07d}"}).json()["request_id"]
                  for i in range(1, 4)]  # fmt: skip
    files = list(settings.spill_dir.glob("unwritten-*.jsonl"))
    assert len(files) == 1
    assert len(files[0].read_text().splitlines()) == 3
    assert not set(served) & decision_ids(settings.events_url)

    with live_server(create_app(settings)) as live:  # the store answers again
        assert set(served) <= decision_ids(settings.events_url)
        assert not list(settings.spill_dir.glob("unwritten-*"))
        with live.client(world.keys["officer"]) as client:
            answer = client.post("/v1/feedback", json={
                "request_id": served[0], "product_id": "x", "outcome": "shown"})  # fmt: skip
        assert answer.status_code == 422  # the spilled decision is a real one now


def test_a_locked_sqlite_store_delays_nothing_for_long_and_loses_nothing(world: World) -> None:
    settings = world.settings("locked", audit_wait_seconds=1.0)
    with live_server(create_app(settings)) as live:
        path = str(settings.events_url.removeprefix("sqlite:///"))
        assert post(live, world, REC, {"customer_id": "C0000001"}).status_code == 200
        lock = sqlite3.connect(path, timeout=1)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            served = []
            for i in range(2, 8):
                start = time.monotonic()
                response = post(live, world, REC, {"customer_id": f"C{i:07d}"})
                assert response.status_code == 200, response.text
                assert time.monotonic() - start < 3.0  # at most the audit wait, then answered
                served.append(response.json()["request_id"])
            assert not set(served) & decision_ids(settings.events_url)
        finally:
            lock.rollback()
            lock.close()
        services = live.services
        assert wait_until(lambda: services.audit.pending == 0, timeout=20)
        assert set(served) <= decision_ids(settings.events_url)


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    admin = _postgres_admin()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield schema
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def test_postgresql_cut_off_and_back(world: World, postgres_schema: str) -> None:
    """The service talks to PostgreSQL through a TCP proxy the test cuts and restores
    (the machine's own server is never stopped)."""
    target = httpx.URL(POSTGRES.replace("postgresql+psycopg", "http"))
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        url = POSTGRES.replace(f"{target.host}:{target.port}", f"127.0.0.1:{proxy.port}")
        url = f"{url}?options=-csearch_path%3D{postgres_schema}"
        settings = world.settings("pg", events_url=url, decline_suppress_days=30)
        with live_server(create_app(settings)) as live:
            first = post(live, world, REC, {"customer_id": "C0000001"})
            assert first.status_code == 200
            proxy.cut()
            served = []
            for i in range(2, 6):
                response = post(live, world, REC, {"customer_id": f"C{i:07d}"})
                assert response.status_code == 200, response.text
                served.append(response.json()["request_id"])
            services = live.services
            assert wait_until(lambda: not services.audit.healthy, timeout=10)
            assert get(live, world, "/readyz").json()["event_store"]["up"] is False
            proxy.restore()
            assert wait_until(lambda: services.audit.pending == 0, timeout=30)
            store = EventStore(url)
            try:
                ids = set(store.frame("decisions")["request_id"])
            finally:
                store.close()
            assert {first.json()["request_id"], *served} <= ids
            assert get(live, world, "/readyz").json()["event_store"]["up"] is True


# -- killed mid-write ----------------------------------------------------------------------


def _serve(world: World, tag: str, port: int) -> subprocess.Popen[bytes]:
    settings = world.settings(tag)
    env = {**os.environ}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"RECOMMENDER_{name.upper()}"] = str(value)
    with (world.home / f"{tag}-serve.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "recommender", "serve", "--port", str(port)],
            env=env, cwd=world.home, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path,
                timeout: float = 120) -> None:  # fmt: skip
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become ready")


def test_sigkill_under_load_loses_no_acknowledged_event(world: World) -> None:
    port = free_port()
    server = _serve(world, "killed", port)
    url = world.settings("killed").events_url
    acknowledged: list[str] = []
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10,
                          headers={API_KEY: world.keys["officer"]}) as http:  # fmt: skip
            i = worker
            while not stop.is_set():
                i += 4
                try:
                    body = {"customer_id": f"C{1 + i % 2999:07d}", "k": 3}
                    response = http.post(REC, json=body)
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200:
                    acknowledged.append(response.json()["request_id"])

    try:
        _wait_ready(port, server, world.home / "killed-serve.log")
        with ThreadPoolExecutor(4) as pool:
            for worker in range(4):
                pool.submit(client, worker)
            time.sleep(3)
            server.send_signal(signal.SIGKILL)
            server.wait(10)
            stop.set()
    finally:
        if server.poll() is None:
            server.kill()
    assert len(acknowledged) > 50
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        offers = dict(connection.execute(
            "SELECT request_id, COUNT(*) FROM offers GROUP BY request_id").fetchall())  # fmt: skip
        made = {r: len(json.loads(o)) for r, o in
                connection.execute("SELECT request_id, offers FROM decisions")}  # fmt: skip
    missing = set(acknowledged) - set(made)
    assert not missing, f"{len(missing)} acknowledged decisions lost"
    assert all(offers.get(r, 0) == n for r, n in made.items())  # each decision whole

    again = _serve(world, "killed", port)  # restarts on the same database
    try:
        _wait_ready(port, again, world.home / "killed-serve.log")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}",
                          headers={API_KEY: world.keys["officer"]}) as http:  # fmt: skip
            assert http.post(REC, json={"customer_id": "C0000001"}).status_code == 200
    finally:
        again.terminate()
        again.wait(30)


# -- MLflow stopped and restarted ------------------------------------------------------------


def _mlflow_server(world: World, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", world.tracking_uri, "--workers", "1"],
        cwd=world.home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _mlflow_up(port: int, timeout: float = 90) -> bool:
    return wait_until(lambda: _answers(f"http://127.0.0.1:{port}/health"), timeout, step=0.5)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_mlflow_stopped_then_restarted(world: World) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    settings = world.settings("mlflow-restart", tracking_uri=uri, poll_seconds=1)
    mlflow_server = _mlflow_server(world, port)
    try:
        assert _mlflow_up(port), "mlflow server did not start"
        with live_server(create_app(settings)) as live:  # normal start: the local copy is made
            assert get(live, world, "/readyz").json()["model"]["source"] == "mlflow"
        mlflow_server.terminate()
        mlflow_server.wait(30)

        with live_server(create_app(settings)) as live:  # MLflow down at start-up
            ready = get(live, world, "/readyz").json()
            assert ready["ready"] is True and ready["degraded"] is True
            assert ready["model"]["source"] == "local copy"
            assert post(live, world, REC, {"customer_id": "C0000001"}).status_code == 200
            reload = post(live, world, "/v1/admin/reload?wait=true", None, role="admin")
            assert reload.json()["result"].startswith("reload failed")  # during a reload
            assert get(live, world, "/readyz").json()["model"]["source"] == "local copy"

            mlflow_server = _mlflow_server(world, port)  # MLflow comes back
            assert _mlflow_up(port)
            recovered = wait_until(
                lambda: get(live, world, "/readyz").json()["model"]["source"] == "mlflow",
                timeout=30, step=0.5,
            )  # fmt: skip
            assert recovered, get(live, world, "/readyz").json()
            ready = get(live, world, "/readyz").json()
            assert ready["degraded"] is False and ready["last_error"] is None
    finally:
        mlflow_server.terminate()
        mlflow_server.wait(30)
