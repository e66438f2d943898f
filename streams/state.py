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
import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis.asyncio as aioredis

from segstream.keys import Keys
from segstream.schemas import (
    ChurnChanged,
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

__all__ = ["ApplyResult", "ProfileStore", "ScriptLost", "cause_of"]

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
class ApplyResult:
    applied: int = 0
    duplicates: int = 0
    retries: int = 0
    changes: list[SegmentChanged] = field(default_factory=list)


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
    ) -> None:
        self.client = client
        self.keys = keys
        self.scorer = scorer
        self.rules = rules
        self.segment_topic = segment_topic
        self.churn_topic = churn_topic
        self.recent_changes = recent_changes
        self.clusters = clusters
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

    # ---- the write ---------------------------------------------------------------------------

    def _payload(
        self, expected_version: int, after: Profile, ids: list[str], partition: int, steps, duplicates: int = 0
    ) -> tuple[list, str]:
        """KEYS and ARGV of one atomic write; ``steps`` are the (segment change, churn change) pairs to emit."""
        transitions, outbox = [], []
        for segment_change, churn_change in steps:
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
        now = after.evaluated_at if after.evaluated_at is not None else 0.0
        due = after.next_due(now, self.scorer, self.rules)
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
            "fields": after.to_redis(),
            "ids": ids,
            "due": -1 if due is None else due,
            "scored": after.last_purchase is not None,
            "customer": after.customer_unique_id,
            "transitions": transitions,
            "outbox": outbox,
            "recent": self.recent_changes,
            "duplicates": duplicates,
        }
        return keys, json.dumps(payload, separators=(",", ":"))

    def _step(self, profile: Profile, now: float, cause: str, source: str | None):
        """Re-derive ``profile`` at ``now``; the change events if its segment or churn status moved."""
        previous_segment, previous_churn = profile.segment, profile.churn
        profile.evaluate(now, self.scorer, self.rules)
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

    async def _read(self, customers: list[str], ids: dict[str, list[str]]) -> dict[str, tuple[Profile, list[bool]]]:
        pipe = self.client.pipeline(transaction=False)
        for customer in customers:
            pipe.hgetall(self.keys.profile(customer))
            pipe.smismember(self.keys.applied(customer), ids[customer]) if ids[customer] else pipe.ping()
        replies = await pipe.execute()
        out = {}
        for i, customer in enumerate(customers):
            data, seen = replies[2 * i], replies[2 * i + 1]
            profile = Profile.from_redis(data) if data else Profile(customer)
            out[customer] = (profile, [bool(s) for s in seen] if ids[customer] else [])
        return out

    async def apply(
        self,
        events: list[tuple[CustomerEvent, int]],
        watermarks: dict[int, float],
        clock: bool = True,
        max_retries: int = 20,
    ) -> ApplyResult:
        """Fold ``(event, partition)`` pairs into their customers' profiles, each event at most once.

        ``clock``: the events come from the topic that drives each customer's clock (orders: a
        purchase, delivery or cancellation re-derives the profile at its own event time, never
        earlier than the profile's last evaluation or the partition's watermark). Events of the
        other topic (reviews) update the aggregates and are re-derived at the profile's current
        time: which topic a worker reads first cannot change when a segment changes.
        """
        result = ApplyResult()
        by_customer: dict[str, list[tuple[CustomerEvent, int]]] = {}
        for event, partition in events:
            by_customer.setdefault(event.customer_unique_id, []).append((event, partition))
        pending = list(by_customer)
        for _attempt in range(max_retries):
            if not pending:
                return result
            ids = {c: [e.event_id for e, _ in by_customer[c]] for c in pending}
            current = await self._read(pending, ids)
            pipe = self.client.pipeline(transaction=False)
            planned = []
            for customer in pending:
                profile, seen = current[customer]
                before_version = profile.version
                fresh, fresh_ids, duplicates = [], set(), 0
                for (event, partition), already in zip(by_customer[customer], seen, strict=True):
                    if already or event.event_id in fresh_ids:
                        duplicates += 1
                    else:
                        fresh.append((event, partition))
                        fresh_ids.add(event.event_id)
                if not fresh:
                    planned.append((customer, duplicates, 0, None))
                    continue
                steps = []
                for event, partition in fresh:
                    profile.apply(event)
                    if clock:
                        now = max(
                            watermarks.get(partition, 0.0), event.event_time.timestamp(), profile.evaluated_at or 0.0
                        )
                    elif profile.evaluated_at is not None:
                        now = profile.evaluated_at
                    else:
                        continue  # nothing to derive before the customer's first purchase
                    if self.clusters is not None and profile.last_purchase is not None:
                        profile.cluster = self.clusters.learn_predict_one(features(profile, now))
                    steps.append(self._step(profile, now, cause_of(event), event.event_id))
                partition = fresh[-1][1]
                profile.version = before_version + 1
                keys, argv = self._payload(
                    before_version, profile, [e.event_id for e, _ in fresh], partition, steps, duplicates
                )
                pipe.evalsha(self._write_sha, len(keys), *keys, argv)
                planned.append((customer, duplicates, len(fresh), steps))
            only_duplicates = sum(d for _, d, _, steps in planned if steps is None)
            if only_duplicates:
                pipe.hincrby(self.keys.counters, "consumed", only_duplicates)
                pipe.hincrby(self.keys.counters, "duplicates", only_duplicates)
            replies = await self._execute(pipe) if len(pipe) else []
            retry = []
            reply_index = 0
            for customer, duplicates, fresh_count, steps in planned:
                if steps is None:
                    result.duplicates += duplicates
                    continue
                outcome = replies[reply_index]
                reply_index += 1
                if outcome == 1:
                    result.applied += fresh_count
                    result.duplicates += duplicates
                    result.changes.extend(s for s, _ in steps if s is not None)
                else:
                    retry.append(customer)
            result.retries += len(retry)
            pending = retry
        raise RuntimeError(f"gave up writing {len(pending)} profiles after {max_retries} conflicting attempts")

    async def advance(self, partition: int, ticks: list[float], max_rounds: int = 1_000) -> int:
        """Re-derive the partition's customers as the clock passes ``ticks`` (ascending event times).

        A customer due at ``d`` is re-derived at the first tick ``>= d``, exactly as if each tick
        were handled alone, but a run of ticks costs a few round trips instead of a few per tick.
        Returns how many customers' segment or churn status changed.
        """
        key, last = self.keys.due(partition), ticks[-1]
        changed = 0
        for _round in range(max_rounds):
            due = await self.client.zrangebyscore(key, "-inf", last, withscores=True)
            if not due:
                break
            at = {c.decode(): ticks[bisect.bisect_left(ticks, score)] for c, score in due}
            # A lost race leaves the customer due: the next round reads it afresh.
            changed += (await self._rederive(partition, at, "time"))[0]
        else:
            raise RuntimeError(f"customers of partition {partition} stayed due after {max_rounds} rounds")
        await self.client.hset(self.keys.watermarks, str(partition), last)
        return changed

    async def rescore(self, partition: int, chunk: int = 500, max_rounds: int = 20) -> int:
        """Re-derive every scored customer of the partition with the current thresholds, at the
        partition's watermark; changes carry the cause ``rescore``. Returns how many changed.
        """
        customers = [c.decode() for c in await self.client.zrange(self.keys.due(partition), 0, -1)]
        # At the partition's watermark: a customer's own last evaluation may be long past, since
        # under the old thresholds time alone had nothing to change for them.
        watermark = await self.client.hget(self.keys.watermarks, str(partition))
        now = float(watermark) if watermark is not None else None
        changed = 0
        for start in range(0, len(customers), chunk):
            pending = {c: now for c in customers[start : start + chunk]}
            for _round in range(max_rounds):
                if not pending:
                    break
                done, lost = await self._rederive(partition, pending, "rescore")
                changed += done
                pending = {c: now for c in lost}
            else:
                raise RuntimeError(f"could not rescore {len(pending)} customers of partition {partition}")
        return changed

    async def _rederive(self, partition: int, at: dict[str, float | None], cause: str) -> tuple[int, list[str]]:
        """Re-derive customers at ``at[customer]`` (None: their own current time) without new events.

        Returns (how many changed segment or churn status, customers whose write lost a race).
        """
        customers = list(at)
        current = await self._read(customers, {c: [] for c in customers})
        pipe = self.client.pipeline(transaction=False)
        planned = []
        for customer in customers:
            profile, _ = current[customer]
            if profile.evaluated_at is None and at[customer] is None:
                continue
            before_version = profile.version
            now = max(at[customer] or 0.0, profile.evaluated_at or 0.0)
            step = self._step(profile, now, cause, None)
            profile.version = before_version + 1
            keys, argv = self._payload(before_version, profile, [], partition, [step])
            pipe.evalsha(self._write_sha, len(keys), *keys, argv)
            planned.append((customer, step))
        replies = await self._execute(pipe) if planned else []
        changed, lost = 0, []
        for (customer, step), outcome in zip(planned, replies, strict=True):
            if outcome != 1:
                lost.append(customer)
            elif step != (None, None):
                changed += 1
        return changed, lost

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
