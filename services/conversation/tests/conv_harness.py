"""Helpers of the conversation service's tests: an in-process server harness and error inspection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from chatplane.dev.inference import Inference

from chatplane.common.errors import error_details
from chatplane.conversation.server import RunningServer, running
from chatplane.conversation.settings import ConversationSettings
from chatplane.protos.conversation.v1 import conversation_pb2 as pb
from chatplane.protos.conversation.v1 import conversation_pb2_grpc

SYSTEM_PROMPT = "You are a careful test assistant."


@dataclass
class Harness:
    stub: conversation_pb2_grpc.ConversationServiceStub
    server: RunningServer
    inference: Inference
    settings: ConversationSettings

    async def create(self, user: str = "alice", title: str = "") -> pb.Conversation:
        return await self.stub.CreateConversation(pb.CreateConversationRequest(user_id=user, title=title))

    async def get(self, conversation_id: str, user: str = "alice") -> pb.ConversationWithMessages:
        return await self.stub.GetConversation(pb.GetConversationRequest(user_id=user, conversation_id=conversation_id))

    async def send(
        self, conversation_id: str, content: str, user: str = "alice", **fields
    ) -> list[pb.SendMessageEvent]:
        """All events of one SendMessage call (raises the call's error)."""
        request = pb.SendMessageRequest(user_id=user, conversation_id=conversation_id, content=content, **fields)
        return [event async for event in self.stub.SendMessage(request)]


@asynccontextmanager
async def harness(
    database_url: str, inference: Inference, data_dir: Path, **overrides
) -> AsyncIterator[Harness]:
    """The conversation service on ``database_url``, talking to ``inference``; ``overrides`` are settings fields."""
    fields = dict(
        database_url=database_url,
        inference_pools=inference.target,
        port=0,
        data_dir=data_dir,
        system_prompt=SYSTEM_PROMPT,
        default_max_tokens=16,
        inference_timeout_seconds=20,
    )
    settings = ConversationSettings(**{**fields, **overrides})
    async with running(settings) as server, grpc.aio.insecure_channel(server.address) as chan:
        yield Harness(conversation_pb2_grpc.ConversationServiceStub(chan), server, inference, settings)


def status_of(err: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str | None, str | None]:
    """(status, code, param) of a failed call."""
    code, param = error_details(err)
    return err.code(), code, param
