"""``POST /v1/completions``: OpenAI's legacy text completions (a prompt, or a list of prompts), straight to inference.

Each prompt is one inference ``Generate`` call (with ``n`` choices); several prompts run at once and are read as one
stream (:class:`~chatplane.gateway.generation.MergedCalls`), choice ``i * n + j`` being prompt ``i``'s ``j``-th.
Admitted, metered and cancelled exactly as chat completions.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from chatplane.common import limits
from chatplane.gateway import convert, generation
from chatplane.gateway.api_chat import (
    _count_request,
    _finish_reason,
    _read,
    _rough_prompt_tokens,
    affinity_key,
)
from chatplane.gateway.chat_request import stop_sequences
from chatplane.gateway.api_models import check_max_tokens, model_not_found
from chatplane.gateway.backends import Backends
from chatplane.gateway.deps import BackendsDep, CurrentPrincipal
from chatplane.gateway.admission import Ticket
from chatplane.gateway.errors import invalid, stream_failure, upstream
from chatplane.gateway.metering import MeteredGeneration
from chatplane.gateway.observability import observe
from chatplane.gateway.schemas import CompletionRequest
from chatplane.gateway.sse import DONE, answer, event, first_reply
from chatplane.protos.inference.v1 import inference_pb2

router = APIRouter(prefix="/v1", tags=["completions"])
LEAD_CHARS = 2000  # the beginning of a prompt that keeps requests sharing it on one replica (affinity)


def _prompts(body: CompletionRequest) -> list[str]:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) > limits.MAX_PROMPTS:
        raise invalid(f"'prompt' may have at most {limits.MAX_PROMPTS} prompts.", "prompt")
    for i, prompt in enumerate(prompts):
        param = "prompt" if isinstance(body.prompt, str) else f"prompt[{i}]"
        if not isinstance(prompt, str):
            raise invalid(f"Invalid '{param}': this server takes prompts as text, not token arrays.", param,
                          code="unsupported_value")
        if not prompt:
            raise invalid(f"'{param}' must not be empty.", param)
        generation.check_text(prompt, param)
    return prompts


def build_requests(
    body: CompletionRequest, request_id: str, max_n: int = limits.MAX_N
) -> list[inference_pb2.GenerateRequest]:
    if body.suffix is not None:
        raise generation.unsupported("suffix")
    n = generation.check_n(body.n, max_n)
    if body.best_of is not None and body.best_of != n:
        raise invalid("Only 'best_of' equal to 'n' is supported by this server.", "best_of", code="unsupported_value")
    if body.stream_options is not None and not body.stream:
        raise invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
    prompts = _prompts(body)
    sampling = inference_pb2.SamplingParams(stop=stop_sequences(body))
    if body.max_tokens is not None:
        sampling.max_tokens = body.max_tokens
    generation.copy_given(body, sampling)
    sampling.logit_bias.update(generation.logit_bias(body.logit_bias))
    if body.logprobs is not None:
        sampling.logprobs = body.logprobs
        if body.echo:
            sampling.prompt_logprobs = body.logprobs
    if n > 1:
        sampling.n = n
    return [
        inference_pb2.GenerateRequest(
            model=body.model, prompt=prompt, sampling=sampling,
            request_id=request_id if len(prompts) == 1 else f"{request_id}-{i}",
        )
        for i, prompt in enumerate(prompts)
    ]


async def _admit(
    backends: Backends, principal: Any, generates: list[inference_pb2.GenerateRequest]
) -> tuple[Ticket, int]:
    """As chat completions' admission, for every prompt of the request together."""
    counted = 0

    async def prompt_tokens(exact: bool) -> int:
        nonlocal counted
        if exact:  # a quota applies: count with the model's tokenizer
            counted = 0
            for generate in generates:
                with upstream("inference"):
                    reply = await backends.inference.count_tokens(_count_request(generate))
                counted += reply.token_count
        else:
            counted = sum(_rough_prompt_tokens(g) for g in generates)
        return counted

    sampling = generates[0].sampling
    reserve = sampling.max_tokens if sampling.HasField("max_tokens") else backends.settings.estimated_completion_tokens
    reserve *= max(sampling.n, 1) * len(generates)
    ticket = await backends.admission.admit(principal, prompt_tokens=prompt_tokens, reserve=reserve)
    return ticket, counted


