"""Settings of the conversation service (environment variables ``CHATPLANE_CONVERSATION_*``)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from chatplane.common.settings import ServiceSettings


class ConversationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CHATPLANE_CONVERSATION_", extra="ignore", populate_by_name=True)

    port: int = Field(50052, description="gRPC port to listen on (0: any free port).")
    database_url: str = Field(
        "",
        description="SQLAlchemy async URL of the conversation database. Empty: a SQLite file "
        "{data_dir}/conversation.db (development only; production needs PostgreSQL).",
    )
    auto_migrate: bool = Field(True, description="Apply the database migrations on start, before reporting SERVING.")
    inference_target: str = Field(
        "127.0.0.1:50053", description="Address of the inference service (host:port or dns:///name:port)."
    )
    system_prompt: str = Field(
        "", description="System prompt put first in every conversation's prompt. Empty: no system prompt."
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

    @model_validator(mode="after")
    def _database(self) -> ConversationSettings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir}/conversation.db"
        if self.is_production and self.database_url.startswith("sqlite"):
            raise ValueError("production refuses SQLite: set CHATPLANE_CONVERSATION_DATABASE_URL to PostgreSQL")
        return self
