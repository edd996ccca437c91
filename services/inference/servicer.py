"""gRPC adapter: checks and converts messages and calls the engine; :func:`~chatplane.common.errors.handled` turns
its errors (a bad request, the engine's :class:`~chatplane.common.errors.InvalidArgument`) into statuses."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import re

from chatplane.common import limits
from chatplane.common.errors import InvalidArgument, NotFound, Unavailable, handled
from chatplane.common.grpc_server import GrpcService
from chatplane.common.streams import ReadAhead
from chatplane.inference import fitting
from chatplane.inference.engine import (
    Chunk,
    Engine,
    Function,
    Messages,
    Sampling,
    Structured,
    ToolCall,
    ToolUse,
    Turn,
)
from chatplane.protos.inference.v1 import inference_pb2 as pb
from chatplane.protos.inference.v1 import inference_pb2_grpc

log = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant", "tool"}
STATS_DEFAULT_INTERVAL_MS = 250
STATS_MIN_INTERVAL_SECONDS = 0.05
STATS_HEARTBEAT_SECONDS = 5.0
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,%d}$" % limits.MAX_TOOL_NAME_CHARS)
_CHOICES = {
    pb.TOOL_CHOICE_MODE_UNSPECIFIED: "auto",
    pb.TOOL_CHOICE_MODE_NONE: "none",
    pb.TOOL_CHOICE_MODE_AUTO: "auto",
    pb.TOOL_CHOICE_MODE_REQUIRED: "required",
    pb.TOOL_CHOICE_MODE_FUNCTION: "function",
}


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, engine: Engine, service: GrpcService, *, stream_interval: float) -> None:
        self.engine = engine
        # The service's readiness (its one place: service.state): work is refused until it is serving, and once it
        # drains (the streams under way finish, new work goes to other replicas).
        self.service = service
        self.stream_interval = stream_interval  # seconds between two messages of a stream after its first
        self._stopped = asyncio.Event()  # ends the stats watches

    @property
    def ready(self) -> bool:
        return self.service.state == "serving"

    def _check_ready(self) -> None:
        state = self.service.state
        if state == "draining":
            raise Unavailable("this replica is shutting down")
        if state != "serving":
            raise Unavailable("the model engine is starting")

    def stop_watches(self) -> None:
        self._stopped.set()

    def _check_model(self, model: str) -> None:
        if model and model != self.engine.model_name:
            raise NotFound(
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )

    def _input(self, request, continue_final: bool = False) -> tuple[Messages | None, str | None]:
        which = request.WhichOneof("input")
        if which == "chat":
            msgs = request.chat.messages
            if not msgs:
                raise InvalidArgument("messages must not be empty", param="messages")
            if len(msgs) > limits.MAX_MESSAGES:
                raise InvalidArgument(f"at most {limits.MAX_MESSAGES} messages", param="messages")
            turns = []
            for i, m in enumerate(msgs):
                turns.append(self._turn(m, i))
            if continue_final and msgs[-1].role != "assistant":
                raise InvalidArgument(
                    "continue_final_message needs an assistant message last", param="continue_final_message"
                )
            return turns, None
        if continue_final:
            raise InvalidArgument("continue_final_message needs chat messages", param="continue_final_message")
        if which == "prompt":
            if not request.prompt or len(request.prompt) > limits.MAX_MESSAGE_CHARS * 4:
                raise InvalidArgument("prompt is empty or too long", param="prompt")
            return None, request.prompt
        raise InvalidArgument("messages or prompt is required", param="messages")

    def _turn(self, m: pb.ChatMessage, i: int) -> Turn:
        def bad(param: str, message: str):
            raise InvalidArgument(message, param=f"messages[{i}]{param}")

        if m.role not in ROLES:
            bad(".role", f"messages[{i}].role must be one of system, user, assistant, tool")
        if len(m.content) > limits.MAX_MESSAGE_CHARS:
            bad(".content", f"messages[{i}].content is longer than {limits.MAX_MESSAGE_CHARS} characters")
        if m.tool_calls and m.role != "assistant":
            bad(".tool_calls", "only assistant messages have tool_calls")
        if len(m.tool_calls) > limits.MAX_TOOL_CALLS:
            bad(".tool_calls", f"at most {limits.MAX_TOOL_CALLS} tool calls in one message")
        if m.role == "tool" and not m.tool_call_id:
            bad(".tool_call_id", "a tool message needs the tool_call_id of the call it answers")
        calls = []
        for j, c in enumerate(m.tool_calls):
            if not TOOL_NAME.match(c.name):
                bad(f".tool_calls[{j}].function.name", "a function name has 1 to 64 letters, digits, _ or -")
            if len(c.arguments) > limits.MAX_MESSAGE_CHARS or len(c.id) > 256:
                bad(f".tool_calls[{j}]", "tool call too long")
            calls.append(ToolCall(c.id, c.name, c.arguments))
        if len(m.tool_call_id) > 256 or len(m.name) > 256:
            bad(".tool_call_id", "tool_call_id and name have at most 256 characters")
        return Turn(m.role, m.content, tuple(calls), m.tool_call_id, m.name)

    def _tools(self, request) -> ToolUse | None:
        """The functions offered and the choice among them; None when there are none."""
        def bad(param: str, message: str):
            raise InvalidArgument(message, param=param)

        generating = isinstance(request, pb.GenerateRequest)  # CountTokens has the tools only
        tool_choice = request.tool_choice if generating else pb.ToolChoice()
        choice = _CHOICES.get(tool_choice.mode)
        if choice is None:
            bad("tool_choice", "unknown tool_choice mode")
        if not request.tools:
            if choice in ("required", "function"):
                bad("tool_choice", f"tool_choice {choice!r} needs tools")
            return None
        if len(request.tools) > limits.MAX_TOOLS:
            bad("tools", f"at most {limits.MAX_TOOLS} tools")
        functions = []
        for i, t in enumerate(request.tools):
            if not TOOL_NAME.match(t.name):
                bad(f"tools[{i}].function.name", "a function name has 1 to 64 letters, digits, _ or -")
            if len(t.description) > limits.MAX_MESSAGE_CHARS:
                bad(f"tools[{i}].function.description", "description too long")
            parameters = None
            if t.parameters_json:
                parameters = self._schema(t.parameters_json, f"tools[{i}].function.parameters")
            functions.append(Function(t.name, t.description, parameters, t.strict))
        names = [f.name for f in functions]
        if len(set(names)) != len(names):
            bad("tools", "two tools have the same name")
        if choice == "function" and tool_choice.function not in names:
            bad("tool_choice", f"tool_choice names the function {tool_choice.function!r}, which is not in tools")
        parallel = request.parallel_tool_calls if generating and request.HasField("parallel_tool_calls") else None
        return ToolUse(tuple(functions), choice, tool_choice.function if choice == "function" else "", parallel)

    def _schema(self, text: str, param: str) -> dict:
        if len(text) > limits.MAX_SCHEMA_CHARS:
            raise InvalidArgument(f"{param} is longer than {limits.MAX_SCHEMA_CHARS} characters", param=param)
        try:
            schema = json.loads(text)
        except ValueError:
            schema = None
        if not isinstance(schema, dict):
            raise InvalidArgument(f"{param} must be a JSON Schema object", param=param)
        return schema

    def _structured(self, request) -> Structured | None:
        which = request.structured_output.WhichOneof("format")
        if which == "json_schema":
            return Structured(json_schema=self._schema(request.structured_output.json_schema, "response_format"))
        if which == "json_object" and request.structured_output.json_object:
            return Structured(json_object=True)
        return None

    def _sampling(self, p: pb.SamplingParams) -> Sampling:
        def bad(param: str, message: str):
            raise InvalidArgument(message, param=param)

        if p.HasField("max_tokens") and p.max_tokens < 1:
            bad("max_tokens", "max_tokens must be at least 1")
        if p.HasField("temperature") and not (0.0 <= p.temperature <= 2.0 and math.isfinite(p.temperature)):
            bad("temperature", "temperature must be between 0 and 2")
        if p.HasField("top_p") and not (0.0 < p.top_p <= 1.0):
            bad("top_p", "top_p must be greater than 0 and at most 1")
        if len(p.stop) > limits.MAX_STOP_SEQUENCES or any(not s or len(s) > limits.MAX_STOP_CHARS for s in p.stop):
            bad("stop", f"stop takes up to {limits.MAX_STOP_SEQUENCES} non-empty sequences")
        for name in ("presence_penalty", "frequency_penalty"):
            if p.HasField(name) and not -2.0 <= getattr(p, name) <= 2.0:
                bad(name, f"{name} must be between -2 and 2")
        if len(p.logit_bias) > limits.MAX_LOGIT_BIAS:
            bad("logit_bias", f"logit_bias takes at most {limits.MAX_LOGIT_BIAS} tokens")
        if any(not -100.0 <= v <= 100.0 for v in p.logit_bias.values()):
            bad("logit_bias", "logit_bias values must be between -100 and 100")
        for name, param in (("logprobs", "top_logprobs"), ("prompt_logprobs", "logprobs")):
            if p.HasField(name) and getattr(p, name) > limits.MAX_TOP_LOGPROBS:
                bad(param, f"{param} must be between 0 and {limits.MAX_TOP_LOGPROBS}")
        if p.n > limits.MAX_N:
            bad("n", f"n must be between 1 and {limits.MAX_N}")
        return Sampling(
            max_tokens=p.max_tokens if p.HasField("max_tokens") else None,
            temperature=p.temperature if p.HasField("temperature") else None,
            top_p=p.top_p if p.HasField("top_p") else None,
            stop=tuple(p.stop),
            seed=p.seed if p.HasField("seed") else None,
            presence_penalty=p.presence_penalty if p.HasField("presence_penalty") else None,
            frequency_penalty=p.frequency_penalty if p.HasField("frequency_penalty") else None,
            logit_bias=tuple(sorted(p.logit_bias.items())),
            logprobs=p.logprobs if p.HasField("logprobs") else None,
            prompt_logprobs=p.prompt_logprobs if p.HasField("prompt_logprobs") else None,
            n=p.n or 1,
        )

    @handled
    async def Generate(self, request: pb.GenerateRequest, context):  # noqa: N802 - gRPC naming
        self._check_ready()
        self._check_model(request.model)
        messages, prompt = self._input(request, request.continue_final_message)
        sampling = self._sampling(request.sampling)
        tools = self._tools(request)
        structured = self._structured(request)
        if tools is not None and messages is None:
            raise InvalidArgument("tools need chat messages", param="tools")
        extras = {}
        if tools is not None:
            extras["tools"] = tools
        if structured is not None:
            extras["structured"] = structured
        if request.continue_final_message:
            extras["continue_final"] = True
        dropped = 0
        if request.HasField("fit") and messages is not None:
            messages, sampling, dropped = self._fit(request, messages, sampling, tools)
        stream = self.engine.generate(
            messages=messages, prompt=prompt, sampling=sampling, request_id=request.request_id, **extras
        )
        ahead = ReadAhead(stream)
        # The RPC's end (finished, cancelled, deadline) stops the engine at once, even while this generator is left
        # suspended at a yield by a cancelled send.
        context.add_done_callback(ahead.stop)
        model = self.engine.model_name
        interval = self.stream_interval
        first = True  # the first message carries the prompt's token count (a client continuing elsewhere needs it)
        try:
            while True:
                chunks = await ahead.ready()
                if not chunks:
                    return
                last = chunks[-1]
                if all(_plain(c) for c in chunks):
                    if len(chunks) == 1:
                        text, tokens = last.text, last.tokens
                    else:
                        text, tokens = "".join([c.text for c in chunks]), sum([c.tokens for c in chunks])
                    prompt_tokens = last.prompt_tokens if first else 0
                    dropped_messages, dropped = dropped, 0
                    first = False
                    if last.finish_reason is None:
                        yield pb.GenerateResponse(text=text, tokens=tokens, prompt_tokens=prompt_tokens,
                                                  dropped_messages=dropped_messages)
                        if interval:
                            await ahead.hold(interval)
                        continue
                    yield pb.GenerateResponse(
                        text=text,
                        finish_reason=last.finish_reason,
                        usage=pb.Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens),
                        model=model,
                        tokens=tokens,
                        prompt_tokens=prompt_tokens,
                        dropped_messages=dropped_messages,
                    )
                    return
                messages_out = _messages(chunks, model)
                if dropped and messages_out:
                    messages_out[0].dropped_messages, dropped = dropped, 0
                for message in messages_out:
                    yield message
                if messages_out and messages_out[-1].HasField("usage"):
                    return
                if interval:
                    await ahead.hold(interval)
        finally:
            # Cancelled RPC (client gone): stopping the reader aborts the request in the engine.
            await ahead.close()

    def _fit(self, request: pb.GenerateRequest, messages: Messages, sampling: Sampling, tools):
        """The chat fitted to the context window (``request.fit``), its reply budget and the messages left out."""
        spec = request.fit
        tool_use = {"tools": tools} if tools is not None else {}
        fitted = fitting.fit(
            messages, keep_first=spec.keep_first, keep_last=max(spec.keep_last, 1),
            max_tokens=sampling.max_tokens, default_max_tokens=spec.default_max_tokens,
            max_model_len=self.engine.max_model_len,
            count=lambda chat: self.engine.count_tokens(
                messages=chat, continue_final=request.continue_final_message, **tool_use),
        )
        return fitted.messages, dataclasses.replace(sampling, max_tokens=fitted.max_tokens), fitted.dropped_messages

    @handled
    async def CountTokens(self, request: pb.CountTokensRequest, context):  # noqa: N802
        self._check_ready()
        self._check_model(request.model)
        messages, prompt = self._input(request)
        tools = self._tools(request) if request.tools else None
        count = self.engine.count_tokens(messages=messages, prompt=prompt, **({"tools": tools} if tools else {}))
        return pb.CountTokensResponse(token_count=count, max_model_len=self.engine.max_model_len)

    @handled
    async def ListModels(self, request, context):  # noqa: N802
        self._check_ready()
        e = self.engine
        return pb.ListModelsResponse(
            models=[pb.Model(id=e.model_name, max_model_len=e.max_model_len, created=e.created, owned_by="chatplane")]
        )

    def _stats(self) -> pb.EngineStats:
        load = self.engine.load
        return pb.EngineStats(
            running=load.running,
            waiting=load.waiting,
            kv_cache_usage=load.kv_cache_usage,
            ready=self.ready,
            aborted_total=load.aborted_total,
        )

    async def GetEngineStats(self, request, context):  # noqa: N802
        return self._stats()

    async def WatchEngineStats(self, request: pb.WatchEngineStatsRequest, context):  # noqa: N802
        """The load figures now, then on every change (at most one message per interval), at least every
        ``STATS_HEARTBEAT_SECONDS``; ends when the server stops (:meth:`stop_watches`)."""
        interval = max(STATS_MIN_INTERVAL_SECONDS, (request.interval_ms or STATS_DEFAULT_INTERVAL_MS) / 1000)
        last = None
        sent_at = 0.0
        loop = asyncio.get_running_loop()
        while not self._stopped.is_set():
            stats = self._stats()
            key = (stats.running, stats.waiting, round(stats.kv_cache_usage, 3), stats.ready)
            if key != last or loop.time() - sent_at >= STATS_HEARTBEAT_SECONDS:
                last, sent_at = key, loop.time()
                yield stats
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), interval)


def _plain(chunk: Chunk) -> bool:
    """A chunk of the common case: text of the only choice, nothing else."""
    return chunk.index == 0 and not chunk.more and not chunk.logprobs and not chunk.tool_calls and (
        chunk.prompt_logprobs is None
    )


def _logprobs(items) -> list[pb.TokenLogprob]:
    return [
        pb.TokenLogprob(token=t.token, logprob=t.logprob,
                        top_logprobs=[pb.TopLogprob(token=tok, logprob=lp) for tok, lp in t.top])
        for t in items
    ]


def _messages(chunks: list[Chunk], model: str) -> list[pb.GenerateResponse]:
    """Chunks read together -> messages: the consecutive chunks of one choice merged into one message."""
    out: list[pb.GenerateResponse] = []
    current: pb.GenerateResponse | None = None
    for c in chunks:
        if current is None or current.index != c.index or current.finish_reason:
            current = pb.GenerateResponse(index=c.index)
            out.append(current)
        current.text += c.text
        current.tokens += c.tokens
        if c.logprobs:
            current.logprobs.extend(_logprobs(c.logprobs))
        if c.prompt_logprobs:
            current.prompt_logprobs.extend(_logprobs(c.prompt_logprobs))
        for d in c.tool_calls or ():
            calls = current.tool_calls
            if calls and calls[-1].index == d.index and not d.id and not d.name:
                calls[-1].arguments += d.arguments  # more of the same call's arguments
            else:
                calls.add(index=d.index, id=d.id, name=d.name, arguments=d.arguments)
        if c.finish_reason:
            current.finish_reason = c.finish_reason
            if not c.more:
                current.usage.prompt_tokens = c.prompt_tokens
                current.usage.completion_tokens = c.completion_tokens
                current.model = model
    return out
