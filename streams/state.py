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
import functools
import hashlib
import heapq
import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from segstream.keys import Keys
from segstream.schemas import (
    ChurnChanged,
    ClockTick,
    CustomerEvent,
    OrderCanceled,
    OrderDelivered,
    OrderPlaced,
    OrderReturned,
    ReviewPosted,
    SegmentChanged,
    flat_encoder,
    wire_time,
)
from streams.clusters import OnlineClusters, features
from streams.profile import Profile
from streams.scoring import ChurnRules, RfmScorer

__all__ = ["BatchResult", "ProfileStore", "ScriptLost", "cause_of"]

log = logging.getLogger(__name__)

_WRITE = """
-- ARGV: a header, then sections, all flat strings (no decoding). Header: profile prefix, applied
-- prefix, transitions prefix, due-index prefix, segments, changes, outbox, counters, watermarks,
-- latencies, recent-changes cap, latencies cap, segment topic, churn topic, duplicates of
-- customers with nothing to write, clock ticks, number of watermarks, number of send times,
-- number of writes. Sections: (partition, watermark) * watermarks; send time (ms) * send times;
-- then per write: customer; its shape, eight numbers in one string: 'partition expected-version
-- n-fields n-ids scored(1/0) duplicates n-segment-changes n-churn-changes'; the field names in one
-- string, space-separated; value * n-fields; id * n-ids; due ('' = none); (previous, new,
-- event-day, payload) * n-segment-changes; payload * n-churn-changes.
-- (Packing costs the worker per argument: numbers and names travel together.)
local profile, applied_prefix, transitions, due_prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local segments, changes, outbox, counters, watermarks = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local latencies, recent, latency_cap = ARGV[10], ARGV[11], tonumber(ARGV[12])
local segment_topic, churn_topic = ARGV[13], ARGV[14]
local duplicates, ticks = tonumber(ARGV[15]), tonumber(ARGV[16])
local nwatermarks, nsent, nwrites = tonumber(ARGV[17]), tonumber(ARGV[18]), tonumber(ARGV[19])
local watermarks_at = 20
local sent_at = watermarks_at + 2 * nwatermarks
local applied, consumed = 0, duplicates
local lost = {}
-- segment counts and transitions add up over the batch; change events leave in a few outbox
-- entries, each field '<n>:<topic>:<customer>' holding one event
local counts, moves, out, latest = {}, {}, {}, {}
local function flush_outbox()
  if #out > 0 then redis.call('XADD', outbox, '*', unpack(out)); out = {} end
end
local function to_outbox(topic, customer, payload)
  out[#out + 1] = (#out / 2) .. ':' .. topic .. ':' .. customer
  out[#out + 1] = payload
  if #out >= 2000 then flush_outbox() end
end
local i = sent_at + nsent
for write = 1, nwrites do
  local customer, names = ARGV[i], ARGV[i + 2]
  local shape = {}
  for number in string.gmatch(ARGV[i + 1], '%d+') do shape[#shape + 1] = tonumber(number) end
  local partition, expected, nfields, nids, scored, dups, nsegment, nchurn = unpack(shape)
  local due_key = due_prefix .. partition
  local pkey, akey = profile .. customer, applied_prefix .. customer
  local fields_at = i + 3
  local ids_at = fields_at + nfields
  local due = ARGV[ids_at + nids]
  local segment_at = ids_at + nids + 1
  local churn_at = segment_at + 4 * nsegment
  i = churn_at + nchurn
  local ok = tonumber(redis.call('HGET', pkey, 'version') or '0') == expected
  if ok then
    for k = ids_at, ids_at + nids - 1 do
      if redis.call('SISMEMBER', akey, ARGV[k]) == 1 then ok = false; break end
    end
  end
  if not ok then
    lost[#lost + 1] = write
  else
    local hash, k = {}, fields_at
    for name in string.gmatch(names, '%S+') do
      hash[#hash + 1] = name
      hash[#hash + 1] = ARGV[k]
      k = k + 1
    end
    redis.call('HSET', pkey, unpack(hash))
    if nids > 0 then redis.call('SADD', akey, unpack(ARGV, ids_at, ids_at + nids - 1)) end
    -- every scored customer stays in the due index (+inf: time alone changes nothing), so a rescore finds them
    if due ~= '' then redis.call('ZADD', due_key, due, customer)
    elseif scored == 1 then redis.call('ZADD', due_key, '+inf', customer)
    else redis.call('ZREM', due_key, customer) end
    for k = segment_at, segment_at + 4 * (nsegment - 1), 4 do
      local previous, new, payload = ARGV[k], ARGV[k + 1], ARGV[k + 3]
      if previous ~= '' then counts[previous] = (counts[previous] or 0) - 1 end
      if new ~= '' then counts[new] = (counts[new] or 0) + 1 end
      local day = transitions .. ARGV[k + 2]
      moves[day] = moves[day] or {}
      moves[day][previous .. '>' .. new] = (moves[day][previous .. '>' .. new] or 0) + 1
      latest[#latest + 1] = payload
      to_outbox(segment_topic, customer, payload)
    end
    for k = churn_at, churn_at + nchurn - 1 do
      to_outbox(churn_topic, customer, ARGV[k])
    end
    applied = applied + nids
    consumed = consumed + nids + dups
    duplicates = duplicates + dups
  end
end
flush_outbox()
-- the capped stream of recent changes only ever keeps the last `recent` of them
for k = math.max(1, #latest - tonumber(recent) + 1), #latest do
  redis.call('XADD', changes, 'MAXLEN', '~', recent, '*', 'change', latest[k])
end
for name, delta in pairs(counts) do
  if delta ~= 0 then redis.call('HINCRBY', segments, name, delta) end
end
for day, fields in pairs(moves) do
  for field, n in pairs(fields) do redis.call('HINCRBY', day, field, n) end
end
-- counted with the writes, so consumed = applied + duplicates + dead_lettered survives any crash
if consumed > 0 then redis.call('HINCRBY', counters, 'consumed', consumed) end
if applied > 0 then redis.call('HINCRBY', counters, 'applied', applied) end
if duplicates > 0 then redis.call('HINCRBY', counters, 'duplicates', duplicates) end
if ticks > 0 then redis.call('HINCRBY', counters, 'ticks', ticks) end
-- a watermark never goes back (a worker catching up again from the start of a topic reads old ticks)
for k = watermarks_at, watermarks_at + 2 * nwatermarks - 1, 2 do
  local stored = tonumber(redis.call('HGET', watermarks, ARGV[k]) or '-inf')
  if tonumber(ARGV[k + 1]) > stored then redis.call('HSET', watermarks, ARGV[k], ARGV[k + 1]) end
end
-- latency from each event's send time to this update (the server's clock, once all is written)
if nsent > 0 then
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + tonumber(now[2]) / 1000
  local samples = {}
  for k = sent_at, sent_at + nsent - 1 do
    samples[#samples + 1] = string.format('%.1f', now_ms - tonumber(ARGV[k]))
    if #samples == 1000 then redis.call('LPUSH', latencies, unpack(samples)); samples = {} end
  end
  if #samples > 0 then redis.call('LPUSH', latencies, unpack(samples)) end
  redis.call('LTRIM', latencies, 0, latency_cap - 1)
end
return lost
"""


