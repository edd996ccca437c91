"""Rate limits (requests and tokens per minute, per API key) and quota counters, shared by every gateway replica.

Rate limits are token buckets, one for requests and one for tokens, refilled continuously at ``limit / 60`` per
second up to ``limit`` (so the reset headers mean what OpenAI's mean: the time until the bucket is full again). A
request takes one request and its estimated tokens; when the completion ends the estimate is corrected to the exact
figure. Quota counters hold the tokens charged in the current day or month: admission reserves the estimate,
settlement replaces it by the exact figure.

With a Redis URL both live in Redis and are changed by Lua scripts (atomic, one round trip each, Redis' clock), so
all replicas enforce the same limit. Without one (the embedded default) an in-process implementation with the same
semantics is used.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

# --- decisions ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    rpm: int
    tpm: int
    remaining_requests: float
    remaining_tokens: float
    retry_after: float  # seconds until the request could pass (0 when allowed)

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers (and ``retry-after`` when refused)."""
        req_reset = (self.rpm - max(self.remaining_requests, 0)) * 60 / self.rpm if self.rpm else 0
        tok_reset = (self.tpm - max(self.remaining_tokens, 0)) * 60 / self.tpm if self.tpm else 0
        out = {
            "x-ratelimit-limit-requests": str(self.rpm),
            "x-ratelimit-remaining-requests": str(max(0, math.floor(self.remaining_requests))),
            "x-ratelimit-reset-requests": duration(req_reset),
            "x-ratelimit-limit-tokens": str(self.tpm),
            "x-ratelimit-remaining-tokens": str(max(0, math.floor(self.remaining_tokens))),
            "x-ratelimit-reset-tokens": duration(tok_reset),
        }
        if not self.rpm:
            for name in ("limit", "remaining", "reset"):
                out.pop(f"x-ratelimit-{name}-requests")
        if not self.tpm:
            for name in ("limit", "remaining", "reset"):
                out.pop(f"x-ratelimit-{name}-tokens")
        if not self.allowed:
            out["retry-after"] = str(max(1, math.ceil(self.retry_after)))
            out["retry-after-ms"] = str(max(1, math.ceil(self.retry_after * 1000)))
        return out


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


def decide(rpm: int, tpm: int, requests: float, tokens: float, cost: int, allowed: bool) -> RateDecision:
    retry = 0.0
    if not allowed:
        if rpm and requests < 1:
            retry = max(retry, (1 - requests) * 60 / rpm)
        if tpm and tokens < cost:  # a request larger than the whole budget is told to wait a full minute
            retry = max(retry, (min(cost, tpm) - tokens) * 60 / tpm)
    return RateDecision(allowed, rpm, tpm, requests, tokens, retry)


@dataclass(frozen=True)
class QuotaCounter:
    """One quota's counter: ``key`` names the quota and its current period; ``seed`` is what auth counted so far."""

    key: str
    limit: int
    seed: int
    ttl_seconds: int


class Limiter(Protocol):
    async def acquire(self, key: str, rpm: int, tpm: int, cost: int) -> RateDecision: ...

    async def adjust_tokens(self, key: str, delta: int) -> None: ...

    async def reserve(self, counters: list[QuotaCounter], tokens: int) -> int: ...

    async def settle(self, counters: list[QuotaCounter], delta: int) -> None: ...

    async def close(self) -> None: ...


# --- in-process ---------------------------------------------------------------------------------------------------


