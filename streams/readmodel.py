"""Reading what the workers and the retrain job keep in Redis: one profile, its CLV scores and
recommendations, segment counts, the latest shifts; and one customer's whole history of changes
from the output topics, the record of every change."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import redis
from aiokafka import AIOKafkaConsumer, TopicPartition

from segstream.clients import kafka_options, redis_client
from segstream.kafka import partition_for
from segstream.keys import Keys
from segstream.partitioned import newest, partitions, sum_hashes, summed
from segstream.schemas import SegmentChanged
from segstream.scripts import lua
from segstream.settings import Settings
from streams import analytics
from streams.profile import Profile

__all__ = [
    "ANALYTICS_VIEWS",
    "AmbiguousId",
    "CustomerModels",
    "Overview",
    "analytics_counts",
    "analytics_lines",
    "analytics_view",
    "customer_changes",
    "customer_models",
    "forecast_lines",
    "overview",
    "overview_lines",
    "profile_lines",
    "read_profile",
    "recent_changes",
    "replay_consumed",
    "rules_lines",
    "run_document",
    "segment_history",
    "targeting_lines",
    "transitions_between",
]


def _client(settings: Settings) -> redis.Redis:
    return redis_client(settings)


class AmbiguousId(LookupError):
    """A short id that starts more than one customer's id."""


def read_profile(settings: Settings, customer: str) -> Profile | None:
    """The profile of ``customer``: a full ``customer_unique_id``, or the start of exactly one (as
    ``segments`` prints them); None if there is none. Raises :class:`AmbiguousId` for several."""
    client, keys = _client(settings), Keys(settings.redis_prefix)
    # the customer's partition is the one holding its profile: one read per partition, pipelined
    pipe = client.pipeline(transaction=False)
    for part in partitions(client, keys):
        pipe.hgetall(part.profile(customer))
    data = next((found for found in pipe.execute() if found), {}) if customer else {}
    if not data and customer and not any(c in customer for c in "*?[]\\"):
        matches = []
        for key in client.scan_iter(match=keys.profiles_pattern.removesuffix("*") + customer + "*", count=1000):
            matches.append(key)
            if len(matches) > 5:
                break
        if len(matches) > 1:
            shown = ", ".join(sorted(k.decode().split(":profile:", 1)[1] for k in matches[:5]))
            raise AmbiguousId(
                f"{customer!r} starts several customer ids ({shown}{', ...' if len(matches) > 5 else ''})"
            )
        if matches:
            data = client.hgetall(matches[0])
    return Profile.from_redis(data) if data else None


# The models document and the customer's entries of the runs it names, in one atomic call: a
# reader sees the runs in force before a retrain's switch or after it, never one of each.
_MODELS = lua("streams", "customer_models.lua")


@dataclass
class CustomerModels:
    """What the models in force say about one customer (``None``: no such model or entry)."""

    models: dict
    scores: dict | None  # expected_purchases, p_alive, clv
    recommendations: dict | None  # items, strategy, run
    uplift: dict | None = None  # uplift, p_treated, p_control for the next campaign


def customer_models(settings: Settings, customer: str, client: redis.Redis | None = None) -> CustomerModels | None:
    """The customer's CLV scores, recommendations and uplift from the runs in force (None before any run)."""
    client = client or _client(settings)
    keys = Keys(settings.redis_prefix)
    prefixes = (keys.scores(""), keys.recommendations(""), keys.uplift(""))
    doc, *entries = client.eval(_MODELS, 1, keys.models, *prefixes, customer)
    if doc is None:
        return None
    scores, recs, uplift = (json.loads(entry) if entry else None for entry in entries)
    return CustomerModels(json.loads(doc), scores, recs, uplift)


