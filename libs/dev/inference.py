"""The tests' inference service: the synthetic engine behind the real inference servicer and server
(:func:`chatplane.inference.server.build`), in-process on a free 127.0.0.1 port, plaintext like the services the
tests start next to it. It is the one inference test double (the gateway's and the conversation service's tests use
it): inference checks the request, fits a history itself (its ``fitting``), counts with the synthetic tokenizer,
refuses what does not fit with its own errors, and answers the richer requests (n, logprobs, tools, structured
output) as :mod:`chatplane.inference.synthetic` does.

:class:`RecordingEngine` adds only what a test needs and the real service never shows: it records what the engine
was asked to generate from (the chat as fitted, the prompt, the sampling, the tools) and the streams closed before
their end, fails on demand (an engine error mid-stream, a refused request, an aborted reply), and replies with a
tool call of its choice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client import REGISTRY

from chatplane.common.errors import ServiceError
from chatplane.common.runtime import ServiceRuntime
from chatplane.inference.engine import Chunk, Sampling, Structured, ToolCallDelta, ToolUse, Turn
from chatplane.inference.server import build
from chatplane.inference.settings import InferenceSettings
from chatplane.inference.synthetic import SyntheticEngine

MODEL = "synthetic"
REPLY = ("Hello", " from", " the", " synthetic", " model.")


@dataclass
class Generation:
    messages: list[Turn]
    sampling: Sampling
    request_id: str
    tools: ToolUse | None
    prompt: str | None = None
    structured: Structured | None = None


class RecordingEngine(SyntheticEngine):
    """The synthetic engine, recording its generations; see the module docstring."""

    def __init__(self, settings: InferenceSettings) -> None:
        super().__init__(settings)
        self.script_default = self.script
        self.interval_default = self._interval
        self.reset()

    def reset(self) -> None:
        """Back to what the settings say: nothing recorded, no failure on demand, the configured script and pace."""
        self.generations: list[Generation] = []
        self.cancelled: list[str] = []  # request ids of streams closed before their end
        self.closed = asyncio.Event()  # set when a stream is closed before its end
        self.fail_after: int | None = None  # the engine fails after this many chunks, with ``failure``
        self.failure: Exception = RuntimeError("engine died: CUDA error at 0xdeadbeef (a detail no caller may see)")
        self.abort_after: int | None = None  # the engine gives the request up (finish "abort") after this many
        self.refusal: ServiceError | None = None  # raised before any token, as the engine's input errors are
        self.tool_call: tuple[str, str, list[str]] | None = None  # (id, name, argument pieces), when tools are given
        self.script = self.script_default
        self._interval = self.interval_default

    def pace(self, seconds_per_token: float) -> None:
        """Tokens every ``seconds_per_token`` from now on (``synthetic_tokens_per_second``, changed mid-test)."""
        self._interval = seconds_per_token

    async def generate(self, *, messages, prompt, sampling, request_id, tools=None, structured=None,
                       **extras) -> AsyncIterator[Chunk]:
        self.generations.append(Generation(list(messages or []), sampling, request_id, tools, prompt, structured))
        if self.refusal is not None:
            raise self.refusal
        if tools is not None and self.tool_call is not None:
            stream = self._call_tool(messages)
        else:
            if tools is not None:
                extras["tools"] = tools
            if structured is not None:
                extras["structured"] = structured
            stream = super().generate(messages=messages, prompt=prompt, sampling=sampling, request_id=request_id,
                                      **extras)
        try:
            sent = 0
            async for chunk in stream:
                if self.fail_after is not None and sent == self.fail_after:
                    raise self.failure
                if self.abort_after is not None and sent == self.abort_after:
                    yield Chunk("", "abort", chunk.prompt_tokens, sent)
                    return
                yield chunk
                sent += 1
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled.append(request_id)  # the caller went away
            self.closed.set()
            raise
        finally:
            await stream.aclose()

    async def _call_tool(self, messages) -> AsyncIterator[Chunk]:
        call_id, name, pieces = self.tool_call
        prompt_tokens = self.count_tokens(messages=messages)
        for i, piece in enumerate(pieces):
            await asyncio.sleep(self._interval)
            delta = ToolCallDelta(0, call_id, name, piece) if i == 0 else ToolCallDelta(0, arguments=piece)
            yield Chunk("", prompt_tokens=prompt_tokens, tool_calls=[delta], tokens=1)
        yield Chunk("", "tool_calls", prompt_tokens, len(pieces))


@dataclass
class Inference:
    engine: RecordingEngine
    target: str  # host:port
    runtime: ServiceRuntime

    @property
    def generations(self) -> list[Generation]:
        return self.engine.generations

    def reply(self, *tokens: str) -> None:
        """The tokens of the next replies (``synthetic_script``)."""
        self.engine.script = tokens

    def count(self, chat: Iterable[tuple[str, str]] = (), *, prompt: str | None = None) -> int:
        """The prompt tokens of ``chat`` (role, content pairs), or of a text ``prompt``, as inference counts them."""
        if prompt is not None:
            return self.engine.count_tokens(prompt=prompt)
        return self.engine.count_tokens(messages=[Turn(role, content) for role, content in chat])

    def pace(self, seconds_per_token: float) -> None:
        self.engine.pace(seconds_per_token)

    async def set_serving(self, serving: bool) -> None:
        """The replica's readiness as its health service tells it (NOT_SERVING: the clients stop sending to it)."""
        await self.runtime.grpc.set_serving(serving)


def calls(method: str) -> float:
    """Inference calls of ``method`` started so far in this process, ended or not (the gRPC server's own metrics:
    those handled and those in flight)."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name in ("chatplane_grpc_server_requests", "chatplane_grpc_server_in_flight")
        for sample in metric.samples
        if sample.name in ("chatplane_grpc_server_requests_total", "chatplane_grpc_server_in_flight")
        and sample.labels.get("grpc_method") == method
        and sample.labels.get("grpc_service", "").endswith("InferenceService")
    )


@asynccontextmanager
async def inference_service(port: int = 0, **settings) -> AsyncIterator[Inference]:
    """The inference service on 127.0.0.1:``port`` (0: a free one); ``settings``: InferenceSettings fields."""
    fields = dict(engine="synthetic", served_model_name=MODEL, max_model_len=256, synthetic_script=list(REPLY),
                  stream_interval_ms=0)
    config = InferenceSettings(**{**fields, **settings})
    engine = RecordingEngine(config)
    await engine.start()
    runtime, _ = build(engine, config)
    bound = await runtime.start(f"127.0.0.1:{port}")
    await runtime.grpc.set_serving(True)
    try:
        yield Inference(engine, f"127.0.0.1:{bound}", runtime)
    finally:
        await runtime.server.stop(0)
