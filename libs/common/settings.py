"""Settings shared by every service. Each service subclasses :class:`ServiceSettings` with its own env prefix."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(StrEnum):
    development = "development"
    production = "production"


# Fields every service has, read from the same variable whatever the service's prefix.
def shared(default, name: str, description: str):
    return Field(default, validation_alias=AliasChoices(name, name.lower()), description=description)


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATPLANE_", extra="ignore", populate_by_name=True)

    environment: Environment = shared(
        Environment.development,
        "CHATPLANE_ENVIRONMENT",
        "development allows generated dev secrets and SQLite; production refuses them.",
    )
    data_dir: Path = shared(Path("data"), "CHATPLANE_DATA_DIR", "Where the embedded default keeps its files.")
    log_level: str = shared("INFO", "CHATPLANE_LOG_LEVEL", "Python log level.")
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(0, description="Port to listen on.")
    shutdown_grace_seconds: float = Field(
        30.0, description="On SIGTERM: how long in-flight requests may take to finish before they are cancelled."
    )

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.production

    def listen_address(self) -> str:
        return f"{self.host}:{self.port}"
