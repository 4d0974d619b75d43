"""Reading a request body safely: bounded size (-> 413); JSON content type only."""

from __future__ import annotations

from fastapi import Request

from services.gateway.errors import PayloadTooLarge, invalid


async def read_json_body(request: Request, limit: int) -> bytes:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise invalid(
            ["header", "content-type"],
            f"content type must be application/json, not {content_type or 'missing'!r}",
            "content_type",
        )
    body = await read_body(request, limit)
    if not body:
        raise invalid(["body"], "request body is empty", "missing")
    return body


async def read_body(request: Request, limit: int) -> bytes:
    """The body, whatever its type; PayloadTooLarge past ``limit`` bytes (declared or sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
