"""JWT access tokens: the gateway verifies them locally with the JWKS; Authenticate verifies them too."""

from __future__ import annotations

import json
import time
import uuid

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chatplane.auth.keys import SigningKey, jwk_thumbprint
from chatplane.auth.settings import AuthSettings
from chatplane.protos.auth.v1 import auth_pb2, auth_pb2_grpc


def claims_for(user: auth_pb2.User, **overrides) -> dict:
    now = int(time.time())
    claims = {
        "sub": user.id,
        "email": user.email,
        "iat": now,
        "exp": now + 600,
        "iss": "chatplane",
        "aud": "chatplane",
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return claims


def sign(key: Ed25519PrivateKey, claims: dict, kid: str | None = None) -> str:
    kid = kid or SigningKey.from_private_key(key).kid
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


async def test_token_verifies_against_the_jwks_like_the_gateway_does(auth):
    user = await auth.sign_up("jwks@example.com")
    token = await auth.login("jwks@example.com")

    jwks = await auth.stub.GetJwks(auth_pb2.GetJwksRequest())
    assert (jwks.issuer, jwks.audience) == ("chatplane", "chatplane")
    keys = json.loads(jwks.json)["keys"]
    assert len(keys) == 1
    jwk = keys[0]
    assert {k: jwk[k] for k in ("kty", "crv", "alg", "use")} == {
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig"
    }
    assert "d" not in jwk  # public part only
    assert jwk["kid"] == jwk_thumbprint(jwk)

    key_set = jwt.PyJWKSet.from_json(jwks.json)
    kid = jwt.get_unverified_header(token)["kid"]
    assert kid == jwk["kid"]
    claims = jwt.decode(
        token, key_set[kid].key, algorithms=["EdDSA"], audience=jwks.audience, issuer=jwks.issuer
    )
    assert claims["sub"] == user.id and claims["email"] == "jwks@example.com"
    assert claims["exp"] - claims["iat"] == 3600
    assert len(claims["jti"]) == 32

    # each login issues a distinct token
    assert jwt.decode(await auth.login("jwks@example.com"), options={"verify_signature": False})["jti"] != claims["jti"]


async def test_expired_token_is_rejected(auth, fails):
    user = await auth.sign_up("expired@example.com")
    now = int(time.time())
    token = sign(auth.private_key, claims_for(user, iat=now - 7200, exp=now - 3600))
    failure = await fails(auth.authenticate(token))
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED


async def test_tampered_or_foreign_tokens_are_rejected(auth, fails):
    user = await auth.sign_up("tamper@example.com")
    token = await auth.login("tamper@example.com")
    assert (await auth.authenticate(token)).user_id == user.id

    header, payload, signature = token.split(".")
    middle = len(signature) // 2
    flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1 :]
    other_key = Ed25519PrivateKey.generate()
    our_kid = SigningKey.from_private_key(auth.private_key).kid
    # a payload naming another user, with the original signature
    forged_payload = jwt.utils.base64url_encode(
        json.dumps({**jwt.decode(token, options={"verify_signature": False}), "sub": uuid.uuid4().hex}).encode()
    ).decode()

    bad_tokens = {
        "flipped signature": f"{header}.{payload}.{flipped}",
        "forged payload": f"{header}.{forged_payload}.{signature}",
        "signed by another key": sign(other_key, claims_for(user)),
        "another key claiming our kid": sign(other_key, claims_for(user), kid=our_kid),
        "wrong audience": sign(auth.private_key, claims_for(user, aud="someone-else")),
        "wrong issuer": sign(auth.private_key, claims_for(user, iss="evil")),
        "no jti": sign(auth.private_key, {k: v for k, v in claims_for(user).items() if k != "jti"}),
        "alg none": jwt.encode(claims_for(user), None, algorithm="none"),
        "unknown user": sign(auth.private_key, claims_for(user, sub=uuid.uuid4().hex)),
        "not a token": "a.b.c",
    }
    for name, bad in bad_tokens.items():
        failure = await fails(auth.authenticate(bad))
        assert failure.code == grpc.StatusCode.UNAUTHENTICATED, name
        assert bad not in failure.message, name


async def test_jwt_principal_may_be_cached_no_longer_than_the_token_lives(auth):
    user = await auth.sign_up("ttl@example.com")
    long_lived = await auth.authenticate(await auth.login("ttl@example.com"))
    assert long_lived.cache_ttl_seconds == auth.settings.principal_cache_ttl_seconds == 30

    now = int(time.time())
    short = sign(auth.private_key, claims_for(user, iat=now - 100, exp=now + 10))
    principal = await auth.authenticate(short)
    assert principal.credential_type == auth_pb2.CREDENTIAL_TYPE_JWT
    assert 0 < principal.cache_ttl_seconds <= 10


async def test_development_key_survives_a_restart(tmp_path, sqlite_database_url, start_auth):
    """No key configured in development: one is generated once, kept (0600) and reused, so tokens stay valid."""
    first_settings = AuthSettings(data_dir=tmp_path, database_url=sqlite_database_url)
    first, address = await start_auth(first_settings)
    key_file = tmp_path / "auth-jwt-key.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    async with grpc.aio.insecure_channel(address) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        await stub.SignUp(auth_pb2.SignUpRequest(email="restart@example.com", password="a long password"))
        token = (await stub.Login(auth_pb2.LoginRequest(email="restart@example.com", password="a long password")))
        first_jwks = (await stub.GetJwks(auth_pb2.GetJwksRequest())).json
    await first.runtime.stop(0)
    pem_before = key_file.read_bytes()

    second, address = await start_auth(AuthSettings(data_dir=tmp_path, database_url=sqlite_database_url))
    assert key_file.read_bytes() == pem_before
    async with grpc.aio.insecure_channel(address) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        principal = await stub.Authenticate(auth_pb2.AuthenticateRequest(credential=token.access_token))
        assert principal.email == "restart@example.com"
        assert (await stub.GetJwks(auth_pb2.GetJwksRequest())).json == first_jwks
