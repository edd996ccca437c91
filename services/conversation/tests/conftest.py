"""Fixtures: a real in-process conversation server (SQLite and PostgreSQL) talking to an in-process fake inference."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# The helper modules next to this file (uniquely named: every service's tests share one interpreter).
sys.path.insert(0, str(Path(__file__).parent))
from conv_fake_inference import FakeInferenceServicer, start_fake_inference  # noqa: E402
from conv_harness import Harness, harness  # noqa: E402


@pytest.fixture
async def fake_inference() -> AsyncIterator[FakeInferenceServicer]:
    servicer = FakeInferenceServicer()
    server = await start_fake_inference(servicer)
    yield servicer
    await server.stop(0)


@pytest.fixture
async def conv(database_url, fake_inference, tmp_path) -> AsyncIterator[Harness]:
    """The service on both stores (for tests where storage matters)."""
    async with harness(database_url, fake_inference, tmp_path) as h:
        yield h


@pytest.fixture
async def sqlite_conv(sqlite_database_url, fake_inference, tmp_path) -> AsyncIterator[Harness]:
    """The service on SQLite only (validation and protocol tests)."""
    async with harness(sqlite_database_url, fake_inference, tmp_path) as h:
        yield h
