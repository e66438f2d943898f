"""The one place that knows Redis key names.

Every key starts with ``Settings.redis_prefix`` (default ``segstream``), so several deployments
can share a Redis and ``SCAN segstream:*`` finds everything of one.

The keys are laid out for Redis Cluster as well as for one Redis. A Lua script must find every
key it touches in one hash slot, so everything one write touches carries its Kafka partition as
a hash tag (``segstream:{p3}:...``): a customer's profile, the partition's due index, and the
partition's share of every count the writes keep (segments, transitions, analytics, counters,
watermarks, recent changes, the outbox). A customer lives in the partition the producer's
partitioner gives it (:func:`segstream.kafka.partition_for`), on every input topic. Readers of a
count sum it over the partitions (``Keys.partitions``); the partitions holding state are
the set ``Keys.partition_numbers``, which the workers add to. What the retrain writes carries the tag
``{models}``: a reader gets the runs in force and a customer's entries of them in one atomic call.
The rest (thresholds, the cluster model, bookkeeping) is read and written one key at a time.

>>> keys = Keys("segstream")
>>> keys.partition(3).profile("u1"), keys.partition(3).due, keys.partition(0).transitions("2017-03-01")
('segstream:{p3}:profile:u1', 'segstream:{p3}:due', 'segstream:{p0}:transitions:2017-03-01')
>>> keys.scores(5), keys.models
('segstream:{models}:scores:5', 'segstream:{models}:in-force')
>>> [k.counters for k in keys.partitions(2)]
['segstream:{p0}:counters', 'segstream:{p1}:counters']
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys", "PartitionKeys"]


@dataclass(frozen=True)
class PartitionKeys:
    """The keys of one Kafka partition's customers and of its share of the counts: one hash slot."""

    prefix: str  # '<prefix>:{p<partition>}'
    number: int

    def profile(self, customer: str) -> str:
        """Hash: one customer's profile (streams/profile.py): its fields, one field per purchase
        day (``p:<YYYY-MM-DD>``), and ``seen``, ``seen1``...: the 8-byte digests of the events applied
        to it, 16 a field."""
        return f"{self.prefix}:profile:{customer}"

    @property
    def due(self) -> str:
        """Sorted set: the partition's customers by the event time their state next changes by
        time alone (+inf: a scored customer whom time alone changes no more)."""
        return f"{self.prefix}:due"

    def transitions(self, day: str) -> str:
        """Hash: 'previous>new' segment transitions counted per event-day (YYYY-MM-DD)."""
        return f"{self.prefix}:transitions:{day}"

    def analytics(self, name: str) -> str:
        """Hash: one analytics read model's integer counts (streams/analytics.py: cohorts,
        weekday_hour, geography, segment_revenue, daily, basket_orders, basket_months)."""
        return f"{self.prefix}:analytics:{name}"

    @property
    def segments(self) -> str:
        """Hash: number of customers per segment."""
        return f"{self.prefix}:segments"

    @property
    def churn_statuses(self) -> str:
        """Hash: number of customers per churn status."""
        return f"{self.prefix}:churn-statuses"

    @property
    def changes(self) -> str:
        """Stream (capped): the latest changes, for operations: field ``change`` holds a
        SegmentChanged, field ``churn`` a ChurnChanged (JSON)."""
        return f"{self.prefix}:changes"

    @property
    def dead_letters(self) -> str:
        """Stream (capped): the latest dead-lettered records' topic, partition, offset and reason."""
        return f"{self.prefix}:dead-letters"

    @property
    def outbox(self) -> str:
        """Stream: change events written with the state, waiting to be published to Kafka."""
        return f"{self.prefix}:outbox"

    @property
    def outbox_lock(self) -> str:
        """String with a TTL: held by the worker publishing this outbox."""
        return f"{self.prefix}:outbox:lock"

    @property
    def counters(self) -> str:
        """Hash: consumed, applied, duplicates, dead_lettered, ticks, published."""
        return f"{self.prefix}:counters"

    @property
    def watermarks(self) -> str:
        """Hash: partition -> event-time watermark (epoch seconds) from the orders topic's clock ticks."""
        return f"{self.prefix}:watermarks"

    @property
    def review_watermarks(self) -> str:
        """Hash: partition -> the reviews topic's watermark: every review up to it is in its profile."""
        return f"{self.prefix}:watermarks:reviews"

    @property
    def latencies(self) -> str:
        """List (capped): recent Kafka-send-to-Redis-update latencies in ms, newest first."""
        return f"{self.prefix}:latency-ms"

    @property
    def campaign_sends(self) -> str:
        """Hash: event id of a campaign send -> 'campaign\\tcustomer\\tsent epoch s\\tgroup\\toffer'
        (streams/lua/campaigns.lua); the retrain's uplift model reads every partition's whole."""
        return f"{self.prefix}:campaign-sends"

    @property
    def campaigns(self) -> str:
        """Hash: 'campaign\\tgroup' -> customers in that group of that campaign (the sends counted once)."""
        return f"{self.prefix}:campaigns"


