"""Fixtures: a real in-process conversation server (SQLite and PostgreSQL) talking to a real in-process inference
service on the synthetic engine (chatplane.dev.inference)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# The helper modules next to this file (uniquely named: every service's tests share one interpreter).
sys.path.insert(0, str(Path(__file__).parent))
from conv_harness import Harness, harness  # noqa: E402
from chatplane.dev.inference import Inference, inference_service  # noqa: E402


@pytest.fixture
async def inference() -> AsyncIterator[Inference]:
    async with inference_service() as service:
        yield service


@pytest.fixture
async def conv(database_url, inference, tmp_path) -> AsyncIterator[Harness]:
    """The service on both stores (for tests where storage matters)."""
    async with harness(database_url, inference, tmp_path) as h:
        yield h


@pytest.fixture
async def sqlite_conv(sqlite_database_url, inference, tmp_path) -> AsyncIterator[Harness]:
    """The service on SQLite only (validation and protocol tests)."""
    async with harness(sqlite_database_url, inference, tmp_path) as h:
        yield h
