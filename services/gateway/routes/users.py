"""Read APIs of real-time user state: label weights and recommendations.

Each user's record comes from the agents worker that owns it (see user_states.py; 503
with Retry-After while its partition moves between workers); recommendations are ranked at read time from the user's weights, the catalog and the
program's popularity, so they follow both a change of weights and a change of an
asset's labels at once, without re-ranking every user when the catalog changes.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel

from services.gateway.auth import ReadKey
from services.gateway.deps import GatewayDep, ProgramId
from services.shared.events import message_key
from services.shared.ranking import UserState, label_weights, recommend

router = APIRouter(tags=["Users"])
UserIdPath = Annotated[str, Path(min_length=1, max_length=512)]


def _json(content: object) -> Response:
    """The answer as orjson writes it. The models below document it (OpenAPI) but are not
    run per read: they only re-checked the shape the handlers build, and validating and
    serializing the nested lists through pydantic held the reads of section 10 of the
    benchmarks (50 readers back to back) to ~15% fewer recommendations a second."""
    return Response(orjson.dumps(content), media_type="application/json")


class LabelWeight(BaseModel):
    label: str
    weight: float


class LabelWeights(BaseModel):
    user_id: str
    as_of: float | None  # epoch seconds of the user's newest event: weights are as of then
    events: int
    label_weights: list[LabelWeight]


class RecommendationOut(BaseModel):
    asset_id: str
    score: float
    labels: list[str]


class Recommendations(BaseModel):
    user_id: str
    recommendations: list[RecommendationOut]


@router.get("/users/{user_id}/label-weights", response_model=LabelWeights,
            summary="A user's label weights, highest first")
async def get_label_weights(_auth: ReadKey, user_id: UserIdPath, gateway: GatewayDep,
                            program_id: ProgramId) -> Response:
    record = await gateway.user_states.get(message_key(program_id, user_id))
    state = record.state if record else UserState()
    return _json({
        "user_id": user_id,
        "as_of": state.ref_ts,
        "events": record.events if record else 0,
        "label_weights": [{"label": k, "weight": w} for k, w in label_weights(state)],
    })


@router.get("/users/{user_id}/recommendations", response_model=Recommendations,
            summary="A user's top assets (cold start: the program's most popular)")
async def get_recommendations(
    _auth: ReadKey,
    user_id: UserIdPath,
    gateway: GatewayDep,
    program_id: ProgramId,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> Response:
    record = await gateway.user_states.get(message_key(program_id, user_id))
    state = record.state if record else UserState()
    popularity = await gateway.popularity.of(program_id)
    ranked = recommend(state, gateway.model_configs(program_id),
                       gateway.views.catalog(program_id), popularity, limit)
    # orjson writes a Recommendation (a dataclass) as {asset_id, score, labels}
    return _json({"user_id": user_id, "recommendations": ranked})
