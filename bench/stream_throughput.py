"""Stream throughput and latency, next to a raw aiokafka consumer and a bare Faust agent.

    python bench/stream_throughput.py --orders 100000

One run, on the embedded broker and redis-server (fresh, free ports), a synthetic history:

0. a bare Faust agent (4, stock) on a first replay of the same history into topics of its own:
   with (4) after the segstream runs, it brackets them in time (this machine's speed drifts by
   up to 1.6x within minutes); ratios are to the mean of the two.
1. end-to-end: a segstream worker is started and has joined its group; the replay starts; the
   clock stops when every partition's end-of-replay tick has been processed (the last Redis
   update). events/s = customer events / that time.
2. catch-up: a second, fresh worker group reads the same (now full) topics; events/s from its
   first applied event to the end. Directly comparable with (3) and (4).
3. raw aiokafka: a consumer reading both topics from the start with getmany + json.loads until
   every final tick.
4. bare Faust agent: an agent that only decodes (json.loads) and counts the same messages, same
   short broker timeouts, until every final tick; stock Faust, then on segstream's batch drain loop.
5. latency: on fresh services (a broker and a Redis holding only this phase's state), replay at a
   constant --rate events/s with the worker running; the worker records, per record,
   Redis-update time minus the replay's send time (a Kafka header). Redis forks during the
   phase (AOF rewrites, which cost latency on 2 cores) are counted. First, the broker's own
   floor on the same services: the same paced replay into topics of its own, read by a raw
   aiokafka consumer (same fetch wait as the worker) that records receive time minus send time.
   The embedded broker's fetches slow down as a partition's record batches accumulate (tansu
   0.6.0 memory engine; see the README, Benchmarks), so no consumer beats that floor.
6. Redis bytes per customer: MEMORY USAGE of the profile hash (with its applied digests), sampled.
   CPU: in phases 1 and 2, the CPU seconds (user + system, /proc) of the worker, the broker and
   redis-server over the phase, per 1,000 events, and Redis's commands per event (INFO
   commandstats, which counts the commands inside scripts too). From the catch-up's figures, the
   scaling projection: how many workers one Redis (or one Redis Cluster node, which is one
   single-threaded redis-server holding its share of the partitions) and one broker core can
   feed before they saturate, each worker on a core of its own (worker CPU per event / Redis CPU
   per event), and the events/s at which one Redis saturates (1 / Redis CPU per event).
7. analytics cost (``--analytics-cost``, or alone with ``--analytics-only``): the end-to-end run
   of (1) three times on topics and prefixes of their own, with the analytics read models, without
   them (``SEGSTREAM_WORKER_ANALYTICS=false``), and with them again, so the two runs with them
   bracket the one without in time; the ratio is to their mean. Then MEMORY USAGE of each read
   model's hash, in total and per customer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import redis
from aiokafka import AIOKafkaConsumer

from replay.olist import load_olist
from replay.producer import ensure_topics, replay_history
from replay.synth import SynthConfig, synthesize
from segstream.demo import start_worker, stop_worker
from segstream.keys import Keys
from segstream.partitioned import counters, partitions
from segstream.schemas import SENT_AT_HEADER
from segstream.services import free_port, services_down, services_status, services_up
from segstream.settings import Settings
from streams.readmodel import replay_consumed


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat; children not included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds of the worker, the broker and redis-server, and Redis's commands, over a window."""

    def __init__(self, settings: Settings, worker_pid: int) -> None:
        pids = {status.name: status.pid for status in services_status(settings)}
        self.pids = {"worker": worker_pid, "broker": pids["kafka"], "redis": pids["redis"]}
        self.client = redis.Redis.from_url(settings.redis_address)
        self.started = {name: _cpu_s(pid) for name, pid in self.pids.items()}
        self.commands = self._commands()

    def _commands(self) -> int:
        return sum(stats["calls"] for stats in self.client.info("commandstats").values())

    def per_1000_events(self, events: int) -> dict:
        """CPU seconds per 1,000 events of each process, and Redis commands per event, since the start."""
        used = {name: _cpu_s(pid) - self.started[name] for name, pid in self.pids.items()}
        figures = {f"{name}_cpu_s_per_1000_events": round(1000 * s / events, 4) for name, s in used.items()}
        figures["redis_commands_per_event"] = round((self._commands() - self.commands) / events, 2)
        return figures