def models_lines(found: CustomerModels | None, currency: str = "") -> list[str]:
    if found is None:
        return ["models               none yet (run `segstream retrain --once`)"]
    models = found.models
    lines = [f"{'models':<20} run {models.get('run')} at event time {models.get('cutoff')}"]
    if found.scores:
        horizon = models.get("clv_horizon_days")
        over = f"over the next {horizon:g} days" if horizon else "over the model's horizon"
        amount = " ".join(x for x in (f"{found.scores['clv']:,.2f}", currency) if x)
        lines.append(f"{'clv':<20} {amount} {over} (CLV run {models.get('clv')})")
        lines.append(f"{'expected_purchases':<20} {found.scores['expected_purchases']:.3f} purchase days {over}")
        lines.append(f"{'p_alive_at_cutoff':<20} {found.scores['p_alive']:.3f} at the model's cutoff")
    else:
        lines.append(f"{'clv':<20} n/a (no CLV model, or no purchase before its cutoff)")
    if found.uplift:
        u = found.uplift
        lines.append(
            f"{'uplift':<20} {u['uplift']:+.3f}: P(buy | sent) {u['p_treated']:.3f} - P(buy | not sent) "
            f"{u['p_control']:.3f}, within {models.get('uplift_window_days', '?')} days of the next campaign "
            f"(run {models.get('uplift')})"
        )
    elif "uplift" in models:
        lines.append(f"{'uplift':<20} n/a (no purchase before the uplift model's cutoff)")
    if found.recommendations:
        recs = found.recommendations
        lines.append(f"{'recommendations':<20} {recs['strategy']} (run {recs['run']}):")
        categories = recs.get("categories") or [""] * len(recs["items"])
        for rank, (item, category) in enumerate(zip(recs["items"], categories, strict=True), start=1):
            lines.append(f"{'':<20} {rank:>2}. {item}{f'  ({category})' if category else ''}")
    return lines


@dataclass
class Overview:
    segments: dict[str, int]
    latest: list[SegmentChanged]
    counters: dict[str, int]
    watermark: float | None


def overview(settings: Settings, latest: int = 10) -> Overview:
    client, keys = _client(settings), Keys(settings.redis_prefix)
    parts = partitions(client, keys)
    pipe = client.pipeline(transaction=False)
    for part in parts:
        pipe.hgetall(part.segments)
        pipe.hgetall(part.counters)
        pipe.hvals(part.watermarks)
    for part in parts if latest else []:
        pipe.xrevrange(part.changes, count=4 * latest)  # churn changes share the stream
    replies = pipe.execute() if parts else []
    n = 3 * len(parts)
    segments, counters = summed(replies[0:n:3]), summed(replies[1:n:3])
    watermarks = [mark for marks in replies[2:n:3] for mark in marks]
    changes = newest(replies[n:], 4 * latest)
    latest = [SegmentChanged.model_validate_json(f[b"change"]) for _, f in changes if b"change" in f][:latest]
    return Overview(
        segments={k.decode(): v for k, v in segments.items()},
        # newest event time first (the stream holds them in write order: partitions interleave)
        latest=sorted(latest, key=lambda change: (change.event_time, change.event_id), reverse=True),
        counters={k.decode(): int(v) for k, v in counters.items()},
        # the stream's watermark is its slowest partition's: none until every partition has one
        # (else a partition's first tick would move it back)
        watermark=min(map(float, watermarks)) if len(watermarks) >= settings.topic_partitions else None,
    )


def replay_consumed(settings: Settings, replay_id: str, run_id: str) -> int:
    """How many partitions (of every topic the replay fed) have processed this replay run's final tick."""
    ends = _client(settings).hgetall(Keys(settings.redis_prefix).replay_ends)
    return sum(1 for v in ends.values() if v.decode() == f"{replay_id}/{run_id}")


def _when(moment: float | None) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="seconds") if moment is not None else "n/a"


