"""docker-compose.yml cannot run here (no Docker engine): check its structure instead."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

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


def test_compose_is_safe_by_default() -> None:
    """Published ports on 127.0.0.1 unless BIND_ADDRESS says otherwise; Redis requires a password
    from .env, which segstream gets in its own setting (not in the URL); the view requires a token;
    every long-running service has a healthcheck; the image runs as a user, not root."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, port)
        if name != "replay":  # a one-off job
            assert service["healthcheck"]["test"], name
    redis = services["redis"]
    password = redis["command"][redis["command"].index("--requirepass") + 1]
    assert password.startswith("${REDIS_PASSWORD:?")  # compose refuses to start without it
    assert "REDIS_PASSWORD" not in " ".join(redis["healthcheck"]["test"])  # redis-cli reads REDISCLI_AUTH
    for name in ("replay", "worker", "web"):
        env = services[name]["environment"]
        assert env["SEGSTREAM_REDIS_PASSWORD"] == "${REDIS_PASSWORD}", name
        assert "@" not in env["SEGSTREAM_REDIS_URL"], name  # no credentials in the URL
    web = services["web"]
    assert web["command"][0] == "web" and web["environment"]["SEGSTREAM_WEB_TOKEN"].startswith("${WEB_TOKEN:?")
    example = (ROOT / ".env.example").read_text()
    assert "REDIS_PASSWORD=" in example and "WEB_TOKEN=" in example
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    user_at = max(i for i, line in enumerate(dockerfile) if line.startswith("USER "))
    assert dockerfile[user_at].split()[1] not in ("root", "0")
    assert user_at > max(i for i, line in enumerate(dockerfile) if "pip install" in line)  # installs need root


def test_compose_has_a_kafka_sasl_profile_the_worker_authenticates_to() -> None:
    """`docker compose --profile sasl up`: a broker whose every client listener is SASL, with the
    user and password from .env, and a worker configured for it through segstream's own settings."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    kafka, worker = services["kafka-sasl"], services["worker-sasl"]
    assert kafka["profiles"] == ["sasl"] and worker["profiles"] == ["sasl"]
    env = kafka["environment"]
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    clients = [name for name in protocols if name != env["KAFKA_CONTROLLER_LISTENER_NAMES"]]
    assert clients and all(protocols[name] == "SASL_PLAINTEXT" for name in clients)
    for name in clients:
        jaas = env[f"KAFKA_LISTENER_NAME_{name}_PLAIN_SASL_JAAS_CONFIG"]
        assert "PlainLoginModule" in jaas and 'password="${KAFKA_SASL_PASSWORD}"' in jaas
    settings = worker["environment"]
    fields = {f"SEGSTREAM_{name.upper()}" for name in Settings.model_fields}
    assert set(settings) <= fields, set(settings) - fields
    assert settings["SEGSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert settings["SEGSTREAM_KAFKA_SASL_PASSWORD"] == "${KAFKA_SASL_PASSWORD}"
    assert settings["SEGSTREAM_KAFKA_SASL_MECHANISM"] in get_args(
        Settings.model_fields["kafka_sasl_mechanism"].annotation
    )
    host, port = settings["SEGSTREAM_KAFKA_BOOTSTRAP"].split(":")
    assert host in services and f"INTERNAL://{host}:{port}" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert worker["depends_on"]["kafka-sasl"]["condition"] == "service_healthy"
    assert "KAFKA_SASL_PASSWORD=" in (ROOT / ".env.example").read_text()
