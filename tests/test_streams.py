"""The stream workers against the real broker and Redis, checked against the pandas oracle."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from replay.olist import load_olist
from replay.producer import replay_history
from replay.synth import SynthConfig, synthesize, synthesize_online_retail
from replay.transactions import load_online_retail
from segstream.partitioned import outbox_length
from streams.clusters import OnlineClusters
from streams.readmodel import overview
from streams.thresholds import publish_thresholds
from tests import oracle
from tests.conftest import (
    Workers,
    assert_matches_oracle,
    assert_read_models_match,
    assert_transitions_match_oracle,
    free_port,
    read_topic,
    split_checkouts,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def history_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few thousand orders with repeat buyers, reviews, cancellations and late deliveries."""
    out = tmp_path_factory.mktemp("stream-history")
    synthesize(SynthConfig(orders=2_000, seed=23, repeat_share=0.25, late_share=0.15), out)
    return out


def test_stream_equals_the_oracle(workers: Workers, history_dir: Path) -> None:
    workers.start()
    summary = asyncio.run(replay_history(load_olist(history_dir), workers.settings))
    workers.wait_for_end(summary)
    expected = assert_matches_oracle(workers, history_dir)
    assert expected["orders"].gt(1).sum() > 100 and expected["churn"].nunique() == 3
    assert expected["segment"].nunique() >= 8

    segment_changes, churn_changes = assert_transitions_match_oracle(workers, history_dir)
    assert segment_changes > 3_000 and churn_changes > 1_000
    latest = overview(workers.settings, latest=50).latest  # what `segments` shows: newest event time first
    assert len(latest) == 50 and [c.event_time for c in latest] == sorted((c.event_time for c in latest), reverse=True)

    # Online clusters: every scored customer has one; the checkpointed model restores; profiles in units.
    assert all(p.cluster in range(5) for p in workers.profiles().values() if p.orders)
    deadline = time.monotonic() + 15
    while not workers.redis.get(workers.keys.cluster_model) and time.monotonic() < deadline:
        time.sleep(0.2)
    model = OnlineClusters.from_json(workers.redis.get(workers.keys.cluster_model).decode())
    assert model.learned >= summary.events_total // 2
    profiles = json.loads(workers.redis.get(workers.keys.cluster_profiles))
    assert len(profiles) == 5 and all(0 <= c["late_share"] <= 1 and c["orders"] >= 0.5 for c in profiles.values())

    assert workers.summed("segments") == expected["segment"].value_counts().to_dict()
    assert workers.summed("churn_statuses") == expected["churn"].value_counts().to_dict()
    counters = workers.counters()
    assert counters["consumed"] == counters["applied"] + counters["duplicates"] + counters["dead_lettered"]
    assert counters["applied"] == summary.events_total