class LocalLimiter:
    """The same semantics in this process only (the embedded default: one gateway, no Redis)."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}  # key -> [requests, tokens, updated_at, rpm, tpm]
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (tokens, expires_at)

    def _refill(self, key: str, rpm: int, tpm: int) -> list[float]:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 100_000:  # drop full, idle buckets
                self._buckets = {k: b for k, b in self._buckets.items() if now - b[2] < 60}
            bucket = self._buckets[key] = [float(rpm), float(tpm), now, rpm, tpm]
        elapsed = max(0.0, now - bucket[2])
        bucket[0] = min(rpm, bucket[0] + elapsed * rpm / 60)
        bucket[1] = min(tpm, bucket[1] + elapsed * tpm / 60)
        bucket[2], bucket[3], bucket[4] = now, rpm, tpm
        return bucket

    async def acquire(self, key: str, rpm: int, tpm: int, cost: int) -> RateDecision:
        bucket = self._refill(key, rpm, tpm)
        allowed = (rpm == 0 or bucket[0] >= 1) and (tpm == 0 or bucket[1] >= cost)
        if allowed:
            bucket[0] -= 1 if rpm else 0
            bucket[1] -= cost if tpm else 0
        return decide(rpm, tpm, bucket[0], bucket[1], cost, allowed)

    async def adjust_tokens(self, key: str, delta: int) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket[1] = min(bucket[4], bucket[1] - delta)

    def _counter(self, c: QuotaCounter) -> int:
        now = self._clock()
        value = self._counters.get(c.key)
        if value is None or value[1] <= now:
            self._counters[c.key] = (c.seed, now + c.ttl_seconds)
            return c.seed
        return value[0]

    async def reserve(self, counters: list[QuotaCounter], tokens: int) -> int:
        """Add ``tokens`` to every counter if each stays within its limit; else the index of the first that would
        not (nothing is added)."""
        for i, c in enumerate(counters):
            if self._counter(c) + tokens > c.limit:
                return i
        for c in counters:
            used, expires = self._counters[c.key]
            self._counters[c.key] = (used + tokens, expires)
        return -1

    async def settle(self, counters: list[QuotaCounter], delta: int) -> None:
        for c in counters:
            if c.key in self._counters:
                used, expires = self._counters[c.key]
                self._counters[c.key] = (max(0, used + delta), expires)

    async def close(self) -> None:
        return None


# --- Redis --------------------------------------------------------------------------------------------------------

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'r', 't', 'ts')
local r = tonumber(h[1]) or rpm
local tk = tonumber(h[2]) or tpm
local ts = tonumber(h[3]) or now
local elapsed = math.max(0, now - ts)
r = math.min(rpm, r + elapsed * rpm / 60000)
tk = math.min(tpm, tk + elapsed * tpm / 60000)
local ok = 0
if (rpm == 0 or r >= 1) and (tpm == 0 or tk >= cost) then
  if rpm > 0 then r = r - 1 end
  if tpm > 0 then tk = tk - cost end
  ok = 1
end
redis.call('HSET', KEYS[1], 'r', tostring(r), 't', tostring(tk), 'ts', now, 'tpm', tpm)
redis.call('PEXPIRE', KEYS[1], 120000)
return {ok, tostring(r), tostring(tk)}
"""

_ADJUST = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local tpm = tonumber(redis.call('HGET', KEYS[1], 'tpm')) or 0
  local tk = tonumber(redis.call('HGET', KEYS[1], 't')) or 0
  redis.call('HSET', KEYS[1], 't', tostring(math.min(tpm, tk - tonumber(ARGV[1]))))
end
return 0
"""

# KEYS: counters; ARGV: tokens, then (limit, seed, ttl) per counter.
_RESERVE = """
local tokens = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local base = 1 + (i - 1) * 3
  redis.call('SET', key, ARGV[base + 2], 'NX', 'EX', ARGV[base + 3])
  if tonumber(redis.call('GET', key)) + tokens > tonumber(ARGV[base + 1]) then
    return i - 1
  end
end
for i, key in ipairs(KEYS) do
  redis.call('INCRBY', key, tokens)
end
return -1
"""

_SETTLE = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    local v = redis.call('INCRBY', key, ARGV[1])
    if v < 0 then redis.call('SET', key, 0, 'KEEPTTL') end
  end
end
return 0
"""


class RedisLimiter:
    """The limiter in Redis, shared by every replica that uses the same URL and prefix."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._prefix = prefix
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._adjust = self._redis.register_script(_ADJUST)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}"

    async def acquire(self, key: str, rpm: int, tpm: int, cost: int) -> RateDecision:
        ok, requests, tokens = await self._acquire(keys=[self._key("rl", key)], args=[rpm, tpm, cost])
        return decide(rpm, tpm, float(requests), float(tokens), cost, bool(int(ok)))

    async def adjust_tokens(self, key: str, delta: int) -> None:
        await self._adjust(keys=[self._key("rl", key)], args=[delta])

    async def reserve(self, counters: list[QuotaCounter], tokens: int) -> int:
        args: list[int] = [tokens]
        for c in counters:
            args += [c.limit, c.seed, c.ttl_seconds]
        return int(await self._reserve(keys=[self._key("quota", c.key) for c in counters], args=args))

    async def settle(self, counters: list[QuotaCounter], delta: int) -> None:
        await self._settle(keys=[self._key("quota", c.key) for c in counters], args=[delta])

    async def close(self) -> None:
        await self._redis.aclose()
