"""Profiles in Redis: idempotent, atomic updates and the event-time due index.

Each write goes through one Lua script that checks the profile's ``version`` (compare-and-set)
and that none of the event ids is already in the customer's applied set, and then, atomically:
writes the profile hash, adds the event ids, moves the customer in the due index, adjusts the
segment counts and the transition matrix of the event-day, appends to the capped stream of recent
changes, and puts the change events in the outbox stream. A redelivered event is in the applied
set, so it changes nothing and emits nothing; a write that lost a race (two agents, or two workers
across a rebalance) is retried from a fresh read.

Time-driven changes (a customer drifting into "At Risk" while buying nothing) come from the due
index: a sorted set per partition scoring each customer by the event time at which time alone
next changes their R score or churn status. A clock tick at T reads the customers due by T.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import heapq
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis.asyncio as aioredis

from segstream.keys import Keys
from segstream.schemas import (
    ChurnChanged,
    ClockTick,
    CustomerEvent,
    OrderCanceled,
    OrderDelivered,
    OrderPlaced,
    ReviewPosted,
    SegmentChanged,
    encode_event,
)
from streams.clusters import OnlineClusters, features
from streams.profile import Profile
from streams.scoring import ChurnRules, RfmScorer

__all__ = ["BatchResult", "ProfileStore", "ScriptLost", "cause_of"]

log = logging.getLogger(__name__)

_WRITE = """
local p = cjson.decode(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= p.expected then return -1 end
for _, id in ipairs(p.ids) do
  if redis.call('SISMEMBER', KEYS[2], id) == 1 then return -2 end
end
local flat = {}
for k, v in pairs(p.fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', KEYS[1], unpack(flat))
if #p.ids > 0 then redis.call('SADD', KEYS[2], unpack(p.ids)) end
-- every scored customer stays in the due index (+inf: time alone changes nothing), so a rescore finds them
if p.due >= 0 then redis.call('ZADD', KEYS[3], p.due, p.customer)
elseif p.scored then redis.call('ZADD', KEYS[3], '+inf', p.customer)
else redis.call('ZREM', KEYS[3], p.customer) end
for _, t in ipairs(p.transitions) do
  if t[1] ~= '' then redis.call('HINCRBY', KEYS[4], t[1], -1) end
  if t[2] ~= '' then redis.call('HINCRBY', KEYS[4], t[2], 1) end
  redis.call('HINCRBY', t[3], t[1] .. '>' .. t[2], 1)
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', p.recent, '*', 'change', t[4])
end
for _, entry in ipairs(p.outbox) do
  redis.call('XADD', KEYS[5], '*', 'topic', entry[1], 'key', p.customer, 'value', entry[2])
end
redis.call('HINCRBY', KEYS[7], 'applied', #p.ids)
-- counted with the write, so consumed = applied + duplicates + dead_lettered survives any crash
redis.call('HINCRBY', KEYS[7], 'consumed', #p.ids + p.duplicates)
if p.duplicates > 0 then redis.call('HINCRBY', KEYS[7], 'duplicates', p.duplicates) end
return 1
"""


class ScriptLost(aioredis.ConnectionError):
    """The write script vanished from Redis; the batch is retried (every write is idempotent)."""


CAUSES = {OrderPlaced: "purchase", ReviewPosted: "review", OrderDelivered: "delivery", OrderCanceled: "cancel"}


def cause_of(event: CustomerEvent) -> str:
    return CAUSES[type(event)]


@dataclass
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    retries: int = 0
    changed: int = 0  # customers whose segment or churn status changed
    changes: list[SegmentChanged] = field(default_factory=list)


@dataclass
class _Working:
    """One customer's state while a batch is folded: the profile being updated and what to write."""

    profile: Profile
    stored: dict[str, str]  # the Redis fields as read (or as last written): only changed ones are written
    applied: set[str] = field(default_factory=set)  # event ids already applied (Redis) or in this batch
    fresh: list[str] = field(default_factory=list)  # event ids applied by this batch
    duplicates: int = 0
    steps: list = field(default_factory=list)  # (segment change, churn change) per re-derivation
    due: float | None = None
    dirty: bool = False


class ProfileStore:
    """Reads and writes profiles for the stream workers (asyncio Redis client)."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        *,
        scorer: RfmScorer,
        rules: ChurnRules,
        segment_topic: str,
        churn_topic: str,
        recent_changes: int = 1000,
        clusters: OnlineClusters | None = None,
        cache_size: int = 200_000,
    ) -> None:
        self.client = client
        self.keys = keys
        self.scorer = scorer
        self.rules = rules
        self.segment_topic = segment_topic
        self.churn_topic = churn_topic
        self.recent_changes = recent_changes
        self.clusters = clusters
        self.cache_size = cache_size
        # committed profiles and their Redis fields, most recently written last
        self._cache: dict[str, tuple[Profile, dict[str, str]]] = {}
        self._write_sha = hashlib.sha1(_WRITE.encode()).hexdigest()
        self._script_loaded = False

    async def _load_script(self) -> None:
        # Loaded once; pipelines then call EVALSHA directly (redis-py's Script objects would ask
        # SCRIPT EXISTS on every pipeline, a round trip per write).
        await self.client.script_load(_WRITE)
        self._script_loaded = True

    async def _execute(self, pipe) -> list:
        """Run a pipeline of writes; reload the script once if Redis lost it (restart, flush)."""
        if not self._script_loaded:
            await self._load_script()
        try:
            return await pipe.execute(raise_on_error=True)
        except aioredis.ResponseError as exc:
            if "NOSCRIPT" not in str(exc):
                raise
            self._script_loaded = False
            raise ScriptLost("Redis lost the write script (restart or SCRIPT FLUSH); retrying") from exc

    # ---- reads ---------------------------------------------------------------------------------

    def _cached(self, customer: str) -> tuple[Profile, dict[str, str]] | None:
        hit = self._cache.get(customer)
        if hit is None:
            return None
        profile, stored = hit
        working = copy.copy(profile)  # the cached profile stays as committed; lists that apply() extends are copied
        working.products = list(profile.products)
        return working, stored

    def _remember(self, customer: str, profile: Profile, stored: dict[str, str]) -> None:
        if self.cache_size <= 0:
            return
        self._cache.pop(customer, None)
        self._cache[customer] = (profile, stored)
        if len(self._cache) > self.cache_size:
            self._cache.pop(next(iter(self._cache)))

    def forget(self, customers=None) -> None:
        """Drop cached profiles (all when ``customers`` is None): the next use reads Redis."""
        if customers is None:
            self._cache.clear()
        for customer in customers or ():
            self._cache.pop(customer, None)

    async def _load(
        self, partition: int, ids: dict[str, list[str]], due_until: float | None, only: set[str] | None
    ) -> tuple[dict[str, _Working], dict[str, float]]:
        """The working state of the customers with events (``ids``) and of those due by ``due_until``.

        Profiles come from the cache when present (a stale one loses its compare-and-set and is
        read again); two round trips at most: due customers and event customers' applied ids and
        profiles, then the profiles of due customers that had no event.
        """
        pipe = self.client.pipeline(transaction=False)
        if due_until is not None:
            pipe.zrangebyscore(self.keys.due(partition), "-inf", due_until, withscores=True)
        work: dict[str, _Working] = {}
        reading: list[str] = []
        for customer, event_ids in ids.items():
            pipe.smismember(self.keys.applied(customer), event_ids)
        for customer in ids:
            self._plan_read(pipe, customer, work, reading)
        replies = await pipe.execute()
        due: dict[str, float] = {}
        if due_until is not None:
            due = {c.decode(): score for c, score in replies[0]}
            if only is not None:
                due = {c: score for c, score in due.items() if c in only}
            replies = replies[1:]
        seen_replies = replies[: len(ids)]
        self._finish_read(reading, replies[len(ids) :], work)
        for (customer, event_ids), seen in zip(ids.items(), seen_replies, strict=True):
            work[customer].applied = {i for i, s in zip(event_ids, seen, strict=True) if s}
        missing = [c for c in due if c not in work]
        if missing:
            pipe = self.client.pipeline(transaction=False)
            reading = []
            for customer in missing:
                self._plan_read(pipe, customer, work, reading)
            if reading:
                self._finish_read(reading, await pipe.execute(), work)
        for customer, score in due.items():
            work[customer].due = score
        return work, due

    def _plan_read(self, pipe, customer: str, work: dict[str, _Working], reading: list[str]) -> None:
        hit = self._cached(customer)
        if hit is None:
            pipe.hgetall(self.keys.profile(customer))
            reading.append(customer)
        else:
            work[customer] = _Working(*hit)

    @staticmethod
    def _finish_read(reading: list[str], replies: list, work: dict[str, _Working]) -> None:
        for customer, data in zip(reading, replies, strict=True):
            stored = {k.decode(): v.decode() for k, v in data.items()}
            work[customer] = _Working(Profile.from_redis(stored) if stored else Profile(customer), stored)

    # ---- the fold --------------------------------------------------------------------------------

    async def process(
        self, partition: int, items: list, watermark: float = 0.0, clock: bool = True, max_retries: int = 20
    ) -> tuple[BatchResult, float]:
        """Fold one partition's records (customer events and clock ticks, in offset order) into Redis.

        Equivalent to handling the records one at a time, in a few round trips per batch:

        - a customer event is applied once (its id is checked against the customer's applied set
          and the batch) and re-derives the profile. ``clock``: the event comes from the topic that
          drives each customer's clock (orders: a purchase, delivery or cancellation re-derives the
          profile at its own event time, never earlier than the profile's last evaluation or the
          watermark). Events of the other topic (reviews) update the aggregates and are re-derived
          at the profile's current time: which topic a worker reads first cannot change when a
          segment changes.
        - a run of clock ticks moves the watermark; with ``clock``, each customer due by the run's
          last tick (the due index, or an event earlier in the batch) is re-derived at the first
          tick at or after its due time, and again if that makes it due again within the run.

        Each customer's outcome is one atomic compare-and-set write; a customer whose write lost a
        race (the other topic's agent, or another worker across a rebalance) is folded again from
        a fresh read. Returns the result and the watermark after the batch.
        """
        ids: dict[str, list[str]] = {}
        last_tick = None
        for item in items:
            if isinstance(item, ClockTick):
                moment = item.event_time.timestamp()
                last_tick = moment if last_tick is None else max(last_tick, moment)
            else:
                ids.setdefault(item.customer_unique_id, []).append(item.event_id)
        result = BatchResult()
        only: set[str] | None = None
        end = watermark
        for _attempt in range(max_retries):
            if only is not None:
                ids = {c: v for c, v in ids.items() if c in only}
            work, due = await self._load(partition, ids, last_tick if clock else None, only)
            end = self._fold(items, watermark, clock, work, due, only)
            lost = await self._write(partition, work, result, watermark=end if clock and last_tick else None)
            if not lost:
                return result, end
            result.retries += len(lost)
            self.forget(lost)
            only = set(lost)
        raise RuntimeError(f"gave up writing {len(only or ())} profiles after {max_retries} conflicting attempts")

    def _fold(
        self,
        items: list,
        watermark: float,
        clock: bool,
        work: dict[str, _Working],
        due: dict[str, float],
        only: set[str] | None,
    ) -> float:
        """Apply ``items`` to the working profiles in memory; returns the watermark after them."""
        heap = [(score, customer) for customer, score in due.items()]
        heapq.heapify(heap)
        index = 0
        while index < len(items):
            item = items[index]
            if isinstance(item, ClockTick):
                times = []
                while index < len(items) and isinstance(items[index], ClockTick):
                    times.append(items[index].event_time.timestamp())
                    index += 1
                times.sort()
                watermark = max(watermark, times[-1])
                while clock and heap and heap[0][0] <= times[-1]:
                    score, customer = heapq.heappop(heap)
                    state = work[customer]
                    if state.due != score:
                        continue  # moved by a later event or re-derivation
                    at = times[bisect.bisect_left(times, score)]
                    profile = state.profile
                    state.steps.append(self._step(profile, max(at, profile.evaluated_at or 0.0), "time", None))
                    self._reschedule(state, heap, customer)
                continue
            index += 1
            customer = item.customer_unique_id
            if only is not None and customer not in only:
                continue
            state = work[customer]
            if item.event_id in state.applied:
                state.duplicates += 1
                continue
            state.applied.add(item.event_id)
            state.fresh.append(item.event_id)
            profile = state.profile
            profile.apply(item)
            if clock:
                now = max(watermark, item.event_time.timestamp(), profile.evaluated_at or 0.0)
            elif profile.evaluated_at is not None:
                now = profile.evaluated_at
            else:
                continue  # nothing to derive before the customer's first purchase
            if self.clusters is not None and profile.last_purchase is not None:
                profile.cluster = self.clusters.learn_predict_one(features(profile, now))
            state.steps.append(self._step(profile, now, cause_of(item), item.event_id))
            self._reschedule(state, heap, customer)
        return watermark

    def _reschedule(self, state: _Working, heap: list, customer: str) -> None:
        profile = state.profile
        state.dirty = True
        now = profile.evaluated_at if profile.evaluated_at is not None else 0.0
        state.due = profile.next_due(now, self.scorer, self.rules)
        if state.due is not None:
            heapq.heappush(heap, (state.due, customer))

    async def _write(
        self, partition: int, work: dict[str, _Working], result: BatchResult, watermark: float | None = None
    ) -> list[str]:
        """One pipeline: a compare-and-set write per changed customer. Returns the customers that lost."""
        pipe = self.client.pipeline(transaction=False)
        planned: list[tuple[str, _Working, dict[str, str]]] = []
        only_duplicates = 0
        for customer, state in work.items():
            if not (state.dirty or state.fresh):
                only_duplicates += state.duplicates
                continue
            profile = state.profile
            expected = profile.version
            profile.version = expected + 1
            fields = profile.to_redis()
            changed = {k: v for k, v in fields.items() if state.stored.get(k) != v}
            keys, argv = self._payload(expected, profile, changed, state, partition)
            pipe.evalsha(self._write_sha, len(keys), *keys, argv)
            planned.append((customer, state, fields))
        if only_duplicates:
            pipe.hincrby(self.keys.counters, "consumed", only_duplicates)
            pipe.hincrby(self.keys.counters, "duplicates", only_duplicates)
        if watermark is not None:
            pipe.hset(self.keys.watermarks, str(partition), watermark)
        replies = await self._execute(pipe) if len(pipe) else []
        result.duplicates += only_duplicates
        lost = []
        for (customer, state, fields), outcome in zip(planned, replies, strict=False):
            if outcome != 1:
                lost.append(customer)
                continue
            self._remember(customer, state.profile, fields)
            result.applied += len(state.fresh)
            result.duplicates += state.duplicates
            result.changed += any(step != (None, None) for step in state.steps)
            result.changes.extend(s for s, _ in state.steps if s is not None)
        return lost

    def _payload(
        self, expected_version: int, after: Profile, fields: dict[str, str], state: _Working, partition: int
    ) -> tuple[list, str]:
        """KEYS and ARGV of one atomic write of the changed ``fields``, the new event ids and the changes."""
        transitions, outbox = [], []
        for segment_change, churn_change in state.steps:
            if segment_change is not None:
                wire = encode_event(segment_change).decode()
                outbox.append([self.segment_topic, wire])
                transitions.append(
                    [
                        segment_change.previous_segment,
                        segment_change.segment,
                        self.keys.transitions(segment_change.event_time.strftime("%Y-%m-%d")),
                        wire,
                    ]
                )
            if churn_change is not None:
                outbox.append([self.churn_topic, encode_event(churn_change).decode()])
        keys = [
            self.keys.profile(after.customer_unique_id),
            self.keys.applied(after.customer_unique_id),
            self.keys.due(partition),
            self.keys.segments,
            self.keys.outbox,
            self.keys.changes,
            self.keys.counters,
        ] + [t[2] for t in transitions]
        payload = {
            "expected": expected_version,
            "fields": fields,
            "ids": state.fresh,
            "due": -1 if state.due is None else state.due,
            "scored": after.last_purchase is not None,
            "customer": after.customer_unique_id,
            "transitions": transitions,
            "outbox": outbox,
            "recent": self.recent_changes,
            "duplicates": state.duplicates,
        }
        return keys, json.dumps(payload, separators=(",", ":"))

    def _step(self, profile: Profile, now: float, cause: str, source: str | None):
        """Re-derive ``profile`` at ``now``; the change events if its segment or churn status moved."""
        previous_segment, previous_churn = profile.segment, profile.churn
        profile.evaluate(now, self.scorer, self.rules)
        if profile.segment == previous_segment and profile.churn == previous_churn:
            return None, None
        moment = datetime.fromtimestamp(now, tz=UTC)
        segment_change = churn_change = None
        if profile.segment != previous_segment:
            profile.segment_changes += 1
            segment_change = SegmentChanged(
                event_id=f"segment:{profile.customer_unique_id}:{profile.segment_changes}",
                event_time=moment,
                customer_unique_id=profile.customer_unique_id,
                previous_segment=previous_segment,
                segment=profile.segment,
                cause=cause,
                r=profile.r,
                f=profile.f,
                m=profile.m,
                cluster=profile.cluster,
                churn=profile.churn,
                source_event_id=source,
            )
        if profile.churn != previous_churn:
            profile.churn_changes += 1
            churn_change = ChurnChanged(
                event_id=f"churn:{profile.customer_unique_id}:{profile.churn_changes}",
                event_time=moment,
                customer_unique_id=profile.customer_unique_id,
                previous_status=previous_churn,
                status=profile.churn,
                reasons=profile.churn_reasons,
                cause=cause,
                source_event_id=source,
            )
        return segment_change, churn_change

    async def rescore(self, partition: int, chunk: int = 500, max_rounds: int = 20) -> int:
        """Re-derive every scored customer of the partition with the current thresholds, at the
        partition's watermark; changes carry the cause ``rescore``. Returns how many changed.
        """
        customers = [c.decode() for c in await self.client.zrange(self.keys.due(partition), 0, -1)]
        # At the partition's watermark: a customer's own last evaluation may be long past, since
        # under the old thresholds time alone had nothing to change for them.
        watermark = await self.client.hget(self.keys.watermarks, str(partition))
        now = float(watermark) if watermark is not None else 0.0
        result = BatchResult()
        for start in range(0, len(customers), chunk):
            pending = customers[start : start + chunk]
            for _round in range(max_rounds):
                if not pending:
                    break
                pipe, work, reading = self.client.pipeline(transaction=False), {}, []
                for customer in pending:
                    self._plan_read(pipe, customer, work, reading)
                if reading:
                    self._finish_read(reading, await pipe.execute(), work)
                for customer, state in work.items():
                    profile = state.profile
                    if profile.evaluated_at is None:
                        continue
                    state.steps.append(self._step(profile, max(now, profile.evaluated_at), "rescore", None))
                    self._reschedule(state, [], customer)
                pending = await self._write(partition, work, result)
                self.forget(pending)
            else:
                raise RuntimeError(f"could not rescore {len(pending)} customers of partition {partition}")
        return result.changed

    async def count(self, latencies_ms: list[float] = (), keep_latencies: int = 50_000, **increments: int) -> None:
        """Add to the counters, and remember the latest send-to-update latencies (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for name, value in increments.items():
            if value:
                pipe.hincrby(self.keys.counters, name, value)
        if latencies_ms:
            pipe.lpush(self.keys.latencies, *latencies_ms)
            pipe.ltrim(self.keys.latencies, 0, keep_latencies - 1)
        if len(pipe):
            await pipe.execute()

    async def counters(self) -> Counter:
        raw = await self.client.hgetall(self.keys.counters)
        return Counter({k.decode(): int(v) for k, v in raw.items()})
