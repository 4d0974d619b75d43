"""Settings refuse at start what would go wrong later (ClickHouse topology section)."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from services.shared.migrations import TOPOLOGIES
from services.shared.settings import Settings


def test_the_default_is_one_node_without_a_cluster() -> None:
    fields = Settings.model_fields  # the defaults, whatever this shell's SLUICE_* say
    assert (fields["clickhouse_topology"].default, fields["clickhouse_cluster"].default) == (
        "single", None)
    assert get_args(fields["clickhouse_topology"].annotation) == TOPOLOGIES


@pytest.mark.parametrize("topology", ["replicated", "sharded"])
def test_a_cluster_topology_needs_its_cluster(topology: str) -> None:
    with pytest.raises(ValidationError, match=f"SLUICE_CLICKHOUSE_TOPOLOGY={topology} needs "
                                              "SLUICE_CLICKHOUSE_CLUSTER"):
        Settings(clickhouse_topology=topology, clickhouse_cluster=None)  # type: ignore[arg-type]
    assert Settings(clickhouse_topology=topology, clickhouse_cluster="prod").clickhouse_cluster == "prod"  # type: ignore[arg-type]


@pytest.mark.parametrize("topology", ["single", "cloud"])
def test_a_cluster_without_a_cluster_topology_is_refused(topology: str) -> None:
    """Else a cluster's user who forgot the topology would get single-node tables."""
    with pytest.raises(ValidationError, match="SLUICE_CLICKHOUSE_CLUSTER is set but"):
        Settings(clickhouse_topology=topology, clickhouse_cluster="prod")  # type: ignore[arg-type]


def test_a_cluster_name_cannot_escape_its_quotes() -> None:
    with pytest.raises(ValidationError, match="clickhouse_cluster"):
        Settings(clickhouse_topology="sharded", clickhouse_cluster="x' ON CLUSTER 'y")
