"""The gateway's clients of auth, conversation and inference, opened and closed by the lifespan."""

from __future__ import annotations

import asyncio

import grpc

from chatplane.common.grpc_client import channel, is_serving
from chatplane.common.inference import InferenceClient
from chatplane.gateway.admission import Admitter
from chatplane.gateway.authn import Authenticator
from chatplane.gateway.broadcast import Invalidations
from chatplane.gateway.completions import CompletionBatcher
from chatplane.gateway.limits import LimitsProvider
from chatplane.gateway.ratelimit import Limiter, LocalLimiter, RedisLimiter
from chatplane.gateway.settings import GatewaySettings
from chatplane.gateway.spool import CompletionSpool
from chatplane.protos.auth.v1 import auth_pb2_grpc
from chatplane.protos.conversation.v1 import conversation_pb2_grpc


class Backends:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.channels: dict[str, grpc.aio.Channel] = {
            "auth": channel(settings.auth_target),
            "conversation": channel(settings.conversation_target),
        }
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channels["auth"])
        self.conversation = conversation_pb2_grpc.ConversationServiceStub(self.channels["conversation"])
        self.inference = InferenceClient.from_settings(
            settings, timeout=settings.upstream_timeout_seconds, stream_timeout=settings.stream_timeout_seconds
        )
        self.redis = None
        if settings.redis_url:
            import redis.asyncio as redis

            # A bounded pool that makes a request wait for a connection (up to 2 s) instead of failing at once when
            # a burst needs more connections than the pool holds.
            pool = redis.BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=64, timeout=2.0, socket_timeout=2.0, socket_connect_timeout=2.0
            )
            self.redis = redis.Redis(connection_pool=pool)
        self.limits = LimitsProvider(
            self.auth, ttl=settings.auth_cache_ttl_seconds, size=settings.auth_cache_size,
            timeout=settings.upstream_timeout_seconds,
        )
        self.authenticator = Authenticator(
            self.auth,
            cache_ttl=settings.auth_cache_ttl_seconds,
            negative_ttl=settings.auth_negative_cache_seconds,
            cache_size=settings.auth_cache_size,
            jwks_refresh=settings.jwks_refresh_seconds,
            jwks_max_age=settings.jwks_max_age_seconds,
            timeout=settings.upstream_timeout_seconds,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            on_limits=self.limits.remember,
        )
        # A revoked key or changed limits are forgotten by every replica (Redis pub/sub), not only this one.
        self.invalidations = Invalidations(self.redis, settings.redis_key_prefix)
        self.invalidations.on_api_key(self.authenticator.forget_api_key)
        self.invalidations.on_api_key(self.limits.forget_api_key)
        self.invalidations.on_user(self.limits.forget_user)
        limiter: Limiter = (
            RedisLimiter(self.redis, settings.redis_key_prefix) if self.redis is not None else LocalLimiter()
        )
        self.admission = Admitter(settings, limiter, self.limits)
        # Finished stateless completions: batched into the local spool, published from there to Kafka.
        self.spool = CompletionSpool(settings.spool_path, settings.kafka_bootstrap_servers)
        self.recorder = CompletionBatcher(self.spool.write)

    async def start(self) -> None:
        """Background work (in the app's lifespan): the spool's relay, the records' writer, the invalidations."""
        await self.spool.start()
        self.recorder.start()
        self.invalidations.start()
        self.inference.start()  # discovery and the replicas' health and load watches, before the first request

    async def readiness(self) -> dict[str, bool]:
        """Which backends answer grpc.health.v1 SERVING, asked concurrently; inference: every pool has a serving
        replica (the client watches their health)."""
        names = list(self.channels)
        timeout = self.settings.readiness_timeout_seconds
        *results, inference = await asyncio.gather(
            *(is_serving(self.channels[n], timeout=timeout) for n in names), self.inference.ready(timeout)
        )
        return {**dict(zip(names, results, strict=True)), "inference": inference}

    async def close(self) -> None:
        await self.admission.close()
        await self.recorder.close()  # writes the last completion records to the spool
        await self.spool.close()  # publishes what it can within a few seconds; the rest waits in the file
        await self.invalidations.close()
        if self.redis is not None:
            await self.redis.aclose()
            await self.redis.connection_pool.disconnect()
        await self.inference.close()
        await asyncio.gather(*(ch.close() for ch in self.channels.values()))
