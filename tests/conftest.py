"""Shared fixtures: real services over TCP, fixture data, fresh topics per test.

Integration tests talk to a real Kafka-compatible broker and a real Redis. Where a Docker engine
answers, testcontainers provides Apache Kafka and Redis 7; everywhere else (our machines and CI
have no Docker engine) the embedded tansu broker and redis-server binaries are started through
segstream's own services module, on free ports, in a temporary run directory.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pandas
import pytest
import redis
from aiokafka import AIOKafkaConsumer

from replay.producer import ReplaySummary, ensure_topics
from replay.synth import SynthConfig, synthesize
from segstream.clients import redis_client
from segstream.demo import start_worker, stop_worker
from segstream.kafka import partition_for
from segstream.keys import Keys
from segstream.partitioned import counters, outbox_length, partitions, sum_hashes
from segstream.schemas import Item, OrderPlaced, decode_output
from segstream.services import free_port
from segstream.settings import Settings
from streams.profile import Profile
from streams.readmodel import analytics_counts

__all__ = [
    "EDGE",
    "REAL_SAMPLE",
    "Workers",
    "free_port",
    "isolated",
    "read_records",
    "save_profiles",
    "split_checkouts",
    "wait_for_web",
]

FIXTURES = Path(__file__).parent / "fixtures"
# what consumers are promised: the output events' JSON Schema as published in docs/ (kept equal to
# the pydantic models by test_schemas), not the models themselves
PUBLISHED_OUTPUT = json.loads((Path(__file__).parents[1] / "docs" / "events.schema.json").read_text())["output"]
REAL_SAMPLE = FIXTURES / "olist-real-1000"
EDGE = FIXTURES / "olist-edge"


def _docker_engine() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # no client, no socket, no engine: all mean "use the embedded binaries"
        return False


def profile_key(keys: Keys, customer: str, partitions: int = 4) -> str:
    """Where a worker keeps the customer's profile: in the partition the producer puts it on."""
    return keys.partition(partition_for(customer, partitions)).profile(customer)


def save_profiles(client: redis.Redis, keys: Keys, profiles: list[Profile], partitions: int = 4) -> None:
    """Store profiles as a worker's first write of each would (any old hash replaced), each in
    its partition of ``partitions``."""
    pipe = client.pipeline(transaction=False)
    for profile in profiles:
        key = profile_key(keys, profile.customer_unique_id, partitions)
        pipe.delete(key)
        pipe.hset(key, mapping=profile.changed_fields())
    pipe.sadd(keys.partition_numbers, *range(partitions))
    pipe.execute()


def set_watermarks(client: redis.Redis, keys: Keys, marks: dict[int, float]) -> None:
    """Set partitions' event-time watermarks as the workers' clock ticks would."""
    pipe = client.pipeline(transaction=False)
    for partition, mark in marks.items():
        pipe.hset(keys.partition(partition).watermarks, str(partition), mark)
    pipe.sadd(keys.partition_numbers, *marks)
    pipe.execute()


