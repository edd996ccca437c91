"""The service as a process and as a server: settings, health, migrate command, graceful stop."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest
from conv_harness import Harness
from pydantic import ValidationError

from chatplane.common.grpc_client import is_serving
from chatplane.dev.procs import Service, free_port, grpc_serving
from chatplane.conversation.server import SERVICE_NAME, create_server
from chatplane.protos.conversation.v1 import conversation_pb2 as pb
from chatplane.protos.conversation.v1 import conversation_pb2_grpc
from chatplane.conversation.settings import ConversationSettings


def test_settings_defaults_and_production_refuses_sqlite(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CHATPLANE_CONVERSATION_DATABASE_URL", raising=False)
    settings = ConversationSettings()
    assert settings.port == 50052 and settings.inference_pools == "127.0.0.1:50053"
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path}/conversation.db"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path.resolve()}/celery-broker.db"  # embedded: no server
    monkeypatch.setenv("CHATPLANE_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="SQLite"):
        ConversationSettings()
    monkeypatch.setenv("CHATPLANE_CONVERSATION_DATABASE_URL", "postgresql+asyncpg://db/conversation")
    with pytest.raises(ValidationError, match="Celery broker"):
        ConversationSettings()
    monkeypatch.setenv("CHATPLANE_CONVERSATION_CELERY_BROKER_URL", "redis://redis:6379/0")
    assert ConversationSettings().database_url == "postgresql+asyncpg://db/conversation"
    assert ConversationSettings().broker_url == "redis://redis:6379/0"


async def test_health_reports_serving(sqlite_conv: Harness):
    async with grpc.aio.insecure_channel(sqlite_conv.server.address) as chan:
        assert await is_serving(chan)
        assert await is_serving(chan, SERVICE_NAME)


async def test_not_serving_until_migrated(database_url, tmp_path):
    settings = ConversationSettings(database_url=database_url, port=0, data_dir=tmp_path)
    runtime, _ = await create_server(settings)
    port = await runtime.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            assert not await is_serving(chan)
            await runtime.prepare()
            assert await is_serving(chan, SERVICE_NAME)
            stub = conversation_pb2_grpc.ConversationServiceStub(chan)
            created = await stub.CreateConversation(pb.CreateConversationRequest(user_id="u", title="t"))
            assert created.title == "t"
    finally:
        await runtime.stop(0)


def test_runs_as_a_process(tmp_path):
    port = free_port()
    env = {
        "CHATPLANE_DATA_DIR": str(tmp_path / "data"),
        "CHATPLANE_CONVERSATION_PORT": str(port),
        "CHATPLANE_INFERENCE_POOLS": f"127.0.0.1:{free_port()}",
    }
    migrate = subprocess.run(
        [sys.executable, "-m", "chatplane.conversation", "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        timeout=60,
    )
    assert migrate.returncode == 0, migrate.stderr
    assert (tmp_path / "data" / "conversation.db").exists()

    service = Service(
        "conversation",
        "chatplane.conversation",
        env,
        ready=lambda: grpc_serving(f"127.0.0.1:{port}"),
        log_path=tmp_path / "conversation.log",
    )
    service.start()
    try:
        service.wait_ready(30)
    finally:
        assert service.stop() == 0