_READ = """
-- ARGV: profile prefix, applied prefix, number of due queries, (due key, due until) * queries, customers...
-- returns: per query the due customers with their scores (flat), then per customer its profile
-- hash (flat) and its applied event ids
local out, queries = {}, tonumber(ARGV[3])
for k = 4, 3 + 2 * queries, 2 do
  out[#out + 1] = redis.call('ZRANGEBYSCORE', ARGV[k], '-inf', ARGV[k + 1], 'WITHSCORES')
end
for k = 4 + 2 * queries, #ARGV do
  out[#out + 1] = redis.call('HGETALL', ARGV[1] .. ARGV[k])
  out[#out + 1] = redis.call('SMEMBERS', ARGV[2] .. ARGV[k])
end
return out
"""


def _after(moment: float) -> float:
    """The next representable time after ``moment``: "due by T, inclusive of what is held at T"."""
    return math.nextafter(moment, math.inf)


class ScriptLost(aioredis.ConnectionError):
    """A script vanished from Redis; the batch is retried (every write is idempotent)."""


def _noscript(reply) -> bool:
    # redis-py maps Redis's NOSCRIPT error to NoScriptError, whose text no longer says NOSCRIPT
    return isinstance(reply, NoScriptError)


_SHA = {script: hashlib.sha1(script.encode()).hexdigest() for script in (_READ, _WRITE)}


