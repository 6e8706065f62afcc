"""The deployment files: docker-compose.yml has the four services wired as documented (checked
with `docker compose config` too where the compose plugin exists), the Prometheus scrape config
passes `promtool check config` and its alert rules their `promtool test rules` unit tests, the
Grafana dashboard parses and queries only INTERFACE.md §5 metrics, and config/docker.toml passes
`switchyard check`."""

import json
import re
import shutil
import subprocess

import yaml

from conftest import BIN, ROOT

METRICS = {
    "switchyard_requests_total", "switchyard_request_duration_seconds", "switchyard_time_to_first_token_seconds",
    "switchyard_tokens_total", "switchyard_cost_usd_total", "switchyard_savings_usd_total",
    "switchyard_upstream_errors_total", "switchyard_circuit_open", "switchyard_engine_queue_depth",
    "switchyard_engine_active_sequences", "switchyard_engine_kv_cells_used", "switchyard_budget_remaining_usd",
    "switchyard_cache_hits_total",
}


def test_compose_file_wires_gateway_redis_prometheus_and_grafana():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"switchyard", "redis", "prometheus", "grafana"}
    # Budgets' spend lives only in Redis: it is persisted on a volume.
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert "redis-data:/data" in services["redis"]["volumes"] and "redis-data" in compose["volumes"]
    gw = services["switchyard"]
    assert gw["build"] == "." and (ROOT / "Dockerfile").exists()
    assert "./models:/app/models:ro" in gw["volumes"]
    # The drain (30 s) and the budget settlements after it (10 s) finish before Docker's SIGKILL.
    assert gw["stop_grace_period"] == "45s"
    # config/docker.toml has no keys: every service is published on the host's loopback only.
    assert gw["ports"] == ["127.0.0.1:8080:8080"], gw["ports"]
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", [])), services
    assert any("prometheus.yml" in v for v in services["prometheus"]["volumes"])
    assert any("provisioning" in v for v in services["grafana"]["volumes"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "config/docker.toml" in dockerfile and "AS build" in dockerfile
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        r = subprocess.run(["docker", "compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_prometheus_scrape_config_is_valid_and_targets_the_gateway():
    path = ROOT / "deploy/prometheus/prometheus.yml"
    config = yaml.safe_load(path.read_text())
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["switchyard:8080"]
    r = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_pass_their_unit_tests_and_use_documented_metrics():
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in compose["services"]["prometheus"]["volumes"]
    # Each alert fires, and clears, on the series its unit test feeds it.
    r = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=ROOT / "deploy/prometheus",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"][0]["rules"]
    tested = yaml.safe_load((ROOT / "deploy/prometheus/alerts_test.yml").read_text())["tests"][0]["alert_rule_test"]
    assert {rule["alert"] for rule in rules} == {t["alertname"] for t in tested}, "every alert has a unit test"
    documented = set(re.findall(r"switchyard_[a-z_]+", (ROOT / "docs/configuration.md").read_text()))
    used = {m for rule in rules for m in re.findall(r"switchyard_[a-z_]+", rule["expr"])}
    assert used and used <= documented, used - documented


def test_grafana_dashboard_queries_only_interface_metrics():
    dash = json.loads((ROOT / "deploy/grafana/dashboards/switchyard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"switchyard_[a-z_]+", e)}
    assert used and used <= METRICS, used - METRICS
    assert used == METRICS, f"no panel for {METRICS - used}"
    provisioning = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert provisioning["datasources"][0]["url"] == "http://prometheus:9090"


def test_docker_config_passes_check():
    r = subprocess.run([str(BIN), "check", "--config", "config/docker.toml"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
