"""The event store: every decision the service makes, appended through SQLAlchemy.

SQLite by default (WAL mode), any SQLAlchemy URL such as
`postgresql+psycopg://user@host/db`. A decision is written in one transaction with one
row per offered product, so the audit trail and the offers table never disagree. An
offer made under an experiment is an exposure: its row carries the experiment and the
variant. Feedback (shown / accepted / declined / converted) is one row per request,
product and outcome, so a repeat is a no-op. Experiments are stored here too, so every
worker reads the same definitions.

A cold start's asserted inputs (attributes, holdings, dropped) are kept in its decision
row, so compliance sees what the officer claimed about the client. Each offer row names
the key that made it and whether it counts toward the client's contact cap (a repeat of
the same product by the same key within the repeat window does not).

New columns are added to existing tables at start-up (additive migration only).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from recommender.errors import first_line
from recommender.experiment import Experiment

log = logging.getLogger("serving.events")
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)  # the store is at fault
RECORD_FAULTS = (IntegrityError, DataError)  # this record is at fault; anything else: retry

metadata = MetaData()

decisions = Table(
    "decisions",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("key_id", String(128), nullable=False),
    Column("customer_id", String(128), nullable=False, index=True),
    Column("cold_start", Boolean, nullable=False),
    Column("model_name", String(256), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("objective", String(32), nullable=False),
    Column("k", Integer, nullable=False),
    Column("offers", JSON, nullable=False),
    Column("excluded", JSON, nullable=False),
    Column("channel", String(64), nullable=True),
    Column("experiment", String(64), nullable=True, index=True),
    Column("variant", String(64), nullable=True),
    Column("customer_input", JSON, nullable=True),  # a cold start's asserted inputs
)

offers = Table(
    "offers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("customer_id", String(128), nullable=False, index=True),
    Column("product_id", String(128), nullable=False),
    Column("rank", Integer, nullable=False),
    Column("score", Float, nullable=False),
    Column("probability", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("experiment", String(64), nullable=True, index=True),
    Column("variant", String(64), nullable=True),
    Column("key_id", String(128), nullable=True),  # NULL: written before keys were kept here
    Column("counted", Boolean, nullable=True),  # toward the contact cap; NULL (older): yes
)

OUTCOMES = ("shown", "accepted", "declined", "converted")

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("customer_id", String(128), nullable=False, index=True),
    Column("product_id", String(128), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("source", String(16), nullable=False),  # "api" | "snapshot"
    Column("key_id", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("request_id", "product_id", "outcome", name="uq_feedback_once"),
)

experiments = Table(
    "experiments",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("channel", String(64), nullable=False),
    Column("definition", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("stopped_at", DateTime(timezone=True), nullable=True),
)


# Statements on the request path, built once (building them per call costs more than
# running them: 270 -> 75 microseconds for the contact history on SQLite).
_OFFERS_SINCE = (
    select(func.count())
    .select_from(offers)
    .where(offers.c.customer_id == bindparam("c"), offers.c.created_at >= bindparam("t"),
           offers.c.counted.isnot(False))
)  # fmt: skip
_REPEATS_SINCE = select(offers.c.product_id).distinct().where(
    offers.c.customer_id == bindparam("c"), offers.c.key_id == bindparam("k"),
    offers.c.created_at >= bindparam("t"), offers.c.counted.isnot(False),
)  # fmt: skip
_DECLINED_SINCE = select(feedback.c.product_id).where(
    feedback.c.customer_id == bindparam("c"), feedback.c.outcome == "declined",
    feedback.c.created_at >= bindparam("t"),
)  # fmt: skip


_SQLITE_OFFERS_SINCE = (
    "SELECT COUNT(*) FROM offers WHERE customer_id = ? AND created_at >= ? "
    "AND (counted IS NULL OR counted)"
)
_SQLITE_REPEATS_SINCE = (
    "SELECT DISTINCT product_id FROM offers WHERE customer_id = ? AND key_id = ? "
    "AND created_at >= ? AND (counted IS NULL OR counted)"
)
_SQLITE_DECLINED_SINCE = (
    "SELECT product_id FROM feedback WHERE customer_id = ? AND outcome = 'declined' "
    "AND created_at >= ?"
)


def _sqlite_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class ExperimentConflict(Exception):
    """An experiment with that name exists, or another runs in the channel."""


@dataclass(frozen=True)
class FeedbackRecord:
    request_id: str
    customer_id: str
    product_id: str
    outcome: str
    key_id: str
    source: str = "api"
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class DecisionRecord:
    request_id: str
    key_id: str
    customer_id: str
    cold_start: bool
    model_name: str
    model_version: str
    objective: str
    k: int
    offers: list[dict[str, Any]]
    excluded: list[dict[str, str]]
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    channel: str | None = None
    experiment: str | None = None
    variant: str | None = None
    customer_input: dict[str, Any] | None = None  # cold start: what the caller asserted
    repeats: list[str] = field(default_factory=list)  # offered, not counted toward the cap


Record = DecisionRecord | FeedbackRecord


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class EventStore:
    def __init__(self, url: str, tolerate_unavailable: bool = False) -> None:
        """Creates (or migrates) the tables. With `tolerate_unavailable`, a store that
        cannot be reached yet is set up on the first write instead (the service starts
        and queues events until it answers)."""
        self.url = url
        self.engine: Engine = _engine(url)
        self.ready = False
        self._local = threading.local()  # per-thread DBAPI connections for hot reads
        try:
            self.ensure_schema()
        except UNAVAILABLE as exc:
            if not tolerate_unavailable:
                raise
            log.error("event store unavailable at start-up (%s); events are queued until "
                      "it answers", first_line(exc))  # fmt: skip

    def ensure_schema(self) -> None:
        if not self.ready:
            metadata.create_all(self.engine)
            _add_missing_columns(self.engine)
            self.ready = True

    def record(self, records: Sequence[Record]) -> None:
        """Append decisions with their offers, and feedback, in one transaction (all or
        nothing). Feedback already recorded is skipped (idempotent)."""
        chosen = [r for r in records if isinstance(r, DecisionRecord)]
        answers = [r for r in records if isinstance(r, FeedbackRecord)]
        if not records:
            return
        self.ensure_schema()
        with self.engine.begin() as connection:
            if chosen:
                connection.execute(insert(decisions), [_decision_row(r) for r in chosen])
                rows = [_offer_row(r, o) for r in chosen for o in r.offers]
                if rows:
                    connection.execute(insert(offers), rows)
            if answers:
                connection.execute(_insert_once(self.engine, feedback),
                                   [r.__dict__ for r in answers])  # fmt: skip

    def replay(self, directory: Path) -> int:
        """Write the events a previous run spilled at shutdown (decisions already in the
        store are skipped), then delete the files. Returns how many were written."""
        written = 0
        for path in sorted(Path(directory).glob("unwritten-*.jsonl")):
            claimed = path.with_name(f"{path.stem}.replaying-{os.getpid()}")
            try:  # one process per file: other workers starting at once skip it
                os.rename(path, claimed)
            except FileNotFoundError:
                continue
            records = read_spill(claimed)
            ids = [r.request_id for r in records if isinstance(r, DecisionRecord)]
            with self.engine.connect() as connection:
                have = set(connection.execute(
                    select(decisions.c.request_id).where(decisions.c.request_id.in_(ids))
                ).scalars()) if ids else set()  # fmt: skip
            fresh = [r for r in records
                     if not (isinstance(r, DecisionRecord) and r.request_id in have)]  # fmt: skip
            self.record(fresh)
            written += len(fresh)
            claimed.unlink()
            log.warning("wrote %d events spilled by an earlier run (%s)", len(fresh), path.name)
        return written

    def offered(self, request_id: str) -> dict[str, Any] | None:
        """The decision `request_id` and the products it offered (None: unknown)."""
        with self.engine.connect() as connection:
            chosen = (decisions.c.customer_id, decisions.c.key_id, decisions.c.experiment,
                      decisions.c.variant)  # fmt: skip
            row = connection.execute(
                select(*chosen).where(decisions.c.request_id == request_id)
            ).first()
            if row is None:
                return None
            products = connection.execute(
                select(offers.c.product_id).where(offers.c.request_id == request_id)
            ).scalars()
            return {**row._mapping, "products": set(products)}

    def has_feedback(self, request_id: str, product_id: str, outcome: str) -> bool:
        query = select(feedback.c.id).where(
            feedback.c.request_id == request_id, feedback.c.product_id == product_id,
            feedback.c.outcome == outcome,
        )  # fmt: skip
        with self.engine.connect() as connection:
            return connection.execute(query).first() is not None

    def contact_history(self, customer_id: str, offers_since: datetime,
                        declines_since: datetime) -> tuple[int, set[str]]:  # fmt: skip
        """(offers made to the client since `offers_since` that count toward the contact
        cap, products the client declined since `declines_since`): what the contact
        policy needs."""
        if self.engine.dialect.name == "sqlite":
            return self._contact_history_sqlite(customer_id, offers_since, declines_since)
        with self.engine.connect() as connection:
            n = connection.execute(_OFFERS_SINCE, {"c": customer_id, "t": offers_since})
            declined = connection.execute(_DECLINED_SINCE, {"c": customer_id, "t": declines_since})
            return int(n.scalar_one()), set(declined.scalars())

    def counted_by(self, customer_id: str, key_id: str, since: datetime) -> set[str]:
        """Products `key_id` offered the client since `since` in offers that counted toward
        the contact cap: offering them again from the same key is a repeat, not a new
        contact (so one key looking at a client again and again cannot use up the cap)."""
        params = {"c": customer_id, "k": key_id, "t": since}
        if self.engine.dialect.name == "sqlite":
            rows = self._sqlite_read(
                [(_SQLITE_REPEATS_SINCE, (customer_id, key_id, _sqlite_time(since)))], params
            )
            return {str(row[0]) for row in rows[0]}
        with self.engine.connect() as connection:
            return set(connection.execute(_REPEATS_SINCE, params).scalars())

    def _contact_history_sqlite(self, customer_id: str, offers_since: datetime,
                                declines_since: datetime) -> tuple[int, set[str]]:  # fmt: skip
        made, declined = self._sqlite_read([
            (_SQLITE_OFFERS_SINCE, (customer_id, _sqlite_time(offers_since))),
            (_SQLITE_DECLINED_SINCE, (customer_id, _sqlite_time(declines_since))),
        ], {"customer_id": customer_id})  # fmt: skip
        return (int(made[0][0]) if made else 0), {str(row[0]) for row in declined}

    def _sqlite_read(self, queries: list[tuple[str, tuple[Any, ...]]],
                     params: dict[str, Any]) -> list[list[Any]]:  # fmt: skip
        """The rows of each query, read on a per-thread sqlite3 connection of their own
        (outside SQLAlchemy's pool, which they would otherwise drain, one per thread):
        SQLAlchemy's execution machinery is most of the cost of a request's history read
        (270 -> 16 microseconds). Times are compared as SQLAlchemy stores them in SQLite
        (UTC)."""
        local = self._local
        connection = getattr(local, "connection", None)
        try:
            if connection is None or local.database != self.engine.url.database:
                database = str(self.engine.url.database)
                connection = sqlite3.connect(database, timeout=5, check_same_thread=True)
                local.connection, local.database = connection, database
            cursor = connection.cursor()
            out = []
            for sql, args in queries:
                cursor.execute(sql, args)
                out.append(cursor.fetchall())
            connection.rollback()
            return out
        except Exception as exc:
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()
            local.connection = None
            raise OperationalError("contact history", params, exc) from exc

    # ---- experiments -----------------------------------------------------------------
    def create_experiment(self, experiment: Experiment) -> None:
        """Store a new experiment; ExperimentConflict if the name is taken or another
        experiment runs in the same channel at overlapping times.

        Insert first, then look for an overlap in the same transaction: the insert takes
        the write lock (SQLite serialises writers; PostgreSQL also takes a lock per
        channel), so two admins creating at the same instant cannot both succeed."""
        try:
            with self.engine.begin() as connection:
                if self.engine.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:c))"),
                                       {"c": f"experiments:{experiment.channel}"})  # fmt: skip
                connection.execute(insert(experiments).values(
                    name=experiment.name, channel=experiment.channel,
                    definition=experiment.to_dict(), created_at=datetime.now(UTC),
                    stopped_at=experiment.stopped_at,
                ))  # fmt: skip
                for other in self._experiments(connection, experiment.channel):
                    if other.name != experiment.name and other.overlaps(experiment):
                        raise ExperimentConflict(
                            f"experiment {other.name!r} runs in channel {other.channel!r} at "
                            "overlapping times; stop it first (POST /v1/experiments/"
                            f"{other.name}/stop) or choose another channel or start time"
                        )
        except IntegrityError as exc:
            raise ExperimentConflict(
                f"an experiment named {experiment.name!r} exists; pick another name"
            ) from exc

    def experiments(self) -> list[Experiment]:
        with self.engine.connect() as connection:
            return self._experiments(connection, None)

    def experiment(self, name: str) -> Experiment | None:
        return next((e for e in self.experiments() if e.name == name), None)

    def stop_experiment(self, name: str, when: datetime) -> Experiment | None:
        with self.engine.begin() as connection:
            row = connection.execute(
                select(experiments.c.definition).where(experiments.c.name == name)
            ).first()
            if row is None:
                return None
            definition = dict(row.definition)
            if not definition.get("stopped_at"):
                definition["stopped_at"] = when.isoformat()
                connection.execute(
                    experiments.update().where(experiments.c.name == name)
                    .values(definition=definition, stopped_at=when)
                )  # fmt: skip
            return Experiment.from_dict(definition)

    @staticmethod
    def _experiments(connection: Any, channel: str | None) -> list[Experiment]:
        query = select(experiments.c.definition).order_by(experiments.c.created_at)
        if channel is not None:
            query = query.where(experiments.c.channel == channel)
        return [Experiment.from_dict(row.definition) for row in connection.execute(query)]

    # ---- what reports read -----------------------------------------------------------
    def frame(self, table: str, experiment: str | None = None) -> pd.DataFrame:
        """A whole table (or an experiment's rows of it) as a DataFrame."""
        target = metadata.tables[table]
        query = select(target)
        if experiment is not None:
            if "experiment" in target.c:
                query = query.where(target.c.experiment == experiment)
            else:  # feedback: through its decision
                ids = select(decisions.c.request_id).where(decisions.c.experiment == experiment)
                query = query.where(target.c.request_id.in_(ids))
        with self.engine.connect() as connection:
            result = connection.execute(query)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))

    def offers_for(self, customer_id: str, limit: int = 50) -> list[dict[str, Any]]:
        query = (
            select(offers.c.request_id, offers.c.product_id, offers.c.rank, offers.c.score,
                   offers.c.probability, offers.c.created_at)
            .where(offers.c.customer_id == customer_id)
            .order_by(offers.c.created_at.desc(), offers.c.rank)
            .limit(limit)
        )  # fmt: skip
        with self.engine.connect() as connection:
            made = [dict(row._mapping) for row in connection.execute(query)]
            ids = {m["request_id"] for m in made}
            answers = connection.execute(
                select(feedback.c.request_id, feedback.c.product_id, feedback.c.outcome)
                .where(feedback.c.request_id.in_(ids))
            ).all() if ids else []  # fmt: skip
        seen: dict[tuple[str, str], list[str]] = {}
        for request_id, product_id, outcome in answers:
            seen.setdefault((request_id, product_id), []).append(outcome)
        for m in made:
            got = sorted(seen.get((m["request_id"], m["product_id"]), []), key=OUTCOMES.index)
            m["outcomes"] = got
            m["outcome"] = _furthest(got)
        return made

    def decision(self, request_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(decisions).where(decisions.c.request_id == request_id)
            ).first()
        return dict(row._mapping) if row else None

    def count(self, table: str = "decisions") -> int:
        target = metadata.tables[table]
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(target)).scalar_one())

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def close(self) -> None:
        self.engine.dispose()


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 5})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                         connect_args=_connect_timeout(url))  # fmt: skip


