"""The retrain job: Redis -> CLV, recommendations, RFM thresholds -> Redis and the registry.

One run (:func:`retrain_once`):

1. reads every profile from Redis (``models.population``), as of an event-time ``cutoff`` (the
   stream's watermark unless given);
2. fits BG/NBD + Gamma-Gamma on the RFM summary built from the per-day purchases
   (``models.clv``) and scores every customer: expected purchases, P(alive), CLV;
3. republishes the R and M thresholds and the BG/NBD parameters when one of them moved
   (``models.thresholds``): workers then re-score everyone once, and compute P(alive) online
   for every later event (a churn reason below ``SEGSTREAM_CHURN_P_ALIVE_BELOW``);
4. fits ALS on the customer x product matrix (``models.als``) and writes each customer's top-N
   products not bought, with the seeds: new customers get the products most bought in the 30
   event-days before the cutoff; big spenders (top monetary decile, or Champions) get the
   best-rated products of their own categories (customer x category matrix), filled up by ALS;
5. fits the uplift model on the campaign sends whose response window closed (``models.uplift``)
   and scores every buyer for the next campaign, with a targeting list;
6. writes scores and lists into hashes of this run, then switches readers to them with one
   ``SET`` of the models document; hashes no longer referenced are removed afterwards.

Readers (``streams.readmodel.customer_models``) read the document and the customer's entries in one
Lua call, so they see the old version or the new one, never a mix. A fit that fails keeps the
model in force: the document keeps pointing at the previous run's scores or lists, the log and
the registry say why, and nothing (no NaN) is written for it. The stream is never paused: the job
only reads profiles and writes keys the workers do not touch.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pandas as pd
import redis

from models.als import AlsRecommender, dense_factors, interaction_matrix
from models.basket import rules_of_counts
from models.clv import ClvFitError, ClvModel, clv_by_segment, rfm_summary
from models.customer2vec import Customer2Vec
from models.forecast import daily_series, forecast
from models.population import Population, read_population
from models.registry import Registry
from models.thresholds import refresh_thresholds
from models.uplift import fit_targeting, parse_sends
from segstream.clients import redis_client
from segstream.keys import Keys
from segstream.partitioned import merged, partitions, sum_hashes
from segstream.scoring import DAY
from segstream.scripts import lua
from segstream.settings import Settings
from streams.analytics import daily_table
from streams.thresholds import current_thresholds

__all__ = ["RetrainBusy", "RetrainReport", "campaign_sends", "current_models", "retrain_once", "watermark"]

log = logging.getLogger(__name__)

WRITE_CHUNK = 5_000
LOCK_SECONDS = 60  # renewed every third of it while the run lives: a killed run blocks others this long at most
MONTH_DAYS = 30


class RetrainBusy(RuntimeError):
    """Another retrain run holds the lock."""


@dataclass
class RetrainReport:
    """What one run did (also its registry ``meta.json``)."""

    run: int
    cutoff: str
    customers: int = 0
    scored_customers: int = 0
    products: int = 0
    categories: int = 0
    clv: str = "not run"  # "fitted", or "kept run N: reason"
    recommendations: str = "not run"
    thresholds: str = "not run"
    clv_diagnostics: dict[str, Any] = field(default_factory=dict)
    strategies: dict[str, int] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)  # market basket rules found, per kind
    rivals: dict[str, int] = field(default_factory=dict)  # with recs_rivals: lists per strategy
    rival_lists: dict[str, dict[str, list[str]]] | None = field(default=None, repr=False)
    forecast: str = "not run"
    uplift: str = "not run"
    models: dict[str, Any] = field(default_factory=dict)  # the models document after the run
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0

    def line(self, cutoff: bool = True) -> str:
        """One line of what the run did (``segstream retrain``; the demo leaves out the cutoff)."""
        when = f" at {self.cutoff}" if cutoff else ""
        return (
            f"run {self.run}{when}: {self.customers:,} customers, {self.products:,} products in "
            f"{self.seconds.get('total', 0.0):.1f} s; CLV {self.clv}; recommendations {self.recommendations}; "
            f"thresholds {self.thresholds}; sales forecast {self.forecast}; uplift {self.uplift}"
        )


def watermark(client: redis.Redis, keys: Keys) -> float | None:
    """The stream's event-time watermark: the lowest of its partitions' (None before any tick)."""
    marks = [part.watermarks for part in partitions(client, keys)]
    pipe = client.pipeline(transaction=False)
    for name in marks:
        pipe.hvals(name)
    values = [v for found in (pipe.execute() if marks else []) for v in found]
    return min(float(v) for v in values) if values else None


def campaign_sends(client: redis.Redis, keys: Keys) -> dict[bytes, bytes]:
    """Every partition's campaign sends (event id -> send), in one hash."""
    parts = partitions(client, keys)
    pipe = client.pipeline(transaction=False)
    for part in parts:
        pipe.hgetall(part.campaign_sends)
    return merged(pipe.execute() if parts else [])


