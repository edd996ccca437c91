"""A caller's limits, from one place: the admin flag, an API key's rate-limit overrides, and the quotas (with their use
in the current period) that apply to a user or one of the user's keys.

:class:`LimitsProvider` is the only cache of them. An API key's limits come with auth's ``Authenticate`` answer (the
authenticator hands them over with :meth:`LimitsProvider.remember`, so a key costs no second call); an access token's
are asked with ``GetLimits``. Entries live at most ``ttl`` seconds; a change made through any gateway replica is
forgotten at once on every replica (:class:`chatplane.gateway.broadcast.Invalidations`).
"""

from __future__ import annotations

import time

from cachetools import TLRUCache

from chatplane.gateway.authn import Principal
from chatplane.gateway.errors import upstream
from chatplane.protos.auth.v1 import auth_pb2, auth_pb2_grpc


class LimitsProvider:
    def __init__(self, auth: auth_pb2_grpc.AuthServiceStub, *, ttl: float, size: int, timeout: float) -> None:
        self._auth = auth
        self._ttl = max(ttl, 1.0)
        self._timeout = timeout
        self._cache: TLRUCache[tuple[str, str], auth_pb2.Limits] = TLRUCache(
            maxsize=size, ttu=lambda _key, _value, now: now + self._ttl, timer=time.monotonic
        )

    def remember(self, user_id: str, api_key_id: str, limits: auth_pb2.Limits) -> None:
        """What auth answered for this caller just now (with an ``Authenticate``)."""
        self._cache[(user_id, api_key_id)] = limits

    async def get(self, principal: Principal) -> auth_pb2.Limits:
        key = (principal.user_id, principal.api_key_id)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        with upstream("auth"):
            limits = await self._auth.GetLimits(
                auth_pb2.GetLimitsRequest(user_id=principal.user_id, api_key_id=principal.api_key_id),
                timeout=self._timeout,
            )
        self._cache[key] = limits
        return limits

    def forget_user(self, user_id: str) -> None:
        """The user's quotas or admin flag changed: every entry of the user (all keys, tokens) goes."""
        for key in [k for k in list(self._cache) if k[0] == user_id]:
            self._cache.pop(key, None)

    def forget_api_key(self, api_key_id: str) -> None:
        for key in [k for k in list(self._cache) if k[1] == api_key_id]:
            self._cache.pop(key, None)
