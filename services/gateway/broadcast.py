"""Telling every gateway replica to forget what it cached about a caller: a revoked API key, a user whose limits
changed. With Redis, one message on a pub/sub channel reaches every replica in milliseconds (well within the second
a revocation may take); each replica also forgets at once when the change went through it. Without Redis (one
gateway) only this process forgets. If the subscription is lost for a while, the caches' own lifetimes (seconds)
still bound how long a stale answer lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from chatplane.common import retry

log = logging.getLogger(__name__)

Forget = Callable[[str], None]


class Invalidations:
    def __init__(self, redis: Any | None, prefix: str) -> None:
        self._redis = redis
        self._channel = f"{prefix}invalidate"
        self._on: dict[str, list[Forget]] = {"key": [], "user": []}
        self._task: asyncio.Task | None = None
        self.subscribed = asyncio.Event()  # the subscription is live (tests wait for it)

    def on_api_key(self, forget: Forget) -> None:
        self._on["key"].append(forget)

    def on_user(self, forget: Forget) -> None:
        self._on["user"].append(forget)

    async def api_key_changed(self, api_key_id: str) -> None:
        """Revoked, or its rate limits changed."""
        await self._announce("key", api_key_id)

    async def user_changed(self, user_id: str) -> None:
        """Its quotas, or a quota of one of its keys, changed."""
        await self._announce("user", user_id)

    async def _announce(self, kind: str, ident: str) -> None:
        self._apply(kind, ident)
        if self._redis is None:
            return
        try:
            await self._redis.publish(self._channel, f"{kind}:{ident}")
        except Exception as exc:  # noqa: BLE001 - the change is made; other replicas forget when their entry expires
            log.warning("invalidation not broadcast", extra={"kind": kind, "error": repr(exc)[:300]})

    def _apply(self, kind: str, ident: str) -> None:
        for forget in self._on.get(kind, ()):
            forget(ident)

    def start(self) -> None:
        if self._redis is not None and self._task is None:
            self._task = asyncio.create_task(self._listen(), name="invalidations")

    async def _listen(self) -> None:
        # Redis away: subscribed again by the one retry policy (0.2 s doubling up to 5 s). A subscription that was
        # up and then ended starts the policy afresh (a reconnect after hours of health does not wait the maximum).
        while True:
            await retry.until_success(self._subscription, first=0.2, maximum=5.0, on_failure=self._lost)
            await asyncio.sleep(0.2)  # never a tight loop, even if Redis accepts and drops subscriptions at once

    async def _subscription(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            self.subscribed.set()
            async for message in pubsub.listen():
                data = message.get("data")
                if isinstance(data, bytes):
                    kind, _, ident = data.decode(errors="replace").partition(":")
                    self._apply(kind, ident)
            raise ConnectionError("the subscription ended")
        except Exception as exc:
            if not self.subscribed.is_set():
                raise  # never subscribed: the retry policy waits
            self._lost(exc, 0.0)  # it was up: subscribe again at once, and back off only if that fails
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _lost(self, exc: BaseException, delay: float) -> None:
        self.subscribed.clear()
        log.warning("invalidation subscription lost, retrying",
                    extra={"retry_in_s": round(delay, 2), "error": repr(exc)[:300]})

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
