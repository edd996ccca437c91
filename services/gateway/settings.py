"""Gateway settings (env prefix ``CHATPLANE_GATEWAY_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from chatplane.common import limits
from chatplane.common.settings import InferenceClientSettings, ServiceSettings


class GatewaySettings(ServiceSettings, InferenceClientSettings):
    model_config = SettingsConfigDict(env_prefix="CHATPLANE_GATEWAY_", extra="ignore", populate_by_name=True)

    port: int = Field(8000, description="HTTP port to listen on (the public API).")
    metrics_port: int = Field(
        9100, ge=0, le=65535, description="HTTP port of the Prometheus metrics endpoint (/metrics, with per-API-key "
        "counts): a port of its own, never the public one, so that an Ingress routing the API cannot reach it. 0: off."
    )
    docs_enabled: bool = Field(
        True, description="Serve the interactive API documentation (/docs, /redoc) and /openapi.json; false turns "
        "all three off (404)."
    )
    auth_target: str = Field("127.0.0.1:50051", description="gRPC address of the auth service.")
    conversation_target: str = Field("127.0.0.1:50052", description="gRPC address of the conversation service.")
    max_body_bytes: int = Field(
        limits.MAX_REQUEST_BODY_BYTES, gt=0, description="Request bodies larger than this get 413 without being read."
    )
    auth_cache_ttl_seconds: float = Field(
        30.0,
        ge=0,
        description=(
            "Upper bound for caching an API key's principal (the auth service's cache_ttl_seconds may lower it)."
        ),
    )
    auth_negative_cache_seconds: float = Field(
        2.0, ge=0, description="How long an API key that auth rejected is remembered as invalid."
    )
    auth_cache_size: int = Field(10_000, gt=0, description="Most API keys kept in the authentication cache.")
    jwks_refresh_seconds: float = Field(
        5.0, ge=0, description="Least time between two JWKS fetches triggered by a JWT with an unknown key id."
    )
    jwks_max_age_seconds: float = Field(
        3600.0, gt=0, description="The JWKS is fetched again after this long even when every key id is known."
    )
    jwt_issuer: str = Field(
        "chatplane", description="The `iss` every access token must carry (auth's CHATPLANE_AUTH_JWT_ISSUER)."
    )
    jwt_audience: str = Field(
        "chatplane", description="The `aud` every access token must carry (auth's CHATPLANE_AUTH_JWT_AUDIENCE)."
    )
    upstream_timeout_seconds: float = Field(
        10.0, gt=0, description="Deadline for unary gRPC calls to the auth, conversation and inference services."
    )
    stream_timeout_seconds: float = Field(
        900.0, gt=0, description="Deadline for one streamed generation (chat completion or conversation message)."
    )
    readiness_timeout_seconds: float = Field(
        1.0, gt=0, description="How long /readyz waits for each backend's grpc.health.v1 answer."
    )
    rate_limit_requests_per_minute: int = Field(
        3000, ge=0, description="Default requests per minute of one API key (model calls); per-key overrides are set "
        "by admins. 0: no limit."
    )
    rate_limit_tokens_per_minute: int = Field(
        2_000_000, ge=0, description="Default tokens per minute of one API key (the estimate at admission, corrected "
        "to the exact usage afterwards). 0: no limit."
    )
    user_rate_limit_requests_per_minute: int = Field(
        6000, ge=0, description="Requests per minute of one user, shared by all of the user's API keys and access "
        "tokens (besides each key's own limit). 0: no limit."
    )
    user_rate_limit_tokens_per_minute: int = Field(
        4_000_000, ge=0, description="Tokens per minute of one user, shared by all of the user's API keys and access "
        "tokens (besides each key's own limit). 0: no limit."
    )
    login_attempts_per_minute_per_address: int = Field(
        30, ge=0, description="Login attempts per minute from one client address (429 with Retry-After beyond; a "
        "successful login gives its attempt back). 0: no limit."
    )
    login_attempts_per_minute_per_account: int = Field(
        10, ge=0, description="Login attempts per minute for one email address, from anywhere (a successful login "
        "gives its attempt back). 0: no limit."
    )
    signups_per_hour_per_address: int = Field(
        20, ge=0, description="Sign-ups per hour from one client address. 0: no limit."
    )
    exports_per_hour_per_user: int = Field(
        30, ge=0, description="Conversation exports one user may request per hour. 0: no limit."
    )
    forwarded_allow_ips: str = Field(
        "", description="Addresses of the proxies (the Ingress) whose X-Forwarded-For names the client address that "
        "login and sign-up limits count by (uvicorn's forwarded_allow_ips, comma-separated, or *). Empty: the "
        "connection's own address."
    )
    estimated_completion_tokens: int = Field(
        512, ge=0, description="Completion tokens reserved (rate limit, quota) for a request that gives no max_tokens."
    )
    max_n: int = Field(
        8, ge=1, le=limits.MAX_N, description="Most choices (`n`) one completion request may ask for; more is a 400 "
        "naming `n`. Each choice costs the engine as much as a request of its own."
    )
    redis_url: str = Field(
        "", description="Redis for the rate-limit, quota and attempt counters shared by all gateway replicas, and the "
        "channel that tells every replica about a revoked key (redis://host:6379/0). Empty: in-process counters (one "
        "gateway only)."
    )
    redis_key_prefix: str = Field("chatplane:", description="Prefix of every Redis key the gateway writes.")
    spool_file: Path | None = Field(
        None, description="The durable spool of finished completions (a SQLite file; published from there to Kafka). "
        "Empty: {data_dir}/gateway-spool.db. Keep it on a volume that outlives the process."
    )
    access_log: bool = Field(
        True, description="One JSON log line per HTTP request (method, path, route, status, duration, API key id, "
        "user id, request id); false to turn it off (the metrics still count every request)."
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='Browser origins allowed by CORS, as a JSON list (e.g. ["https://chat.example.com"]); empty: off.',
    )
    web_dir: str = Field(
        "", description="Folder of the built web app (index.html, assets/) served at / (`make web` builds web/dist). "
        "Empty: the repository's web/dist when it has been built, else no web app."
    )

    @property
    def spool_path(self) -> Path:
        return self.spool_file or self.data_dir / "gateway-spool.db"
