"""Private surfaces through the real stack: the gateway's metrics only on their own port, the API documentation
can be turned off, and the JWT issuer and audience are the gateway's own settings."""

from __future__ import annotations

import httpx
import pytest

from tests_support import assert_openai_error

pytestmark = pytest.mark.engine


async def test_metrics_are_on_their_own_port_never_the_public_one(http, stack, account):
    await http.get("/v1/models", headers=account.headers)
    public = await http.get("/metrics")
    assert_openai_error(public, 404)
    async with httpx.AsyncClient(timeout=30) as client:
        private = await client.get(f"http://127.0.0.1:{stack.ports.gateway_metrics}/metrics")
    assert private.status_code == 200
    assert "chatplane_gateway_requests_total" in private.text
    assert f'api_key="{account.api_key_id}"' in private.text  # per-tenant figures: why they are private


async def test_api_documentation_can_be_turned_off(gateway_replica, http):
    for path in ("/docs", "/openapi.json"):
        assert (await http.get(path)).status_code == 200  # on by default (the stack)
    with gateway_replica(CHATPLANE_GATEWAY_DOCS_ENABLED="false") as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for path in ("/docs", "/redoc", "/openapi.json"):
                assert (await client.get(path)).status_code == 404, path
            assert (await client.get("/healthz")).status_code == 200


async def test_the_gateway_accepts_only_its_own_issuer_and_audience(gateway_replica, http, account):
    jwt_headers = {"Authorization": f"Bearer {account.token}"}
    assert (await http.get("/v1/models", headers=jwt_headers)).status_code == 200  # auth signs for "chatplane"
    with gateway_replica(CHATPLANE_GATEWAY_JWT_AUDIENCE="another-platform") as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            r = await client.get("/v1/models", headers=jwt_headers)
            assert_openai_error(r, 401)
            assert (await client.get("/v1/models", headers=account.headers)).status_code == 200  # API keys: auth's
