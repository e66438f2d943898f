"""Read a replay back from Kafka until every partition's final clock tick: a check of delivery.

The embedded broker under-reports end offsets, so "consumed up to the end offset" cannot tell that
a replay has been fully read; the final :class:`~segstream.schemas.ClockTick` each partition gets,
with its ``expected_events``, can.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer

from segstream.clients import kafka_options
from segstream.schemas import AnyEvent, ClockTick, decode_event
from segstream.settings import Settings

__all__ = ["ReadBack", "read_back"]


@dataclass
class ReadBack:
    """What a read-back found, per (topic, partition)."""

    records: list[tuple[str, int, int, bytes | None, int, AnyEvent]] = field(default_factory=list)
    # (topic, partition, offset, key, kafka timestamp ms, event), in partition order
    unique_events: Counter = field(default_factory=Counter)
    expected_events: dict[tuple[str, int], int] = field(default_factory=dict)
    complete: bool = False

    def lines(self) -> list[str]:
        lines = []
        for (topic, partition), expected in sorted(self.expected_events.items()):
            got = self.unique_events[(topic, partition)]
            mark = "ok" if got == expected else "MISMATCH"
            lines.append(f"  {topic}[{partition}]  {got:>8,} events read back, {expected:>8,} expected  {mark}")
        return lines

    @property
    def matches(self) -> bool:
        return self.complete and all(
            self.unique_events[tp] == expected for tp, expected in self.expected_events.items()
        )


async def _read(settings: Settings, replay_id: str, timeout_s: float, keep_records: bool) -> ReadBack:
    topics = [settings.topic_orders, settings.topic_reviews]
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        **kafka_options(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    result = ReadBack()
    seen: set[str] = set()
    try:
        partitions = {(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, messages in batch.items():
                for message in messages:
                    event = decode_event(message.value)
                    where = (tp.topic, tp.partition)
                    if isinstance(event, ClockTick):
                        if event.final and event.replay_id == replay_id:
                            result.expected_events[where] = event.expected_events or 0
                    elif event.event_id not in seen:
                        seen.add(event.event_id)
                        result.unique_events[where] += 1
                    if keep_records:
                        result.records.append(
                            (tp.topic, tp.partition, message.offset, message.key, message.timestamp, event)
                        )
            if partitions and set(result.expected_events) >= partitions:
                result.complete = True
                break
    finally:
        await consumer.stop()
    return result


def read_back(settings: Settings, replay_id: str, timeout_s: float = 60.0, keep_records: bool = False) -> ReadBack:
    """Consume both replay topics from the start until every partition's final tick of ``replay_id``."""
    return asyncio.run(_read(settings, replay_id, timeout_s, keep_records))
