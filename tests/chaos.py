"""A chaos run: a replay with duplicated and malformed records, while the worker is killed with
SIGKILL again and again and redis-server is restarted once, checked against the pandas oracle;
and a membership run: several workers share the partitions while workers leave, die and join.

Used by tests/test_chaos.py (short) and bench/chaos.py (the full run). The services are the
caller's own: this restarts their Redis (SIGTERM, so the AOF is flushed: a crash with
``appendfsync everysec`` can lose its last second of writes, which no consumer can notice).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import numpy as np

from replay.faults import Faults
from replay.olist import load_olist
from replay.producer import ensure_topics
from segstream.demo import stop_worker
from segstream.schemas import decode_output
from segstream.settings import Settings
from tests.conftest import (
    Workers,
    assert_matches_oracle,
    assert_transitions_match_oracle,
    read_records,
    replay_in_background,
    restart_redis,
)

__all__ = ["chaos_run", "membership_run", "table"]


def _history_on_topics(settings: Settings, data: Path):
    """The history at ``data`` and its number of customer events; its topics created."""
    history = load_olist(data)
    topics = [settings.topic_orders, settings.topic_reviews]
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, topics, settings.topic_partitions, 1))
    events = sum(len(frame) for frame in (history.placed, history.delivered, history.canceled, history.reviews))
    return history, events + len(history.returned)


def _assert_exact(group: Workers, data: Path, events: int) -> tuple[int, int]:
    """Every record consumed is accounted for, each of the ``events`` applied once (none lost, none
    twice), and the state and every transition are the oracle's; returns the transitions checked."""
    counters = group.counters()
    assert counters["consumed"] == counters["applied"] + counters["duplicates"] + counters["dead_lettered"]
    assert counters["applied"] == events, (counters, events)
    assert_matches_oracle(group, data)
    return assert_transitions_match_oracle(group, data, redelivered=True)


def chaos_run(
    settings: Settings,
    data: Path,
    workdir: Path,
    *,
    kills: int = 10,
    duplicate_share: float = 0.05,
    malformed_share: float = 0.01,
    speed: float | None = None,
    seed: int = 0,
    timeout_s: float = 600,
) -> dict:
    """Replay ``data`` with faults, kill the worker ``kills`` times at random moments (by events
    applied) and restart Redis once half-way; then a fresh consumer group reads every topic again
    (a consumer-group reset). Asserts the state and every transition equal the oracle's and every
    malformed record is dead-lettered with its reason; returns the figures."""
    history, events = _history_on_topics(settings, data)
    rng = np.random.default_rng(seed)
    moments = sorted(int(x) for x in rng.uniform(0.05, 0.95, kills) * events)
    restart_after = kills // 2  # the Redis restart comes after this many kills
    faults = Faults(duplicate_share, malformed_share, seed=seed)
    workers = Workers(settings, workdir)
    worker = workers.start()
    started = time.monotonic()
    replay, result = replay_in_background(history, settings, speed=speed, faults=faults)
    killed, restarted = 0, False
    try:
        for moment in moments:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                with contextlib.suppress(Exception):  # Redis may be restarting
                    if workers.counters()["applied"] >= moment:
                        break
                time.sleep(0.05)
            if killed == restart_after and not restarted:  # with the worker running: it waits Redis out
                restart_redis(settings, gone_s=1.0)
                restarted = True
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            killed += 1
            worker = workers.start()
        replay.join(timeout=timeout_s)
        summary = result["summary"]
        workers.wait_for_end(summary, timeout_s=timeout_s)
        elapsed = time.monotonic() - started
        first = workers.counters()
        workers.stop()
        # a consumer-group reset: a new group reads every record again, onto the same state
        records = summary.events_total + len(faults.duplicates) + len(faults.malformed)
        reset = workers.settings
        workers.settings = reset.model_copy(update={"app_id": f"{reset.app_id}-reset"})
        workers.start()
        deadline = time.monotonic() + timeout_s
        while workers.counters()["consumed"] < first["consumed"] + records and time.monotonic() < deadline:
            time.sleep(0.2)
        workers.stop()
        workers.settings = reset
        counters = workers.counters()
        assert counters["consumed"] == first["consumed"] + records, (counters, first, records)

        segment_changes, churn_changes = _assert_exact(workers, data, summary.events_total)
        letters = [
            decode_output(v)
            for v in read_records(settings, [settings.topic_dead_letter], 2 * len(faults.malformed), 60)
        ]
        reasons: dict[tuple, set[str]] = {}  # (topic, partition, payload) -> the reasons given
        for d in letters:
            reasons.setdefault((d.topic, d.partition, d.payload), set()).add(d.reason.split(":")[0])
        for (topic, partition, _key, value), reason in faults.malformed:
            place = (topic, partition, value.decode("utf-8", "replace"))
            assert place in reasons, place
            assert reason in reasons[place], (place, reasons[place], reason)
        return {
            "orders": len(history.placed),
            "events": summary.events_total,
            "seconds": round(elapsed, 1),
            "kills": killed,
            "redis_restarts": int(restarted),
            "duplicated_by_producer": len(faults.duplicates),
            "malformed": len(faults.malformed),
            "consumed (both groups)": counters["consumed"],
            "consumed (first group)": first["consumed"],
            "applied": counters["applied"],
            "deduplicated": counters["duplicates"],
            "dead_lettered": counters["dead_lettered"],
            "lost": summary.events_total - counters["applied"],
            "segment_changes": segment_changes,
            "churn_changes": churn_changes,
        }
    finally:
        workers.stop()


