"""``segstream backtest``: replay history through the real pipeline, freeze what it served at each
cutoff, and score it against what happened next.

Like the CLI and the demo this is the face of the project: it drives every stage and nothing
imports it. One run:

1. loads the history once, and plans the *points* it stops at: every cutoff, and every
   cutoff + horizon (where the segments are read again for the transition matrix);
2. for each point in event-time order: replays the window since the previous point (``--from``
   the previous end, ``--until`` the day after the point: the cutoff day is whole, as lifetimes'
   ``calibration_period_end``), waits until every partition of both topics has processed that
   replay's final tick (the documented end-of-replay signal, never end offsets) and the outbox is
   empty; at a cutoff, retrains at the cutoff and waits for the workers' re-score, then freezes
   everything served: each profile (segment, churn status and reasons, recency), the models in
   force (expected purchases, P(alive), CLV) and each recommendation list with its strategy;
3. scores each cutoff's frozen predictions against the source data's own record of the horizon
   (``models.evaluation``), next to baselines, and writes ``figures.json`` and ``report.html``
   (``segstream.report``).

Each run uses topics, a consumer group and a Redis prefix of its own (removed afterwards), an ALS
with one thread, and profiles read in customer order, so the same input, cutoffs and settings give
identical figures.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import shutil
import sys
import time
import typing
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis

from segstream.clients import redis_client
from segstream.keys import Keys
from segstream.partitioned import counters, outbox_length
from segstream.settings import Settings

__all__ = ["BacktestError", "parse_cutoffs", "parse_horizon", "run_backtest"]

log = logging.getLogger(__name__)

WAIT_S = 900.0  # most a worker may take to process one replay window
CHURN_AS_PROBABILITY = {"active": 1.0, "at_risk": 0.5, "churned": 0.0}  # the status read as P(buys again)
CHURN_ORDER = {"active": 2, "at_risk": 1, "churned": 0}


class BacktestError(RuntimeError):
    """A backtest that cannot run as asked; the message says why in one line."""


def parse_horizon(text: str) -> int:
    """A horizon in whole days: ``90``, ``90d`` or ``39w``.

    >>> parse_horizon("90d"), parse_horizon("39w"), parse_horizon("30")
    (90, 273, 30)
    """
    value = text.strip().lower()
    unit = {"d": 1, "w": 7}.get(value[-1:])
    number = value[:-1] if unit else value
    try:
        days = int(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a horizon such as 90d, 39w or 90 (days)") from None
    if days <= 0:
        raise ValueError(f"{text!r}: the horizon must be at least one day")
    return days


def parse_cutoffs(text: str) -> list[date]:
    """Comma-separated ISO dates, each the last whole day of a calibration period, ascending.

    >>> parse_cutoffs("2018-01-01, 2017-09-01")
    [datetime.date(2017, 9, 1), datetime.date(2018, 1, 1)]
    """
    days = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            days.append(date.fromisoformat(part))
        except ValueError:
            raise ValueError(f"{part!r} is not an ISO date such as 2017-09-01 (a cutoff is a whole day)") from None
    if not days:
        raise ValueError("no cutoff given")
    if len(set(days)) != len(days):
        raise ValueError(f"a cutoff is given twice in {text!r}")
    return sorted(days)


def _day_end(day: date) -> datetime:
    """The first instant after ``day`` (UTC): the replay's exclusive ``--until`` for that day."""
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


@dataclass
class Frozen:
    """What the system served at one point: profiles, and at a cutoff the models in force."""

    day: date
    profiles: pd.DataFrame  # by customer: segment, churn, churn_reasons, last_purchase, monetary
    purchases: dict[str, dict[str, list]] = field(default_factory=dict)
    scores: pd.DataFrame | None = None  # by customer: expected_purchases, p_alive, clv
    lists: dict[str, dict[str, Any]] = field(default_factory=dict)  # customer ("*": default) -> list
    models: dict[str, Any] = field(default_factory=dict)
    clv_params: dict[str, Any] | None = None
    rules: dict[str, Any] = field(default_factory=dict)  # the market basket rules in force
    forecast: dict[str, Any] = field(default_factory=dict)  # the sales forecast in force
    rivals: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # strategy -> customer -> list
    uplift: dict[str, float] = field(default_factory=dict)  # customer -> uplift for the next campaign
    targeting: dict[str, Any] = field(default_factory=dict)  # the uplift model's summary in force
    retrain: dict[str, Any] = field(default_factory=dict)


