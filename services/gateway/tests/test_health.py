"""Liveness, readiness and the OpenAPI docs (no credential needed)."""

from __future__ import annotations

from chatplane.dev.procs import free_port


async def test_healthz_and_docs_need_no_credential(client):
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/chat/completions" in spec["paths"]


async def test_readyz_when_all_serve(client):
    resp = await client.get("/readyz")
    assert resp.status_code == 200
    assert resp.json()["services"] == {"auth": "serving", "conversation": "serving", "inference": "serving"}


async def test_readyz_503_when_a_backend_is_not_serving(client, fakes):
    await fakes.inference.set_serving(False)
    resp = await client.get("/readyz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["error"]["type"] == "service_unavailable"
    assert "inference" in body["error"]["message"] and "auth" not in body["error"]["message"]
    assert body["services"]["inference"] == "not_serving"


async def test_readyz_503_when_a_backend_is_unreachable(make_client, settings):
    down = settings.model_copy(update={"auth_target": f"127.0.0.1:{free_port()}",
                                       "conversation_target": f"127.0.0.1:{free_port()}"})
    async with make_client(down) as c:
        resp = await c.get("/readyz")
        assert resp.status_code == 503
        assert resp.json()["services"] == {"auth": "not_serving", "conversation": "not_serving",
                                           "inference": "serving"}
        assert (await c.get("/healthz")).status_code == 200
