"""Inference's checks of a request, before the engine sees it: messages or prompt, each message, tools and tool
choice, JSON schemas, sampling parameters. Each refusal is an :class:`~chatplane.common.errors.InvalidArgument` naming
the parameter, as OpenAI would."""

from __future__ import annotations

import json
import math
import re

from chatplane.common import limits
from chatplane.common.errors import InvalidArgument
from chatplane.inference.engine import Function, Messages, Sampling, Structured, ToolCall, ToolUse, Turn
from chatplane.protos.inference.v1 import inference_pb2 as pb

ROLES = {"system", "user", "assistant", "tool"}
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,%d}$" % limits.MAX_TOOL_NAME_CHARS)
_CHOICES = {
    pb.TOOL_CHOICE_MODE_UNSPECIFIED: "auto",
    pb.TOOL_CHOICE_MODE_NONE: "none",
    pb.TOOL_CHOICE_MODE_AUTO: "auto",
    pb.TOOL_CHOICE_MODE_REQUIRED: "required",
    pb.TOOL_CHOICE_MODE_FUNCTION: "function",
}


def messages_or_prompt(request, continue_final: bool = False) -> tuple[Messages | None, str | None]:
    which = request.WhichOneof("input")
    if which == "chat":
        msgs = request.chat.messages
        if not msgs:
            raise InvalidArgument("messages must not be empty", param="messages")
        if len(msgs) > limits.MAX_MESSAGES:
            raise InvalidArgument(f"at most {limits.MAX_MESSAGES} messages", param="messages")
        turns = []
        for i, m in enumerate(msgs):
            turns.append(turn(m, i))
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


def turn(m: pb.ChatMessage, i: int) -> Turn:
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


def tools(request) -> ToolUse | None:
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
            parameters = schema(t.parameters_json, f"tools[{i}].function.parameters")
        functions.append(Function(t.name, t.description, parameters, t.strict))
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        bad("tools", "two tools have the same name")
    if choice == "function" and tool_choice.function not in names:
        bad("tool_choice", f"tool_choice names the function {tool_choice.function!r}, which is not in tools")
    parallel = request.parallel_tool_calls if generating and request.HasField("parallel_tool_calls") else None
    return ToolUse(tuple(functions), choice, tool_choice.function if choice == "function" else "", parallel)


def schema(text: str, param: str) -> dict:
    if len(text) > limits.MAX_SCHEMA_CHARS:
        raise InvalidArgument(f"{param} is longer than {limits.MAX_SCHEMA_CHARS} characters", param=param)
    try:
        schema = json.loads(text)
    except ValueError:
        schema = None
    if not isinstance(schema, dict):
        raise InvalidArgument(f"{param} must be a JSON Schema object", param=param)
    return schema


def structured(request) -> Structured | None:
    which = request.structured_output.WhichOneof("format")
    if which == "json_schema":
        return Structured(json_schema=schema(request.structured_output.json_schema, "response_format"))
    if which == "json_object" and request.structured_output.json_object:
        return Structured(json_object=True)
    return None


def sampling(p: pb.SamplingParams) -> Sampling:
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