def _projection(cpu: dict) -> dict:
    """How far one Redis (one Redis Cluster node) and one broker core go, from per-event CPU."""
    worker, redis_cpu, broker = (cpu[f"{n}_cpu_s_per_1000_events"] for n in ("worker", "redis", "broker"))
    return {
        "workers_per_redis_node_a_core_each": round(worker / redis_cpu, 1),
        "workers_per_broker_core": round(worker / broker, 1),
        "events_per_s_one_worker_on_a_core": round(1000 / worker),
        "events_per_s_one_redis_node_saturates_at": round(1000 / redis_cpu),
    }


def _variant(base: Settings, tag: str) -> Settings:
    return base.model_copy(
        update={
            "app_id": f"bench-{tag}",
            "redis_prefix": f"bench-{tag}",
            "topic_segment_changes": f"{tag}.segment-changes",
            "topic_churn_signals": f"{tag}.churn-signals",
            "topic_dead_letter": f"{tag}.dead-letter",
        }
    )


def _create_topics(settings: Settings) -> None:
    topics = [settings.topic_orders, settings.topic_reviews]
    asyncio.run(
        ensure_topics(settings.kafka_bootstrap_servers, topics, settings.topic_partitions, settings.topic_replication)
    )


def _wait_ready(log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and "Worker]: Ready" in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"worker not ready in {timeout_s} s; see {log}")


def _wait_consumed(settings: Settings, replay_id: str, run_id: str, partitions: int, timeout_s: float = 3600):
    """(time of the first applied event, time every partition processed the final tick)."""
    client, keys = redis.Redis.from_url(settings.redis_address), Keys(settings.redis_prefix)
    deadline, first = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        if first is None and counters(client, keys).get("consumed"):
            first = time.monotonic()
        if replay_consumed(settings, replay_id, run_id) == partitions:
            return first or time.monotonic(), time.monotonic()
        time.sleep(0.05)
    raise RuntimeError("worker did not finish")


