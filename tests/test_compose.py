"""docker-compose.yml cannot run here (no Docker engine): check its structure instead."""

from __future__ import annotations

from pathlib import Path

import yaml

from segstream.cli import cli
from segstream.settings import Settings

ROOT = Path(__file__).parents[1]


def test_compose_has_kraft_kafka_redis_with_aof_and_segstream() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert str(kafka["environment"]["KAFKA_LOG_RETENTION_MS"]) == "-1"  # old replay timestamps are kept
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"

    replay = services["replay"]
    assert replay["build"] == "."
    assert (ROOT / "Dockerfile").exists()
    assert replay["command"][0] in cli.commands  # a real subcommand
    for dependency in ("kafka", "redis"):
        assert replay["depends_on"][dependency]["condition"] == "service_healthy"
    env = replay["environment"]
    fields = {f"SEGSTREAM_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    bootstrap_host = env["SEGSTREAM_KAFKA_BOOTSTRAP"].split(":")[0]
    assert bootstrap_host in services
    listeners = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert env["SEGSTREAM_KAFKA_BOOTSTRAP"] in listeners


def test_compose_runs_workers_with_the_shared_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    assert worker["command"] == ["worker"] and "worker" in cli.commands
    env = worker["environment"]
    fields = {f"SEGSTREAM_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    assert env["SEGSTREAM_KAFKA_BOOTSTRAP"] == compose["services"]["replay"]["environment"]["SEGSTREAM_KAFKA_BOOTSTRAP"]
    assert worker["deploy"]["replicas"] >= 2


def test_dockerfile_installs_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("segstream", "replay", "streams", "models"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert "pip install" in dockerfile and 'ENTRYPOINT ["segstream"]' in dockerfile
