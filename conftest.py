"""Fixtures shared by every test folder: a fresh PostgreSQL database per test run, free ports, data folders.

The real vLLM engine fixture lives in tests/conftest.py (started once per run, only when an engine test is selected).
"""

from __future__ import annotations

import os
import uuid

import pytest

PG_ADMIN_DSN = os.environ.get("CHATPLANE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_server_url() -> tuple[str, str]:
    # postgresql://user@host:port/db -> (server part without db, db)
    base, _, db = PG_ADMIN_DSN.rpartition("/")
    return base, db


@pytest.fixture(scope="session")
def pg_database_url():
    """A new, empty PostgreSQL database for this test run (async URL for SQLAlchemy); dropped afterwards.

    Tests that need a pristine schema create their own database with :func:`fresh_pg_database`.
    """
    with fresh_pg_database() as url:
        yield url


class fresh_pg_database:  # noqa: N801 - used as a context manager
    """Create a throw-away PostgreSQL database; yields the ``postgresql+asyncpg://`` URL."""

    def __enter__(self) -> str:
        import asyncio

        import asyncpg

        base, admin_db = _pg_server_url()
        self.name = f"chatplane_test_{uuid.uuid4().hex[:12]}"
        self._admin = f"{base}/{admin_db}"

        async def create() -> None:
            conn = await asyncpg.connect(self._admin)
            try:
                await conn.execute(f'CREATE DATABASE "{self.name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{self.name}"

    def __exit__(self, *exc) -> None:
        import asyncio

        import asyncpg

        async def drop() -> None:
            conn = await asyncpg.connect(self._admin)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            finally:
                await conn.close()

        asyncio.run(drop())


@pytest.fixture
def sqlite_database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Run a test on both stores: a SQLite file and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    else:
        with fresh_pg_database() as url:
            yield url
