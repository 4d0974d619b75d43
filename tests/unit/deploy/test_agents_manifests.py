"""The compose and Kubernetes agents keep their user-state store on a volume under
SLUICE_DATA_DIR and run one standby replica per partition (the embedded stack: none)."""

from __future__ import annotations

import yaml

from services.shared.settings import REPO_ROOT, Settings


def test_compose_agents_keep_their_store_on_a_volume_with_one_standby() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    agents = compose["services"]["agents"]
    env = agents["environment"]
    assert env["SLUICE_AGENTS_STANDBY_REPLICAS"] == "1"
    assert f"agents-data:{env['SLUICE_DATA_DIR']}" in agents["volumes"]


def test_kubernetes_agents_keep_their_store_on_a_volume_with_one_standby() -> None:
    docs = list(yaml.safe_load_all((REPO_ROOT / "deploy/k8s/agents.yaml").read_text()))
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SLUICE_AGENTS_STANDBY_REPLICAS"] == "1"
    config = yaml.safe_load((REPO_ROOT / "deploy/k8s/configmap.yaml").read_text())["data"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == config["SLUICE_DATA_DIR"]
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_the_embedded_default_is_rocksdb_without_standbys() -> None:
    fields = Settings.model_fields  # the defaults, whatever this shell's SLUICE_* say
    assert (fields["agents_store"].default, fields["agents_standby_replicas"].default) == (
        "rocksdb", 0)


def test_gateways_find_the_agents_and_each_worker_gives_a_reachable_address() -> None:
    """User reads go to the worker that owns the user: gateways must reach some worker to
    learn the owners, and each worker must give the group an address gateways can reach
    (not 0.0.0.0, not a name only its own pod knows)."""
    docs = list(yaml.safe_load_all((REPO_ROOT / "deploy/k8s/agents.yaml").read_text()))
    service = next(d for d in docs if d["kind"] == "Service")
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    env = {e["name"]: e for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    port = service["spec"]["ports"][0]["port"]
    assert env["SLUICE_AGENTS_URL"]["value"] == (
        f"http://$(POD_NAME).{service['metadata']['name']}:{port}")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    config = yaml.safe_load((REPO_ROOT / "deploy/k8s/configmap.yaml").read_text())["data"]
    assert config["SLUICE_AGENTS_URLS"] == f"http://{service['metadata']['name']}:{port}"
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert compose["x-sluice-env"]["SLUICE_AGENTS_URLS"] == "http://agents:6066"
    assert "agents" in compose["services"]
