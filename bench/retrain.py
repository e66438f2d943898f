"""Retrain time and peak memory at full Olist size and 10x, and the stream's rate while it runs.

    python bench/retrain.py --orders 100000 --scale 10

On the embedded redis-server (and broker, for the stream phase), fresh and on free ports:

1. state: a synthetic history of --orders orders is generated, folded into profiles exactly as
   the stream folds them (``Profile.apply``, then evaluated at the last event), and written to
   Redis with the watermarks, as a worker would have left them; with --campaigns N, N planted
   campaigns too, their sends stored by the workers' own script. Not timed as part of the job.
2. retrain: ``segstream retrain --once`` in a process of its own (so its peak RSS is the job's):
   read every profile, fit CLV and ALS, refresh thresholds, write scores and lists, switch.
   Reported: the job's own phase timings, its wall time including interpreter start and imports,
   and its peak RSS. Then the same at --scale times the orders.
3. stream during a retrain (base size only): a worker consumes a paced replay (--stream-rate
   events/s) of the same history into a Redis prefix of its own; the applied events/s are
   measured over the retrain's duration and over the same time just before it.

4. ranking: recall@10 of the job's ranking against an exhaustive one, on 5,000 random buyers
   (``ranking_recall``), at both sizes.

Each retrain is bracketed by a fixed ranking workload (``machine_probe_s``): its time shows how
fast the machine was, since this one drifts by 20-30% within the hour.

Targets: under 20 s at full size (~100k orders, ~96k customers, ~25k products); under 60 s at 10x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

from replay.olist import load_olist
from replay.producer import ensure_topics, replay_history
from replay.synth import SynthConfig, synthesize
from segstream.demo import start_worker, stop_worker
from segstream.kafka import partition_for
from segstream.keys import Keys
from segstream.partitioned import counters
from segstream.schemas import CampaignSent
from segstream.scoring import ChurnRules, RfmScorer
from segstream.scripts import lua
from segstream.services import free_port, services_down, services_up
from segstream.settings import Settings, settings_env
from streams.profile import Profile


def build_state(settings: Settings, data: Path) -> dict:
    """Fold the history into profiles and store them (and the watermarks and campaign sends) in Redis."""
    from replay.sources import load_source

    started = time.monotonic()
    history = load_source("olist", data)  # with the campaigns.csv beside the files, if any
    client, keys = redis.Redis.from_url(settings.redis_address), Keys(settings.redis_prefix)
    store_sends = client.register_script(lua("streams", "campaigns.lua"))
    count = settings.topic_partitions
    profiles: dict[str, Profile] = {}
    sends: list[list[str]] = [[] for _ in range(count)]  # per partition, as a worker stores them
    last = 0.0

    def flush_sends(partition: int) -> None:
        part = keys.partition(partition)
        store_sends(keys=[part.campaign_sends, part.campaigns, part.counters], args=[0, *sends[partition]])
        sends[partition] = []

    for event in history.events():
        if isinstance(event, CampaignSent):
            partition = partition_for(event.customer_unique_id, count)
            sends[partition] += [event.event_id, event.campaign_id, event.customer_unique_id]
            sends[partition] += [repr(event.event_time.timestamp()), event.group, event.offer]
            if len(sends[partition]) >= 6_000:
                flush_sends(partition)
            continue
        customer = event.customer_unique_id
        profile = profiles.get(customer)
        if profile is None:
            profile = profiles[customer] = Profile(customer)
        profile.apply(event)
        last = max(last, event.event_time.timestamp())
    for partition in range(count):
        if sends[partition]:
            flush_sends(partition)
    scorer, rules = RfmScorer(), ChurnRules()
    pipe = client.pipeline(transaction=False)
    for n, profile in enumerate(profiles.values(), 1):
        profile.evaluate(last, scorer, rules)
        customer = profile.customer_unique_id
        pipe.hset(keys.partition(partition_for(customer, count)).profile(customer), mapping=profile.changed_fields())
        if n % 5_000 == 0:
            pipe.execute()
    for partition in range(count):
        pipe.hset(keys.partition(partition).watermarks, str(partition), last)
    pipe.sadd(keys.partition_numbers, *range(count))
    pipe.execute()
    products = {p for profile in profiles.values() for p in profile.products}
    return {
        "customers": len(profiles),
        "products": len(products),
        "campaign_sends": len(history.campaigns),
        "build_seconds": round(time.monotonic() - started, 1),
    }


def machine_probe() -> float:
    """Seconds for a fixed workload like the job's ranking (random factors, 10,000 x 25,000, top 14):
    taken before and after each retrain, it shows how fast this (noisy, shared) machine was."""
    import numpy as np
    from implicit.cpu.topk import topk

    rng = np.random.default_rng(0)
    users = rng.standard_normal((10_000, 32), dtype=np.float32)
    items = rng.standard_normal((25_000, 32), dtype=np.float32)
    started = time.perf_counter()
    topk(items, users, 14, num_threads=0)
    return round(time.perf_counter() - started, 3)


def ranking_recall(settings: Settings, sample: int = 5_000, n: int = 10) -> dict:
    """recall@n of the job's ranking (``AlsRecommender.recommend``: norm-ordered, exact by its
    bound) against an exhaustive ranking of every product (implicit's ``topk`` with the bought
    ones filtered), on ``sample`` random buyers of the state in Redis, with ALS fitted as the job
    fits it. Also the seconds of each for the sample."""
    from datetime import UTC, datetime

    import numpy as np
    from implicit.cpu.topk import topk

    from models.als import AlsRecommender, dense_factors, interaction_matrix
    from models.population import read_population
    from models.retrain import watermark

    client, keys = redis.Redis.from_url(settings.redis_address), Keys(settings.redis_prefix)
    population = read_population(client, keys)
    until = datetime.fromtimestamp(watermark(client, keys), tz=UTC).date().isoformat()
    matrix, _, _ = interaction_matrix(population.baskets(until)[0])
    als = AlsRecommender(factors=settings.als_factors, iterations=settings.als_iterations,
                         threads=settings.als_threads).fit(matrix)  # fmt: skip
    buyers = np.flatnonzero(np.diff(matrix.indptr) > 0)
    rows = np.sort(np.random.default_rng(0).choice(buyers, min(sample, len(buyers)), replace=False))
    started = time.perf_counter()
    found = als.recommend(rows, n)
    job_s = time.perf_counter() - started
    users, items = dense_factors(als.model_.user_factors)[rows], dense_factors(als.model_.item_factors)
    started = time.perf_counter()
    exhaustive, _ = topk(items, users, n, filter_query_items=matrix[rows], num_threads=0)
    exhaustive_s = time.perf_counter() - started
    hits = [len(set(a) & set(b.tolist())) / len(b) for a, b in zip(found, exhaustive, strict=True)]
    return {f"recall_at_{n}": round(float(np.mean(hits)), 4), "sample": len(rows),
            "sample_seconds_job_ranking": round(job_s, 2), "sample_seconds_exhaustive": round(exhaustive_s, 2),
            "settled_at_head_size": {int(k): v for k, v in sorted(als.by_norm_.settled_at_.items())}}  # fmt: skip


def run_retrain(settings: Settings) -> dict:
    """``segstream retrain --once`` in its own process; its report, wall time and peak RSS."""
    # The job's own peak: a forked child starts with its parent's resident set as its high-water mark
    # (ru_maxrss), and this parent holds the whole generated history; so the child resets the mark
    # (clear_refs 5) and reports VmHWM.
    code = (
        "import json, sys; open('/proc/self/clear_refs', 'w').write('5')\n"
        "from models.retrain import retrain_once; from segstream.settings import Settings\n"
        "report = retrain_once(Settings())\n"
        "hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0].split()[1]\n"
        "report.peak_rss_mb = round(int(hwm) / 1024, 1)\n"
        "print(json.dumps({k: v for k, v in vars(report).items() if k != 'models'}))"
    )
    env = {**os.environ, **settings_env(settings), "OPENBLAS_NUM_THREADS": "1"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["process_seconds"] = round(time.monotonic() - started, 1)
    return report


def stream_during_retrain(settings: Settings, data: Path, job: Settings, rate: float, workdir: Path) -> dict:
    stream = settings.model_copy(
        update={"redis_prefix": "bench-stream", "app_id": "bench-stream", "topic_orders": "b.orders",
                "topic_reviews": "b.reviews", "run_dir": workdir / "stream-run"}
    )  # fmt: skip
    asyncio.run(ensure_topics(stream.kafka_bootstrap_servers, [stream.topic_orders, stream.topic_reviews], 4, 1))
    worker = start_worker(stream, workdir / "worker.log")
    client, keys = redis.Redis.from_url(stream.redis_address), Keys(stream.redis_prefix)

    def applied() -> int:
        return counters(client, keys).get("applied", 0)

    history = load_olist(data)
    thread = threading.Thread(target=lambda: asyncio.run(replay_history(history, stream, rate=rate)), daemon=True)
    try:
        time.sleep(8)  # the worker joins its group
        thread.start()
        while applied() < rate * 10:  # steady state
            time.sleep(0.5)
        first = applied()
        started = time.monotonic()
        report = run_retrain(job)
        during = (applied() - first) / (time.monotonic() - started)
        window = time.monotonic() - started
        first, started = applied(), time.monotonic()
        time.sleep(window)
        after = (applied() - first) / (time.monotonic() - started)
    finally:
        stop_worker(worker, timeout_s=15)
    return {
        "replay_rate": rate,
        "applied_per_s_during_retrain": round(during),
        "applied_per_s_after_retrain": round(after),
        "retrain_seconds_beside_stream": report["process_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--scale", type=int, default=10, help="also run at this many times the orders (1: skip)")
    parser.add_argument("--stream-rate", type=float, default=1_000.0, help="paced replay events/s (0: skip)")
    parser.add_argument("--campaigns", type=int, default=0, help="planted campaigns (the uplift model's input)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="segstream-bench-retrain-"))
    base = Settings(run_dir=workdir / "run", kafka_port=free_port(), redis_port=free_port(), log_level="warning")
    services_up(base)
    figures: dict = {}
    try:
        sizes = [args.orders] + ([args.orders * args.scale] if args.scale > 1 else [])
        for orders in sizes:
            data = workdir / f"data-{orders}"
            synthesize(SynthConfig(orders=orders, seed=7, campaigns=args.campaigns), data)
            update = {"redis_prefix": f"bench-{orders}", "models_dir": workdir / f"models-{orders}"}
            job = base.model_copy(update=update)
            state = build_state(job, data)
            print(f"{orders:,} orders: state {state}", flush=True)
            before = machine_probe()
            report = run_retrain(job)
            figures[orders] = {**state, "retrain": report, "machine_probe_s": [before, machine_probe()]}
            figures[orders]["ranking"] = ranking_recall(job)
            print(json.dumps(figures[orders], indent=2), flush=True)
            if orders == args.orders and args.stream_rate > 0:
                figures["stream"] = stream_during_retrain(base, data, job, args.stream_rate, workdir)
                print(json.dumps(figures["stream"], indent=2), flush=True)
            redis.Redis.from_url(base.redis_address).flushdb(asynchronous=True)
            shutil.rmtree(data, ignore_errors=True)
    finally:
        services_down(base)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
