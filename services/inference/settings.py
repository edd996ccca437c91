"""Inference service settings (environment prefix ``CHATPLANE_INFERENCE_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from chatplane.common.settings import GrpcServiceSettings


class InferenceSettings(GrpcServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CHATPLANE_INFERENCE_")

    port: int = Field(50053, description="gRPC port.")
    metrics_port: int = Field(
        9103,
        ge=0,
        le=65535,
        description="HTTP port of the Prometheus metrics endpoint (/metrics: ours and vLLM's `vllm:*`). 0: off.",
    )
    engine: Literal["vllm", "synthetic"] = Field(
        "vllm",
        description="The model engine: vLLM's AsyncLLM, in-process; `synthetic` streams made-up tokens without a "
        "model (the test double of inference: benchmarks of the platform's own overhead, tests).",
    )
    model_path: Path = Field(
        Path("data/models/SmolLM2-135M-Instruct"),
        description="A local Hugging Face model folder (a path in the image, a mounted volume). Never a hub id.",
    )
    served_model_name: str = Field(
        "", description="The model id clients ask for (`model` in requests). Empty: the model folder's name."
    )
    max_model_len: int | None = Field(
        2048, ge=16, description="Context window in tokens (prompt + reply). Unset: the model's own maximum."
    )
    max_num_seqs: int = Field(32, ge=1, description="Requests the engine runs at once; the rest wait in its queue.")
    max_waiting: int = Field(
        128, ge=0, description="Generate calls that may wait beyond the max_num_seqs being run; one more is refused "
        "at once (RESOURCE_EXHAUSTED, `rate_limit_exceeded`): the client tries the pool's other replicas, else the "
        "gateway answers 429. 0: none waits."
    )
    dtype: str = Field("auto", description="Weights' dtype for vLLM (auto, bfloat16, float16, float32).")
    enforce_eager: bool = Field(
        True, description="Skip graph capture/compilation: starts in ~20 s instead of minutes; slower per token."
    )
    enable_prefix_caching: bool = Field(True, description="Reuse the KV cache of shared prompt prefixes.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU only: share of GPU memory vLLM may use.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPU only: GPUs one replica shards the model across.")
    kv_cache_gib: float = Field(
        1.0, gt=0, description="CPU only: KV-cache size in GiB, fractions included (vLLM's kv_cache_memory_bytes)."
    )
    seed: int = Field(0, description="Engine seed (requests can still set their own).")
    cache_dir: Path | None = Field(
        None, description="vLLM's cache and temp folder (VLLM_CACHE_ROOT, TMPDIR). Default: <data_dir>/cache/vllm."
    )
    extra_engine_args: dict = Field(
        default_factory=dict, description="More vllm AsyncEngineArgs as JSON, e.g. {\"swap_space\": 0}."
    )
    tool_call_parser: str = Field(
        "hermes",
        description="vLLM's tool-call parser for this model's format (hermes, llama3_json, mistral, qwen3_xml, ...: "
        "the names of vLLM's --tool-call-parser): it finds the calls in the generated text. Empty: the model cannot "
        "call tools (requests with tools get 400).",
    )
    chat_template: Path | None = Field(
        None,
        description="A Jinja chat template file used instead of the model's own (like vLLM's --chat-template). "
        "Unset: the model's own; for requests with tools, when the model's own ignores them, the bundled "
        "Hermes-style ChatML template.",
    )
    stream_interval_ms: float = Field(
        20.0, ge=0, le=1000, description="Least time between two messages of a stream after its first: tokens "
        "produced meanwhile go out together (like vLLM's --stream-interval, in time). The first token and the end of "
        "a stream are never held; a stream of 50 tokens/s or slower is sent token by token all the same, faster ones "
        "in bounded batches (half the platform's CPU per request: README \"Performance\"). 0: every token as soon as "
        "it exists."
    )
    synthetic_tokens_per_second: float = Field(
        0.0, ge=0, description="Synthetic engine: tokens a second per stream; 0: as fast as possible."
    )
    synthetic_prompt_token_seconds: float = Field(
        0.0, ge=0, description="Synthetic engine: delay before the first token, per prompt token (prefill)."
    )
    synthetic_script: list[str] = Field(
        default_factory=list,
        description="Synthetic engine: the reply's tokens, one chunk each, instead of made-up words (the same reply "
        "to every request); it ends (`stop`) after the last, or at max_tokens (`length`). Empty: made-up words.",
    )
    synthetic_reply_tokens: int = Field(
        64, ge=1, description="Synthetic engine: reply length when a request sets no max_tokens (capped by the context)."
    )

    def chat_template_text(self) -> str | None:
        return self.chat_template.read_text() if self.chat_template is not None else None

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model_path.name
