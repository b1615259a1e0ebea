"""The event store: every decision the service makes, appended through SQLAlchemy.

SQLite by default (WAL mode), any SQLAlchemy URL such as
`postgresql+psycopg://user@host/db`. A decision is written in one transaction with one
row per offered product, so the audit trail and the offers table never disagree.
"""

from __future__ import annotations

import json
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine

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
)


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


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class EventStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = _engine(url)
        metadata.create_all(self.engine)

    def record(self, records: list[DecisionRecord]) -> None:
        """Append decisions and their offers in one transaction (all or nothing)."""
        if not records:
            return
        with self.engine.begin() as connection:
            connection.execute(insert(decisions), [_decision_row(r) for r in records])
            rows = [_offer_row(r, o) for r in records for o in r.offers]
            if rows:
                connection.execute(insert(offers), rows)

    def offers_for(self, customer_id: str, limit: int = 50) -> list[dict[str, Any]]:
        query = (
            select(offers.c.request_id, offers.c.product_id, offers.c.rank, offers.c.score,
                   offers.c.probability, offers.c.created_at)
            .where(offers.c.customer_id == customer_id)
            .order_by(offers.c.created_at.desc(), offers.c.rank)
            .limit(limit)
        )  # fmt: skip
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

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
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _decision_row(record: DecisionRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id, "created_at": record.created_at,
        "key_id": record.key_id, "customer_id": record.customer_id,
        "cold_start": record.cold_start, "model_name": record.model_name,
        "model_version": record.model_version, "objective": record.objective, "k": record.k,
        "offers": json.loads(json.dumps(record.offers)),
        "excluded": json.loads(json.dumps(record.excluded)),
    }  # fmt: skip


def _offer_row(record: DecisionRecord, offer: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_id": record.request_id, "customer_id": record.customer_id,
        "product_id": offer["product_id"], "rank": offer["rank"], "score": offer["score"],
        "probability": offer["probability"], "created_at": record.created_at,
    }  # fmt: skip


class AuditWriter:
    """One writer thread with group commit: requests hand over their decisions and wait
    until they are committed; whatever queued up meanwhile is written in one transaction.
    With one writer there is no lock contention between request threads (SQLite), and a
    busy service commits far less often than once per request."""

    def __init__(self, store: EventStore, max_batch: int = 500) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.Queue[tuple[list[DecisionRecord], Future[None]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="audit-writer")
        self._thread.start()

    def write(self, records: list[DecisionRecord], timeout: float = 30.0) -> None:
        """Return once `records` are committed; raise if they could not be."""
        if records:
            self.submit(records).result(timeout)

    def submit(self, records: list[DecisionRecord]) -> Future[None]:
        """Hand over `records`; the future completes when they are committed."""
        done: Future[None] = Future()
        if not records:
            done.set_result(None)
            return done
        self._queue.put((records, done))
        return done

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            self._commit(batch)

    def _commit(self, batch: list[tuple[list[DecisionRecord], Future[None]]]) -> None:
        try:
            self.store.record([r for records, _ in batch for r in records])
        except Exception:
            for records, done in batch:  # one bad request must not fail the others
                try:
                    self.store.record(records)
                    done.set_result(None)
                except Exception as exc:
                    done.set_exception(exc)
            return
        for _, done in batch:
            done.set_result(None)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