@dataclass(frozen=True)
class Keys:
    prefix: str = "segstream"

    def partition(self, number: int) -> PartitionKeys:
        """The keys of Kafka partition ``number`` (the same number on every input topic)."""
        return PartitionKeys(f"{self.prefix}:{{p{number}}}", number)

    def partitions(self, count: int) -> list[PartitionKeys]:
        return [self.partition(number) for number in range(count)]

    @property
    def partition_numbers(self) -> str:
        """Set: the numbers of the partitions holding state, added by a worker before its first write
        to one (readers sum over them)."""
        return f"{self.prefix}:partitions"

    @property
    def profiles_pattern(self) -> str:
        """Every partition's profiles (``SCAN MATCH``; braces are plain characters in a pattern)."""
        return f"{self.prefix}:{{p*}}:profile:*"

    def transitions_pattern(self) -> str:
        return f"{self.prefix}:{{p*}}:transitions:*"

    # ---- the retrain's output: one hash slot ---------------------------------------------------

    def rules(self, run: int | str) -> str:
        """String: one retrain run's market basket rules (JSON, models/basket.py)."""
        return f"{self.prefix}:{{models}}:rules:{run}"

    def rivals(self, run: int | str) -> str:
        """Hash: '<strategy>:<customer>' -> that strategy's list (JSON) in one retrain run, written
        with SEGSTREAM_RECS_RIVALS for backtests."""
        return f"{self.prefix}:{{models}}:rivals:{run}"

    def forecast(self, run: int | str) -> str:
        """String: one retrain run's sales forecast (JSON, models/forecast.py)."""
        return f"{self.prefix}:{{models}}:forecast:{run}"

    def uplift(self, run: int | str) -> str:
        """Hash: customer -> uplift score (JSON: uplift, P(buy | treated), P(buy | control)) of one
        retrain run (models/uplift.py); ``uplift("")``: the prefix."""
        return f"{self.prefix}:{{models}}:uplift:{run}"

    def targeting(self, run: int | str) -> str:
        """String: one retrain run's uplift summary and targeting list (JSON, models/uplift.py)."""
        return f"{self.prefix}:{{models}}:targeting:{run}"

    def scores(self, run: int | str) -> str:
        """Hash: customer -> CLV scores (JSON) of one retrain run (``scores("")``: the prefix)."""
        return f"{self.prefix}:{{models}}:scores:{run}"

    def recommendations(self, run: int | str) -> str:
        """Hash: customer -> recommendation list (JSON) of one retrain run; field ``*`` is the list
        for customers without one (``recommendations("")``: the prefix)."""
        return f"{self.prefix}:{{models}}:recs:{run}"

    @property
    def models(self) -> str:
        """String: the model versions in force (JSON: which run's scores and recommendations readers see)."""
        return f"{self.prefix}:{{models}}:in-force"

    @property
    def model_runs(self) -> str:
        """Counter: the last retrain run number handed out."""
        return f"{self.prefix}:{{models}}:runs"

    @property
    def retrain_lock(self) -> str:
        """String with a TTL: held by the retrain run in progress."""
        return f"{self.prefix}:{{models}}:lock"

    # ---- one key at a time -----------------------------------------------------------------------

    @property
    def legacy_patterns(self) -> tuple[str, ...]:
        """Keys of older layouts a worker refuses (streams/worker.py): applied-id sets of the
        layout before the profiles kept digests, and profiles before the partition hash tags."""
        return f"{self.prefix}:applied:*", f"{self.prefix}:profile:*"

    @property
    def replay_ends(self) -> str:
        """Hash: 'topic:partition' -> replay id of the last end-of-replay tick processed."""
        return f"{self.prefix}:replay-ends"

    @property
    def rescored(self) -> str:
        """Hash: partition -> thresholds version its customers were last re-scored with."""
        return f"{self.prefix}:rescored"

    @property
    def cluster_model(self) -> str:
        """String: the online cluster model checkpoint (JSON, streams/clusters.py)."""
        return f"{self.prefix}:{{clusters}}:model"

    @property
    def cluster_profiles(self) -> str:
        """String: each cluster's center in original units (JSON; written with the model, in one slot)."""
        return f"{self.prefix}:{{clusters}}:profiles"

    @property
    def thresholds(self) -> str:
        """String: the RFM thresholds in force (JSON, see segstream.scoring.RfmScorer)."""
        return f"{self.prefix}:thresholds"
