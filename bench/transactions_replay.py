"""A generated Online Retail log: load memory and replay speed, next to Olist data in the same run.

    python bench/transactions_replay.py --invoices 50000 --rounds 2

1. Writes an Online Retail log (``segstream synth --layout online-retail``: ~20 lines per invoice,
   so 50,000 invoices make about a million lines) and a synthetic Olist history.
2. Loads the log in a child process, in chunks (``replay.transactions``), and reports its peak RSS
   next to the file's size and the child's RSS after only importing the loader; then the peak after
   building the timeline and encoding every event, as a replay does.
3. Replays both histories onto the embedded broker (fresh topics each round, alternating):
   events/s of each and their ratio. An Online Retail event carries every line of its invoice (~20
   items), an Olist order event one or two: bytes/s are reported too.

The machine is noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from replay.olist import load_olist
from replay.producer import ensure_topics, replay_history
from replay.synth import SynthConfig, synthesize, synthesize_online_retail
from replay.transactions import load_online_retail
from segstream.kafka import RecordBatches, batch_producer, partition_for
from segstream.schemas import SENT_AT_HEADER, encode_event
from segstream.services import free_port, services_down, services_up
from segstream.settings import Settings

# VmHWM (this process's peak RSS, kB): ru_maxrss would carry the parent's peak over fork + exec
PEAK = """
import sys, time
from replay.transactions import load_online_retail
def peak():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
base = peak()
started = time.monotonic()
history = load_online_retail(sys.argv[1])
loaded, load_s = peak(), time.monotonic() - started
timeline, encode = history.timeline(), history.encoder()  # what a replay holds beside the history
sent = sum(len(encode(k, r)) for k, r in zip(timeline.kind.tolist(), timeline.row.tolist()) if k)
print(base, loaded, load_s, len(history.placed), peak(), sent)
"""


def wire(history) -> list[tuple[bytes, bytes]]:
    """(key, payload) of every customer event in replay order, encoded beforehand."""
    timeline, encode = history.timeline(tick_seconds=None), history.encoder()
    rows = zip(timeline.customer.tolist(), timeline.kind.tolist(), timeline.row.tolist(), strict=True)
    return [(customer.encode(), encode(kind, row)) for customer, kind, row in rows]


async def send_only(records: list[tuple[bytes, bytes]], settings: Settings, batch: int) -> float:
    """Events/s of the replay's sending alone: payloads made beforehand, the replay's producer and
    batching (one topic, key partitioning; every ``batch`` records, the previous ``batch`` must be
    acknowledged, as the replay's checkpoints do). The floor of the replay's cost per event, which
    encoding cannot go below: it grows with the bytes."""
    topic = settings.topic_orders
    partitions = (await ensure_topics(settings.kafka_bootstrap_servers, [topic], settings.topic_partitions, 1))[topic]
    producer = batch_producer(settings.kafka_bootstrap_servers, "bench-send-only")
    await producer.start()
    batches = RecordBatches(producer)
    try:
        started, in_flight = time.monotonic(), []
        for n, (key, payload) in enumerate(records, 1):
            partition = partition_for(key.decode(), partitions)
            await batches.append(topic, partition, key, payload, 0, ((SENT_AT_HEADER, b"0"),))
            if n % batch == 0:
                sent = await batches.send()
                await asyncio.gather(*in_flight)
                in_flight = sent
        await batches.flush()
        await asyncio.gather(*in_flight)
        return len(records) / (time.monotonic() - started)
    finally:
        await producer.stop()


def mean_bytes(history) -> float:
    sizes = [len(encode_event(e)) for _, e in zip(range(20_000), history.events(), strict=False)]
    return sum(sizes) / max(1, len(sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invoices", type=int, default=50_000, help="invoices in the log (default 50000: ~1M lines)")
    parser.add_argument("--olist-orders", type=int, default=50_000, help="orders of the Olist history (default 50000)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="segstream-bench-tx-"))
    started = time.monotonic()
    lines = synthesize_online_retail(SynthConfig(orders=args.invoices, seed=1), workdir / "retail")
    log = workdir / "retail" / "online_retail.csv"
    synthesize(SynthConfig(orders=args.olist_orders, seed=1), workdir / "olist")
    print(
        f"generated {sum(lines.values()):,} lines and {args.olist_orders:,} Olist orders "
        f"in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )

    child = subprocess.run([sys.executable, "-c", PEAK, str(log)], capture_output=True, text=True, check=True)
    base_kb, peak_kb, load_s, invoices, encoded_peak_kb, _ = child.stdout.split()
    print(
        f"loaded {log.stat().st_size / 1e6:.0f} MB in {float(load_s):.1f} s: peak RSS {int(peak_kb) / 1024:.0f} MB "
        f"(after imports {int(base_kb) / 1024:.0f} MB); {int(encoded_peak_kb) / 1024:.0f} MB after encoding "
        "every event as a replay does",
        file=sys.stderr,
    )

    retail, olist = load_online_retail(log), load_olist(workdir / "olist")
    sizes = {"online-retail": mean_bytes(retail), "olist": mean_bytes(olist)}
    base = Settings(run_dir=workdir / "run", kafka_port=free_port(), redis_port=free_port())
    if base.embedded_kafka:
        services_up(base)
    rates: dict[str, list[float]] = {"online-retail": [], "olist": []}
    prepares: dict[str, list[float]] = {"online-retail": [], "olist": []}
    floors: dict[str, list[float]] = {"online-retail": [], "olist": []}
    records = {"online-retail": wire(retail), "olist": wire(olist)}
    try:
        for round_ in range(args.rounds):
            for name, history in (("online-retail", retail), ("olist", olist)):
                prefix = f"tx{round_}-{uuid.uuid4().hex[:6]}"
                settings = base.model_copy(
                    update={"topic_orders": f"{prefix}.orders", "topic_reviews": f"{prefix}.reviews"}
                )
                summary = asyncio.run(replay_history(history, settings, restart=True))
                rates[name].append(summary.events_per_s)
                prepares[name].append(summary.prepare_s)
                print(
                    f"round {round_ + 1} {name}: {summary.events_sent:,} events at {summary.events_per_s:,.0f}/s "
                    f"(prepared in {summary.prepare_s:.2f} s: timeline, topics, encoder)",
                    file=sys.stderr,
                )
                settings = settings.model_copy(update={"topic_orders": f"{prefix}.send-only"})
                floors[name].append(asyncio.run(send_only(records[name], settings, base.replay_batch)))
                print(f"round {round_ + 1} {name}: sending alone {floors[name][-1]:,.0f} events/s", file=sys.stderr)
    finally:
        if base.embedded_kafka:
            services_down(base)
    figures = {
        "lines": sum(lines.values()),
        "log_mb": round(log.stat().st_size / 1e6, 1),
        "invoices_loaded": int(invoices),
        "load_seconds": round(float(load_s), 1),
        "load_peak_rss_mb": round(int(peak_kb) / 1024),
        "encode_all_peak_rss_mb": round(int(encoded_peak_kb) / 1024),
        "rss_after_imports_mb": round(int(base_kb) / 1024),
        "events": {"online-retail": sum(retail.event_counts().values()), "olist": sum(olist.event_counts().values())},
        "mean_event_bytes": {k: round(v) for k, v in sizes.items()},
        "events_per_s": {k: [round(r) for r in v] for k, v in rates.items()},
        "ratio_online_retail_to_olist": [
            round(a / b, 3) for a, b in zip(rates["online-retail"], rates["olist"], strict=True)
        ],
        "send_only_events_per_s": {k: [round(r) for r in v] for k, v in floors.items()},
        "send_only_ratio": [round(a / b, 3) for a, b in zip(floors["online-retail"], floors["olist"], strict=True)],
        "prepare_seconds": {k: [round(p, 2) for p in v] for k, v in prepares.items()},
        "bytes_per_s_mb": {k: [round(r * sizes[k] / 1e6, 1) for r in v] for k, v in rates.items()},
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