@router.post(
    "/completions",
    summary="Create a text completion (OpenAI's legacy completions API)",
    responses={200: {"description": "The completion (JSON), or with stream=true its chunks as server-sent events",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def create_completion(
    body: CompletionRequest, principal: CurrentPrincipal, backends: BackendsDep, request: Request
) -> Any:
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    generates = build_requests(body, completion_id, backends.settings.max_n)
    with upstream("inference"):
        model = await backends.inference.model(body.model)
    if model is None:
        raise model_not_found(body.model, "model")
    check_max_tokens(model, body.max_tokens, "max_tokens")
    observation = observe()
    observation.model = body.model
    observation.request_id = completion_id
    ticket, prompt_estimate = await _admit(backends, principal, generates)
    n = generates[0].sampling.n or 1
    calls = [backends.inference.generate(g, key=affinity_key(request, body.user, g.prompt[:LEAD_CHARS]))
             for g in generates]
    call = MeteredGeneration(
        calls[0] if len(calls) == 1 else generation.MergedCalls(calls, n),
        backends.admission, ticket, backends.recorder, principal, completion_id, body.model, prompt_estimate,
        path="completions",
    )
    with ticket.headed():
        watch, first = await first_reply(request.receive, call, _read)
        out = _Answer(completion_id, int(time.time()), body.model, [g.prompt for g in generates], n,
                      body.logprobs is not None, bool(body.echo))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await answer(call, watch, stream=bool(body.stream), headers=ticket.headers,
                            events=lambda: out.stream(call, first, include_usage),
                            whole=lambda: out.complete(call, first))


class _Answer:
    """One completion request's answer: its choices (echo, legacy logprobs), whole or streamed."""

    def __init__(
        self, completion_id: str, created: int, model: str, prompts: list[str], n: int, logprobs: bool, echo: bool
    ) -> None:
        self.id = completion_id
        self.created = created
        self.model = model
        self.prompts = prompts
        self.n = n
        self.logprobs = logprobs
        self.echo = echo

    def _object(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices, "system_fingerprint": None, **extra}

    async def complete(self, call: Any, reply: inference_pb2.GenerateResponse | None) -> dict[str, Any]:
        choices = generation.Choices(len(self.prompts) * self.n, self.n)
        usage = convert.usage(0, 0)
        while reply is not None:
            choices.add(reply)
            if reply.finish_reason:
                _finish_reason(reply)
            if reply.HasField("usage"):
                usage = convert.usage(reply.usage.prompt_tokens, reply.usage.completion_tokens)
                observe().tokens(self.model, reply.usage.prompt_tokens, reply.usage.completion_tokens)
            reply = await _read(call)
        out = []
        for choice in choices.choices:
            prompt = self.prompts[choice.index // self.n]
            text, logprobs = choice.text, None
            if self.logprobs:
                tokens = list(choice.logprobs)
                if self.echo:
                    tokens = choices.prompt_logprobs.get(choice.index // self.n, []) + tokens
                logprobs = _legacy_logprobs(tokens, 0, first_is_prompt_start=self.echo)
            if self.echo:
                text = prompt + text
            out.append({"text": text, "index": choice.index, "logprobs": logprobs,
                        "finish_reason": "length" if choice.finish_reason == "length" else "stop"})
        return self._object(out, usage=usage)

    async def stream(
        self, call: Any, reply: inference_pb2.GenerateResponse | None, include_usage: bool
    ) -> AsyncIterator[bytes]:
        extra = {"usage": None} if include_usage else {}
        offsets: dict[int, int] = {}  # choice -> characters sent (text_offset of the next token)
        prompt_logprobs: dict[int, list[inference_pb2.TokenLogprob]] = {}
        finished: set[int] = set()

        def chunk(index: int, text: str, tokens: dict | None, finish_reason: str | None = None) -> bytes:
            return event(self._object(
                [{"text": text, "index": index, "logprobs": tokens, "finish_reason": finish_reason}], **extra))

        def start(index: int) -> bytes:
            """A choice's first chunk: with echo, the prompt (and its logprobs)."""
            offsets[index] = 0
            if not self.echo:
                return b""
            prompt = self.prompts[index // self.n]
            tokens = None
            if self.logprobs:
                tokens = _legacy_logprobs(prompt_logprobs.get(index // self.n, []), 0, first_is_prompt_start=True)
            offsets[index] = len(prompt)
            return chunk(index, prompt, tokens)

        observation = observe()  # told of each token event once it is sent
        try:
            usage = convert.usage(0, 0)
            while reply is not None:
                index = reply.index
                if reply.prompt_logprobs:
                    prompt_logprobs[index // self.n] = list(reply.prompt_logprobs)
                head = start(index) if index not in offsets else b""
                body = b""
                if reply.text or reply.logprobs:
                    tokens = _legacy_logprobs(reply.logprobs, offsets[index]) if self.logprobs else None
                    offsets[index] += len(reply.text)
                    body = chunk(index, reply.text, tokens)
                if reply.finish_reason:
                    finished.add(index)
                    body += chunk(index, "", None, "length" if _finish_reason(reply) == "length" else "stop")
                    if reply.HasField("usage"):
                        usage = convert.usage(reply.usage.prompt_tokens, reply.usage.completion_tokens)
                        observe().tokens(self.model, reply.usage.prompt_tokens, reply.usage.completion_tokens)
                if head or body:
                    yield head + body
                    if reply.text:
                        observation.token()
                reply = await _read(call)
            for index in range(len(self.prompts) * self.n):
                if index not in finished:
                    yield (start(index) if index not in offsets else b"") + chunk(index, "", None, "stop")
            if include_usage:
                yield event(self._object([], usage=usage))
            yield DONE
        except Exception as exc:  # noqa: BLE001 - the status line is gone already: the error travels as an event
            yield event(stream_failure(exc, "completion", self.id).body())
        finally:
            call.cancel()


def _legacy_logprobs(
    tokens: Any, offset: int, *, first_is_prompt_start: bool = False
) -> dict[str, list[Any]]:
    """Token logprobs in the legacy format: parallel lists of tokens, their logprobs, their top alternatives (a
    token -> logprob object) and their character offsets. The prompt's first token has no logprob (null)."""
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for i, t in enumerate(tokens):
        unknown = first_is_prompt_start and i == 0
        out["tokens"].append(t.token)
        out["token_logprobs"].append(None if unknown else generation.logprob_value(t.logprob))
        out["top_logprobs"].append(
            None if unknown else {a.token: generation.logprob_value(a.logprob) for a in t.top_logprobs}
        )
        out["text_offset"].append(offset)
        offset += len(t.token)
    return out
