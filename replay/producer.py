"""Replay a :class:`~replay.history.History` onto Kafka in event-time order, at any speed.

- Customer events go to ``Settings.topic_orders`` (placed, delivered, canceled, returned),
  ``Settings.topic_reviews`` or, for a history with a campaign log, ``Settings.topic_campaigns``
  (campaign sends), keyed by ``customer_unique_id`` with the Kafka record timestamp set to
  the event time, ``acks=all``. Partitions are chosen like the Java client's default partitioner
  (murmur2 of the key), so any Kafka client agrees on where a customer lives.
- Clock ticks go to every partition of every topic fed at each multiple of the tick interval, and a
  final tick per partition closes the replay with that partition's expected event count
  (``docs/events.md``).
- ``speed`` is event seconds per wall second (``None``: as fast as possible); ``rate`` instead sends
  a constant number of customer events per wall second whatever their event times (load tests:
  a history's event volume is far from uniform over its event time).
- Resume: every ``Settings.replay_batch`` timeline entries mark a checkpoint; once the broker has
  acknowledged all entries up to it, the position is written to a checkpoint file (the next batch
  is sent meanwhile, so the replay does not stop for acknowledgements). An interrupted replay
  restarts from there, so nothing is skipped; entries sent after the last checkpoint are sent
  again (at most two batches), and consumers drop them by ``event_id``. The checkpoint is keyed by
  the data, the window, the topics and the broker's cluster id: a new embedded broker (memory
  storage) starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from replay.faults import Faults
from replay.history import CAMPAIGN, KIND_NAMES, REVIEW, TICK, History
from segstream.clients import kafka_options
from segstream.kafka import RecordBatches, batch_producer, partition_for
from segstream.schemas import SENT_AT_HEADER, ClockTick, encode_event, make_event_id
from segstream.services import describe_kafka
from segstream.settings import Settings

__all__ = ["ReplaySummary", "ensure_topics", "partition_for", "replay_history"]

log = logging.getLogger(__name__)

# Paced replays send what is buffered before its oldest record has waited this long. Fewer,
# larger record batches matter on the embedded broker: its fetches slow down with the number of
# batches in a partition (README, Benchmarks). Measured at 2k events/s, against flushing whenever
# the replay was ahead of time (about 5 ms): broker p99 45-53 ms instead of 54-127 ms.
PACED_LINGER_S = 0.010


@dataclass
class ReplaySummary:
    replay_id: str
    run_id: str
    bootstrap: str
    topics: list[str]
    partitions: int
    events_total: int  # customer events in the window
    topic_partitions: int = 0  # partitions of all the topics fed: each gets a final tick
    sent_by_type: Counter = field(default_factory=Counter)
    ticks_sent: int = 0
    resumed_from: int = 0  # timeline position this run started at
    positions: int = 0  # timeline length (events + ticks)
    prepare_s: float = 0.0  # from the call to the first send: timeline, topics, partitions, encoder
    duration_s: float = 0.0  # sending, until the broker acknowledged the last record
    already_complete: bool = False
    stopped_early: bool = False
    first_event_time: str | None = None
    last_event_time: str | None = None

    @property
    def events_sent(self) -> int:
        return sum(self.sent_by_type.values())

    @property
    def events_per_s(self) -> float:
        return self.events_sent / self.duration_s if self.duration_s else 0.0


# --- topics -----------------------------------------------------------------------------------


async def ensure_topics(
    bootstrap: str, topics: list[str], partitions: int, replication: int, options: Mapping[str, Any] | None = None
) -> dict[str, int]:
    """Create missing topics; returns each topic's partition count (existing topics keep theirs).

    Replay topics keep their records forever (``retention.ms=-1``): on Apache Kafka, time-based
    retention looks at record timestamps, and replayed history is years old.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(options or {}))  # options: security settings
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            configs = {"retention.ms": "-1"}
            # suppress: another replay or worker may create them concurrently
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(t, partitions, replication, topic_configs=configs) for t in missing]
                )
            log.info("created topics %s with %d partitions", ", ".join(missing), partitions)
        described = await admin.describe_topics(topics)
        counts = {d["topic"]: len(d["partitions"]) for d in described}
    finally:
        await admin.close()
    for topic in topics:
        if not counts.get(topic):
            raise RuntimeError(f"topic {topic} has no partitions after creation on {bootstrap}")
    return counts


# --- checkpoints ------------------------------------------------------------------------------