def split_checkouts(source: Path, out: Path, share: float, seed: int = 0) -> int:
    """Copy an Olist file set, splitting a ``share`` of the delivered orders into two orders of one
    checkout, as Olist does: the copy has a new order id and customer id (same person), is placed 5 s
    after the original, and repeats its items, payments and delivery. Returns how many were split."""
    import shutil

    import numpy as np
    import pandas as pd

    shutil.copytree(source, out)
    rng = np.random.default_rng(seed)
    orders = pd.read_csv(out / "olist_orders_dataset.csv", dtype=str)
    customers = pd.read_csv(out / "olist_customers_dataset.csv", dtype=str)
    delivered = orders[orders["order_status"] == "delivered"]
    chosen = delivered.sample(frac=share, random_state=seed)
    new_ids = {old: f"{rng.integers(1 << 62):032x}" for old in chosen["order_id"]}
    copies = chosen.assign(
        order_id=chosen["order_id"].map(new_ids),
        customer_id=[f"{rng.integers(1 << 62):032x}" for _ in range(len(chosen))],
        order_purchase_timestamp=(pd.to_datetime(chosen["order_purchase_timestamp"]) + pd.Timedelta(seconds=5)).astype(
            str
        ),
    )
    owner = customers.set_index("customer_id")
    extra = owner.loc[chosen["customer_id"]].reset_index(drop=True).assign(customer_id=copies["customer_id"].to_numpy())
    pd.concat([orders, copies]).to_csv(out / "olist_orders_dataset.csv", index=False)
    pd.concat([customers, extra[customers.columns]]).to_csv(out / "olist_customers_dataset.csv", index=False)
    for name in ("olist_order_items_dataset.csv", "olist_order_payments_dataset.csv"):
        rows = pd.read_csv(out / name, dtype=str)
        twins = rows[rows["order_id"].isin(new_ids)].assign(order_id=lambda f: f["order_id"].map(new_ids))
        pd.concat([rows, twins]).to_csv(out / name, index=False)
    return len(chosen)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a running broker and Redis for the whole session."""
    run_dir = tmp_path_factory.mktemp("run")
    if _docker_engine():  # pragma: no cover - no Docker engine on our machines
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        with KafkaContainer("apache/kafka:3.8.0").with_kraft() as kafka, RedisContainer("redis:7") as redis_c:
            host, port = redis_c.get_container_host_ip(), redis_c.get_exposed_port(6379)
            yield Settings(
                run_dir=run_dir,
                kafka_bootstrap=kafka.get_bootstrap_server(),
                redis_url=f"redis://{host}:{port}/0",
            )
        return
    from segstream.services import services_down, services_up

    settings = Settings(run_dir=run_dir, kafka_port=free_port(), redis_port=free_port())
    services_up(settings)
    try:
        yield settings
    finally:
        services_down(settings)


@pytest.fixture(scope="session")
def redis_cluster(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The session's broker with a real Redis Cluster of three masters (the same redis-server
    binary, cluster-enabled, on local ports) in place of the single Redis."""
    from segstream.services import free_cluster_ports, start_redis_cluster, stop_redis_cluster

    ports = free_cluster_ports(3)
    procs = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"), ports)
    try:
        yield services.model_copy(update={"redis_url": f"redis://127.0.0.1:{ports[0]}/0", "redis_cluster": True})
    finally:
        stop_redis_cluster(procs)


@pytest.fixture
def kafka(services: Settings, tmp_path: Path) -> Settings:
    """The session's services with topics and a checkpoint directory of this test's own."""
    return _own_topics(services, tmp_path)


def _own_topics(services: Settings, tmp_path: Path) -> Settings:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    return services.model_copy(
        update={
            "run_dir": tmp_path / "run",
            "topic_orders": f"{prefix}.orders",
            "topic_reviews": f"{prefix}.reviews",
            "topic_campaigns": f"{prefix}.campaigns",
        }
    )


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated history of 400 orders with plenty of repeat buyers."""
    out = tmp_path_factory.mktemp("synth-small")
    synthesize(SynthConfig(orders=400, seed=11, repeat_share=0.2), out)
    return out


def isolated(settings: Settings, name: str) -> Settings:
    """``settings`` with a consumer group, a Redis prefix and all the topics of their own, named
    ``<name>-<random tag>``: a test's state and records never meet another's."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    topics = ("orders", "reviews", "campaigns", "segment_changes", "churn_signals", "dead_letter")
    return settings.model_copy(
        update={"app_id": tag, "redis_prefix": tag} | {f"topic_{t}": f"{tag}.{t.replace('_', '-')}" for t in topics}
    )


