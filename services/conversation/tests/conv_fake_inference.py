"""A test double of the inference service for the conversation service's unit tests (tests only).

Deterministic: a message costs its word count plus MESSAGE_OVERHEAD tokens, a chat REPLY_PRIMER more (roughly what a
chat template adds). Generate fits the chat as the inference service does (``fit``), streams the configured chunks,
one token each, with a delay so a test can cancel mid-stream, and records every request and every cancellation it
saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from chatplane.common.errors import InvalidArgument, abort
from chatplane.inference.engine import Turn
from chatplane.inference.fitting import fit
from chatplane.protos.inference.v1 import inference_pb2 as pb
from chatplane.protos.inference.v1 import inference_pb2_grpc

MODEL = "fake-model"
MESSAGE_OVERHEAD = 4
REPLY_PRIMER = 2


def chat_tokens(messages: Iterable[tuple[str, str]]) -> int:
    return sum(len(content.split()) + MESSAGE_OVERHEAD for _, content in messages) + REPLY_PRIMER


@dataclass
class Failure:
    status: grpc.StatusCode
    message: str
    code: str | None = None
    param: str | None = None


class FakeInferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, max_model_len: int = 256) -> None:
        self.max_model_len = max_model_len
        self.chunks: list[str] = ["Hello", " from", " the", " fake", " model."]
        self.chunk_delay = 0.0
        self.fail_after: int | None = None  # abort Generate with UNAVAILABLE after this many chunks
        self.generate_failure: Failure | None = None  # fail Generate before any chunk
        self.count_failure: Failure | None = None
        self.generate_requests: list[pb.GenerateRequest] = []
        self.count_requests: list[pb.CountTokensRequest] = []
        self.cancelled: list[str] = []  # request ids of Generate calls cancelled by the caller
        self.target = ""  # host:port, set by the fixture
        self.tool_call: tuple[str, str, list[str]] | None = None  # (id, name, argument pieces): reply with this call

    @staticmethod
    def chat(request) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in request.chat.messages]

    def _check_model(self, model: str) -> bool:
        return model in ("", MODEL)

    async def CountTokens(self, request: pb.CountTokensRequest, context) -> pb.CountTokensResponse:  # noqa: N802
        self.count_requests.append(request)
        if self.count_failure:
            f = self.count_failure
            await abort(context, f.status, f.message, code=f.code, param=f.param)
        if not self._check_model(request.model):
            await abort(context, grpc.StatusCode.NOT_FOUND, f"model {request.model} not found")
        if request.WhichOneof("input") == "prompt":
            count = len(request.prompt.split())
        else:
            count = chat_tokens(self.chat(request))
        return pb.CountTokensResponse(token_count=count, max_model_len=self.max_model_len)

    async def ListModels(self, request, context) -> pb.ListModelsResponse:  # noqa: N802
        return pb.ListModelsResponse(models=[pb.Model(id=MODEL, max_model_len=self.max_model_len, owned_by="tests")])

    def _fit(self, request: pb.GenerateRequest) -> tuple[pb.GenerateRequest, int]:
        """The request as fitted (inference's own fitting, with this double's token counts) and the messages left
        out; raises InvalidArgument when nothing fits."""
        turns = [Turn(m.role, m.content) for m in request.chat.messages]
        spec = request.fit
        fitted = fit(
            turns, keep_first=spec.keep_first, keep_last=spec.keep_last,
            max_tokens=request.sampling.max_tokens if request.sampling.HasField("max_tokens") else None,
            default_max_tokens=spec.default_max_tokens, max_model_len=self.max_model_len,
            count=lambda chat: chat_tokens((t.role, t.content) for t in chat),
        )
        kept = {id(t): i for i, t in enumerate(turns)}
        out = pb.GenerateRequest()
        out.CopyFrom(request)
        out.ClearField("fit")
        del out.chat.messages[:]
        out.chat.messages.extend(request.chat.messages[kept[id(t)]] for t in fitted.messages)
        out.sampling.max_tokens = fitted.max_tokens
        return out, fitted.dropped_messages

    async def Generate(self, request: pb.GenerateRequest, context) -> None:  # noqa: N802
        """Records the requests generated from (as fitted, when ``fit`` is set; not those refused as too long)."""
        if self.generate_failure:
            f = self.generate_failure
            await abort(context, f.status, f.message, code=f.code, param=f.param)
        dropped = 0
        if request.HasField("fit"):
            try:
                request, dropped = self._fit(request)
            except InvalidArgument as e:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e), code=e.code, param=e.param)
        self.generate_requests.append(request)
        first = {"prompt_tokens": chat_tokens(self.chat(request)), "dropped_messages": dropped}
        budget = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else len(self.chunks)
        chunks = self.chunks[:budget]
        sent = 0
        if self.tool_call is not None and request.tools:
            call_id, name, pieces = self.tool_call
            try:
                for i, piece in enumerate(pieces):
                    await asyncio.sleep(self.chunk_delay)
                    delta = pb.ToolCallDelta(index=0, id=call_id, name=name, arguments=piece) if i == 0 else (
                        pb.ToolCallDelta(index=0, arguments=piece))
                    await context.write(pb.GenerateResponse(tool_calls=[delta], model=MODEL, **(first if i == 0 else {})))
                await context.write(pb.GenerateResponse(
                    finish_reason="tool_calls", model=MODEL,
                    usage=pb.Usage(prompt_tokens=chat_tokens(self.chat(request)), completion_tokens=len(pieces))))
            except asyncio.CancelledError:
                self.cancelled.append(request.request_id)
                raise
            return
        try:
            for chunk in chunks:
                if self.fail_after is not None and sent == self.fail_after:
                    await abort(context, grpc.StatusCode.UNAVAILABLE, "engine died")
                await asyncio.sleep(self.chunk_delay)
                await context.write(pb.GenerateResponse(text=chunk, model=MODEL, **(first if sent == 0 else {})))
                sent += 1
            await context.write(
                pb.GenerateResponse(
                    finish_reason="length" if len(chunks) < len(self.chunks) else "stop",
                    usage=pb.Usage(prompt_tokens=chat_tokens(self.chat(request)), completion_tokens=sent),
                    model=MODEL,
                )
            )
        except asyncio.CancelledError:
            self.cancelled.append(request.request_id)
            raise


async def start_fake_inference(servicer: FakeInferenceServicer) -> grpc.aio.Server:
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    servicer.target = f"127.0.0.1:{port}"
    return server