def profile_lines(profile: Profile, currency: str = "") -> list[str]:
    """``segstream profile``: what the profile says, labelled, times in ISO 8601 (UTC)."""
    p = profile
    products = p.products
    reasons = f" ({', '.join(p.churn_reasons)})" if p.churn_reasons else ""
    scores = f"R {p.r}, F {p.f}, M {p.m}" if p.r is not None else ("not scored yet" if p.orders else "no purchase yet")
    review = "none"
    if p.last_review is not None:
        review = f"{p.last_review_score} of 5 on {_when(p.last_review[0])}"
    delivery = "none"
    if p.last_delivery is not None:
        delivery = f"{'late' if p.last_delivery_late else 'on time'}, {_when(p.last_delivery[0])}"
    lines = [
        ("customer", p.customer_unique_id),
        ("segment", f"{p.segment or 'none'} ({scores}; thresholds version {p.thresholds_version})"),
        ("churn", f"{p.churn or 'n/a'}{reasons}"),
        ("evaluated at", _when(p.evaluated_at)),
        ("first purchase", _when(p.first_purchase)),
        ("last purchase", _when(p.last_purchase)),
        ("orders", f"{p.orders:,} on {len(p.purchases):,} purchase days"),
        ("monetary", f"{p.monetary:,.2f} {currency}".rstrip()),
        ("purchases", f"{len(products):,} items, {len(set(products)):,} distinct products"),
        ("reviews", f"{p.reviews:,}" + (f", mean {p.review_mean:.2f}" if p.review_mean is not None else "")),
        ("latest review", review),
        ("deliveries", f"{p.deliveries:,}, {p.late_deliveries:,} late; latest {delivery}"),
        ("canceled", f"{p.canceled:,}"),
        ("p_alive", "n/a (no BG/NBD model)" if p.p_alive is None else f"{p.p_alive:.3f} at {_when(p.evaluated_at)}"),
        ("cluster", "n/a" if p.cluster is None else str(p.cluster)),
        ("location", ", ".join(x for x in (p.city, p.state) if x) or "n/a"),
        ("changes", f"{p.segment_changes:,} segment, {p.churn_changes:,} churn status"),
    ]
    if p.held:
        lines.append(("held reviews", f"{len(p.held)} (take effect when the clock passes {_when(p.held[0][0])})"))
    return [f"{name:<20} {value}" for name, value in lines]


def overview_lines(view: Overview) -> list[str]:
    """The text of ``segstream segments`` and of the demo's live table."""
    total = sum(view.segments.values())
    lines = [f"{'segment':<22}{'customers':>10}{'share':>8}"]
    for name, count in sorted(view.segments.items(), key=lambda kv: -kv[1]):
        lines.append(f"{name:<22}{count:>10,}{count / total:>8.1%}")
    now = datetime.fromtimestamp(view.watermark, tz=UTC).isoformat() if view.watermark else "n/a"
    lines.append(f"{'total':<22}{total:>10,}   event-time watermark {now}")
    if view.latest:
        lines.append("latest shifts:")
        for change in view.latest:
            lines.append(
                f"  {change.event_time:%Y-%m-%d} {change.customer_unique_id[:12]:<12} "
                f"{change.previous_segment or '-':>20} -> {change.segment:<20} ({change.cause})"
            )
    counters = view.counters
    lines.append(
        "events: "
        + ", ".join(f"{k} {counters.get(k, 0):,}" for k in ("consumed", "applied", "duplicates", "dead_lettered"))
    )
    return lines


def _days(client: redis.Redis, keys: Keys) -> list[str]:
    """The event-days with transition counts, in order."""
    found = client.scan_iter(match=keys.transitions_pattern(), count=1_000)
    return sorted({k.decode().rsplit(":", 1)[1] for k in found})


def _transitions(client: redis.Redis, keys: Keys, days: list[str]) -> list[dict[bytes, int]]:
    """Each day's transition counts, summed over the partitions."""
    parts = partitions(client, keys)
    pipe = client.pipeline(transaction=False)
    for day in days:
        for part in parts:
            pipe.hgetall(part.transitions(day))
    replies = pipe.execute() if days and parts else []
    return [summed(replies[k : k + len(parts)]) for k in range(0, len(replies), len(parts))]


