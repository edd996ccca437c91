"""Settings that fail fast in production, and the signing key sources."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from chatplane.auth.keys import SigningKey, jwk_thumbprint, load_signing_key
from chatplane.auth.settings import AuthSettings

PG_URL = "postgresql+asyncpg://auth@db.internal:5432/auth"


def test_development_defaults(tmp_path):
    settings = AuthSettings(data_dir=tmp_path)
    assert settings.port == 50051
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path}/auth.db"
    assert settings.auto_migrate is True
    assert (settings.jwt_issuer, settings.jwt_audience) == ("chatplane", "chatplane")


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CHATPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CHATPLANE_AUTH_PORT", "6000")
    monkeypatch.setenv("CHATPLANE_AUTH_ACCESS_TOKEN_TTL_SECONDS", "600")
    settings = AuthSettings()
    assert (settings.port, settings.access_token_ttl_seconds) == (6000, 600)
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path}/auth.db"


def test_production_without_a_key_fails_fast_where_tokens_are_signed():
    from chatplane.auth.keys import MissingSigningKey
    from chatplane.auth.server import AuthServer

    settings = AuthSettings(environment="production", database_url=PG_URL)  # enough for migrate / consume-usage
    with pytest.raises(MissingSigningKey, match="JWT_PRIVATE_KEY"):
        AuthServer(settings)


def test_production_refuses_sqlite(ed25519_pem, tmp_path):
    for url in ["", f"sqlite+aiosqlite:///{tmp_path}/auth.db"]:
        with pytest.raises(ValidationError, match="SQLite") as info:
            AuthSettings(environment="production", database_url=url, jwt_private_key=ed25519_pem)
        assert "PRIVATE KEY" not in str(info.value)  # the key is never echoed in the error


def test_production_with_postgres_and_a_key_is_accepted(ed25519_pem, tmp_path):
    settings = AuthSettings(environment="production", database_url=PG_URL, jwt_private_key=ed25519_pem)
    assert settings.is_production
    assert load_signing_key(settings).kid

    key_file = tmp_path / "key.pem"
    key_file.write_text(ed25519_pem)
    from_file = AuthSettings(environment="production", database_url=PG_URL, jwt_private_key_file=key_file)
    assert load_signing_key(from_file).kid == load_signing_key(settings).kid


def test_missing_key_file_or_two_key_sources_fail_fast(ed25519_pem, tmp_path):
    with pytest.raises(ValidationError, match="not a readable file"):
        AuthSettings(data_dir=tmp_path, jwt_private_key_file=tmp_path / "missing.pem")
    key_file = tmp_path / "key.pem"
    key_file.write_text(ed25519_pem)
    with pytest.raises(ValidationError, match="only one"):
        AuthSettings(data_dir=tmp_path, jwt_private_key=ed25519_pem, jwt_private_key_file=key_file)


def test_wrong_key_types_are_refused(tmp_path):
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    with pytest.raises(ValueError, match="Ed25519"):
        load_signing_key(AuthSettings(data_dir=tmp_path, jwt_private_key=rsa_pem))
    with pytest.raises(ValueError, match="PEM"):
        load_signing_key(AuthSettings(data_dir=tmp_path, jwt_private_key="not a key"))


def test_pem_in_one_env_line_with_escaped_newlines(ed25519_pem, tmp_path):
    one_line = ed25519_pem.replace("\n", "\\n")
    settings = AuthSettings(data_dir=tmp_path, jwt_private_key=one_line)
    assert load_signing_key(settings).kid == load_signing_key(AuthSettings(jwt_private_key=ed25519_pem)).kid


def test_development_key_is_generated_once_and_kept_private(tmp_path):
    settings = AuthSettings(data_dir=tmp_path / "data")
    first = load_signing_key(settings)
    path = tmp_path / "data" / "auth-jwt-key.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_signing_key(AuthSettings(data_dir=tmp_path / "data")).kid == first.kid
    assert load_signing_key(AuthSettings(data_dir=tmp_path / "other")).kid != first.kid


def test_jwk_thumbprint_matches_rfc_8037():
    # RFC 8037 appendix A.3
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert jwk_thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_rfc_8037_key_gets_the_rfc_kid():
    # RFC 8037 appendix A.1: the private key "d" gives the public "x" of A.3
    d = base64.urlsafe_b64decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=")
    key = SigningKey.from_private_key(Ed25519PrivateKey.from_private_bytes(d))
    assert key.public_jwk["x"] == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert key.kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
