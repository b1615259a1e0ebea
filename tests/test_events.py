"""The audit event store against SQLite (a temporary file) and PostgreSQL.

PostgreSQL runs at 127.0.0.1:5432, database `test` (trust auth; another server can be
named in TEST_POSTGRES_URL). Each test gets a schema
of its own (`search_path` set through libpq options in the URL), dropped afterwards. If
the server cannot be reached the PostgreSQL cases are skipped locally and fail on CI.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from recommender.experiment import Experiment
from serving.events import (
    AuditWriter,
    DecisionRecord,
    EventStore,
    ExperimentConflict,
    FeedbackRecord,
    decisions,
    offers,
)
from serving.model_holder import wait_until

POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def _postgres_admin() -> Engine:
    """An engine on the test database, or skip (locally) / fail (CI) when unreachable."""
    engine = create_engine(POSTGRES, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        message = f"PostgreSQL at {POSTGRES} is unreachable ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return engine


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    if request.param == "sqlite":
        events = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
        yield events
        events.close()
        return
    admin = _postgres_admin()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    events = None
    try:
        events = EventStore(f"{POSTGRES}?options=-csearch_path%3D{schema}")
        yield events
    finally:
        if events is not None:
            events.close()
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def record(
    request_id: str,
    customer_id: str = "C0000042",
    created_at: datetime = T0,
    products: tuple[str, ...] = ("ind_recibo_ult1", "ind_nomina_ult1"),
    key_id: str = "officer-app",
) -> DecisionRecord:
    return DecisionRecord(
        request_id=request_id,
        key_id=key_id,
        customer_id=customer_id,
        cold_start=False,
        model_name="cross-sell-recommender",
        model_version="3",
        objective="propensity",
        k=len(products),
        offers=[
            {"product_id": p, "rank": i + 1, "score": 2.5 - i, "probability": 0.02 / (i + 1)}
            for i, p in enumerate(products)
        ],
        excluded=[{"product_id": "ind_cco_fin_ult1", "reason": "already held"}],
        created_at=created_at,
    )


def _utc(value: datetime) -> datetime:
    """SQLite gives naive datetimes back (stored as UTC), PostgreSQL aware ones."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def test_the_tables_live_in_the_test_schema(store: EventStore) -> None:
    if not store.url.startswith("postgresql"):
        pytest.skip("schemas are a PostgreSQL matter")
    with store.engine.connect() as connection:
        schema = connection.execute(text("SELECT current_schema()")).scalar_one()
        tables = connection.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
            {"s": schema},
        ).scalars()
        assert schema.startswith("t_")
        assert set(tables) == {"decisions", "offers", "feedback", "experiments"}


def test_record_and_read_back(store: EventStore) -> None:
    first = record("r1", created_at=T0)
    later = T0 + timedelta(minutes=5)
    products = ("ind_tjcr_fin_ult1", "ind_ecue_fin_ult1", "ind_reca_fin_ult1")
    second = record("r2", created_at=later, products=products)
    other = record("r3", customer_id="C0000007", created_at=T0 + timedelta(minutes=1))
    store.record([first])
    store.record([second, other])
    store.record([])  # nothing to write is not an error

    assert store.count() == 3
    assert store.count("decisions") == 3
    assert store.count("offers") == 2 + 3 + 2

    row = store.decision("r2")
    assert row is not None
    assert {k: v for k, v in row.items() if k != "created_at"} == {
        "request_id": "r2", "key_id": "officer-app", "customer_id": "C0000042",
        "cold_start": False, "model_name": "cross-sell-recommender", "model_version": "3",
        "objective": "propensity", "k": 3, "offers": second.offers,
        "excluded": [{"product_id": "ind_cco_fin_ult1", "reason": "already held"}],
        "channel": None, "experiment": None, "variant": None, "customer_input": None,
    }  # fmt: skip
    assert _utc(row["created_at"]) == second.created_at
    assert store.decision("missing") is None

    made = store.offers_for("C0000042")
    assert [(o["request_id"], o["product_id"], o["rank"]) for o in made] == [
        ("r2", "ind_tjcr_fin_ult1", 1),  # newest decision first, then by rank
        ("r2", "ind_ecue_fin_ult1", 2),
        ("r2", "ind_reca_fin_ult1", 3),
        ("r1", "ind_recibo_ult1", 1),
        ("r1", "ind_nomina_ult1", 2),
    ]
    assert made[0]["score"] == pytest.approx(2.5)
    assert made[1]["probability"] == pytest.approx(0.01)
    assert _utc(made[0]["created_at"]) == second.created_at
    assert [o["request_id"] for o in store.offers_for("C0000042", limit=2)] == ["r2", "r2"]
    assert [o["request_id"] for o in store.offers_for("C0000007")] == ["r3", "r3"]
    assert store.offers_for("nobody") == []


