"""``DELETE /users/{user_id}``: forget a user; ``GET /users/{user_id}/erasure/{receipt}``:
is every store done?

The DELETE publishes one erasure message on the user's partition of the events topic
(services.shared.erasures says why a message, and what each role does with it) and answers
once the broker acked it (acks=all): from then on it will be carried out, in order after
every event acked before it. It does not wait for the stores unless asked (``wait=true``,
up to SLUICE_WAIT_TIMEOUT_S); the receipt says where it stands at any gateway. A later
event of the same user id is accepted as a new user's.

A read key of the program (the admin's side: it reads users' data, and erasing is what
an operator does on a user's request), as ``GET /users/...``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from confluent_kafka import KafkaException
from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.gateway.auth import ReadKey
from services.gateway.deps import Gateway, GatewayDep, ProgramId
from services.shared import erasure_log, erasures
from services.shared.erasures import Erasure, Receipt
from services.shared.events import message_key, partition_for
from services.shared.publish import BrokerUnavailable

router = APIRouter(tags=["Users"])
UserIdPath = Annotated[str, Path(min_length=1, max_length=512)]
OWNER_ASK_S = 0.2  # a status read asks the user's owner this long whether it applied it


class StoreStatus(BaseModel):
    status: Literal["pending", "done"]
    erased_at: str | None = None  # clickhouse: when the sink deleted the rows
    rows_deleted: int | None = None  # clickhouse: the user's stored events it deleted


class Stores(BaseModel):
    clickhouse: StoreStatus  # the user's events (GET /events, popularity, rebuilds)
    agents: StoreStatus  # the user's state: weights, recommendations, sessions, dedup ids


class ErasureStatus(BaseModel):
    receipt: str
    # done: every store; lost: the broker lost the erasure before the sink read it (the
    # embedded broker died): erase again
    status: Literal["pending", "done", "lost"]
    stores: Stores


class ErasureAccepted(BaseModel):
    receipt: str
    status: Literal["pending", "done"]
    status_url: str
    requested_at: str


def _status_url(user_id: str, receipt: str) -> str:
    from urllib.parse import quote

    return f"/users/{quote(user_id, safe='')}/erasure/{receipt}"


async def applied_by_owner(gateway: Gateway, receipt: Receipt, user_id: str,
                           timeout_s: float) -> bool:
    """Whether the worker that owns the user has the erasure in its store and changelog (it
    answers as for ``queue_updates=false``): seconds before Faust commits the offset."""
    key = message_key(receipt.program, user_id)
    try:
        return await gateway.user_states.wait_applied(
            {key: (receipt.partition, receipt.offset)}, timeout_s)
    except BrokerUnavailable:
        return False


async def erasure_status(gateway: Gateway, receipt: Receipt, user_id: str) -> dict[str, Any]:
    store = gateway.store
    applied = await applied_by_owner(gateway, receipt, user_id, OWNER_ASK_S)

    def committed(level: str, partitions: list[int]) -> dict[int, int]:
        found = gateway.progress.committed(level, partitions)
        if level == "user" and applied:  # the owner said so: as good as committed past it
            found[receipt.partition] = max(found.get(receipt.partition, -1), receipt.offset + 1)
        return found

    try:
        return await asyncio.to_thread(erasure_log.status, gateway.settings, receipt, committed,
                                       store.query if store is not None else None)
    except KafkaException as exc:
        raise BrokerUnavailable(f"cannot read the consumer groups' progress: {exc}") from None


@router.delete(
    "/users/{user_id}", response_model=ErasureAccepted, status_code=202,
    summary="Erase a user: events, state, sessions (GDPR art. 17)",
    description="Answers once the broker holds the erasure (acks=all): 202 with a receipt "
    "(`wait=true`: 200 once every store is done, within SLUICE_WAIT_TIMEOUT_S). Events "
    "acked before it are erased; events sent after it start a new user. What stays in "
    "Kafka until retention: docs/operating.md.",
    responses={200: {"description": "wait=true: every store is done"},
               503: {"description": "Broker unavailable: nothing was erased; retry"}},
)
async def erase_user(_auth: ReadKey, user_id: UserIdPath, gateway: GatewayDep,
                     program_id: ProgramId,
                     wait: Annotated[bool, Query(description="answer once every store is "
                                                 "done (else 202 at once)")] = False,
                     ) -> JSONResponse:
    erasure = Erasure.new(program_id, user_id)
    partition = partition_for(erasure.key, gateway.publisher.partition_count())
    [(landed, offset)] = await gateway.publisher.publish(
        [(erasure.key, erasure.encode())], headers=[(erasures.HEADER[0], erasures.HEADER[1])],
        partitions=[partition])
    receipt = erasures.receipt_for(erasure, landed, offset)
    text = receipt.encode()
    status = "pending"
    if wait:
        timeout_s = gateway.settings.wait_timeout_s
        target = {landed: offset}
        reached = await asyncio.gather(
            gateway.progress.wait("stored", target, timeout_s),
            applied_by_owner(gateway, receipt, user_id, timeout_s))
        if all(reached):
            status = (await erasure_status(gateway, receipt, user_id))["status"]
    body = ErasureAccepted(receipt=text, status="done" if status == "done" else "pending",
                           status_url=_status_url(user_id, text),
                           requested_at=erasure.requested_at)
    return JSONResponse(body.model_dump(), status_code=200 if status == "done" else 202)


@router.get(
    "/users/{user_id}/erasure/{receipt}", response_model=ErasureStatus,
    response_model_exclude_none=True,
    summary="Where a user's erasure stands, per store",
    description="`done` once the sink deleted the user's rows from ClickHouse (recorded in "
    "the `erasures` table) and the user's agents worker holds the erasure in its store and "
    "changelog (the record is a tombstone, or a new user's), or the agents' group committed "
    "past it.",
    responses={404: {"description": "Not a receipt of this program and user"},
               503: {"description": "The broker cannot say now; retry"}},
)
async def get_erasure(_auth: ReadKey, user_id: UserIdPath, receipt: str, gateway: GatewayDep,
                      program_id: ProgramId) -> dict[str, Any]:
    parsed = Receipt.decode(receipt)
    if parsed is None or not parsed.names(program_id, user_id):
        raise HTTPException(404, "no such erasure receipt for this program and user")
    return {"receipt": receipt} | await erasure_status(gateway, parsed, user_id)
