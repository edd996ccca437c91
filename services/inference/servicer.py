"""gRPC adapter: checks the request (``checks.py``), converts messages and calls the engine;
:func:`~chatplane.common.errors.handled` turns its errors (a bad request, the engine's
:class:`~chatplane.common.errors.InvalidArgument`) into statuses."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable

from chatplane.common.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable, handled
from chatplane.common.grpc_server import GrpcService
from chatplane.common.streams import ReadAhead
from chatplane.inference import checks, fitting
from chatplane.inference.engine import Chunk, Engine, Messages, Sampling
from chatplane.protos.inference.v1 import inference_pb2 as pb
from chatplane.protos.inference.v1 import inference_pb2_grpc

log = logging.getLogger(__name__)

STATS_DEFAULT_INTERVAL_MS = 250
STATS_MIN_INTERVAL_SECONDS = 0.05
STATS_HEARTBEAT_SECONDS = 5.0


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, engine: Engine, service: GrpcService, *, stream_interval: float, capacity: int) -> None:
        self.engine = engine
        # The service's readiness (its one place: service.state): work is refused until it is serving, and once it
        # drains (the streams under way finish, new work goes to other replicas).
        self.service = service
        self.stream_interval = stream_interval  # seconds between two messages of a stream after its first
        # Generate calls admitted at once (the engine's max_num_seqs running + max_waiting): one more is refused
        # before it reaches the engine, so that the client takes it to another replica instead of queueing here.
        self.capacity = capacity
        self.under_way = 0  # Generate calls admitted and not yet ended
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

    def _admit(self, context) -> Callable[..., None]:
        """Count a Generate call as under way, or refuse it (the replica is full); the call that frees its place,
        once however often it is called: at the RPC's end (``context``'s done callback, even when the handler's
        generator is left suspended at a yield) and when the handler ends."""
        if self.under_way >= self.capacity:
            raise ResourceExhausted(
                f"This replica is busy ({self.under_way} requests running or waiting); retry shortly.",
                code="rate_limit_exceeded",
            )
        self.under_way += 1
        admitted = True

        def release(*_: object) -> None:
            nonlocal admitted
            if admitted:
                admitted = False
                self.under_way -= 1

        context.add_done_callback(release)
        return release

    def stop_watches(self) -> None:
        self._stopped.set()

    def _check_model(self, model: str) -> None:
        if model and model != self.engine.model_name:
            raise NotFound(
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )

    @handled
    async def Generate(self, request: pb.GenerateRequest, context):  # noqa: N802 - gRPC naming
        self._check_ready()
        self._check_model(request.model)
        messages, prompt = checks.messages_or_prompt(request, request.continue_final_message)
        sampling = checks.sampling(request.sampling)
        tools = checks.tools(request)
        structured = checks.structured(request)
        if tools is not None and messages is None:
            raise InvalidArgument("tools need chat messages", param="tools")
        extras = {}
        if tools is not None:
            extras["tools"] = tools
        if structured is not None:
            extras["structured"] = structured
        if request.continue_final_message:
            extras["continue_final"] = True
        release = self._admit(context)  # no await between the check and the count
        try:
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
        finally:
            release()  # finished, failed or cancelled

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
        messages, prompt = checks.messages_or_prompt(request)
        tools = checks.tools(request) if request.tools else None
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
