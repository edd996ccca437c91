"""ASGI middleware: request body size limit; rate-limit headers.

A body is never read beyond ``max_body_bytes``: a larger ``Content-Length`` is refused before reading, and a chunked
body is counted while it is buffered (at most ``max_body_bytes`` held) and refused once it goes over.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatplane.gateway.errors import APIError
from chatplane.gateway.metering import HEADERS_STATE


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"Request body too large: the limit is {limit} bytes.",
        code="request_too_large",
    )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await APIError(400, "Invalid Content-Length header.").response()(scope, receive, send)
                    return
                if declared > limit:
                    await _too_large(limit).response()(scope, receive, send)
                    return

        # Buffer the (bounded) body, then hand it to the app as one message; later receive() calls go to the server,
        # so that the app still learns about a client disconnect while it streams the response.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await _too_large(limit).response()(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class RateLimitHeadersMiddleware:
    """Adds the ``x-ratelimit-*`` headers a rate-limited route left in ``request.state`` to its response, whatever
    the response is (a stream, JSON, an error)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = scope.get("state", {}).get(HEADERS_STATE)
                if headers:
                    present = {name.lower() for name, _ in message.get("headers", ())}
                    extra = [(k.encode(), v.encode()) for k, v in headers.items() if k.encode() not in present]
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
