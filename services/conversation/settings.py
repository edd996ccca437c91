"""Settings of the conversation service (environment variables ``CHATPLANE_CONVERSATION_*``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from chatplane.common.settings import DatabaseServiceSettings


class ConversationSettings(DatabaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CHATPLANE_CONVERSATION_", extra="ignore", populate_by_name=True)
    database_file: ClassVar[str] = "conversation.db"

    port: int = Field(50052, description="gRPC port to listen on (0: any free port).")
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
