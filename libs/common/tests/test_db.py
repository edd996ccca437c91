"""UTCDateTime keeps timestamps timezone-aware UTC on SQLite and PostgreSQL; the naming convention names constraints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, UniqueConstraint, insert, select, text
from sqlalchemy.exc import StatementError

from chatplane.common.db import NAMING_CONVENTION, UTCDateTime, make_engine, utcnow


def _table() -> Table:
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    return Table(
        "events",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("kind", String(10)),
        Column("at", UTCDateTime(), nullable=True),
        UniqueConstraint("kind", "at"),
    )


def test_utcnow_is_aware_utc():
    assert utcnow().tzinfo is UTC


def test_multi_column_constraints_are_named_after_every_column():
    names = {c.name for c in _table().constraints}
    assert names == {"pk_events", "uq_events_kind_at"}


async def test_timestamps_come_back_as_the_same_instant_in_utc(database_url):
    table = _table()
    engine = make_engine(database_url)
    plus_two = timezone(timedelta(hours=2))
    written = datetime(2026, 3, 1, 14, 30, 15, 123456, tzinfo=plus_two)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)
            rows = [{"id": 1, "kind": "a", "at": written}, {"id": 2, "kind": "b", "at": None}]
            await conn.execute(insert(table), rows)
        async with engine.connect() as conn:
            rows = dict((await conn.execute(select(table.c.id, table.c.at))).all())
            # Stored as UTC: comparisons in SQL against a UTC bound value see the right instant.
            later = await conn.execute(select(table.c.id).where(table.c.at > datetime(2026, 3, 1, 12, 30, tzinfo=UTC)))
            if database_url.startswith("sqlite"):
                raw = (await conn.execute(text("SELECT at FROM events WHERE id = 1"))).scalar_one()
                assert raw.startswith("2026-03-01 12:30:15.123456")  # naive UTC in the file
        assert rows[1] == written and rows[1].tzinfo == UTC and rows[1].hour == 12
        assert rows[2] is None
        assert later.scalars().all() == [1]
    finally:
        await engine.dispose()


async def test_naive_datetimes_are_refused(sqlite_database_url):
    table = _table()
    engine = make_engine(sqlite_database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)
        with pytest.raises(StatementError, match="naive datetime"):
            async with engine.begin() as conn:
                await conn.execute(insert(table), [{"id": 1, "kind": "a", "at": datetime(2026, 3, 1, 12, 0)}])
        async with engine.connect() as conn:
            assert (await conn.execute(select(table.c.id))).all() == []
    finally:
        await engine.dispose()