def current_models(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    raw = client.get(keys.models)
    return json.loads(raw) if raw else {}


class _Stopwatch:
    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds

    def __call__(self, name: str) -> _Stopwatch:
        self.name, self.started = name, time.perf_counter()
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.seconds[self.name] = round(time.perf_counter() - self.started, 3)


def retrain_once(settings: Settings, cutoff: float | None = None, client: redis.Redis | None = None) -> RetrainReport:
    """Run the job once at ``cutoff`` (epoch seconds, event time; default: the stream's watermark)."""
    client = client or redis_client(settings)
    keys = Keys(settings.redis_prefix)
    if cutoff is None:
        cutoff = watermark(client, keys)
        if cutoff is None:
            raise ValueError("no event-time watermark in Redis yet: replay something, or pass a cutoff")
    holder = f"{socket.gethostname()}:{os.getpid()}"
    if not client.set(keys.retrain_lock, holder, nx=True, px=int(LOCK_SECONDS * 1000)):
        other, ttl = client.get(keys.retrain_lock), client.ttl(keys.retrain_lock)
        raise RetrainBusy(
            f"another retrain run ({(other or b'?').decode()}) holds {keys.retrain_lock} for {ttl} s more; "
            f"if that process is gone (killed), delete the key and run again"
        )
    run = int(client.incr(keys.model_runs))
    renewal = _renew_while_running(client, keys.retrain_lock, holder)
    try:
        return _run(settings, client, keys, cutoff, run)
    except BaseException:
        in_force = current_models(client, keys)
        if run not in (in_force.get("clv"), in_force.get("recommendations")):  # never switched to
            client.unlink(keys.scores(run), keys.recommendations(run), keys.uplift(run), keys.targeting(run))
        raise
    finally:
        renewal.set()
        client.eval(_RELEASE, 1, keys.retrain_lock, holder)  # only our own lock, if it has not expired


def _renew_while_running(client: redis.Redis, lock: str, holder: str) -> threading.Event:
    """Renew ``lock`` every third of LOCK_SECONDS from a thread until the returned event is set: a
    run longer than the TTL keeps it, a killed run loses it within LOCK_SECONDS."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(LOCK_SECONDS / 3):
            try:
                if not client.eval(_RENEW, 1, lock, holder, int(LOCK_SECONDS * 1000)):
                    log.warning("the retrain lock %s is no longer ours (expired and taken?)", lock)
                    return
            except redis.RedisError as exc:  # Redis away for a moment: the next turn tries again
                log.warning("could not renew the retrain lock %s: %s", lock, exc)

    threading.Thread(target=renew, name="retrain-lock", daemon=True).start()
    return done


_RELEASE = lua("segstream", "release_lock.lua")
_RENEW = lua("segstream", "renew_lock.lua")


def _run(settings: Settings, client: redis.Redis, keys: Keys, cutoff: float, run: int) -> RetrainReport:
    started = time.perf_counter()
    report = RetrainReport(run=run, cutoff=datetime.fromtimestamp(cutoff, tz=UTC).isoformat())
    watch = _Stopwatch(report.seconds)
    before = current_models(client, keys)
    log.info("retrain run %d at event time %s", run, report.cutoff)

    with watch("read"):
        population = read_population(client, keys)
    report.customers, report.scored_customers = len(population), int(population.scored.sum())

    # kept on a failed fit
    kept = (
        "clv",
        "recommendations",
        "bgnbd",
        "clv_horizon_days",
        "clv_by_segment",
        "forecast",
        "uplift",
        "uplift_window_days",
    )
    models = {key: before[key] for key in kept if key in before}
    clv_artifact: dict[str, Any] | None = None
    with watch("clv"):
        try:
            scores, clv_artifact = _clv(settings, population, cutoff, report)
        except ClvFitError as exc:
            report.clv = f"kept run {before.get('clv', 'none')}: {exc}"
            log.warning("CLV not refitted, run %s stays in force: %s", before.get("clv", "none"), exc)
        else:
            _write_hash(client, keys.scores(run), scores)
            models["clv"] = run
            if clv_artifact["bgnbd"] is not None:
                models["bgnbd"] = clv_artifact["bgnbd"]
            else:  # another purchase model: the stream has no online P(alive) for it
                models.pop("bgnbd", None)
            models["clv_horizon_days"] = clv_artifact["horizon_days"]
            models["clv_by_segment"] = clv_artifact.pop("by_segment")  # the live view's box plot
            report.clv = "fitted"

    with watch("thresholds"):  # with the new BG/NBD parameters, if any: workers re-score once
        fitted_bgnbd = models.get("bgnbd") if report.clv == "fitted" else None
        # The profiles hold the state at the watermark, not at a past cutoff: recency from the last
        # purchase, monetary, both as of now. Quantiles of those "as of" an earlier cutoff are
        # neither (recency of later purchases clipped to 0 made R = 5 unreachable), and the stream
        # would score the present with them: such a run publishes no thresholds.
        stream_at = watermark(client, keys)
        if stream_at is not None and cutoff < stream_at - settings.replay_tick_seconds:
            report.thresholds = (
                f"not published: the cutoff is behind the stream's watermark "
                f"{datetime.fromtimestamp(stream_at, tz=UTC).isoformat()}"
            )
            log.info("RFM thresholds %s", report.thresholds)
        else:
            scorer = refresh_thresholds(settings, population, cutoff, settings.thresholds_tolerance, fitted_bgnbd)
            report.thresholds = f"published version {scorer.version}" if scorer else "unchanged"

    als_artifact: dict[str, np.ndarray] | None = None
    sales: dict[str, Any] | None = None
    c2v: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None
    with watch("recommendations"):
        try:
            lists, als_artifact, c2v = _recommendations(settings, population, cutoff, run, report)
        except ValueError as exc:  # an empty matrix
            report.recommendations = f"kept run {before.get('recommendations', 'none')}: {exc}"
            log.warning("ALS not refitted, run %s stays in force: %s", before.get("recommendations", "none"), exc)
        else:
            _write_hash(client, keys.recommendations(run), lists)
            models["recommendations"] = run
            report.recommendations = "fitted"
            if report.rival_lists is not None:
                rivals = report.rival_lists
                report.rival_lists = None  # not in meta.json
                entries = (
                    (f"{s}:{c}", orjson.dumps(items)) for s, found in rivals.items() for c, items in found.items()
                )
                _write_hash(client, keys.rivals(run), entries)
                models["rivals"] = run

    with watch("rules"):
        rules = _basket_rules(settings, client, keys, report)
        client.set(keys.rules(run), json.dumps(rules))
        models["rules"] = run

    with watch("forecast"):
        try:
            sales = _sales_forecast(settings, client, keys, cutoff, report)
        except ValueError as exc:  # too short a history
            report.forecast = f"kept run {before.get('forecast', 'none')}: {exc}"
            log.warning("sales forecast not refitted: %s", exc)
        else:
            client.set(keys.forecast(run), json.dumps(sales))
            models["forecast"] = run
            report.forecast = "fitted"

    targeting: dict[str, Any] | None = None
    with watch("uplift"):
        sends = parse_sends(campaign_sends(client, keys))
        if sends.empty:
            report.uplift = "no campaign sends"
        else:
            try:
                entries, targeting = fit_targeting(
                    sends,
                    population.customers,
                    population.purchases,
                    population.segments,
                    cutoff,
                    settings.uplift_window_days,
                    settings.uplift_min_sends,
                    settings.uplift_targets,
                )
            except ValueError as exc:
                report.uplift = f"kept run {before.get('uplift', 'none')}: {exc}"
                log.warning("uplift not refitted: %s", exc)
            else:
                targeting = {"run": run, "cutoff": report.cutoff, **targeting}
                _write_hash(client, keys.uplift(run), entries)
                client.set(keys.targeting(run), json.dumps(targeting))
                models["uplift"], models["uplift_window_days"] = run, settings.uplift_window_days
                report.uplift = f"fitted on {targeting['trained_on']['sends']:,} sends"

    with watch("publish"):
        models.update(run=run, cutoff=report.cutoff, thresholds_version=current_thresholds(settings).version)
        client.set(keys.models, json.dumps(models))  # the switch: readers see the new runs from here
        _drop_unreferenced(client, keys, before, models)
    report.models = models
    report.seconds["total"] = round(time.perf_counter() - started, 3)
    report.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    meta = {k: v for k, v in asdict(report).items() if k != "rival_lists"}
    Registry(settings.models_path).save(
        run, meta, clv=clv_artifact, als=als_artifact, rules=rules, forecast=sales, customer2vec=c2v, uplift=targeting
    )
    log.info(
        "retrain run %d done in %.1f s: %d customers, CLV %s, recommendations %s, thresholds %s",
        run,
        report.seconds["total"],
        report.customers,
        report.clv,
        report.recommendations,
        report.thresholds,
    )
    return report


# ---- market basket rules -------------------------------------------------------------------------


def _basket_rules(settings: Settings, client: redis.Redis, keys: Keys, report: RetrainReport) -> dict[str, Any]:
    """Both kinds' rules from the counts the stream keeps (as of the stream's watermark)."""
    parts = partitions(client, keys)
    counts = {
        model: sum_hashes(client, [p.analytics(model) for p in parts]) for model in ("basket_orders", "basket_months")
    }
    rules = rules_of_counts(
        counts, settings.basket_min_support, settings.basket_min_confidence, settings.basket_rules_kept
    )
    report.rules = {kind: f"{r['rules_found']} rules from {r['baskets']:,} baskets" for kind, r in rules.items()}
    return {"run": report.run, "min_support": settings.basket_min_support,
            "min_confidence": settings.basket_min_confidence, **rules}  # fmt: skip


def _sales_forecast(
    settings: Settings, client: redis.Redis, keys: Keys, cutoff: float, report: RetrainReport
) -> dict[str, Any]:
    """Daily purchases and revenue over the forecast horizon after the cutoff's day (models/forecast.py)."""
    until = datetime.fromtimestamp(cutoff, tz=UTC).date()
    daily = sum_hashes(client, [part.analytics("daily") for part in partitions(client, keys)])
    series = daily_series(daily_table(daily), until)
    horizon, level = settings.forecast_horizon_days, settings.forecast_level
    out: dict[str, Any] = {"run": report.run, "until": until.isoformat(), "horizon_days": horizon, "level": level}
    out["method"] = "statsmodels ETS(A, Ad, A) with a weekly season"
    for column in ("orders", "revenue"):
        predicted = forecast(series[column], horizon, level)
        out[column] = [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}
                       for row in predicted.to_dict("records")]  # fmt: skip
    return out