def _connect_timeout(url: str) -> dict[str, Any]:
    """A short connect timeout, so an unreachable server fails fast (PostgreSQL)."""
    if not url.startswith("postgresql"):
        return {}
    # fail fast, and notice a server that stops answering without closing the connection
    return {"connect_timeout": 3, "keepalives": 1, "keepalives_idle": 5,
            "keepalives_interval": 2, "keepalives_count": 2, "tcp_user_timeout": 5000}  # fmt: skip


def _decision_row(record: DecisionRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id, "created_at": record.created_at,
        "key_id": record.key_id, "customer_id": record.customer_id,
        "cold_start": record.cold_start, "model_name": record.model_name,
        "model_version": record.model_version, "objective": record.objective, "k": record.k,
        "offers": json.loads(json.dumps(record.offers)),
        "excluded": json.loads(json.dumps(record.excluded)),
        "channel": record.channel, "experiment": record.experiment, "variant": record.variant,
        "customer_input": (None if record.customer_input is None
                           else json.loads(json.dumps(record.customer_input))),
    }  # fmt: skip


def _offer_row(record: DecisionRecord, offer: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_id": record.request_id, "customer_id": record.customer_id,
        "product_id": offer["product_id"], "rank": offer["rank"], "score": offer["score"],
        "probability": offer["probability"], "created_at": record.created_at,
        "experiment": record.experiment, "variant": record.variant,
        "key_id": record.key_id, "counted": offer["product_id"] not in record.repeats,
    }  # fmt: skip