def segment_history(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """Customers per segment at the end of each event-day with a change, from the stream's per-day
    transition counts ('previous>new'; an empty previous is a first segment)."""
    days = _days(client, keys)
    sizes: Counter[str] = Counter()
    history = []
    for day, flows in zip(days, _transitions(client, keys, days), strict=True):
        for flow, count in flows.items():
            before, after = flow.decode().split(">", 1)
            if before:
                sizes[before] -= int(count)
            if after:
                sizes[after] += int(count)
        history.append({"day": day, "segments": {s: n for s, n in sorted(sizes.items()) if n}})
    return history


def transitions_between(client: redis.Redis, keys: Keys, start: date, end: date) -> list[dict[str, Any]]:
    """Segment transitions of the event-days ``start`` to ``end`` (both included), summed:
    ``{"from", "to", "customers"}``, largest first; ``from`` is "" for a customer's first segment."""
    days = [d for d in _days(client, keys) if start.isoformat() <= d <= end.isoformat()]
    flows: Counter[tuple[str, str]] = Counter()
    for counts in _transitions(client, keys, days):
        for flow, count in counts.items():
            before, after = flow.decode().split(">", 1)
            flows[(before, after)] += int(count)
    return [
        {"from": a, "to": b, "customers": n} for (a, b), n in sorted(flows.items(), key=lambda kv: (-kv[1], kv[0])) if n
    ]


def recent_changes(client: redis.Redis, keys: Keys, limit: int = 50) -> list[dict[str, Any]]:
    """The latest segment and churn changes, newest written first: ``kind`` (``segment`` or
    ``churn``), ``id`` (the stream id) and the event's fields."""
    parts = partitions(client, keys)
    pipe = client.pipeline(transaction=False)
    for part in parts:
        pipe.xrevrange(part.changes, count=limit)
    entries = newest(pipe.execute() if parts else [], limit)
    out = []
    for entry_id, fields in entries:
        for field, kind in ((b"change", "segment"), (b"churn", "churn")):
            if field in fields:
                out.append({"kind": kind, "id": entry_id.decode(), **json.loads(fields[field])})
    return out


HISTORY_SCAN_LIMIT = 2_000_000  # records read at most for one customer's history


async def customer_changes(
    settings: Settings, customer: str, limit: int = HISTORY_SCAN_LIMIT, timeout_s: float = 30
) -> dict[str, Any]:
    """Every segment change and churn change of ``customer`` (a full id) still on the output
    topics, oldest first, each once (delivery is at least once: deduplicated by ``event_id``).

    Reads the one partition of each topic that holds the customer (the outbox publishes by the
    key's murmur2 partition) from its start. The end is where fetches bring nothing more past the
    end offset, which the embedded broker reports up to a batch short. At most ``limit`` records
    in all: ``complete`` says whether both partitions were read to their end."""
    wanted = customer.encode()
    found: dict[str, dict[str, Any]] = {}
    out: dict[str, Any] = {"scanned": 0, "complete": True, "partition": None}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None, enable_auto_commit=False,
        request_timeout_ms=10_000, **kafka_options(settings),
    )  # fmt: skip
    await consumer.start()
    try:
        await consumer.topics()  # the cluster's topics; before any assignment narrows the metadata
        tps = []
        for topic in (settings.topic_segment_changes, settings.topic_churn_signals):
            partitions = consumer.partitions_for_topic(topic)
            if partitions:  # else nothing was published on it yet
                tps.append(TopicPartition(topic, partition_for(customer, len(partitions))))
                out["partition"] = tps[-1].partition
        if tps:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            deadline, empty = time.monotonic() + timeout_s, 0
            while empty < 2 and time.monotonic() < deadline:
                batch = await consumer.getmany(*tps, timeout_ms=200, max_records=10_000)
                records = [r for rs in batch.values() for r in rs]
                at_end = all([await consumer.position(tp) >= ends[tp] for tp in tps])
                empty = empty + 1 if not records and at_end else 0
                for record in records:
                    if record.key == wanted:
                        event = json.loads(record.value)
                        found[event["event_id"]] = event
                out["scanned"] += len(records)
                if out["scanned"] >= limit:
                    break
            out["complete"] = empty >= 2
    finally:
        await consumer.stop()
    ordered = sorted(found.values(), key=lambda e: (e["event_type"], int(e["event_id"].rsplit(":", 1)[1])))
    out["segment_changes"] = [e for e in ordered if e["event_type"] == "segment_changed"]
    out["churn_changes"] = [e for e in ordered if e["event_type"] == "churn_changed"]
    return out


# ---- the analytics read models ------------------------------------------------------------------

