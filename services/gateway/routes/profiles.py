"""``GET /users/{user_id}``: a user's activity and session, as the agents keep it.

Read from the agents worker that owns the user (see user_states.py). Sessions
count only events sent with ``update_session`` (CrowdPower's flag): a new session starts
after the agents' session gap without such events. Times are epoch seconds of event
times (not of receipt); an unknown user has 0 events and nulls.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel

from services.gateway.auth import ReadKey
from services.gateway.deps import Gateway, GatewayDep, ProgramId
from services.shared.events import message_key

router = APIRouter(tags=["Users"])


class UserProfile(BaseModel):
    user_id: str
    events: int  # events applied to the user's state
    sessions: int
    session_started: float | None  # epoch seconds: start of the current (last) session
    last_seen: float | None  # epoch seconds: the newest session activity


async def profile(gateway: Gateway, program_id: str, user_id: str) -> dict[str, Any]:
    record = await gateway.user_states.get(message_key(program_id, user_id))
    return {
        "user_id": user_id,
        "events": record.events if record else 0,
        "sessions": record.sessions if record else 0,
        "session_started": record.session_started if record else None,
        "last_seen": record.last_seen if record else None,
    }


@router.get("/users/{user_id}", response_model=UserProfile,
            summary="A user's events counted and current session")
async def get_user(_auth: ReadKey, user_id: Annotated[str, Path(min_length=1, max_length=512)],
                   gateway: GatewayDep, program_id: ProgramId) -> dict[str, Any]:
    return await profile(gateway, program_id, user_id)
