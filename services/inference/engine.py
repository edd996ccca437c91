"""The model engine behind the gRPC service.

:class:`Engine` is what the servicer needs, with the types it speaks in; :mod:`chatplane.inference.vllm_engine`
implements it with vLLM (:class:`~chatplane.inference.vllm_engine.VllmEngine`), :mod:`chatplane.inference.synthetic`
as the test double; :func:`create_engine` picks one by the settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from chatplane.inference.settings import InferenceSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias)
    logprobs: int | None = None  # set: each token's logprob with this many top alternatives
    prompt_logprobs: int | None = None  # set: the prompt tokens' logprobs too
    n: int = 1


class ToolCall(NamedTuple):
    """A function call in the history (an assistant message's)."""

    id: str
    name: str
    arguments: str  # JSON text


class Turn(NamedTuple):
    """One chat message."""

    role: str  # system | user | assistant | tool
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""


@dataclass(frozen=True)
class Function:
    """A function the model may call."""

    name: str
    description: str = ""
    parameters: dict | None = None  # JSON Schema of the arguments
    strict: bool = False


@dataclass(frozen=True)
class ToolUse:
    functions: tuple[Function, ...]
    choice: str = "auto"  # none | auto | required | function
    function: str = ""  # the function's name when choice is "function"
    parallel: bool | None = None  # None: allowed


@dataclass(frozen=True)
class Structured:
    """Structured outputs: JSON matching ``json_schema``, or any JSON object."""

    json_schema: dict | None = None
    json_object: bool = False


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]]  # most likely first


@dataclass
class ToolCallDelta:
    """A piece of a tool call: the first has the id and name, the next ones more of the arguments."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class Chunk:
    text: str
    # Set on a choice's last chunk: stop | length | tool_calls | abort. The stream's last chunk is the one with a
    # finish_reason and ``more`` false; it carries the usage (all choices).
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    index: int = 0  # the choice (n > 1)
    more: bool = False  # this choice ended, others go on
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[ToolCallDelta] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None  # on the first chunk, when asked (the first has no logprob)
    tokens: int = 0  # completion tokens in ``text`` (the plain case: n = 1)


@dataclass
class EngineLoad:
    """Figures the engine reports on every step."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    aborted_total: int = 0
    updated: float = field(default_factory=time.monotonic)


Messages = Sequence[Turn]


class Engine(Protocol):
    model_name: str
    max_model_len: int
    created: int
    load: EngineLoad

    async def start(self) -> None: ...

    def count_tokens(
        self,
        *,
        messages: Messages | None = None,
        prompt: str | None = None,
        tools: ToolUse | None = None,
        continue_final: bool = False,
    ) -> int: ...

    def generate(
        self,
        *,
        messages: Messages | None,
        prompt: str | None,
        sampling: Sampling,
        request_id: str,
        tools: ToolUse | None = None,
        structured: Structured | None = None,
        continue_final: bool = False,
    ) -> AsyncIterator[Chunk]:
        """``continue_final``: the last message is an assistant reply to go on with (no new turn is opened)."""
        ...

    async def stop(self) -> None: ...


def create_engine(settings: InferenceSettings) -> Engine:
    if settings.engine == "vllm":
        from chatplane.inference.vllm_engine import VllmEngine

        return VllmEngine(settings)
    if settings.engine == "synthetic":
        from chatplane.inference.synthetic import SyntheticEngine

        log.warning("synthetic engine: made-up tokens, no model (the test double of benchmarks and tests)")
        return SyntheticEngine(settings)
    raise ValueError(f"unknown engine {settings.engine!r}")