def wait_for_web(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 30) -> None:
    """Until ``segstream web`` at ``url`` answers /api/health (fails if its process ends first)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def read_records(settings: Settings, topics: list[str], expected: int, timeout_s: float = 30) -> list[bytes]:
    """Every record's value on ``topics`` from the start: at least ``expected`` of them, then until
    a second passes with nothing new (output topics have no end marker, and the embedded broker's
    end offsets are short by a batch)."""

    async def read() -> list[bytes]:
        consumer = AIOKafkaConsumer(
            *topics, bootstrap_servers=settings.kafka_bootstrap_servers, auto_offset_reset="earliest", group_id=None
        )
        await consumer.start()
        values: list[bytes] = []
        deadline, quiet = time.monotonic() + timeout_s, 0
        try:
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=250)
                values += [m.value for ms in batch.values() for m in ms]
                quiet = 0 if batch else quiet + 1
                if len(values) >= expected and quiet >= 4:
                    break
        finally:
            await consumer.stop()
        return values

    return asyncio.run(read())


@dataclass
class Workers:
    settings: Settings
    logs: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def start(self) -> subprocess.Popen:
        proc = start_worker(self.settings, self.logs / f"worker-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            stop_worker(proc, timeout_s=15)

    @functools.cached_property
    def redis(self) -> redis.Redis:
        """A client of the workers' Redis (a cluster client on a Redis Cluster)."""
        return redis_client(self.settings)

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.redis_prefix)

    def wait_for_end(
        self, summary: ReplaySummary, timeout_s: float = 120, reviews_from: ReplaySummary | None = None
    ) -> None:
        """Until every partition of both topics has processed the replay run's final tick (the
        reviews topic's from the run ``reviews_from`` if given: a replay of it alone)."""
        client, partitions = self.redis, self.settings.topic_partitions
        run = f"{summary.replay_id}/{summary.run_id}"
        wanted = {f"{self.settings.topic_orders}:{p}": run for p in range(partitions)}
        reviews_run = run if reviews_from is None else f"{reviews_from.replay_id}/{reviews_from.run_id}"
        wanted |= {f"{self.settings.topic_reviews}:{p}": reviews_run for p in range(partitions)}
        if self.settings.topic_campaigns in summary.topics:
            wanted |= {f"{self.settings.topic_campaigns}:{p}": run for p in range(partitions)}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ends = {k.decode(): v.decode() for k, v in client.hgetall(self.keys.replay_ends).items()}
            if all(ends.get(k) == v for k, v in wanted.items()):
                break
            for proc in self.procs:
                assert proc.poll() is None or proc.returncode in (0, -9), self.log_text()
            time.sleep(0.2)
        else:
            raise AssertionError(f"replay {run} not consumed in {timeout_s} s\n{self.log_text()}")
        while outbox_length(client, self.keys) and time.monotonic() < deadline:  # changes published
            time.sleep(0.1)
        assert outbox_length(client, self.keys) == 0

    def wait_for_log(self, text: str, timeout_s: float, poll_s: float = 0.1) -> None:
        """Until a worker's log holds ``text``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(text in p.read_text() for p in self.logs.glob("*.log")):
                return
            time.sleep(poll_s)
        raise AssertionError(f"no worker logged {text!r} in {timeout_s} s\n{self.log_text()}")

    def log_text(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.logs.glob("*.log")))

    def profiles(self) -> dict[str, Profile]:
        client, out = self.redis, {}
        for key in client.scan_iter(match=self.keys.profiles_pattern, count=1000):
            profile = Profile.from_redis(client.hgetall(key))
            out[profile.customer_unique_id] = profile
        return out

    def profile_of(self, customer: str) -> Profile:
        """The customer's profile, from the partition the producer puts it on."""
        return Profile.from_redis(self.redis.hgetall(profile_key(self.keys, customer, self.settings.topic_partitions)))

    def summed(self, name: str) -> dict[str, int]:
        """A count every partition keeps (``segments``, ``churn_statuses``...), summed."""
        parts = partitions(self.redis, self.keys)
        return {k.decode(): n for k, n in sum_hashes(self.redis, [getattr(p, name) for p in parts]).items()}

    def watermarks(self) -> dict[str, float]:
        """Each partition's orders watermark, by partition number."""
        parts = partitions(self.redis, self.keys)
        return {k.decode(): float(v) for p in parts for k, v in self.redis.hgetall(p.watermarks).items()}

    def counters(self) -> Counter:
        return Counter(counters(self.redis, self.keys))

    def assert_published_valid(self) -> int:
        """The contract test: every record the workers wrote to their output topics (segment
        changes, churn signals, dead letters) validates against the published JSON Schema."""
        s, counters = self.settings, self.counters()
        topics = [s.topic_segment_changes, s.topic_churn_signals, s.topic_dead_letter]
        values = read_records(s, topics, counters["published"] + counters["dead_lettered"])
        validator = jsonschema.Draft202012Validator(PUBLISHED_OUTPUT)
        invalid = [(v[:200], e.message) for v in values for e in validator.iter_errors(json.loads(v))]
        assert not invalid, f"{len(invalid)} records break the published schema: {invalid[:3]}"
        return len(values)


