"""Who is calling: API keys (asked of auth, cached briefly) and JWTs (verified locally against auth's JWKS)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import jwt
from cachetools import TLRUCache

from chatplane.common import limits
from chatplane.gateway.errors import APIError, unauthenticated, unavailable, upstream
from chatplane.protos.auth.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

JWT_ALGORITHMS = ["EdDSA"]
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")

MISSING_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth "
    "(i.e. Authorization: Bearer YOUR_KEY)."
)
INCORRECT_MESSAGE = "Incorrect API key provided. You can create a new API key at POST /v1/api-keys."
INVALID_TOKEN_MESSAGE = "Invalid or expired access token provided. Log in again at POST /v1/auth/login."
# What auth answers for a credential it does not accept (cached as such, briefly): the gateway's 401.
_REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    email: str
    credential_type: str  # "api_key" | "jwt"
    api_key_id: str = ""


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal | None  # None: auth said the key is not valid
    ttl: float


def _cache_key(credential: str) -> str:
    # Never keep the credential itself in memory longer than the request.
    return hashlib.sha256(credential.encode()).hexdigest()


class Authenticator:
    def __init__(
        self,
        stub: auth_pb2_grpc.AuthServiceStub,
        *,
        cache_ttl: float,
        negative_ttl: float,
        cache_size: int,
        jwks_refresh: float,
        jwks_max_age: float,
        timeout: float,
        issuer: str,
        audience: str,
        on_limits: Callable[[str, str, auth_pb2.Limits], None] | None = None,
    ) -> None:
        self._stub = stub
        self._on_limits = on_limits  # an API key's limits come with its Authenticate answer: handed to the provider
        self._cache_ttl = cache_ttl
        self._negative_ttl = negative_ttl
        self._timeout = timeout
        self._cache: TLRUCache[str, _Entry] = TLRUCache(
            maxsize=cache_size, ttu=lambda _key, entry, now: now + entry.ttl, timer=time.monotonic
        )
        self._jwks_refresh = jwks_refresh
        self._jwks_max_age = jwks_max_age
        self._jwks: jwt.PyJWKSet | None = None
        # Fixed by the gateway's settings, never learned from auth: a token must name exactly these.
        self._issuer = issuer
        self._audience = audience
        self._jwks_fetched_at = float("-inf")
        self._jwks_lock = asyncio.Lock()

    async def authenticate(self, credential: str) -> Principal:
        if len(credential) > limits.MAX_CREDENTIAL_CHARS or not credential.isprintable():
            raise unauthenticated(INCORRECT_MESSAGE)
        if _JWT_SHAPE.match(credential):
            return await self._verify_jwt(credential)
        return await self._api_key(credential)

    # --- API keys -------------------------------------------------------------------------------------------------

    async def _api_key(self, credential: str) -> Principal:
        key = _cache_key(credential)
        entry = self._cache.get(key)
        if entry is None:
            entry = await self._ask_auth(credential)
            if entry.ttl > 0:
                self._cache[key] = entry
        if entry.principal is None:
            raise unauthenticated(INCORRECT_MESSAGE)
        return entry.principal

    async def _ask_auth(self, credential: str) -> _Entry:
        with upstream("auth"):
            try:
                reply = await self._stub.Authenticate(
                    auth_pb2.AuthenticateRequest(credential=credential), timeout=self._timeout
                )
            except grpc.aio.AioRpcError as err:
                if err.code() not in _REFUSED:
                    raise
                return _Entry(None, self._negative_ttl)  # an unknown or revoked credential
        kind = "jwt" if reply.credential_type == auth_pb2.CREDENTIAL_TYPE_JWT else "api_key"
        if reply.HasField("limits") and self._on_limits is not None:
            self._on_limits(reply.user_id, reply.api_key_id, reply.limits)
        principal = Principal(reply.user_id, reply.email, kind, reply.api_key_id)
        return _Entry(principal, min(self._cache_ttl, float(reply.cache_ttl_seconds)))

    def forget_api_key(self, api_key_id: str) -> None:
        """Drop every cached answer for this key (it was revoked: on any replica, see ``broadcast.py``)."""
        for key, entry in list(self._cache.items()):
            if entry.principal is not None and entry.principal.api_key_id == api_key_id:
                self._cache.pop(key, None)

    # --- JWTs -----------------------------------------------------------------------------------------------------

    async def _verify_jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise unauthenticated(INVALID_TOKEN_MESSAGE) from None
        kid = header.get("kid")
        jwks = await self._jwks_for(kid)
        keys = [k for k in jwks.keys if kid is None or k.key_id == kid]
        if not keys:
            raise unauthenticated(INVALID_TOKEN_MESSAGE)
        options = {"require": ["exp", "sub", "iss", "aud"], "verify_aud": True, "verify_iss": True}
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key=key,
                    algorithms=JWT_ALGORITHMS,
                    audience=self._audience,
                    issuer=self._issuer,
                    options=options,
                    leeway=5,
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError:
                break
            user_id = claims.get("sub")
            if not isinstance(user_id, str) or not user_id:
                break
            email = claims.get("email")
            return Principal(user_id, email if isinstance(email, str) else "", "jwt")
        raise unauthenticated(INVALID_TOKEN_MESSAGE)

    def _needs_fetch(self, kid: str | None) -> bool:
        age = time.monotonic() - self._jwks_fetched_at
        if self._jwks is None or age > self._jwks_max_age:
            return True
        unknown = kid is not None and not any(k.key_id == kid for k in self._jwks.keys)
        # A new signing key appears after a rotation; refetch for it, but not for every forged kid.
        return unknown and age >= self._jwks_refresh

    async def _jwks_for(self, kid: str | None) -> jwt.PyJWKSet:
        if self._needs_fetch(kid):
            async with self._jwks_lock:
                if self._needs_fetch(kid):  # another request may have fetched it while this one waited
                    await self._fetch_jwks()
        if self._jwks is None:
            raise unavailable("auth")
        return self._jwks

    async def _fetch_jwks(self) -> None:
        with upstream("auth"):
            try:
                reply = await self._stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=self._timeout)
            except grpc.aio.AioRpcError as err:
                if self._jwks is None:
                    raise
                log.warning("jwks refresh failed", extra={"grpc_status": err.code().name})
                self._jwks_fetched_at = time.monotonic()  # keep verifying with the keys we have
                return
        try:
            jwks = jwt.PyJWKSet.from_dict(json.loads(reply.json))
        except (ValueError, jwt.PyJWTError):
            log.error("auth served an unusable JWKS")
            if self._jwks is None:
                raise APIError(
                    500, "The server could not verify access tokens right now.", type="server_error"
                ) from None
            self._jwks_fetched_at = time.monotonic()
            return
        self._jwks = jwks
        if (reply.issuer, reply.audience) != (self._issuer, self._audience):
            log.error("auth signs for another issuer or audience than the gateway accepts: check "
                      "CHATPLANE_GATEWAY_JWT_ISSUER/_AUDIENCE against CHATPLANE_AUTH_JWT_ISSUER/_AUDIENCE")
        self._jwks_fetched_at = time.monotonic()
