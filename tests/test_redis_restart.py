"""A Redis restart in the middle of a replay: the worker waits it out and loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from replay.olist import load_olist
from replay.producer import ensure_topics, replay_history
from replay.synth import SynthConfig, synthesize
from segstream.services import free_port, services_down, services_status, services_up
from segstream.settings import Settings
from tests import oracle
from tests.conftest import Workers

pytestmark = pytest.mark.integration


@pytest.fixture
def own_services(tmp_path: Path) -> Iterator[Settings]:
    """A broker and a Redis of this test's own: the test restarts the Redis."""
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        run_dir=tmp_path / "run",
        kafka_port=free_port(),
        redis_port=free_port(),
        app_id=f"rr-{tag}",
        worker_batch=200,
        replay_batch=200,
    )
    services_up(settings)
    try:
        yield settings
    finally:
        services_down(settings)


def test_worker_rides_out_a_redis_restart(own_services: Settings, tmp_path: Path) -> None:
    data = tmp_path / "history"
    synthesize(SynthConfig(orders=1_500, seed=9, repeat_share=0.2), data)
    settings = own_services
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, [settings.topic_orders, settings.topic_reviews], 4, 1))
    workers = Workers(settings, tmp_path)
    workers.start()
    try:
        history = load_olist(data)
        result: dict = {}
        thread = threading.Thread(
            target=lambda: result.setdefault(
                "summary", asyncio.run(replay_history(history, settings, speed=40 * 86_400))
            )
        )
        thread.start()
        deadline = time.monotonic() + 60
        while workers.counters()["applied"] < 1_000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert workers.counters()["applied"] >= 1_000, workers.log_text()
        pid = next(status.pid for status in services_status(settings) if status.name == "redis")
        os.kill(pid, signal.SIGTERM)  # a clean shutdown: the AOF is flushed
        while os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # our child: reap it
            time.sleep(0.05)
        time.sleep(2.0)  # the worker meets a Redis that is gone
        services_up(settings)  # a new redis-server: the same port, the same AOF
        thread.join(timeout=120)
        workers.wait_for_end(result["summary"], timeout_s=180)
        expected = oracle.final_state(data)
        profiles = {c: p for c, p in workers.profiles().items() if p.orders}
        assert set(profiles) == set(expected.index)
        got = {c: (p.orders, round(p.monetary, 2), p.segment, p.churn) for c, p in profiles.items()}
        want = {c: (r.orders, round(r.monetary, 2), r.segment, r.churn) for c, r in expected.iterrows()}
        assert got == want
        counters = workers.counters()
        assert counters["applied"] == result["summary"].events_total
        assert counters["dead_lettered"] == 0
        assert all(proc.poll() is None for proc in workers.procs), "the worker died"
    finally:
        workers.stop()
