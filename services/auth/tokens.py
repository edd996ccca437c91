"""JWT access tokens: EdDSA (Ed25519) signed with PyJWT; others verify them locally against the JWKS."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from chatplane.auth.keys import SigningKey

ALGORITHM = "EdDSA"
REQUIRED_CLAIMS = ["sub", "email", "iat", "exp", "iss", "aud", "jti"]


@dataclass(frozen=True)
class VerifiedToken:
    user_id: str
    email: str
    expires_at: int  # unix seconds


class TokenIssuer:
    def __init__(self, key: SigningKey, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        self.key = key
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds

    def issue(self, user_id: str, email: str, now: datetime) -> str:
        claims = {
            "sub": user_id,
            "email": email,
            "iat": now,
            "exp": now + timedelta(seconds=self.ttl_seconds),
            "iss": self.issuer,
            "aud": self.audience,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.key.private_key, algorithm=ALGORITHM, headers={"kid": self.key.kid})

    def verify(self, token: str) -> VerifiedToken:
        """Signature, exp, iat, iss and aud; raises ``jwt.PyJWTError`` on any failure."""
        claims = jwt.decode(
            token,
            self.key.public_key,
            algorithms=[ALGORITHM],
            audience=self.audience,
            issuer=self.issuer,
            options={"require": REQUIRED_CLAIMS},
        )
        if not isinstance(claims["sub"], str) or not isinstance(claims["email"], str):
            raise jwt.InvalidTokenError("malformed claims")
        return VerifiedToken(user_id=claims["sub"], email=claims["email"], expires_at=int(claims["exp"]))

    def jwks_json(self) -> str:
        return self.key.jwks_json()
