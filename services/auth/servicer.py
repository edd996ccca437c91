"""gRPC adapter: converts messages and calls :class:`AuthCore`; domain errors become status codes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import datetime
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.exc import InterfaceError, OperationalError

from chatplane.auth.errors import AuthError
from chatplane.auth.service import ApiKeyInfo, AuthCore, CredentialType
from chatplane.common.errors import abort
from chatplane.protos.auth.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

_CREDENTIAL_TYPES = {
    CredentialType.API_KEY: auth_pb2.CREDENTIAL_TYPE_API_KEY,
    CredentialType.JWT: auth_pb2.CREDENTIAL_TYPE_JWT,
}


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _api_key(info: ApiKeyInfo) -> auth_pb2.ApiKey:
    return auth_pb2.ApiKey(
        id=info.id,
        name=info.name,
        prefix=info.prefix,
        created_at=_ts(info.created_at),
        last_used_at=_ts(info.last_used_at),
        revoked_at=_ts(info.revoked_at),
    )


async def _call(context: grpc.aio.ServicerContext, method: str, work: Awaitable[T]) -> T:
    try:
        return await work
    except AuthError as err:
        await abort(context, err.status, err.message, code=err.code, param=err.param)
    except (OperationalError, InterfaceError, OSError, TimeoutError):
        log.exception("database unavailable", extra={"method": method})
        await abort(context, grpc.StatusCode.UNAVAILABLE, "the auth database is unavailable, retry later")
    except Exception:
        log.exception("internal error", extra={"method": method})
        await abort(context, grpc.StatusCode.INTERNAL, "internal error")


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, core: AuthCore) -> None:
        self.core = core

    async def SignUp(self, request: auth_pb2.SignUpRequest, context) -> auth_pb2.User:  # noqa: N802
        user = await _call(context, "SignUp", self.core.sign_up(request.email, request.password))
        return auth_pb2.User(id=user.id, email=user.email, created_at=_ts(user.created_at))

    async def Login(self, request: auth_pb2.LoginRequest, context) -> auth_pb2.Token:  # noqa: N802
        token = await _call(context, "Login", self.core.login(request.email, request.password))
        return auth_pb2.Token(access_token=token.access_token, token_type="bearer", expires_in=token.expires_in)

    async def Authenticate(self, request: auth_pb2.AuthenticateRequest, context) -> auth_pb2.Principal:  # noqa: N802
        principal = await _call(context, "Authenticate", self.core.authenticate(request.credential))
        return auth_pb2.Principal(
            user_id=principal.user_id,
            email=principal.email,
            credential_type=_CREDENTIAL_TYPES[principal.credential_type],
            api_key_id=principal.api_key_id or "",
            cache_ttl_seconds=principal.cache_ttl_seconds,
        )

    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context) -> auth_pb2.Jwks:  # noqa: N802
        jwks, issuer, audience = self.core.jwks()
        return auth_pb2.Jwks(json=jwks, issuer=issuer, audience=audience)

    async def CreateApiKey(  # noqa: N802
        self, request: auth_pb2.CreateApiKeyRequest, context
    ) -> auth_pb2.CreatedApiKey:
        created = await _call(context, "CreateApiKey", self.core.create_api_key(request.user_id, request.name))
        return auth_pb2.CreatedApiKey(api_key=_api_key(created.api_key), key=created.key)

    async def ListApiKeys(  # noqa: N802
        self, request: auth_pb2.ListApiKeysRequest, context
    ) -> auth_pb2.ListApiKeysResponse:
        keys = await _call(context, "ListApiKeys", self.core.list_api_keys(request.user_id))
        return auth_pb2.ListApiKeysResponse(api_keys=[_api_key(k) for k in keys])

    async def RevokeApiKey(self, request: auth_pb2.RevokeApiKeyRequest, context) -> auth_pb2.ApiKey:  # noqa: N802
        info = await _call(context, "RevokeApiKey", self.core.revoke_api_key(request.user_id, request.api_key_id))
        return _api_key(info)