@dataclass
class _Checkpoint:
    path: Path
    identity: dict
    position: int = 0
    completed: bool = False

    @classmethod
    def load(cls, path: Path, identity: dict) -> _Checkpoint:
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                log.warning("ignoring unreadable checkpoint %s", path)
            else:
                if saved.get("identity") == identity:
                    return cls(path, identity, int(saved["position"]), bool(saved["completed"]))
        return cls(path, identity)

    def save(self, position: int, completed: bool = False) -> None:
        self.position, self.completed = position, completed
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        payload = {
            "identity": self.identity,
            "position": position,
            "completed": completed,
            "saved_at": datetime.now(UTC).isoformat(),
        }
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(self.path)  # atomic: a crash leaves the old checkpoint or the new one


def _fingerprint(paths: list[Path]) -> list[list]:
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(paths)]


# --- the replay -------------------------------------------------------------------------------


async def replay_history(
    history: History,
    settings: Settings,
    *,
    data_files: list[Path] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    speed: float | None = None,
    rate: float | None = None,
    restart: bool = False,
    max_events: int | None = None,
    lateness_seconds: int = 0,
    seed: int = 0,
    on_progress: Callable[[int, int, int], None] | None = None,
    faults: Faults | None = None,
) -> ReplaySummary:
    """Send ``history`` to Kafka; see the module docstring for the guarantees.

    ``faults`` injects duplicated and malformed records (replay/faults.py: chaos runs only).

    ``max_events`` stops after that many timeline entries (checkpoint kept, so a later call
    resumes); ``on_progress(position, total, events_sent)`` is called after each acknowledged batch.
    """
    if speed is not None and speed <= 0:
        raise ValueError(f"speed must be positive (event seconds per wall second), not {speed}")
    if rate is not None and (rate <= 0 or speed is not None):
        raise ValueError(f"rate must be positive events per second, and not given with a speed: {rate}")
    bootstrap = settings.kafka_bootstrap_servers
    topics = [settings.topic_orders, settings.topic_reviews]
    if len(history.campaigns):
        topics.append(settings.topic_campaigns)
    called = time.monotonic()
    timeline = history.timeline(since, until, settings.replay_tick_seconds, lateness_seconds, seed)
    security = kafka_options(settings)
    cluster_id = await describe_kafka(bootstrap, options=security)
    partition_counts = await ensure_topics(
        bootstrap, topics, settings.topic_partitions, settings.topic_replication, security
    )

    identity = {
        "source": history.source,
        "data": _fingerprint(data_files or []),
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "tick_seconds": settings.replay_tick_seconds,
        "lateness": [lateness_seconds, seed] if lateness_seconds else None,
        "topics": partition_counts,
        "bootstrap": bootstrap,
        "cluster_id": cluster_id,
        "entries": len(timeline),
    }
    replay_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    checkpoint_path = settings.run_dir / "checkpoints" / f"replay-{replay_id}.json"
    checkpoint = _Checkpoint(checkpoint_path, identity) if restart else _Checkpoint.load(checkpoint_path, identity)

    is_event = timeline.kind != TICK
    run_id = uuid.uuid4().hex[:12]
    summary = ReplaySummary(
        replay_id=replay_id,
        run_id=run_id,
        bootstrap=bootstrap,
        topics=topics,
        partitions=max(partition_counts.values()),
        topic_partitions=sum(partition_counts.values()),
        events_total=int(is_event.sum()),
        resumed_from=checkpoint.position,
        positions=len(timeline),
    )
    if len(timeline):
        summary.first_event_time = _iso(int(timeline.time_ns.min()))
        summary.last_event_time = _iso(int(timeline.time_ns.max()))
    if checkpoint.completed:
        summary.already_complete = True
        return summary
    if checkpoint.position:
        log.info(
            "resuming replay %s at position %d of %d (checkpoint %s)",
            replay_id,
            checkpoint.position,
            len(timeline),
            checkpoint_path,
        )

    # Partition of every customer event, and how many events each partition gets in the window.
    partition_of: dict[str, int] = {}
    topic_of_kind = {kind: settings.topic_orders for kind in KIND_NAMES}
    topic_of_kind[REVIEW], topic_of_kind[CAMPAIGN] = settings.topic_reviews, settings.topic_campaigns
    expected: Counter = Counter()
    entry_partition = np.full(len(timeline), -1, dtype="int64")
    for i in np.flatnonzero(is_event).tolist():
        customer = timeline.customer[i]
        topic = topic_of_kind[int(timeline.kind[i])]
        partition = partition_of.get(customer)
        if partition is None:
            partition = partition_of[customer] = partition_for(customer, partition_counts[topic])
        entry_partition[i] = partition
        expected[(topic, partition)] += 1

    producer = batch_producer(bootstrap, f"segstream-replay-{replay_id}", security)
    await producer.start()
    encode = history.encoder()
    batches = RecordBatches(producer)
    started = time.monotonic()
    summary.prepare_s = started - called
    position = checkpoint.position
    stop_at = len(timeline) if max_events is None else min(len(timeline), position + max_events)
    kinds, rows, times = timeline.kind.tolist(), timeline.row.tolist(), timeline.time_ns.tolist()
    customers = timeline.customer
    wall_zero = time.monotonic()
    events_at_start = summary.events_sent
    event_zero = times[position] if position < len(times) else 0
    since_checkpoint = 0
    buffered_since: float | None = None  # when the oldest record not yet flushed was appended
    # the last checkpoint not yet written: its position, the sends it waits for, events sent by then
    in_flight: tuple[int, list[asyncio.Future], int] | None = None
    try:
        while position < stop_at:
            kind, time_ns = kinds[position], times[position]
            if speed is not None or (rate is not None and kind != TICK):
                if speed is not None:
                    due = wall_zero + (time_ns - event_zero) / 1e9 / speed
                else:
                    due = wall_zero + (summary.events_sent - events_at_start) / rate
                now = time.monotonic()
                if due > now:
                    if buffered_since is not None and due - buffered_since >= PACED_LINGER_S:
                        await batches.flush()
                        buffered_since = None
                    await asyncio.sleep(due - time.monotonic())
            if buffered_since is None:
                buffered_since = time.monotonic()
            timestamp_ms = time_ns // 1_000_000
            if kind == TICK:
                moment = _datetime(time_ns)
                for topic in topics:
                    for partition in range(partition_counts[topic]):
                        tick = ClockTick(
                            event_id=make_event_id("tick", topic, str(partition), str(time_ns // 1_000_000_000)),
                            event_time=moment,
                            replay_id=replay_id,
                            run_id=run_id,
                            topic=topic,
                            partition=partition,
                        )
                        await batches.append(topic, partition, None, encode_event(tick), timestamp_ms)
                summary.ticks_sent += sum(partition_counts.values())
            else:
                record = (topic_of_kind[kind], int(entry_partition[position]), customers[position].encode())
                value = encode(kind, rows[position])
                # wall-clock send time: lets workers measure append-to-Redis latency
                await batches.append(
                    *record, value, timestamp_ms, ((SENT_AT_HEADER, str(int(time.time() * 1000)).encode()),)
                )
                summary.sent_by_type[KIND_NAMES[kind]] += 1
                if faults is not None:
                    for topic, partition, key, bad in faults.after((*record, value)):
                        await batches.append(topic, partition, key, bad, timestamp_ms)
            position += 1
            since_checkpoint += 1
            if since_checkpoint >= settings.replay_batch:
                sent = await batches.send()
                buffered_since = None
                if in_flight is not None:  # the previous batch: acknowledged while this one was built
                    await asyncio.gather(*in_flight[1])
                    checkpoint.save(in_flight[0])
                    if on_progress:
                        on_progress(in_flight[0], len(timeline), in_flight[2])
                in_flight = (position, sent, summary.events_sent)
                since_checkpoint = 0
        await batches.flush()
        if in_flight is not None:
            await asyncio.gather(*in_flight[1])
        if position >= len(timeline):
            # the window's end when it has one (``until`` is exclusive: every event before it has
            # been sent, so the clock may stand there; a backtest freezes the state at that moment),
            # else the last event's time
            last = until if until is not None else _datetime(max(times)) if times else datetime.now(UTC)
            for topic, partition, key, bad in faults.rest() if faults is not None else []:
                await batches.append(topic, partition, key, bad, int(last.timestamp() * 1000))
            for topic in topics:
                for partition in range(partition_counts[topic]):
                    final = ClockTick(
                        event_id=make_event_id("end", replay_id, topic, str(partition)),
                        event_time=last,
                        replay_id=replay_id,
                        run_id=run_id,
                        topic=topic,
                        partition=partition,
                        final=True,
                        expected_events=expected[(topic, partition)],
                    )
                    await batches.append(topic, partition, None, encode_event(final), int(last.timestamp() * 1000))
            await batches.flush()
            checkpoint.save(position, completed=True)
        else:
            checkpoint.save(position)
            summary.stopped_early = True
        if on_progress:
            on_progress(position, len(timeline), summary.events_sent)
    finally:
        summary.duration_s = time.monotonic() - started
        await producer.stop()
    return summary


def _datetime(time_ns: int) -> datetime:
    return datetime.fromtimestamp(time_ns / 1e9, tz=UTC)


def _iso(time_ns: int) -> str:
    return _datetime(time_ns).isoformat()


def summary_dict(summary: ReplaySummary) -> dict:
    """A JSON-friendly view of a summary (for ``--json`` and the benchmark)."""
    data = asdict(summary)
    data["sent_by_type"] = dict(summary.sent_by_type)
    data["events_sent"] = summary.events_sent
    data["events_per_s"] = round(summary.events_per_s, 1)
    return data


def run_replay(
    location: Path,
    settings: Settings,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    speed: float | None = None,
    rate: float | None = None,
    restart: bool = False,
    max_events: int | None = None,
    rejects_path: Path | None = None,
    progress: bool = True,
    source: str = "olist",
    mapping: Path | None = None,
    campaigns: Path | None = None,
) -> tuple[History, ReplaySummary]:
    """Load ``location`` as ``source`` (replay.sources) and replay it, with a progress bar on stderr."""
    from tqdm import tqdm

    from replay.sources import check_history, load_source, source_files

    started = time.monotonic()
    history = load_source(source, location, mapping, campaigns)
    log.info(
        "loaded %s in %.1f s: %s; %d rows rejected",
        location,
        time.monotonic() - started,
        ", ".join(f"{n} {k}" for k, n in history.event_counts().items()),
        history.report.rejected,
    )
    if rejects_path is not None:
        written = history.report.write_rejects(rejects_path)
        log.info("wrote %d rejected/partial rows to %s", written, rejects_path)
    check_history(history, location, settings.replay_max_reject_share)
    files = source_files(source, location, campaigns) + ([mapping] if mapping is not None else [])
    bar = tqdm(desc="replay", unit="entry", disable=not progress, dynamic_ncols=True, mininterval=0.5)
    last = {"sent": 0, "at": time.monotonic(), "logged": time.monotonic()}

    def on_progress(position: int, total: int, events_sent: int) -> None:
        now = time.monotonic()
        rate = (events_sent - last["sent"]) / max(now - last["at"], 1e-6)
        last.update(sent=events_sent, at=now)
        if progress:
            if bar.total is None:
                bar.reset(total=total)
            bar.n = position
            bar.set_postfix_str(f"{events_sent:,} events, {rate:,.0f} events/s", refresh=True)
        elif now - last["logged"] >= 10 or position == total:  # no terminal: a log line every 10 s
            last["logged"] = now
            log.info("replayed %d/%d timeline entries, %d events, %.0f events/s", position, total, events_sent, rate)

    try:
        summary = asyncio.run(
            replay_history(
                history,
                settings,
                data_files=files,
                since=since,
                until=until,
                speed=speed,
                rate=rate,
                restart=restart,
                max_events=max_events,
                on_progress=on_progress,
            )
        )
    finally:
        bar.close()
    return history, summary


def summary_lines(history: History, summary: ReplaySummary) -> list[str]:
    """The human summary of a replay, as printed by ``segstream replay`` and ``segstream demo``."""
    if summary.already_complete:
        return [
            f"replay {summary.replay_id} of this window to {summary.bootstrap} already completed "
            f"({summary.events_total:,} events); pass --restart to send it again"
        ]
    state = "stopped early (resumable)" if summary.stopped_early else "complete"
    resumed = f", resumed at entry {summary.resumed_from:,}" if summary.resumed_from else ""
    partial = len(history.report.rejects) - history.report.rejected
    lines = [
        f"replay {summary.replay_id} {state}{resumed}: {summary.bootstrap} topics {', '.join(summary.topics)}",
        f"  event time       {summary.first_event_time} .. {summary.last_event_time}",
    ]
    lines += [f"  {kind:<16} {count:>10,}" for kind, count in sorted(summary.sent_by_type.items())]
    lines += [
        f"  clock ticks      {summary.ticks_sent:>10,}",
        f"  rejected rows    {history.report.rejected:>10,}  ({partial:,} partial)",
        f"  sent {summary.events_sent:,} events in {summary.duration_s:.1f} s = {summary.events_per_s:,.0f} events/s "
        f"(prepared in {summary.prepare_s:.1f} s)",
    ]
    return lines
