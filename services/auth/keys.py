"""The Ed25519 key that signs access tokens, and its public JWK.

Production configures the key (env or a mounted file). Development generates one on first start and keeps it in
``{data_dir}/auth-jwt-key.pem`` (mode 0600) so that restarts keep issued tokens valid.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from chatplane.auth.settings import AuthSettings

log = logging.getLogger(__name__)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint of an OKP key (RFC 8037 section 2): SHA-256 of the required members, sorted, no spaces."""
    required = {name: jwk[name] for name in ("crv", "kty", "x")}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return _b64url(hashlib.sha256(canonical).digest())


@dataclass(frozen=True)
class SigningKey:
    private_key: Ed25519PrivateKey
    kid: str
    public_jwk: dict[str, str]

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @classmethod
    def from_private_key(cls, private_key: Ed25519PrivateKey) -> SigningKey:
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
        kid = jwk_thumbprint(jwk)
        return cls(private_key=private_key, kid=kid, public_jwk={**jwk, "kid": kid, "alg": "EdDSA", "use": "sig"})

    @classmethod
    def from_pem(cls, pem: bytes, source: str) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{source}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{source}: the JWT signing key must be Ed25519, got {type(key).__name__}")
        return cls.from_private_key(key)

    def jwks_json(self) -> str:
        return json.dumps({"keys": [self.public_jwk]}, separators=(",", ":"))


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class MissingSigningKey(ValueError):
    """Production without a configured key. Only what signs or verifies tokens needs one (serving, make-admin); the
    usage consumer and migrations do not, so that their pods never hold the private key."""


def load_signing_key(settings: AuthSettings) -> SigningKey:
    """The configured key; in development without one, the persisted (or newly generated) development key."""
    if settings.jwt_private_key is not None:
        pem = settings.jwt_private_key.get_secret_value()
        if "\n" not in pem:  # a PEM squeezed into one env line with literal "\n"
            pem = pem.replace("\\n", "\n")
        return SigningKey.from_pem(pem.encode("utf-8"), "CHATPLANE_AUTH_JWT_PRIVATE_KEY")
    if settings.jwt_private_key_file is not None:
        path = settings.jwt_private_key_file
        return SigningKey.from_pem(path.read_bytes(), str(path))
    if settings.is_production:  # never generate a key in production
        raise MissingSigningKey(
            "production needs a configured signing key: set CHATPLANE_AUTH_JWT_PRIVATE_KEY or "
            "CHATPLANE_AUTH_JWT_PRIVATE_KEY_FILE (an Ed25519 PKCS#8 PEM); generated keys are for development"
        )
    return _development_key(settings.dev_key_path)


def _development_key(path: Path) -> SigningKey:
    if path.exists():
        return SigningKey.from_pem(path.read_bytes(), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    # Write a private temp file, then link it into place: a concurrent starter either wins or reads the winner's key.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_key_pem(key))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return SigningKey.from_pem(path.read_bytes(), str(path))
    finally:
        tmp.unlink(missing_ok=True)
    log.warning("generated a development JWT signing key", extra={"path": str(path)})
    return SigningKey.from_private_key(key)