def assert_read_models_match(group: Workers, data: Path, state: pandas.DataFrame | None = None) -> None:
    """Every analytics read model the workers keep equals the pandas oracle's, field by field."""
    from tests import oracle

    expected = oracle.read_models(data, state)
    client = group.redis
    for name, want in expected.items():
        got = {k.decode(): v for k, v in analytics_counts(client, group.keys, name).items()}
        wrong = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        assert not wrong, (name, len(wrong), [(k, got.get(k), want.get(k)) for k in wrong[:5]])


def read_topic(settings: Settings, topic: str, expected: int, timeout_s: float = 30) -> list:
    return [decode_output(value) for value in read_records(settings, [topic], expected, timeout_s)]


def _sequences(events: list, status: bool) -> dict[str, list[tuple]]:
    """Per customer, the published changes in the order the profile numbered them."""
    out: dict[str, list[tuple]] = {}
    for e in sorted(events, key=lambda e: (e.customer_unique_id, int(e.event_id.rsplit(":", 1)[1]))):
        if status:
            row = (e.previous_status, e.status, tuple(e.reasons), e.cause, e.event_time.timestamp())
        else:
            row = (e.previous_segment, e.segment, e.cause, e.event_time.timestamp())
        out.setdefault(e.customer_unique_id, []).append(row)
    return out


def _expected_sequences(frame: pandas.DataFrame, status: bool) -> dict[str, list[tuple]]:
    columns = ["previous", "status", "reasons", "cause", "time"] if status else ["previous", "segment", "cause", "time"]
    return {c: list(own[columns].itertuples(index=False, name=None)) for c, own in frame.groupby("customer_unique_id")}


def assert_transitions_match_oracle(
    group: Workers, data: Path, load=None, redelivered: bool = False
) -> tuple[int, int]:
    """Every segment change and every churn transition, customer by customer and in order, equals
    the oracle's. ``redelivered``: a change may be on its topic twice (a publisher killed between
    Kafka's acknowledgement and the outbox's deletion), and then only as the same record."""
    from tests import oracle

    load = load or oracle.load_facts
    segments, churn = oracle.all_transitions(data, load=load)
    settings = group.settings
    for topic, expected, status in (
        (settings.topic_segment_changes, segments, False),
        (settings.topic_churn_signals, churn, True),
    ):
        published = read_topic(settings, topic, len(expected))
        unique = {e.event_id: e for e in published}
        if redelivered:
            assert all(unique[e.event_id] == e for e in published)  # a duplicate is the same event
            published = list(unique.values())
        assert len(unique) == len(published)  # never twice for the same change
        got, want = _sequences(published, status), _expected_sequences(expected, status)
        wrong = sorted(c for c in set(got) | set(want) if got.get(c) != want.get(c))
        assert not wrong, (topic, len(wrong), [(c, got.get(c), want.get(c)) for c in wrong[:3]])
    return len(segments), len(churn)


def assert_matches_oracle(group: Workers, data: Path, **options) -> pandas.DataFrame:
    """Every profile's aggregates, scores, segment and churn status, and the read models, equal the oracle's."""
    from tests import oracle

    expected = oracle.final_state(data, **options)
    profiles = group.profiles()
    scored = {c: p for c, p in profiles.items() if p.orders}
    assert set(scored) == set(expected.index)
    mismatches = []
    for customer, row in expected.iterrows():
        p = scored[customer]
        got = (p.orders, round(p.monetary, 2), p.r, p.f, p.m, p.segment, p.churn)
        want = (row.orders, round(row.monetary, 2), row.r, row.f, row.m, row.segment, row.churn)
        if got != want:
            mismatches.append((customer, got, want, p.churn_reasons))
    assert not mismatches, "\n".join(map(repr, mismatches[:5]))
    if options.get("load", oracle.load_facts) is oracle.load_facts:
        assert_read_models_match(group, data, expected)
    return expected