async def _raw_consume(settings: Settings, replay_id: str, partitions: int) -> tuple[int, float]:
    consumer = AIOKafkaConsumer(
        settings.topic_orders,
        settings.topic_reviews,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    count, finals, started = 0, set(), None
    while len(finals) < partitions:
        batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
        started = started or time.monotonic()
        for tp, messages in batch.items():
            for message in messages:
                data = json.loads(message.value)
                count += 1
                if data.get("final") and data.get("replay_id") == replay_id:
                    finals.add((tp.topic, tp.partition))
    elapsed = time.monotonic() - started
    await consumer.stop()
    return count, elapsed


BARE_AGENT = textwrap.dedent(
    """
    import json, os, sys, time, faust
    bootstrap, orders, reviews, replay_id, partitions, out = os.environ["BARE_ARGS"].split(" ")
    App = faust.App
    if os.environ.get("BARE_BATCH_DRAIN"):  # the same agent on segstream's batch drain loop (streams/consumer.py)
        from streams.consumer import WorkerApp as App
    app = App("bare-" + replay_id + str(time.time()), broker="kafka://" + bootstrap, value_serializer="raw",
                    broker_session_timeout=6, broker_rebalance_timeout=5, broker_heartbeat_interval=1,
                    web_enabled=False, consumer_auto_offset_reset="earliest",
                    datadir=os.path.join(os.path.dirname(out), "bare-data"))  # not the working directory
    state = {"count": 0, "finals": set(), "first": None}
    @app.agent(app.topic(orders, reviews, value_serializer="raw"))
    async def count(stream):
        async for values in stream.take(1000, within=0.5):
            state["first"] = state["first"] or time.monotonic()
            for value in values:
                data = json.loads(value)
                state["count"] += 1
                if data.get("final") and data.get("replay_id") == replay_id:
                    state["finals"].add((data["topic"], data["partition"]))
            if len(state["finals"]) == int(partitions):
                with open(out, "w") as f:
                    json.dump({"count": state["count"], "seconds": time.monotonic() - state["first"]}, f)
    app.main()
    """
)


RAW_LATENCY = textwrap.dedent(
    """
    import asyncio, signal, sys, time
    from aiokafka import AIOKafkaConsumer
    bootstrap, orders, reviews, header, fetch_wait, out = sys.argv[1:7]
    async def main():
        consumer = AIOKafkaConsumer(orders, reviews, bootstrap_servers=bootstrap, group_id=None,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=int(fetch_wait))
        await consumer.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        ages = []
        open(out + ".ready", "w").close()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            now_ms = time.time() * 1000
            for messages in batch.values():
                for message in messages:
                    ages.extend(now_ms - int(v) for k, v in message.headers or () if k == header)
        await consumer.stop()
        with open(out, "w") as f:
            f.write("\\n".join(f"{age:.1f}" for age in ages))
    asyncio.run(main())
    """
)


def _broker_floor(settings: Settings, history, rate: float, events: int, workdir: Path) -> list[float]:
    """Send-to-receive latency of a raw aiokafka consumer during a paced replay (ms, per record)."""
    _create_topics(settings)
    script, out = workdir / "raw_latency.py", workdir / "raw-latency.txt"
    script.write_text(RAW_LATENCY)
    args = [settings.kafka_bootstrap_servers, settings.topic_orders, settings.topic_reviews, SENT_AT_HEADER]
    args += [str(settings.worker_fetch_wait_ms), str(out)]
    proc = subprocess.Popen([sys.executable, str(script), *args], stderr=(workdir / "raw-latency.log").open("w"))
    deadline = time.monotonic() + 60
    while not Path(f"{out}.ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"raw latency consumer failed: {(workdir / 'raw-latency.log').read_text()[-2000:]}")
        time.sleep(0.1)
    time.sleep(2)  # partitions assigned and first (empty) fetches done
    asyncio.run(replay_history(history, settings, rate=rate, max_events=events))
    time.sleep(3)
    proc.terminate()
    proc.wait(timeout=30)
    return [float(v) for v in out.read_text().split()]


def _bare_faust(
    settings: Settings, replay_id: str, partitions: int, workdir: Path, batch_drain: bool = False
) -> tuple[int, float]:
    script, out = workdir / "bare_agent.py", workdir / f"bare-{int(batch_drain)}.json"
    script.write_text(BARE_AGENT)
    out.unlink(missing_ok=True)  # the agent writes it when done: a previous run's must not count
    args = [settings.kafka_bootstrap_servers, settings.topic_orders, settings.topic_reviews, replay_id, str(partitions)]
    proc = subprocess.Popen(
        [sys.executable, str(script), "worker", "-l", "warn", "--without-web"],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "bare.log").open("w"),
        env={**os.environ, "BARE_ARGS": " ".join([*args, str(out)]), "BARE_BATCH_DRAIN": "1" if batch_drain else ""},
    )
    deadline = time.monotonic() + 1800
    while not out.exists() and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bare Faust agent exited: {(workdir / 'bare.log').read_text()[-2000:]}")
        time.sleep(0.2)
    stop_worker(proc)
    result = json.loads(out.read_text())
    return result["count"], result["seconds"]


def _end_to_end(settings: Settings, history, workdir: Path, name: str) -> tuple[int, float]:
    """(customer events, seconds) of one end-to-end run (phase 1) on ``settings``' own topics."""
    _create_topics(settings)
    log = workdir / f"{name}-worker.log"
    worker = start_worker(settings, log)
    _wait_ready(log)
    started = time.monotonic()
    summary = asyncio.run(replay_history(history, settings))
    _, finished = _wait_consumed(settings, summary.replay_id, summary.run_id, 2 * settings.topic_partitions)
    stop_worker(worker)
    return summary.events_total, finished - started


def _analytics_cost(base: Settings, history, workdir: Path, tag: str, figures: dict) -> None:
    from streams.analytics import READ_MODELS

    rates = {}
    for name, on in (("with", True), ("without", False), ("with_again", True)):
        run = _variant(base, f"an{name[:4]}{tag}{int(on)}{len(rates)}").model_copy(
            update={
                "topic_orders": f"{tag}.an{len(rates)}.orders",
                "topic_reviews": f"{tag}.an{len(rates)}.reviews",
                "worker_analytics": on,
            }
        )
        events, seconds = _end_to_end(run, history, workdir, f"analytics-{name}")
        rates[name] = events / seconds
        print(f"end-to-end {name} analytics: {rates[name]:,.0f} events/s", file=sys.stderr)
        if name == "with":
            client, keys = redis.Redis.from_url(run.redis_address), Keys(run.redis_prefix)
            parts = partitions(client, keys)
            sizes = {m: sum(client.memory_usage(p.analytics(m)) or 0 for p in parts) for m in READ_MODELS}
            fields = {m: sum(client.hlen(p.analytics(m)) for p in parts) for m in READ_MODELS}
            customers = sum(1 for _ in client.scan_iter(match=keys.profiles_pattern, count=1000))
            figures["analytics_redis_bytes"] = sizes
            figures["analytics_redis_fields"] = fields
            figures["analytics_redis_bytes_total"] = sum(sizes.values())
            figures["analytics_redis_bytes_per_customer"] = round(sum(sizes.values()) / max(customers, 1), 2)
    with_mean = (rates["with"] + rates["with_again"]) / 2
    figures["analytics_end_to_end_events_per_s"] = {k: round(v) for k, v in rates.items()}
    figures["ratio_with_analytics_to_without"] = round(with_mean / rates["without"], 3)
    print(json.dumps(figures, indent=2), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2_000, help="events/s for the latency run (default 2000)")
    parser.add_argument("--latency-seconds", type=float, default=20, help="length of the latency run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--dump-latencies", type=Path, help="write the latency run's samples (ms) to this file")
    parser.add_argument("--latency-only", action="store_true", help="only the paced latency run (5); skip 1-4 and 6")
    parser.add_argument("--analytics-cost", action="store_true", help="also the analytics cost runs (7)")
    parser.add_argument("--analytics-only", action="store_true", help="only the analytics cost runs (7)")
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    workdir = Path(tempfile.mkdtemp(prefix="segstream-stream-bench-"))
    data = workdir / "olist"
    synthesize(SynthConfig(orders=args.orders, seed=1), data)
    base = Settings(run_dir=workdir / "run", kafka_port=free_port(), redis_port=free_port(), log_level="info")
    services_up(base)
    figures: dict = {"orders": args.orders}
    try:
        history = load_olist(data)
        tag = uuid.uuid4().hex[:6]
        if args.analytics_only or args.analytics_cost:
            _analytics_cost(base, history, workdir, tag, figures)
        if args.analytics_only:
            print(json.dumps(figures, indent=2))
            if args.json:
                args.json.write_text(json.dumps(figures, indent=2))
            return
        if not args.latency_only:
            e2e = _variant(base, f"e2e{tag}").model_copy(
                update={"topic_orders": f"{tag}.orders", "topic_reviews": f"{tag}.reviews"}
            )
            partitions = 2 * e2e.topic_partitions
            before = e2e.model_copy(update={"topic_orders": f"{tag}.pre.orders", "topic_reviews": f"{tag}.pre.reviews"})
            _create_topics(before)
            pre = asyncio.run(replay_history(history, before))
            count, seconds = _bare_faust(before, pre.replay_id, partitions, workdir)
            figures["bare_faust_before_msgs_per_s"] = round(count / seconds)
            print(f"bare Faust, before: {figures['bare_faust_before_msgs_per_s']} msgs/s", file=sys.stderr)
            _create_topics(e2e)
            worker = start_worker(e2e, workdir / "e2e-worker.log")
            _wait_ready(workdir / "e2e-worker.log")
            meter = CpuMeter(e2e, worker.pid)
            started = time.monotonic()
            summary = asyncio.run(replay_history(history, e2e))
            _, finished = _wait_consumed(e2e, summary.replay_id, summary.run_id, partitions)
            events = summary.events_total
            figures["cpu_end_to_end"] = meter.per_1000_events(events)  # the broker also took the replay
            stop_worker(worker)
            figures["events"] = events
            figures["ticks"] = summary.ticks_sent
            figures["replay_events_per_s"] = round(summary.events_per_s)
            figures["end_to_end_events_per_s"] = round(events / (finished - started))
            print(f"end-to-end: {events:,} events in {finished - started:.1f} s", file=sys.stderr)

            client, keys = redis.Redis.from_url(e2e.redis_address), Keys(e2e.redis_prefix)
            sample = [
                k for k, _ in zip(client.scan_iter(match=keys.profiles_pattern, count=1000), range(2000), strict=False)
            ]
            per_customer = [
                client.memory_usage(key) or 0  # the applied digests are in the profile
                for key in sample
            ]
            figures["redis_bytes_per_customer"] = round(float(np.mean(per_customer)))
            figures["redis_used_memory_mb"] = round(client.info("memory")["used_memory"] / 1e6, 1)

            catch_up = _variant(e2e, f"cu{tag}")
            worker = start_worker(catch_up, workdir / "catchup-worker.log")
            _wait_ready(workdir / "catchup-worker.log")  # its start-up (imports) is not counted
            meter = CpuMeter(catch_up, worker.pid)
            first, last = _wait_consumed(catch_up, summary.replay_id, summary.run_id, partitions)
            figures["cpu_catch_up"] = meter.per_1000_events(events)
            figures["projection"] = _projection(figures["cpu_catch_up"])
            stop_worker(worker)
            figures["catch_up_msgs_per_s"] = round((events + summary.ticks_sent) / (last - first))
            figures["catch_up_events_per_s"] = round(events / (last - first))
            print(json.dumps(figures), file=sys.stderr)

            count, seconds = asyncio.run(_raw_consume(e2e, summary.replay_id, partitions))
            figures["raw_aiokafka_msgs_per_s"] = round(count / seconds)
            print(f"raw aiokafka: {figures['raw_aiokafka_msgs_per_s']} msgs/s", file=sys.stderr)
            count, seconds = _bare_faust(e2e, summary.replay_id, partitions, workdir)
            figures["bare_faust_after_msgs_per_s"] = round(count / seconds)
            figures["messages_incl_ticks"] = count
            figures["end_to_end_msgs_per_s"] = round(count / (finished - started))
            bare = (figures["bare_faust_before_msgs_per_s"] + figures["bare_faust_after_msgs_per_s"]) / 2
            figures["bare_faust_msgs_per_s"] = round(bare)
            figures["ratio_end_to_end_to_bare_faust"] = round(figures["end_to_end_msgs_per_s"] / bare, 3)
            figures["ratio_catch_up_to_bare_faust"] = round(figures["catch_up_msgs_per_s"] / bare, 3)
            count, seconds = _bare_faust(e2e, summary.replay_id, partitions, workdir, batch_drain=True)
            figures["bare_faust_batch_drain_msgs_per_s"] = round(count / seconds)
            print(json.dumps(figures), file=sys.stderr)

        # latency at a fixed rate, on fresh services: the earlier phases' state (hundreds of MB)
        # would otherwise be rewritten by Redis's AOF during this phase
        if not args.latency_only:
            services_down(base)
            base = base.model_copy(
                update={"run_dir": workdir / "run-latency", "kafka_port": free_port(), "redis_port": free_port()}
            )
            services_up(base)
        events = int(args.rate * args.latency_seconds)
        floor = _variant(base, f"floor{tag}").model_copy(
            update={"topic_orders": f"{tag}.floor.orders", "topic_reviews": f"{tag}.floor.reviews"}
        )
        ages = _broker_floor(floor, history, args.rate, events, workdir)
        figures["latency_floor_samples"] = len(ages)
        figures["latency_floor_p50_ms"] = round(float(np.percentile(ages, 50)), 1)
        figures["latency_floor_p99_ms"] = round(float(np.percentile(ages, 99)), 1)
        print(
            f"broker floor (raw aiokafka consumer): p50 {figures['latency_floor_p50_ms']} ms, "
            f"p99 {figures['latency_floor_p99_ms']} ms",
            file=sys.stderr,
        )
        lat = _variant(base, f"lat{tag}").model_copy(
            update={"topic_orders": f"{tag}.lat.orders", "topic_reviews": f"{tag}.lat.reviews"}
        )
        _create_topics(lat)  # before the worker joins: it then owns partitions when the first record arrives
        worker = start_worker(lat, workdir / "lat-worker.log")
        _wait_ready(workdir / "lat-worker.log")
        # a constant wall-clock rate: a history's event volume grows over its event time, so any
        # event-time speed ramps the rate up over the window
        lat_redis = redis.Redis.from_url(lat.redis_address)
        forks = lat_redis.info("stats")["total_forks"]
        paced = asyncio.run(replay_history(history, lat, rate=args.rate, max_events=events))
        time.sleep(3)
        stop_worker(worker)
        figures["latency_redis_forks"] = lat_redis.info("stats")["total_forks"] - forks
        latencies = [float(v) for v in lat_redis.lrange(Keys(lat.redis_prefix).latencies, 0, -1)]
        figures["latency_rate_events_per_s"] = args.rate
        # what the paced replay achieved: event volume is not uniform over a history's event time
        figures["latency_replayed_events_per_s"] = round(paced.events_per_s)
        figures["latency_samples"] = len(latencies)
        if args.dump_latencies:  # in processing order, oldest first
            args.dump_latencies.write_text("\n".join(str(v) for v in reversed(latencies)))
        if latencies:
            figures["latency_p50_ms"] = round(float(np.percentile(latencies, 50)), 1)
            figures["latency_p99_ms"] = round(float(np.percentile(latencies, 99)), 1)
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        services_down(base)


if __name__ == "__main__":
    main()
