"""What the live view costs: Redis commands/s and the worker's events/s, with and without a page open.

    python bench/web_load.py --orders 20000

One run, on the embedded broker and redis-server (fresh, free ports), a synthetic history replayed
at full speed four times into fresh topics, a fresh Redis prefix and a fresh worker group each
time: without the view, with it, without, with (alternating, because this machine's speed drifts
within minutes; each figure is the mean of its two runs). "With" is `segstream web` and one page
open in headless Chromium (tests/browser.py, Debian's chromium), which refetches the segment
history and the window's transitions whenever the watermark moves, as a person's page does.

Per run: events/s = customer events / (replay start to every partition's end-of-replay tick
processed); Redis commands/s = calls summed over INFO commandstats in that span / its length.
Then, with the workers stopped, the view alone on the final state: its commands/s at rest (the
watermark still) and while the page refetches the history and transitions once a second (what a
moving watermark makes it do), for 10 s each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx
import redis

from replay.olist import load_olist
from replay.producer import ensure_topics, replay_history
from replay.synth import SynthConfig, synthesize
from segstream.demo import start_worker, stop_worker
from segstream.keys import Keys
from segstream.partitioned import counters
from segstream.services import free_port, services_down, services_up
from segstream.settings import Settings
from streams.readmodel import replay_consumed

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/ is not installed: its CDP driver
from tests.browser import Browser


def _calls(client: redis.Redis) -> Counter:
    """Calls per command since the server started (INFO commandstats)."""
    return Counter({name.removeprefix("cmdstat_"): v["calls"] for name, v in client.info("commandstats").items()})


def _variant(base: Settings, tag: str) -> Settings:
    return base.model_copy(
        update={
            "app_id": f"web-{tag}",
            "redis_prefix": f"web-{tag}",
            "topic_orders": f"{tag}.orders",
            "topic_reviews": f"{tag}.reviews",
            "topic_segment_changes": f"{tag}.segment-changes",
            "topic_churn_signals": f"{tag}.churn-signals",
            "topic_dead_letter": f"{tag}.dead-letter",
            "web_port": free_port(),
        }
    )


def _wait(predicate, what: str, timeout_s: float = 600, poll_s: float = 0.05) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(poll_s)
    raise RuntimeError(f"{what}: not in {timeout_s} s")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def _view(settings: Settings, workdir: Path) -> Iterator[object]:
    """`segstream web` and a page open on it, for the span of the block; yields the page."""
    web = start_worker(settings, workdir / f"web-{settings.app_id}.log", "web")
    url = f"http://127.0.0.1:{settings.web_port}"
    try:
        _wait(lambda: _answers(url + "/api/health"), "segstream web", 60, 0.2)
        with Browser() as browser:
            page = browser.open(url + "/")
            page.wait_for("Number(document.body.dataset.snapshots || 0) >= 1")
            yield page
    finally:
        stop_worker(web)


def _run(base: Settings, history, with_view: bool, workdir: Path) -> dict:
    settings = _variant(base, uuid.uuid4().hex[:6])
    topics = [settings.topic_orders, settings.topic_reviews]
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, topics, settings.topic_partitions, 1))
    client, keys = redis.Redis.from_url(settings.redis_address), Keys(settings.redis_prefix)
    log = workdir / f"worker-{settings.app_id}.log"
    worker = start_worker(settings, log)
    try:
        _wait(lambda: log.exists() and "Worker]: Ready" in log.read_text(errors="replace"), "worker ready", 60)
        with _view(settings, workdir) if with_view else nullcontext() as page:
            calls, started = _calls(client), time.monotonic()
            summary = asyncio.run(replay_history(history, settings))
            partitions = 2 * settings.topic_partitions
            ended = _wait(lambda: replay_consumed(settings, summary.replay_id, summary.run_id) == partitions, "replay")
            seconds, commands = ended - started, _calls(client) - calls
            per_command = {name: round(n / summary.events_sent, 4) for name, n in commands.most_common()}
            snapshots = int(page.evaluate("document.body.dataset.snapshots")) if page else 0
        consumed = counters(client, keys).get("consumed", 0)
        figures = {
            "view": with_view,
            "events": summary.events_sent,
            "seconds": round(seconds, 2),
            "events_per_s": round(summary.events_sent / seconds),
            "redis_commands_per_s": round(commands.total() / seconds),
            "redis_commands_per_event": round(commands.total() / summary.events_sent, 3),
            "commands_per_event_by_name": per_command,
            "records_consumed": consumed,
            "page_snapshots": snapshots,
        }
        if with_view:  # the view alone, workers stopped, on the final state
            stop_worker(worker)
            with _view(settings, workdir):
                time.sleep(2)
                calls = _calls(client)
                time.sleep(10)  # at rest: the watermark does not move, the page fetches nothing
                figures["view_at_rest_commands_per_s"] = round((_calls(client) - calls).total() / 10, 1)
                # what a moving watermark adds: the page refetches the history and its window's
                # transitions; here once a second for 10 s, on the final (longest) history
                url, history = f"http://127.0.0.1:{settings.web_port}", None
                calls = _calls(client)
                for _ in range(10):
                    history = httpx.get(url + "/api/segments/history", timeout=30).json()
                    days = {"from": history[max(0, len(history) - 30)]["day"], "to": history[-1]["day"]}
                    httpx.get(url + "/api/transitions", params=days, timeout=30)
                    time.sleep(1)
                figures["view_refetching_commands_per_s"] = round((_calls(client) - calls).total() / 10, 1)
                figures["event_days"] = len(history or [])
        return figures
    finally:
        stop_worker(worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="segstream-web-bench-"))
    synthesize(SynthConfig(orders=args.orders, seed=1), workdir / "olist")
    base = Settings(run_dir=workdir / "run", kafka_port=free_port(), redis_port=free_port(), log_level="info")
    services_up(base)
    try:
        history = load_olist(workdir / "olist")
        runs = []
        for with_view in (False, True, False, True):
            runs.append(_run(base, history, with_view, workdir))
            print(json.dumps(runs[-1]), file=sys.stderr)
    finally:
        services_down(base)

    def mean(key: str, view: bool) -> float:
        values = [r[key] for r in runs if r["view"] == view and key in r]
        return round(sum(values) / len(values), 1)

    without, with_ = mean("events_per_s", False), mean("events_per_s", True)
    figures = {
        "orders": args.orders,
        "events": runs[0]["events"],
        "events_per_s_without_view": without,
        "events_per_s_with_view": with_,
        "events_per_s_ratio_with_to_without": round(with_ / without, 3),
        "redis_commands_per_s_without_view": mean("redis_commands_per_s", False),
        "redis_commands_per_s_with_view": mean("redis_commands_per_s", True),
        "view_at_rest_commands_per_s": mean("view_at_rest_commands_per_s", True),
        "view_refetching_commands_per_s": mean("view_refetching_commands_per_s", True),
        "event_days": runs[1].get("event_days"),
        "runs": runs,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