def _freeze(client: redis.Redis, keys: Keys, day: date, with_models: bool, registry: Path | None) -> Frozen:
    from streams.profile import Profile

    names = sorted(client.scan_iter(match=keys.profiles_pattern, count=1_000))
    names = list(dict.fromkeys(names))  # SCAN may return a key twice
    rows, purchases = [], {}
    for start in range(0, len(names), 2_000):
        pipe = client.pipeline(transaction=False)
        for name in names[start : start + 2_000]:
            pipe.hgetall(name)
        for raw in pipe.execute():
            if not raw:
                continue
            p = Profile.from_redis(raw)
            purchases[p.customer_unique_id] = p.purchases
            rows.append(
                (
                    p.customer_unique_id,
                    p.segment,
                    p.churn,
                    ",".join(p.churn_reasons),
                    np.nan if p.last_purchase is None else p.last_purchase,
                    p.monetary,
                    p.state,
                )
            )
    profiles = (
        pd.DataFrame(
            rows, columns=["customer", "segment", "churn", "churn_reasons", "last_purchase", "monetary", "state"]
        )
        .set_index("customer")
        .sort_index()
    )
    frozen = Frozen(day=day, profiles=profiles, purchases=purchases)
    if not with_models:
        return frozen
    raw = client.get(keys.models)
    frozen.models = json.loads(raw) if raw else {}
    if "clv" in frozen.models:
        entries = client.hgetall(keys.scores(frozen.models["clv"]))
        frozen.scores = pd.DataFrame.from_dict(
            {k.decode(): json.loads(v) for k, v in entries.items()}, orient="index"
        ).sort_index()
        if registry is not None:
            path = registry / f"run-{frozen.models['clv']:06d}" / "clv.json"
            frozen.clv_params = json.loads(path.read_text()) if path.exists() else None
    for name, key in (("rules", keys.rules), ("forecast", keys.forecast)):
        if name in frozen.models:
            raw = client.get(key(frozen.models[name]))
            setattr(frozen, name, json.loads(raw) if raw else {})
    if "rivals" in frozen.models:
        for name, items in client.hgetall(keys.rivals(frozen.models["rivals"])).items():
            strategy, customer = name.decode().split(":", 1)
            frozen.rivals.setdefault(strategy, {})[customer] = json.loads(items)
    if "recommendations" in frozen.models:
        entries = client.hgetall(keys.recommendations(frozen.models["recommendations"]))
        frozen.lists = {k.decode(): json.loads(v) for k, v in entries.items()}
    if "uplift" in frozen.models:
        entries = client.hgetall(keys.uplift(frozen.models["uplift"]))
        frozen.uplift = {k.decode(): json.loads(v)["uplift"] for k, v in entries.items()}
        raw = client.get(keys.targeting(frozen.models["uplift"]))
        frozen.targeting = {k: v for k, v in json.loads(raw).items() if k != "targets"} if raw else {}
    return frozen