@pytest.fixture(scope="module")
def split_history(history_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The history with one delivered order in ten split into two orders of one checkout, 5 s apart."""
    out = tmp_path_factory.mktemp("split") / "history"
    assert split_checkouts(history_dir, out, share=0.1, seed=4) > 100
    return out


def test_split_checkouts_are_one_purchase_day(workers: Workers, split_history: Path) -> None:
    """A checkout split into orders seconds apart is one purchase day: the churn gap stays the
    default for a one-day buyer, so a split-checkout buyer is not churned by the next tick."""
    workers.start()
    summary = asyncio.run(replay_history(load_olist(split_history), workers.settings))
    workers.wait_for_end(summary)
    assert_matches_oracle(workers, split_history)
    assert_transitions_match_oracle(workers, split_history)
    profiles = workers.profiles()
    one_day = {c: p for c, p in profiles.items() if p.orders > 1 and len(p.purchases) == 1}
    assert len(one_day) > 50
    assert all(p.mean_gap_days is None for p in one_day.values())
    churned = read_topic(workers.settings, workers.settings.topic_churn_signals, 1)
    churned = [e for e in churned if e.customer_unique_id in one_day and e.status == "churned"]
    assert churned  # some of them do churn, after twice the default gap
    for e in churned:
        assert e.event_time.timestamp() - one_day[e.customer_unique_id].last_purchase >= 2 * 180 * 86_400


def test_paced_replay_transitions_equal_the_oracle(workers: Workers, split_history: Path) -> None:
    """A paced replay: the agents read both topics as they arrive, reviews often a little before
    the orders' clock reaches them, or a little after."""
    workers.start()
    workers.wait_for_log("Ready", 60)
    summary = asyncio.run(replay_history(load_olist(split_history), workers.settings, speed=150 * 86_400))
    workers.wait_for_end(summary)
    assert_matches_oracle(workers, split_history)
    assert_transitions_match_oracle(workers, split_history)


def test_reviews_drained_first_transitions_equal_the_oracle(workers: Workers, split_history: Path) -> None:
    """Both topics full before the worker starts: the small reviews topic is read long before the
    orders; a review must not act before its own event time."""
    summary = asyncio.run(replay_history(load_olist(split_history), workers.settings))
    workers.start()
    workers.wait_for_end(summary)
    assert_matches_oracle(workers, split_history)
    assert_transitions_match_oracle(workers, split_history)
    held = [p for p in workers.profiles().values() if p.held]
    assert not held  # every held review was applied once the clock passed it


def test_orders_drained_first_transitions_equal_the_oracle(workers: Workers, split_history: Path) -> None:
    """The orders reach the worker before any review: the reviews topic is produced only once the
    worker has the orders, and the orders' clock waits for the reviews' watermark."""
    history = load_olist(split_history)
    settings = workers.settings
    orders_only = settings.model_copy(update={"topic_reviews": f"{settings.topic_reviews}.elsewhere"})
    orders = asyncio.run(replay_history(history, orders_only))
    workers.start()
    workers.wait_for_log("wait for the reviews topic's watermark", 60)
    reviews_only = settings.model_copy(update={"topic_orders": f"{settings.topic_orders}.elsewhere"})
    reviews = asyncio.run(replay_history(history, reviews_only))
    workers.wait_for_end(orders, reviews_from=reviews)
    assert_matches_oracle(workers, split_history)
    assert_transitions_match_oracle(workers, split_history)


def test_online_retail_history_equals_the_oracle(workers: Workers, tmp_path: Path) -> None:
    """A generated Online Retail log (invoice lines, C invoices, guests, duplicates) through the
    transaction-log source, the broker, a worker and Redis equals the oracle read from the raw CSV."""
    data = tmp_path / "retail"
    synthesize_online_retail(SynthConfig(orders=2_000, seed=5), data)
    workers.start()
    summary = asyncio.run(replay_history(load_online_retail(data / "online_retail.csv"), workers.settings))
    workers.wait_for_end(summary)
    expected = assert_matches_oracle(workers, data, load=oracle.load_online_retail_facts)
    assert expected["orders"].gt(1).sum() > 100 and expected["segment"].nunique() >= 6

    changes = oracle.transitions(data, load=oracle.load_online_retail_facts)
    assert (changes["cause"] == "cancel").sum() > 0  # C invoices move segments through monetary
    assert_transitions_match_oracle(workers, data, load=oracle.load_online_retail_facts)


def test_replaying_again_changes_nothing(workers: Workers, history_dir: Path) -> None:
    workers.start()
    history = load_olist(history_dir)
    first = asyncio.run(replay_history(history, workers.settings))
    workers.wait_for_end(first)
    before = workers.profiles()
    published = workers.counters()["published"]
    # Same data, same window: a new replay id only because --restart sends it all again.
    second = asyncio.run(replay_history(history, workers.settings, restart=True))
    workers.wait_for_end(second)
    assert workers.profiles() == before
    counters = workers.counters()
    assert counters["published"] == published  # no new change events
    assert counters["duplicates"] == first.events_total
    assert counters["applied"] == first.events_total
    assert_read_models_match(workers, history_dir)


def test_killed_worker_restarts_without_loss_or_double_count(workers: Workers, history_dir: Path) -> None:
    proc = workers.start()
    settings = workers.settings.model_copy(update={"replay_batch": 200})
    history = load_olist(history_dir)

    async def replay_slowly():
        return await replay_history(history, settings, speed=40 * 86_400)  # ~20 s of replay

    import threading

    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("summary", asyncio.run(replay_slowly())))
    thread.start()
    deadline = time.monotonic() + 60
    while workers.counters()["applied"] < 1_000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers.counters()["applied"] >= 1_000, workers.log_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    workers.start()
    thread.join(timeout=120)
    workers.wait_for_end(result["summary"], timeout_s=180)
    assert_matches_oracle(workers, history_dir)
    counters = workers.counters()
    assert counters["applied"] == result["summary"].events_total  # nothing counted twice
    assert counters["consumed"] == counters["applied"] + counters["duplicates"] + counters["dead_lettered"]


