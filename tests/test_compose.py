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
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"

    replay = services["replay"]
    assert replay["build"] == "."
    assert (ROOT / "Dockerfile").exists()
    assert replay["command"][0] in cli.commands  # a real subcommand
    for dependency in ("kafka-1", "kafka-2", "kafka-3", "redis"):
        assert replay["depends_on"][dependency]["condition"] == "service_healthy"
    env = replay["environment"]
    fields = {f"SEGSTREAM_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields


def test_compose_kafka_is_a_three_node_kraft_cluster_the_clients_bootstrap_from() -> None:
    """Three brokers that are also the controller quorum, each advertising its own address; topics
    replicated three times with a min ISR of 2 (one broker may be lost); every segstream client
    bootstraps from all three and creates its topics with that replication."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    nodes = {name: services[name] for name in services if name.startswith("kafka-") and name != "kafka-sasl"}
    assert sorted(nodes) == ["kafka-1", "kafka-2", "kafka-3"]
    ids, voters, cluster_ids, host_ports = set(), set(), set(), set()
    for name, node in nodes.items():
        env = node["environment"]
        assert node["image"].startswith("apache/kafka:") and node["healthcheck"]["test"]
        assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
        assert str(env["KAFKA_LOG_RETENTION_MS"]) == "-1"  # old replay timestamps are kept
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 3 and int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2
        ids.add(int(env["KAFKA_NODE_ID"]))
        voters.add(env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
        cluster_ids.add(env["CLUSTER_ID"])
        assert f"INTERNAL://{name}:29092" in env["KAFKA_ADVERTISED_LISTENERS"] and node["hostname"] == name
        host_ports.update(port.rsplit(":", 2)[-2] for port in node["ports"])
        assert node["volumes"][0].split(":")[0] == f"{name}-data"  # a volume of its own
    assert ids == {1, 2, 3} and len(cluster_ids) == 1 and len(host_ports) == 3
    (quorum,) = voters
    assert {v.split(":")[0] for v in quorum.split(",")} == {f"{n}@kafka-{n}" for n in ids}
    for name in ("replay", "worker", "web"):
        env = services[name]["environment"]
        assert sorted(env["SEGSTREAM_KAFKA_BOOTSTRAP"].split(",")) == [f"{n}:29092" for n in sorted(nodes)], name
        assert env["SEGSTREAM_TOPIC_REPLICATION"] == "3", name


def test_compose_scales_workers() -> None:
    """`docker compose up --scale worker=N`: the worker has no container name and publishes no
    host port (either would clash between replicas), and there are more partitions than the
    default replicas, so every replica has work."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    assert worker["command"] == ["worker"] and "worker" in cli.commands
    assert "container_name" not in worker and "ports" not in worker
    env = worker["environment"]
    fields = {f"SEGSTREAM_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    assert env["SEGSTREAM_KAFKA_BOOTSTRAP"] == compose["services"]["replay"]["environment"]["SEGSTREAM_KAFKA_BOOTSTRAP"]
    assert 2 <= worker["deploy"]["replicas"] <= int(env["SEGSTREAM_TOPIC_PARTITIONS"])
    assert "--scale worker=" in (ROOT / "docker-compose.yml").read_text()


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