ANALYTICS_VIEWS = {  # the CLI's name -> the read model and its table (streams/analytics.py)
    "cohorts": ("cohorts", analytics.cohort_table),
    "weekday": ("weekday_hour", analytics.weekday_hour_table),
    "geography": ("geography", analytics.geography_table),
    "segment-revenue": ("segment_revenue", analytics.segment_revenue_table),
    "daily": ("daily", analytics.daily_table),
}


def analytics_view(settings: Settings, view: str) -> Any:
    """One analytics read model as a table (``ANALYTICS_VIEWS``); an empty one if nothing counted yet."""
    model, table = ANALYTICS_VIEWS[view]
    return table(analytics_counts(_client(settings), Keys(settings.redis_prefix), model))


def analytics_counts(client: redis.Redis, keys: Keys, model: str) -> dict[bytes, int]:
    """One analytics read model's counts, summed over the partitions."""
    return sum_hashes(client, [part.analytics(model) for part in partitions(client, keys)])


def run_document(client: redis.Redis, keys: Keys, name: str) -> dict[str, Any] | None:
    """A document of the retrain run in force: ``rules`` (the market basket rules,
    models/basket.py), ``forecast`` (the sales forecast, models/forecast.py) or ``targeting`` (the
    uplift model's summary and targeting list, models/uplift.py); None before any."""
    model, key = {
        "rules": ("rules", keys.rules), "forecast": ("forecast", keys.forecast), "targeting": ("uplift", keys.targeting)
    }[name]  # fmt: skip
    for _attempt in range(3):  # a retrain may switch runs, and drop the old one, between the two reads
        doc = client.get(keys.models)
        run = json.loads(doc).get(model) if doc else None
        if run is None:
            return None
        found = client.get(key(run))
        if found is not None:
            return json.loads(found)
    return None


def targeting_lines(doc: dict[str, Any], top: int = 15) -> list[str]:
    """The text of ``segstream analytics targeting``: the uplift model in force and its list."""
    trained, check = doc["trained_on"], doc["validation"]
    lines = [
        f"uplift model of retrain run {doc['run']} at event time {doc['cutoff']}: {doc['method']}",
        f"trained on {trained['sends']:,} sends of {trained['campaigns']} campaigns ({trained['treatment']:,} "
        f"treatment, {trained['control']:,} control) with a closed {doc['window_days']}-day window",
        f"response within {doc['window_days']} days: treatment {trained['response_treatment']:.2%}, control "
        f"{trained['response_control']:.2%} (average uplift {doc['average_uplift']:+.2%})",
    ]
    if "qini_coefficient" in check:
        lines.append(
            f"held-out check on {check['sends']:,} sends: Qini coefficient {check['qini_coefficient']:.5f} "
            f"(random targeting: 0), AUUC {check['auuc']:.5f}"
        )
    lines.append(
        f"{doc['positive_uplift']:,} of {doc['scored_customers']:,} customers have a positive uplift; "
        f"the list keeps {len(doc['targets']):,}"
    )
    lines.append(f"{'rank':>4}  {'customer':<32}  {'uplift':>7}  {'P(sent)':>7}  {'P(not)':>7}  segment")
    for rank, target in enumerate(doc["targets"][:top], start=1):
        lines.append(
            f"{rank:>4}  {target['customer_unique_id']:<32}  {target['uplift']:>+7.3f}  {target['p_treated']:>7.3f}  "
            f"{target['p_control']:>7.3f}  {target['segment'] or 'n/a'}"
        )
    return lines


def rules_lines(rules: dict[str, Any], top: int = 15) -> list[str]:
    """The text of ``segstream analytics rules``: both kinds, the strongest rules by lift."""
    lines = [
        f"market basket rules of retrain run {rules['run']} (minimum support {rules['min_support']:g}, "
        f"confidence {rules['min_confidence']:g})"
    ]
    for kind, title in (("orders", "categories bought in one order"), ("months", "by one customer in one month")):
        found = rules[kind]
        lines.append(
            f"{title}: {found['rules_found']:,} rules from {found['baskets']:,} baskets, {found['categories']:,} "
            f"categories, {found['pairs']:,} pairs"
        )
        if found["rules"]:
            lines.append(f"  {'if':<32}{'then':<32}{'baskets':>8}{'support':>9}{'confidence':>11}{'lift':>8}")
        for r in found["rules"][:top]:
            lines.append(
                f"  {r['antecedent'][:31]:<32}{r['consequent'][:31]:<32}{r['baskets']:>8,}{r['support']:>9.4f}"
                f"{r['confidence']:>11.3f}{r['lift']:>8.2f}"
            )
    return lines