def test_a_failing_batch_leaves_no_row_of_it(store: EventStore) -> None:
    store.record([record("kept")])
    with pytest.raises(IntegrityError):
        store.record([record("new-1"), record("new-2"), record("kept")])  # "kept" again
    with pytest.raises(IntegrityError):
        store.record([record("dup"), record("dup")])  # duplicate inside one batch
    assert store.count() == 1
    assert store.count("offers") == 2
    for request_id in ("new-1", "new-2", "dup"):
        assert store.decision(request_id) is None
    assert [o["request_id"] for o in store.offers_for("C0000042")] == ["kept", "kept"]

    store.record([record("after")])  # the store still works after a failed transaction
    assert store.count() == 2


def test_concurrent_writers_all_land(store: EventStore) -> None:
    def writer(thread: int) -> int:
        for i in range(50):
            store.record([record(f"w{thread}-{i}", customer_id=f"C{thread:07d}",
                                 created_at=T0 + timedelta(seconds=i))])  # fmt: skip
        return thread

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sorted(pool.map(writer, range(8))) == list(range(8))
    assert store.count() == 400
    assert store.count("offers") == 800
    with store.engine.connect() as connection:
        ids = set(connection.execute(select(decisions.c.request_id)).scalars())
        per_request = connection.execute(select(offers.c.request_id)).scalars().all()
    assert ids == {f"w{t}-{i}" for t in range(8) for i in range(50)}
    assert len(per_request) == 800 and set(per_request) == ids
    assert len(store.offers_for("C0000003", limit=1000)) == 100


def test_ping(store: EventStore, tmp_path: Path) -> None:
    assert store.ping() is True
    good = store.engine
    if store.url.startswith("sqlite"):
        store.engine = create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'events.db'}")
    else:
        store.engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/test",
                                     connect_args={"connect_timeout": 2})  # fmt: skip
    try:
        assert store.ping() is False
    finally:
        store.engine.dispose()
        store.engine = good


def test_a_second_store_on_the_same_database_sees_the_rows(store: EventStore) -> None:
    """Start-up creates the tables only if absent: a restart keeps the audit trail."""
    store.record([record("before-restart")])
    again = EventStore(store.url)
    try:
        assert again.count() == 1
        assert again.decision("before-restart") is not None
    finally:
        again.close()


# ---- experiments, exposures, feedback -------------------------------------------------


def _experiment(name: str = "exp-1", channel: str = "branch", **kw: object) -> Experiment:
    raw: dict[str, object] = {
        "name": name, "channel": channel, "holdout": 0.1, "start": T0.isoformat(),
        "variants": [{"name": "control"}, {"name": "treatment", "model": "challenger"}],
    }  # fmt: skip
    raw.update(kw)
    return Experiment.from_dict(raw)


def test_exposures_and_feedback_are_kept_once(store: EventStore) -> None:
    exposed = dataclasses.replace(
        record("r1", created_at=T0), channel="branch", experiment="exp-1", variant="treatment"
    )
    store.record([exposed, record("r2", created_at=T0)])
    rows = store.frame("offers", "exp-1")
    assert sorted(rows["product_id"]) == ["ind_nomina_ult1", "ind_recibo_ult1"]
    assert set(rows["variant"]) == {"treatment"}
    assert len(store.frame("offers")) == 4

    answer = FeedbackRecord("r1", "C0000042", "ind_recibo_ult1", "declined", "officer-app",
                            created_at=T0 + timedelta(hours=1))  # fmt: skip
    store.record([answer])
    store.record([answer, dataclasses.replace(answer, outcome="shown")])  # a repeat: no-op
    assert store.count("feedback") == 2
    assert store.has_feedback("r1", "ind_recibo_ult1", "declined")
    assert not store.has_feedback("r1", "ind_recibo_ult1", "accepted")
    assert len(store.frame("feedback", "exp-1")) == 2
    assert store.frame("feedback", "another").empty

    offered = store.offered("r1")
    assert offered is not None
    assert offered["products"] == {"ind_recibo_ult1", "ind_nomina_ult1"}
    assert (offered["experiment"], offered["variant"]) == ("exp-1", "treatment")
    assert store.offered("nope") is None

    made = {(o["request_id"], o["product_id"]): o for o in store.offers_for("C0000042")}
    assert made[("r1", "ind_recibo_ult1")]["outcome"] == "declined"  # declined beats shown
    assert made[("r1", "ind_recibo_ult1")]["outcomes"] == ["shown", "declined"]
    assert made[("r2", "ind_recibo_ult1")]["outcome"] is None


