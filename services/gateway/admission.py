"""Admission of a model call: the rate limits (per API key and per user) and the quotas, charged with an estimate and
settled with the exact usage; and the attempt buckets of the routes that are throttled (login, sign-up, exports).

A model call takes one request and its estimated tokens (the prompt's tokens plus the completion tokens it reserves)
from its buckets: the API key's (for an access token there is none) and the user's, which all of the user's keys and
tokens share; all of them or none. When quotas apply, the estimate is also reserved on their counters. The
:class:`Ticket` it gets is settled when the call ends: the exact usage replaces the estimate, in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from chatplane.gateway.authn import Principal
from chatplane.gateway.errors import APIError
from chatplane.gateway.limits import LimitsProvider
from chatplane.gateway.ratelimit import Bucket, Limiter, QuotaCounter, Taken, duration, retry_headers
from chatplane.gateway.settings import GatewaySettings
from chatplane.protos.auth.v1 import auth_pb2

log = logging.getLogger(__name__)

_PERIOD_NAMES = {auth_pb2.QUOTA_PERIOD_DAY: "day", auth_pb2.QUOTA_PERIOD_MONTH: "month"}


@dataclass
class Ticket:
    """What one admitted model call holds: its estimate, taken from its token buckets and quota counters."""

    estimate: int
    token_buckets: list[Bucket]
    counters: list[QuotaCounter]
    headers: dict[str, str] = field(default_factory=dict)  # OpenAI's x-ratelimit-*, for the call's response
    settled: bool = False

    @contextmanager
    def headed(self) -> Iterator[None]:
        """An :class:`APIError` raised inside (the call failed, its answer could not be made) carries the rate-limit
        headers too: every answer to an admitted call has them."""
        try:
            yield
        except APIError as err:
            err.headers = {**self.headers, **(err.headers or {})} or None
            raise


def _headers(requests: list[tuple[Bucket, float]], tokens: list[tuple[Bucket, float]]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers, of the bucket with the least left of each kind (the one that binds)."""
    out: dict[str, str] = {}
    for kind, pairs in (("requests", requests), ("tokens", tokens)):
        if not pairs:
            continue
        bucket, level = min(pairs, key=lambda p: p[1] / p[0].capacity)
        out[f"x-ratelimit-limit-{kind}"] = str(bucket.capacity)
        out[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(level)))
        out[f"x-ratelimit-reset-{kind}"] = duration(bucket.reset_after(level))
    return out


def unavailable_store() -> APIError:
    return APIError(503, "The rate limiter is temporarily unavailable. Please retry shortly.",
                    type="service_unavailable", code="service_unavailable")


