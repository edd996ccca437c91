"""The hand-written migration creates exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from chatplane.auth.models import Base
from chatplane.auth.server import MIGRATIONS_DIR, migrate
from chatplane.auth.settings import AuthSettings
from chatplane.common.db import alembic_config, make_engine


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
