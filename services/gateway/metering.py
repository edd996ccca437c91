"""Admission (rate limits, quotas) before a model call and settlement after it; completion events of the stateless path.

A model call is admitted with an estimate (prompt tokens + the reserved completion tokens): one token-bucket call
for the rate limits and, when quotas apply, one reservation on the quota counters. When the call ends, the exact
usage replaces the estimate (in the background, off the streaming path). For ``/v1/chat/completions`` the gateway
then queues the ``completion.finished`` event for auth, which gets them in batches (``completions.py``; auth owns
usage; the conversation service writes its own).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from cachetools import TTLCache

from chatplane.common.errors import ServiceError
from chatplane.gateway.authn import Principal
from chatplane.gateway.completions import CompletionBatcher
from chatplane.gateway.errors import APIError, from_grpc
from chatplane.gateway.ratelimit import Limiter, LocalLimiter, QuotaCounter, RedisLimiter
from chatplane.gateway.settings import GatewaySettings
from chatplane.protos.auth.v1 import auth_pb2, auth_pb2_grpc
from chatplane.protos.events.v1 import events_pb2

log = logging.getLogger(__name__)

HEADERS_STATE = "ratelimit_headers"  # request.state attribute read by RateLimitHeadersMiddleware
_PERIOD_NAMES = {auth_pb2.QUOTA_PERIOD_DAY: "day", auth_pb2.QUOTA_PERIOD_MONTH: "month"}


def rough_tokens(chars: int) -> int:
    """A prompt's token count without asking the tokenizer (about four characters a token)."""
    return math.ceil(chars / 4)


@dataclass
class Admission:
    """What one admitted request holds: its estimate, charged to the rate-limit bucket and the quota counters."""

    rate_key: str
    estimate: int
    counters: list[QuotaCounter]
    tpm: int
    settled: bool = False


