"""Fixtures: a real grpc.aio auth server in-process (on SQLite and PostgreSQL) and a stub to call it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chatplane.auth.keys import private_key_pem
from chatplane.auth.server import AuthServer
from chatplane.auth.settings import AuthSettings
from chatplane.common.db import utcnow
from chatplane.common.errors import error_details
from chatplane.protos.auth.v1 import auth_pb2, auth_pb2_grpc

PASSWORD = "correct horse battery staple"


class MovableClock:
    """The auth core's clock, which a test can move forward (last_used_at throttling)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@dataclass
class Auth:
    stub: auth_pb2_grpc.AuthServiceStub
    server: AuthServer
    settings: AuthSettings
    clock: MovableClock
    private_key: Ed25519PrivateKey
    address: str

    async def sign_up(self, email: str, password: str = PASSWORD) -> auth_pb2.User:
        return await self.stub.SignUp(auth_pb2.SignUpRequest(email=email, password=password))

    async def login(self, email: str, password: str = PASSWORD) -> str:
        token = await self.stub.Login(auth_pb2.LoginRequest(email=email, password=password))
        return token.access_token

    async def authenticate(self, credential: str) -> auth_pb2.Principal:
        return await self.stub.Authenticate(auth_pb2.AuthenticateRequest(credential=credential))

    async def create_key(self, user_id: str, name: str = "laptop") -> auth_pb2.CreatedApiKey:
        return await self.stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(user_id=user_id, name=name))

    async def list_keys(self, user_id: str) -> list[auth_pb2.ApiKey]:
        return list((await self.stub.ListApiKeys(auth_pb2.ListApiKeysRequest(user_id=user_id))).api_keys)

    async def revoke(self, user_id: str, api_key_id: str) -> auth_pb2.ApiKey:
        return await self.stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(user_id=user_id, api_key_id=api_key_id))


@dataclass
class RpcFailure:
    code: grpc.StatusCode
    message: str
    error_code: str | None
    param: str | None


async def rpc_fails(call: Awaitable) -> RpcFailure:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    err = info.value
    code, param = error_details(err)
    return RpcFailure(err.code(), err.details() or "", code, param)


@pytest.fixture
def fails():
    """``await fails(stub.X(...))`` -> the RpcFailure (status, message, error code, param); fails if the call works."""
    return rpc_fails


async def _start(settings: AuthSettings, clock: MovableClock | None = None) -> tuple[AuthServer, str]:
    server = AuthServer(settings, clock=clock or MovableClock())
    port = await server.runtime.start("127.0.0.1:0")
    await server.runtime.prepare()
    return server, f"127.0.0.1:{port}"


async def _stop(server: AuthServer) -> None:
    await server.runtime.stop(0)


@pytest.fixture
async def start_auth():
    """``server, address = await start_auth(settings)``: a ready server, stopped at the end of the test."""
    started: list[AuthServer] = []

    async def start(settings: AuthSettings, clock: MovableClock | None = None) -> tuple[AuthServer, str]:
        server, address = await _start(settings, clock)
        started.append(server)
        return server, address

    yield start
    for server in started:
        await _stop(server)


@pytest.fixture
def ed25519_pem() -> str:
    return private_key_pem(Ed25519PrivateKey.generate()).decode()


@asynccontextmanager
async def _running_auth(database_url: str, data_dir: Path) -> AsyncIterator[Auth]:
    key = Ed25519PrivateKey.generate()
    settings = AuthSettings(data_dir=data_dir, database_url=database_url, jwt_private_key=private_key_pem(key).decode())
    clock = MovableClock()
    server, address = await _start(settings, clock)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield Auth(auth_pb2_grpc.AuthServiceStub(channel), server, settings, clock, key, address)
    finally:
        await _stop(server)


@pytest.fixture
async def auth(database_url, tmp_path):
    """A migrated auth service on ``database_url`` (SQLite and PostgreSQL) with a configured signing key."""
    async with _running_auth(database_url, tmp_path) as running:
        yield running


@pytest.fixture
async def sqlite_auth(sqlite_database_url, tmp_path):
    """The same on SQLite only, for checks that are done before anything reaches storage."""
    async with _running_auth(sqlite_database_url, tmp_path) as running:
        yield running
