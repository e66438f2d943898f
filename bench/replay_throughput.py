"""Replay throughput next to a raw aiokafka producer, in the same run, on the same broker.

    python bench/replay_throughput.py --orders 100000 --rounds 2

Generates a synthetic Olist history (or takes --data), starts the embedded broker on free ports
unless SEGSTREAM_KAFKA_BOOTSTRAP is set, then alternates, into fresh topics each time:

- raw: an aiokafka producer (acks=all, linger 5 ms, 256 KB batches: the replay's configuration)
  calling ``send()`` for as many messages as the replay sends customer events, each the replay's
  mean message size, keyed by the same customer ids, awaiting the futures in chunks of 5,000;
- replay: ``replay_history`` (build each event from the frames, validate it with pydantic, encode
  it, append it to per-partition record batches (``create_batch``/``send_batch``, partitions
  precomputed once per customer), acks=all, checkpoint every batch, plus clock ticks).

Rates are customer events (or raw messages) per second of sending; loading the CSVs is timed
separately. The machine is noisy: compare the ratio of the two within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

from replay.olist import load_olist
from replay.producer import ensure_topics, replay_history
from replay.synth import SynthConfig, synthesize
from segstream.schemas import encode_event
from segstream.services import free_port, services_down, services_up
from segstream.settings import Settings


async def raw_producer(settings: Settings, keys: list[bytes], size: int, count: int) -> float:
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings.kafka_bootstrap_servers, [topic], settings.topic_partitions, 1)
    # The same producer configuration as the replay's, so the ratio isolates the replay's own work.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    value = b"x" * size
    started = time.monotonic()
    pending = []
    for i in range(count):
        pending.append(await producer.send(topic, value, key=keys[i % len(keys)]))
        if len(pending) >= 5_000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    elapsed = time.monotonic() - started
    await producer.stop()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000, help="synthetic orders to generate (default 100000)")
    parser.add_argument("--data", type=Path, help="replay these Olist CSVs instead of generating")
    parser.add_argument("--rounds", type=int, default=2, help="alternating raw/replay rounds (default 2)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="segstream-bench-"))
    data = args.data
    if data is None:
        data = workdir / "olist"
        started = time.monotonic()
        synthesize(SynthConfig(orders=args.orders, seed=1), data)
        print(f"synthesized {args.orders:,} orders in {time.monotonic() - started:.1f} s", file=sys.stderr)

    base = Settings(run_dir=workdir / "run", kafka_port=free_port(), redis_port=free_port())
    if base.embedded_kafka:
        services_up(base)
    try:
        started = time.monotonic()
        history = load_olist(data)
        load_s = time.monotonic() - started
        events = list(history.events())
        sizes = [len(encode_event(e)) for e in events]
        keys = list({e.customer_unique_id.encode(): None for e in events})
        mean_size = round(statistics.mean(sizes))
        print(f"loaded {len(events):,} events in {load_s:.1f} s; mean message {mean_size} bytes", file=sys.stderr)
        del events

        raw_rates, replay_rates = [], []
        for round_ in range(args.rounds):
            raw = asyncio.run(raw_producer(base, keys, mean_size, len(sizes)))
            raw_rates.append(raw)
            prefix = f"bench{round_}-{uuid.uuid4().hex[:6]}"
            settings = base.model_copy(
                update={"topic_orders": f"{prefix}.orders", "topic_reviews": f"{prefix}.reviews"}
            )
            summary = asyncio.run(replay_history(history, settings, restart=True))
            replay_rates.append(summary.events_per_s)
            print(
                f"round {round_ + 1}: raw {raw:,.0f} msg/s, replay {summary.events_per_s:,.0f} events/s "
                f"({summary.events_sent:,} events + {summary.ticks_sent:,} ticks in {summary.duration_s:.1f} s)",
                file=sys.stderr,
            )
        figures = {
            "orders": args.orders if args.data is None else None,
            "events": len(sizes),
            "mean_message_bytes": mean_size,
            "load_seconds": round(load_s, 2),
            "raw_producer_msgs_per_s": [round(r) for r in raw_rates],
            "replay_events_per_s": [round(r) for r in replay_rates],
            "ratio_replay_to_raw": [round(p / r, 3) for p, r in zip(replay_rates, raw_rates, strict=True)],
            "partitions": base.topic_partitions,
        }
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        if base.embedded_kafka:
            services_down(base)


if __name__ == "__main__":
    main()
