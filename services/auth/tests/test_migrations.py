"""The hand-written migration creates exactly the schema the models describe, on SQLite and PostgreSQL; migrations
running at the same time take turns on a PostgreSQL advisory lock."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from chatplane.auth.models import Base
from chatplane.auth.server import MIGRATIONS_DIR, migrate
from chatplane.auth.settings import AuthSettings
from chatplane.common.db import alembic_config, make_engine, migration_lock_key


async def test_migration_matches_the_models_and_downgrades(database_url, tmp_path):
    settings = AuthSettings(data_dir=tmp_path, database_url=database_url)
    await migrate(settings)
    await migrate(settings)  # idempotent: a second start does nothing
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(
                MigrationContext.configure(c, opts={"version_table": "alembic_version_auth"}), Base.metadata))
            assert diff == []
        await engine.dispose()

        await asyncio.to_thread(command.downgrade, alembic_config(MIGRATIONS_DIR, database_url), "base")
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert not tables & {"users", "api_keys"}
    finally:
        await engine.dispose()


@pytest.fixture
def fresh_pg_url(pg_database_factory):
    with pg_database_factory() as url:
        yield url


async def test_replicas_starting_together_migrate_one_at_a_time(fresh_pg_url, tmp_path):
    """Several replicas with AUTO_MIGRATE (and the migrations Job) start at once against one PostgreSQL database:
    every one succeeds, because each waits for the others' advisory lock and then finds nothing left to do. (One
    process each, as replicas are: Alembic's context is process-global.)"""
    env = {**os.environ, "CHATPLANE_AUTH_DATABASE_URL": fresh_pg_url, "CHATPLANE_DATA_DIR": str(tmp_path)}
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatplane.auth", "migrate", env=env, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), 120)
    assert [p.returncode for p in processes] == [0] * 4, [err.decode()[-2000:] for _, err in results]
    engine = make_engine(fresh_pg_url)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            versions = (await conn.execute(text("SELECT count(*) FROM alembic_version_auth"))).scalar_one()
        assert {"users", "api_keys", "alembic_version_auth"} <= tables and versions == 1
    finally:
        await engine.dispose()


async def test_a_migration_waits_while_another_holds_the_lock(fresh_pg_url, tmp_path):
    engine = make_engine(fresh_pg_url)
    try:
        async with engine.connect() as holder:
            await holder.execute(
                text("SELECT pg_advisory_lock(:key)"), {"key": migration_lock_key("alembic_version_auth")}
            )
            running = asyncio.ensure_future(migrate(AuthSettings(data_dir=tmp_path, database_url=fresh_pg_url)))
            await asyncio.sleep(2)
            assert not running.done(), "the migration did not wait for the lock"
            async with engine.connect() as conn:
                tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            assert "users" not in tables
            await holder.execute(
                text("SELECT pg_advisory_unlock(:key)"), {"key": migration_lock_key("alembic_version_auth")}
            )
            await asyncio.wait_for(running, 60)
    finally:
        await engine.dispose()