def restart_redis(settings: Settings, gone_s: float = 2.0) -> None:
    """Stop the embedded redis-server cleanly (SIGTERM: the AOF is flushed), leave it down for
    ``gone_s`` so that the workers meet a Redis that is gone, and start a new one on the same port
    and AOF."""
    import contextlib
    import os
    import signal

    from segstream.services import services_status, services_up

    pid = next(status.pid for status in services_status(settings) if status.name == "redis")
    os.kill(pid, signal.SIGTERM)
    while os.path.exists(f"/proc/{pid}"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our child: reap it
        time.sleep(0.05)
    time.sleep(gone_s)
    services_up(settings)


def replay_in_background(history, settings: Settings, **options) -> tuple[threading.Thread, dict]:
    """``replay_history`` in a thread of its own (started); its summary lands in the dict's ``summary``."""
    from replay.producer import replay_history

    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("summary", asyncio.run(replay_history(history, settings, **options)))
    )
    thread.start()
    return thread, result


def wait_for_applied(workers: Workers, count: int, timeout_s: float = 60) -> None:
    """Until the workers applied ``count`` events (a moment to inject a fault at)."""
    deadline = time.monotonic() + timeout_s
    while workers.counters()["applied"] < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers.counters()["applied"] >= count, workers.log_text()


def placed_order(customer: str, n: int, day: int, product: str = "p1") -> OrderPlaced:
    """The ``n``-th order of ``customer``, ``day`` days after 2017-03-01: one item, 60.00 paid."""
    return OrderPlaced(
        event_id=f"order:{customer}:{n}",
        event_time=datetime(2017, 3, 1, tzinfo=UTC) + timedelta(days=day),
        customer_unique_id=customer,
        order_id=f"{customer}-{n}",
        customer_id=f"c-{customer}-{n}",
        zip_prefix="01000",
        city="sao paulo",
        state="SP",
        items=[Item(product_id=product, category="toys", price=50.0, freight=10.0, seller_id="s1")],
        payment_total=60.0,
        payment_types=["credit_card"],
        installments=1,
        payment_source="payments",
    )


@pytest.fixture
def own_services(tmp_path: Path) -> Iterator[Settings]:
    """A broker and a Redis of this test's own: the test stops or restarts the Redis."""
    from segstream.services import services_down, services_up

    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        run_dir=tmp_path / "run",
        kafka_port=free_port(),
        redis_port=free_port(),
        app_id=f"rr-{tag}",
        worker_batch=200,
        replay_batch=200,
    )
    services_up(settings)
    try:
        yield settings
    finally:
        services_down(settings)


@pytest.fixture
def workers(kafka: Settings, tmp_path: Path) -> Iterator[Workers]:
    yield from _workers(kafka, tmp_path)


@pytest.fixture
def cluster_workers(redis_cluster: Settings, tmp_path: Path) -> Iterator[Workers]:
    """Workers of their own on the session's broker and the Redis Cluster."""
    yield from _workers(_own_topics(redis_cluster, tmp_path), tmp_path)


def _workers(kafka: Settings, tmp_path: Path) -> Iterator[Workers]:
    tag = uuid.uuid4().hex[:8]
    settings = kafka.model_copy(
        update={
            "app_id": f"seg-{tag}",
            "redis_prefix": f"seg-{tag}",
            "topic_segment_changes": f"{tag}.segment-changes",
            "topic_churn_signals": f"{tag}.churn-signals",
            "topic_dead_letter": f"{tag}.dead-letter",
            "worker_batch": 200,
        }
    )
    asyncio.run(
        ensure_topics(
            settings.kafka_bootstrap_servers,
            [settings.topic_orders, settings.topic_reviews],
            settings.topic_partitions,
            1,
        )
    )
    group = Workers(settings, tmp_path)
    yield group
    group.stop()
    if group.procs:
        group.assert_published_valid()
