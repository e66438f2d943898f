"""The fold: a partition's records applied to customers' profiles in memory, in order; plain code.

No Redis here: :class:`Fold` takes the working state of the customers a batch touches (their
profiles as stored, their applied event ids, the customers due by the batch's ticks) and leaves
in it what the write must store: the changed profiles, the fresh event ids, the change events,
each customer's next due time. ``streams/state.py`` reads that state from Redis and writes it
back atomically; tests/test_fold.py folds records with no Redis at all.

What a record does is written down in docs/definitions.md:

- a customer event is applied once (by event id) and re-derives the profile. On the clock topic
  (orders) at its own event time, never earlier than the profile's last evaluation or the
  watermark; held reviews older than it take effect first, each at its own time. On the other
  topic (reviews) a review the customer's clock has not reached is held in the profile and put
  in the due index at its time; one behind the clock takes effect now;
- a run of clock ticks moves the watermark (on the reviews topic its events do too); on the clock
  topic each customer due by the run's
  last tick is re-derived at the first tick at or after its due time (held reviews first), and
  again if that makes it due again; a final tick also applies what is held at its very instant.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import math
from collections import defaultdict
from dataclasses import dataclass, field

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
    event_digest,
    flat_encoder,
    wire_time,
)
from segstream.scoring import ChurnRules, RfmScorer
from streams.analytics import order_deltas
from streams.clusters import OnlineClusters, features
from streams.profile import Profile

__all__ = ["CAUSES", "Fold", "Working", "after", "cause_of"]


def after(moment: float) -> float:
    """The next representable time after ``moment``: "due by T, inclusive of what is held at T"."""
    return math.nextafter(moment, math.inf)


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


@dataclass(slots=True)
class Working:
    """One customer's state while a batch is folded: the profile being updated and what to write."""

    profile: Profile
    base: Profile | None  # the profile as stored (None: not in Redis yet): only changed fields are written
    # digests (segstream.schemas.event_digest) of the events applied as stored: shared with the
    # cache, changed in place only once the batch's write succeeded
    applied: set[bytes]
    fresh: list[bytes] = field(default_factory=list)  # digests of the events applied by this batch
    duplicates: int = 0
    # change events of the batch, flat: (previous, new, event-day, payload) per segment change,
    # (previous, new, payload) per churn change ('' for none): the write script counts with them
    segment_changes: list = field(default_factory=list)
    churn_changes: list = field(default_factory=list)
    due: float | None = None
    dirty: bool = False
    # what the batch's applied purchases add to the analytics read models (streams/analytics.py)
    deltas: defaultdict = field(default_factory=lambda: defaultdict(int))


class Fold:
    """Folds records into working profiles with the thresholds and rules in force.

    ``scorer`` and ``rules`` may be replaced between batches (a threshold republication);
    ``clusters`` learns from every applied order-topic event; with ``analytics``, each applied
    purchase's contribution to the analytics read models is kept in its customer's ``deltas``.
    """

    def __init__(
        self, scorer: RfmScorer, rules: ChurnRules, clusters: OnlineClusters | None = None, analytics: bool = True
    ) -> None:
        self.scorer = scorer
        self.rules = rules
        self.clusters = clusters
        self.analytics = analytics

    def fold(
        self,
        items: list,
        watermark: float,
        clock: bool,
        work: dict[str, Working],
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
                limit = after(times[-1]) if final else times[-1]
                while clock and heap and heap[0][0] <= limit:
                    score, customer = heapq.heappop(heap)
                    state = work[customer]
                    if state.due != score:
                        continue  # moved by a later event or re-derivation
                    tick = times[min(bisect.bisect_left(times, score), len(times) - 1)]
                    at = max(tick, state.profile.evaluated_at or 0.0)
                    self.release(state, at)
                    self.step(state, at, "time", None)
                    if final:
                        self.release(state, limit)
                    self.reschedule(state, heap, customer)
                continue
            index += 1
            if not clock:
                # A partition's records come in event-time order, so a review at T also says that
                # every review before T is here: the reviews' watermark follows its events as well
                # as its ticks, and the orders clock waiting for it waits a review, not a tick
                # interval (a review at exactly T may still follow: at one instant reviews come
                # after the orders topic anyway). Late events (a shuffled replay) are behind it:
                # they take effect at the customer's clock.
                watermark = max(watermark, item.event_time.timestamp())
            customer = item.customer_unique_id
            if only is not None and customer not in only:
                continue
            state = work[customer]
            digest = event_digest(item.event_id)
            if digest in state.applied or digest in state.fresh:
                state.duplicates += 1
                continue
            state.fresh.append(digest)
            profile = state.profile
            moment = item.event_time.timestamp()
            if clock:
                now = max(watermark, moment, profile.evaluated_at or 0.0)
                self.release(state, now)  # held reviews older than this event come first
            elif profile.evaluated_at is None or moment >= profile.evaluated_at:
                # A review takes effect at its own event time: the customer's clock (the orders
                # topic) has not reached it yet, so it waits in the profile for the clock to pass.
                profile.hold(item)
                self.reschedule(state, heap, customer)
                continue
            else:
                now = profile.evaluated_at  # late (behind the clock): takes effect now
            profile.apply(item)
            if self.analytics and type(item) is OrderPlaced:
                order_deltas(item, state.deltas)
            self.learn(profile, now)
            self.step(state, now, cause_of(item), item.event_id)
            self.reschedule(state, heap, customer)
        return watermark

    def learn(self, profile: Profile, now: float) -> None:
        if self.clusters is not None and profile.last_purchase is not None:
            profile.cluster = self.clusters.learn_predict_one(features(profile, now))

    def release(self, state: Working, before: float) -> None:
        """Apply the customer's held reviews with an event time before ``before``, each at its own time."""
        profile = state.profile
        for moment, event_id, score in profile.release(before):
            profile.apply_review(moment, event_id, score)
            self.step(state, max(moment, profile.evaluated_at or 0.0), "review", event_id)

    def reschedule(self, state: Working, heap: list, customer: str) -> None:
        profile = state.profile
        state.dirty = True
        now = profile.evaluated_at if profile.evaluated_at is not None else 0.0
        moments = [m for m in (profile.next_due(now, self.scorer, self.rules), profile.held_due) if m is not None]
        state.due = min(moments) if moments else None
        if state.due is not None:
            heapq.heappush(heap, (state.due, customer))

    def step(self, state: Working, now: float, cause: str, source: str | None) -> None:
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
            state.churn_changes += (
                previous_churn or "",
                profile.churn or "",
                _churn_changed(
                    f"churn:{customer}:{profile.churn_changes}",
                    moment,
                    customer,
                    previous_churn,
                    profile.churn,
                    profile.churn_reasons,
                    cause,
                    source,
                ),
            )
