"""Token buckets and quota counters, shared by every gateway replica (Redis) or in this process.

Every limit the gateway enforces is a token bucket: a :class:`Bucket` holds up to ``capacity`` units and is refilled
continuously at ``capacity`` per ``period`` seconds (so a reset header means what OpenAI's means: the time until the
bucket is full again). The rate limits are a request bucket and a token bucket per API key and per user (the user's
shared by all of that user's keys and access tokens); login and sign-up attempts, and exports, are buckets too.
:meth:`Limiter.take` takes a cost from several buckets at once, all or none; :meth:`Limiter.give` corrects a take
afterwards (an estimate replaced by the exact usage, a refund). Quota counters hold the tokens charged in the current
day or month: :meth:`Limiter.reserve` adds the estimate if every counter stays within its limit, :meth:`Limiter.settle`
replaces it by the exact figure.

With a Redis URL all of it lives in Redis and is changed by Lua scripts (atomic, one round trip each, Redis' clock),
so all replicas enforce the same limits. Without one (the embedded default) an in-process implementation with the
same semantics is used.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Bucket:
    """A token bucket: ``key`` names it, ``capacity`` units, refilled at ``capacity`` per ``period`` seconds."""

    key: str
    capacity: int
    period: float = 60.0

    def retry_after(self, level: float, cost: int) -> float:
        """Seconds until ``cost`` units are there (a cost above the capacity waits for a full bucket)."""
        missing = min(cost, self.capacity) - level
        return max(0.0, missing * self.period / self.capacity)

    def reset_after(self, level: float) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - max(level, 0.0)) * self.period / self.capacity)


@dataclass(frozen=True)
class Taken:
    """The outcome of one :meth:`Limiter.take`: allowed (every bucket had its cost, and paid it) or not (none paid);
    each bucket's level afterwards, in the order asked."""

    allowed: bool
    levels: list[float]


@dataclass(frozen=True)
class QuotaCounter:
    """One quota's counter: ``key`` names the quota and its current period; ``seed`` is what auth counted so far."""

    key: str
    limit: int
    seed: int
    ttl_seconds: int


class Limiter(Protocol):
    async def take(self, takes: list[tuple[Bucket, int]]) -> Taken: ...

    async def give(self, gives: list[tuple[Bucket, int]]) -> None: ...

    async def reserve(self, counters: list[QuotaCounter], tokens: int) -> int: ...

    async def settle(self, counters: list[QuotaCounter], delta: int) -> None: ...

    async def close(self) -> None: ...


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


def retry_headers(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(1, math.ceil(seconds * 1000)))}


# --- in-process ---------------------------------------------------------------------------------------------------


class LocalLimiter:
    """The same semantics in this process only (the embedded default: one gateway, no Redis)."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._levels: dict[str, tuple[float, float]] = {}  # bucket key -> (level, updated_at)
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (tokens, expires_at)

    def _level(self, bucket: Bucket, now: float) -> float:
        level, at = self._levels.get(bucket.key, (float(bucket.capacity), now))
        return min(bucket.capacity, level + max(0.0, now - at) * bucket.capacity / bucket.period)

    async def take(self, takes: list[tuple[Bucket, int]]) -> Taken:
        now = self._clock()
        if len(self._levels) > 100_000:  # drop idle buckets (they are full again after a period anyway)
            self._levels = {k: v for k, v in self._levels.items() if now - v[1] < 3600}
        levels = [self._level(b, now) for b, _ in takes]
        allowed = all(level >= cost for level, (_, cost) in zip(levels, takes, strict=True))
        if allowed:
            levels = [level - cost for level, (_, cost) in zip(levels, takes, strict=True)]
        for level, (bucket, _) in zip(levels, takes, strict=True):
            self._levels[bucket.key] = (level, now)
        return Taken(allowed, levels)

    async def give(self, gives: list[tuple[Bucket, int]]) -> None:
        now = self._clock()
        for bucket, amount in gives:
            if bucket.key in self._levels:
                self._levels[bucket.key] = (min(bucket.capacity, self._level(bucket, now) + amount), now)

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

# KEYS: buckets; ARGV: (capacity, period in ms, cost) per bucket. Returns {allowed, level...}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels = {}
local ok = 1
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[i * 3 - 2])
  local period = tonumber(ARGV[i * 3 - 1])
  local h = redis.call('HMGET', key, 'v', 'ts')
  local v = tonumber(h[1]) or cap
  local ts = tonumber(h[2]) or now
  v = math.min(cap, v + math.max(0, now - ts) * cap / period)
  levels[i] = v
  if v < tonumber(ARGV[i * 3]) then ok = 0 end
end
local out = {ok}
for i, key in ipairs(KEYS) do
  local v = levels[i]
  if ok == 1 then v = v - tonumber(ARGV[i * 3]) end
  redis.call('HSET', key, 'v', tostring(v), 'ts', now)
  redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[i * 3 - 1])) + 60000)
  out[i + 1] = tostring(v)
end
return out
"""

# KEYS: buckets; ARGV: (capacity, period in ms, amount) per bucket. Adds ``amount`` (may be negative) to existing buckets.
_GIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
  local h = redis.call('HMGET', key, 'v', 'ts')
  if h[1] then
    local cap = tonumber(ARGV[i * 3 - 2])
    local period = tonumber(ARGV[i * 3 - 1])
    local v = math.min(cap, tonumber(h[1]) + math.max(0, now - tonumber(h[2])) * cap / period)
    redis.call('HSET', key, 'v', tostring(math.min(cap, v + tonumber(ARGV[i * 3]))), 'ts', now)
  end
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
    """The limiter in Redis, shared by every replica that uses the same Redis and prefix."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._take = redis.register_script(_TAKE)
        self._give = redis.register_script(_GIVE)
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)

    def _args(self, pairs: list[tuple[Bucket, int]]) -> tuple[list[str], list[float]]:
        keys = [f"{self._prefix}bucket:{b.key}" for b, _ in pairs]
        args: list[float] = []
        for bucket, amount in pairs:
            args += [bucket.capacity, bucket.period * 1000, amount]
        return keys, args

    async def take(self, takes: list[tuple[Bucket, int]]) -> Taken:
        keys, args = self._args(takes)
        ok, *levels = await self._take(keys=keys, args=args)
        return Taken(bool(int(ok)), [float(v) for v in levels])

    async def give(self, gives: list[tuple[Bucket, int]]) -> None:
        keys, args = self._args(gives)
        await self._give(keys=keys, args=args)

    async def reserve(self, counters: list[QuotaCounter], tokens: int) -> int:
        args: list[int] = [tokens]
        for c in counters:
            args += [c.limit, c.seed, c.ttl_seconds]
        return int(await self._reserve(keys=[f"{self._prefix}quota:{c.key}" for c in counters], args=args))

    async def settle(self, counters: list[QuotaCounter], delta: int) -> None:
        await self._settle(keys=[f"{self._prefix}quota:{c.key}" for c in counters], args=[delta])

    async def close(self) -> None:
        return None  # the Redis client belongs to the backends