# ---- CLV -----------------------------------------------------------------------------------------


def _clv(
    settings: Settings, population: Population, cutoff: float, report: RetrainReport
) -> tuple[Iterator[tuple[str, str]], dict[str, Any]]:
    summary = rfm_summary(zip(population.customers, population.purchases, strict=True), cutoff)
    if summary.empty:
        raise ClvFitError("no customer has a purchase before the cutoff")
    model = ClvModel(
        penalizer=settings.clv_penalizer,
        fallback_penalizer=settings.clv_fallback_penalizer,
        horizon_days=settings.clv_horizon_days,
        monthly_discount=settings.clv_monthly_discount,
        min_repeat_buyers=settings.clv_min_repeat_buyers,
        model=settings.clv_model,
    ).fit(summary)
    scores = model.score(summary)
    finite = np.isfinite(scores.to_numpy()).all(axis=1)
    if not finite.all():
        raise ClvFitError(f"scores not finite for {int((~finite).sum())} of {len(scores)} customers")
    negative = (scores.to_numpy() < 0).any(axis=1)
    if negative.any():
        raise ClvFitError(f"scores negative for {int(negative.sum())} of {len(scores)} customers")
    report.clv_diagnostics = {
        "customers": len(summary),
        "repeat_buyers": model.repeat_buyers_,
        "frequency_monetary_corr": round(model.frequency_monetary_corr_, 4),
        "mean_p_alive": round(float(scores["p_alive"].mean()), 4),
        "mean_clv": round(float(scores["clv"].mean()), 2),
    }
    if abs(model.frequency_monetary_corr_) > 0.3:
        log.warning(
            "frequency and monetary value correlate (%.2f) among repeat buyers; Gamma-Gamma assumes they do not",
            model.frequency_monetary_corr_,
        )
    artifact = {
        "model": model.model,
        "purchase_model": model.purchase_params_,
        "bgnbd": model.bgnbd_params_,
        "gamma_gamma": model.gamma_gamma_params_,
        "penalizer": model.penalizer_,
        "penalized_fallback": model.penalizer_ != model.penalizer,
        "horizon_days": model.horizon_days,
        "monthly_discount": model.monthly_discount,
        "by_segment": clv_by_segment(scores["clv"], pd.Series(population.segments, index=population.customers)),
    }
    rows = scores.round(4).itertuples(name=None)
    return ((customer, f'{{"expected_purchases":{e},"p_alive":{p},"clv":{c}}}') for customer, e, p, c in rows), artifact


