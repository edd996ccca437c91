"""Usage (own and, for admins, everyone's), quotas and per-key rate limits."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from chatplane.gateway.authn import Principal
from chatplane.gateway.backends import Backends
from chatplane.gateway.deps import BackendsDep, CurrentPrincipal
from chatplane.gateway.errors import APIError, upstream
from chatplane.protos.auth.v1 import auth_pb2

router = APIRouter(tags=["usage and quotas"])

Id = Annotated[str, Path(max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]
DateParam = Annotated[date | None, Query(description="YYYY-MM-DD (UTC), inclusive")]
Period = Literal["day", "month"]
_PERIODS = {"day": auth_pb2.QUOTA_PERIOD_DAY, "month": auth_pb2.QUOTA_PERIOD_MONTH}
_PERIOD_NAMES = {v: k for k, v in _PERIODS.items()}
DEFAULT_DAYS = 30


class QuotaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    period: Period = Field(description="The budget's period: a UTC day or a UTC month.")
    token_limit: int = Field(ge=0, le=10**15, description="Prompt + completion tokens per period.")


class RateLimitsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests_per_minute: int = Field(0, ge=0, le=10**9, description="0: the gateway's default.")
    tokens_per_minute: int = Field(0, ge=0, le=10**9, description="0: the gateway's default.")


def _range(start_date: date | None, end_date: date | None) -> tuple[str, str]:
    end = end_date or datetime.now(UTC).date()
    start = start_date or end - timedelta(days=DEFAULT_DAYS - 1)
    return start.isoformat(), end.isoformat()


async def _require_admin(principal: Principal, backends: Backends) -> None:
    limits = await backends.limits.get(principal)
    if not limits.is_admin:
        raise APIError(403, "This route is for administrators.", code="permission_denied")


def _usage(reply: auth_pb2.GetUsageResponse, start: str, end: str, with_user: bool) -> dict:
    rows = []
    totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for r in reply.rows:
        row = {
            "date": r.date,
            "api_key_id": r.api_key_id or None,
            "model": r.model,
            "requests": r.requests,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
        }
        if with_user:
            row = {"user_id": r.user_id, **row}
        rows.append(row)
        for name in totals:
            totals[name] += row[name]
    return {"object": "list", "start_date": start, "end_date": end, "data": rows, "totals": totals}


def _quota(q: auth_pb2.Quota) -> dict:
    return {
        "object": "quota",
        "user_id": q.user_id,
        "api_key_id": q.api_key_id or None,
        "period": _PERIOD_NAMES.get(q.period, "day"),
        "token_limit": q.token_limit,
        "used_tokens": q.used_tokens,
        "period_start": q.period_start.ToDatetime(tzinfo=UTC).isoformat(),
        "period_end": q.period_end.ToDatetime(tzinfo=UTC).isoformat(),
    }


@router.get("/v1/usage", summary="Your token usage per day, model and API key")
async def get_usage(
    principal: CurrentPrincipal, backends: BackendsDep, start_date: DateParam = None, end_date: DateParam = None
) -> dict:
    start, end = _range(start_date, end_date)
    with upstream("auth"):
        reply = await backends.auth.GetUsage(
            auth_pb2.GetUsageRequest(user_id=principal.user_id, start_date=start, end_date=end),
            timeout=backends.settings.upstream_timeout_seconds,
        )
    return _usage(reply, start, end, with_user=False)


@router.get("/v1/admin/usage", summary="Everyone's token usage (administrators)")
async def get_all_usage(
    principal: CurrentPrincipal, backends: BackendsDep, start_date: DateParam = None, end_date: DateParam = None
) -> dict:
    await _require_admin(principal, backends)
    start, end = _range(start_date, end_date)
    with upstream("auth"):
        reply = await backends.auth.GetUsage(
            auth_pb2.GetUsageRequest(all_users=True, start_date=start, end_date=end),
            timeout=backends.settings.upstream_timeout_seconds,
        )
    return _usage(reply, start, end, with_user=True)


@router.get("/v1/quotas", summary="Your quotas (account and API keys) with their use in the current period")
async def list_quotas(principal: CurrentPrincipal, backends: BackendsDep) -> dict:
    with upstream("auth"):
        reply = await backends.auth.ListQuotas(
            auth_pb2.ListQuotasRequest(user_id=principal.user_id), timeout=backends.settings.upstream_timeout_seconds
        )
    return {"object": "list", "data": [_quota(q) for q in reply.quotas]}


async def _set_quota(backends: Backends, user_id: str, api_key_id: str, body: QuotaIn) -> dict:
    with upstream("auth"):
        quota = await backends.auth.SetQuota(
            auth_pb2.SetQuotaRequest(
                user_id=user_id, api_key_id=api_key_id, period=_PERIODS[body.period], token_limit=body.token_limit
            ),
            timeout=backends.settings.upstream_timeout_seconds,
        )
    await backends.invalidations.user_changed(user_id)
    return _quota(quota)


async def _delete_quota(backends: Backends, user_id: str, api_key_id: str, period: Period) -> dict:
    with upstream("auth"):
        await backends.auth.DeleteQuota(
            auth_pb2.DeleteQuotaRequest(user_id=user_id, api_key_id=api_key_id, period=_PERIODS[period]),
            timeout=backends.settings.upstream_timeout_seconds,
        )
    await backends.invalidations.user_changed(user_id)
    return {"object": "quota.deleted", "deleted": True}


@router.put("/v1/quotas/api-keys/{api_key_id}", summary="Set a token budget on one of your API keys")
async def set_key_quota(api_key_id: Id, body: QuotaIn, principal: CurrentPrincipal, backends: BackendsDep) -> dict:
    return await _set_quota(backends, principal.user_id, api_key_id, body)


@router.delete("/v1/quotas/api-keys/{api_key_id}", summary="Remove a token budget from one of your API keys")
async def delete_key_quota(
    api_key_id: Id, principal: CurrentPrincipal, backends: BackendsDep, period: Period = "day"
) -> dict:
    return await _delete_quota(backends, principal.user_id, api_key_id, period)


@router.put("/v1/admin/users/{user_id}/quota", summary="Set a user's token budget (administrators)")
async def set_user_quota(user_id: Id, body: QuotaIn, principal: CurrentPrincipal, backends: BackendsDep) -> dict:
    await _require_admin(principal, backends)
    return await _set_quota(backends, user_id, "", body)


@router.delete("/v1/admin/users/{user_id}/quota", summary="Remove a user's token budget (administrators)")
async def delete_user_quota(
    user_id: Id, principal: CurrentPrincipal, backends: BackendsDep, period: Period = "day"
) -> dict:
    await _require_admin(principal, backends)
    return await _delete_quota(backends, user_id, "", period)


@router.put("/v1/admin/api-keys/{api_key_id}/rate-limits", summary="Override an API key's rate limits (admins)")
async def set_rate_limits(
    api_key_id: Id, body: RateLimitsIn, principal: CurrentPrincipal, backends: BackendsDep
) -> dict:
    await _require_admin(principal, backends)
    with upstream("auth"):
        limits = await backends.auth.SetRateLimits(
            auth_pb2.SetRateLimitsRequest(
                api_key_id=api_key_id,
                rate_limits=auth_pb2.RateLimits(
                    requests_per_minute=body.requests_per_minute, tokens_per_minute=body.tokens_per_minute
                ),
            ),
            timeout=backends.settings.upstream_timeout_seconds,
        )
    await backends.invalidations.api_key_changed(api_key_id)
    return {
        "object": "rate_limits",
        "api_key_id": api_key_id,
        "requests_per_minute": limits.requests_per_minute or None,
        "tokens_per_minute": limits.tokens_per_minute or None,
    }
