"""The profile store against the real Redis: several partitions per batch, and lost compare-and-sets.

The streaming tests (tests/test_streams.py) go through the broker and a worker, where two writers
rarely race; here two stores share one Redis so that a cached profile goes stale on purpose.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis

from segstream.keys import Keys
from segstream.schemas import ClockTick
from segstream.scoring import ChurnRules, RfmScorer
from segstream.settings import Settings
from streams.profile import Profile
from streams.state import ProfileStore
from tests.conftest import placed_order

T0 = datetime(2017, 3, 1, tzinfo=UTC)


def _tick(day: int, partition: int) -> ClockTick:
    return ClockTick(
        event_id=f"tick:{partition}:{day}",
        event_time=T0 + timedelta(days=day),
        replay_id="r",
        run_id="run",
        topic="orders",
        partition=partition,
    )


def _store(client: aioredis.Redis, keys: Keys) -> ProfileStore:
    return ProfileStore(
        client,
        keys,
        scorer=RfmScorer(),
        rules=ChurnRules(default_gap_days=180),
        segment_topic="segments",
        churn_topic="churn",
    )


async def _scenario(settings: Settings) -> dict:
    keys = Keys(f"state{uuid.uuid4().hex[:8]}")
    client = aioredis.Redis.from_url(settings.redis_address)
    first, second = _store(client, keys), _store(client, keys)
    try:
        # one batch over two partitions, each with a clock tick: one read and one write for both
        one, marks = await first.process(
            {0: [placed_order("a", 1, 0), _tick(1, 0)], 1: [placed_order("b", 1, 0), _tick(2, 1)]}, {}, ticks=2
        )
        # another writer (a second worker after a rebalance) updates "a": first's cached copy is stale
        await second.process({0: [placed_order("a", 2, 3)]}, marks)
        await client.script_flush()  # as after a Redis restart: first loads its scripts again, nothing lost
        # first still holds version 1 of "a": its write loses, is folded again from Redis, and wins
        two, _ = await first.process({0: [placed_order("a", 3, 5)], 1: [placed_order("b", 2, 5)]}, marks)
        # redelivered events change nothing
        again, _ = await first.process({0: [placed_order("a", 1, 0), placed_order("a", 3, 5)]}, marks)
        where = {"a": keys.partition(0), "b": keys.partition(1)}  # the partitions the batches put them in
        profiles = {c: Profile.from_redis(await client.hgetall(part.profile(c))) for c, part in where.items()}
        parts = [keys.partition(p) for p in (0, 1)]
        return {
            "one": one,
            "two": two,
            "again": again,
            "profiles": profiles,
            "counters": dict(await first.counters()),
            "watermarks": {
                k.decode(): float(v) for part in parts for k, v in (await client.hgetall(part.watermarks)).items()
            },
            "due": {part.number: await client.zcard(part.due) for part in parts},
            "partitions": await client.smembers(keys.partition_numbers),
        }
    finally:
        await client.aclose()


def test_partitions_in_one_batch_and_a_lost_compare_and_set(services: Settings) -> None:
    out = asyncio.run(_scenario(services))
    assert out["one"].applied == 2 and out["one"].retries == 0
    assert out["two"].applied == 2 and out["two"].retries == 1  # "a" lost once, then applied
    assert out["again"].applied == 0 and out["again"].duplicates == 2
    a, b = out["profiles"]["a"], out["profiles"]["b"]
    assert (a.orders, a.version) == (3, 3)  # nothing lost, nothing counted twice
    assert (b.orders, b.version) == (2, 2)
    assert a.monetary == b.monetary + 60.0 == 180.0
    assert out["counters"] == {"consumed": 7, "applied": 5, "duplicates": 2, "ticks": 2}
    assert out["watermarks"] == {"0": (T0 + timedelta(days=1)).timestamp(), "1": (T0 + timedelta(days=2)).timestamp()}
    assert out["due"] == {0: 1, 1: 1}  # each customer in its own partition's due index
    assert out["partitions"] == {b"0", b"1"}  # what readers sum over


async def _watermark_after_old_ticks(settings: Settings) -> float:
    keys = Keys(f"state{uuid.uuid4().hex[:8]}")
    client = aioredis.Redis.from_url(settings.redis_address)
    try:
        store = _store(client, keys)
        await store.process({0: [placed_order("a", 1, 0), _tick(10, 0)]}, {})
        # a worker catching up again from the start of the topic (a new broker, Redis kept)
        await _store(client, keys).process({0: [_tick(2, 0)]}, {})
        return float(await client.hget(keys.partition(0).watermarks, "0"))
    finally:
        await client.aclose()


def test_a_watermark_never_moves_back(services: Settings) -> None:
    assert asyncio.run(_watermark_after_old_ticks(services)) == (T0 + timedelta(days=10)).timestamp()
