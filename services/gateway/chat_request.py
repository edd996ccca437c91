"""A ``/v1/chat/completions`` request checked and turned into inference's ``GenerateRequest``: the parameters this
server does not support refused by name, messages and their content parts, stop sequences, sampling, tools and
structured outputs (the parts shared with the other generation routes are in ``generation.py``)."""

from __future__ import annotations

from typing import Any

from chatplane.common import limits
from chatplane.gateway import generation
from chatplane.gateway.errors import APIError, invalid
from chatplane.gateway.schemas import ChatCompletionRequest, ChatMessageIn, NamedToolChoice
from chatplane.protos.inference.v1 import inference_pb2

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
    return generation.check_text(content, f"{param}.content")


def stop_sequences(req: ChatCompletionRequest) -> list[str]:
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
    sampling = inference_pb2.SamplingParams(stop=stop_sequences(req))
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    generation.copy_given(req, sampling)
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
