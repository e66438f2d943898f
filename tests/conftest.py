"""Shared fixtures: real services over TCP, fixture data, fresh topics per test.

Integration tests talk to a real Kafka-compatible broker and a real Redis. Where a Docker engine
answers, testcontainers provides Apache Kafka and Redis 7; everywhere else (our machines and CI
have no Docker engine) the embedded tansu broker and redis-server binaries are started through
segstream's own services module, on free ports, in a temporary run directory.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from replay.producer import ReplaySummary, ensure_topics
from replay.synth import SynthConfig, synthesize
from segstream.demo import start_worker, stop_worker
from segstream.keys import Keys
from segstream.services import free_port
from segstream.settings import Settings
from streams.profile import Profile
from streams.readmodel import replay_consumed

__all__ = ["EDGE", "REAL_SAMPLE", "Workers", "free_port", "save_profiles"]

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


def save_profiles(client: redis.Redis, keys: Keys, profiles: list[Profile]) -> None:
    """Store profiles as a worker's first write of each would (any old hash replaced)."""
    pipe = client.pipeline(transaction=False)
    for profile in profiles:
        pipe.delete(keys.profile(profile.customer_unique_id))
        pipe.hset(keys.profile(profile.customer_unique_id), mapping=profile.changed_fields())
    pipe.execute()


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


@dataclass
class Workers:
    settings: Settings
    logs: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def start(self) -> subprocess.Popen:
        proc = start_worker(self.settings, self.logs / f"worker-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            stop_worker(proc, timeout_s=15)

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_address)

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.redis_prefix)

    def wait_for_end(self, summary: ReplaySummary, timeout_s: float = 120) -> None:
        """Until every partition of both topics has processed the replay run's final tick."""
        client, wanted = self.redis, 2 * self.settings.topic_partitions
        run = f"{summary.replay_id}/{summary.run_id}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if replay_consumed(self.settings, summary.replay_id, summary.run_id) == wanted:
                break
            for proc in self.procs:
                assert proc.poll() is None or proc.returncode in (0, -9), self.log_text()
            time.sleep(0.2)
        else:
            raise AssertionError(f"replay {run} not consumed in {timeout_s} s\n{self.log_text()}")
        while client.xlen(self.keys.outbox) and time.monotonic() < deadline:  # changes published
            time.sleep(0.1)
        assert client.xlen(self.keys.outbox) == 0

    def log_text(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.logs.glob("*.log")))

    def profiles(self) -> dict[str, Profile]:
        client, out = self.redis, {}
        for key in client.scan_iter(match=self.keys.profiles_pattern, count=1000):
            profile = Profile.from_redis(client.hgetall(key))
            out[profile.customer_unique_id] = profile
        return out

    def counters(self) -> Counter:
        return Counter({k.decode(): int(v) for k, v in self.redis.hgetall(self.keys.counters).items()})


@pytest.fixture
def workers(kafka: Settings, tmp_path: Path) -> Iterator[Workers]:
    tag = uuid.uuid4().hex[:8]
    settings = kafka.model_copy(
        update={
            "app_id": f"seg-{tag}",
            "redis_prefix": f"seg-{tag}",
            "topic_segment_changes": f"{tag}.segment-changes",
            "topic_churn_signals": f"{tag}.churn-signals",
            "topic_dead_letter": f"{tag}.dead-letter",
            "worker_batch": 200,
        }
    )
    asyncio.run(
        ensure_topics(
            settings.kafka_bootstrap_servers,
            [settings.topic_orders, settings.topic_reviews],
            settings.topic_partitions,
            1,
        )
    )
    group = Workers(settings, tmp_path)
    yield group
    group.stop()