def test_contact_history_counts_recent_offers_and_declines(store: EventStore) -> None:
    store.record([record("old", created_at=T0 - timedelta(days=10)),
                  record("new", created_at=T0 - timedelta(days=1)),
                  record("x", customer_id="C0000007", created_at=T0)])  # fmt: skip
    store.record([
        FeedbackRecord("old", "C0000042", "ind_nomina_ult1", "declined", "k",
                       created_at=T0 - timedelta(days=40)),
        FeedbackRecord("new", "C0000042", "ind_recibo_ult1", "declined", "k",
                       created_at=T0 - timedelta(days=1)),
        FeedbackRecord("new", "C0000042", "ind_nomina_ult1", "accepted", "k",
                       created_at=T0 - timedelta(days=1)),
    ])  # fmt: skip
    made, declined = store.contact_history(
        "C0000042", T0 - timedelta(days=7), T0 - timedelta(days=30)
    )
    assert made == 2  # the two offers of "new"; "old" is 10 days back
    assert declined == {"ind_recibo_ult1"}  # the other decline is 40 days old


def test_experiments_are_stored_and_conflicts_refused(store: EventStore) -> None:
    first = _experiment()
    store.create_experiment(first)
    assert store.experiment("exp-1") == first
    with pytest.raises(ExperimentConflict, match="exists"):
        store.create_experiment(_experiment())
    with pytest.raises(ExperimentConflict, match="runs in channel 'branch'"):
        store.create_experiment(_experiment("exp-2"))
    store.create_experiment(_experiment("exp-3", channel="phone"))  # another channel: fine

    stopped = store.stop_experiment("exp-1", T0 + timedelta(days=3))
    assert stopped is not None and stopped.stopped_at == T0 + timedelta(days=3)
    assert store.stop_experiment("missing", T0) is None
    later = _experiment("exp-2", start=(T0 + timedelta(days=4)).isoformat())
    store.create_experiment(later)  # starts after the first stopped
    assert [e.name for e in store.experiments()] == ["exp-1", "exp-3", "exp-2"]


def test_an_older_store_gains_the_new_columns(tmp_path: Path) -> None:
    """A database written before experiments existed keeps its rows and is migrated."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE decisions (request_id VARCHAR(64) PRIMARY KEY, created_at DATETIME "
                "NOT NULL, key_id VARCHAR(128) NOT NULL, customer_id VARCHAR(128) NOT NULL, "
                "cold_start BOOLEAN NOT NULL, model_name VARCHAR(256) NOT NULL, model_version "
                "VARCHAR(64) NOT NULL, objective VARCHAR(32) NOT NULL, k INTEGER NOT NULL, "
                "offers JSON NOT NULL, excluded JSON NOT NULL)"
            )
        )
        connection.execute(text(
            "INSERT INTO decisions VALUES ('old-1', '2026-01-01 00:00:00', 'k', 'C1', 0, 'm', "
            "'1', 'propensity', 3, '[]', '[]')"
        ))  # fmt: skip
    engine.dispose()
    store = EventStore(url)
    try:
        assert store.decision("old-1")["experiment"] is None  # type: ignore[index]
        store.record([dataclasses.replace(record("new-1"), experiment="e", variant="v")])
        assert store.decision("new-1")["variant"] == "v"  # type: ignore[index]
        assert store.count() == 2
    finally:
        store.close()


# ---- the writer under faults (a stand-in store whose failures the test controls) -------


class FlakyStore:
    """Fails `record` with `error` while `down` is set; counts the attempts."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.down = True
        self.attempts = 0
        self.written: list[object] = []

    def record(self, records: list[object]) -> None:
        self.attempts += 1
        if self.down:
            raise self.error
        self.written.extend(records)

    def decision(self, request_id: str) -> None:
        return None


