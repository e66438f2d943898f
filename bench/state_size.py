"""Redis bytes per customer after a replay, by key family.

    python bench/state_size.py --orders 20000

One run on the embedded broker and redis-server (fresh, free ports): a generated Olist-like
history is replayed through one worker until every partition processed its end-of-replay tick;
then every key under the run's prefix is measured with ``MEMORY USAGE`` (``SAMPLES 0``: exact for
hashes and sorted sets) and summed by family (the key name's second part: ``profile``,
``applied``, ``due``...). Per customer = family total / profiles. Also ``used_memory`` before
the replay and after it, divided by profiles: everything segstream holds, allocator overhead
included. The encodings of a sample of profile hashes say whether they stayed compact
(listpack/ziplist) or became hash tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

from replay.olist import load_olist
from replay.producer import ensure_topics, replay_history
from replay.synth import SynthConfig, synthesize
from segstream.clients import redis_client
from segstream.demo import start_worker, stop_worker
from segstream.keys import Keys
from segstream.services import free_port, services_down, services_up
from segstream.settings import Settings
from streams.readmodel import replay_consumed


def measure(client: redis.Redis, keys: Keys) -> dict:
    """Bytes by key family under the prefix, per customer, and the profile hashes' encodings."""
    families: Counter = Counter()
    counts: Counter = Counter()
    encodings: Counter = Counter()
    for key in client.scan_iter(match=f"{keys.prefix}:*", count=2000):
        family = key.decode()[len(keys.prefix) + 1 :].split(":", 1)[0]
        families[family] += client.memory_usage(key, samples=0) or 0
        counts[family] += 1
        if family == "profile" and counts[family] <= 2000:
            encodings[client.object("encoding", key).decode()] += 1
    customers = counts["profile"]
    return {
        "customers": customers,
        "bytes_per_customer": {f: round(b / customers, 1) for f, b in families.most_common()},
        "keys": dict(counts.most_common()),
        "profile_encodings (sample)": dict(encodings),
        "profile_plus_dedup_bytes_per_customer": round((families["profile"] + families["applied"]) / customers, 1),
        "all_keys_bytes_per_customer": round(sum(families.values()) / customers, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=20_000, help="orders in the generated history")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="leave the services running (to look at the state)")
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    workdir = Path(tempfile.mkdtemp(prefix="segstream-state-size-"))
    data = workdir / "olist"
    synthesize(SynthConfig(orders=args.orders, seed=args.seed), data)
    settings = Settings(run_dir=workdir / "run", kafka_port=free_port(), redis_port=free_port(), log_level="info")
    services_up(settings)
    try:
        history = load_olist(data)
        topics = [settings.topic_orders, settings.topic_reviews]
        asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, topics, settings.topic_partitions, 1))
        client, keys = redis_client(settings), Keys(settings.redis_prefix)
        used_before = client.info("memory")["used_memory"]
        worker = start_worker(settings, workdir / "worker.log")
        started = time.monotonic()
        summary = asyncio.run(replay_history(history, settings))
        while replay_consumed(settings, summary.replay_id, summary.run_id) < summary.topic_partitions:
            if worker.poll() is not None:
                sys.exit(f"the worker exited ({worker.returncode}); see {workdir / 'worker.log'}")
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        stop_worker(worker)
        figures = {"orders": args.orders, "events": summary.events_total, "seconds": round(elapsed, 1)}
        figures.update(measure(client, keys))
        figures["used_memory_bytes_per_customer"] = round(
            (client.info("memory")["used_memory"] - used_before) / figures["customers"], 1
        )
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        if args.keep:
            print(f"services kept: {settings.redis_address}", file=sys.stderr)
        else:
            services_down(settings)


if __name__ == "__main__":
    main()
