"""What the agents do with a batch of records: thin glue between Faust, the schemas and Redis.

- Undecodable records and records failing the schema go to the dead-letter topic with the reason,
  are counted, and the worker keeps going.
- Customer events and clock ticks are folded into the profiles (``streams.state.ProfileStore.process``).
- Campaign sends (their own topic) are stored once each by event id (``streams/lua/campaigns.lua``)
  for the retrain's uplift model; they change no profile.
- Clock ticks advance the partition's watermark; on the orders topic, they also re-derive the
  customers due by then (time-driven segment and churn changes). A final tick records that the
  replay's end was reached on that partition (how tests and the demo know the stream caught up).
- Change events reach Kafka through the Redis outbox (``publish``), so a change is never lost
  between the Redis write and the Kafka send; a crash there re-publishes it with the same id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from segstream.clients import async_redis_client, kafka_options, shown
from segstream.kafka import RecordBatches, batch_producer, partition_for
from segstream.keys import Keys, PartitionKeys
from segstream.partitioned import apartitions
from segstream.schemas import SENT_AT_HEADER, CampaignSent, ClockTick, CustomerEvent, DeadLetter, decode_event
from segstream.scoring import ChurnRules, RfmScorer, bgnbd_of
from segstream.scripts import lua
from segstream.settings import Settings
from streams.clusters import OnlineClusters
from streams.state import ProfileStore

__all__ = ["REDIS_AWAY", "Rebalancing", "StreamHandler"]

REDIS_AWAY = (aioredis.ConnectionError, aioredis.TimeoutError)  # worth waiting out, not dead-lettering
DEAD_LETTERS_KEPT = 100  # the latest dead letters kept in Redis for the operations view

log = logging.getLogger(__name__)

_RENEW = lua("segstream", "renew_lock.lua")  # the outbox lease
_CAMPAIGNS = lua("streams", "campaigns.lua")

Record = tuple[int, int, bytes | None, bytes, Any]  # partition, offset, key, value, headers
Send = Callable[[str, bytes | None, bytes], Awaitable[Any]]  # (topic, key, value) -> delivery future


class Rebalancing(Exception):
    """A rebalance began while a batch waited (for the reviews' watermark, for room in the outbox).

    The batch is dropped unprocessed and unacknowledged: whichever worker owns its partitions after
    the rebalance reads it again from the committed offset. Waiting on would hold the rebalance up
    (Faust gives partitions up only once every batch in progress is done) while the reviews agent,
    stopped by the same rebalance, cannot move the watermark: the wait ran out its 60 s, the worker
    fell out of the group, and its orders went on without their reviews (transitions off the
    oracle's, seen with 4 workers on 8 partitions; bench/chaos.py --workers 4).
    """


class StreamHandler:
    """Per-worker state: the Redis client, the profile store, and each topic's watermarks.

    ``rebalancing`` (set by the app): whether a rebalance is in progress; a batch waiting for
    something another agent provides then gives up (:class:`Rebalancing`).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rebalancing: Callable[[], bool] = lambda: False
        self.keys = Keys(settings.redis_prefix)
        self.client = async_redis_client(settings)
        self.store: ProfileStore | None = None
        self.watermarks: dict[str, dict[int, float]] = {}
        self.token = uuid.uuid4().hex
        self._kafka: AIOKafkaProducer | None = None  # publishes the outbox
        self._partitions: dict[str, int] = {}
        self._redis_away_since: float | None = None  # monotonic time of the outage's first failure
        self._gave_up: set[int] = set()  # partitions whose orders stopped waiting for the reviews' watermark

    async def _ready(self) -> ProfileStore:
        if self.store is None:
            # The thresholds in force live in Redis (the retrain job republishes them); bootstrap defaults.
            await self.client.set(self.keys.thresholds, RfmScorer().to_json(), nx=True)
            document = (await self.client.get(self.keys.thresholds)).decode()
            scorer = RfmScorer.from_json(document)
            saved = await self.client.get(self.keys.cluster_model)
            clusters = OnlineClusters.from_json(saved.decode()) if saved else OnlineClusters()
            self.store = ProfileStore(
                self.client,
                self.keys,
                scorer=scorer,
                rules=ChurnRules(
                    default_gap_days=self.settings.churn_default_gap_days,
                    bgnbd=bgnbd_of(document),
                    p_alive_below=self.settings.churn_p_alive_below,
                ),
                segment_topic=self.settings.topic_segment_changes,
                churn_topic=self.settings.topic_churn_signals,
                clusters=clusters,
                cache_size=self.settings.worker_cache,
                analytics=self.settings.worker_analytics,
            )
        return self.store

    async def handle(self, topic: str, records: list[Record], send: Send) -> None:
        """Process ``(partition, offset, key, value)`` records of one topic, in order; retries Redis outages."""
        try:
            await self._with_retries(topic, records, send)
        except Rebalancing:
            raise
        except Exception:
            # A record that breaks the processing must not stop the worker nor vanish: find it by
            # redoing the batch one record at a time (updates are idempotent) and dead-letter it.
            log.exception("a batch of %d records from %s failed; retrying them one by one", len(records), topic)
            for record in records:
                try:
                    await self._with_retries(topic, [record], send)
                except Exception as exc:
                    partition, offset, key, value, _headers = record
                    reason = f"processing error: {type(exc).__name__}: {exc}"[:500]
                    await self._dead_letter(send, topic, partition, offset, key, value, reason)

    async def _with_retries(self, topic: str, records: list[Record], send: Send) -> None:
        delay = 0.5
        while True:
            try:
                await self._handle(topic, records, send)
                self.redis_back()
                return
            except REDIS_AWAY as exc:
                self.redis_away(exc, f"a batch of {topic} retried in {delay:.1f} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def redis_away(self, exc: Exception, retry: str | None = None) -> None:
        """Say once that Redis went away, then a short line per ``retry`` (None: nothing more)."""
        if self._redis_away_since is None:
            self._redis_away_since = time.monotonic()
            log.warning(
                "Redis at %s is unavailable (%s); the worker waits and retries with backoff (events stay in "
                "Kafka, change events in the outbox)",
                shown(self.settings.redis_address),
                " ".join(str(exc).split()),
            )
        elif retry is not None:
            log.warning("Redis still unavailable: %s", retry)

    def redis_back(self) -> None:
        if self._redis_away_since is not None:
            log.warning("Redis answers again, after %.1f s", time.monotonic() - self._redis_away_since)
            self._redis_away_since = None

    async def _handle(self, topic: str, records: list[Record], send: Send) -> None:
        if topic == self.settings.topic_campaigns:
            await self._handle_campaigns(records, send)
            return
        store = await self._ready()
        await self._outbox_room()
        watermarks = self.watermarks.setdefault(topic, {})
        clock = topic == self.settings.topic_orders
        # Partitions hold disjoint customers: each partition's records are folded on their own, in order.
        by_partition: dict[int, list] = {}
        sent_at = []
        ticks, finals = 0, []
        why = f"campaign sends belong on {self.settings.topic_campaigns}"
        async for partition, event, headers in self._decoded(topic, records, send, (CustomerEvent, ClockTick), why):
            by_partition.setdefault(partition, []).append(event)
            if type(event) is ClockTick:
                ticks += 1
                if event.final:
                    finals.append((partition, event))
            elif headers:
                sent_at.extend(int(v) for k, v in headers if k == SENT_AT_HEADER)
        if clock:
            await self._await_reviews(by_partition)
        _, ends = await store.process(by_partition, watermarks, clock, ticks=ticks, sent_at_ms=sent_at)
        if not clock:  # the reviews' watermark moves again: the orders wait for it again
            self._gave_up.difference_update(p for p, end in ends.items() if end > watermarks.get(p, -math.inf))
        watermarks.update(ends)
        await self._replay_ends(topic, finals)

    async def _outbox_room(self, poll_s: float = 0.5) -> None:
        """Wait, taking no input, while the outbox holds ``worker_outbox_max`` entries or more.

        Change events leave the outbox only when Kafka takes them. With Kafka away the writes
        would grow it without bound; waiting here stops the agents instead (Faust then stops
        fetching: the input waits in Kafka, where it is kept anyway). The bound is checked per
        batch, so the outbox may pass it by one batch's entries per agent.
        """
        bound = self.settings.worker_outbox_max
        length = await self._outbox_length()
        if length < bound:
            return
        started = said = time.monotonic()
        log.warning(
            "the outbox holds %d entries (bound %d, SEGSTREAM_WORKER_OUTBOX_MAX): change events are not reaching "
            "Kafka; this worker takes no input until they do",
            length,
            bound,
        )
        while length >= bound:
            if self.rebalancing():
                raise Rebalancing(f"the outbox held {length} entries")
            await asyncio.sleep(poll_s)
            length = await self._outbox_length()
            if time.monotonic() - said > 30:
                said = time.monotonic()
                log.warning("input still paused: the outbox holds %d entries (bound %d)", length, bound)
        log.warning(
            "the outbox is under its bound again (%d entries) after %.1f s: taking input",
            length,
            time.monotonic() - started,
        )

    async def _outbox_length(self) -> int:
        """Entries in every partition's outbox."""
        pipe = self.client.pipeline(transaction=False)
        for part in await apartitions(self.client, self.keys):
            pipe.xlen(part.outbox)
        return sum(await pipe.execute())

    async def _replay_ends(self, topic: str, finals: list[tuple[int, ClockTick]]) -> None:
        for partition, tick in finals:
            await self.client.hset(self.keys.replay_ends, f"{topic}:{partition}", f"{tick.replay_id}/{tick.run_id}")
            log.info("end of replay %s reached on %s[%d]", tick.replay_id, topic, partition)

    async def _handle_campaigns(self, records: list[Record], send: Send) -> None:
        """Store the batch's campaign sends (one script call); ticks only count, finals mark the replay's end."""
        topic = self.settings.topic_campaigns
        ticks: dict[int, int] = {}
        sends: dict[int, list[str]] = {}  # per partition, like the profiles (segstream/keys.py)
        finals = []
        why = "only campaign sends and clock ticks belong there"
        async for partition, event, _headers in self._decoded(topic, records, send, (CampaignSent, ClockTick), why):
            if type(event) is ClockTick:
                ticks[partition] = ticks.get(partition, 0) + 1
                if event.final:
                    finals.append((partition, event))
            else:
                sent = repr(event.event_time.timestamp())
                sends.setdefault(partition, []).extend(
                    (event.event_id, event.campaign_id, event.customer_unique_id, sent, event.group, event.offer)
                )
        touched = sorted(set(ticks) | set(sends))
        await (await self._ready()).register(touched)
        for partition in touched:
            part = self.keys.partition(partition)
            keys = [part.campaign_sends, part.campaigns, part.counters]
            await self.client.eval(_CAMPAIGNS, len(keys), *keys, ticks.get(partition, 0), *sends.get(partition, []))
        await self._replay_ends(topic, finals)

    async def _decoded(
        self, topic: str, records: list[Record], send: Send, allowed: tuple[type, ...], why: str
    ) -> AsyncIterator[tuple[int, Any, Any]]:
        """``(partition, event, headers)`` of the records that decode to an event of the ``allowed``
        types; the others go to the dead-letter topic with the reason (``why`` for a wrong type)."""
        for partition, offset, key, value, headers in records:
            try:
                event = decode_event(value)
            except ValidationError as exc:
                await self._dead_letter(send, topic, partition, offset, key, value, _reason(exc))
                continue
            if not isinstance(event, allowed):
                await self._dead_letter(
                    send, topic, partition, offset, key, value, f"{event.event_type} on {topic}: {why}"
                )
                continue
            yield partition, event, headers

    async def _await_reviews(self, by_partition: dict[int, list]) -> None:
        """Wait until the reviews topic's watermark of each partition reaches the batch's last event time.

        A customer's clock moves with the orders topic, and a review takes effect at its own event
        time (docs/definitions.md): the clock may only pass a moment once every review up to it is
        in the profiles, whichever topic the worker happens to read first. The reviews agent
        writes its watermark with its reviews (one script call), so a watermark in Redis means
        those reviews are stored, by this worker or another. The wait is bounded
        (``worker_reviews_wait_s``) so that a reviews topic without clock ticks cannot stop the
        stream; reviews behind the clock then take effect when they arrive.
        """
        needed = {}
        for partition, items in by_partition.items():
            if items and partition not in self._gave_up:
                needed[partition] = max(item.event_time.timestamp() for item in items)
        if not needed:
            return
        reviews = self.watermarks.setdefault(self.settings.topic_reviews, {})
        started, delay, said = time.monotonic(), 0.002, False
        while True:
            behind = [p for p, until in needed.items() if reviews.get(p, -math.inf) < until]
            if behind:
                pipe = self.client.pipeline(transaction=False)
                for p in behind:
                    pipe.hget(self.keys.partition(p).review_watermarks, str(p))
                stored = await pipe.execute()
                behind = [p for p, w in zip(behind, stored, strict=True) if w is None or float(w) < needed[p]]
            if not behind:
                return
            waited = time.monotonic() - started
            if waited >= self.settings.worker_reviews_wait_s:
                log.warning(
                    "the reviews topic's watermark of partitions %s did not reach the orders' in %.0f s; "
                    "going on without waiting (reviews behind the clock take effect when they arrive)",
                    behind,
                    waited,
                )
                self._gave_up.update(behind)
                return
            if waited > 1.0 and not said:
                until = max(needed[p] for p in behind)
                log.info(
                    "orders of partitions %s wait for the reviews topic's watermark to reach %s",
                    behind,
                    datetime.fromtimestamp(until, UTC).isoformat(),
                )
                said = True
            if self.rebalancing():
                raise Rebalancing(f"orders of partitions {behind} waited for the reviews topic's watermark")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def _dead_letter(
        self, send: Send, topic: str, partition: int, offset: int, key: bytes | None, value: bytes, reason: str
    ) -> None:
        record = DeadLetter(
            reason=reason,
            topic=topic,
            partition=partition,
            offset=offset,
            key=key.decode(errors="replace") if key is not None else None,
            payload=value.decode(errors="replace") if value is not None else "",
        )
        await (await send(self.settings.topic_dead_letter, key, record.model_dump_json().encode()))
        await (await self._ready()).register([partition])
        part = self.keys.partition(partition)
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(part.counters, "consumed", 1)
        pipe.hincrby(part.counters, "dead_lettered", 1)
        # the latest few, for the operations view (the topic has them all)
        seen = {"topic": topic, "partition": partition, "offset": offset, "reason": reason, "at": time.time()}
        pipe.xadd(part.dead_letters, seen, maxlen=DEAD_LETTERS_KEPT, approximate=True)
        await pipe.execute()
        log.warning("dead-lettered %s[%d]@%d: %s", topic, partition, offset, reason)

    async def publish(self, partitions: list[int], batch: int = 50) -> int:
        """Move change events from the given partitions' Redis outboxes to Kafka; returns how many
        events were published.

        Each worker publishes the outboxes of the partitions it owns, so publishing spreads over the
        workers like the input. A partition's outbox is published by one worker at a time (a Redis
        lease): across a rebalance, the partition's old and new owners may both try.
        """
        published = 0
        for partition in partitions:
            published += await self._publish(self.keys.partition(partition), batch)
        return published

    async def _publish(self, part: PartitionKeys, batch: int) -> int:
        """One partition's outbox: an entry holds the change events of one write, each in a field
        named ``<n>:<topic>:<customer>``. They are sent with a plain aiokafka producer in record
        batches (acks=all), keyed and partitioned by customer like every segstream topic; entries
        leave the outbox once Kafka acknowledged them."""
        lock = part.outbox_lock
        taken = await self.client.set(lock, self.token, nx=True, px=5_000)
        if not taken and not await self.client.eval(_RENEW, 1, lock, self.token, 5_000):  # atomic: ours, renewed
            return 0
        entries = await self.client.xrange(part.outbox, count=batch)
        if not entries:
            return 0
        producer = await self._producer()
        batches = RecordBatches(producer)
        now_ms, published = int(time.time() * 1000), 0
        for _, fields in entries:
            for name, value in fields.items():
                _, topic_name, key = name.split(b":", 2)
                topic = topic_name.decode()
                if topic not in self._partitions:
                    self._partitions[topic] = len(await producer.partitions_for(topic))
                await batches.append(topic, partition_for(key.decode(), self._partitions[topic]), key, value, now_ms)
                published += 1
                if published % 500 == 0:
                    await asyncio.sleep(0)  # an outbox entry can hold thousands: let the agents run between
        await batches.flush()
        pipe = self.client.pipeline(transaction=True)
        pipe.xdel(part.outbox, *[entry_id for entry_id, _ in entries])
        pipe.hincrby(part.counters, "published", published)
        await pipe.execute()
        return published

    async def _producer(self) -> AIOKafkaProducer:
        if self._kafka is None:
            self._kafka = batch_producer(
                self.settings.kafka_bootstrap_servers,
                f"segstream-publisher-{self.token[:8]}",
                kafka_options(self.settings),
            )
            await self._kafka.start()
        return self._kafka

    async def refresh_thresholds(self, partitions: list[int]) -> int:
        """Adopt republished RFM thresholds and re-score the given partitions that still need it."""
        store = await self._ready()
        raw = await self.client.get(self.keys.thresholds)
        if raw is None:
            return 0
        scorer = RfmScorer.from_json(raw.decode())
        if scorer.version != store.scorer.version:
            log.info("RFM thresholds version %d -> %d: re-scoring", store.scorer.version, scorer.version)
            store.scorer, store.rules = scorer, replace(store.rules, bgnbd=bgnbd_of(raw))
        done = await self.client.hgetall(self.keys.rescored)
        changed = 0
        for partition in partitions:
            if int(done.get(str(partition).encode(), 0)) >= scorer.version:
                continue
            changed += await store.rescore(partition, chunk=self.settings.worker_rescore_chunk)
            await self.client.hset(self.keys.rescored, str(partition), scorer.version)
            log.info("re-scored partition %d with thresholds version %d", partition, scorer.version)
        return changed

    async def checkpoint_clusters(self) -> None:
        """Save the cluster model and its profiles (JSON). With several workers, the last save wins."""
        if self.store is None or self.store.clusters is None or not self.store.clusters.learned:
            return
        clusters = self.store.clusters
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.cluster_model, clusters.to_json())
        pipe.set(self.keys.cluster_profiles, json.dumps(clusters.profiles()))
        await pipe.execute()

    async def close(self) -> None:
        if self._kafka is not None:
            await self._kafka.stop()
        await self.client.aclose()


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "message"
    return f"{first.get('type')}: {where}: {first.get('msg')}"[:500]