# ---- recommendations -----------------------------------------------------------------------------


def _recommendations(
    settings: Settings, population: Population, cutoff: float, run: int, report: RetrainReport
) -> tuple[Iterator[tuple[str, bytes]], dict[str, np.ndarray], tuple[dict[str, np.ndarray], dict[str, Any]] | None]:
    """Each customer's list, by the strategy map (``SEGSTREAM_RECS_STRATEGY_MAP``) or the default
    rules; the ALS arrays and, when a segment is mapped to it, Customer2Vec's."""
    top_n = settings.recs_top_n
    until = datetime.fromtimestamp(cutoff, tz=UTC).date().isoformat()  # purchase days up to the cutoff's
    product_baskets, category_baskets = population.baskets(until)
    matrix, customers, products = interaction_matrix(product_baskets)
    report.products = len(products)
    watch = _Stopwatch(report.seconds)
    with watch("als_fit"):
        als = AlsRecommender(
            factors=settings.als_factors, iterations=settings.als_iterations, threads=settings.als_threads
        ).fit(matrix)  # an empty matrix raises ValueError

    # big spenders: the best-rated products of their own categories, then ALS
    category_matrix, _, categories = interaction_matrix(category_baskets)
    report.categories = len(categories)
    best = top_rated_by_category(population, settings.recs_min_reviews)
    mapped = settings.recs_strategy_map
    rows_of = {strategy: [r for r, s in enumerate(population.segments) if mapped.get(s) == strategy]
               for strategy in set(mapped.values())}  # fmt: skip

    def top_rated(row: int) -> list[str]:
        start, end = category_matrix.indptr[row], category_matrix.indptr[row + 1]
        counts = zip(category_matrix.data[start:end].tolist(), category_matrix.indices[start:end].tolist(), strict=True)
        own = [name for _, name in sorted((-count, categories[c]) for count, c in counts)]  # most bought first
        mine = {p for _, bought, _ in population.purchases[row].values() for p in bought}  # all, even later
        picks = [p for category in own for p in best.get(category, [])[: top_n + len(mine)] if p not in mine]
        return list(dict.fromkeys(picks))[:top_n]

    seeded: dict[str, list[str]] = {}
    spenders = np.flatnonzero(_big_spenders(population)).tolist()
    for row in [r for r in spenders if population.segments[r] not in mapped] + rows_of.get("top_rated", []):
        picks = top_rated(row)
        if picks:
            seeded[population.customers[row]] = picks

    # ALS for every buyer whose list the seed did not fill (rows follow the population), except
    # the segments the strategy map gives another strategy
    elsewhere = {s for s, strategy in mapped.items() if strategy not in ("als", "top_rated")}
    with watch("als_rank"):
        full = np.asarray([len(seeded.get(customer, ())) == top_n for customer in customers], dtype=bool)
        other = np.asarray([segment in elsewhere for segment in population.segments], dtype=bool)
        buyers = np.flatnonzero((np.diff(matrix.indptr) > 0) & ~full & ~other)
        lists: dict[str, tuple[list[str], str]] = {customer: (picks, "top_rated") for customer, picks in seeded.items()}
        # all in one call: rows with the same purchases are ranked once across the whole population
        for row, items in zip(buyers.tolist(), als.recommend(buyers, top_n, labels=products), strict=True):
            customer = customers[row]
            picks = seeded.get(customer)
            if picks is None:
                lists[customer] = (items, "als")
            else:  # a big spender with fewer top-rated products than wanted: ALS fills up
                filler = [p for p in items if p not in picks]
                lists[customer] = ((picks + filler)[:top_n], "top_rated+als" if filler else "top_rated")

    c2v_artifact, c2v_model = None, None
    everyone = [r for r, days in enumerate(population.purchases) if any(day <= until for day in days)]
    if rows_of.get("customer2vec") or settings.recs_rivals:
        with watch("customer2vec"):
            c2v_model, days = _customer2vec(population, until, settings.als_threads)
            wanted = [population.customers[r] for r in rows_of.get("customer2vec", [])]
            for customer, items in _c2v_lists(c2v_model, days, wanted, top_n).items():
                lists[customer] = (items, "customer2vec")
            c2v_artifact = c2v_model.artifact()
    if settings.recs_rivals:  # every strategy's list for every buyer, for a backtest to score per segment
        with watch("rivals"):
            rivals: dict[str, dict[str, list[str]]] = {"top_rated": {}, "als": {}}
            for row in everyone:
                picks = top_rated(row)
                if picks:
                    rivals["top_rated"][population.customers[row]] = picks
            rows = np.asarray([r for r in everyone if matrix.indptr[r + 1] > matrix.indptr[r]], dtype=np.int64)
            for row, items in zip(rows.tolist(), als.recommend(rows, top_n, labels=products), strict=True):
                rivals["als"][customers[row]] = items
            rivals["customer2vec"] = _c2v_lists(c2v_model, days, [population.customers[r] for r in everyone], top_n)
        report.rivals = {strategy: len(found) for strategy, found in rivals.items()}
        report.rival_lists = rivals  # written by the caller, then dropped from the report

    default, default_strategy = popular_this_month(population, cutoff, top_n)
    report.strategies = dict(Counter(strategy for _, strategy in lists.values()))
    report.strategies[default_strategy + " (default)"] = 1

    category_of = population.product_categories()

    def entry(items: list[str], strategy: str) -> bytes:
        categories = [category_of.get(item, "unknown") for item in items]
        return orjson.dumps({"items": items, "categories": categories, "strategy": strategy, "run": run})

    def entries() -> Iterator[tuple[str, bytes]]:
        yield "*", entry(default, default_strategy)
        for customer, (items, strategy) in lists.items():
            yield customer, entry(items, strategy)

    artifact = {
        "item_factors": np.asarray(dense_factors(als.model_.item_factors), dtype=np.float32),
        "products": np.asarray(products, dtype=str),
    }
    return entries(), artifact, c2v_artifact


