"""What a reply is made of: the requests that ask for one, the events it is streamed as, what the inference stream
has said so far, and the conversions between stored messages and the chat inference reads."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from chatplane.common.db import utcnow
from chatplane.common.limits import MAX_MESSAGE_CHARS
from chatplane.conversation.errors import invalid
from chatplane.conversation.models import (
    ROLE_ASSISTANT,
    ROLE_SYSTEM,
    ROLE_TOOL,
    ROLE_USER,
    STATUS_COMPLETE,
    STATUS_INCOMPLETE,
    Message,
)
from chatplane.conversation.prompt import ChatMessage, history_chat
from chatplane.conversation.store import HistoryMessage, NewMessage
from chatplane.protos.events.v1 import events_pb2
from chatplane.protos.inference.v1 import inference_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendRequest:
    user_id: str
    conversation_id: str
    content: str
    max_tokens: int | None = None
    temperature: float | None = None
    model: str = ""  # empty: the served model
    api_key_id: str = ""
    request_id: str = ""
    regenerate: bool = False  # content empty: a new reply to the last user message replaces the last reply


# One input item of a Responses API request: a chat message (checked by :func:`input_message`).
InputMessage = ChatMessage


@dataclass(frozen=True)
class RespondRequest:
    """A Responses API request: a reply to ``input`` after the history of ``previous_reply_id``."""

    user_id: str
    input: tuple[InputMessage, ...]
    previous_reply_id: str = ""
    instructions: str = ""
    model: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: tuple[inference_pb2.Tool, ...] = ()
    tool_choice: inference_pb2.ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    structured_output: inference_pb2.StructuredOutput | None = None
    store: bool = True
    api_key_id: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class Started:
    user_message: Message | None
    model: str
    conversation_id: str = ""  # Respond: where the reply goes ("" when nothing is stored)
    reply_id: str = ""  # Respond: the id the reply is stored under


@dataclass(frozen=True)
class Delta:
    text: str
    tool_calls: tuple[inference_pb2.ToolCallDelta, ...] = ()


@dataclass(frozen=True)
class Done:
    user_message: Message | None
    assistant_message: Message


Event = Started | Delta | Done
Emit = Callable[[Event], Awaitable[None]]


@dataclass
class Reply:
    """What the inference stream has said so far."""

    model: str
    prompt_tokens: int = 0  # from the first message (the fitted prompt), then the usage
    parts: list[str] = field(default_factory=list)
    finish_reason: str = ""
    completion_tokens: int | None = None  # the engine's count, on the last message
    tokens: int = 0  # counted as the messages arrive: what a reply cut short used
    # For the completion.finished event.
    user_id: str = ""
    api_key_id: str = ""
    request_id: str = ""
    conversation_id: str = ""
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    path: str = "conversation"
    reply_id: str = ""  # the id to store the reply under ("": a new one)
    calls: dict[int, list[str]] = field(default_factory=dict)  # tool call index -> [id, name, arguments...]

    def completion_event(self, finish_reason: str, completion_tokens: int) -> events_pb2.CompletionFinished:
        now = time.monotonic()
        return events_pb2.CompletionFinished(
            request_id=self.request_id,
            user_id=self.user_id,
            api_key_id=self.api_key_id,
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=round((now - self.started) * 1000),
            ttft_ms=round((self.first_token_at - self.started) * 1000) if self.first_token_at is not None else 0,
            finish_reason=finish_reason,
            path=self.path,
            conversation_id=self.conversation_id,
        )

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def tool_calls_json(self) -> str:
        """The reply's function calls as stored (a JSON list), "" when none."""
        if not self.calls:
            return ""
        return json.dumps([{"id": c[0], "name": c[1], "arguments": "".join(c[2:])}
                           for _, c in sorted(self.calls.items())], ensure_ascii=False)

    def add_calls(self, pieces) -> None:
        for piece in pieces:
            call = self.calls.setdefault(piece.index, [piece.id, piece.name])
            call[0] = call[0] or piece.id
            call[1] = call[1] or piece.name
            call.append(piece.arguments)

    def ending(self, finish_reason: str) -> tuple[NewMessage, events_pb2.CompletionFinished]:
        """The reply as stored and its ``completion.finished`` event. A reply cut short (abort, error) is incomplete,
        and its completion tokens are those of the messages that arrived."""
        complete = finish_reason not in ("abort", "error")
        completion_tokens = self.completion_tokens if self.completion_tokens is not None else self.tokens
        new = NewMessage(
            role=ROLE_ASSISTANT, content=self.text, status=STATUS_COMPLETE if complete else STATUS_INCOMPLETE,
            model=self.model, prompt_tokens=self.prompt_tokens, completion_tokens=completion_tokens,
            finish_reason=finish_reason, tool_calls=self.tool_calls_json(), id=self.reply_id,
        )
        return new, self.completion_event(finish_reason, completion_tokens)

    def unstored(self, new: NewMessage) -> Message:
        """The reply as a message that is not stored (``store`` false)."""
        return Message(
            id=new.id, conversation_id="", seq=0, role=new.role, content=new.content, status=new.status,
            model=new.model, prompt_tokens=new.prompt_tokens, completion_tokens=new.completion_tokens,
            finish_reason=new.finish_reason, created_at=utcnow(), tool_calls=new.tool_calls, tool_call_id="",
        )

    def absorb(self, chunk: inference_pb2.GenerateResponse) -> None:
        if self.first_token_at is None and (chunk.text or chunk.tool_calls):
            self.first_token_at = time.monotonic()
        if chunk.prompt_tokens:  # the first message: the prompt as fitted by inference
            self.prompt_tokens = chunk.prompt_tokens
        if chunk.text:
            self.parts.append(chunk.text)
        self.tokens += chunk.tokens
        if chunk.model:
            self.model = chunk.model
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason
        if chunk.HasField("usage"):
            self.prompt_tokens = chunk.usage.prompt_tokens or self.prompt_tokens
            self.completion_tokens = chunk.usage.completion_tokens


