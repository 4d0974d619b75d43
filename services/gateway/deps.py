"""What a handler needs, as ``Annotated`` dependencies: its signature lists them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, Request

from services.gateway.backpressure import Backpressure
from services.gateway.errors import StoreUnavailable
from services.gateway.group_commit import GroupCommit
from services.gateway.keys import KeyRing
from services.gateway.popularity import Popularities
from services.gateway.progress import GroupProgress
from services.gateway.user_states import UserStates
from services.gateway.views import Views
from services.shared.clickhouse import Store
from services.shared.publish import Publisher
from services.shared.ranking import ModelConfigs
from services.shared.settings import Settings
from services.shared.tallies import GatewayTallies


@dataclass
class Gateway:
    """The per-process objects a gateway serves with (built in the app's lifespan)."""

    settings: Settings
    publisher: Publisher
    store: Store | None  # None: embedded ClickHouse owned by another process
    views: Views  # the asset catalog
    progress: GroupProgress
    keys: KeyRing | None = None  # None: open (no keys file, or SLUICE_AUTH=off)
    backpressure: Backpressure | None = None  # None: never refuses for lag (tests)
    group_commit: GroupCommit = field(init=False)  # events go through it, in windows
    popularity: Popularities = field(init=False)
    user_states: UserStates = field(init=False)  # read from the agents that own them
    model_configs: ModelConfigs = field(init=False)
    tallies: GatewayTallies = field(init=False)  # what it published, for `sluice verify`

    def __post_init__(self) -> None:
        self.group_commit = GroupCommit(self.publisher, self.backpressure)
        self.popularity = Popularities(self.store, self.settings.popularity_ttl_s)
        self.user_states = UserStates(self.settings, self.publisher.partition_count)
        self.model_configs = ModelConfigs(self.settings)
        self.tallies = GatewayTallies(  # `sluice up`: into its chDB (see GatewayTallies)
            self.publisher, self.store if self.settings.clickhouse_is_embedded else None)


async def _gateway(request: Request) -> Gateway:
    """async: FastAPI runs a sync dependency in AnyIO's thread pool, a hop per request."""
    return request.app.state.gateway  # type: ignore[no-any-return]


def require_store(gateway: Gateway) -> Store:
    """The Store for reads; called in handlers, after their input is validated."""
    if gateway.store is None:
        raise StoreUnavailable(
            "reads need ClickHouse: this gateway runs without it (embedded chDB is owned by the "
            "sink's process; use `sluice up`, or set SLUICE_CLICKHOUSE_URL to a server)"
        )
    return gateway.store


GatewayDep = Annotated[Gateway, Depends(_gateway)]
ProgramId = Annotated[
    str,
    Header(alias="program-id", min_length=1, max_length=512, description="The program (tenant)"),
]