def _unavailable() -> Exception:
    return OperationalError("INSERT", {}, Exception("connection refused"))


def test_new_events_do_not_bring_the_retry_forward() -> None:
    """While the store is down, retries back off (0.05, 0.1, ... 2 s) however many
    requests arrive meanwhile: no reconnect storm."""
    store = FlakyStore(_unavailable())
    writer = AuditWriter(store, retry_max_seconds=2.0)  # type: ignore[arg-type]
    try:
        for i in range(200):
            writer.submit([record(f"r{i}")])
            time.sleep(0.01)  # 200 requests over 2 s
        assert store.attempts <= 8, store.attempts  # 0.05 + 0.1 + ... doublings in ~2 s
        store.down = False
        assert wait_until(lambda: writer.pending == 0, timeout=10)
        assert len(store.written) == 200 and writer.healthy
    finally:
        writer.close()


def test_an_error_that_does_not_blame_a_record_is_retried_not_dropped() -> None:
    store = FlakyStore(RuntimeError("pool timeout or a read-only standby"))
    writer = AuditWriter(store, retry_max_seconds=0.1)  # type: ignore[arg-type]
    try:
        done = writer.submit([record("r1")])
        assert wait_until(lambda: not writer.healthy, timeout=5)
        store.down = False
        done.result(timeout=10)  # written, not failed
        assert writer.dropped == 0 and len(store.written) == 1
    finally:
        writer.close()


def test_a_record_the_store_refuses_fails_alone_and_is_counted(tmp_path: Path) -> None:
    events = EventStore(f"sqlite:///{tmp_path / 'e.db'}")
    writer = AuditWriter(events)
    try:
        writer.write([record("first")])
        bad = writer.submit([dataclasses.replace(record("bad"), key_id=None)])  # NOT NULL
        fine = writer.submit([record("ok")])
        fine.result(timeout=10)
        with pytest.raises(IntegrityError):
            bad.result(timeout=10)
        assert writer.dropped == 1 and writer.healthy
        again = writer.submit([record("first")])  # a retry of a commit whose answer was lost
        again.result(timeout=10)  # already there: counts as written, not as refused
        assert writer.dropped == 1
        assert events.count() == 2
    finally:
        writer.close()
        events.close()


def test_history_reads_from_many_threads_leave_the_pool_to_the_writer(tmp_path: Path) -> None:
    """Each thread's history reads use a connection of their own, not one of the pool's."""
    events = EventStore(f"sqlite:///{tmp_path / 'e.db'}")
    try:
        with ThreadPoolExecutor(24) as pool:
            list(pool.map(lambda i: events.contact_history(f"C{i}", T0, T0), range(48)))
        assert events.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        events.record([record("after")])
    finally:
        events.close()


def test_a_commit_that_hangs_makes_the_writer_unhealthy_until_it_returns() -> None:
    """A server that stops answering without closing the connection: after
    `stall_seconds` requests stop waiting for commits (and skip history reads)."""
    release = threading.Event()

    class Hanging:
        def record(self, records: list[object]) -> None:
            release.wait(10)

    writer = AuditWriter(Hanging(), stall_seconds=0.3)  # type: ignore[arg-type]
    try:
        done = writer.submit([record("r1")])
        assert writer.healthy
        assert wait_until(lambda: not writer.healthy, timeout=5)
        release.set()
        done.result(timeout=5)
        assert writer.healthy
    finally:
        writer.close()


def test_concurrent_creations_leave_one_experiment_per_channel(store: EventStore) -> None:
    """Eight admins start an experiment in the same channel at the same instant: exactly
    one succeeds."""

    def create(i: int) -> str:
        try:
            store.create_experiment(_experiment(f"race-{i}", channel="race"))
            return "created"
        except ExperimentConflict:
            return "conflict"
        except OperationalError:  # SQLite: the losing writer finds the database locked
            return "locked"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(create, range(8)))
    assert outcomes.count("created") == 1, outcomes
    assert len([e for e in store.experiments() if e.channel == "race"]) == 1
