"""The one place that knows Redis key names.

Every key starts with ``Settings.redis_prefix`` (default ``segstream``), so several deployments
can share a Redis and ``SCAN segstream:*`` finds everything of one.

>>> keys = Keys("segstream")
>>> keys.profile("u1"), keys.due(3), keys.transitions("2017-03-01")
('segstream:profile:u1', 'segstream:due:3', 'segstream:transitions:2017-03-01')
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True)
class Keys:
    prefix: str = "segstream"

    def profile(self, customer: str) -> str:
        """Hash: one customer's profile (streams/profile.py): its fields, one field per purchase
        day (``p:<YYYY-MM-DD>``), and ``seen``, ``seen1``...: the 8-byte digests of the events applied
        to it, 16 a field."""
        return f"{self.prefix}:profile:{customer}"

    def due(self, partition: int | str) -> str:
        """Sorted set: customers of a partition by the event time their state next changes by time alone
        (``due("")`` is the prefix the write script completes)."""
        return f"{self.prefix}:due:{partition}"

    def transitions(self, day: str) -> str:
        """Hash: 'previous>new' segment transitions counted per event-day (YYYY-MM-DD)."""
        return f"{self.prefix}:transitions:{day}"

    def analytics(self, name: str) -> str:
        """Hash: one analytics read model's integer counts (streams/analytics.py: cohorts,
        weekday_hour, geography, segment_revenue, daily, basket_orders, basket_months)."""
        return f"{self.prefix}:analytics:{name}"

    def rules(self, run: int | str) -> str:
        """String: one retrain run's market basket rules (JSON, models/basket.py)."""
        return f"{self.prefix}:rules:{run}"

    def rivals(self, run: int | str) -> str:
        """Hash: '<strategy>:<customer>' -> that strategy's list (JSON) in one retrain run, written
        with SEGSTREAM_RECS_RIVALS for backtests."""
        return f"{self.prefix}:rivals:{run}"

    def forecast(self, run: int | str) -> str:
        """String: one retrain run's sales forecast (JSON, models/forecast.py)."""
        return f"{self.prefix}:forecast:{run}"

    def uplift(self, run: int | str) -> str:
        """Hash: customer -> uplift score (JSON: uplift, P(buy | treated), P(buy | control)) of one
        retrain run (models/uplift.py); ``uplift("")``: the prefix."""
        return f"{self.prefix}:uplift:{run}"

    def targeting(self, run: int | str) -> str:
        """String: one retrain run's uplift summary and targeting list (JSON, models/uplift.py)."""
        return f"{self.prefix}:targeting:{run}"

    @property
    def campaign_sends(self) -> str:
        """Hash: event id of a campaign send -> 'campaign\\tcustomer\\tsent epoch s\\tgroup\\toffer'
        (streams/lua/campaigns.lua); the retrain's uplift model reads it whole."""
        return f"{self.prefix}:campaign-sends"

    @property
    def campaigns(self) -> str:
        """Hash: 'campaign\\tgroup' -> customers in that group of that campaign (the sends counted once)."""
        return f"{self.prefix}:campaigns"

    def scores(self, run: int | str) -> str:
        """Hash: customer -> CLV scores (JSON) of one retrain run (``scores("")``: the prefix)."""
        return f"{self.prefix}:scores:{run}"

    def recommendations(self, run: int | str) -> str:
        """Hash: customer -> recommendation list (JSON) of one retrain run; field ``*`` is the list
        for customers without one (``recommendations("")``: the prefix)."""
        return f"{self.prefix}:recs:{run}"

    @property
    def models(self) -> str:
        """String: the model versions in force (JSON: which run's scores and recommendations readers see)."""
        return f"{self.prefix}:models"

    @property
    def model_runs(self) -> str:
        """Counter: the last retrain run number handed out."""
        return f"{self.prefix}:models:runs"

    @property
    def retrain_lock(self) -> str:
        """String with a TTL: held by the retrain run in progress."""
        return f"{self.prefix}:models:lock"

    @property
    def legacy_applied_pattern(self) -> str:
        """Sets of applied event ids, one per customer, of the layout before the profiles kept
        digests: a worker refuses such state (streams/worker.py)."""
        return f"{self.prefix}:applied:*"

    @property
    def profiles_pattern(self) -> str:
        return f"{self.prefix}:profile:*"

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
        return f"{self.prefix}:outbox:lock"

    @property
    def counters(self) -> str:
        """Hash: consumed, applied, duplicates, dead_lettered, ticks, time_evaluations, published."""
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
    def replay_ends(self) -> str:
        """Hash: 'topic:partition' -> replay id of the last end-of-replay tick processed."""
        return f"{self.prefix}:replay-ends"

    @property
    def latencies(self) -> str:
        """List (capped): recent Kafka-send-to-Redis-update latencies in ms, newest first."""
        return f"{self.prefix}:latency-ms"

    @property
    def rescored(self) -> str:
        """Hash: partition -> thresholds version its customers were last re-scored with."""
        return f"{self.prefix}:rescored"

    @property
    def cluster_model(self) -> str:
        """String: the online cluster model checkpoint (JSON, streams/clusters.py)."""
        return f"{self.prefix}:clusters:model"

    @property
    def cluster_profiles(self) -> str:
        """String: each cluster's center in original units (JSON)."""
        return f"{self.prefix}:clusters:profiles"

    @property
    def thresholds(self) -> str:
        """String: the RFM thresholds in force (JSON, see segstream.scoring.RfmScorer)."""
        return f"{self.prefix}:thresholds"
