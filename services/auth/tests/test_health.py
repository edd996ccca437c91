"""Health: NOT_SERVING until the database is migrated and reachable, then SERVING; the real process entry point."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatplane.auth.server import SERVICE_NAME, AuthServer, migrate
from chatplane.auth.settings import AuthSettings
from chatplane.dev.procs import Service, free_port, grpc_serving
from chatplane.protos.auth.v1 import auth_pb2, auth_pb2_grpc


async def health(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return reply.status


async def test_serving_only_once_the_database_is_migrated(database_url, tmp_path, ed25519_pem):
    settings = AuthSettings(
        data_dir=tmp_path, database_url=database_url, jwt_private_key=ed25519_pem, auto_migrate=False,
        prepare_retry_max_seconds=0.2,
    )
    server = AuthServer(settings)
    port = await server.runtime.start("127.0.0.1:0")
    address = f"127.0.0.1:{port}"
    ready = asyncio.create_task(server.runtime.prepare())
    try:
        await asyncio.sleep(0.7)
        assert not ready.done()  # no schema yet: retried
        assert await health(address) == health_pb2.HealthCheckResponse.NOT_SERVING

        await migrate(settings)
        await asyncio.wait_for(ready, 5)
        for service in ["", SERVICE_NAME]:
            assert await health(address, service) == health_pb2.HealthCheckResponse.SERVING
    finally:
        ready.cancel()
        await server.runtime.stop(0)


def test_python_m_chatplane_auth_migrates_and_serves(tmp_path):
    env = {**os.environ, "CHATPLANE_DATA_DIR": str(tmp_path), "CHATPLANE_ENVIRONMENT": "development"}
    migrated = subprocess.run(
        [sys.executable, "-m", "chatplane.auth", "migrate"], env=env, capture_output=True, timeout=60, check=False
    )
    assert migrated.returncode == 0, migrated.stderr.decode()[-2000:]
    assert (tmp_path / "auth.db").exists()

    port = free_port()
    address = f"127.0.0.1:{port}"
    service = Service(
        "auth",
        "chatplane.auth",
        env={
            "CHATPLANE_DATA_DIR": str(tmp_path),
            "CHATPLANE_AUTH_PORT": str(port),
            "CHATPLANE_ENVIRONMENT": "development",
        },
        ready=lambda: grpc_serving(address),
        log_path=tmp_path / "auth.log",
    )
    service.start()
    try:
        service.wait_ready(30)
        with grpc.insecure_channel(address) as channel:
            jwks = auth_pb2_grpc.AuthServiceStub(channel).GetJwks(auth_pb2.GetJwksRequest(), timeout=5)
        assert '"kty":"OKP"' in jwks.json
    finally:
        assert service.stop() == 0  # SIGTERM drains and exits cleanly


def test_production_without_a_key_refuses_to_start(tmp_path):
    env = {
        **os.environ,
        "CHATPLANE_DATA_DIR": str(tmp_path),
        "CHATPLANE_ENVIRONMENT": "production",
        "CHATPLANE_AUTH_DATABASE_URL": "postgresql+asyncpg://auth@127.0.0.1:1/auth",
    }
    env.pop("CHATPLANE_AUTH_JWT_PRIVATE_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "chatplane.auth"], env=env, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert b"JWT_PRIVATE_KEY" in result.stderr
    assert not (tmp_path / "auth-jwt-key.pem").exists()


async def test_unreachable_database_is_unavailable_not_internal(tmp_path, ed25519_pem, fails):
    """A request while the database is down gets UNAVAILABLE (callers may retry), with no details leaked."""
    url = f"postgresql+asyncpg://auth:hunter2@127.0.0.1:{free_port()}/auth"
    server = AuthServer(AuthSettings(data_dir=tmp_path, database_url=url, jwt_private_key=ed25519_pem))
    port = await server.runtime.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            failure = await fails(stub.Login(auth_pb2.LoginRequest(email="a@example.com", password="whatever!")))
        assert failure.code == grpc.StatusCode.UNAVAILABLE
        assert "hunter2" not in failure.message and "127.0.0.1" not in failure.message
    finally:
        await server.runtime.stop(0)
