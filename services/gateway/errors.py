"""Each way a request can fail -> one status code and a body that says what was wrong.

422: the request is invalid (FastAPI's ``detail`` list, as the ActionHub contract has it).
413: the body is larger than ``max_body_bytes``. 503 + Retry-After: the broker (or the
store or the agents' user state, for reads) is not available; nothing was acknowledged,
retrying is safe.
504: queue_updates=false and user state did not catch up in time; the events are durable.
202 + receipt: ``wait=user|stored`` did not reach that level within SLUICE_WAIT_TIMEOUT_S;
the events are durable at the broker and the receipt says when they reach it.
No client input ever yields a 5xx other than 503.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.shared.publish import BrokerUnavailable


class PayloadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


class UpdateTimeout(Exception):
    """queue_updates=false and user state did not include the batch in time."""

    def __init__(self, events: int, timeout_s: float) -> None:
        self.events, self.timeout_s = events, timeout_s


class StillPending(Exception):
    """wait=user|stored: the batch is acked by the broker but not yet at that level."""

    def __init__(self, receipt: str) -> None:
        self.receipt = receipt


class StoreUnavailable(Exception):
    """ClickHouse cannot answer a read (down, or embedded and owned by another process)."""


class StateUnavailable(Exception):
    """No agents worker answered for the user's partition in time (a rebalance moves it, or
    its worker is down): never an empty state passed off as the user's."""


def invalid(loc: list[Any], msg: str, type_: str) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": msg, "type": type_}])


def install(app: FastAPI, retry_after_s: int) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(PayloadTooLarge)
    async def _too_large(_: Request, exc: PayloadTooLarge) -> JSONResponse:
        return JSONResponse(
            {"detail": f"request body larger than {exc.limit} bytes"}, status_code=413
        )

    @app.exception_handler(BrokerUnavailable)
    async def _broker(_: Request, exc: BrokerUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": f"events not accepted, retry later: {exc}"},
            status_code=503,
            headers={"Retry-After": str(retry_after_s)},
        )

    @app.exception_handler(UpdateTimeout)
    async def _update_timeout(_: Request, exc: UpdateTimeout) -> JSONResponse:
        return JSONResponse(
            {"detail": f"the {exc.events} events are accepted and durable, but user state was not "
             f"updated within {exc.timeout_s}s; it will be, so do not send them again"},
            status_code=504,
        )

    @app.exception_handler(StillPending)
    async def _pending(_: Request, exc: StillPending) -> JSONResponse:
        return JSONResponse({"receipt": exc.receipt, "status": "pending"}, status_code=202)

    @app.exception_handler(StateUnavailable)
    async def _state(_: Request, exc: StateUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=503, headers={"Retry-After": str(retry_after_s)}
        )

    @app.exception_handler(StoreUnavailable)
    async def _store(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=503, headers={"Retry-After": str(retry_after_s)}
        )
