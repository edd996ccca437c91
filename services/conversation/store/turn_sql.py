"""The statements of a conversation turn, run on the database driver itself (sqlite3, asyncpg).

A message exchanged runs three of these transactions (the history read, the input stored, the reply stored), which
made them the conversation service's hottest code: through SQLAlchemy's async layer (aiosqlite's thread hop per
call, the session, greenlets) they cost several times the CPU of the same statements on the driver (README,
Performance). The rest of the store keeps SQLAlchemy. SQLite: one connection in one thread of its own, one hop per
transaction, writers taking turns with the rest of the process (``writer``). PostgreSQL: an asyncpg pool of its own.
Like SQLAlchemy's statements, each is timed into ``chatplane_db_query_duration_seconds`` and each transaction is a
client span (named after its statement, with ``db.system`` and ``db.statement``) while tracing is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from opentelemetry.trace import SpanKind

from chatplane.common import tracing
from chatplane.common.db import writer
from chatplane.common.metrics import DB_LATENCY
from chatplane.common.outbox import OUTBOX_COLUMNS, committed

MESSAGE_COLUMNS = ("id", "conversation_id", "seq", "role", "content", "status", "model", "prompt_tokens",
                   "completion_tokens", "finish_reason", "created_at", "tool_calls", "tool_call_id")
CONTEXT = ("SELECT c.title, m.id, m.seq, m.role, m.content, m.status, m.tool_calls, m.tool_call_id "
           "FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id "
           "WHERE c.id = ? AND c.user_id = ? ORDER BY m.seq DESC LIMIT ?")
TOUCH = "UPDATE conversations SET updated_at = ? WHERE id = ? AND user_id = ?"
LAST_SEQ = "SELECT max(seq) FROM messages WHERE conversation_id = ?"
SEQ_OF = "SELECT seq FROM messages WHERE id = ? AND conversation_id = ?"
INSERT_MESSAGE = (f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(MESSAGE_COLUMNS))})")
DROPPED = "SELECT id, seq FROM messages WHERE conversation_id = ? AND seq > ? ORDER BY seq"
DROP = "DELETE FROM messages WHERE conversation_id = ? AND seq > ?"
INSERT_EVENT = f"INSERT INTO outbox ({', '.join(OUTBOX_COLUMNS)}) VALUES ({', '.join('?' * len(OUTBOX_COLUMNS))})"
TRANSACTION = "; ".join((TOUCH, LAST_SEQ, INSERT_MESSAGE, INSERT_EVENT))


@contextlib.contextmanager
def _timed(operation: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    DB_LATENCY.labels(operation).observe(time.perf_counter() - started)


@dataclass(frozen=True)
class HistoryMessage:
    """A message of the history as a turn reads it."""

    id: str
    seq: int
    role: str
    content: str
    status: str
    tool_calls: str
    tool_call_id: str


class Moved(Exception):
    """The message the new ones were to follow is not the last one any more."""


# Builds the rows of a transaction once the last position and the messages removed ((id, seq), oldest first) are
# known: (message rows, outbox rows), as dicts of MESSAGE_COLUMNS and tuples of OUTBOX_COLUMNS, with created_at as a
# timezone-aware datetime.
Build = Callable[[int, list[tuple[str, int]]], tuple[list[dict[str, Any]], list[tuple]]]


class TurnSQL:
    """``context`` reads a turn's history; ``append`` stores messages and their events in one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def context(self, user_id: str, conversation_id: str, limit: int
                      ) -> tuple[str, list[HistoryMessage]] | None:
        """The conversation's title and its last ``limit`` messages, oldest first (None: not the user's)."""
        with self._span("SELECT conversations, messages", CONTEXT):
            rows = await self._fetch(CONTEXT, (conversation_id, user_id, limit))
        if not rows:
            return None
        return rows[0][0], [HistoryMessage(*row[1:]) for row in reversed(rows) if row[1] is not None]

    async def append(self, user_id: str, conversation_id: str, now: datetime, build: Build,
                     after: str | None = None, drop_after: int | None = None) -> list[dict[str, Any]] | None:
        """Touch the conversation (its lock orders concurrent appends), then insert what ``build`` makes of the last
        position. None when the conversation is not the user's; :class:`Moved` when ``after`` is not the last.
        ``drop_after``: first delete the messages after that position (a reply replaced); the new ones still go
        after the last position, so that a position is never used twice."""
        raise NotImplementedError

    async def _fetch(self, sql: str, args: tuple) -> list[tuple]:
        raise NotImplementedError

    def _span(self, name: str, statement: str):
        return tracing.tracer().start_as_current_span(name, kind=SpanKind.CLIENT, attributes={
            "db.system": self.engine.dialect.name, "db.statement": statement})

    async def close(self) -> None:
        return None