class Admitter:
    def __init__(self, settings: GatewaySettings, limiter: Limiter, limits: LimitsProvider) -> None:
        self.settings = settings
        self.limiter = limiter
        self.limits = limits
        self._tasks: set[asyncio.Task] = set()

    def rate_buckets(self, principal: Principal, limits: auth_pb2.Limits) -> tuple[list[Bucket], list[Bucket]]:
        """(request buckets, token buckets) of a caller: its API key's, then its user's. A limit of 0 is none."""
        s = self.settings
        requests, tokens = [], []
        if principal.api_key_id:
            rpm = limits.rate_limits.requests_per_minute or s.rate_limit_requests_per_minute
            tpm = limits.rate_limits.tokens_per_minute or s.rate_limit_tokens_per_minute
            if rpm:
                requests.append(Bucket(f"key:{principal.api_key_id}:requests", rpm))
            if tpm:
                tokens.append(Bucket(f"key:{principal.api_key_id}:tokens", tpm))
        if s.user_rate_limit_requests_per_minute:
            requests.append(Bucket(f"user:{principal.user_id}:requests", s.user_rate_limit_requests_per_minute))
        if s.user_rate_limit_tokens_per_minute:
            tokens.append(Bucket(f"user:{principal.user_id}:tokens", s.user_rate_limit_tokens_per_minute))
        return requests, tokens

    async def admit(
        self,
        principal: Principal,
        *,
        prompt_tokens: Callable[[bool], Awaitable[int]],
        reserve: int,
    ) -> Ticket:
        """Charge the estimate or raise a 429 (rate limit or quota). ``prompt_tokens(exact)`` counts the prompt:
        exactly (a tokenizer call) only when a quota applies, roughly otherwise. The ticket carries the rate-limit
        headers for the response (a refusal carries them itself)."""
        limits = await self.limits.get(principal)
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
        requests, tokens = self.rate_buckets(principal, limits)
        takes = [(b, 1) for b in requests] + [(b, estimate) for b in tokens]
        headers: dict[str, str] = {}
        if takes:
            taken: Taken = await self._guard(self.limiter.take(takes))
            levels = dict(zip([b.key for b, _ in takes], taken.levels, strict=True))
            headers = _headers([(b, levels[b.key]) for b in requests], [(b, levels[b.key]) for b in tokens])
            if not taken.allowed:
                raise self._refusal(requests, tokens, levels, estimate, headers)
        if counters:
            refused = await self._guard(self.limiter.reserve(counters, estimate))
            if refused >= 0:
                if takes:  # nothing was admitted: the rate-limit takes go back
                    await self._guard(self.limiter.give([(b, cost) for b, cost in takes]))
                quota = counters[refused]
                raise APIError(
                    429,
                    "You exceeded your current quota: this request needs about "
                    f"{estimate} tokens and the {'API key' if ':-:' not in quota.key else 'account'} budget of "
                    f"{quota.limit} tokens for this period does not have them left.",
                    type="insufficient_quota",
                    code="insufficient_quota",
                    headers=headers or None,
                )
        return Ticket(estimate, tokens, counters, headers)

    @staticmethod
    def _refusal(
        requests: list[Bucket], tokens: list[Bucket], levels: dict[str, float], estimate: int, headers: dict
    ) -> APIError:
        short = [(b, 1) for b in requests if levels[b.key] < 1] + [(b, estimate) for b in tokens
                                                                    if levels[b.key] < estimate]
        bucket, cost = max(short, key=lambda p: p[0].retry_after(levels[p[0].key], p[1]))
        wait = bucket.retry_after(levels[bucket.key], cost)
        headers.update(retry_headers(wait))
        which = "requests" if bucket in requests else "tokens"
        whose = "your account (all its keys and tokens)" if bucket.key.startswith("user:") else "this API key"
        if which == "tokens" and estimate > bucket.capacity:
            message = (f"Request too large: it needs about {estimate} tokens and the limit of {whose} is "
                       f"{bucket.capacity} tokens per minute. Lower max_tokens or the prompt.")
        else:
            message = (f"Rate limit reached for {which} per minute of {whose} (limit {bucket.capacity}). Please "
                       f"try again in {headers['retry-after']}s.")
        return APIError(429, message, type=which, code="rate_limit_exceeded", headers=headers)

    async def attempt(self, buckets: list[Bucket], message: str) -> None:
        """One attempt at a throttled action (login, sign-up, export): a unit from each bucket, or a 429 with
        Retry-After."""
        taken = await self._guard(self.limiter.take([(b, 1) for b in buckets]))
        if taken.allowed:
            return
        wait = max(b.retry_after(level, 1) for b, level in zip(buckets, taken.levels, strict=True))
        raise APIError(429, f"{message} Please try again in {max(1, round(wait))}s.", type="requests",
                       code="rate_limit_exceeded", headers=retry_headers(wait))

    def refund(self, buckets: list[Bucket]) -> None:
        """Give back an attempt (a successful login does not count against the attempts), in the background."""
        self._background(self.limiter.give([(b, 1) for b in buckets]))

    async def _guard(self, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.error("rate-limit store unavailable", extra={"error": repr(exc)[:300]})
            raise unavailable_store() from None
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):
                log.error("rate-limit store error", extra={"error": repr(exc)[:300]})
                raise unavailable_store() from None
            raise

    def settle(self, ticket: Ticket | None, actual_tokens: int | None) -> None:
        """Replace the estimate by the exact usage (None: unknown, the estimate stays charged). In the background."""
        if ticket is None or ticket.settled:
            return
        ticket.settled = True
        if actual_tokens is None or actual_tokens == ticket.estimate:
            return
        self._background(self._settle(ticket, actual_tokens - ticket.estimate))

    async def _settle(self, ticket: Ticket, delta: int) -> None:
        if ticket.token_buckets:
            await self.limiter.give([(b, -delta) for b in ticket.token_buckets])
        if ticket.counters:
            await self.limiter.settle(ticket.counters, delta)

    def _background(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as exc:  # noqa: BLE001 - a lost correction only skews one estimate
                log.warning("rate-limit correction failed", extra={"error": repr(exc)[:300]})

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