def _customer2vec(population: Population, until: str, threads: int) -> tuple[Customer2Vec, dict[str, list[list[str]]]]:
    """Customer2Vec (models/customer2vec.py) trained on everyone's purchase days up to ``until``."""
    days = {
        customer: [own[day][1] for day in sorted(own) if day <= until]
        for customer, own in zip(population.customers, population.purchases, strict=True)
    }
    return Customer2Vec(seed=1, threads=threads).fit(days), days


def _c2v_lists(
    model: Customer2Vec, days: dict[str, list[list[str]]], wanted: list[str], n: int
) -> dict[str, list[str]]:
    """Customer2Vec's lists of the ``wanted`` customers with a purchase day (none for the others)."""
    wanted = [c for c in wanted if days[c]]
    bought = [{p for day in days[c] for p in day} for c in wanted]
    return {c: items for c, items in zip(wanted, model.recommend(wanted, n, bought), strict=True) if items}


def _big_spenders(population: Population) -> np.ndarray:
    """Top monetary decile of the scored customers, or Champions."""
    scored = population.scored
    if not scored.any():
        return scored
    decile = np.quantile(population.monetary[scored], 0.9)
    champions = np.asarray([segment == "Champions" for segment in population.segments], dtype=bool)
    return scored & ((population.monetary >= decile) | champions)


