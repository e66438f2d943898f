"""Reading what the workers keep in Redis: one profile, segment counts, the latest shifts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from segstream.keys import Keys
from segstream.schemas import SegmentChanged
from segstream.settings import Settings
from streams.profile import Profile

__all__ = ["Overview", "overview", "overview_lines", "profile_lines", "read_profile", "replay_consumed"]


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_address)


def read_profile(settings: Settings, customer: str) -> Profile | None:
    data = _client(settings).hgetall(Keys(settings.redis_prefix).profile(customer))
    return Profile.from_redis(data) if data else None


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
    data = {k: v for k, v in vars(profile).items() if k != "products"}
    data["products"] = f"{len(profile.products)} items ({len(set(profile.products))} distinct)"
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