@dataclass
class Metering:
    settings: GatewaySettings
    auth: auth_pb2_grpc.AuthServiceStub
    limiter: Limiter
    _limits: TTLCache = field(init=False)
    _tasks: set[asyncio.Task] = field(default_factory=set, init=False)
    recorder: CompletionBatcher = field(init=False)

    def __post_init__(self) -> None:
        self.recorder = CompletionBatcher(self.auth, timeout=self.settings.upstream_timeout_seconds)
        self._limits = TTLCache(maxsize=self.settings.auth_cache_size, ttl=max(self.settings.auth_cache_ttl_seconds, 1))

    @classmethod
    def from_settings(cls, settings: GatewaySettings, auth: auth_pb2_grpc.AuthServiceStub) -> Metering:
        limiter: Limiter = (
            RedisLimiter(settings.redis_url, settings.redis_key_prefix) if settings.redis_url else LocalLimiter()
        )
        return cls(settings, auth, limiter)

    def start(self) -> None:
        """Start the background sender of completion records (in the app's lifespan)."""
        self.recorder.start()

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self.recorder.close()  # lets the last completion records reach auth
        await self.limiter.close()

    # -- limits of a caller ----------------------------------------------------------------------------------------

    async def limits(self, principal: Principal) -> auth_pb2.Limits:
        """Quotas, rate limits and admin flag: from the (cached) Authenticate answer for API keys, else cached here."""
        if principal.limits is not None:
            return principal.limits
        key = (principal.user_id, principal.api_key_id)
        cached = self._limits.get(key)
        if cached is not None:
            return cached
        try:
            limits = await self.auth.GetLimits(
                auth_pb2.GetLimitsRequest(user_id=principal.user_id, api_key_id=principal.api_key_id),
                timeout=self.settings.upstream_timeout_seconds,
            )
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "auth") from None
        self._limits[key] = limits
        return limits

    def forget_user(self, user_id: str) -> None:
        for key in [k for k in self._limits if k[0] == user_id]:
            self._limits.pop(key, None)

    # -- admission -------------------------------------------------------------------------------------------------

    async def admit(
        self,
        principal: Principal,
        state: Any,
        *,
        prompt_tokens: Callable[[bool], Awaitable[int]],
        reserve: int,
    ) -> Admission:
        """Charge the estimate or raise a 429 (rate limit or quota). ``prompt_tokens(exact)`` counts the prompt:
        exactly (a tokenizer call) only when a quota applies, roughly otherwise."""
        limits = await self.limits(principal)
        rpm = limits.rate_limits.requests_per_minute or self.settings.rate_limit_requests_per_minute
        tpm = limits.rate_limits.tokens_per_minute or self.settings.rate_limit_tokens_per_minute
        now = time.time()
        counters = [
            QuotaCounter(
                key=f"{q.user_id}:{q.api_key_id or '-'}:{_PERIOD_NAMES.get(q.period, 'day')}:{q.period_start.seconds}",
                limit=q.token_limit,
                seed=q.used_tokens,
                ttl_seconds=max(60, int(q.period_end.seconds - now) + 3600),
            )
            for q in limits.quotas
            if q.period_end.seconds > now and (not q.api_key_id or q.api_key_id == principal.api_key_id)
        ]
        estimate = await prompt_tokens(bool(counters)) + reserve
        rate_key = principal.api_key_id or f"user-{principal.user_id}"
        if rpm or tpm:
            decision = await self._guard(self.limiter.acquire(rate_key, rpm, tpm, estimate))
            headers = decision.headers()
            setattr(state, HEADERS_STATE, headers)
            if not decision.allowed:
                which = "requests" if rpm and decision.remaining_requests < 1 else "tokens"
                limit = rpm if which == "requests" else tpm
                message = (
                    f"Request too large: it needs about {estimate} tokens and the limit is {tpm} tokens per minute. "
                    "Lower max_tokens or the prompt."
                    if which == "tokens" and estimate > tpm
                    else f"Rate limit reached for {which} per minute (limit {limit}). Please try again in "
                    f"{headers['retry-after']}s."
                )
                raise APIError(429, message, type=which, code="rate_limit_exceeded", headers=headers)
        if counters:
            refused = await self._guard(self.limiter.reserve(counters, estimate))
            if refused >= 0:
                if tpm:
                    await self._guard(self.limiter.adjust_tokens(rate_key, -estimate))
                quota = counters[refused]
                raise APIError(
                    429,
                    "You exceeded your current quota: this request needs about "
                    f"{estimate} tokens and the {'API key' if ':-:' not in quota.key else 'account'} budget of "
                    f"{quota.limit} tokens for this period does not have them left.",
                    type="insufficient_quota",
                    code="insufficient_quota",
                    headers=getattr(state, HEADERS_STATE, None),
                )
        return Admission(rate_key, estimate, counters, tpm)

    async def _guard(self, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.error("rate-limit store unavailable", extra={"error": repr(exc)[:300]})
            raise APIError(503, "The rate limiter is temporarily unavailable. Please retry shortly.",
                           type="service_unavailable", code="service_unavailable") from None
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):
                log.error("rate-limit store error", extra={"error": repr(exc)[:300]})
                raise APIError(503, "The rate limiter is temporarily unavailable. Please retry shortly.",
                               type="service_unavailable", code="service_unavailable") from None
            raise

    # -- after the call --------------------------------------------------------------------------------------------

    def settle(self, admission: Admission | None, actual_tokens: int | None) -> None:
        """Replace the estimate by the exact usage (None: unknown, the estimate stays charged). In the background."""
        if admission is None or admission.settled:
            return
        admission.settled = True
        if actual_tokens is None:
            return
        delta = actual_tokens - admission.estimate
        if delta:
            self._background(self._settle(admission, delta))

    async def _settle(self, admission: Admission, delta: int) -> None:
        try:
            if admission.tpm:
                await self.limiter.adjust_tokens(admission.rate_key, delta)
            if admission.counters:
                await self.limiter.settle(admission.counters, delta)
        except Exception as exc:  # noqa: BLE001 - a lost correction only skews one estimate
            log.warning("settling usage failed", extra={"error": repr(exc)[:300]})

    def record_completion(self, completion: events_pb2.CompletionFinished) -> None:
        """Queue the completion.finished event for auth (sent in batches in the background; never on the stream's
        path)."""
        self.recorder.add(completion)

    def _background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class MeteredGeneration:
    """Wraps an inference ``Generate`` call: notes the first token, model, finish reason and usage as the route reads
    it, and when the route is done with it (``cancel()``, which every path calls) settles and records the completion.
    """

    def __init__(
        self,
        call: Any,
        metering: Metering,
        admission: Admission | None,
        principal: Principal,
        request_id: str,
        model: str,
        prompt_estimate: int,
        path: str = "chat",
    ) -> None:
        self._call = call
        self._path = path
        self._metering = metering
        self._admission = admission
        self._principal = principal
        self._request_id = request_id
        self._model = model
        self._prompt_estimate = prompt_estimate
        self._started = time.monotonic()
        self._first_token: float | None = None
        self._replies = 0
        self._chars = 0  # of the replies so far: the completion estimate of a stream cut short
        self._finish_reason = ""
        self._usage: tuple[int, int] | None = None
        self._failed = False
        self._done = False

    async def read(self) -> Any:
        try:
            reply = await self._call.read()
        except ServiceError:
            self._failed = True
            raise
        if reply is not None:
            self._replies += 1
            if self._first_token is None and reply.text:
                self._first_token = time.monotonic()
            if reply.finish_reason:  # the last reply: the only one with the model and usage
                self._finish_reason = reply.finish_reason
                if reply.model:
                    self._model = reply.model
                if reply.HasField("usage"):
                    self._usage = (reply.usage.prompt_tokens, reply.usage.completion_tokens)
            else:
                self._chars += len(reply.text)
        return reply

    def cancel(self) -> bool:
        result = self._call.cancel()
        if not self._done:
            self._done = True
            self._finish()
        return result

    def _finish(self) -> None:
        if self._replies == 0:  # nothing was generated: give the reservation back
            self._metering.settle(self._admission, 0)
            return
        if self._usage is not None:
            prompt, completion = self._usage
        else:  # cut short: the prompt was processed, and each reply carried at least a token (often several)
            prompt, completion = self._prompt_estimate, max(self._replies, rough_tokens(self._chars))
        finish_reason = self._finish_reason or ("error" if self._failed else "abort")
        now = time.monotonic()
        self._metering.settle(self._admission, prompt + completion)
        self._metering.record_completion(
            events_pb2.CompletionFinished(
                request_id=self._request_id,
                user_id=self._principal.user_id,
                api_key_id=self._principal.api_key_id,
                model=self._model,
                prompt_tokens=prompt,
                completion_tokens=completion,
                latency_ms=round((now - self._started) * 1000),
                ttft_ms=round((self._first_token - self._started) * 1000) if self._first_token else 0,
                finish_reason=finish_reason,
                path=self._path,
            )
        )


class MeteredConversationReply:
    """Wraps a conversation ``SendMessage`` call: settles the admission with the usage of its ``done`` event (the
    conversation service writes the completion event itself)."""

    def __init__(self, call: Any, metering: Metering, admission: Admission | None) -> None:
        self._call = call
        self._metering = metering
        self._admission = admission
        self._usage: int | None = None
        self._replies = 0

    async def read(self) -> Any:
        reply = await self._call.read()
        if reply is not grpc.aio.EOF:
            self._replies += 1
            if reply.WhichOneof("event") == "done":
                self._usage = reply.done.prompt_tokens + reply.done.completion_tokens
        return reply

    def cancel(self) -> bool:
        result = self._call.cancel()
        # No reply at all: refused before anything was stored; cut short: the estimate stays charged.
        self._metering.settle(self._admission, 0 if self._replies == 0 else self._usage)
        return result