def test_malformed_messages_are_dead_lettered(workers: Workers, tmp_path: Path) -> None:
    data = tmp_path / "small"
    synthesize(SynthConfig(orders=200, seed=5, repeat_share=0.2), data)
    bad = [
        b"\xff\xfe not json at all",
        b'{"event_type": "order_placed", "event_id": "x"}',
        b'{"event_type": "teleported", "event_id": "y", "event_time": "2017-01-01T00:00:00Z"}',
    ]
    review = (
        b'{"event_type":"review_posted","schema_version":1,"event_id":"bad-score","event_time":"2017-05-01T00:00:00Z",'
        b'"customer_unique_id":"u","order_id":"o","review_id":"r","score":9,"created_time":"2017-05-01T00:00:00Z",'
        b'"comment_present":false,"comment_length":0}'
    )

    async def inject() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=workers.settings.kafka_bootstrap_servers)
        await producer.start()
        for i, value in enumerate(bad):
            await producer.send_and_wait(workers.settings.topic_orders, value, key=b"k", partition=i % 4)
        await producer.send_and_wait(workers.settings.topic_reviews, review, key=b"u", partition=1)
        await producer.stop()

    asyncio.run(inject())
    workers.start()
    summary = asyncio.run(replay_history(load_olist(data), workers.settings))
    workers.wait_for_end(summary)
    letters = read_topic(workers.settings, workers.settings.topic_dead_letter, 4)
    assert len(letters) == 4
    reasons = sorted(letter.reason.split(":")[0] for letter in letters)
    assert reasons == ["json_invalid", "less_than_equal", "missing", "union_tag_invalid"]
    counters = workers.counters()
    assert counters["dead_lettered"] == 4
    assert counters["consumed"] == counters["applied"] + counters["duplicates"] + counters["dead_lettered"]
    assert counters["applied"] == summary.events_total


def test_shuffled_within_the_late_bound_gives_the_same_state(workers: Workers, history_dir: Path) -> None:
    workers.start()
    history = load_olist(history_dir)
    summary = asyncio.run(replay_history(history, workers.settings, lateness_seconds=7 * 86_400, seed=3))
    workers.wait_for_end(summary)
    assert_matches_oracle(workers, history_dir)  # profiles and every analytics read model
    # everything delivered again, shuffled otherwise: nothing moves, read models included
    again = asyncio.run(replay_history(history, workers.settings, lateness_seconds=7 * 86_400, seed=4, restart=True))
    workers.wait_for_end(again)
    assert workers.counters()["duplicates"] == summary.events_total
    assert_matches_oracle(workers, history_dir)


def test_event_time_not_wall_clock(workers: Workers, history_dir: Path) -> None:
    """The profiles' 'now' is the replay's last event time, years before the wall clock."""
    workers.start()
    summary = asyncio.run(replay_history(load_olist(history_dir), workers.settings))
    workers.wait_for_end(summary)
    last = datetime.fromisoformat(summary.last_event_time).timestamp()
    evaluated = [p.evaluated_at for p in workers.profiles().values() if p.evaluated_at]
    assert max(evaluated) == pytest.approx(last)
    assert max(evaluated) < datetime(2020, 1, 1, tzinfo=UTC).timestamp()


def test_two_workers_share_the_partitions(workers: Workers, history_dir: Path) -> None:
    workers.start()
    workers.start()
    summary = asyncio.run(replay_history(load_olist(history_dir), workers.settings))
    workers.wait_for_end(summary, timeout_s=180)
    assert_matches_oracle(workers, history_dir)
    assert workers.counters()["applied"] == summary.events_total
    logs = [p.read_text() for p in sorted(workers.logs.glob("worker-*.log"))]
    assert all("end of replay" in text for text in logs), "both workers should own partitions"


def test_republished_thresholds_rescore_everyone(workers: Workers, history_dir: Path) -> None:
    workers.start()
    summary = asyncio.run(replay_history(load_olist(history_dir), workers.settings))
    workers.wait_for_end(summary)
    before = {c: p.segment for c, p in workers.profiles().items() if p.orders}
    scorer = publish_thresholds(workers.settings, (60.0, 150.0, 270.0, 400.0), (80.0, 130.0, 200.0, 400.0))
    assert scorer.version == 1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = workers.redis.hgetall(workers.keys.rescored)
        if len(done) == workers.settings.topic_partitions and all(int(v) == 1 for v in done.values()):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("not re-scored in 60 s\n" + workers.log_text())
    while outbox_length(workers.redis, workers.keys) and time.monotonic() < deadline:
        time.sleep(0.1)
    expected = assert_matches_oracle(
        workers, history_dir, r_thresholds=scorer.recency_days, m_thresholds=scorer.monetary
    )
    moved = {c for c, segment in before.items() if expected.loc[c, "segment"] != segment}
    assert len(moved) > 100
    published = read_topic(workers.settings, workers.settings.topic_segment_changes, 1)
    rescored = [e for e in published if e.cause == "rescore"]
    assert {e.customer_unique_id for e in rescored} == moved and len(rescored) == len(moved)


