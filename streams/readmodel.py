"""Reading what the workers and the retrain job keep in Redis: one profile, its CLV scores and
recommendations, segment counts, the latest shifts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from segstream.keys import Keys
from segstream.schemas import SegmentChanged
from segstream.settings import Settings
from streams.profile import Profile

__all__ = [
    "CustomerModels",
    "Overview",
    "customer_models",
    "overview",
    "overview_lines",
    "profile_lines",
    "read_profile",
    "replay_consumed",
]


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_address)


def read_profile(settings: Settings, customer: str) -> Profile | None:
    data = _client(settings).hgetall(Keys(settings.redis_prefix).profile(customer))
    return Profile.from_redis(data) if data else None


# The models document and the customer's entries of the runs it names, in one atomic call: a
# reader sees the runs in force before a retrain's switch or after it, never one of each.
_MODELS = """
local doc = redis.call('GET', KEYS[1])
if not doc then return {false, false, false} end
local models = cjson.decode(doc)
local scores, recs = false, false
if models['clv'] then scores = redis.call('HGET', ARGV[1] .. models['clv'], ARGV[3]) end
if models['recommendations'] then
    local key = ARGV[2] .. models['recommendations']
    recs = redis.call('HGET', key, ARGV[3]) or redis.call('HGET', key, '*')
end
return {doc, scores, recs}
"""


@dataclass
class CustomerModels:
    """What the models in force say about one customer (``None``: no such model or entry)."""

    models: dict
    scores: dict | None  # expected_purchases, p_alive, clv
    recommendations: dict | None  # items, strategy, run


def customer_models(settings: Settings, customer: str, client: redis.Redis | None = None) -> CustomerModels | None:
    """The customer's CLV scores and recommendations from the runs in force (None before any run)."""
    client = client or _client(settings)
    keys = Keys(settings.redis_prefix)
    doc, scores, recs = client.eval(_MODELS, 1, keys.models, keys.scores(""), keys.recommendations(""), customer)
    if doc is None:
        return None
    return CustomerModels(json.loads(doc), json.loads(scores) if scores else None, json.loads(recs) if recs else None)


def models_lines(found: CustomerModels | None) -> list[str]:
    if found is None:
        return ["models               none yet (run `segstream retrain --once`)"]
    lines = [f"{'models':<20} run {found.models.get('run')} at event time {found.models.get('cutoff')}"]
    if found.scores:
        lines.append(f"{'clv':<20} {found.scores['clv']:.2f} over the horizon (CLV run {found.models.get('clv')})")
        lines.append(f"{'p_alive_at_cutoff':<20} {found.scores['p_alive']:.3f} at the model's cutoff")
        lines.append(f"{'expected_purchases':<20} {found.scores['expected_purchases']:.3f} over the horizon")
    else:
        lines.append(f"{'clv':<20} n/a (no CLV model, or no purchase before its cutoff)")
    if found.recommendations:
        recs = found.recommendations
        lines.append(f"{'recommendations':<20} {recs['strategy']} (run {recs['run']}): {', '.join(recs['items'])}")
    return lines


@dataclass
class Overview:
    segments: dict[str, int]
    latest: list[SegmentChanged]
    counters: dict[str, int]
    watermark: float | None


def overview(settings: Settings, latest: int = 10) -> Overview:
    client, keys = _client(settings), Keys(settings.redis_prefix)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.segments)
    pipe.hgetall(keys.counters)
    pipe.hvals(keys.watermarks)
    if latest:
        pipe.xrevrange(keys.changes, count=latest)
    segments, counters, watermarks, *changes = pipe.execute()
    changes = changes[0] if changes else []
    return Overview(
        segments={k.decode(): int(v) for k, v in segments.items() if int(v)},
        latest=[SegmentChanged.model_validate_json(fields[b"change"]) for _, fields in changes],
        counters={k.decode(): int(v) for k, v in counters.items()},
        watermark=min(float(w) for w in watermarks) if watermarks else None,
    )


def replay_consumed(settings: Settings, replay_id: str, run_id: str) -> int:
    """How many partitions (of both topics) have processed this replay run's final tick."""
    ends = _client(settings).hgetall(Keys(settings.redis_prefix).replay_ends)
    return sum(1 for v in ends.values() if v.decode() == f"{replay_id}/{run_id}")


def profile_lines(profile: Profile) -> list[str]:
    data = {k: v for k, v in vars(profile).items() if k != "purchases"}
    products = profile.products
    data["purchases"] = f"{len(profile.purchases)} days, {len(products)} items ({len(set(products))} distinct products)"
    return [f"{k:<20} {json.dumps(v) if isinstance(v, list | tuple) else v}" for k, v in data.items()]


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
