"""Replay onto a real broker over TCP: order, keys, timestamps, ids, windows, resume, speed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from replay.olist import load_olist
from replay.producer import partition_for, replay_history, summary_lines
from replay.readback import ReadBack, read_back
from segstream.schemas import ClockTick, CustomerEvent, ReviewPosted, kafka_timestamp_ms
from segstream.settings import Settings
from tests.conftest import EDGE

pytestmark = pytest.mark.integration


def _replay(history, settings: Settings, **kwargs):
    return asyncio.run(replay_history(history, settings, **kwargs))


def _customer_records(back: ReadBack):
    return [r for r in back.records if isinstance(r[5], CustomerEvent)]


def test_replay_lands_every_event_in_order_keyed_and_timestamped(kafka: Settings, synth_small: Path) -> None:
    history = load_olist(synth_small)
    summary = _replay(history, kafka)
    assert not summary.stopped_early and summary.events_sent == summary.events_total
    assert summary.prepare_s > 0 and f"(prepared in {summary.prepare_s:.1f} s)" in summary_lines(history, summary)[-1]
    back = read_back(kafka, summary.replay_id, timeout_s=60, keep_records=True)
    assert back.complete and back.matches

    expected = {e.event_id: e for e in history.events()}
    records = _customer_records(back)
    assert len(records) == len(expected)  # nothing lost, nothing doubled
    assert {r[5].event_id for r in records} == set(expected)
    for topic, partition, _offset, key, timestamp, event in records:
        assert event == expected[event.event_id]
        assert key == event.customer_unique_id.encode()
        assert timestamp == kafka_timestamp_ms(event.event_time)
        assert partition == partition_for(event.customer_unique_id, kafka.topic_partitions)
        assert topic == (kafka.topic_reviews if isinstance(event, ReviewPosted) else kafka.topic_orders)

    # Per partition, offsets follow event time, and every tick is a true watermark.
    by_partition: dict[tuple[str, int], list] = {}
    for topic, partition, _offset, _key, _ts, event in sorted(back.records, key=lambda r: (r[0], r[1], r[2])):
        by_partition.setdefault((topic, partition), []).append(event)
    assert len(by_partition) == 2 * kafka.topic_partitions
    for events in by_partition.values():
        times = [e.event_time for e in events]
        assert times == sorted(times)
        assert isinstance(events[-1], ClockTick) and events[-1].final
        ticks = [e for e in events if isinstance(e, ClockTick) and not e.final]
        assert len(ticks) > 300  # a tick per event-day over the history's ~2 years


def test_replay_window_and_completion(kafka: Settings, synth_small: Path) -> None:
    history = load_olist(synth_small)
    since, until = datetime(2017, 6, 1, tzinfo=UTC), datetime(2018, 1, 1, tzinfo=UTC)
    summary = _replay(history, kafka, since=since, until=until)
    inside = [e for e in history.events() if since <= e.event_time < until]
    assert summary.events_sent == len(inside) > 0
    back = read_back(kafka, summary.replay_id, timeout_s=60, keep_records=True)
    assert back.matches
    assert {r[5].event_id for r in _customer_records(back)} == {e.event_id for e in inside}
    # The same window again: already complete, nothing sent; --restart sends it again.
    again = _replay(history, kafka, since=since, until=until)
    assert again.already_complete and again.events_sent == 0
    restarted = _replay(history, kafka, since=since, until=until, restart=True)
    assert restarted.events_sent == len(inside)


def test_interrupted_replay_resumes_without_gap(kafka: Settings, synth_small: Path) -> None:
    history = load_olist(synth_small)
    settings = kafka.model_copy(update={"replay_batch": 100})
    first = _replay(history, settings, max_events=1_000)
    assert first.stopped_early and first.events_sent > 0
    second = _replay(history, settings)
    assert second.resumed_from == 1_000 and not second.stopped_early
    assert first.events_sent + second.events_sent == second.events_total
    back = read_back(settings, second.replay_id, timeout_s=60, keep_records=True)
    assert back.matches
    ids = Counter(r[5].event_id for r in _customer_records(back))
    assert set(ids) == {e.event_id for e in history.events()}
    assert max(ids.values()) == 1  # a clean stop leaves no overlap


def test_killed_replay_resumes_without_gap(kafka: Settings, synth_small: Path) -> None:
    """kill -9 mid-replay, run the same command again: every event arrives; overlap <= two batches."""
    env = {
        **os.environ,
        "SEGSTREAM_RUN_DIR": str(kafka.run_dir),
        "SEGSTREAM_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap_servers,
        "SEGSTREAM_TOPIC_ORDERS": kafka.topic_orders,
        "SEGSTREAM_TOPIC_REVIEWS": kafka.topic_reviews,
        "SEGSTREAM_REPLAY_BATCH": "50",
    }
    # ~800 event-days at 200 event-days per second: about 4 s of replay
    command = [sys.executable, "-m", "segstream.cli", "replay", "--data", str(synth_small), "--json"]
    proc = subprocess.Popen(
        [*command, "--speed", str(200 * 86_400)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    checkpoints = kafka.run_dir / "checkpoints"
    deadline = time.monotonic() + 60
    position = 0
    while time.monotonic() < deadline and position < 300:
        for path in checkpoints.glob("replay-*.json"):
            with contextlib.suppress(json.JSONDecodeError, KeyError):
                position = json.loads(path.read_text())["position"]
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert position > 0

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["resumed_from"] >= position and summary["stopped_early"] is False
    back = read_back(kafka, summary["replay_id"], timeout_s=60, keep_records=True)
    assert back.matches
    history = load_olist(synth_small)
    ids = Counter(r[5].event_id for r in _customer_records(back))
    assert set(ids) == {e.event_id for e in history.events()}  # no gap
    assert sum(ids.values()) - len(ids) <= 100  # overlap: at most two batches of timeline entries


def test_speed_paces_by_event_time(kafka: Settings) -> None:
    history = load_olist(EDGE)  # events span 2017-03-01 .. 2017-08-09: about 161 event-days
    span_s = 161.33 * 86_400
    summary = _replay(history, kafka, speed=span_s / 1.5)
    assert summary.duration_s >= 1.2  # paced, not as fast as possible
    assert summary.events_sent == 18


def test_rate_paces_by_wall_clock(kafka: Settings, synth_small: Path) -> None:
    history = load_olist(synth_small)
    summary = _replay(history, kafka, rate=400, max_events=2_000, restart=True)
    # 400 customer events per wall second (ticks unpaced): neither early nor far late
    expected_s = summary.events_sent / 400
    assert summary.events_sent >= 500
    assert expected_s - 0.05 <= summary.duration_s <= expected_s + 2.0
    with pytest.raises(ValueError, match="rate must be positive"):
        _replay(history, kafka, rate=100, speed=86_400)


def test_bad_speed_is_refused(kafka: Settings) -> None:
    with pytest.raises(ValueError, match="speed must be positive"):
        _replay(load_olist(EDGE), kafka, speed=0)