def _wait_rescored(group: Workers, version: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = group.redis.hgetall(group.keys.rescored)
        if len(done) == group.settings.topic_partitions and all(int(v) >= version for v in done.values()):
            return
        time.sleep(0.1)
    raise AssertionError(f"not re-scored with version {version} in {timeout_s} s\n" + group.log_text())


def test_rescore_survives_a_killed_worker_and_a_broker_restart(workers: Workers, history_dir: Path) -> None:
    """Thresholds published, the worker killed in the middle of re-scoring, a new worker finishes
    the job; then the broker restarted (empty: memory storage) with the Redis state kept, the same
    history replayed onto it (the worker reads old ticks again) and new thresholds: every profile's
    R/F/M and segment equals the oracle's with the thresholds in force."""
    from segstream.services import services_down, services_up

    # a broker of this test's own (to restart it), the session's Redis; small re-score round trips
    # so that the kill lands in the middle of the re-score
    settings = workers.settings.model_copy(
        update={
            "kafka_bootstrap": None,
            "kafka_port": free_port(),
            "redis_url": workers.settings.redis_address,
            "worker_rescore_chunk": 5,
        }
    )
    group = Workers(settings, workers.logs / "own")
    group.logs.mkdir()
    services_up(settings)
    try:
        proc = group.start()
        summary = asyncio.run(replay_history(load_olist(history_dir), settings))
        group.wait_for_end(summary)
        first = publish_thresholds(settings, (60.0, 150.0, 270.0, 400.0), (80.0, 130.0, 200.0, 400.0))
        group.wait_for_log("re-scoring", 30, poll_s=0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = group.redis.hgetall(group.keys.rescored)
        assert sum(int(v) >= first.version for v in done.values()) < settings.topic_partitions  # killed mid-way
        group.start()
        _wait_rescored(group, first.version)
        assert_matches_oracle(group, history_dir, r_thresholds=first.recency_days, m_thresholds=first.monetary)
        assert all(p.thresholds_version == first.version for p in group.profiles().values() if p.orders)

        group.stop()
        watermarks = group.watermarks()
        services_down(settings)  # the broker goes (and its topics with it); Redis keeps the state
        services_up(settings)
        group.start()
        replayed = asyncio.run(replay_history(load_olist(history_dir), settings))
        group.wait_for_end(replayed)
        assert group.watermarks() == watermarks  # never moved back
        second = publish_thresholds(settings, (45.0, 120.0, 240.0, 420.0), (70.0, 110.0, 180.0, 350.0))
        _wait_rescored(group, second.version)
        assert_matches_oracle(group, history_dir, r_thresholds=second.recency_days, m_thresholds=second.monetary)
    finally:
        group.stop()
        services_down(settings)


def test_published_bgnbd_makes_p_alive_a_churn_reason(workers: Workers, history_dir: Path) -> None:
    """BG/NBD parameters published before the replay: every evaluation computes P(alive), and a
    repeat buyer whose P(alive) falls below the bound by time alone is re-derived on that day."""
    bgnbd = {"r": 0.3, "alpha": 1.0, "a": 2.0, "b": 1.0}
    publish_thresholds(workers.settings, bgnbd=bgnbd)
    workers.start()
    summary = asyncio.run(replay_history(load_olist(history_dir), workers.settings))
    workers.wait_for_end(summary)
    params = tuple(bgnbd.values())
    expected = assert_matches_oracle(workers, history_dir, bgnbd=params)
    without = oracle.final_state(history_dir)
    low = expected.index[expected["p_alive"] < 0.3]
    assert len(low) > 20, "the parameters should put a fair number of repeat buyers below the bound"
    flipped = (expected["churn"] != without["churn"]).sum()
    assert flipped > 5  # customers at risk only because of P(alive)
    profiles = workers.profiles()
    for customer in low:
        assert "p_alive" in profiles[customer].churn_reasons
        # stored as of the customer's last evaluation (the crossing day, or later): P(alive) only falls
        assert expected.loc[customer, "p_alive"] - 1e-4 <= profiles[customer].p_alive < 0.3