def forecast_lines(sales: dict[str, Any], currency: str = "") -> list[str]:
    """The text of ``segstream analytics forecast``: each day's forecast with its interval."""
    money = f" ({currency})" if currency else ""
    lines = [
        f"sales forecast of retrain run {sales['run']} after {sales['until']}: {sales['method']}, "
        f"{sales['level']:.0%} prediction intervals",
        f"{'day':<12}{'orders':>8}{'interval':>16}{'revenue' + money:>16}{'interval':>26}",
    ]
    for o, r in zip(sales["orders"], sales["revenue"], strict=True):
        orders, revenue = (f"{x['lower']:,.0f}-{x['upper']:,.0f}" for x in (o, r))
        lines.append(f"{o['day']:<12}{o['mean']:>8,.1f}{orders:>16}{r['mean']:>16,.2f}{revenue:>26}")
    return lines


def analytics_lines(view: str, table: Any, currency: str = "", months: int = 12) -> list[str]:
    """The text of ``segstream analytics VIEW``: labelled columns, money with its currency."""
    money = f" ({currency})" if currency else ""
    if view == "cohorts":
        width = min(months, max((len(r["active"]) for r in table), default=0))
        lines = [
            f"acquisition cohorts: share of each month's new customers buying in month 0..{width - 1} since; "
            f"revenue{money} over all months",
            f"{'cohort':<8}{'customers':>10}{'revenue':>14} " + "".join(f"{f'm{k}':>7}" for k in range(width)),
        ]
        for r in table:
            shares = "".join(f"{a / r['customers']:>7.1%}" for a in r["active"][:width])
            lines.append(f"{r['cohort']:<8}{r['customers']:>10,}{sum(r['revenue']):>14,.2f} {shares}")
        return lines
    if view == "weekday":
        days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
        lines = [
            f"purchases by weekday and hour of the event time ({analytics.TIMEZONE_NOTE})",
            f"{'':<4}" + "".join(f"{h:>5}" for h in range(24)) + f"{'total':>8}{'revenue' + money:>16}",
        ]
        for d, (orders, revenue) in enumerate(zip(table["orders"], table["revenue"], strict=True)):
            lines.append(
                f"{days[d]:<4}" + "".join(f"{n:>5}" for n in orders) + f"{sum(orders):>8,}{sum(revenue):>16,.2f}"
            )
        return lines
    if view == "geography":
        lines = [f"{'state':<12}{'customers':>10}{'orders':>9}{'revenue' + money:>16}  largest segments"]
        for r in table:
            top = sorted(r["segments"].items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            mix = ", ".join(f"{s} {n / max(r['customers'], 1):.0%}" for s, n in top)
            lines.append(
                f"{r['state'] or 'n/a':<12}{r['customers']:>10,}{r['orders']:>9,}{r['revenue']:>16,.2f}  {mix}"
            )
        return lines
    if view == "segment-revenue":
        lines = [f"revenue{money} per event-month by the segment its buyers hold now (the three largest)"]
        lines.append(f"{'month':<8}{'revenue':>14}  segments")
        for r in table:
            total = sum(r["segments"].values())
            top = sorted(r["segments"].items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            lines.append(f"{r['month']:<8}{total:>14,.2f}  " + ", ".join(f"{s} {v / total:.0%}" for s, v in top))
        return lines
    if view == "daily":
        lines = [f"{'day':<12}{'orders':>8}{'revenue' + money:>16}"]
        lines += [f"{r['day']:<12}{r['orders']:>8,}{r['revenue']:>16,.2f}" for r in table]
        return lines
    raise ValueError(f"no analytics view {view!r}")
