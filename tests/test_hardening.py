"""Bounded state and the outbox bound, against the real Redis where it matters.

- the outbox bound: a worker whose outbox is full takes no input until it drains, and says so;
- a purchase writes one field, its day, whatever the customer's history;
- the applied events' digests fill fields of 16 and read back whole.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
import redis.asyncio as aioredis

from segstream.keys import Keys
from segstream.schemas import ReviewPosted, encode_event, event_digest
from segstream.scoring import ChurnRules, RfmScorer
from segstream.settings import Settings
from streams.agents import StreamHandler
from streams.profile import PURCHASE_FIELD, Profile
from streams.state import ProfileStore
from tests.conftest import placed_order

T0 = datetime(2017, 3, 1, tzinfo=UTC)


@pytest.mark.integration
def test_a_full_outbox_pauses_input_until_it_drains(services: Settings, caplog: pytest.LogCaptureFixture) -> None:
    settings = services.model_copy(update={"redis_prefix": f"ob-{uuid.uuid4().hex[:8]}", "worker_outbox_max": 3})
    keys = Keys(settings.redis_prefix)
    review = ReviewPosted(
        event_id="t:review:r1:o1",
        event_time=T0,
        customer_unique_id="u1",
        order_id="o1",
        review_id="r1",
        score=4,
        created_time=T0,
        comment_present=False,
        comment_length=0,
    )

    async def send(topic: str, key: bytes | None, value: bytes):  # dead letters only: none expected
        raise AssertionError(f"dead-lettered {value!r}")

    async def run() -> None:
        client = aioredis.Redis.from_url(settings.redis_address)
        part = keys.partition(1)  # the bound holds over every partition's outbox
        await client.sadd(keys.partition_numbers, 0, 1)
        for n in range(3):
            await client.xadd(part.outbox, {f"{n}:topic:u": b"{}"})
        handler = StreamHandler(settings)
        record = (0, 0, b"u1", encode_event(review), None)
        task = asyncio.create_task(handler.handle(settings.topic_reviews, [record], send))
        await asyncio.sleep(1.5)
        assert not task.done()
        assert await client.hget(keys.partition(0).counters, "consumed") is None  # nothing taken
        await client.xtrim(part.outbox, maxlen=2, approximate=False)  # the publisher drained one
        await asyncio.wait_for(task, timeout=5)
        assert await client.hget(keys.partition(0).counters, "consumed") == b"1"
        await client.aclose()
        await handler.client.aclose()

    with caplog.at_level(logging.WARNING, logger="streams.agents"):
        asyncio.run(run())
    said = [r.getMessage() for r in caplog.records]
    assert any("outbox holds 3 entries (bound 3" in m and "takes no input" in m for m in said), said
    assert any("under its bound again (2 entries)" in m for m in said), said


def test_a_purchase_writes_only_its_day() -> None:
    profile = Profile("u")
    for n in range(300):
        profile.apply(placed_order("u", n, n))
    stored = Profile.from_redis(profile.changed_fields())
    assert stored.purchases == profile.purchases and len(stored.purchases) == 300
    working = stored.copy()
    working.apply(placed_order("u", 300, 300))
    fields = working.changed_fields(stored)
    days = [name for name in fields if name.startswith(PURCHASE_FIELD)]
    assert days == [PURCHASE_FIELD + (T0 + timedelta(days=300)).strftime("%Y-%m-%d")]
    assert Profile.from_redis({**stored.changed_fields(), **fields}).purchases == working.purchases
    assert working.purchase_day_counts(working.last_purchase) == (300, 300, 300)


@pytest.mark.integration
def test_applied_digests_fill_fields_of_16_and_read_back(services: Settings) -> None:
    keys = Keys(f"dg-{uuid.uuid4().hex[:8]}")

    async def run() -> tuple[dict, set]:
        client = aioredis.Redis.from_url(services.redis_address)
        store = ProfileStore(
            client, keys, scorer=RfmScorer(), rules=ChurnRules(), segment_topic="s", churn_topic="c", cache_size=0
        )
        for start, end in ((0, 10), (10, 20), (20, 37)):  # writes that end inside a field and across fields
            await store.process({0: [placed_order("u", n, n) for n in range(start, end)]}, {})
        again = await store.process({0: [placed_order("u", n, n) for n in range(37)]}, {})  # every one redelivered
        raw = await client.hgetall(keys.partition(0).profile("u"))
        work = (await store._load({0: ["u"]}, {}))[0][0]["u"]
        await client.aclose()
        assert again[0].duplicates == 37 and again[0].applied == 0
        return raw, work.applied

    raw, applied = asyncio.run(run())
    chunks = {k: v for k, v in raw.items() if k.startswith(b"seen")}
    assert sorted(chunks) == [b"seen", b"seen1", b"seen2"]
    assert [len(chunks[k]) for k in (b"seen", b"seen1", b"seen2")] == [128, 128, 40]  # 16, 16 and 5 digests
    assert applied == {event_digest(f"order:u:{n}") for n in range(37)}
    assert Profile.from_redis(raw).orders == 37


@pytest.mark.integration
def test_a_worker_refuses_state_of_the_layout_before_digests(services: Settings) -> None:
    from segstream.services import ServiceError
    from streams.worker import run_worker

    settings = services.model_copy(update={"redis_prefix": f"old-{uuid.uuid4().hex[:8]}"})
    redis.Redis.from_url(settings.redis_address).sadd(f"{settings.redis_prefix}:applied:u1", "olist:placed:o1")
    with pytest.raises(ServiceError, match="older segstream"):
        run_worker(settings)