class _Progress:
    """One line per phase on a terminal (tqdm), log lines otherwise; events/s while catching up."""

    def __init__(self, enabled: bool, total_points: int) -> None:
        self.enabled, self.total_points = enabled, total_points

    def catch_up(self, point: int, day: date, consumed: Callable[[], int], done: Callable[[], bool], sent: int) -> None:
        from tqdm import tqdm

        bar = tqdm(
            total=sent,
            desc=f"[{point}/{self.total_points}] catch-up to {day}",
            unit=" records",  # events and clock ticks, as the worker counts them consumed
            disable=not self.enabled,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        start, started = consumed(), time.monotonic()
        deadline, logged = started + WAIT_S, started
        try:
            while not done():
                if time.monotonic() > deadline:
                    raise BacktestError(f"the stream worker did not process the replay to {day} within {WAIT_S:.0f} s")
                now, got = time.monotonic(), consumed() - start
                bar.update(max(min(got, sent) - bar.n, 0))
                if not self.enabled and now - logged >= 10:
                    log.info("catching up to %s: %d of %d events consumed", day, got, sent)
                    logged = now
                time.sleep(0.2)
            bar.n = sent
            bar.refresh()
        finally:
            bar.close()


def _plan(cutoffs: list[date], horizon_days: int) -> list[tuple[date, bool]]:
    """The points to stop at, in order: ``(day, is_cutoff)``; every cutoff and cutoff + horizon.

    >>> _plan([date(2017, 1, 10), date(2017, 1, 20)], 10)
    [(datetime.date(2017, 1, 10), True), (datetime.date(2017, 1, 20), True), (datetime.date(2017, 1, 30), False)]
    """
    ends = {c + timedelta(days=horizon_days) for c in cutoffs}
    return sorted({(d, d in cutoffs) for d in set(cutoffs) | ends})


def _transactions(history: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Orders (customer, time, spend, state) and order lines (customer, time, product, category)
    from the source's own frames: the actuals never come from the stream state."""
    placed = history.placed
    orders = pd.DataFrame(
        {
            "customer": placed["customer_unique_id"].to_numpy(object),
            "time": placed["event_time"].to_numpy("datetime64[ns]"),
            "spend": placed["payment_total"].to_numpy(float),
            "state": placed["state"].to_numpy(object),
        }
    )
    counts = (placed["item_end"] - placed["item_start"]).to_numpy("int64")
    rows = np.concatenate([np.arange(s, e) for s, e in zip(placed["item_start"], placed["item_end"], strict=True)])
    lines = pd.DataFrame(
        {
            "customer": np.repeat(orders["customer"].to_numpy(object), counts),
            "time": np.repeat(orders["time"].to_numpy("datetime64[ns]"), counts),
            "product": history.items["product_id"].to_numpy(object)[rows] if len(rows) else [],
            "category": history.items["category"].to_numpy(object)[rows] if len(rows) else [],
        }
    )
    return orders, lines


def _fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def run_backtest(
    settings: Settings,
    data: Path,
    *,
    cutoffs: list[date],
    horizon_days: int,
    out: Path,
    source: str = "olist",
    mapping: Path | None = None,
    campaigns: Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the backtest and write ``out/figures.json`` and ``out/report.html``; returns the figures."""
    from models.evaluation import transactions_days
    from replay.producer import replay_history
    from replay.sources import campaigns_beside, check_history, load_source, source_files
    from segstream.demo import start_worker, stop_worker
    from segstream.report import write_report
    from segstream.services import services_up
    from streams.readmodel import replay_consumed, segment_history
    from streams.thresholds import wait_for_rescore

    started = time.monotonic()
    timings: dict[str, float] = defaultdict(float)
    history = load_source(source, data, mapping, campaigns)
    check_history(history, data, settings.replay_max_reject_share)
    orders, lines = _transactions(history)
    if orders.empty:
        raise BacktestError(f"{data}: no purchase in the history, nothing to backtest")
    first_day, last_day = orders["time"].min().date(), orders["time"].max().date()
    for cutoff in cutoffs:
        if cutoff < first_day:
            raise BacktestError(f"cutoff {cutoff} is before the history's first purchase ({first_day})")
        if cutoff + timedelta(days=horizon_days) > last_day:
            raise BacktestError(
                f"cutoff {cutoff} + {horizon_days} days ends after the history's last purchase ({last_day}): "
                f"the horizon would be cut short; use an earlier cutoff or a shorter --horizon"
            )
    files = source_files(source, data, campaigns) + ([mapping] if mapping is not None else [])
    tag = uuid.uuid4().hex[:8]  # this run's own topics, group and keys: never in the figures
    run = settings.model_copy(
        update={
            "app_id": f"backtest-{tag}",
            "redis_prefix": f"backtest-{tag}",
            "topic_orders": f"backtest-{tag}.orders",
            "topic_reviews": f"backtest-{tag}.reviews",
            "topic_segment_changes": f"backtest-{tag}.segment-changes",
            "topic_churn_signals": f"backtest-{tag}.churn-signals",
            "topic_dead_letter": f"backtest-{tag}.dead-letter",
            "models_dir": out / "models",
            "clv_horizon_days": float(horizon_days),
            "als_threads": 1,  # bit-for-bit reproducible fits
            "recs_rivals": True,  # every strategy's list for every buyer: scored per segment
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "models", ignore_errors=True)  # this run's registry: run numbers start at 1
    for status in services_up(run):
        echo(status.line())
    client, keys = redis_client(run), Keys(run.redis_prefix)
    worker_log = out / "worker.log"
    worker = start_worker(run, worker_log)
    echo(f"started stream worker pid {worker.pid} (log {worker_log})")
    plan = _plan(cutoffs, horizon_days)
    horizon_ends = {c + timedelta(days=horizon_days) for c in cutoffs}
    bar = _Progress(progress, len(plan))
    frozen: dict[tuple[date, bool], Frozen] = {}
    replayed = 0
    try:
        since: datetime | None = None
        for index, (day, is_cutoff) in enumerate(plan, start=1):
            until = _day_end(day)
            t0 = time.monotonic()
            summary = asyncio.run(
                replay_history(history, run, data_files=files, since=since, until=until, restart=True)
            )
            timings["replay"] += time.monotonic() - t0
            replayed += summary.events_sent
            echo(
                f"[{index}/{len(plan)}] replayed {summary.events_sent:,} events and {summary.ticks_sent:,} clock "
                f"ticks {since.date() if since else 'from the start'} to {day} in {summary.duration_s:.1f} s"
            )
            t0 = time.monotonic()
            partitions = summary.topic_partitions

            def consumed_all(summary=summary, partitions=partitions) -> bool:
                if worker.poll() is not None:
                    raise BacktestError(f"the stream worker exited with code {worker.returncode}; see {worker_log}")
                ends = replay_consumed(run, summary.replay_id, summary.run_id)
                return ends == partitions and outbox_length(client, keys) == 0

            bar.catch_up(
                index,
                day,
                lambda: counters(client, keys).get("consumed", 0),
                consumed_all,
                summary.events_sent + summary.ticks_sent + partitions,
            )
            timings["catch-up"] += time.monotonic() - t0
            if day in horizon_ends:  # the segments served then, before any retrain of that day
                frozen[(day, False)] = _freeze(client, keys, day, with_models=False, registry=None)
            if is_cutoff:
                t0 = time.monotonic()
                frozen[(day, True)] = _retrain_and_freeze(run, client, keys, day, wait_for_rescore)
                timings["retrain"] += time.monotonic() - t0
                echo(f"[{index}/{len(plan)}] retrained at {day}: {frozen[(day, True)].retrain['line']}")
            since = until
        mix = segment_history(client, keys)
    finally:
        stop_worker(worker)
        _drop(client, keys)
    t0 = time.monotonic()
    echo(f"scoring {len(cutoffs)} cutoff(s) against the source's next {horizon_days} days, with baselines")
    figures, tables = score_backtest(
        cutoffs, horizon_days, frozen, orders, lines, transactions_days(orders), history, run, mix,
        planted=_planted(campaigns or campaigns_beside(source, data)),
    )  # fmt: skip
    timings["scoring"] += time.monotonic() - t0
    echo(f"scored in {timings['scoring']:.1f} s")
    figures["parameters"] = {
        "data": str(data),
        "source": source,
        "mapping": str(mapping) if mapping else None,
        "cutoffs": [c.isoformat() for c in cutoffs],
        "horizon_days": horizon_days,
        "partitions": run.topic_partitions,
        "tick_seconds": run.replay_tick_seconds,
        "clv_model": run.clv_model,
        "clv_penalizer": run.clv_penalizer,
        "clv_monthly_discount": run.clv_monthly_discount,
        "recs_top_n": run.recs_top_n,
        "als": {"factors": run.als_factors, "iterations": run.als_iterations, "threads": 1},
    }
    figures["data"] = {
        "fingerprint": _fingerprint(files),
        "files": sorted(p.name for p in files),
        "events": history.event_counts(),
        "first_purchase_day": first_day.isoformat(),
        "last_purchase_day": last_day.isoformat(),
    }
    (out / "predictions").mkdir(exist_ok=True)
    for cutoff, table in tables.items():
        table.to_csv(out / "predictions" / f"{cutoff.isoformat()}.csv", float_format="%.6g")
    figures["segstream_version"] = package_version("segstream")
    figures = _sorted(figures)
    (out / "figures.json").write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
    # the last cutoff's proposal, as `segstream retrain --strategy-map` (or SEGSTREAM_RECS_STRATEGY_MAP) takes it
    proposal = figures["cutoffs"][-1]["recommendations"].get("proposed_map") if figures["cutoffs"] else None
    if proposal:
        (out / "strategy-map.json").write_text(json.dumps(proposal, indent=1, sort_keys=True) + "\n")
    total = time.monotonic() - started
    run_info = {
        "seconds": {k: round(v, 1) for k, v in timings.items()} | {"total": round(total, 1)},
        "events_replayed": replayed,
        "events_per_second": round(replayed / max(timings["replay"] + timings["catch-up"], 1e-6)),
    }
    (out / "run.json").write_text(json.dumps(run_info, indent=1) + "\n")
    write_report(out / "report.html", figures, run_info)
    echo(f"wrote {out / 'figures.json'}, {out / 'report.html'} in {total:.1f} s")
    return figures


def _retrain_and_freeze(
    run: Settings, client: redis.Redis, keys: Keys, day: date, wait_for_rescore: Callable[..., list[int]]
) -> Frozen:
    from models.retrain import retrain_once

    # the cutoff's last second: its UTC day is the cutoff (the CLV summary's T and the baskets end
    # with that day), and it is within a tick of the stream's clock at the window's end
    report = retrain_once(run, cutoff=_day_end(day).timestamp() - 1, client=client)
    if report.thresholds.startswith("published version"):
        left = wait_for_rescore(run, report.models["thresholds_version"], timeout_s=WAIT_S)
        if left:
            raise BacktestError(f"the worker did not re-score partitions {left} after the retrain at {day}")
        deadline = time.monotonic() + WAIT_S
        while outbox_length(client, keys) and time.monotonic() < deadline:
            time.sleep(0.1)
    frozen = _freeze(client, keys, day, with_models=True, registry=run.models_path)
    frozen.retrain = {
        "run": report.run,
        "cutoff": report.cutoff,
        "customers": report.customers,
        "products": report.products,
        "clv": report.clv,
        "recommendations": report.recommendations,
        "thresholds": report.thresholds,
        "uplift": report.uplift,
        "clv_diagnostics": report.clv_diagnostics,
        "strategies": report.strategies,
        "line": report.line(cutoff=False).split(" in ")[0] + "; " + report.line().split("; ", 1)[1],
    }
    return frozen


def _drop(client: redis.Redis, keys: Keys) -> None:
    """Remove this run's Redis keys (its topics stay until the broker restarts: tansu keeps memory)."""
    try:
        batch = []
        for key in client.scan_iter(match=f"{keys.prefix}:*", count=5_000):
            batch.append(key)
            if len(batch) >= 5_000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    except redis.RedisError as exc:  # the figures are already safe; say what is left behind
        log.warning("could not remove the backtest's Redis keys %s:*: %s", keys.prefix, exc)


def _sorted(value: Any) -> Any:
    """Floats rounded and NaN as null, recursively: figures.json is plain, stable JSON."""
    if isinstance(value, dict):
        return {str(k): _sorted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    if isinstance(value, float | np.floating):
        return round(float(value), 6) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# ---- scoring ------------------------------------------------------------------------------------


def score_backtest(
    cutoffs: list[date],
    horizon_days: int,
    frozen: dict[tuple[date, bool], Frozen],
    orders: pd.DataFrame,
    lines: pd.DataFrame,
    days: pd.DataFrame,
    history: Any,
    settings: Settings,
    mix: list[dict[str, Any]],
    planted: pd.Series | None = None,
) -> tuple[dict[str, Any], dict[date, pd.DataFrame]]:
    """Every figure of the report, and per cutoff the table of frozen predictions and actuals
    (``planted``: the planted type of each (campaign, customer) send of a generated history)."""
    from models.analyses import descriptive

    figures: dict[str, Any] = {"cutoffs": []}
    tables: dict[date, pd.DataFrame] = {}
    for cutoff in cutoffs:
        at = frozen[(cutoff, True)]
        later = frozen.get((cutoff + timedelta(days=horizon_days), False))
        scores, tables[cutoff] = _score_cutoff(cutoff, horizon_days, at, later, orders, lines, days, settings)
        if len(history.campaigns):
            scores["uplift"] = _score_uplift(cutoff, horizon_days, at, orders, history.campaigns, settings, planted)
        figures["cutoffs"].append(scores)
    figures["segment_mix"] = _monthly(mix)
    last = max(cutoffs) + timedelta(days=horizon_days)
    figures["analyses"] = descriptive(orders, history.reviews, last)
    return figures, tables


def _monthly(mix: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The segment mix at the end of each event-month (the last day seen in it)."""
    by_month: dict[str, dict[str, Any]] = {}
    for entry in mix:
        by_month[entry["day"][:7]] = {"month": entry["day"][:7], "day": entry["day"], "segments": entry["segments"]}
    return list(by_month.values())


def _score_cutoff(
    cutoff: date,
    horizon_days: int,
    at: Frozen,
    later: Frozen | None,
    orders: pd.DataFrame,
    lines: pd.DataFrame,
    days: pd.DataFrame,
    settings: Settings,
) -> tuple[dict[str, Any], pd.DataFrame]:
    from models.clv import PURCHASE_MODELS, ClvFitError, ClvModel, rfm_summary
    from models.evaluation import (
        calibration_deciles,
        classification,
        cumulative_repeat,
        holdout,
        ranking,
        regression,
    )

    end_ts = _day_end(cutoff).timestamp()
    actual = holdout(days, cutoff, horizon_days)
    summary = rfm_summary(sorted(at.purchases.items()), end_ts - 1)  # what the retrain fitted on
    customers = actual.index.intersection(summary.index)
    result: dict[str, Any] = {
        "cutoff": cutoff.isoformat(),
        "horizon_end": (cutoff + timedelta(days=horizon_days)).isoformat(),
        "retrain": {k: v for k, v in at.retrain.items() if k != "line"},
        "customers": {
            "calibration_source": len(actual),
            "calibration_stream": len(summary),
            "scored": len(customers),
            "bought_again": int(actual.loc[customers, "bought_again"].sum()),
            "bought_again_share": float(actual.loc[customers, "bought_again"].mean()) if len(customers) else None,
            "new_in_horizon": int(
                days[(days["day"] > cutoff) & (days["day"] <= cutoff + timedelta(days=horizon_days))]["customer"]
                .drop_duplicates()
                .isin(actual.index)
                .eq(False)
                .sum()
            ),
        },
    }
    act = actual.loc[customers]
    s = summary.loc[customers]

    # ---- purchases and CLV
    purchases: dict[str, Any] = {}
    if at.scores is not None and at.clv_params is not None:
        served = at.scores.reindex(customers)
        rate = (s["frequency"] / s["T"].where(s["T"] > 0)).fillna(0.0) * horizon_days
        purchases["served"] = {
            "model": at.clv_params.get("model", "bgnbd"),
            **regression(served["expected_purchases"], act["purchases"]),
        }
        purchases["deciles"] = calibration_deciles(served["expected_purchases"], act["purchases"])
        purchases["baselines"] = {"historical_rate": regression(rate, act["purchases"])}
        for name in PURCHASE_MODELS:
            if name == purchases["served"]["model"]:
                continue
            try:
                rival = ClvModel(
                    penalizer=settings.clv_penalizer,
                    fallback_penalizer=settings.clv_fallback_penalizer,
                    horizon_days=horizon_days,
                    model=name,
                    min_repeat_buyers=settings.clv_min_repeat_buyers,
                ).fit(summary)
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore", RuntimeWarning)  # log(0) inside lifetimes' formulas
                    predicted = rival.score(s)["expected_purchases"]
                if not np.isfinite(predicted.to_numpy()).all():
                    raise ClvFitError(f"{int((~np.isfinite(predicted.to_numpy())).sum())} predictions not finite")
                purchases["baselines"][name] = {
                    **regression(predicted, act["purchases"]),
                    "params": rival.purchase_params_,
                }
            except (ClvFitError, ValueError) as exc:
                purchases["baselines"][name] = {"error": " ".join(str(exc).split())}
        purchases["weekly"] = cumulative_repeat(
            _expected_by_day(at.clv_params, s, horizon_days), days, customers, cutoff
        )
        spend_rate = (s["frequency"] * s["monetary_value"] / s["T"].where(s["T"] > 0)).fillna(0.0) * horizon_days
        purchases["spend"] = {
            "served_clv": regression(served["clv"], act["spend"]),
            "baseline_historical_spend_rate": regression(spend_rate, act["spend"]),
            "deciles": calibration_deciles(served["clv"], act["spend"]),
        }
    result["purchases"] = purchases or {"error": f"no CLV model in force at {cutoff}: {at.retrain.get('clv')}"}

    # ---- churn and P(alive): "buys again within the horizon"
    profiles = at.profiles.reindex(customers)
    label = act["bought_again"]
    churn: dict[str, Any] = {}
    if at.scores is not None:
        scores = at.scores.reindex(customers)
        churn["p_alive"] = classification(scores["p_alive"], label)
        # the served expected purchases as a ranking of who buys again (a count, not a probability)
        churn["expected_purchases"] = classification(scores["expected_purchases"], label, probability=False)
    status = profiles["churn"].fillna("")
    known = status.isin(list(CHURN_ORDER))
    churn["status"] = {
        **classification(status[known].map(CHURN_ORDER).astype(float), label[known], probability=False),
        "brier": classification(status[known].map(CHURN_AS_PROBABILITY), label[known])["brier"],
        "by_status": {
            name: {"customers": int((status == name).sum()), "bought_again": int(label[status == name].sum())}
            for name in CHURN_ORDER
        },
    }
    recency = (end_ts - profiles["last_purchase"]) / 86_400.0
    churn["baseline_recency"] = classification(-recency.fillna(recency.max()), label, probability=False)
    # BG/NBD gives every one-time buyer P(alive) = 1 by construction (no silence to learn from), so
    # its ranking means most among customers with a repeat purchase day: scored there as well
    repeat = s["frequency"] > 0
    churn["repeat_buyers"] = {
        "customers": int(repeat.sum()),
        "status": classification(status[known & repeat].map(CHURN_ORDER).astype(float), label[known & repeat], False),
        "baseline_recency": classification(-recency[repeat].fillna(0.0), label[repeat], probability=False),
    }
    if at.scores is not None:
        churn["repeat_buyers"]["p_alive"] = classification(scores["p_alive"][repeat], label[repeat])
        churn["repeat_buyers"]["expected_purchases"] = classification(
            scores["expected_purchases"][repeat], label[repeat], probability=False
        )
    reasons = Counter(r for text in profiles["churn_reasons"].fillna("") for r in text.split(",") if r)
    churn["reasons"] = dict(sorted(reasons.items()))
    result["churn"] = churn

    # ---- segments
    segment = profiles["segment"].fillna("")
    frame = pd.DataFrame({"segment": segment, "spend": act["spend"], "again": label})
    total_spend = float(frame["spend"].sum())
    by_segment = frame.groupby("segment").agg(
        customers=("again", "size"), again_rate=("again", "mean"), spend=("spend", "sum")
    )
    result["segments"] = {
        "at_cutoff": {
            str(name): {
                "customers": int(row.customers),
                "repeat_rate": float(row.again_rate),
                "revenue": float(row.spend),
                "revenue_share": float(row.spend / total_spend) if total_spend else None,
            }
            for name, row in by_segment.iterrows()
        }
    }
    if later is not None:
        after = later.profiles["segment"].reindex(at.profiles.index).fillna("")
        pairs = Counter(zip(at.profiles["segment"].fillna(""), after, strict=True))
        result["segments"]["transitions"] = [
            {"from": a, "to": b, "customers": n} for (a, b), n in sorted(pairs.items()) if a
        ]

    # ---- recommendations
    result["recommendations"] = _score_lists(at, lines, cutoff, horizon_days, settings.recs_top_n, ranking)
    result["basket_rules"] = {k: v for k, v in at.rules.items() if k != "run"}  # in force at the cutoff
    result["forecast"] = _score_forecast(at, orders, cutoff, horizon_days)

    # ---- every frozen prediction next to what happened (predictions/<cutoff>.csv)
    table = pd.DataFrame(
        {
            "segment": segment,
            "churn": status,
            "churn_reasons": profiles["churn_reasons"].fillna(""),
            "recency_days": recency.round(4),
            "frequency": s["frequency"],
            "T": s["T"],
        },
        index=customers,
    )
    if at.scores is not None:
        table = table.join(at.scores.reindex(customers)[["p_alive", "expected_purchases", "clv"]])
    default = at.lists.get("*", {})
    table["strategy"] = [at.lists.get(c, default).get("strategy", "") for c in customers]
    table["recommended"] = [" ".join(at.lists.get(c, default).get("items", [])) for c in customers]
    table = table.join(act[["purchases", "spend", "bought_again"]].add_prefix("actual_"))
    table.index.name = "customer"
    return result, table


def _planted(path: Path | None) -> pd.Series | None:
    """The planted type of each (campaign, customer) send, when the campaign log has that column
    (``segstream synth --campaigns``); None for a real log."""
    if path is None:
        return None
    log = pd.read_csv(path, dtype=str)
    if "planted" not in log.columns:
        return None
    return log.drop_duplicates(["campaign_id", "customer_unique_id"]).set_index(["campaign_id", "customer_unique_id"])[
        "planted"
    ]


def _score_uplift(
    cutoff: date,
    horizon_days: int,
    at: Frozen,
    orders: pd.DataFrame,
    campaigns: pd.DataFrame,
    settings: Settings,
    planted: pd.Series | None,
) -> dict[str, Any]:
    """Who the campaigns after the cutoff should have gone to: the sends whose response window lies
    in the horizon, ranked by the uplift served at the cutoff, by P(alive) at the cutoff, Champions
    first, at random and (generated data) by the planted truth; Qini coefficient and AUUC of each
    against the responses the source data records (docs/definitions.md, Campaigns and uplift)."""
    from models.uplift import PurchaseDays, compare_targeting, qini_curve, random_targeting
    from replay.synth import PLANTED

    window = settings.uplift_window_days
    first = pd.Timestamp(cutoff) + pd.Timedelta(days=1)
    send_day = campaigns["event_time"].dt.normalize()
    inside = (send_day >= first) & (send_day + pd.Timedelta(days=window) <= first + pd.Timedelta(days=horizon_days - 1))
    sends = campaigns[inside]
    if not at.uplift:
        return {"error": at.retrain.get("uplift", "no uplift model in force at the cutoff")}
    if sends.empty:
        return {"error": f"no campaign send in the horizon with its {window}-day window inside it"}
    customers = sends["customer_unique_id"]
    sent_on = sends["event_time"].to_numpy("datetime64[D]").astype(np.int64)
    days = PurchaseDays.from_orders(orders["customer"], orders["time"], orders["spend"])
    responded = days.bought_within(customers.to_numpy(object), sent_on, window)
    p_alive = at.scores["p_alive"] if at.scores is not None else pd.Series(dtype=float)
    scores = {
        "uplift": customers.map(at.uplift).fillna(0.0).to_numpy(float),
        "p_alive": customers.map(p_alive).fillna(0.0).to_numpy(float),
        "champions": (customers.map(at.profiles["segment"]) == "Champions").to_numpy(float),
    }
    truth = None
    if planted is not None:
        kinds = pd.Series(list(zip(sends["campaign_id"], customers, strict=True))).map(planted).to_numpy()
        truth = kinds == "persuadable"
        scores["planted uplift"] = (
            pd.Series(kinds).map({k: t - c for k, (t, c) in PLANTED.items()}).fillna(0.0).to_numpy(float)
        )
    treated = (sends["group"] == "treatment").to_numpy()
    compared = compare_targeting(treated, responded, scores, truth=truth)
    points = np.unique(np.linspace(0, len(sends) - 1, 41).astype(int))
    curves = {
        name: [round(float(v) / len(sends), 6) for v in qini_curve(score, treated, responded)[points]]
        for name, score in {**scores, "random": random_targeting(len(sends))}.items()
    }
    return {
        "sends": len(sends),
        "campaigns": sorted(sends["campaign_id"].unique().tolist()),
        "window_days": window,
        "response_treatment": float(responded[treated].mean()) if treated.any() else None,
        "response_control": float(responded[~treated].mean()) if (~treated).any() else None,
        "persuadable": int(truth.sum()) if truth is not None else None,
        "model": at.targeting,
        "by_score": compared,
        "curve_share_targeted": [round(float(k + 1) / len(sends), 4) for k in points],
        "curves": curves,
    }


def _score_forecast(at: Frozen, orders: pd.DataFrame, cutoff: date, horizon_days: int) -> dict[str, Any]:
    """The sales forecast in force at the cutoff against the source's daily purchases and revenue
    over the days both cover, next to the seasonal naive forecast (same weekday last week)."""
    from models.forecast import errors, seasonal_naive

    if not at.forecast:
        return {"error": f"no sales forecast in force at {cutoff}: {at.retrain.get('forecast')}"}
    placed = orders.assign(day=orders["time"].dt.normalize())
    daily = placed.groupby("day").agg(orders=("spend", "size"), revenue=("spend", "sum"))
    start = daily.index.min() if len(daily) else pd.Timestamp(cutoff)
    daily = daily.reindex(pd.date_range(start, pd.Timestamp(cutoff + timedelta(days=horizon_days)), freq="D"))
    daily = daily.fillna(0.0)
    days = min(at.forecast["horizon_days"], horizon_days)
    history = daily[daily.index <= pd.Timestamp(cutoff)]
    ahead = daily[daily.index > pd.Timestamp(cutoff)].iloc[:days]
    out: dict[str, Any] = {"method": at.forecast["method"], "days": days, "level": at.forecast["level"]}
    for column in ("orders", "revenue"):
        rows = at.forecast[column][:days]
        predicted = np.array([r["mean"] for r in rows])
        actual = ahead[column].to_numpy()
        inside = [r["lower"] <= y <= r["upper"] for r, y in zip(rows, actual, strict=True)]
        out[column] = {
            "forecast": errors(actual, predicted, history[column].to_numpy()),
            "baseline_seasonal_naive": errors(
                actual, seasonal_naive(history[column], days), history[column].to_numpy()
            ),
            "interval_coverage": round(float(np.mean(inside)), 6),
            "series": [
                {
                    "day": r["day"],
                    "actual": round(float(y), 2),
                    "mean": r["mean"],
                    "lower": r["lower"],
                    "upper": r["upper"],
                }
                for r, y in zip(rows, actual, strict=True)
            ],
        }
    return out


SERVED = typing.get_args(typing.get_args(Settings.model_fields["recs_strategy_map"].annotation)[1])
MIN_CUSTOMERS = 30  # fewer horizon buyers in a segment: its proposal is marked as resting on too few


def _by_segment(
    at: Frozen,
    products: dict[str, set[str]],
    together: dict[str, list[str]],
    default: list[str],
    k: int,
    ranking: Callable[..., dict],
) -> tuple[dict[str, Any], dict[str, str]]:
    """Every strategy scored on the same customers of each segment (its horizon buyers who had a
    purchase day up to the cutoff, by their segment at the cutoff); a strategy with no list for a
    customer shows them the default list, as serving it would. The proposed map takes, per
    segment, the best hit rate (then NDCG); its note says when the lead is within two standard
    errors of the runner-up's (binomial, the two rates' variances summed) or rests on fewer than
    MIN_CUSTOMERS customers."""
    # a strategy with no list at all (top_rated without reviews) is scored too: as the default list
    candidates = {**{s: {} for s in SERVED}, **at.rivals, "bought_together": together, "popular_month": {}}
    segments = at.profiles["segment"]
    calibration = set(at.profiles.index[at.profiles["last_purchase"].notna()])
    by_segment: dict[str, Any] = {}
    proposed: dict[str, str] = {}
    who_by: dict[str, list[str]] = {}
    for customer in sorted(products):
        if customer in calibration and segments.get(customer):
            who_by.setdefault(segments[customer], []).append(customer)
    for segment, who in sorted(who_by.items()):
        relevant = {c: products[c] for c in who}
        scores = {}
        for strategy, lists in sorted(candidates.items()):
            shown = {c: (lists.get(c, []) + [p for p in default if p not in lists.get(c, [])])[:k] for c in who}
            scores[strategy] = {key: ranking(shown, relevant, k)[key] for key in ("hit_rate", "ndcg", "precision")}
        # only strategies the retrain can serve are proposed (bought_together is scored beside them)
        ranked = [
            s for s in sorted(scores, key=lambda s: (-scores[s]["hit_rate"], -scores[s]["ndcg"], s)) if s in SERVED
        ]
        best, runner_up = ranked[0], ranked[1] if len(ranked) > 1 else ranked[0]
        p1, p2, n = scores[best]["hit_rate"], scores[runner_up]["hit_rate"], len(who)
        error = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)
        if n < MIN_CUSTOMERS:
            note = f"rests on {n} customers (fewer than {MIN_CUSTOMERS})"
        elif p1 - p2 <= 2 * error:
            note = f"not significant: {p1:.3f} against {runner_up} {p2:.3f}, within two standard errors ({error:.3f})"
        else:
            note = f"{p1:.3f} against {runner_up} {p2:.3f}, more than two standard errors ({error:.3f})"
        by_segment[segment] = {"customers": n, "strategies": scores, "best": best, "runner_up": runner_up, "note": note}
        proposed[segment] = best
    return by_segment, proposed


def _bought_together_lists(
    at: Frozen, cutoff: date, k: int, default: list[str]
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Each customer's ``bought_together`` list at the cutoff (models/basket.py): from the rules in
    force (both kinds) and the categories of their last purchase day up to the cutoff, filled up
    with the default list as a served list would be, for the customers a rule applies to; and
    each product's category."""
    from models.basket import bought_together, top_products_by_category

    rules = [r for kind in ("orders", "months") for r in at.rules.get(kind, {}).get("rules", [])]
    until = cutoff.isoformat()
    best = top_products_by_category(at.purchases.values(), until, 2 * k)
    out = {}
    for customer, days in at.purchases.items():
        past = [d for d in days if d <= until]
        if not past:
            continue
        bought = {p for d in past for p in days[d][1]}
        picks = bought_together(days[max(past)][2], rules, best, bought, k)
        if picks:  # a rule applies to the last basket: else the strategy has nothing to say
            out[customer] = (picks + [p for p in default if p not in picks and p not in bought])[:k]
    category_of: dict[str, str] = {}
    for days in at.purchases.values():
        for _, bought_products, bought_categories in days.values():
            category_of.update(zip(bought_products, bought_categories, strict=True))
    return out, category_of


def _expected_by_day(params: dict[str, Any], summary: pd.DataFrame, horizon_days: int) -> dict[int, float]:
    """The served purchase model's predicted purchase days of ``summary``'s customers from the
    cutoff to each week's end (and the horizon's), with the parameters it was fitted with."""
    from models.clv import PURCHASE_MODELS

    fitter = PURCHASE_MODELS[params.get("model", "bgnbd")][0]()
    fitter.params_ = pd.Series(params.get("purchase_model") or params["bgnbd"])
    plain = summary.reset_index(drop=True)
    points = sorted(set(range(7, horizon_days + 1, 7)) | {horizon_days})
    return {
        t: float(
            np.asarray(
                fitter.conditional_expected_number_of_purchases_up_to_time(
                    t, plain["frequency"], plain["recency"], plain["T"]
                )
            ).sum()
        )
        for t in points
    }


def _score_lists(
    at: Frozen, lines: pd.DataFrame, cutoff: date, horizon_days: int, k: int, ranking: Callable[..., dict]
) -> dict[str, Any]:
    """Every horizon buyer's list at the cutoff (its own, else the default ``*``) against the
    products and the categories they bought in the horizon; overall and per strategy."""
    if not at.lists:
        return {"error": f"no recommendations in force at {cutoff}"}
    start, end = (
        pd.Timestamp(_day_end(cutoff)).tz_localize(None),
        pd.Timestamp(_day_end(cutoff + timedelta(days=horizon_days))).tz_localize(None),
    )
    inside = lines[(lines["time"] >= start) & (lines["time"] < end)]
    products = inside.groupby("customer")["product"].agg(set).to_dict()
    categories = inside.groupby("customer")["category"].agg(set).to_dict()
    default = at.lists.get("*", {"items": [], "categories": [], "strategy": "none"})
    chosen = {c: at.lists.get(c, default) for c in sorted(products)}
    strategy_of = {c: entry["strategy"] for c, entry in chosen.items()}
    item_lists = {c: entry["items"] for c, entry in chosen.items()}
    category_lists = {c: list(dict.fromkeys(entry.get("categories", []))) for c, entry in chosen.items()}
    out: dict[str, Any] = {"k": k, "overall": {}, "by_strategy": {}}
    out["overall"] = {
        "product": ranking(item_lists, products, k),
        "category": ranking(category_lists, categories, k),
    }
    popular = dict.fromkeys(products, default["items"])
    popular_categories = {key: list(dict.fromkeys(default.get("categories", []))) for key in products}
    for strategy in sorted(set(strategy_of.values())):
        who = {c for c, s in strategy_of.items() if s == strategy}
        mine, theirs = {c: products[c] for c in who}, {c: categories[c] for c in who}
        out["by_strategy"][strategy] = {
            "product": ranking(item_lists, mine, k),
            "category": ranking(category_lists, theirs, k),
            # the same customers shown the default (popularity) list instead
            "baseline_default_list": {
                "product": ranking(popular, mine, k),
                "category": ranking(popular_categories, theirs, k),
            },
        }
    # rivals scored beside the served lists, each on the horizon buyers it has a list for (for
    # bought_together: a rule applies to their last basket), against the default list for them
    out["rivals"] = {}
    together, category_of = _bought_together_lists(at, cutoff, k, default["items"])
    who = {c: products[c] for c in products if c in together}
    if who:
        together_categories = {c: list(dict.fromkeys(category_of.get(p, "") for p in together[c])) for c in who}
        out["rivals"]["bought_together"] = {
            "product": ranking(together, who, k),
            "category": ranking(together_categories, {c: categories[c] for c in who}, k),
            "baseline_default_list": {
                "product": ranking(popular, who, k),
                "category": ranking(popular_categories, {c: categories[c] for c in who}, k),
            },
        }
    out["by_segment"], out["proposed_map"] = _by_segment(at, products, together, default["items"], k, ranking)
    # the popularity baseline for everyone: the default list shown to every horizon buyer
    out["baseline_default_list"] = {
        "strategy": default["strategy"],
        "product": ranking(popular, products, k),
        "category": ranking(popular_categories, categories, k),
    }
    return out
