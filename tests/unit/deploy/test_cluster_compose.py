"""docker-compose.cluster.yml agrees with itself and with deploy/clickhouse-cluster/: it
cannot be started here (no Docker engine), so what can be read is checked."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest
import yaml

from services.shared.settings import REPO_ROOT, Settings

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.cluster.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
ROLES = ("gateway", "sink", "agents", "migrate")
CLICKHOUSE = [name for name, s in SERVICES.items() if "clickhouse-server" in s["image"]]
CLUSTER_XML = ET.parse(REPO_ROOT / "deploy/clickhouse-cluster/cluster.xml").getroot()


def test_three_brokers_two_shards_of_two_replicas_keeper_and_the_roles() -> None:
    assert {"kafka-1", "kafka-2", "kafka-3", "keeper", *ROLES} <= set(SERVICES)
    assert len(CLICKHOUSE) == 4
    brokers = [SERVICES[f"kafka-{i}"]["environment"] for i in (1, 2, 3)]
    assert sorted(b["KAFKA_NODE_ID"] for b in brokers) == [1, 2, 3]
    assert len({b["CLUSTER_ID"] for b in brokers}) == 1
    assert all(b["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://kafka-{b['KAFKA_NODE_ID']}:9092"
               for b in brokers)


@pytest.mark.parametrize("role", ROLES)
def test_the_roles_run_sharded_on_the_cluster_and_their_settings_validate(
        role: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = SERVICES[role]["environment"]
    assert env["SLUICE_CLICKHOUSE_TOPOLOGY"] == "sharded"
    assert env["SLUICE_CLICKHOUSE_URL"].split("@")[1].split(":")[0] in CLICKHOUSE
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()
    assert settings.clickhouse_cluster == CLUSTER_XML.find("remote_servers")[0].tag  # type: ignore[index]


def test_migrate_runs_once_before_the_roles() -> None:
    migrate = SERVICES["migrate"]
    assert migrate["command"] == ["migrate"] and migrate["restart"] == "no"
    assert set(migrate["depends_on"]) == set(CLICKHOUSE)
    for role in ("gateway", "sink", "agents"):
        assert SERVICES[role]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"}


def test_remote_servers_name_every_node_once_with_its_own_macros() -> None:
    (cluster,) = CLUSTER_XML.find("remote_servers")  # type: ignore[misc]
    shards = cluster.findall("shard")
    assert len(shards) == 2
    macros = CLUSTER_XML.find("macros")
    assert macros is not None
    shard_env, replica_env = (macros.find(m).get("from_env") for m in ("shard", "replica"))  # type: ignore[union-attr]
    seen = set()
    for number, shard in enumerate(shards, 1):
        assert shard.findtext("internal_replication") == "true"  # the Distributed table
        hosts = [r.findtext("host") for r in shard.findall("replica")]  # writes one replica
        assert len(hosts) == 2
        for host in hosts:
            env = SERVICES[host]["environment"]
            assert SERVICES[host]["hostname"] == host
            assert int(env[shard_env]) == number
            seen.add((env[shard_env], env[replica_env]))
    assert len(seen) == len(CLICKHOUSE) == 4  # {shard}-{replica} unique: the ledger's replicas


def test_every_node_finds_keeper_and_its_configuration() -> None:
    keeper = ET.parse(REPO_ROOT / "deploy/clickhouse-cluster/keeper.xml").getroot()
    node = CLUSTER_XML.find("zookeeper/node")
    assert node is not None and node.findtext("host") == SERVICES["keeper"]["hostname"]
    assert node.findtext("port") == keeper.findtext("keeper_server/tcp_port")
    for name in [*CLICKHOUSE, "keeper"]:
        mounts = [v.split(":")[0] for v in SERVICES[name]["volumes"] if v.startswith("./")]
        assert mounts, name
        assert all((REPO_ROOT / m).is_file() for m in mounts), name
