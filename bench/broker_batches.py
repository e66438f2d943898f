"""Fetch latency of the embedded broker against the number of record batches in a partition.

    python bench/broker_batches.py --batches 5000 --records 2

On a fresh embedded broker: a probe (one record every 10 ms, 300 records, round-robin over 4
partitions) measures send-to-receive latency with an aiokafka consumer (fetch wait 10 ms) on an
empty topic; then the topic gets ``--batches`` record batches of ``--records`` records per
partition; then the probe runs again on that topic and on a second, empty topic. What it showed
(tansu 0.6.0, memory engine): the same 40,000 records cost the probe far more as 20,000 small
batches than as 2,000 larger ones, and a full topic does not slow down another topic. That is why
paced replays flush at most every 10 ms (``replay.producer.PACED_LINGER_S``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from replay.producer import ensure_topics
from segstream.services import free_port, services_down, services_up
from segstream.settings import Settings

PARTITIONS = 4


async def _probe(bootstrap: str, topic: str, records: int = 300) -> dict[str, float]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=10)
    await consumer.start()
    await asyncio.sleep(1)  # assigned, positioned at the end
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    ages: list[float] = []

    async def read() -> None:
        while len(ages) < records:
            batch = await consumer.getmany(timeout_ms=100)
            now_ms = time.time() * 1000
            ages.extend(now_ms - float(m.value) for ms in batch.values() for m in ms if m.value[:1] != b"x")

    reader = asyncio.create_task(read())
    for i in range(records):
        await (await producer.send(topic, str(time.time() * 1000).encode(), partition=i % PARTITIONS))
        await asyncio.sleep(0.01)
    await asyncio.wait_for(reader, 60)
    await producer.stop()
    await consumer.stop()
    p50, p99 = np.percentile(ages, [50, 99])
    return {"p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1)}


async def _fill(bootstrap: str, topic: str, batches: int, records: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0, max_batch_size=1 << 20)
    await producer.start()
    started, payload = time.monotonic(), b"x" * 330
    for _ in range(batches):
        sent = []
        for partition in range(PARTITIONS):
            batch = producer.create_batch()
            for _ in range(records):
                batch.append(key=None, value=payload, timestamp=None)
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)
    await producer.stop()
    return time.monotonic() - started


async def _run(bootstrap: str, batches: int, records: int) -> dict:
    await ensure_topics(bootstrap, ["full", "other"], PARTITIONS, 1)
    figures: dict = {"batches_per_partition": batches, "records_per_batch": records}
    figures["empty_topic"] = await _probe(bootstrap, "full")
    figures["fill_seconds"] = round(await _fill(bootstrap, "full", batches, records), 1)
    figures["full_topic"] = await _probe(bootstrap, "full")
    figures["other_topic"] = await _probe(bootstrap, "other")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=5_000, help="record batches per partition (default 5000)")
    parser.add_argument("--records", type=int, default=2, help="records per batch (default 2)")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="segstream-broker-bench-"))
    settings = Settings(run_dir=run_dir, kafka_port=free_port(), redis_port=free_port())
    services_up(settings)
    try:
        print(json.dumps(asyncio.run(_run(settings.kafka_bootstrap_servers, args.batches, args.records)), indent=2))
    finally:
        services_down(settings)


if __name__ == "__main__":
    main()
