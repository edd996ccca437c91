r"""ASGI middleware: request body size limit and text check; rate-limit headers.

A body is never read beyond ``max_body_bytes``: a larger ``Content-Length`` is refused before reading, and a chunked
body is counted while it is buffered (at most ``max_body_bytes`` held) and refused once it goes over.

A JSON body whose strings are not valid Unicode (a lone UTF-16 surrogate such as ``"\ud800"``, which JSON can spell
and Python's parser accepts, but which no UTF-8 encoder, protobuf included, can carry) is refused with a 400 that
names the field, before any route sees it. Only a body that can hold one (a ``\ud8``-``\udf`` escape, or the raw
bytes of an encoded surrogate) is parsed for the check; every other body costs one regular-expression scan.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatplane.gateway.errors import APIError


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"Request body too large: the limit is {limit} bytes.",
        code="request_too_large",
    )


_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def invalid_text_field(value: Any, path: str = "") -> str | None:
    """The path (``messages[0].content``) of the first string in a parsed JSON value that is not valid Unicode (a
    key counts as its value's field), None when every string is."""
    if isinstance(value, str):
        return None if value.isascii() or _encodable(value) else (path or "body")
    if isinstance(value, dict):
        for key, item in value.items():
            field = f"{path}.{key}" if path else str(key)
            if not _encodable(key):
                return path or "body"
            found = invalid_text_field(item, field)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = invalid_text_field(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text_error(body: bytes) -> APIError | None:
    """A 400 naming the field when the JSON body holds text that is not valid Unicode."""
    if not _MAYBE_SURROGATE.search(body):
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None  # not JSON: the route answers as usual
    field = invalid_text_field(parsed)
    if field is None:
        return None
    field = field[:256]
    return APIError(
        400, f"Invalid value for '{field}': the text is not valid Unicode (a lone UTF-16 surrogate).",
        param=field, code="invalid_unicode",
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

        body = b"".join(chunks)
        if body:
            err = _text_error(body)
            if err is not None:
                await err.response()(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
