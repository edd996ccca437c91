"""Settings shared by every service. Each service subclasses :class:`ServiceSettings` with its own env prefix.

Services that own a database subclass :class:`DatabaseServiceSettings` instead.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import ClassVar, Self

from pydantic import AliasChoices, Field, model_validator
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
    kafka_bootstrap_servers: str = shared(
        "127.0.0.1:9092",
        "CHATPLANE_KAFKA_BOOTSTRAP_SERVERS",
        "Kafka brokers (host:port, comma-separated) that domain events are published to and consumed from. "
        "`make run` starts an embedded broker there. Set it empty to disable publishing (events then wait in the "
        "services' outbox tables).",
    )
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


class InferenceClientSettings(BaseSettings):
    """Where a caller of inference (gateway, conversation service, jobs worker) finds the model pools: one setting
    for all of them (``chatplane.common.inference``)."""

    inference_pools: str = shared(
        "127.0.0.1:50053",
        "CHATPLANE_INFERENCE_POOLS",
        "The inference pools: one target (host:port[,host:port...] a static list of replicas; dns:///name:port a "
        "name re-resolved periodically, e.g. a headless Service; kubernetes:///service.namespace:port its "
        "EndpointSlices, watched) or a JSON list of pools [{\"name\", \"model\", \"target\", \"policy\"}]; policy "
        "affinity (default), least_loaded or round_robin. An empty model means the first pool's.",
    )
    inference_discovery_interval_seconds: float = shared(
        5.0,
        "CHATPLANE_INFERENCE_DISCOVERY_INTERVAL_SECONDS",
        "How often dns:/// inference targets are resolved again (new replicas get traffic within this).",
    )

    @model_validator(mode="after")
    def _pools(self) -> Self:
        from chatplane.common.inference.pools import parse_pools

        parse_pools(self.inference_pools)  # fail at start with the reason, not at the first request
        return self


class GrpcServiceSettings(ServiceSettings):
    """Settings of a service that serves gRPC."""

    max_connection_age_seconds: float = Field(
        0.0,
        ge=0,
        description="Close each client connection after this long (it reconnects and re-resolves its target): a "
        "backstop so that new replicas behind a DNS name get traffic. 0: never.",
    )
    max_connection_age_grace_seconds: float = Field(
        30.0, ge=0, description="Calls under way on a connection closed for its age get this long to finish."
    )
    prepare_retry_max_seconds: float = Field(
        10.0, gt=0, description="Preparing to serve (auth, conversation: the database reachable and migrated) is "
        "retried after 0.5 s, the wait doubling up to this, until it succeeds; NOT_SERVING meanwhile. (Inference's "
        "engine start is not retried.)",
    )
    health_port: int = Field(
        0, ge=0, le=65535, description="With mutual TLS on: a plaintext port serving only grpc.health.v1, for "
        "Kubernetes' gRPC probes (which cannot speak TLS). 0: none."
    )

    def health_address(self) -> str | None:
        """The plaintext health-only listener (``health_port``), if any."""
        return f"{self.host}:{self.health_port}" if self.health_port else None


class DatabaseServiceSettings(GrpcServiceSettings):
    """Settings of a service that owns a database: its URL (SQLite by default, PostgreSQL in production) and migrations.

    Subclasses set ``database_file``, the name of the SQLite file in ``data_dir`` used when no URL is given.
    Validation errors never echo the input: a database URL may carry a password.
    """

    model_config = SettingsConfigDict(hide_input_in_errors=True)
    database_file: ClassVar[str]

    database_url: str = Field(
        "",
        description="SQLAlchemy async URL of the service's database (postgresql+asyncpg://user:password@host:5432/db). "
        "Empty: a SQLite file, sqlite+aiosqlite:///{data_dir}/{service}.db (development only: production refuses "
        "SQLite).",
    )
    auto_migrate: bool = Field(
        True,
        description="Apply the Alembic migrations on start, before reporting SERVING "
        "(`python -m chatplane.{service} migrate` runs them alone).",
    )

    @model_validator(mode="after")
    def _database(self) -> Self:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir}/{self.database_file}"
        if self.is_production and self.database_url.startswith("sqlite"):
            variable = f"{self.model_config['env_prefix']}DATABASE_URL".upper()
            raise ValueError(
                f"production refuses SQLite: set {variable} to a PostgreSQL URL (postgresql+asyncpg://...)"
            )
        return self