def top_rated_by_category(population: Population, min_reviews: int) -> dict[str, list[str]]:
    """Per category, its products by buyer rating, best first, among products with at least
    ``min_reviews`` reviewing buyers. A product's buyer rating is the mean, over its distinct
    buyers who reviewed, of each buyer's mean review score (a profile keeps review sums per
    customer, not per order: for the ~97% of Olist customers with one order they coincide)."""
    total: defaultdict[str, float] = defaultdict(float)
    count: Counter[str] = Counter()
    category_of: dict[str, str] = {}
    for days, mean in zip(population.purchases, population.review_means, strict=True):
        products = {p: c for _, ps, cs in days.values() for p, c in zip(ps, cs, strict=True)}
        category_of.update(products)
        if np.isnan(mean):
            continue
        for product in products:
            total[product] += mean
            count[product] += 1
    ranked: defaultdict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for product, n in count.items():
        if n >= min_reviews:
            ranked[category_of[product]].append((-total[product] / n, -n, product))
    return {category: [p for *_, p in sorted(rows)] for category, rows in ranked.items()}


def popular_this_month(population: Population, cutoff: float, n: int) -> tuple[list[str], str]:
    """The ``n`` products with the most buyers in the 30 event-days up to the cutoff (strategy
    ``popular_month``); up to the cutoff over all history (``popular``) if nobody bought in that
    window. Ties go to the product id, so the list is deterministic."""
    end = datetime.fromtimestamp(cutoff, tz=UTC).date()
    first, last = (end - timedelta(days=MONTH_DAYS - 1)).isoformat(), end.isoformat()
    for since, strategy in ((first, "popular_month"), ("", "popular")):
        buyers: Counter[str] = Counter()
        for days in population.purchases:
            window = [products for day, (_, products, _) in days.items() if since <= day <= last]
            if window:
                buyers.update(set().union(*window))
        if buyers:
            return [p for p, _ in sorted(buyers.items(), key=lambda kv: (-kv[1], kv[0]))[:n]], strategy
    return [], "popular"