# Change events are encoded from their values, without building and validating their models: a
# replay derives more of them than it has input events (tests check the bytes equal the models').
_segment_changed = flat_encoder(SegmentChanged)
_churn_changed = flat_encoder(ChurnChanged)
_wire_time = functools.lru_cache(maxsize=10_000)(wire_time)  # the customers due at a tick share its time

CAUSES = {
    OrderPlaced: "purchase",
    ReviewPosted: "review",
    OrderDelivered: "delivery",
    OrderCanceled: "cancel",
    OrderReturned: "cancel",
}


def cause_of(event: CustomerEvent) -> str:
    return CAUSES[type(event)]


@dataclass
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    retries: int = 0
    changed: int = 0  # customers whose segment or churn status changed


@dataclass(slots=True)
class _Working:
    """One customer's state while a batch is folded: the profile being updated and what to write."""

    profile: Profile
    base: Profile | None  # the profile as stored (None: not in Redis yet): only changed fields are written
    applied: set[str]  # event ids applied as stored (shared with the cache: never changed in place)
    fresh: list[str] = field(default_factory=list)  # event ids applied by this batch
    duplicates: int = 0
    # change events of the batch: (previous, new, event-day, payload) flat per segment change; payloads of churn changes
    segment_changes: list = field(default_factory=list)
    churn_changes: list[bytes] = field(default_factory=list)
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
        recent_latencies: int = 50_000,
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
        self.recent_latencies = recent_latencies
        self.clusters = clusters
        self.cache_size = cache_size
        # profiles as this worker last wrote them, with their applied event ids; most recent last
        self._cache: dict[str, tuple[Profile, set[str]]] = {}
        self._loaded: set[str] = set()  # the scripts Redis has (by source)

    async def _run_script(self, script: str, args: list) -> list:
        """Run a script by its SHA (loading it once; again if Redis lost it); its reply."""
        return (await self._run_scripts(script, [args]))[0]

    async def _run_scripts(self, script: str, calls: Iterable[list]) -> list:
        """Run one script call per argument list of ``calls``, pipelined on one connection.

        Each call is sent as soon as ``calls`` yields it, so Redis runs one while the next is
        built (a lazy iterable overlaps the worker's CPU with Redis's), and the replies are read at
        the end: one wait for all. Commands are packed by hiredis, and replies parsed by it: a
        batch has tens of thousands of arguments, which redis-py's pure-Python packer and
        per-command pipeline replies spend several times longer on. A call that found the script
        missing (Redis restarted, or SCRIPT FLUSH) did not run: it is sent again after a reload.
        """
        sha = _SHA[script]
        if script not in self._loaded:
            await self.client.script_load(script)
            self._loaded.add(script)
        packed: list[bytes] = []

        def commands():
            for args in calls:
                packed.append(hiredis.pack_command(("EVALSHA", sha, 0, *args)))
                yield packed[-1]

        replies = await self._pipelined(commands())
        unrun = [index for index, reply in enumerate(replies) if _noscript(reply)]
        if unrun:
            await self.client.script_load(script)
            for index, reply in zip(unrun, await self._pipelined(packed[i] for i in unrun), strict=True):
                replies[index] = reply
        for reply in replies:
            if _noscript(reply):
                raise ScriptLost("Redis keeps losing a script; retrying the batch")
            if isinstance(reply, aioredis.ResponseError):
                raise reply
        return replies

    async def _pipelined(self, commands: Iterable[bytes]) -> list:
        """Send each packed command as it comes, then read every reply (error replies are
        returned, not raised, so that the connection is read to the end)."""
        pool = self.client.connection_pool
        connection = await pool.get_connection()
        try:
            sent = 0
            for command in commands:
                await connection.send_packed_command(command)
                sent += 1
            replies = []
            for _ in range(sent):
                try:
                    replies.append(await connection.read_response())
                except aioredis.ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            await connection.disconnect()  # a half-read reply must not reach the next user
            raise
        finally:
            await pool.release(connection)

    # ---- reads ---------------------------------------------------------------------------------

    def _remember(self, customer: str, profile: Profile, applied: set[str]) -> None:
        if self.cache_size <= 0:
            return
        self._cache.pop(customer, None)
        self._cache[customer] = (profile, applied)
        if len(self._cache) > self.cache_size:
            self._cache.pop(next(iter(self._cache)))

    async def _load(
        self, wanted: dict[int, list[str]], due_until: dict[int, float], only: dict[int, set[str]] | None = None
    ) -> dict[int, tuple[dict[str, _Working], dict[str, float]]]:
        """Per partition, the working state of its ``wanted`` customers and of its customers due
        by ``due_until[partition]`` (partitions missing there: none due), with those due times.

        A cached profile is used as it is: it is what this worker last wrote, and its applied ids
        with it; if anything else wrote the customer since, the version moved and the write loses
        its compare-and-set, and the customer is read again. Two round trips at most, whatever the
        number of partitions.
        """
        loaded = {partition: ({}, {}) for partition in wanted}
        reading = [(p, c) for p, cs in wanted.items() for c in cs if not self._from_cache(c, loaded[p][0])]
        queries = [(p, until) for p, until in due_until.items() if p in loaded]
        if reading or queries:
            replies = await self._read([c for _, c in reading], queries)
            for (partition, _until), flat in zip(queries, replies, strict=False):
                keep = None if only is None else only[partition]
                scored = zip((c.decode() for c in flat[::2]), flat[1::2], strict=True)
                loaded[partition][1].update((c, float(s)) for c, s in scored if keep is None or c in keep)
            self._finish_read(reading, replies[len(queries) :], loaded)
        missing = [
            (p, c) for p, (work, due) in loaded.items() for c in due if c not in work and not self._from_cache(c, work)
        ]
        if missing:
            self._finish_read(missing, await self._read([c for _, c in missing], []), loaded)
        for work, due in loaded.values():
            for customer, score in due.items():
                work[customer].due = score
        return loaded

    def _from_cache(self, customer: str, work: dict[str, _Working]) -> bool:
        hit = self._cache.get(customer)
        if hit is not None:
            profile, applied = hit
            work[customer] = _Working(profile.copy(), profile, applied)
        return hit is not None

    async def _read(self, customers: list[str], queries: list[tuple[int, float]]) -> list:
        """One script call: per ``(partition, until)`` query the partition's customers due by then
        (flat, with scores), then each customer's profile hash (flat) and applied event ids."""
        due = [arg for partition, until in queries for arg in (self.keys.due(partition), repr(until))]
        prefixes = [self.keys.profile(""), self.keys.applied("")]
        return await self._run_script(_READ, [*prefixes, len(queries), *due, *customers])

    @staticmethod
    def _finish_read(
        customers: list[tuple[int, str]], replies: list, loaded: dict[int, tuple[dict[str, _Working], dict]]
    ) -> None:
        for index, (partition, customer) in enumerate(customers):
            flat, applied = replies[2 * index], replies[2 * index + 1]
            if flat:
                base = Profile.from_redis(dict(zip(flat[::2], flat[1::2], strict=True)))
                state = _Working(base.copy(), base, {i.decode() for i in applied})
            else:
                state = _Working(Profile(customer), None, {i.decode() for i in applied})
            loaded[partition][0][customer] = state

    # ---- the fold --------------------------------------------------------------------------------

    async def process(
        self,
        batches: dict[int, list],
        watermarks: dict[int, float],
        clock: bool = True,
        *,
        ticks: int = 0,
        sent_at_ms: list[int] | None = None,
        max_retries: int = 20,
    ) -> tuple[BatchResult, dict[int, float]]:
        """Fold each partition's records (customer events and clock ticks, in offset order) into Redis.

        Equivalent to handling the records one at a time, waiting on Redis two or three times per
        batch whatever the number of partitions (one read; the writes, pipelined; a second read for
        due customers that are neither cached nor in the batch):

        - a customer event is applied once (its id is checked against the customer's applied set
          and the batch) and re-derives the profile. ``clock``: the event comes from the topic that
          drives each customer's clock (orders: a purchase, delivery or cancellation re-derives the
          profile at its own event time, never earlier than the profile's last evaluation or the
          watermark). Events of the other topic (reviews) update the aggregates and are re-derived
          at the profile's current time: which topic a worker reads first cannot change when a
          segment changes.
        - a run of clock ticks moves the partition's watermark; with ``clock``, each customer due
          by the run's last tick (the due index, or an event earlier in the batch) is re-derived at
          the first tick at or after its due time, and again if that makes it due again in the run.

        Partitions hold disjoint customers: each one's records are folded on their own, from its
        watermark in ``watermarks`` (0 if absent), and written by one script call, sent as soon as
        the partition is folded (Redis writes one partition while the next is folded); the calls
        are pipelined, with one wait for all their replies. Every customer's outcome is an atomic
        compare-and-set write. The last call also counts the batch's ``ticks`` and records the
        latency from each ``sent_at_ms`` (the replay's send time) to that write. A customer whose
        write lost a race (the other topic's agent, or another worker across a rebalance) is folded
        again from a fresh read. Returns the result and each partition's watermark after the batch.
        """
        customers: dict[int, dict[str, None]] = {}  # per partition, in order of first appearance
        last_tick: dict[int, float] = {}
        finals: set[int] = set()  # partitions whose replay ends in this batch
        for partition, items in batches.items():
            seen = customers[partition] = {}
            for item in items:
                if isinstance(item, ClockTick):
                    moment = item.event_time.timestamp()
                    last_tick[partition] = max(last_tick.get(partition, moment), moment)
                    if item.final:
                        finals.add(partition)
                else:
                    seen[item.customer_unique_id] = None
        result = BatchResult()
        only: dict[int, set[str]] | None = None
        ends = {partition: watermarks.get(partition, 0.0) for partition in batches}
        extras = (ticks, sent_at_ms or [])  # written once, with the first attempt's last call
        # each topic's watermarks apart: the orders clock waits for the reviews' (streams/agents.py)
        marks_key = self.keys.watermarks if clock else self.keys.review_watermarks
        for _attempt in range(max_retries):
            wanted = {
                p: [c for c in seen if only is None or c in only[p]]
                for p, seen in customers.items()
                if only is None or p in only
            }
            due_until = {p: _after(t) if p in finals else t for p, t in last_tick.items()} if clock else {}
            loaded = await self._load(wanted, due_until, only)

            def folded(loaded=loaded, only=only, extras=extras):
                for n, (partition, (part, due)) in enumerate(loaded.items(), start=1):
                    keep = None if only is None else only[partition]
                    start = watermarks.get(partition, 0.0)
                    ends[partition] = self._fold(batches[partition], start, clock, part, due, keep)
                    moved = ends[partition] if partition in last_tick else None
                    yield partition, part, moved, *(extras if n == len(loaded) else (0, []))

            lost = await self._write(folded(), result, marks_key)
            extras = (0, [])
            if not lost:
                return result, ends
            result.retries += sum(map(len, lost.values()))
            only = lost
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
                times, final = [], False
                while index < len(items) and isinstance(items[index], ClockTick):
                    times.append(items[index].event_time.timestamp())
                    final = final or items[index].final
                    index += 1
                times.sort()
                watermark = max(watermark, times[-1])
                # The end of a replay: nothing follows on this partition, so reviews held at its
                # very last instant take effect too (after the orders topic's, as at any instant).
                limit = _after(times[-1]) if final else times[-1]
                while clock and heap and heap[0][0] <= limit:
                    score, customer = heapq.heappop(heap)
                    state = work[customer]
                    if state.due != score:
                        continue  # moved by a later event or re-derivation
                    tick = times[min(bisect.bisect_left(times, score), len(times) - 1)]
                    at = max(tick, state.profile.evaluated_at or 0.0)
                    self._release(state, at)
                    self._step(state, at, "time", None)
                    if final:
                        self._release(state, limit)
                    self._reschedule(state, heap, customer)
                continue
            index += 1
            customer = item.customer_unique_id
            if only is not None and customer not in only:
                continue
            state = work[customer]
            if item.event_id in state.applied or item.event_id in state.fresh:
                state.duplicates += 1
                continue
            state.fresh.append(item.event_id)
            profile = state.profile
            moment = item.event_time.timestamp()
            if clock:
                now = max(watermark, moment, profile.evaluated_at or 0.0)
                self._release(state, now)  # held reviews older than this event come first
            elif profile.evaluated_at is None or moment >= profile.evaluated_at:
                # A review takes effect at its own event time: the customer's clock (the orders
                # topic) has not reached it yet, so it waits in the profile for the clock to pass.
                profile.hold(item)
                self._reschedule(state, heap, customer)
                continue
            else:
                now = profile.evaluated_at  # late (behind the clock): takes effect now
            profile.apply(item)
            self._learn(profile, now)
            self._step(state, now, cause_of(item), item.event_id)
            self._reschedule(state, heap, customer)
        return watermark

    def _learn(self, profile: Profile, now: float) -> None:
        if self.clusters is not None and profile.last_purchase is not None:
            profile.cluster = self.clusters.learn_predict_one(features(profile, now))

    def _release(self, state: _Working, before: float) -> None:
        """Apply the customer's held reviews with an event time before ``before``, each at its own time."""
        profile = state.profile
        for moment, event_id, score in profile.release(before):
            profile.apply_review(moment, event_id, score)
            self._step(state, max(moment, profile.evaluated_at or 0.0), "review", event_id)

    def _reschedule(self, state: _Working, heap: list, customer: str) -> None:
        profile = state.profile
        state.dirty = True
        now = profile.evaluated_at if profile.evaluated_at is not None else 0.0
        moments = [m for m in (profile.next_due(now, self.scorer, self.rules), profile.held_due) if m is not None]
        state.due = min(moments) if moments else None
        if state.due is not None:
            heapq.heappush(heap, (state.due, customer))

    async def _write(
        self,
        parts: Iterable[tuple[int, dict[str, _Working], float | None, int, list[int]]],
        result: BatchResult,
        marks_key: str | None = None,
    ) -> dict[int, set[str]]:
        """Write each ``(partition, work, watermark, ticks, sent_at_ms)`` of ``parts`` with one
        atomic script call, pipelined (see :meth:`_run_scripts`; ``parts`` may be lazy).

        Returns, per partition, the customers whose write lost (their cached profiles are stale
        and are dropped).
        """
        plans: list[tuple[int, list, int]] = []

        def calls():
            for partition, work, watermark, ticks, sent_at_ms in parts:
                args, planned, only_duplicates = self._write_args(
                    partition, work, watermark, ticks, sent_at_ms, marks_key or self.keys.watermarks
                )
                if args is not None:
                    plans.append((partition, planned, only_duplicates))
                    yield args

        replies = await self._run_scripts(_WRITE, calls())
        lost: dict[int, set[str]] = {}
        for (partition, planned, only_duplicates), reply in zip(plans, replies, strict=True):
            lost_at = set(reply)
            result.duplicates += only_duplicates
            for index, (customer, state) in enumerate(planned, start=1):
                if index in lost_at:
                    lost.setdefault(partition, set()).add(customer)
                    self._cache.pop(customer, None)
                    continue
                applied = state.applied.union(state.fresh) if state.fresh else state.applied
                self._remember(customer, state.profile, applied)
                result.applied += len(state.fresh)
                result.duplicates += state.duplicates
                result.changed += bool(state.segment_changes or state.churn_changes)
        return lost

    def _write_args(
        self,
        partition: int,
        work: dict[str, _Working],
        watermark: float | None,
        ticks: int,
        sent_at_ms: list[int],
        marks_key: str,
    ) -> tuple[list | None, list[tuple[str, _Working]], int]:
        """The write script's arguments for one partition (None: nothing to write), the
        customers it writes in order, and the duplicates of customers with nothing to write."""
        args: list[str | int] = []
        planned, only_duplicates = [], 0
        for customer, state in work.items():
            if not (state.dirty or state.fresh):
                only_duplicates += state.duplicates
                continue
            profile = state.profile
            expected = profile.version
            profile.version = expected + 1
            fields = profile.changed_fields(state.base)
            scored = 1 if profile.last_purchase is not None else 0
            counts = f"{len(state.segment_changes) // 4} {len(state.churn_changes)}"
            shape = f"{partition} {expected} {len(fields)} {len(state.fresh)} {scored} {state.duplicates} {counts}"
            args += [customer, shape, " ".join(fields), *fields.values(), *state.fresh]
            args.append("" if state.due is None else repr(state.due))
            args += state.segment_changes
            args += state.churn_changes
            planned.append((customer, state))
        if not (planned or only_duplicates or watermark is not None or ticks or sent_at_ms):
            return None, planned, only_duplicates
        header = [
            self.keys.profile(""),
            self.keys.applied(""),
            self.keys.transitions(""),
            self.keys.due(""),
            self.keys.segments,
            self.keys.changes,
            self.keys.outbox,
            self.keys.counters,
            marks_key,
            self.keys.latencies,
            self.recent_changes,
            self.recent_latencies,
            self.segment_topic,
            self.churn_topic,
            only_duplicates,
            ticks,
            0 if watermark is None else 1,
            len(sent_at_ms),
            len(planned),
        ]
        marks = [] if watermark is None else [partition, repr(watermark)]
        return [*header, *marks, *sent_at_ms, *args], planned, only_duplicates

    def _step(self, state: _Working, now: float, cause: str, source: str | None) -> None:
        """Re-derive the profile at ``now``; keep the change events if its segment or churn status moved."""
        profile = state.profile
        previous_segment, previous_churn = profile.segment, profile.churn
        profile.evaluate(now, self.scorer, self.rules)
        profile.thresholds_version = self.scorer.version
        if profile.segment == previous_segment and profile.churn == previous_churn:
            return
        moment = _wire_time(now)
        customer = profile.customer_unique_id
        if profile.segment != previous_segment:
            profile.segment_changes += 1
            payload = _segment_changed(
                f"segment:{customer}:{profile.segment_changes}",
                moment,
                customer,
                previous_segment,
                profile.segment,
                cause,
                profile.r,
                profile.f,
                profile.m,
                profile.cluster,
                profile.churn,
                source,
            )
            state.segment_changes += (previous_segment, profile.segment, moment[:10], payload)
        if profile.churn != previous_churn:
            profile.churn_changes += 1
            state.churn_changes.append(
                _churn_changed(
                    f"churn:{customer}:{profile.churn_changes}",
                    moment,
                    customer,
                    previous_churn,
                    profile.churn,
                    profile.churn_reasons,
                    cause,
                    source,
                )
            )

    async def rescore(self, partition: int, chunk: int = 500, max_rounds: int = 20, max_passes: int = 10) -> int:
        """Re-derive every scored customer of the partition who does not carry the current
        thresholds' version yet, at the partition's watermark; changes carry the cause ``rescore``.
        Returns how many changed.

        Resumable and exact: each profile records the thresholds version it was last derived with
        (``thresholds_version``), so a worker that restarts, or takes the partition over, redoes
        only who is left; passes repeat until one finds nobody left (a batch folded with the old
        thresholds while the first pass ran writes the old version, and the next pass redoes it).
        """
        version = self.scorer.version
        result = BatchResult()
        for _pass in range(max_passes):
            customers = [c.decode() for c in await self.client.zrange(self.keys.due(partition), 0, -1)]
            # At the partition's watermark: a customer's own last evaluation may be long past, since
            # under the old thresholds time alone had nothing to change for them.
            watermark = await self.client.hget(self.keys.watermarks, str(partition))
            now = float(watermark) if watermark is not None else 0.0
            left = 0
            for start in range(0, len(customers), chunk):
                pending = customers[start : start + chunk]
                for _round in range(max_rounds):
                    if not pending:
                        break
                    work, _ = (await self._load({partition: pending}, {}))[partition]
                    for customer, state in work.items():
                        profile = state.profile
                        if profile.evaluated_at is None or profile.thresholds_version == version:
                            continue
                        left += 1
                        at = max(now, profile.evaluated_at)
                        self._release(state, at)
                        self._step(state, at, "rescore", None)
                        self._reschedule(state, [], customer)
                    lost = await self._write([(partition, work, None, 0, [])], result)
                    pending = list(lost.get(partition, ()))
                else:
                    raise RuntimeError(f"could not rescore {len(pending)} customers of partition {partition}")
            if left == 0:
                return result.changed
        raise RuntimeError(f"partition {partition}: customers still without thresholds version {version}")

    async def counters(self) -> Counter:
        raw = await self.client.hgetall(self.keys.counters)
        return Counter({k.decode(): int(v) for k, v in raw.items()})