def turn_sql(engine: AsyncEngine) -> TurnSQL:
    if engine.dialect.name == "sqlite":
        return _Sqlite(engine)
    if engine.dialect.name == "postgresql":
        return _Postgres(engine)
    raise ValueError(f"no turn statements for {engine.dialect.name}")


class _Sqlite(TurnSQL):
    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self._path = engine.url.database
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="conversation-sqlite")
        self._db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:  # in the thread
        if self._db is None:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=30000")
            self._db = db
        return self._db

    async def _run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, lambda: work(self._connection()))

    async def _fetch(self, sql: str, args: tuple) -> list[tuple]:
        def read(db: sqlite3.Connection) -> list[tuple]:
            with _timed("select"):
                return db.execute(sql, args).fetchall()

        return await self._run(read)

    async def append(self, user_id, conversation_id, now, build, after=None, drop_after=None):
        stamp = _sqlite(now)

        def write(db: sqlite3.Connection):
            db.execute("BEGIN IMMEDIATE")
            try:
                with _timed("update"):
                    touched = db.execute(TOUCH, (stamp, conversation_id, user_id)).rowcount
                if touched != 1:
                    db.execute("ROLLBACK")
                    return None
                with _timed("select"):
                    last = db.execute(LAST_SEQ, (conversation_id,)).fetchone()[0] or 0
                    follows = last
                    if after is not None:
                        follows = (db.execute(SEQ_OF, (after, conversation_id)).fetchone() or (None,))[0]
                if follows != last:
                    raise Moved(conversation_id)
                dropped: list[tuple[str, int]] = []
                if drop_after is not None:
                    with _timed("delete"):
                        dropped = db.execute(DROPPED, (conversation_id, drop_after)).fetchall()
                        db.execute(DROP, (conversation_id, drop_after))
                messages, events = build(last, dropped)
                with _timed("insert"):
                    db.executemany(INSERT_MESSAGE, [tuple(_sqlite(m[c]) for c in MESSAGE_COLUMNS) for m in messages])
                    if events:
                        db.executemany(INSERT_EVENT, [(*e[:-1], stamp) for e in events])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return messages

        async with writer(self.engine):
            with self._span("INSERT messages", TRANSACTION):
                messages = await self._run(write)
        if messages:
            committed(self.engine)
        return messages

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, shut)
        self._thread.shutdown(wait=False)


def _sqlite(value: Any) -> Any:
    """A value as SQLAlchemy writes it to SQLite (UTCDateTime: naive UTC, microseconds always)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...``."""
    parts = sql.split("?")
    return "".join(f"{part}${i}" if i < len(parts) else part for i, part in enumerate(parts, 1))


class _Postgres(TurnSQL):
    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        # What SQLAlchemy's asyncpg dialect passes to asyncpg for this URL (host, user, database, and query items such as
        # ssl=require), so the turn's pool connects exactly as the engine does; the cache size is SQLAlchemy's own.
        _, self._connect_args = engine.dialect.create_connect_args(engine.url)
        self._connect_args.pop("prepared_statement_cache_size", None)
        self._connect_args.pop("prepared_statement_name_func", None)
        self._pool = None
        self._opening: asyncio.Lock | None = None

    async def _connections(self):
        if self._pool is None:
            import asyncpg

            self._opening = self._opening or asyncio.Lock()
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(min_size=1, max_size=10, **self._connect_args)
        return self._pool

    async def _fetch(self, sql: str, args: tuple) -> list[tuple]:
        pool = await self._connections()
        with _timed("select"):
            return [tuple(r) for r in await pool.fetch(_numbered(sql), *args)]

    async def append(self, user_id, conversation_id, now, build, after=None, drop_after=None):
        pool = await self._connections()
        with self._span("INSERT messages", TRANSACTION):
            async with pool.acquire() as conn, conn.transaction():
                with _timed("update"):
                    touched = await conn.execute(_numbered(TOUCH), now, conversation_id, user_id)
                if touched != "UPDATE 1":
                    return None
                with _timed("select"):
                    last = await conn.fetchval(_numbered(LAST_SEQ), conversation_id) or 0
                    follows = last
                    if after is not None:
                        follows = await conn.fetchval(_numbered(SEQ_OF), after, conversation_id)
                if follows != last:
                    raise Moved(conversation_id)
                dropped: list[tuple[str, int]] = []
                if drop_after is not None:
                    with _timed("delete"):
                        dropped = [tuple(r) for r in await conn.fetch(_numbered(DROPPED), conversation_id, drop_after)]
                        await conn.execute(_numbered(DROP), conversation_id, drop_after)
                messages, events = build(last, dropped)
                with _timed("insert"):
                    await conn.executemany(_numbered(INSERT_MESSAGE),
                                           [tuple(m[c] for c in MESSAGE_COLUMNS) for m in messages])
                    if events:
                        await conn.executemany(_numbered(INSERT_EVENT), events)
        if events:
            committed(self.engine)
        return messages

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