# ---- writing -------------------------------------------------------------------------------------


def _write_hash(client: redis.Redis, key: str, entries: Iterable[tuple[str, str | bytes]]) -> None:
    """Write a run's hash in pipelined chunks (readers do not see it until the switch)."""
    client.unlink(key)  # a crashed run with the same number left nothing behind that counts
    chunk: dict[str, str | bytes] = {}
    pipe = client.pipeline(transaction=False)
    for field_name, value in entries:
        chunk[field_name] = value
        if len(chunk) >= WRITE_CHUNK:
            pipe.hset(key, mapping=chunk)
            chunk = {}
            if len(pipe) >= 8:
                pipe.execute()
    if chunk:
        pipe.hset(key, mapping=chunk)
    pipe.execute()


def _drop_unreferenced(client: redis.Redis, keys: Keys, before: dict[str, Any], after: dict[str, Any]) -> None:
    named = (
        ("clv", keys.scores), ("recommendations", keys.recommendations), ("rules", keys.rules),
        ("forecast", keys.forecast), ("rivals", keys.rivals), ("uplift", keys.uplift), ("uplift", keys.targeting),
    )  # fmt: skip
    old = {key(before[name]) for name, key in named if name in before}
    new = {key(after[name]) for name, key in named if name in after}
    stale = [key for key in old - new if key]
    if stale:
        client.unlink(*stale)


