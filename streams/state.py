"""Profiles in Redis: idempotent, atomic updates and the event-time due index.

The fold skips every event whose id's digest the profile already holds; each write goes through
one Lua script that checks the profile's ``version`` (compare-and-set: the digests checked are
still the stored ones) and then, atomically: writes the changed profile fields, appends the fresh
digests, moves the customer in the due index, adjusts the segment counts and the transition
matrix of the event-day, appends to the capped stream of recent changes, and puts the change
events in the outbox stream. A redelivered event changes nothing and emits nothing; a write that
lost a race (two agents, or two workers across a rebalance) is retried from a fresh read.

Time-driven changes (a customer drifting into "At Risk" while buying nothing) come from the due
index: a sorted set per partition scoring each customer by the event time at which time alone
next changes their R score or churn status. A clock tick at T reads the customers due by T.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain

import redis.asyncio as aioredis

from segstream.keys import Keys
from segstream.partitioned import apartitions, summed
from segstream.schemas import ClockTick
from segstream.scoring import ChurnRules, RfmScorer
from segstream.scripts import lua
from streams.analytics import READ_MODELS, profile_deltas
from streams.clusters import OnlineClusters
from streams.fold import Fold, Working, after, cause_of
from streams.profile import Profile
from streams.protocol import WriteHeader
from streams.transport import ScriptLost, ScriptRunner

__all__ = ["BatchResult", "ProfileStore", "ScriptLost", "cause_of"]

log = logging.getLogger(__name__)

_WRITE = lua("streams", "write.lua")
_READ = lua("streams", "read.lua")


@dataclass
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    retries: int = 0
    changed: int = 0  # customers whose segment or churn status changed


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
        analytics: bool = True,
    ) -> None:
        self.client = client
        self.keys = keys
        self.fold = Fold(scorer, rules, clusters, analytics)
        self.scripts = ScriptRunner(client)
        self.segment_topic = segment_topic
        self.churn_topic = churn_topic
        self.recent_changes = recent_changes
        self.recent_latencies = recent_latencies
        self.cache_size = cache_size
        # profiles as this worker last wrote them, with their applied event ids; most recent last
        self._cache: dict[str, tuple[Profile, set[str]]] = {}
        self._registered: set[int] = set()  # partitions this store added to Keys.partition_numbers

    # the fold's thresholds, rules and clusters: a threshold republication replaces the first two
    @property
    def scorer(self) -> RfmScorer:
        return self.fold.scorer

    @scorer.setter
    def scorer(self, scorer: RfmScorer) -> None:
        self.fold.scorer = scorer

    @property
    def rules(self) -> ChurnRules:
        return self.fold.rules

    @rules.setter
    def rules(self, rules: ChurnRules) -> None:
        self.fold.rules = rules

    @property
    def clusters(self) -> OnlineClusters | None:
        return self.fold.clusters

    # ---- reads ---------------------------------------------------------------------------------

    def _remember(self, customer: str, profile: Profile, applied: set[str]) -> None:
        if self.cache_size <= 0:
            return
        self._cache.pop(customer, None)
        self._cache[customer] = (profile, applied)
        if len(self._cache) > self.cache_size:
            self._cache.pop(next(iter(self._cache)))

    async def register(self, partitions: Iterable[int]) -> None:
        """Add partitions to the set readers sum over (segstream/partitioned.py), before writing them."""
        new = sorted(set(partitions) - self._registered)
        if new:
            await self.client.sadd(self.keys.partition_numbers, *new)
            self._registered.update(new)

    async def _load(
        self, wanted: dict[int, list[str]], due_until: dict[int, float], only: dict[int, set[str]] | None = None
    ) -> dict[int, tuple[dict[str, Working], dict[str, float]]]:
        """Per partition, the working state of its ``wanted`` customers and of its customers due
        by ``due_until[partition]`` (partitions missing there: none due), with those due times.

        A cached profile is used as it is (and taken out of the cache until it is written): it is
        what this worker last wrote, and its applied digests with it; if anything else wrote the
        customer since, the version moved and the write loses its compare-and-set, and the
        customer is read again. Two round trips at most, whatever the number of partitions.
        """
        loaded = {partition: ({}, {}) for partition in wanted}
        reading = {p: [c for c in cs if not self._from_cache(c, loaded[p][0])] for p, cs in wanted.items()}
        queries = {p: until for p, until in due_until.items() if p in loaded}
        asks = {p: (cs, queries.get(p)) for p, cs in reading.items() if cs or p in queries}
        for partition, (due_flat, profiles) in (await self._read(asks)).items():
            if partition in queries:
                keep = None if only is None else only[partition]
                scored = zip((c.decode() for c in due_flat[::2]), due_flat[1::2], strict=True)
                loaded[partition][1].update((c, float(s)) for c, s in scored if keep is None or c in keep)
            self._finish_read(partition, reading[partition], profiles, loaded)
        missing = {
            p: [c for c in due if c not in work and not self._from_cache(c, work)] for p, (work, due) in loaded.items()
        }
        asks = {p: (cs, None) for p, cs in missing.items() if cs}
        for partition, (_, profiles) in (await self._read(asks)).items():
            self._finish_read(partition, missing[partition], profiles, loaded)
        for work, due in loaded.values():
            for customer, score in due.items():
                work[customer].due = score
        return loaded

    def _from_cache(self, customer: str, work: dict[str, Working]) -> bool:
        # Taken out, and put back once written (or found unchanged): the working copy changes the
        # purchases it shares with the cached profile in place (streams/profile.py, Purchases), so
        # two batches folding the customer at once (the orders and the reviews agents) must not
        # share them. The second reads Redis, and its compare-and-set decides as it always did.
        hit = self._cache.pop(customer, None)
        if hit is not None:
            profile, applied = hit
            work[customer] = Working(profile.copy(), profile, applied)
        return hit is not None

    async def _read(self, asks: dict[int, tuple[list[str], float | None]]) -> dict[int, tuple[list, list]]:
        """One script call per partition of ``asks`` (``partition -> (customers, due until)``), all
        pipelined: the partition's customers due by then (flat, with scores; none without a time),
        and each customer's profile hash (flat, with the applied digests)."""
        calls = []
        for partition, (customers, until) in asks.items():
            part = self.keys.partition(partition)
            calls.append(([part.due], [part.profile(""), "" if until is None else repr(until), *customers]))
        replies = await self.scripts.run_many(_READ, calls) if calls else []
        return {p: (reply[0], reply[1:]) for p, reply in zip(asks, replies, strict=True)}

    @staticmethod
    def _finish_read(
        partition: int, customers: list[str], replies: list, loaded: dict[int, tuple[dict[str, Working], dict]]
    ) -> None:
        for customer, flat in zip(customers, replies, strict=True):
            if flat:
                data = dict(zip(flat[::2], flat[1::2], strict=True))
                seen = b"".join(v for k, v in data.items() if k.startswith(b"seen"))  # seen, seen1, ...
                base = Profile.from_redis(data)
                state = Working(base.copy(), base, {seen[k : k + 8] for k in range(0, len(seen), 8)})
            else:
                state = Working(Profile(customer), None, set())
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

        - a customer event is applied once (its id's digest is checked against the profile's digests
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
        try:
            return await self._process(batches, watermarks, clock, ticks, sent_at_ms, max_retries)
        except BaseException:
            # A cached profile shares its purchases with the working copy, which the fold changed
            # in place (streams/profile.py, Purchases): after a write that failed (Redis away, a
            # timeout whose write may or may not have landed) only Redis says what is stored.
            self._cache.clear()
            raise

    async def _process(
        self,
        batches: dict[int, list],
        watermarks: dict[int, float],
        clock: bool,
        ticks: int,
        sent_at_ms: list[int] | None,
        max_retries: int,
    ) -> tuple[BatchResult, dict[int, float]]:
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
        marks = "watermarks" if clock else "review_watermarks"
        await self.register(batches)
        for _attempt in range(max_retries):
            wanted = {
                p: [c for c in seen if only is None or c in only[p]]
                for p, seen in customers.items()
                if only is None or p in only
            }
            due_until = {p: after(t) if p in finals else t for p, t in last_tick.items()} if clock else {}
            loaded = await self._load(wanted, due_until, only)

            def folded(loaded=loaded, only=only, extras=extras):
                for n, (partition, (part, due)) in enumerate(loaded.items(), start=1):
                    keep = None if only is None else only[partition]
                    start = watermarks.get(partition, 0.0)
                    ends[partition] = self.fold.fold(batches[partition], start, clock, part, due, keep)
                    moved = ends[partition] if partition in last_tick or not clock else None  # reviews: events move it
                    yield partition, part, moved, *(extras if n == len(loaded) else (0, []))

            lost = await self._write(folded(), result, marks)
            extras = (0, [])
            if not lost:
                return result, ends
            result.retries += sum(map(len, lost.values()))
            only = lost
        raise RuntimeError(f"gave up writing {len(only or ())} profiles after {max_retries} conflicting attempts")

    async def _write(
        self,
        parts: Iterable[tuple[int, dict[str, Working], float | None, int, list[int]]],
        result: BatchResult,
        marks: str = "watermarks",
    ) -> dict[int, set[str]]:
        """Write each ``(partition, work, watermark, ticks, sent_at_ms)`` of ``parts`` with one
        atomic script call, pipelined (see :meth:`streams.transport.ScriptRunner.run_many`; ``parts`` may be lazy);
        the watermark goes to the partition's hash named ``marks`` (``watermarks`` or ``review_watermarks``).

        Returns, per partition, the customers whose write lost (their cached profiles are stale
        and are dropped).
        """
        plans: list[tuple[int, list, int]] = []

        def calls():
            for partition, work, watermark, ticks, sent_at_ms in parts:
                args, planned, only_duplicates = self._write_args(partition, work, watermark, ticks, sent_at_ms, marks)
                if args is not None:
                    plans.append((partition, planned, only_duplicates))
                    yield [self.keys.partition(partition).counters], args
                written = {customer for customer, _ in planned}
                for customer, state in work.items():  # nothing to write: back to the cache as it was
                    if customer not in written and state.base is not None:
                        self._remember(customer, state.base, state.applied)

        replies = await self.scripts.run_many(_WRITE, calls())
        lost: dict[int, set[str]] = {}
        for (partition, planned, only_duplicates), reply in zip(plans, replies, strict=True):
            lost_at = set(reply)
            result.duplicates += only_duplicates
            for index, (customer, state) in enumerate(planned, start=1):
                if index in lost_at:  # its cached profile is stale (and its purchases changed in place)
                    lost.setdefault(partition, set()).add(customer)
                    self._cache.pop(customer, None)
                    continue
                state.applied.update(state.fresh)  # in place: a heavy buyer's 1,000th order copies nothing
                state.profile.purchases.settle()
                self._remember(customer, state.profile, state.applied)
                result.applied += len(state.fresh)
                result.duplicates += state.duplicates
                result.changed += bool(state.segment_changes or state.churn_changes)
        return lost

    def _write_args(
        self,
        partition: int,
        work: dict[str, Working],
        watermark: float | None,
        ticks: int,
        sent_at_ms: list[int],
        marks: str,
    ) -> tuple[list | None, list[tuple[str, Working]], int]:
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
            deltas = self._deltas(state)
            counts = f"{len(state.segment_changes) // 4} {len(state.churn_changes) // 3} {len(deltas) // 2}"
            counts += f" {len(state.applied)}"  # the digests stored: where the fresh ones go (write.lua)
            shape = f"{expected} {len(fields)} {len(state.fresh)} {scored} {state.duplicates} {counts}"
            args += (customer, shape)
            args += chain.from_iterable(fields.items())  # name, value, name, value...
            args += state.fresh
            args.append("" if state.due is None else repr(state.due))
            args += state.segment_changes
            args += state.churn_changes
            args += deltas
            planned.append((customer, state))
        if not (planned or only_duplicates or watermark is not None or ticks or sent_at_ms):
            return None, planned, only_duplicates
        part = self.keys.partition(partition)
        header = WriteHeader(
            profile_prefix=part.profile(""),
            transitions_prefix=part.transitions(""),
            analytics_keys="\n".join(part.analytics(name) for name in READ_MODELS),
            due=part.due,
            segments=part.segments,
            churn_statuses=part.churn_statuses,
            changes=part.changes,
            outbox=part.outbox,
            counters=part.counters,
            watermarks=getattr(part, marks),
            latencies=part.latencies,
            recent_changes=self.recent_changes,
            recent_latencies=self.recent_latencies,
            segment_topic=self.segment_topic,
            churn_topic=self.churn_topic,
            duplicates=only_duplicates,
            ticks=ticks,
            watermark_count=0 if watermark is None else 1,
            sent_count=len(sent_at_ms),
            write_count=len(planned),
        )
        marks = [] if watermark is None else [partition, repr(watermark)]
        return [*header.args(), *marks, *sent_at_ms, *args], planned, only_duplicates

    def _deltas(self, state: Working) -> list[str]:
        """The customer's analytics deltas as the write script takes them: (name, integer) pairs,
        the name being the read model's index and the field (streams/analytics.py). None when
        analytics are off."""
        if not self.fold.analytics:
            return []
        deltas = defaultdict(int, state.deltas)
        profile_deltas(state.profile, state.base, deltas)
        return [x for name, n in deltas.items() if n for x in (name, str(n))]

    async def rescore(self, partition: int, chunk: int = 500, max_rounds: int = 20, max_passes: int = 10) -> int:
        """Re-derive every scored customer of the partition who does not carry the current
        thresholds' version yet, at the partition's watermark; changes carry the cause ``rescore``.
        Returns how many changed.

        Resumable and exact: each profile records the thresholds version it was last derived with
        (``thresholds_version``), so a worker that restarts, or takes the partition over, redoes
        only who is left; passes repeat until one finds nobody left (a batch folded with the old
        thresholds while the first pass ran writes the old version, and the next pass redoes it).
        """
        version = self.fold.scorer.version
        result = BatchResult()
        for _pass in range(max_passes):
            part = self.keys.partition(partition)
            customers = [c.decode() for c in await self.client.zrange(part.due, 0, -1)]
            # At the partition's watermark: a customer's own last evaluation may be long past, since
            # under the old thresholds time alone had nothing to change for them.
            watermark = await self.client.hget(part.watermarks, str(partition))
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
                        self.fold.release(state, at)
                        self.fold.step(state, at, "rescore", None)
                        self.fold.reschedule(state, [], customer)
                    lost = await self._write([(partition, work, None, 0, [])], result)
                    pending = list(lost.get(partition, ()))
                else:
                    raise RuntimeError(f"could not rescore {len(pending)} customers of partition {partition}")
            if left == 0:
                return result.changed
        raise RuntimeError(f"partition {partition}: customers still without thresholds version {version}")

    async def counters(self) -> Counter:
        """Every partition's counters, summed."""
        pipe = self.client.pipeline(transaction=False)
        for part in await apartitions(self.client, self.keys):
            pipe.hgetall(part.counters)
        return Counter({name.decode(): n for name, n in summed(await pipe.execute()).items()})
