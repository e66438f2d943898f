"""A Redis restart in the middle of a replay: the worker waits it out and loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from replay.olist import load_olist
from replay.producer import ensure_topics
from replay.synth import SynthConfig, synthesize
from segstream.services import services_status
from segstream.settings import Settings
from tests import oracle
from tests.conftest import Workers, assert_matches_oracle, replay_in_background, restart_redis, wait_for_applied

pytestmark = pytest.mark.integration


def test_worker_rides_out_a_redis_restart(own_services: Settings, tmp_path: Path) -> None:
    data = tmp_path / "history"
    synthesize(SynthConfig(orders=1_500, seed=9, repeat_share=0.2), data)
    settings = own_services
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, [settings.topic_orders, settings.topic_reviews], 4, 1))
    workers = Workers(settings, tmp_path)
    workers.start()
    try:
        thread, result = replay_in_background(load_olist(data), settings, speed=40 * 86_400)
        wait_for_applied(workers, 1_000)
        restart_redis(settings)
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


def test_worker_waits_out_a_hung_redis(own_services: Settings, tmp_path: Path) -> None:
    """redis-server stopped (SIGSTOP: connections open, no answer) for longer than the client
    timeout, then continued: the worker's calls time out, it says so and retries, and the replay
    ends with nothing lost or counted twice."""
    data = tmp_path / "history"
    synthesize(SynthConfig(orders=1_500, seed=9, repeat_share=0.2), data)
    settings = own_services.model_copy(update={"redis_timeout": 1.0})
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, [settings.topic_orders, settings.topic_reviews], 4, 1))
    workers = Workers(settings, tmp_path)
    workers.start()
    try:
        thread, result = replay_in_background(load_olist(data), settings, speed=40 * 86_400)
        wait_for_applied(workers, 1_000)
        pid = next(status.pid for status in services_status(settings) if status.name == "redis")
        stopped = time.time()
        os.kill(pid, signal.SIGSTOP)
        try:
            workers.wait_for_log("Timeout", timeout_s=20)  # the line that says Redis went away, and why
        finally:
            time.sleep(2.0)
            os.kill(pid, signal.SIGCONT)
        # SEGSTREAM_REDIS_TIMEOUT (1 s here) governs, not the client library's own default (5 s in
        # redis-py 8, none before 8): the worker is writing all the time, so a call is in flight
        line = next(t for t in workers.log_text().splitlines() if "is unavailable (Timeout" in t)
        said = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # the log's local time
        assert said - stopped < 4.0, line
        workers.wait_for_log("Redis answers again", timeout_s=60)
        thread.join(timeout=120)
        workers.wait_for_end(result["summary"], timeout_s=180)
        assert_matches_oracle(workers, data)
        counters = workers.counters()
        assert counters["applied"] == result["summary"].events_total
        assert counters["consumed"] == counters["applied"] + counters["duplicates"] + counters["dead_lettered"]
        assert all(proc.poll() is None for proc in workers.procs), "the worker died"
    finally:
        workers.stop()