def membership_run(
    settings: Settings,
    data: Path,
    workdir: Path,
    *,
    workers: int = 4,
    moves: tuple[str, ...] = ("leave", "join", "kill", "join", "leave", "join"),
    speed: float | None = None,
    timeout_s: float = 600,
) -> dict:
    """Replay ``data`` onto ``workers`` workers sharing ``settings.topic_partitions`` partitions;
    at moments spread evenly over the replay (by events applied), each of ``moves`` in turn:
    ``leave`` (the oldest running worker stops with SIGTERM: it commits and leaves its group),
    ``kill`` (SIGKILL: its partitions wait out the session timeout, its uncommitted offsets are
    read again) or ``join`` (a new worker: a rebalance). Asserts the state and every transition
    equal the oracle's and each event was applied once; returns the figures."""
    history, events = _history_on_topics(settings, data)
    group = Workers(settings, workdir)
    for _ in range(workers):
        group.start()
    started = time.monotonic()
    replay, result = replay_in_background(history, settings, speed=speed)
    done: list[str] = []
    try:
        for n, move in enumerate(moves, 1):
            moment = events * n // (len(moves) + 1)
            deadline = time.monotonic() + timeout_s
            while group.counters()["applied"] < moment and time.monotonic() < deadline:
                time.sleep(0.05)
            running = [proc for proc in group.procs if proc.poll() is None]
            if move == "join":
                group.start()
            elif move == "leave":
                stop_worker(running[0], timeout_s=15)
            elif move == "kill":
                running[0].send_signal(signal.SIGKILL)
                running[0].wait()
            else:
                raise ValueError(f"unknown move {move!r}: leave, kill or join")
            done.append(f"{move} at {group.counters()['applied']:,} applied")
        replay.join(timeout=timeout_s)
        summary = result["summary"]
        group.wait_for_end(summary, timeout_s=timeout_s)
        elapsed = time.monotonic() - started
        group.stop()
        counters = group.counters()
        segment_changes, churn_changes = _assert_exact(group, data, summary.events_total)
        return {
            "orders": len(history.placed),
            "events": summary.events_total,
            "partitions": settings.topic_partitions,
            "workers started": len(group.procs),
            "moves": len(done),
            "seconds": round(elapsed, 1),
            "applied": counters["applied"],
            "redelivered": counters["duplicates"],
            "lost": summary.events_total - counters["applied"],
            "segment_changes": segment_changes,
            "churn_changes": churn_changes,
        } | {f"move {n}": text for n, text in enumerate(done, 1)}
    finally:
        group.stop()


def table(figures: dict) -> str:
    """The figures as a two-column table (Markdown)."""
    rows = ["| | |", "|---|---|"]
    rows += [
        f"| {name} | {value:,} |" if isinstance(value, int) else f"| {name} | {value} |"
        for name, value in figures.items()
    ]
    return "\n".join(rows)
