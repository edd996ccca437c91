"""``POST /v1/chat/completions``: OpenAI-compatible, stateless, straight to inference ``Generate``."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from chatplane.common import limits
from chatplane.gateway import convert, generation
from chatplane.gateway.api_models import check_max_tokens, model_not_found
from chatplane.gateway.deps import BackendsDep, CurrentPrincipal
from chatplane.gateway.backends import Backends
from chatplane.gateway.admission import Ticket
from chatplane.gateway.errors import APIError, invalid, stream_failure, upstream
from chatplane.gateway.metering import MeteredGeneration, rough_tokens
from chatplane.gateway.observability import observe
from chatplane.gateway.schemas import ChatCompletionRequest, ChatMessageIn, NamedToolChoice
from chatplane.gateway.sse import DONE, SLOT, TextEvent, answer, event, first_reply
from chatplane.protos.inference.v1 import inference_pb2

router = APIRouter(prefix="/v1/chat", tags=["chat"])

# Parameters OpenAI knows that this server does not support, with the value that means "not used".
_NEUTRAL: dict[str, Any] = {
    "store": False,
    "metadata": {},
    "modalities": ["text"],
}
_ALWAYS_UNSUPPORTED = (
    "functions", "function_call", "audio", "prediction", "reasoning_effort", "verbosity", "web_search_options",
)
_MESSAGE_UNSUPPORTED = ("function_call", "audio", "refusal")


def _unsupported(param: str) -> APIError:
    return generation.unsupported(param)


def check_supported(req: ChatCompletionRequest) -> None:
    for name in _ALWAYS_UNSUPPORTED:
        if getattr(req, name) is not None:
            raise _unsupported(name)
    for name, neutral in _NEUTRAL.items():
        value = getattr(req, name)
        if value is not None and value != neutral:
            raise _unsupported(name)
    if req.service_tier not in (None, "auto", "default"):
        raise _unsupported("service_tier")
    if req.stream_options is not None and not req.stream:
        raise invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
    if req.top_logprobs is not None and not req.logprobs:
        raise invalid("'top_logprobs' needs 'logprobs' set to true.", "top_logprobs")


def _message_text(msg: ChatMessageIn, index: int) -> str:
    param = f"messages[{index}]"
    for name in _MESSAGE_UNSUPPORTED:
        if getattr(msg, name) is not None:
            raise _unsupported(f"{param}.{name}")
    if msg.role == "assistant" and msg.tool_calls and msg.content is None:
        return ""
    content = msg.content
    if content is None:
        raise invalid(f"Missing content in '{param}'.", f"{param}.content")
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            part_param = f"{param}.content[{j}]"
            if part.get("type") != "text":
                raise invalid(
                    f"Invalid content part type in '{part_param}': only 'text' parts are supported.",
                    f"{part_param}.type",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid(f"Missing or invalid 'text' in '{part_param}'.", f"{part_param}.text")
            texts.append(text)
        content = "\n".join(texts)
    if len(content) > limits.MAX_MESSAGE_CHARS:
        raise invalid(
            f"'{param}.content' is too long: at most {limits.MAX_MESSAGE_CHARS} characters.", f"{param}.content",
            code="string_above_max_length",
        )
    if "\x00" in content:
        raise invalid(f"'{param}.content' must not contain NUL (\\u0000) characters.", f"{param}.content")
    return content


def _stop(req: ChatCompletionRequest) -> list[str]:
    if req.stop is None:
        return []
    stops = [req.stop] if isinstance(req.stop, str) else req.stop
    if len(stops) > limits.MAX_STOP_SEQUENCES:
        raise invalid(f"'stop' may have at most {limits.MAX_STOP_SEQUENCES} sequences.", "stop")
    for i, s in enumerate(stops):
        param = "stop" if isinstance(req.stop, str) else f"stop[{i}]"
        if not s or len(s) > limits.MAX_STOP_CHARS or "\x00" in s:
            raise invalid(
                f"Each stop sequence must have 1 to {limits.MAX_STOP_CHARS} characters and no NUL characters.", param
            )
    return stops


def _message(msg: ChatMessageIn, index: int) -> inference_pb2.ChatMessage:
    param = f"messages[{index}]"
    role = "system" if msg.role == "developer" else msg.role
    out = inference_pb2.ChatMessage(role=role, content=_message_text(msg, index), name=msg.name or "")
    if msg.tool_calls:
        if msg.role != "assistant":
            raise invalid(f"Only assistant messages have 'tool_calls' ('{param}' is a {msg.role} message).",
                          f"{param}.tool_calls")
        for call in msg.tool_calls:
            out.tool_calls.add(id=call.id, name=call.function.name, arguments=call.function.arguments)
    if msg.role == "tool":
        if not msg.tool_call_id:
            raise invalid(f"Missing 'tool_call_id' in '{param}': a tool message answers a call.",
                          f"{param}.tool_call_id")
        out.tool_call_id = msg.tool_call_id
    elif msg.tool_call_id is not None:
        raise invalid(f"Only tool messages have a 'tool_call_id' ('{param}' is a {msg.role} message).",
                      f"{param}.tool_call_id")
    return out


def _tools(req: ChatCompletionRequest, generate: inference_pb2.GenerateRequest) -> None:
    for i, tool in enumerate(req.tools or ()):
        f = tool.function
        generate.tools.append(generation.function_tool(f.name, f.description, f.parameters, f.strict,
                                                       f"tools[{i}].function"))
    names = generation.check_tool_names(list(generate.tools), "tools")
    named = req.tool_choice.function.name if isinstance(req.tool_choice, NamedToolChoice) else None
    choice = None if named is not None else req.tool_choice
    generate.tool_choice.CopyFrom(generation.tool_choice(choice, named, names))
    if req.parallel_tool_calls is not None and names:
        generate.parallel_tool_calls = req.parallel_tool_calls


def build_request(
    req: ChatCompletionRequest, request_id: str, max_n: int = limits.MAX_N
) -> inference_pb2.GenerateRequest:
    check_supported(req)
    messages = [_message(m, i) for i, m in enumerate(req.messages)]
    sampling = inference_pb2.SamplingParams(stop=_stop(req))
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if req.temperature is not None:
        sampling.temperature = req.temperature
    if req.top_p is not None:
        sampling.top_p = req.top_p
    if req.seed is not None:
        sampling.seed = req.seed
    if req.presence_penalty is not None:
        sampling.presence_penalty = req.presence_penalty
    if req.frequency_penalty is not None:
        sampling.frequency_penalty = req.frequency_penalty
    sampling.logit_bias.update(generation.logit_bias(req.logit_bias))
    if req.logprobs:
        sampling.logprobs = req.top_logprobs or 0
    n = generation.check_n(req.n, max_n)
    if n > 1:
        sampling.n = n
    generate = inference_pb2.GenerateRequest(
        model=req.model,
        chat=inference_pb2.ChatMessages(messages=messages),
        sampling=sampling,
        request_id=request_id,
    )
    if req.tools or req.tool_choice is not None:
        _tools(req, generate)
    if req.response_format is not None:
        fmt = req.response_format
        if fmt.type == "json_schema" and fmt.json_schema is None:
            raise invalid("'response_format.json_schema' is required for the 'json_schema' type.",
                          "response_format.json_schema")
        schema = fmt.json_schema.schema_ if fmt.json_schema is not None else None
        structured = generation.structured_output(fmt.type, schema, "response_format.json_schema.schema")
        if structured is not None:
            generate.structured_output.CopyFrom(structured)
    return generate


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
