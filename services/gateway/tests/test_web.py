"""The web app's static files as the gateway serves them: the app at every non-API path, the API untouched, cache
and security headers, pre-compressed files, no way out of the folder."""

from __future__ import annotations

import gzip

import pytest

from chatplane.gateway.web import CSP, resolve_web_dir

INDEX = b'<!doctype html><html><head><script type="module" src="/assets/index-abc123.js"></script></head></html>'
SCRIPT = b"console.log('chatplane');" * 20


@pytest.fixture
def web_dir(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_bytes(INDEX)
    (tmp_path / "assets" / "index-abc123.js").write_bytes(SCRIPT)
    (tmp_path / "assets" / "index-abc123.js.gz").write_bytes(gzip.compress(SCRIPT))
    (tmp_path / "theme.js").write_bytes(b"// theme")
    (tmp_path.parent / "secret.txt").write_text("not for the web")
    return tmp_path


@pytest.fixture
async def web(make_client, settings, web_dir):
    async with make_client(settings.model_copy(update={"web_dir": str(web_dir)})) as c:
        yield c


@pytest.mark.parametrize("path", ["/", "/c/conv_123", "/keys", "/usage", "/login?next=%2Fkeys"])
async def test_app_paths_get_the_app(web, path):
    resp = await web.get(path)
    assert resp.status_code == 200
    assert resp.content == INDEX
    assert resp.headers["content-type"].startswith("text/html")
    assert resp.headers["cache-control"] == "no-cache"  # a new build is picked up on the next load
    assert resp.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["x-content-type-options"] == "nosniff"


async def test_hashed_assets_are_cached_for_good_and_sent_compressed(web):
    resp = await web.get("/assets/index-abc123.js", headers={"accept-encoding": "gzip"})
    assert resp.status_code == 200
    assert resp.headers["content-encoding"] == "gzip"
    assert resp.content == SCRIPT  # httpx decompresses
    assert "immutable" in resp.headers["cache-control"]
    assert resp.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert resp.headers["vary"] == "Accept-Encoding"
    plain = await web.get("/assets/index-abc123.js", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == SCRIPT


async def test_top_level_files_are_revalidated(web):
    resp = await web.get("/theme.js")
    assert resp.status_code == 200 and resp.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize("path", ["/assets/index-old999.js", "/favicon.ico", "/../secret.txt", "/%2e%2e/secret.txt",
                                  "/assets/..%2f..%2fsecret.txt"])
async def test_missing_files_and_escapes_are_404(web, path):
    resp = await web.get(path)
    assert resp.status_code == 404
    assert b"not for the web" not in resp.content


async def test_the_api_is_untouched(web, auth_headers):
    resp = await web.get("/v1/nope", headers=auth_headers)
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == "Invalid URL (GET /v1/nope)"
    assert (await web.get("/v1/models")).status_code == 401  # still an API route, not the app
    assert (await web.get("/healthz")).status_code == 200
    assert (await web.get("/openapi.json")).json()["info"]["title"] == "chatplane"
    assert (await web.post("/c/abc")).status_code in (404, 405)  # only GET and HEAD reach the app


async def test_head_answers_without_a_body(web):
    resp = await web.head("/c/abc")
    assert resp.status_code == 200 and resp.content == b""


async def test_no_build_means_no_app(make_client, settings, tmp_path, monkeypatch):
    monkeypatch.setattr("chatplane.gateway.web.repo_web_dist", lambda: tmp_path / "absent")
    async with make_client(settings) as c:
        resp = await c.get("/")
        assert resp.status_code == 404
        assert resp.json()["error"]["message"] == "Invalid URL (GET /)"


def test_a_web_dir_without_a_build_fails_at_start(tmp_path):
    with pytest.raises(RuntimeError, match="make web"):
        resolve_web_dir(str(tmp_path))
