"""The gateway's gRPC channels and stubs to auth, conversation and inference, opened and closed by the lifespan."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc

from chatplane.common.grpc_client import channel, is_serving
from chatplane.gateway.authn import Authenticator
from chatplane.gateway.errors import upstream
from chatplane.gateway.metering import Metering
from chatplane.gateway.settings import GatewaySettings
from chatplane.protos.auth.v1 import auth_pb2_grpc
from chatplane.protos.conversation.v1 import conversation_pb2_grpc
from chatplane.protos.inference.v1 import inference_pb2, inference_pb2_grpc


@dataclass
class ModelCache:
    """The inference model list, cached for a few seconds (it changes only when inference is redeployed)."""

    stub: inference_pb2_grpc.InferenceServiceStub
    ttl: float
    timeout: float
    _models: list[inference_pb2.Model] = field(default_factory=list)
    _fetched_at: float = float("-inf")
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def models(self) -> list[inference_pb2.Model]:
        if time.monotonic() - self._fetched_at < self.ttl:
            return self._models
        async with self._lock:
            if time.monotonic() - self._fetched_at >= self.ttl:
                with upstream("inference"):
                    reply = await self.stub.ListModels(inference_pb2.ListModelsRequest(), timeout=self.timeout)
                self._models = list(reply.models)
                self._fetched_at = time.monotonic()
        return self._models

    async def get(self, model_id: str) -> inference_pb2.Model | None:
        for model in await self.models():
            if model.id == model_id:
                return model
        return None


class Backends:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.channels: dict[str, grpc.aio.Channel] = {
            "auth": channel(settings.auth_target),
            "conversation": channel(settings.conversation_target),
            "inference": channel(settings.inference_target),
        }
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channels["auth"])
        self.conversation = conversation_pb2_grpc.ConversationServiceStub(self.channels["conversation"])
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channels["inference"])
        self.authenticator = Authenticator(
            self.auth,
            cache_ttl=settings.auth_cache_ttl_seconds,
            negative_ttl=settings.auth_negative_cache_seconds,
            cache_size=settings.auth_cache_size,
            jwks_refresh=settings.jwks_refresh_seconds,
            jwks_max_age=settings.jwks_max_age_seconds,
            timeout=settings.upstream_timeout_seconds,
        )
        self.models = ModelCache(self.inference, settings.models_cache_seconds, settings.upstream_timeout_seconds)
        self.metering = Metering.from_settings(settings, self.auth)

    async def readiness(self) -> dict[str, bool]:
        """Which backends answer grpc.health.v1 SERVING, asked concurrently."""
        names = list(self.channels)
        results = await asyncio.gather(
            *(is_serving(self.channels[n], timeout=self.settings.readiness_timeout_seconds) for n in names)
        )
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        await self.metering.close()  # lets the last completion records reach auth
        await asyncio.gather(*(ch.close() for ch in self.channels.values()))
