"""``POST /v1/chat/completions``: OpenAI-compatible, stateless, straight to inference ``Generate`` (the request is
checked and converted by ``chat_request.py``): admission, the answer whole or streamed."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from chatplane.gateway import convert, generation
from chatplane.gateway.api_models import check_max_tokens, model_not_found
from chatplane.gateway.deps import BackendsDep, CurrentPrincipal
from chatplane.gateway.backends import Backends
from chatplane.gateway.chat_request import build_request
from chatplane.gateway.admission import Ticket
from chatplane.gateway.errors import APIError, stream_failure, upstream
from chatplane.gateway.metering import MeteredGeneration, rough_tokens
from chatplane.gateway.observability import observe
from chatplane.gateway.schemas import ChatCompletionRequest
from chatplane.gateway.sse import DONE, SLOT, TextEvent, answer, event, first_reply
from chatplane.protos.inference.v1 import inference_pb2

router = APIRouter(prefix="/v1/chat", tags=["chat"])


def _aborted() -> APIError:
    return APIError(
        503, "The generation was aborted by the server before it finished. Please retry.",
        type="service_unavailable", code="generation_aborted",
    )


def _finish_reason(reply: inference_pb2.GenerateResponse) -> str:
    if reply.finish_reason == "abort":
        raise _aborted()
    return reply.finish_reason if reply.finish_reason in ("length", "tool_calls") else "stop"


async def _read(call: Any) -> inference_pb2.GenerateResponse | None:
    """The next reply of the stream, None at its end; failures become API errors."""
    with upstream("inference"):
        return await call.read()


SESSION_HEADER = "x-session-id"


def affinity_key(request: Request, user: str | None, lead: str) -> str:
    """What keeps related stateless requests on one inference replica (its prefix cache): the client's session
    (``x-session-id``), else its ``user``, else the prompt's beginning (``lead``)."""
    session = request.headers.get(SESSION_HEADER)
    if session:
        return f"session:{session[:256]}"
    if user:
        return f"user:{user[:256]}"
    return "prompt:" + hashlib.blake2b(lead.encode(errors="replace"), digest_size=16).hexdigest()


def chat_lead(body: ChatCompletionRequest) -> str:
    """A chat's leading messages: the system prompt and the first user turn."""
    lead: list[str] = []
    for m in body.messages:  # up to and with the first user message
        lead.append(f"{m.role}\0{m.content if isinstance(m.content, str) else m.content!r}")
        if m.role == "user":
            break
    return "\0".join(lead)


def _count_request(generate: inference_pb2.GenerateRequest) -> inference_pb2.CountTokensRequest:
    count = inference_pb2.CountTokensRequest(model=generate.model, tools=generate.tools)
    if generate.HasField("chat"):
        count.chat.CopyFrom(generate.chat)
    else:
        count.prompt = generate.prompt
    return count


def _rough_prompt_tokens(generate: inference_pb2.GenerateRequest) -> int:
    if not generate.HasField("chat"):
        return rough_tokens(len(generate.prompt))
    messages = generate.chat.messages
    chars = sum(len(m.content) + sum(len(c.arguments) + len(c.name) for c in m.tool_calls) for m in messages)
    chars += sum(len(t.parameters_json) + len(t.description) + len(t.name) for t in generate.tools)
    return rough_tokens(chars) + 4 * len(messages)


async def _admit(
    backends: Backends, principal: Any, generate: inference_pb2.GenerateRequest
) -> tuple[Ticket, int]:
    """Rate limits and quotas for this request (429 when over); returns the admission and the prompt estimate."""
    counted = 0

    async def prompt_tokens(exact: bool) -> int:
        nonlocal counted
        if exact:  # a quota applies: count with the model's tokenizer
            with upstream("inference"):
                reply = await backends.inference.count_tokens(_count_request(generate))
            counted = reply.token_count
        else:
            counted = _rough_prompt_tokens(generate)
        return counted

    sampling = generate.sampling
    reserve = sampling.max_tokens if sampling.HasField("max_tokens") else backends.settings.estimated_completion_tokens
    reserve *= max(sampling.n, 1)  # every choice may use all of it
    ticket = await backends.admission.admit(principal, prompt_tokens=prompt_tokens, reserve=reserve)
    return ticket, counted


