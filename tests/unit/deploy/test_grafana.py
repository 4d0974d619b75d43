"""The Grafana dashboard asks only for metrics some role exports, and the compose stack's
Prometheus scrapes every role where it serves them."""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client.metrics import MetricWrapperBase

from services.shared import metrics
from services.shared.lag import LAG_NAME
from services.shared.settings import REPO_ROOT, Settings

SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def exported() -> set[str]:
    """Every sample name the roles' metric families produce."""
    names = {LAG_NAME}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for family in obj.describe():
                names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def queries() -> list[str]:
    dashboard = json.loads((REPO_ROOT / "deploy/grafana/dashboards/sluice.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_every_metric_the_dashboard_queries_is_exported_by_a_role() -> None:
    named = {name for expr in queries() for name in re.findall(r"\bsluice_\w+", expr)}
    assert len(named) >= 10
    assert named - exported() == set()


def test_the_dashboard_shows_what_an_operator_asked_for() -> None:
    text = " ".join(queries())
    for family in ("sluice_events_accepted_total", "sluice_http_requests_total",
                   "sluice_publish_seconds_bucket", "sluice_consumer_lag",
                   "sluice_state_freshness_seconds_bucket", "sluice_dlq_messages_total",
                   "sluice_sink_rows_total"):
        assert family in text
    exported_names = exported()
    assert {"sluice_events_accepted_total", "sluice_sink_rows_total", "sluice_agents_events_total",
            "sluice_consumer_lag", "sluice_publish_seconds_bucket"} <= exported_names


def test_prometheus_scrapes_each_role_on_its_default_port() -> None:
    config = yaml.safe_load((REPO_ROOT / "deploy/prometheus/prometheus.yml").read_text())
    ports = {job["job_name"]: job["dns_sd_configs"][0]["port"] for job in config["scrape_configs"]}
    defaults = Settings()
    assert ports == {"gateway": defaults.http_port, "sink": defaults.sink_metrics_port,
                     "agents": defaults.agents_web_port}
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana
    assert "prometheus" in compose["services"]


def test_keda_scales_both_groups_on_lag_never_beyond_the_partitions() -> None:
    objects = list(yaml.safe_load_all((REPO_ROOT / "deploy/k8s/keda.yaml").read_text()))
    config = yaml.safe_load((REPO_ROOT / "deploy/k8s/configmap.yaml").read_text())["data"]
    partitions = int(config["SLUICE_EVENTS_PARTITIONS"])
    groups = {}
    for obj in objects:
        assert obj["kind"] == "ScaledObject"
        assert obj["spec"]["maxReplicaCount"] <= partitions
        [trigger] = obj["spec"]["triggers"]
        assert trigger["type"] == "kafka" and int(trigger["metadata"]["lagThreshold"]) > 0
        assert trigger["metadata"]["topic"] == config["SLUICE_TOPIC_EVENTS"]
        groups[obj["spec"]["scaleTargetRef"]["name"]] = trigger["metadata"]["consumerGroup"]
    assert groups == {"sluice-sink": config["SLUICE_SINK_GROUP"],
                      "sluice-agents": Settings().agents_app_id}
    gateway = list(yaml.safe_load_all((REPO_ROOT / "deploy/k8s/gateway.yaml").read_text()))
    assert any(o["kind"] == "HorizontalPodAutoscaler" for o in gateway)  # the gateway: CPU


def test_the_alerts_are_loaded_and_name_metrics_the_roles_export() -> None:
    import re

    config = yaml.safe_load((REPO_ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert ("./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro"
            in compose["services"]["prometheus"]["volumes"])
    rules = yaml.safe_load((REPO_ROOT / "deploy/prometheus/alerts.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    runbooks = (REPO_ROOT / "docs" / "operating.md").read_text()
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 6
    for rule in alerts:
        expr = rule["expr"]
        names = set(re.findall(r"\bsluice_[a-z_]+", expr))
        if not names:  # a role down: Prometheus's own `up` of the roles' scrape jobs
            assert set(re.findall(r"(\w+)\|?", expr.split("job=~")[1].split('"')[1])) == jobs
        assert names <= exported(), (expr, names - exported())
        # every alert names a runbook that exists
        page, anchor = rule["annotations"]["runbook"].split("#")
        assert page == "docs/operating.md"
        assert any(anchor == re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                   for h in re.findall(r"^#+ (.+)$", runbooks, re.MULTILINE)), anchor


def test_promtool_accepts_the_alerting_rules() -> None:
    """Debian's prometheus package's promtool (make test installs it)."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    assert promtool, "make test installs Debian's prometheus package for promtool"
    done = subprocess.run([promtool, "check", "rules", str(REPO_ROOT / "deploy/prometheus/alerts.yml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rules = yaml.safe_load((REPO_ROOT / "deploy/prometheus/alerts.yml").read_text())
    count = sum(len(group["rules"]) for group in rules["groups"])
    assert f"SUCCESS: {count} rules found" in done.stdout