def parse_every(text: str) -> float:
    """A cadence such as ``30d``, ``12h``, ``10m`` or ``45s``, in seconds.

    >>> parse_every("30d") / DAY, parse_every("90s")
    (30.0, 90.0)
    """
    units = {"d": DAY, "h": 3_600.0, "m": 60.0, "s": 1.0}
    try:
        value, unit = float(text[:-1]), units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise ValueError(f"{text!r} is not a duration such as 30d, 12h, 10m or 45s") from None
    if value <= 0:
        raise ValueError(f"{text!r}: the cadence must be positive")
    return value * unit


def retrain_every(
    settings: Settings,
    every_s: float,
    clock: str = "event",
    poll_s: float = 1.0,
    runs: int | None = None,
    on_report: Any = None,
) -> int:
    """Run the job on a cadence until interrupted (or ``runs`` runs); returns the runs made.

    ``clock="event"``: a run falls due when the stream's watermark passes the next multiple of
    ``every_s`` since the epoch, and uses that boundary as its cutoff, so a backtest retrains at
    the same event times whatever the replay speed (boundaries the watermark jumped over are
    skipped, and logged). ``clock="wall"``: every ``every_s`` wall seconds, at the watermark.
    """
    client, keys = redis_client(settings), Keys(settings.redis_prefix)
    made, next_wall = 0, time.monotonic()
    last = current_models(client, keys).get("cutoff")
    next_boundary = None
    if last:
        next_boundary = (datetime.fromisoformat(last).timestamp() // every_s + 1) * every_s
    while runs is None or made < runs:
        try:
            if clock == "wall":
                if time.monotonic() < next_wall:
                    time.sleep(min(poll_s, next_wall - time.monotonic()))
                    continue
                next_wall += every_s
                if watermark(client, keys) is None:
                    log.info("no watermark yet: nothing to retrain on")
                    continue
                report = retrain_once(settings, client=client)
            else:
                mark = watermark(client, keys)
                if mark is None:
                    time.sleep(poll_s)
                    continue
                if next_boundary is None:
                    next_boundary = (mark // every_s + 1) * every_s  # the first boundary after the start
                if mark < next_boundary:
                    time.sleep(poll_s)
                    continue
                boundary = mark // every_s * every_s
                if boundary > next_boundary:
                    log.warning(
                        "the watermark passed %d boundaries at once; retraining at the latest",
                        int((boundary - next_boundary) // every_s) + 1,
                    )
                report = retrain_once(settings, cutoff=boundary, client=client)
                next_boundary = boundary + every_s
        except (redis.ConnectionError, redis.TimeoutError, RetrainBusy) as exc:
            # Redis away or another run in progress: the models in force stay; try again (the
            # event clock retries the same boundary, the wall clock waits for its next turn)
            log.warning("retrain skipped: %s", exc)
            time.sleep(poll_s)
            continue
        made += 1
        if on_report is not None:
            on_report(report)
    return made