def _furthest(outcomes: list[str]) -> str | None:
    """The outcome that tells most: converted, then accepted or declined, then shown."""
    for outcome in ("converted", "accepted", "declined", "shown"):
        if outcome in outcomes:
            return outcome
    return None


def _insert_once(engine: Engine, table: Table) -> Any:
    """INSERT that skips rows violating a unique constraint (SQLite and PostgreSQL)."""
    if engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    return insert(table)


def _add_missing_columns(engine: Engine) -> None:
    """Additive migration: columns this version defines that an older store lacks are
    added (all of them nullable), so an existing events database keeps its history."""
    found = inspect(engine)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in found.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as connection:
                connection.execute(
                    text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                )


class QueueFull(Exception):
    """The writer holds as many unwritten events as it may; the caller must refuse."""


class AuditWriter:
    """One writer thread with group commit: requests hand over their events and (while
    the store answers) wait until they are committed; whatever queued up meanwhile is
    written in one transaction. With one writer there is no lock contention between
    request threads (SQLite), and a busy service commits far less often than once per
    request.

    When the store is unavailable (connection refused, locked, gone: `OperationalError`
    or `InterfaceError`) the batch stays at the head of the queue and is retried with
    backoff; `healthy` turns False, so request paths stop waiting and stop reading from
    the store. At most `max_pending` events wait in memory: beyond that `submit` raises
    QueueFull and the caller refuses the request (counted), so memory is bounded and
    nothing served goes unrecorded. A record the store rejects on its own (e.g. a
    duplicate key) fails alone. `close` flushes; what still cannot be written is spilled
    to a JSON-lines file that `EventStore.replay` writes at the next start."""

    def __init__(self, store: EventStore, max_batch: int = 500, max_pending: int = 50_000,
                 spill_dir: Path | None = None, retry_max_seconds: float = 2.0,
                 stall_seconds: float = 5.0,
                 on_state: Callable[[AuditWriter], None] | None = None) -> None:  # fmt: skip
        self.store = store
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.spill_dir = spill_dir
        self.retry_max_seconds = retry_max_seconds
        self.on_state = on_state or (lambda writer: None)
        self._up = True
        self._commit_since: float | None = None  # when the commit in progress began
        self.stall_seconds = stall_seconds
        self.last_error: str | None = None
        self.pending = 0  # records queued, not yet committed
        self.spilled = 0
        self.dropped = 0  # records the store refused on their own (logged)
        self._queue: deque[tuple[Sequence[Record], Future[None]]] = deque()
        self._changed = threading.Condition()
        self._closing = False
        self._give_up = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="audit-writer")
        self._thread.start()

    @property
    def healthy(self) -> bool:
        """The store takes writes: the last attempt succeeded and no commit has been
        hanging for more than `stall_seconds` (a server that stopped answering without
        closing the connection)."""
        since = self._commit_since
        stalled = since is not None and time.monotonic() - since > self.stall_seconds
        return self._up and not stalled

    def write(self, records: Sequence[Record], timeout: float = 30.0) -> None:
        """Return once `records` are committed; raise if they could not be."""
        if records:
            self.submit(records).result(timeout)

    def submit(self, records: Sequence[Record]) -> Future[None]:
        """Hand over `records`; the future completes when they are committed. QueueFull
        when `max_pending` events already wait."""
        done: Future[None] = Future()
        if not records:
            done.set_result(None)
            return done
        with self._changed:
            if self._closing:
                raise QueueFull("the service is shutting down")
            if self.pending + len(records) > self.max_pending:
                raise QueueFull(
                    f"{self.pending} events are waiting for the event store (limit "
                    f"{self.max_pending}): {self.last_error}"
                )
            self._queue.append((records, done))
            self.pending += len(records)
            self._changed.notify()
        self.on_state(self)
        return done

    def _run(self) -> None:
        delay = 0.05
        while True:
            with self._changed:
                while not self._queue and not self._closing:
                    self._changed.wait()
                if not self._queue:
                    return  # closing and drained
                batch: list[tuple[Sequence[Record], Future[None]]] = []
                count = 0
                for item in self._queue:
                    if batch and count + len(item[0]) > self.max_batch:
                        break
                    batch.append(item)
                    count += len(item[0])
            if self._commit(batch):
                delay = 0.05
                continue
            retry_at = time.monotonic() + delay  # unavailable: retry the same batch later;
            with self._changed:  # new events (notify) do not bring the retry forward
                while not self._give_up and (left := retry_at - time.monotonic()) > 0:
                    self._changed.wait(left)
                if self._give_up:
                    return
            delay = min(delay * 2, self.retry_max_seconds)

    def _commit(self, batch: list[tuple[Sequence[Record], Future[None]]]) -> bool:
        """Write `batch` (the head of the queue). False if the store is unavailable.

        Only errors that blame a record (a constraint, bad data) fail that record alone;
        every other error is treated as the store being unavailable, and retried."""
        self._commit_since = time.monotonic()
        try:
            self.store.record([r for records, _ in batch for r in records])
        except RECORD_FAULTS:
            return self._one_by_one(batch)
        except Exception as exc:
            self._unavailable(exc)
            return False
        finally:
            self._commit_since = None
        for records, done in batch:
            self._pop(records)
            done.set_result(None)
        self._available()
        return True

    def _one_by_one(self, batch: list[tuple[Sequence[Record], Future[None]]]) -> bool:
        for records, done in batch:  # one bad request must not fail the others
            try:
                self.store.record(records)
            except RECORD_FAULTS as exc:
                self._pop(records)
                if self._already_written(records):  # a commit whose answer was lost
                    done.set_result(None)
                    continue
                self.dropped += len(records)
                log.error("event store refused %d event(s) of request %s: %s", len(records),
                          getattr(records[0], "request_id", "?"), first_line(exc))  # fmt: skip
                done.set_exception(exc)
            except Exception as exc:
                self._unavailable(exc)
                return False
            else:
                self._pop(records)
                done.set_result(None)
        self._available()
        return True

    def _already_written(self, records: Sequence[Record]) -> bool:
        decided = [r for r in records if isinstance(r, DecisionRecord)]
        try:
            return bool(decided) and all(self.store.decision(r.request_id) for r in decided)
        except Exception:
            return False

    def _pop(self, records: Sequence[Record]) -> None:
        with self._changed:
            if self._queue and self._queue[0][0] is records:  # close() may have spilled it
                self._queue.popleft()
                self.pending -= len(records)

    def _unavailable(self, exc: Exception) -> None:
        message = first_line(exc)
        if self._up or message != self.last_error:
            log.error("event store unavailable, %d events queued: %s", self.pending, message)
        self._up = False
        self.last_error = message
        self.on_state(self)

    def _available(self) -> None:
        if not self._up:
            log.warning("event store available again; queued events written")
        self._up = True
        self.last_error = None
        self.on_state(self)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking events, write what is queued (for up to `timeout` seconds), and
        spill what the store still refuses to a file replayed at the next start."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():  # still retrying an unavailable store
            with self._changed:
                self._give_up = True
                self._changed.notify_all()
            self._thread.join(timeout=5)
        with self._changed:
            left = list(self._queue)
            self._queue.clear()
            self.pending = 0
        if left:
            self._spill(left)

    def _spill(self, left: list[tuple[Sequence[Record], Future[None]]]) -> None:
        records = [r for records, _ in left for r in records]
        if self.spill_dir is None:
            log.error("%d events could not be written and there is no spill directory",
                      len(records))  # fmt: skip
            for _, done in left:
                done.set_exception(RuntimeError("event store unavailable at shutdown"))
            return
        path = spill(records, self.spill_dir)
        self.spilled += len(records)
        log.error("event store unavailable at shutdown: %d events kept in %s, written at the "
                  "next start", len(records), path)  # fmt: skip
        for _, done in left:
            done.set_result(None)


def spill(records: Sequence[Record], directory: Path) -> Path:
    """Write records to a new JSON-lines file in `directory` (atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    path = directory / f"unwritten-{stamp}-{os.getpid()}.jsonl"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as handle:
        for record in records:
            kind = "decision" if isinstance(record, DecisionRecord) else "feedback"
            row = {**record.__dict__, "created_at": record.created_at.isoformat()}
            handle.write(json.dumps({"kind": kind, "record": row}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def read_spill(path: Path) -> list[Record]:
    out: list[Record] = []
    for line in path.read_text().splitlines():
        item = json.loads(line)
        row = dict(item["record"])
        row["created_at"] = datetime.fromisoformat(row["created_at"])
        out.append(DecisionRecord(**row) if item["kind"] == "decision" else FeedbackRecord(**row))
    return out
