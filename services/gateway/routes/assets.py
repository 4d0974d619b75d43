"""The asset catalog: ``PUT /assets`` (batch upsert), ``GET``/``DELETE /assets/{id}``.

Writes go to the compacted ``assets`` topic (acks=all) and are applied to this gateway's
view at once, so a client that PUTs assets and then POSTs events to the same gateway
sees its events stamped with the new labels. Other replicas see them within
milliseconds, from the topic; the sink stores them in ClickHouse ``assets``.
"""

from __future__ import annotations

from typing import Annotated, Any, NotRequired

import orjson
from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from services.gateway.auth import ReadKey, WriteKey
from services.gateway.body import json_body_doc, read_json_body
from services.gateway.deps import GatewayDep, ProgramId
from services.gateway.validate import FreeJson, Id, Label, errors_of
from services.shared.assets import asset_key, encode_asset, iso_utc

router = APIRouter(tags=["Assets"])

MAX_ASSETS = 1000


@with_config(ConfigDict(extra="ignore", title="Asset"))
class AssetIn(TypedDict):
    asset_id: Id
    labels: Annotated[list[Label], Field(max_length=1000)]
    attributes: NotRequired[FreeJson]


@with_config(ConfigDict(extra="ignore", title="AssetList"))
class AssetList(TypedDict):
    assets: Annotated[list[AssetIn], Field(min_length=1, max_length=MAX_ASSETS)]


ASSET_LIST = TypeAdapter(AssetList)
ASSET_LIST_SCHEMA = ASSET_LIST.json_schema(ref_template="#/components/schemas/{model}")
AssetIdPath = Annotated[str, Path(min_length=1, max_length=512)]


def _record(program_id: str, asset_id: str, labels: list[str], attributes: dict[str, Any],
            deleted: bool) -> dict[str, Any]:
    return {
        "program_id": program_id,
        "asset_id": asset_id,
        "labels": list(dict.fromkeys(labels)),
        "attributes": orjson.dumps(attributes).decode(),
        "updated_at": iso_utc(),
        "deleted": deleted,
    }


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "asset_id": record["asset_id"],
        "labels": record["labels"],
        "attributes": orjson.loads(record["attributes"]),
        "updated_at": record["updated_at"],
    }


async def _publish(gateway: GatewayDep, records: list[dict[str, Any]]) -> None:
    messages = [(asset_key(r["program_id"], r["asset_id"]), encode_asset(r)) for r in records]
    await gateway.publisher.publish(messages, topic=gateway.settings.topic_assets)
    for record in records:
        gateway.views.apply_asset(record)


@router.put(
    "/assets",
    summary="Upsert assets",
    description="Create or replace 1 to 1000 assets with their labels (and optional "
    "attributes). Answers once the broker holds them.",
    openapi_extra=json_body_doc({"$ref": "#/components/schemas/AssetList"}),
)
async def put_assets(_auth: WriteKey, request: Request, gateway: GatewayDep,
                     program_id: ProgramId) -> dict[str, str]:
    body = await read_json_body(request, gateway.settings.max_body_bytes)
    try:
        assets = ASSET_LIST.validate_json(body)["assets"]
    except ValidationError as exc:
        raise RequestValidationError(errors_of(exc)) from None
    records = [
        _record(program_id, a["asset_id"], a["labels"], a.get("attributes", {}), deleted=False)
        for a in assets
    ]
    await _publish(gateway, records)
    return {"result": f"upserted {len(records)} assets"}


@router.get("/assets/{asset_id}", summary="Read one asset")
async def get_asset(_auth: ReadKey, asset_id: AssetIdPath, gateway: GatewayDep,
                    program_id: ProgramId) -> dict[str, Any]:
    record = gateway.views.asset(program_id, asset_id)
    if record is None:
        raise HTTPException(404, f"no asset {asset_id!r} in program {program_id!r}")
    return _public(record)


@router.delete("/assets/{asset_id}", summary="Delete one asset")
async def delete_asset(_auth: WriteKey, asset_id: AssetIdPath, gateway: GatewayDep,
                       program_id: ProgramId) -> dict[str, str]:
    if gateway.views.asset(program_id, asset_id) is None:
        raise HTTPException(404, f"no asset {asset_id!r} in program {program_id!r}")
    await _publish(gateway, [_record(program_id, asset_id, [], {}, deleted=True)])
    return {"result": f"deleted asset {asset_id}"}
