"""gRPC adapter: converts messages and calls :class:`AuthCore`; :func:`chatplane.common.errors.handled` turns its
errors into status codes."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.exc import InterfaceError, OperationalError

from chatplane.auth.metering import QuotaState
from chatplane.auth.models import PERIOD_DAY, PERIOD_MONTH
from chatplane.auth.limits import LimitsInfo
from chatplane.auth.service import ApiKeyInfo, AuthCore, CredentialType
from chatplane.common import errors
from chatplane.protos.auth.v1 import auth_pb2, auth_pb2_grpc

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


_PERIODS = {PERIOD_DAY: auth_pb2.QUOTA_PERIOD_DAY, PERIOD_MONTH: auth_pb2.QUOTA_PERIOD_MONTH}
_PERIOD_NAMES = {v: k for k, v in _PERIODS.items()}


def _quota(q: QuotaState) -> auth_pb2.Quota:
    return auth_pb2.Quota(
        user_id=q.user_id,
        api_key_id=q.api_key_id,
        period=_PERIODS[q.period],
        token_limit=q.token_limit,
        used_tokens=q.used_tokens,
        period_start=_ts(q.period_start),
        period_end=_ts(q.period_end),
    )


def _limits(info: LimitsInfo) -> auth_pb2.Limits:
    return auth_pb2.Limits(
        is_admin=info.is_admin,
        rate_limits=auth_pb2.RateLimits(
            requests_per_minute=info.requests_per_minute, tokens_per_minute=info.tokens_per_minute
        ),
        quotas=[_quota(q) for q in info.quotas],
    )


def _period(value: int) -> str:
    return _PERIOD_NAMES.get(value, "")


# The auth database unreachable: UNAVAILABLE (the gateway answers 503), not an internal error.
handled = errors.handled(
    unavailable=(OperationalError, InterfaceError, OSError, TimeoutError),
    unavailable_message="the auth database is unavailable, retry later",
)


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, core: AuthCore) -> None:
        self.core = core

    @handled
    async def SignUp(self, request: auth_pb2.SignUpRequest, context) -> auth_pb2.User:  # noqa: N802
        user = await self.core.sign_up(request.email, request.password)
        return auth_pb2.User(id=user.id, email=user.email, created_at=_ts(user.created_at))

    @handled
    async def Login(self, request: auth_pb2.LoginRequest, context) -> auth_pb2.Token:  # noqa: N802
        token = await self.core.login(request.email, request.password)
        return auth_pb2.Token(access_token=token.access_token, token_type="bearer", expires_in=token.expires_in)

    @handled
    async def Authenticate(self, request: auth_pb2.AuthenticateRequest, context) -> auth_pb2.Principal:  # noqa: N802
        principal = await self.core.authenticate(request.credential)
        return auth_pb2.Principal(
            user_id=principal.user_id,
            email=principal.email,
            credential_type=_CREDENTIAL_TYPES[principal.credential_type],
            api_key_id=principal.api_key_id or "",
            cache_ttl_seconds=principal.cache_ttl_seconds,
            limits=_limits(principal.limits),
        )

    @handled
    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context) -> auth_pb2.Jwks:  # noqa: N802
        jwks, issuer, audience = self.core.jwks()
        return auth_pb2.Jwks(json=jwks, issuer=issuer, audience=audience)

    @handled
    async def CreateApiKey(  # noqa: N802
        self, request: auth_pb2.CreateApiKeyRequest, context
    ) -> auth_pb2.CreatedApiKey:
        created = await self.core.create_api_key(request.user_id, request.name)
        return auth_pb2.CreatedApiKey(api_key=_api_key(created.api_key), key=created.key)

    @handled
    async def ListApiKeys(  # noqa: N802
        self, request: auth_pb2.ListApiKeysRequest, context
    ) -> auth_pb2.ListApiKeysResponse:
        keys = await self.core.list_api_keys(request.user_id)
        return auth_pb2.ListApiKeysResponse(api_keys=[_api_key(k) for k in keys])

    @handled
    async def RevokeApiKey(self, request: auth_pb2.RevokeApiKeyRequest, context) -> auth_pb2.ApiKey:  # noqa: N802
        info = await self.core.revoke_api_key(request.user_id, request.api_key_id)
        return _api_key(info)

    @handled
    async def GetLimits(self, request: auth_pb2.GetLimitsRequest, context) -> auth_pb2.Limits:  # noqa: N802
        info = await self.core.limits(request.user_id, request.api_key_id)
        return _limits(info)

    @handled
    async def GetUsage(self, request: auth_pb2.GetUsageRequest, context) -> auth_pb2.GetUsageResponse:  # noqa: N802
        user_id = None if request.all_users else request.user_id
        rows = await self.core.usage(user_id, request.start_date, request.end_date)
        return auth_pb2.GetUsageResponse(
            rows=[
                auth_pb2.UsageRow(
                    date=r.day.isoformat(),
                    user_id=r.user_id,
                    api_key_id=r.api_key_id,
                    model=r.model,
                    requests=r.requests,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens,
                )
                for r in rows
            ]
        )

    @handled
    async def SetQuota(self, request: auth_pb2.SetQuotaRequest, context) -> auth_pb2.Quota:  # noqa: N802
        state = await self.core.set_quota(
            request.user_id, request.api_key_id, _period(request.period), request.token_limit
        )
        return _quota(state)

    @handled
    async def DeleteQuota(  # noqa: N802
        self, request: auth_pb2.DeleteQuotaRequest, context
    ) -> auth_pb2.DeleteQuotaResponse:
        await self.core.delete_quota(request.user_id, request.api_key_id, _period(request.period))
        return auth_pb2.DeleteQuotaResponse()

    @handled
    async def ListQuotas(  # noqa: N802
        self, request: auth_pb2.ListQuotasRequest, context
    ) -> auth_pb2.ListQuotasResponse:
        states = await self.core.list_quotas(request.user_id)
        return auth_pb2.ListQuotasResponse(quotas=[_quota(q) for q in states])

    @handled
    async def SetRateLimits(  # noqa: N802
        self, request: auth_pb2.SetRateLimitsRequest, context
    ) -> auth_pb2.RateLimits:
        row = await self.core.set_rate_limits(
            request.api_key_id, request.rate_limits.requests_per_minute, request.rate_limits.tokens_per_minute
        )
        return auth_pb2.RateLimits(
            requests_per_minute=row.requests_per_minute or 0, tokens_per_minute=row.tokens_per_minute or 0
        )
