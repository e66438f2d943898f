"""Kafka helpers shared by the replay and the workers: the key partitioner and batched sends."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

__all__ = ["RecordBatches", "batch_producer", "partition_for"]


@functools.lru_cache(maxsize=1 << 18)  # keys are customers: the same few recur
def partition_for(key: str, partitions: int) -> int:
    """The partition of ``key``, as the Java client's (and aiokafka's) default partitioner picks it.

    >>> from aiokafka.partitioner import DefaultPartitioner
    >>> all(partition_for(k, 4) == DefaultPartitioner()(k.encode(), [0, 1, 2, 3], []) for k in ("a", "b", "u1"))
    True
    >>> partition_for("customer-1", 4)
    1
    """
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def batch_producer(bootstrap: str, client_id: str, options: Mapping[str, Any] | None = None) -> AIOKafkaProducer:
    """An (unstarted) producer for :class:`RecordBatches`: acks from all replicas, 256 KB batches;
    ``options``: the security settings (``segstream.clients.kafka_options``)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        **(options or {}),
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        max_request_size=4 * 1024 * 1024,
        client_id=client_id,
    )


class RecordBatches:
    """Open aiokafka record batches per (topic, partition), and the futures of those sent.

    ``create_batch``/``send_batch`` with partitions computed by the caller: cheaper per record than
    ``send()``, which the replay and the change-event publisher both rely on.
    """

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.open: dict[tuple[str, int], object] = {}
        self.pending: list[asyncio.Future] = []

    async def append(
        self, topic: str, partition: int, key: bytes | None, value: bytes, timestamp_ms: int, headers=()
    ) -> None:
        batch = self.open.get((topic, partition))
        if batch is None:
            batch = self.open[(topic, partition)] = self.producer.create_batch()
        if batch.append(key=key, value=value, timestamp=timestamp_ms, headers=list(headers)) is None:
            await self._send(topic, partition, batch)
            batch = self.open[(topic, partition)] = self.producer.create_batch()
            if batch.append(key=key, value=value, timestamp=timestamp_ms, headers=list(headers)) is None:
                raise ValueError(f"a {len(value)}-byte record does not fit in an empty batch; raise max_batch_size")

    async def _send(self, topic: str, partition: int, batch) -> None:
        self.pending.append(await self.producer.send_batch(batch, topic, partition=partition))

    async def send(self) -> list[asyncio.Future]:
        """Send every open batch without waiting: the futures of all sent since the last ``send``/``flush``."""
        for (topic, partition), batch in self.open.items():
            if batch.record_count():
                await self._send(topic, partition, batch)
        self.open.clear()
        sent, self.pending = self.pending, []
        return sent

    async def flush(self) -> None:
        """Send every open batch and wait until the broker acknowledged all sent since the last ``send``."""
        sent = await self.send()
        if sent:
            await asyncio.gather(*sent)
