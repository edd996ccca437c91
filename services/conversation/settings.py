"""Settings of the conversation service (environment variables ``CHATPLANE_CONVERSATION_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from chatplane.common.settings import DatabaseServiceSettings, InferenceClientSettings


class ConversationSettings(DatabaseServiceSettings, InferenceClientSettings):
    model_config = SettingsConfigDict(env_prefix="CHATPLANE_CONVERSATION_", extra="ignore", populate_by_name=True)
    database_file: ClassVar[str] = "conversation.db"

    port: int = Field(50052, description="gRPC port to listen on (0: any free port).")
    metrics_port: int = Field(
        9102, ge=0, le=65535, description="HTTP port of the Prometheus metrics endpoint (/metrics). 0: off."
    )
    worker_metrics_port: int = Field(
        9104, ge=0, le=65535, description="Metrics port of the Celery worker process (`worker`). 0: off."
    )
    system_prompt: str = Field(
        "You are a helpful assistant.",
        description="System prompt put first in every conversation's prompt. Empty: no system prompt. The default "
        "matters for small models: SmolLM2-135M in bfloat16 answers 'What is the capital of France?' in French "
        "without a system message and 'The capital of France is Paris.' with this one.",
    )
    default_max_tokens: int = Field(
        512,
        ge=1,
        description="Reply budget in tokens when a request gives no max_tokens; capped by what the model's context "
        "window leaves after the prompt.",
    )
    inference_timeout_seconds: float = Field(
        300.0, gt=0, description="Deadline of one call to the inference service, a whole streamed reply included."
    )
    outbox_linger_ms: float = Field(
        50.0, ge=0, le=1000, description="After a commit that added events, the outbox relay waits this long before "
        "publishing, so that the events of the commits meanwhile (a turn makes two) go to Kafka in one batch: less "
        "CPU per message for at most this much more event latency. 0: publish at once."
    )
    celery_broker_url: str = Field(
        "",
        description="Broker of the Celery jobs (titles, exports, retention), e.g. redis://redis:6379/0. Empty: kombu's "
        "SQLAlchemy transport on a SQLite file, sqla+sqlite:///{data_dir}/celery-broker.db (needs no server).",
    )
    celery_queue: str = Field("conversation-jobs", description="Name of the Celery queue the jobs go through.")
    worker_concurrency: int = Field(2, ge=1, description="Jobs one worker process runs at once (prefork children).")
    worker_beat: bool = Field(
        True,
        description="Run the scheduler (Celery beat, for the retention job) inside the worker. In a cluster keep it "
        "on in exactly one worker replica.",
    )
    generate_titles: bool = Field(
        True, description="After a conversation's first exchange, queue a job that asks the model for its title."
    )
    title_max_tokens: int = Field(24, ge=1, le=256, description="Reply budget of the model when it writes a title.")
    export_ttl_seconds: float = Field(
        86400.0, ge=0, description="An export (its stored copy of the conversation) is gone this long after it was "
        "asked for: 404 from then on, and deleted by a scheduled job of the worker. 0: kept forever."
    )
    retention_days: int = Field(
        0,
        ge=0,
        description="Archived conversations untouched for this many days are deleted by a scheduled job. 0: never.",
    )
    retention_interval_seconds: float = Field(
        3600.0, gt=0, description="How often the retention job runs (when retention_days is set)."
    )

    @model_validator(mode="after")
    def _broker(self) -> Self:
        if self.is_production and not self.celery_broker_url:
            raise ValueError(
                "production needs a Celery broker: set CHATPLANE_CONVERSATION_CELERY_BROKER_URL (redis://...)"
            )
        return self

    @property
    def broker_url(self) -> str:
        """The Celery broker: the configured one, or the embedded SQLite file (no server needed)."""
        if self.celery_broker_url:
            return self.celery_broker_url
        return f"sqla+sqlite:///{Path(self.data_dir).resolve()}/celery-broker.db"
