"""Shared fixtures: real services over TCP, fixture data, fresh topics per test.

Integration tests talk to a real Kafka-compatible broker and a real Redis. Where a Docker engine
answers, testcontainers provides Apache Kafka and Redis 7; everywhere else (our machines and CI
have no Docker engine) the embedded tansu broker and redis-server binaries are started through
segstream's own services module, on free ports, in a temporary run directory.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from replay.synth import SynthConfig, synthesize
from segstream.services import free_port
from segstream.settings import Settings

__all__ = ["EDGE", "REAL_SAMPLE", "free_port"]

FIXTURES = Path(__file__).parent / "fixtures"
REAL_SAMPLE = FIXTURES / "olist-real-1000"
EDGE = FIXTURES / "olist-edge"


def _docker_engine() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # no client, no socket, no engine: all mean "use the embedded binaries"
        return False


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a running broker and Redis for the whole session."""
    run_dir = tmp_path_factory.mktemp("run")
    if _docker_engine():  # pragma: no cover - no Docker engine on our machines
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        with KafkaContainer("apache/kafka:3.8.0").with_kraft() as kafka, RedisContainer("redis:7") as redis_c:
            host, port = redis_c.get_container_host_ip(), redis_c.get_exposed_port(6379)
            yield Settings(
                run_dir=run_dir,
                kafka_bootstrap=kafka.get_bootstrap_server(),
                redis_url=f"redis://{host}:{port}/0",
            )
        return
    from segstream.services import services_down, services_up

    settings = Settings(run_dir=run_dir, kafka_port=free_port(), redis_port=free_port())
    services_up(settings)
    try:
        yield settings
    finally:
        services_down(settings)


@pytest.fixture
def kafka(services: Settings, tmp_path: Path) -> Settings:
    """The session's services with topics and a checkpoint directory of this test's own."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    return services.model_copy(
        update={
            "run_dir": tmp_path / "run",
            "topic_orders": f"{prefix}.orders",
            "topic_reviews": f"{prefix}.reviews",
        }
    )


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated history of 400 orders with plenty of repeat buyers."""
    out = tmp_path_factory.mktemp("synth-small")
    synthesize(SynthConfig(orders=400, seed=11, repeat_share=0.2), out)
    return out
