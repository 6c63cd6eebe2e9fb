"""docker-compose.yml runs N workers as static group members and sets only real settings
(`make compose-check` validates the file itself with docker-compose in CI)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SETTING = r"\b(INTENTSTREAM_[A-Z0-9_]+)\b"


def test_compose_runs_several_workers_each_a_static_member():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    worker = services["worker"]
    replicas = re.fullmatch(r"\$\{WORKERS:-(\d+)\}", str(worker["deploy"]["replicas"]))
    assert replicas and int(replicas.group(1)) >= 2
    assert worker["environment"]["INTENTSTREAM_WORKER__INSTANCE_ID"] == "{hostname}"
    assert "container_name" not in worker  # a fixed name would stop --scale


def test_compose_sets_only_settings_that_exist():
    known = set(re.findall(SETTING, (ROOT / ".env.example").read_text()))  # every setting (a test keeps it so)
    used = set(re.findall(SETTING, COMPOSE.read_text()))
    assert used and used <= known, used - known


def test_compose_runs_reasoners_apart_from_the_workers_on_cpu_and_on_the_gpu_profile():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    cpu, gpu = services["reasoner"], services["reasoner-gpu"]
    assert cpu["command"] == gpu["command"] == ["intentstream", "reasoner"]
    assert re.fullmatch(r"\$\{REASONERS:-\d+\}", str(cpu["deploy"]["replicas"]))
    assert "profiles" not in cpu and gpu["profiles"] == ["gpu"]
    assert gpu["environment"]["INTENTSTREAM_INTENT__BACKEND"] == "openai"
    assert gpu["environment"]["INTENTSTREAM_INTENT__OPENAI_URL"] == "http://vllm:8000"
    assert "vllm" in gpu["depends_on"]


def test_compose_publishes_ports_on_loopback_and_vllm_needs_a_key():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published and all(str(p).startswith("${BIND_HOST:-127.0.0.1}:") for p in published), published
    assert services["vllm"]["environment"]["VLLM_API_KEY"] == "${VLLM_API_KEY:-}"
    assert services["reasoner-gpu"]["environment"]["INTENTSTREAM_INTENT__OPENAI_API_KEY"] == "${VLLM_API_KEY:-}"


def test_compose_scrapes_every_process_and_provisions_the_dashboard():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    scrape = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    targets = {name: sd["port"] for job in scrape for sd in job["dns_sd_configs"] for name in sd["names"]}
    from contracts.settings import MetricsSettings

    m = MetricsSettings()
    assert targets == {"worker": m.worker_port, "reasoner": m.reasoner_port, "reasoner-gpu": m.reasoner_port,
                       "trainer": m.trainer_port}
    assert set(targets) <= set(services)
    assert services["worker"]["environment"]["INTENTSTREAM_METRICS__HOST"] == "0.0.0.0"
    mounts = " ".join(services["grafana"]["volumes"])
    assert "infra/grafana/provisioning" in mounts and "infra/grafana/dashboards" in mounts
    import json

    dashboard = json.loads((ROOT / "infra" / "grafana" / "dashboards" / "intentstream.json").read_text())
    assert all(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
