"""``GET /receipts/{receipt}``: has a batch answered with 202 reached its level yet?"""

from __future__ import annotations

import asyncio
from typing import Literal

from confluent_kafka import KafkaException
from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from services.gateway.auth import WriteKey
from services.gateway.deps import GatewayDep, ProgramId
from services.gateway.progress import reached
from services.gateway.receipts import Receipt
from services.shared.publish import BrokerUnavailable

router = APIRouter(tags=["ActionHub"])


class ReceiptStatus(BaseModel):
    receipt: str
    wait: Literal["user", "stored"]
    status: Literal["pending", "user", "stored"]


@router.get(
    "/receipts/{receipt}",
    response_model=ReceiptStatus,
    summary="Status of a batch answered 202",
    description="`pending` until the batch reached the level its POST asked for (`user`: the "
    "agents' group committed past it, so every user's state includes it; `stored`: the "
    "sink's group committed past it, so ClickHouse holds every event), then that level.",
    responses={404: {"description": "Not a receipt of this program"},
               503: {"description": "The broker cannot say now; retry after Retry-After"}},
)
async def get_receipt(_auth: WriteKey, gateway: GatewayDep, program_id: ProgramId,
                      receipt: str) -> ReceiptStatus:
    parsed = Receipt.decode(receipt)
    if parsed is None or parsed.program != program_id:
        raise HTTPException(404, "no such receipt for this program")
    try:
        committed = await asyncio.to_thread(
            gateway.progress.committed, parsed.wait, sorted(parsed.positions))
    except KafkaException as exc:
        raise BrokerUnavailable(f"cannot read the consumer groups' progress: {exc}") from None
    done = reached(committed, parsed.positions)
    return ReceiptStatus(receipt=receipt, wait=parsed.wait,
                         status=parsed.wait if done else "pending")
