"""gRPC adapter: converts messages and calls the engine."""

from __future__ import annotations

import logging
import math

import grpc

from chatplane.common import limits
from chatplane.common.errors import abort
from chatplane.common.streams import ReadAhead
from chatplane.inference.engine import Engine, EngineInputError, Messages, Sampling
from chatplane.protos.inference.v1 import inference_pb2 as pb
from chatplane.protos.inference.v1 import inference_pb2_grpc

log = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant"}


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, engine: Engine, *, stream_interval: float = 0.0) -> None:
        self.engine = engine
        self.ready = False
        self.stream_interval = stream_interval  # seconds between two messages of a stream after its first

    async def _check_ready(self, context) -> None:
        if not self.ready:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the model engine is starting")

    async def _check_model(self, model: str, context) -> None:
        if model and model != self.engine.model_name:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )

    async def _input(self, request, context) -> tuple[Messages | None, str | None]:
        which = request.WhichOneof("input")
        if which == "chat":
            msgs = request.chat.messages
            if not msgs:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "messages must not be empty", param="messages")
            if len(msgs) > limits.MAX_MESSAGES:
                await abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT,
                    f"at most {limits.MAX_MESSAGES} messages", param="messages",
                )
            for i, m in enumerate(msgs):
                if m.role not in ROLES:
                    await abort(
                        context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"messages[{i}].role must be one of system, user, assistant", param=f"messages[{i}].role",
                    )
                if len(m.content) > limits.MAX_MESSAGE_CHARS:
                    await abort(
                        context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"messages[{i}].content is longer than {limits.MAX_MESSAGE_CHARS} characters",
                        param=f"messages[{i}].content",
                    )
            return [(m.role, m.content) for m in msgs], None
        if which == "prompt":
            if not request.prompt or len(request.prompt) > limits.MAX_MESSAGE_CHARS * 4:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty or too long", param="prompt")
            return None, request.prompt
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "messages or prompt is required", param="messages")

    async def _sampling(self, p: pb.SamplingParams, context) -> Sampling:
        def bad(param: str, message: str):
            return abort(context, grpc.StatusCode.INVALID_ARGUMENT, message, param=param)

        if p.HasField("max_tokens") and p.max_tokens < 1:
            await bad("max_tokens", "max_tokens must be at least 1")
        if p.HasField("temperature") and not (0.0 <= p.temperature <= 2.0 and math.isfinite(p.temperature)):
            await bad("temperature", "temperature must be between 0 and 2")
        if p.HasField("top_p") and not (0.0 < p.top_p <= 1.0):
            await bad("top_p", "top_p must be greater than 0 and at most 1")
        if len(p.stop) > limits.MAX_STOP_SEQUENCES or any(not s or len(s) > limits.MAX_STOP_CHARS for s in p.stop):
            await bad("stop", f"stop takes up to {limits.MAX_STOP_SEQUENCES} non-empty sequences")
        return Sampling(
            max_tokens=p.max_tokens if p.HasField("max_tokens") else None,
            temperature=p.temperature if p.HasField("temperature") else None,
            top_p=p.top_p if p.HasField("top_p") else None,
            stop=tuple(p.stop),
            seed=p.seed if p.HasField("seed") else None,
        )

    async def Generate(self, request: pb.GenerateRequest, context):  # noqa: N802 - gRPC naming
        await self._check_ready(context)
        await self._check_model(request.model, context)
        messages, prompt = await self._input(request, context)
        sampling = await self._sampling(request.sampling, context)
        stream = self.engine.generate(
            messages=messages, prompt=prompt, sampling=sampling, request_id=request.request_id
        )
        ahead = ReadAhead(stream)
        # The RPC's end (finished, cancelled, deadline) stops the engine at once, even while this generator is left
        # suspended at a yield by a cancelled send.
        context.add_done_callback(ahead.stop)
        model = self.engine.model_name
        interval = self.stream_interval
        try:
            while True:
                chunks = await ahead.ready()
                if not chunks:
                    return
                last = chunks[-1]
                text = last.text if len(chunks) == 1 else "".join([c.text for c in chunks])
                if last.finish_reason is None:
                    yield pb.GenerateResponse(text=text)
                    if interval:
                        await ahead.hold(interval)
                else:
                    yield pb.GenerateResponse(
                        text=text,
                        finish_reason=last.finish_reason,
                        usage=pb.Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens),
                        model=model,
                    )
                    return
        except EngineInputError as e:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e), code=e.code, param=e.param)
        finally:
            # Cancelled RPC (client gone): stopping the reader aborts the request in the engine.
            await ahead.close()

    async def CountTokens(self, request: pb.CountTokensRequest, context):  # noqa: N802
        await self._check_ready(context)
        await self._check_model(request.model, context)
        messages, prompt = await self._input(request, context)
        count = self.engine.count_tokens(messages=messages, prompt=prompt)
        return pb.CountTokensResponse(token_count=count, max_model_len=self.engine.max_model_len)

    async def ListModels(self, request, context):  # noqa: N802
        await self._check_ready(context)
        e = self.engine
        return pb.ListModelsResponse(
            models=[pb.Model(id=e.model_name, max_model_len=e.max_model_len, created=e.created, owned_by="chatplane")]
        )

    async def GetEngineStats(self, request, context):  # noqa: N802
        load = self.engine.load
        return pb.EngineStats(
            running=load.running,
            waiting=load.waiting,
            kv_cache_usage=load.kv_cache_usage,
            ready=self.ready,
            aborted_total=load.aborted_total,
        )
