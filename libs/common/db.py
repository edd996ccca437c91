"""Database helpers for the services that own tables: async engines, Alembic migrations, UTC timestamps."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import DateTime, event, text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext import asyncio as sa_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.types import TypeDecorator

# Constraint and index names for ``MetaData(naming_convention=NAMING_CONVENTION)``: stable names that migrations
# can refer to on every backend. ``column_0_N_name`` joins all the columns of a multi-column constraint with "_".
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    """A row id: uuid4 as 32 hex characters."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (what :class:`UTCDateTime` columns take)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend; a naive datetime is refused.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC (which keeps
    string comparisons in SQL correct) and come back marked as UTC. Microseconds are kept, which keeps
    (timestamp, id) keyset cursors exact.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ensure_sqlite_folder(url: str) -> None:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine. SQLite files get WAL and foreign keys; their parent folder is created.

    Bound parameters are hidden from SQL error messages: they hold user data (emails, hashes, message text) that
    must not reach the logs.
    """
    _ensure_sqlite_folder(url)
    # Through the module's attribute, which OpenTelemetry's SQLAlchemy instrumentation wraps while tracing is on
    # (chatplane.common.tracing): a name imported from it at start would bypass the wrapper.
    create_async_engine = sa_asyncio.create_async_engine
    if url.startswith("sqlite"):
        engine = create_async_engine(url, echo=echo, hide_parameters=True, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_async_engine(
        url, echo=echo, hide_parameters=True, pool_pre_ping=True, pool_size=10, max_overflow=10
    )


_write_locks: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = weakref.WeakKeyDictionary()


def writer(engine: AsyncEngine) -> contextlib.AbstractAsyncContextManager[Any]:
    """Hold it around a write transaction: on SQLite, this process's writers then take turns in order.

    SQLite lets one transaction write at a time; the others get "database is locked" and its busy handler retries
    them after sleeps that grow to 100 ms, which made the tail latency of concurrent conversation messages long
    (README, "Performance"). An asyncio lock per engine queues them instead.
    PostgreSQL locks rows, not the database: no lock there. Other processes on the same file still meet the busy
    handler.
    """
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    lock = _write_locks.get(engine)
    if lock is None:
        lock = _write_locks[engine] = asyncio.Lock()
    return lock


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(migrations_dir: Path, url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def migrate(migrations_dir: Path, url: str, revision: str = "head") -> None:
    """Upgrade the database to ``revision``. Runs Alembic in a thread (its env.py drives the async engine)."""
    _ensure_sqlite_folder(url)
    await asyncio.to_thread(command.upgrade, alembic_config(migrations_dir, url), revision)


def migration_lock_key(version_table: str) -> int:
    """The PostgreSQL advisory lock id that migrations of ``version_table`` hold (a signed 64-bit integer)."""
    digest = hashlib.sha256(f"chatplane-migrations:{version_table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def run_alembic_env(target_metadata, version_table: str) -> None:
    """The body of a service's migrations/env.py: online migrations over the async engine, offline SQL otherwise.

    Each service keeps its own ``version_table``, so that services sharing one database never collide. On
    PostgreSQL the migration transaction first takes an advisory lock of its own (``migration_lock_key``): replicas
    that start together (AUTO_MIGRATE) or a migrations Job next to them migrate one at a time, and each reads the
    current revision only once it holds the lock, so the later ones find nothing left to do.
    """
    from alembic import context
    from sqlalchemy import pool

    config = context.config
    url = config.get_main_option("sqlalchemy.url")

    if context.is_offline_mode():
        context.configure(
            url=url,
            target_metadata=target_metadata,
            literal_binds=True,
            render_as_batch=True,
            version_table=version_table,
        )
        with context.begin_transaction():
            context.run_migrations()
        return

    def do_run(connection) -> None:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True, version_table=version_table
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": migration_lock_key(version_table)}
                )
            context.run_migrations()

    async def run_async() -> None:
        engine = sa_asyncio.create_async_engine(url, poolclass=pool.NullPool, hide_parameters=True)
        async with engine.connect() as conn:
            await conn.run_sync(do_run)
        await engine.dispose()

    asyncio.run(run_async())
