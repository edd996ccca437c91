"""Settings of the auth service (environment variables prefixed ``CHATPLANE_AUTH_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from chatplane.common.settings import DatabaseServiceSettings

DEV_KEY_FILENAME = "auth-jwt-key.pem"


class AuthSettings(DatabaseServiceSettings):
    # hide_input_in_errors: a validation error must never echo the private key.
    model_config = SettingsConfigDict(
        env_prefix="CHATPLANE_AUTH_", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )
    database_file: ClassVar[str] = "auth.db"

    port: int = Field(50051, description="Port to listen on (gRPC).")
    metrics_port: int = Field(
        9101, ge=0, le=65535, description="HTTP port of the Prometheus metrics endpoint (/metrics). 0: off."
    )
    consumer_metrics_port: int = Field(
        9105, ge=0, le=65535, description="Metrics port of the usage consumer process (`consume-usage`). 0: off."
    )
    jwt_private_key: SecretStr | None = Field(
        None, description="Ed25519 private key (PKCS#8 PEM) that signs access tokens. Required in production."
    )
    jwt_private_key_file: Path | None = Field(
        None, description="Path to the Ed25519 private key PEM (alternative to jwt_private_key, e.g. a mounted Secret)."
    )
    jwt_issuer: str = Field("chatplane", description="The `iss` claim of issued tokens, checked on verification.")
    jwt_audience: str = Field("chatplane", description="The `aud` claim of issued tokens, checked on verification.")
    access_token_ttl_seconds: int = Field(3600, ge=60, le=30 * 24 * 3600, description="Lifetime of access tokens.")
    principal_cache_ttl_seconds: int = Field(
        30,
        ge=0,
        description="How long the gateway may cache an Authenticate answer (API keys; for JWTs the remaining "
        "token lifetime, capped at this). Also the longest a revoked key may keep working at the gateway.",
    )
    last_used_update_interval_seconds: int = Field(
        60, ge=0, description="An API key's last_used_at is written at most this often (not on every request)."
    )
    password_hash_concurrency: int = Field(
        1, ge=1, le=64, description="Argon2 hashes and verifies (sign-up, login) run at once; each takes 64 MiB and "
        "up to 4 threads (argon2's parallelism) for tens to hundreds of ms. The rest wait."
    )
    password_hash_queue: int = Field(
        4, ge=0, description="Sign-ups and logins that may wait for an argon2 slot; beyond, refused at once "
        "(RESOURCE_EXHAUSTED: 429 with Retry-After at the gateway), so that a wait stays short."
    )
    max_api_keys_per_user: int = Field(
        50, ge=1, description="Active (not revoked) API keys one user may hold; creating more is refused."
    )
    consumer_session_timeout_ms: int = Field(
        10000,
        ge=1000,
        description="Kafka session timeout of the usage consumer (`consume-usage`): a consumer silent this long is "
        "replaced; its first join waits about half of it.",
    )

    @model_validator(mode="after")
    def _signing_key_rules(self) -> AuthSettings:
        if self.jwt_private_key is not None and self.jwt_private_key_file is not None:
            raise ValueError("set only one of CHATPLANE_AUTH_JWT_PRIVATE_KEY and CHATPLANE_AUTH_JWT_PRIVATE_KEY_FILE")
        if self.jwt_private_key_file is not None and not self.jwt_private_key_file.is_file():
            raise ValueError(f"CHATPLANE_AUTH_JWT_PRIVATE_KEY_FILE {self.jwt_private_key_file} is not a readable file")
        return self

    @property
    def dev_key_path(self) -> Path:
        """Where development persists its generated signing key."""
        return self.data_dir / DEV_KEY_FILENAME
