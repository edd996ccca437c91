"""The gateway's clients of auth, conversation and inference, opened and closed by the lifespan."""

from __future__ import annotations

import asyncio

import grpc

from chatplane.common.grpc_client import channel, is_serving
from chatplane.common.inference import InferenceClient
from chatplane.gateway.authn import Authenticator
from chatplane.gateway.metering import Metering
from chatplane.gateway.settings import GatewaySettings
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
        self.authenticator = Authenticator(
            self.auth,
            cache_ttl=settings.auth_cache_ttl_seconds,
            negative_ttl=settings.auth_negative_cache_seconds,
            cache_size=settings.auth_cache_size,
            jwks_refresh=settings.jwks_refresh_seconds,
            jwks_max_age=settings.jwks_max_age_seconds,
            timeout=settings.upstream_timeout_seconds,
        )
        self.metering = Metering.from_settings(settings, self.auth)

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
        await self.metering.close()  # lets the last completion records reach auth
        await self.inference.close()
        await asyncio.gather(*(ch.close() for ch in self.channels.values()))