def generate_request(
    system: str, history: Sequence[Message | HistoryMessage], new: list[ChatMessage], model: str, request_id: str,
    max_tokens: int | None, temperature: float | None, default_max_tokens: int,
    tools: Sequence[inference_pb2.Tool] = (),
) -> inference_pb2.GenerateRequest:
    """The Generate request of a turn: the system prompt, the history (inference fits it), the new messages."""
    chat = history_chat(system, [chat_message(m) for m in history], new)
    sampling = inference_pb2.SamplingParams()
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if temperature is not None:
        sampling.temperature = temperature
    return inference_pb2.GenerateRequest(
        model=model, chat=to_chat(chat), sampling=sampling, request_id=request_id, tools=tools,
        fit=inference_pb2.FitHistory(keep_first=1 if system else 0, keep_last=len(new),
                                     default_max_tokens=default_max_tokens),
    )


def to_chat(messages: Sequence[ChatMessage]) -> inference_pb2.ChatMessages:
    return inference_pb2.ChatMessages(
        messages=[
            inference_pb2.ChatMessage(
                role=m.role, content=m.content, tool_call_id=m.tool_call_id,
                tool_calls=[inference_pb2.ToolCall(id=i, name=n, arguments=a) for i, n, a in m.tool_calls],
            )
            for m in messages
        ]
    )


def chat_message(m: Message | HistoryMessage) -> ChatMessage:
    """A stored message as the prompt has it (the function calls of an assistant message, a tool result's call)."""
    calls: tuple[tuple[str, str, str], ...] = ()
    if m.tool_calls:
        try:
            calls = tuple((c["id"], c["name"], c["arguments"]) for c in json.loads(m.tool_calls))
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable tool calls of a stored message", extra={"message_id": m.id})
    return ChatMessage(m.role, m.content, calls, m.tool_call_id)


def input_message(m: InputMessage, index: int) -> InputMessage:
    """An input item, checked (``input[i]`` names it in errors)."""
    param = f"input[{index}]"
    if m.role not in (ROLE_USER, ROLE_ASSISTANT, ROLE_SYSTEM, ROLE_TOOL):
        raise invalid(f"{param}.role must be one of user, system, assistant, tool", f"{param}.role")
    if len(m.content) > MAX_MESSAGE_CHARS or "\x00" in m.content:
        raise invalid(f"{param} content must be at most {MAX_MESSAGE_CHARS} characters, without NUL", param)
    if m.role == ROLE_TOOL and not m.tool_call_id:
        raise invalid(f"{param} (a function call output) needs its call_id", f"{param}.call_id")
    if m.tool_calls and m.role != ROLE_ASSISTANT:
        raise invalid(f"{param}: only the assistant calls functions", param)
    if not m.content and not m.tool_calls and m.role != ROLE_TOOL:
        raise invalid(f"{param} must not be empty", f"{param}.content")
    return m


def calls_json(calls: Sequence[tuple[str, str, str]]) -> str:
    if not calls:
        return ""
    return json.dumps([{"id": i, "name": n, "arguments": a} for i, n, a in calls], ensure_ascii=False)
