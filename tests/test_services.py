"""Embedded services: real processes, health, idempotence, clear errors, AOF durability."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from segstream import services as services_module
from segstream.services import ServiceError, services_down, services_status, services_up
from segstream.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def own(tmp_path: Path) -> Settings:
    """A run directory and ports of this test's own, torn down afterwards."""
    settings = Settings(run_dir=tmp_path / "run", kafka_port=free_port(), redis_port=free_port())
    yield settings
    services_down(settings)


def test_up_is_idempotent_status_and_down(own: Settings) -> None:
    first = {s.name: s for s in services_up(own)}
    assert first["kafka"].healthy and first["redis"].healthy
    assert first["kafka"].detail.startswith("cluster segstream-")
    again = {s.name: s for s in services_up(own)}
    assert again["kafka"].pid == first["kafka"].pid and again["redis"].pid == first["redis"].pid
    messages = services_down(own)
    assert messages == [f"kafka: stopped pid {first['kafka'].pid}", f"redis: stopped pid {first['redis'].pid}"]
    assert not any(s.healthy for s in services_status(own))


def test_other_port_than_the_running_one_is_explained(own: Settings) -> None:
    services_up(own)
    elsewhere = own.model_copy(update={"kafka_port": free_port()})
    with pytest.raises(ServiceError, match=f"runs on port {own.kafka_port}, not {elsewhere.kafka_port}"):
        services_status(elsewhere)
    with pytest.raises(ServiceError, match=f"pass --kafka-port {own.kafka_port}"):
        services_up(elsewhere)


def test_redis_append_only_file_survives_a_restart(own: Settings) -> None:
    services_up(own)
    client = redis.Redis.from_url(own.redis_address)
    client.set("segstream:test:durable", "yes")
    client.close()
    services_down(own)
    services_up(own)
    client = redis.Redis.from_url(own.redis_address)
    assert client.get("segstream:test:durable") == b"yes"
    client.close()
    assert (own.run_dir / "redis").is_dir()


def test_taken_port_gives_one_actionable_line(own: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", own.kafka_port))
        taken.listen()
        with pytest.raises(ServiceError, match=f"port {own.kafka_port} on 127.0.0.1 is already in use") as error:
            services_up(own)
        assert "--kafka-port" in str(error.value) and "\n" not in str(error.value)
        env = {**os.environ, "SEGSTREAM_RUN_DIR": str(own.run_dir), "SEGSTREAM_KAFKA_PORT": str(own.kafka_port)}
        done = subprocess.run(
            [sys.executable, "-m", "segstream.cli", "services", "up"], env=env, capture_output=True, text=True
        )
    assert done.returncode == 1
    assert done.stderr.startswith("Error: port") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_binary_that_fails_to_start_is_reported(own: Settings, tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'error: storage engine unavailable' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(services_module, "tansu_binary", lambda: fake)
    with pytest.raises(ServiceError, match="exited with code 3 at start: error: storage engine unavailable"):
        services_up(own)


def test_external_services_are_used_not_started(services: Settings, tmp_path: Path) -> None:
    external = Settings(
        run_dir=tmp_path / "run",
        kafka_bootstrap=services.kafka_bootstrap_servers,
        redis_url=services.redis_address,
    )
    statuses = services_up(external)
    assert [(s.name, s.mode, s.healthy, s.pid) for s in statuses] == [
        ("kafka", "external", True, None),
        ("redis", "external", True, None),
    ]
    assert not (tmp_path / "run" / "services.json").exists()  # nothing was started


def test_unreachable_external_broker_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(run_dir=tmp_path, kafka_bootstrap=f"127.0.0.1:{port}", redis_port=free_port())
    status = services_status(settings)[0]
    assert not status.healthy and f"nothing accepts connections at Kafka address 127.0.0.1:{port}" in status.detail


def test_bundled_binaries_are_found() -> None:
    assert services_module.tansu_binary().name == "tansu"
    assert services_module.redis_server_binary().name == "redis-server"


def test_a_service_still_loading_its_data_is_waited_for(monkeypatch, tmp_path: Path) -> None:
    """A redis-server replaying a large AOF answers LOADING for minutes: progress, not a hang."""
    monkeypatch.setattr(services_module, "STARTUP_TIMEOUT_S", 0.3)
    monkeypatch.setattr(services_module.time, "sleep", lambda _s: None)
    clock = iter(range(10_000))
    monkeypatch.setattr(services_module.time, "monotonic", lambda: next(clock) * 0.1)
    answers = iter([ServiceError("refused")] + [services_module._StillLoading("LOADING")] * 20 + [None])

    def check() -> None:
        answer = next(answers)
        if answer is not None:
            raise answer

    class Running:
        returncode = None

        def poll(self) -> None:
            return None

        def terminate(self) -> None:
            raise AssertionError("a loading service must not be stopped")

    services_module._wait_healthy(Running(), check, tmp_path / "log", "redis-server")  # 2 s of LOADING > 0.3 s
    assert next(answers, "done") == "done"
    stuck = iter([ServiceError("refused")] * 20)
    terminated = []
    Running.terminate = lambda self: terminated.append(True)
    with pytest.raises(ServiceError, match="did not become healthy"):
        services_module._wait_healthy(Running(), lambda: (_ for _ in ()).throw(next(stuck)), tmp_path / "log", "x")
    assert terminated == [True]
