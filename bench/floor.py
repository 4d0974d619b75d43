"""The HTTP floor: a bare ASGI app that reads the body and answers 200, nothing else.

Served by the same server and flags as the gateway (uvicorn, httptools, uvloop), it is
what no front door on this box can beat: small requests are measured against it in the
same run (``bench.small``).
"""

from __future__ import annotations

from typing import Any

START = {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"application/json")]}
BODY = {"type": "http.response.body", "body": b'{"result":"ok"}'}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send(START)
    await send(BODY)