@router.post(
    "/completions",
    summary="Create a chat completion (OpenAI-compatible)",
    responses={200: {"description": "The completion (JSON), or with stream=true its chunks as server-sent events",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def create_chat_completion(
    body: ChatCompletionRequest, principal: CurrentPrincipal, backends: BackendsDep, request: Request
) -> Any:
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    generate = build_request(body, completion_id, backends.settings.max_n)
    with upstream("inference"):
        model = await backends.inference.model(body.model)
    if model is None:
        raise model_not_found(body.model, "model")
    if body.max_completion_tokens is not None:
        check_max_tokens(model, body.max_completion_tokens, "max_completion_tokens")
    else:
        check_max_tokens(model, body.max_tokens, "max_tokens")
    observation = observe()
    observation.model = body.model  # a served model: a bounded metrics label
    observation.request_id = completion_id  # the access log line names the call
    ticket, prompt_estimate = await _admit(backends, principal, generate)
    call = MeteredGeneration(
        backends.inference.generate(generate, key=affinity_key(request, body.user, chat_lead(body))),
        backends.admission, ticket, backends.recorder, principal, completion_id, body.model, prompt_estimate,
    )
    with ticket.headed():
        watch, first = await first_reply(request.receive, call, _read)
        created = int(time.time())
        n = generate.sampling.n or 1
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await answer(
            call, watch, stream=bool(body.stream), headers=ticket.headers,
            events=lambda: _stream(call, first, completion_id, created, body.model, include_usage, bool(body.logprobs),
                                   n),
            whole=lambda: _complete(call, first, completion_id, created, body.model, n, bool(body.logprobs)),
        )


async def _complete(
    call: Any, reply: inference_pb2.GenerateResponse | None, completion_id: str, created: int, model: str, n: int,
    logprobs: bool,
) -> dict[str, Any]:
    choices = generation.Choices(n)
    usage = convert.usage(0, 0)
    while reply is not None:
        choices.add(reply)
        model = reply.model or model
        if reply.finish_reason:
            _finish_reason(reply)
        if reply.HasField("usage"):
            usage = convert.usage(reply.usage.prompt_tokens, reply.usage.completion_tokens)
            observe().tokens(model, reply.usage.prompt_tokens, reply.usage.completion_tokens)
        reply = await _read(call)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [_choice(c, logprobs) for c in choices.choices],
        "usage": usage,
        "system_fingerprint": None,
    }


def _choice(choice: generation.Choice, logprobs: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.text, "refusal": None}
    if choice.calls:
        message["tool_calls"] = choice.tool_calls()
        message["content"] = choice.text or None
    return {
        "index": choice.index,
        "message": message,
        "logprobs": {"content": [generation.chat_logprob(t) for t in choice.logprobs], "refusal": None}
        if logprobs else None,
        "finish_reason": choice.finish_reason if choice.finish_reason in ("length", "tool_calls") else "stop",
    }


def _plain(reply: inference_pb2.GenerateResponse) -> bool:
    """A reply of the common case (one choice, text only): its chunk comes from the template encoded once."""
    return reply.index == 0 and not reply.tool_calls and not reply.logprobs


async def _stream(
    call: Any,
    reply: inference_pb2.GenerateResponse | None,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
    logprobs: bool = False,
    n: int = 1,
) -> AsyncIterator[bytes]:
    if reply is not None and reply.model:
        model = reply.model

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, index: int = 0,
              tokens: Any = None) -> bytes:
        data: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": index, "delta": delta, "logprobs": tokens, "finish_reason": finish_reason}],
        }
        if include_usage:
            data["usage"] = None
        return event(data)

    content = TextEvent(chunk({"content": SLOT}))  # the per-token chunk, encoded once
    # A choice's role chunk goes out with its first token (one write, one trip through the middleware, sooner first
    # token).
    first_role = chunk({"role": "assistant", "content": ""})
    started: set[int] = set()
    finished: set[int] = set()

    def role(index: int) -> bytes:
        if index in started:
            return b""
        started.add(index)
        return first_role if index == 0 else chunk({"role": "assistant", "content": ""}, index=index)

    observation = observe()  # told of each token event once it is sent
    try:
        usage = convert.usage(0, 0)
        while reply is not None:
            index = reply.index
            if _plain(reply):
                if reply.text:
                    yield role(0) + content(reply.text)
                    observation.token()
            elif reply.text or reply.tool_calls or reply.logprobs:
                delta: dict[str, Any] = {}
                if reply.text:
                    delta["content"] = reply.text
                if reply.tool_calls:
                    delta["tool_calls"] = generation.tool_call_deltas(reply)
                tokens = (
                    {"content": [generation.chat_logprob(t) for t in reply.logprobs], "refusal": None}
                    if logprobs else None
                )
                yield role(index) + chunk(delta, index=index, tokens=tokens)
                if reply.text or reply.tool_calls:
                    observation.token()
            if reply.finish_reason:  # this choice's last reply; the stream's last one has the usage
                finished.add(index)
                yield role(index) + chunk({}, _finish_reason(reply), index=index)
                if reply.HasField("usage"):
                    usage = convert.usage(reply.usage.prompt_tokens, reply.usage.completion_tokens)
                    observation.tokens(model, reply.usage.prompt_tokens, reply.usage.completion_tokens)
            reply = await _read(call)
        for index in range(n):
            if index not in finished:
                yield role(index) + chunk({}, "stop", index=index)
        if include_usage:
            yield event({
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [],
                "usage": usage,
            })
        yield DONE
    except Exception as exc:  # noqa: BLE001 - the status line is gone already: the error travels as an event
        yield event(stream_failure(exc, "chat completion", completion_id).body())
    finally:
        call.cancel()
