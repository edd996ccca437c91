"""Transactional outbox: events are written in the same transaction as the state change they describe.

A service that publishes events has an ``outbox`` table (:func:`outbox_table` in its models, created by its own
Alembic revision). ``await add_event(session, envelope)`` inserts a row inside the caller's open transaction: the
event exists if and only if the change committed. The :class:`~chatplane.common.relay.OutboxRelay` publishes the
rows to Kafka in id order and marks them sent once the broker acknowledged them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    column,
    event,
    insert,
    table,
)
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from chatplane.common.db import UTCDateTime, utcnow
from chatplane.common.events import EventEnvelope, topic_of

OUTBOX = "outbox"
PROCESSED_EVENTS = "processed_events"
_PENDING = "chatplane.outbox.pending"

# BIGINT on PostgreSQL, INTEGER on SQLite (where only "INTEGER PRIMARY KEY" is the autoincrementing rowid).
_BigId = BigInteger().with_variant(Integer(), "sqlite")


def outbox_table(metadata: MetaData) -> Table:
    """The outbox table of one service. ``id`` orders the events (the relay publishes in id order)."""
    t = Table(
        OUTBOX,
        metadata,
        Column("id", _BigId, primary_key=True, autoincrement=True),
        Column("event_id", String(32), nullable=False, unique=True),
        Column("event_type", String(64), nullable=False),
        Column("topic", String(200), nullable=False),
        Column("key", String(200), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("sent_at", UTCDateTime(), nullable=True),
    )
    Index("ix_outbox_sent_at_id", t.c.sent_at, t.c.id)
    return t


def processed_events_table(metadata: MetaData) -> Table:
    """Event ids a consumer group has applied: a redelivered event is recognised and skipped."""
    return Table(
        PROCESSED_EVENTS,
        metadata,
        Column("consumer", String(100), primary_key=True),
        Column("event_id", String(32), primary_key=True),
        Column("processed_at", UTCDateTime(), nullable=False),
    )


# Lightweight table clause: add_event works with any service's outbox without knowing its MetaData.
_outbox = table(
    OUTBOX,
    column("event_id", String),
    column("event_type", String),
    column("topic", String),
    column("key", String),
    column("payload", LargeBinary),
    column("created_at", UTCDateTime()),
)


async def add_event(session: AsyncSession, env: EventEnvelope) -> None:
    """Write ``env`` to the outbox inside the session's open transaction (commits or rolls back with it).

    After the commit, the relays watching this database are woken up (see :func:`on_commit`).
    """
    await session.execute(
        insert(_outbox).values(
            event_id=env.event_id,
            event_type=env.type,
            topic=topic_of(env),
            key=env.key,
            payload=env.SerializeToString(),
            created_at=utcnow(),
        )
    )
    session.info[_PENDING] = True


async def add_events(session: AsyncSession, envs: list[EventEnvelope]) -> None:
    """Write several events to the outbox in one statement (an executemany), in the session's open transaction."""
    if not envs:
        return
    now = utcnow()
    await session.execute(
        insert(_outbox),
        [
            {"event_id": env.event_id, "event_type": env.type, "topic": topic_of(env), "key": env.key,
             "payload": env.SerializeToString(), "created_at": now}
            for env in envs
        ],
    )
    session.info[_PENDING] = True


# Columns of an outbox row, in order, for a service that writes its hot path with the database driver itself.
OUTBOX_COLUMNS = ("event_id", "event_type", "topic", "key", "payload", "created_at")


def outbox_row(env: EventEnvelope, created_at) -> tuple:
    """The values of :data:`OUTBOX_COLUMNS` for ``env`` (``created_at`` as the driver takes it)."""
    return (env.event_id, env.type, topic_of(env), env.key, env.SerializeToString(), created_at)


def committed(engine: AsyncEngine) -> None:
    """Wake the relays of ``engine``'s database after a commit that added events outside a session (written with
    the driver itself: see :func:`outbox_row`)."""
    for wake in list(_wakers.get(engine.sync_engine, ())):
        wake()


# --- wake-up after commit -----------------------------------------------------------------------------------------

_wakers: weakref.WeakKeyDictionary[Engine, list[Callable[[], None]]] = weakref.WeakKeyDictionary()


def on_commit(engine: AsyncEngine, wake: Callable[[], None]) -> Callable[[], None]:
    """Call ``wake()`` after each commit, on ``engine``, of a transaction that added events. Returns an unsubscribe."""
    callbacks = _wakers.setdefault(engine.sync_engine, [])
    callbacks.append(wake)
    _install_listeners()

    def unsubscribe() -> None:
        if wake in callbacks:
            callbacks.remove(wake)

    return unsubscribe


def _after_commit(session: Session) -> None:
    if not session.info.pop(_PENDING, False):
        return
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else getattr(bind, "engine", None)
    for wake in list(_wakers.get(engine, ())) if engine is not None else ():
        wake()


def _after_soft_rollback(session: Session, _previous_transaction) -> None:
    session.info.pop(_PENDING, None)


def _install_listeners() -> None:
    if not event.contains(Session, "after_commit", _after_commit):
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_soft_rollback", _after_soft_rollback)
