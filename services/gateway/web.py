"""The web app: the static files that ``make web`` builds into ``web/dist``, served at ``/`` (the API stays under
``/v1``).

Every path that is not the API's and names no file of the build gets ``index.html`` (the app's router reads the
URL: ``/c/<id>``, ``/keys``, ...). Hashed files under ``assets/`` are cached for a year; ``index.html`` is revalidated
on every load, so a new build is picked up at once. A file with a pre-compressed ``.gz`` twin (written by the
build) is sent compressed to clients that accept gzip. Every answer carries a strict Content-Security-Policy: the
app has no inline script or style, talks only to this origin, and may not be framed.
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.responses import FileResponse, Response

from chatplane.gateway.errors import APIError

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# Paths that belong to the API or the server itself: never answered with the app.
_NOT_APP = ("v1", "docs", "redoc", "openapi.json", "metrics", "healthz", "readyz")


def repo_web_dist() -> Path:
    """``web/dist`` of the repository this package runs from (an editable install, ``make run``)."""
    return Path(__file__).resolve().parents[2] / "web" / "dist"


def resolve_web_dir(setting: str) -> Path | None:
    """The folder to serve: the setting when given (it must hold a build), else the repository's ``web/dist`` when
    it has been built, else None (no web app: ``/`` is an ordinary 404)."""
    if setting:
        folder = Path(setting).resolve()
        if not (folder / "index.html").is_file():
            raise RuntimeError(f"CHATPLANE_GATEWAY_WEB_DIR={setting} holds no index.html (build it with `make web`)")
        return folder
    folder = repo_web_dist()
    return folder if (folder / "index.html").is_file() else None


def _accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "").lower()


class WebApp:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _file(self, path: str) -> Path | None:
        if not path or path.endswith("/"):
            return None
        candidate = (self.folder / path).resolve()
        if not candidate.is_relative_to(self.folder) or not candidate.is_file():
            return None
        return candidate

    def _send(self, file: Path, request: Request, cache: str) -> Response:
        headers = {**SECURITY_HEADERS, "Cache-Control": cache}
        media_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type in ("application/javascript", "image/svg+xml"):
            media_type += "; charset=utf-8" if "charset" not in media_type else ""
        gz = file.with_name(file.name + ".gz")
        if gz.is_file():
            headers["Vary"] = "Accept-Encoding"
            if _accepts_gzip(request):
                headers["Content-Encoding"] = "gzip"
                return FileResponse(gz, media_type=media_type, headers=headers)
        return FileResponse(file, media_type=media_type, headers=headers)

    async def __call__(self, request: Request) -> Response:
        path = request.path_params.get("path", "")
        if path.split("/", 1)[0] in _NOT_APP:
            raise APIError(404, f"Invalid URL ({request.method} {request.url.path})")
        file = self._file(path)
        if file is not None and file.name != "index.html":
            return self._send(file, request, IMMUTABLE if path.startswith("assets/") else REVALIDATE)
        if path.startswith("assets/") or "." in path.rsplit("/", 1)[-1]:
            # A missing build file (an old hashed name, a typo) is a real 404, not the app.
            raise APIError(404, f"Invalid URL ({request.method} {request.url.path})")
        return self._send(self.folder / "index.html", request, REVALIDATE)


def install(app: FastAPI, setting: str) -> Path | None:
    """Serve the web app at ``/`` when there is one; call after every API route is included."""
    folder = resolve_web_dir(setting)
    if folder is None:
        log.info("no web app to serve (build it with `make web`, or set CHATPLANE_GATEWAY_WEB_DIR)")
        return None
    web = WebApp(folder)

    async def web_app(request: Request) -> Response:
        return await web(request)

    app.add_api_route("/{path:path}", web_app, methods=["GET", "HEAD"], include_in_schema=False)
    log.info("serving the web app", extra={"web_dir": str(folder)})
    return folder
