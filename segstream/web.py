"""``segstream web``: the operations view and its JSON API (FastAPI, served by uvicorn).

Like the CLI this is a face of the project: it reads what the stages keep and writes nothing.
It is not a worker's Faust web server: it runs beside any number of workers and reads Redis (and,
for consumer lag only, the broker's committed and end offsets).

- One background task (:class:`Snapshots`) reads Redis once per ``SEGSTREAM_WEB_INTERVAL_S``
  (segment and churn counts, counters, watermarks, re-score progress, the models document, the
  changes written since the last read, the latest dead letters) and fans the snapshot out to
  every open page over server-sent events (``/api/stream``): Redis sees the same few commands a
  second whether one page is open or fifty.
- Pages: ``/`` (``segstream/static/web.html`` and ``web.js``; ECharts vendored beside them, no
  CDN). The API is under ``/api``; ``/openapi.json`` describes it (docs/openapi.json is a copy,
  kept equal by a test).
- Safe by default: binds 127.0.0.1; every route is a GET; a token (``SEGSTREAM_WEB_TOKEN``) is
  required to bind beyond this machine, and once set it is required on every request, as
  ``Authorization: Bearer <token>``, the ``segstream_token`` cookie, or once as ``?token=`` on a
  page (which sets the cookie). No setting with a secret is ever part of a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any

import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from segstream.clients import async_redis_client, kafka_options, redis_client, shown
from segstream.keys import Keys
from segstream.partitioned import apartitions, merged, newest, oldest, summed
from segstream.scoring import SEGMENTS, segment_meaning
from segstream.settings import Settings

if TYPE_CHECKING:
    from streams.profile import Profile

__all__ = ["WebRefused", "check_bind", "create_app"]

log = logging.getLogger(__name__)

COOKIE = "segstream_token"
FEED_KEPT = 200  # changes a snapshot keeps for pages that join late
CHURN_STATUSES = ("active", "at_risk", "churned")


class WebRefused(RuntimeError):
    """The view cannot start as asked (the message says why, in one line)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse to serve beyond this machine without a token."""
    if not is_loopback(settings.web_host) and settings.web_token is None:
        raise WebRefused(
            f"--host {settings.web_host} serves beyond this machine: set SEGSTREAM_WEB_TOKEN (a long random "
            "string; clients send it as 'Authorization: Bearer <token>') or bind 127.0.0.1"
        )


def _iso(moment: float | None) -> str | None:
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="seconds") if moment is not None else None


def _ints(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items() if int(v)}


def _floats(raw: dict[bytes, bytes]) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in raw.items()}


# ---- response models: what the API promises (and what docs/openapi.json describes) ------------


class Error(BaseModel):
    error: str


class Segments(BaseModel):
    segments: dict[str, int] = Field(description="Customers per segment now.")
    total: int
    watermark: str | None = Field(description="The stream's event-time watermark (its slowest partition), ISO 8601.")
    meanings: dict[str, str] = Field(description="What each segment means, and the R and FM scores that give it.")


class HistoryPoint(BaseModel):
    day: str
    segments: dict[str, int]


class Transition(BaseModel):
    from_: str = Field(alias="from", description="Segment before ('' for a customer's first segment).")
    to: str
    customers: int

    model_config = {"populate_by_name": True}


class Transitions(BaseModel):
    start: str
    end: str
    transitions: list[Transition]


class Cohort(BaseModel):
    cohort: str = Field(description="Month of the customers' first purchase, YYYY-MM.")
    customers: int
    active: list[int] = Field(description="Per month since the first (0 = that month): customers who bought in it.")
    revenue: list[float] = Field(description="Per month since the first: their purchases' payment total.")


class WeekdayHour(BaseModel):
    timezone: str = Field(description="The clock the hours are of.")
    orders: list[list[int]] = Field(description="Purchases by weekday (rows, Monday first) and hour (columns, 0-23).")
    revenue: list[list[float]]


class StateRow(BaseModel):
    state: str
    customers: int = Field(description="Customers whose latest purchase was there.")
    orders: int = Field(description="Purchases placed there.")
    revenue: float
    segments: dict[str, int] = Field(description="Its customers by segment now.")


class MonthRevenue(BaseModel):
    month: str
    segments: dict[str, float] = Field(description="The month's revenue by the segment its buyers hold now.")


class DaySales(BaseModel):
    day: str
    orders: int
    revenue: float


class Rule(BaseModel):
    antecedent: str
    consequent: str
    baskets: int = Field(description="Baskets holding both.")
    support: float
    confidence: float
    lift: float
    leverage: float


class RuleKind(BaseModel):
    baskets: int
    categories: int
    pairs: int
    rules_found: int
    rules: list[Rule] = Field(description="The strongest rules by lift (SEGSTREAM_BASKET_RULES_KEPT at most).")


class Rules(BaseModel):
    run: int = Field(description="The retrain run that derived them.")
    min_support: float
    min_confidence: float
    orders: RuleKind = Field(description="Categories bought in one order.")
    months: RuleKind = Field(description="Categories bought by one customer in one calendar month.")


class ForecastDay(BaseModel):
    day: str
    mean: float
    lower: float
    upper: float


class Forecast(BaseModel):
    run: int
    until: str = Field(description="The last event-day of the history it was fitted on.")
    horizon_days: int
    level: float = Field(description="Coverage of the prediction intervals.")
    method: str
    orders: list[ForecastDay]
    revenue: list[ForecastDay]


class Target(BaseModel):
    customer_unique_id: str
    uplift: float = Field(description="P(buy | sent) - P(buy | not sent), within the window after the next campaign.")
    p_treated: float
    p_control: float
    segment: str


class Targeting(BaseModel):
    run: int = Field(description="The retrain run that fitted the uplift model.")
    cutoff: str
    method: str
    features: list[str]
    window_days: int = Field(description="Days after a send in which a purchase counts as its response.")
    trained_on: dict[str, Any] = Field(
        description="Campaigns and sends (by group) with a closed window, response rates."
    )
    average_uplift: float = Field(description="Response rate of treatment less control over the sends trained on.")
    validation: dict[str, Any] = Field(description="Qini coefficient and AUUC on a held-out quarter of the customers.")
    scored_customers: int
    positive_uplift: int
    targets: list[Target] = Field(description="The targeting list: highest positive uplift first.")


class Change(BaseModel):
    kind: str = Field(description="segment or churn")
    id: str = Field(description="Position in the changes feed (a Redis stream id).")
    event_id: str
    event_time: str
    customer_unique_id: str
    cause: str
    previous_segment: str | None = None
    segment: str | None = None
    previous_status: str | None = None
    status: str | None = None
    reasons: list[str] | None = None

    model_config = {"extra": "allow"}


class Partition(BaseModel):
    partition: int
    watermark: str | None
    reviews_watermark: str | None
    lag: int | None = Field(description="Orders topic: end offset - committed offset (approximate, see lag_note).")
    reviews_lag: int | None
    rescored_version: int | None


class Health(BaseModel):
    at: str = Field(description="Wall-clock time of the snapshot, ISO 8601.")
    counters: dict[str, int]
    events_per_second: float | None = Field(description="Events consumed per second over the last ~10 s.")
    watermark: str | None
    partitions: list[Partition]
    lag_total: int | None
    lag_note: str
    dead_letters: int
    last_dead_letters: list[dict[str, Any]]
    thresholds_version: int | None
    rescore_done: bool | None = Field(description="Every partition re-scored with the thresholds in force.")
    models: dict[str, Any] | None
    outbox: int = Field(description="Change events written to Redis and not yet published to Kafka.")


class Customer(BaseModel):
    customer_unique_id: str
    profile: dict[str, Any]
    models: dict[str, Any] | None
    scores: dict[str, Any] | None
    recommendations: dict[str, Any] | None
    uplift: dict[str, Any] | None = Field(
        None, description="Uplift for the next campaign: uplift = p_treated - p_control (the run in force)."
    )
    changes: list[dict[str, Any]] = Field(description="This customer's changes still in the feed, newest first.")
    changes_note: str


class CustomerHistory(BaseModel):
    customer_unique_id: str
    partition: int | None = Field(description="The partition of the output topics that holds the customer.")
    scanned: int = Field(description="Records read from that partition of both topics.")
    complete: bool = Field(description="Whether the partitions were read to their end.")
    segment_changes: list[dict[str, Any]] = Field(description="SegmentChanged events, in the customer's order.")
    churn_changes: list[dict[str, Any]] = Field(description="ChurnChanged events, in the customer's order.")


# ---- the shared snapshot -----------------------------------------------------------------------


class Snapshots:
    """Reads Redis once per interval and keeps the latest snapshot and the recent changes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.redis_prefix)
        self.client = async_redis_client(settings, socket_timeout=5)
        self.snapshot: dict[str, Any] = {}
        self.version = 0
        self.feed: deque[dict[str, Any]] = deque(maxlen=FEED_KEPT)
        self.last_ids: dict[int, str] = {}  # per partition, the last change read from its stream
        self.rates: deque[tuple[float, int]] = deque(maxlen=20)
        self.lag: dict[str, Any] = {"orders": {}, "reviews": {}, "checked": None, "error": "not read yet"}
        self.changed = asyncio.Event()
        self.error: str | None = None
        self.meanings = {name: segment_meaning(name) for name in SEGMENTS}

    async def read(self) -> None:
        keys, pipe = self.keys, self.client.pipeline(transaction=False)
        parts = await apartitions(self.client, keys)
        per_partition = ("segments", "churn_statuses", "counters", "watermarks", "review_watermarks", "outbox")
        for part in parts:
            pipe.hgetall(part.segments)
            pipe.hgetall(part.churn_statuses)
            pipe.hgetall(part.counters)
            pipe.hgetall(part.watermarks)
            pipe.hgetall(part.review_watermarks)
            pipe.xlen(part.outbox)
            pipe.xrevrange(part.dead_letters, count=5)
            after = self.last_ids.get(part.number)
            if after is None:
                pipe.xrevrange(part.changes, count=FEED_KEPT)
            else:
                pipe.xrange(part.changes, min=f"({after}", count=1_000)
        pipe.hgetall(keys.rescored)
        pipe.get(keys.thresholds)
        pipe.get(keys.models)
        *replies, rescored, thresholds, models = await pipe.execute()
        stride = len(per_partition) + 2
        read = {name: replies[k::stride] for k, name in enumerate(per_partition)}
        segments, churn, counters = summed(read["segments"]), summed(read["churn_statuses"]), summed(read["counters"])
        marks, review_marks = merged(read["watermarks"]), merged(read["review_watermarks"])
        outbox = sum(read["outbox"])
        dead = newest(replies[len(per_partition) :: stride], 5)
        changes = replies[len(per_partition) + 1 :: stride]
        now = time.time()
        counters = _ints(counters)
        self.rates.append((time.monotonic(), counters.get("consumed", 0)))
        first = next((r for r in self.rates if self.rates[-1][0] - r[0] <= 10.5), self.rates[-1])
        span = self.rates[-1][0] - first[0]
        rate = (self.rates[-1][1] - first[1]) / span if span > 0 else None
        entries = []  # each partition's new changes (the newest ones on a first read), oldest first
        for part, found in zip(parts, changes, strict=True):
            if found:
                fresh = part.number not in self.last_ids
                self.last_ids[part.number] = (found[0] if fresh else found[-1])[0].decode()
                entries.append(list(reversed(found)) if fresh else found)
        new = []
        for entry_id, fields in oldest(entries)[-FEED_KEPT:]:
            for field, kind in ((b"change", "segment"), (b"churn", "churn")):
                if field in fields:
                    new.append({"kind": kind, "id": entry_id.decode(), **json.loads(fields[field])})
        self.feed.extend(new)
        marks, review_marks = _floats(marks), _floats(review_marks)
        thresholds = json.loads(thresholds) if thresholds else None
        version = thresholds.get("version") if thresholds else None
        rescored = {k.decode(): int(v) for k, v in rescored.items()}
        partitions = []
        for p in range(self.settings.topic_partitions):
            lag = self.lag["orders"].get(p)
            partitions.append(
                {
                    "partition": p,
                    "watermark": _iso(marks.get(str(p))),
                    "reviews_watermark": _iso(review_marks.get(str(p))),
                    "lag": lag,
                    "reviews_lag": self.lag["reviews"].get(p),
                    "rescored_version": rescored.get(str(p)),
                }
            )
        lags = [v for side in ("orders", "reviews") for v in self.lag[side].values()]
        all_marks = [marks.get(str(p)) for p in range(self.settings.topic_partitions)]
        self.snapshot = {
            "at": _iso(now),
            "segments": _ints(segments),
            "churn": _ints(churn),
            "counters": counters,
            "events_per_second": round(rate, 1) if rate is not None else None,
            # the stream's watermark is its slowest partition's: none until every partition has one
            "watermark": _iso(min(all_marks)) if all(m is not None for m in all_marks) else None,
            "partitions": partitions,
            "lag_total": sum(lags) if lags and self.lag["error"] is None else None,
            "lag_note": self.lag_note(),
            "dead_letters": counters.get("dead_lettered", 0),
            "last_dead_letters": [
                {
                    k.decode(): (_iso(float(v)) if k == b"at" else v.decode())
                    for k, v in fields.items()
                    if k in (b"topic", b"partition", b"offset", b"reason", b"at")
                }
                for _, fields in dead
            ],
            "thresholds_version": version,
            "rescore_done": (
                all(rescored.get(str(p)) == version for p in range(self.settings.topic_partitions))
                if version  # version 0: the default thresholds, before any retrain: nothing to re-score
                else None
            ),
            "models": json.loads(models) if models else None,
            "outbox": int(outbox),
            "changes": new[-FEED_KEPT:],
            "meanings": self.meanings,
        }
        self.version += 1

    def lag_note(self) -> str:
        if self.lag["error"]:
            return f"consumer lag unknown: {self.lag['error']}"
        return (
            f"committed offsets of group {self.settings.app_id} against end offsets, read {self.lag['checked']}; "
            "committed offsets trail what was processed by up to a commit interval, and the embedded broker "
            "reports end offsets up to one record batch short: read it as a trend, not an exact count (the "
            "end-of-replay marker is what says a replay was processed)"
        )

    async def read_lag(self) -> None:
        """Committed offsets of the workers' group against end offsets, per partition of both topics.

        The committed offsets are fetched by a consumer of that group that never subscribes (an
        OffsetFetch, no JoinGroup: the workers' assignment is not disturbed); aiokafka's admin
        client's ListConsumerGroupOffsets fails to decode the embedded broker's answer."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            **kafka_options(self.settings),
            group_id=self.settings.app_id,
            enable_auto_commit=False,
            request_timeout_ms=5_000,
        )
        try:
            await asyncio.wait_for(consumer.start(), 5)
            lag: dict[str, dict[int, int]] = {"orders": {}, "reviews": {}}
            for side, topic in (("orders", self.settings.topic_orders), ("reviews", self.settings.topic_reviews)):
                parts = [TopicPartition(topic, p) for p in range(self.settings.topic_partitions)]
                ends = await asyncio.wait_for(consumer.end_offsets(parts), 5)
                for tp in parts:
                    done = await asyncio.wait_for(consumer.committed(tp), 5)
                    lag[side][tp.partition] = max(0, ends[tp] - (done or 0))
            self.lag = {**lag, "checked": _iso(time.time()), "error": None}
        except Exception as exc:  # any broker trouble: say it on the page, keep serving
            self.lag = {"orders": {}, "reviews": {}, "checked": None, "error": " ".join(str(exc).split()) or repr(exc)}
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def run(self) -> None:
        interval = self.settings.web_interval_s
        last_lag = 0.0
        while True:
            try:
                if time.monotonic() - last_lag >= max(5.0, interval):
                    last_lag = time.monotonic()
                    await self.read_lag()
                await self.read()
                self.error = None
            except (aioredis.RedisError, OSError) as exc:
                self.error = f"Redis at {self.redis_shown()}: {' '.join(str(exc).split())}"
                log.warning("snapshot failed: %s", self.error)
            self.changed.set()
            self.changed = asyncio.Event()
            await asyncio.sleep(interval)

    def redis_shown(self) -> str:
        """Where Redis is, without a password."""
        return shown(self.settings.redis_address)


# ---- the app -----------------------------------------------------------------------------------


def _static(name: str) -> str:
    return resources.files("segstream").joinpath("static", name).read_text(encoding="utf-8")


def create_app(settings: Settings) -> FastAPI:
    from streams.analytics import (
        TIMEZONE_NOTE,
        cohort_table,
        daily_table,
        geography_table,
        segment_revenue_table,
        weekday_hour_table,
    )

    snapshots = Snapshots(settings)
    sync = redis_client(settings, socket_timeout=5)
    keys = Keys(settings.redis_prefix)
    token = settings.web_token.get_secret_value() if settings.web_token is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(snapshots.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await snapshots.client.aclose()

    app = FastAPI(
        title="segstream operations API",
        version="1",
        description="Read-only: segments, transitions, changes, customers, pipeline health and models, "
        "from the state the stream workers keep in Redis. Times are ISO 8601, UTC; event time, not wall "
        "time, except `at` in /api/health.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Response:
        if token is None:
            return await call_next(request)
        given = request.headers.get("authorization", "")
        offered = given.removeprefix("Bearer ").strip() if given.startswith("Bearer ") else None
        offered = offered or request.cookies.get(COOKIE) or request.query_params.get("token")
        if not offered or not hmac.compare_digest(offered.encode(), token.encode()):
            return JSONResponse({"error": "a token is required: Authorization: Bearer <token>"}, status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(HTTPException)
    async def json_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": problems, "detail": exc.errors()}, status_code=422)

    def snapshot() -> dict[str, Any]:
        if snapshots.error:
            raise HTTPException(503, snapshots.error)
        if not snapshots.snapshot:
            raise HTTPException(503, "the first snapshot is not read yet; try again in a second")
        return snapshots.snapshot

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static("web.html"))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: Annotated[str, Path(pattern=r"^[a-z0-9.-]+\.(js|css)$")]) -> Response:
        try:
            text = _static(name)
        except FileNotFoundError:
            raise HTTPException(404, f"no static file {name}") from None
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return PlainTextResponse(text, media_type=kind, headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/segments", response_model=Segments, responses={503: {"model": Error}})
    async def segments() -> dict[str, Any]:
        """Customers per segment now, with the watermark and each segment's meaning."""
        snap = snapshot()
        return {
            "segments": snap["segments"],
            "total": sum(snap["segments"].values()),
            "watermark": snap["watermark"],
            "meanings": {s: segment_meaning(s) for s in SEGMENTS},
        }

    @app.get("/api/segments/history", response_model=list[HistoryPoint])
    async def history() -> list[dict[str, Any]]:
        """Customers per segment at the end of each event-day that had a change."""
        from streams.readmodel import segment_history

        return await asyncio.to_thread(segment_history, sync, keys)

    @app.get("/api/transitions", response_model=Transitions, responses={422: {"model": Error}})
    async def transitions(
        start: Annotated[date, Query(alias="from", description="First event-day, YYYY-MM-DD.")],
        end: Annotated[date, Query(alias="to", description="Last event-day (included), YYYY-MM-DD.")],
    ) -> dict[str, Any]:
        """Segment transitions of the event-days from..to, summed, largest first."""
        from streams.readmodel import transitions_between

        if end < start:
            raise HTTPException(422, f"to ({end}) is before from ({start})")
        flows = await asyncio.to_thread(transitions_between, sync, keys, start, end)
        return {"start": start.isoformat(), "end": end.isoformat(), "transitions": flows}

    @app.get(
        "/api/changes",
        response_model=list[Change],
        response_model_exclude_unset=True,
        responses={422: {"model": Error}},
    )
    async def changes(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        """The latest segment and churn changes (newest first), with cause and event time."""
        from streams.readmodel import recent_changes

        return await asyncio.to_thread(recent_changes, sync, keys, limit)

    def analytics(name: str) -> dict[bytes, int]:
        from streams.readmodel import analytics_counts

        return analytics_counts(sync, keys, name)

    @app.get("/api/analytics/cohorts", response_model=list[Cohort])
    async def cohorts() -> list[dict[str, Any]]:
        """Acquisition cohorts: customers by month of first purchase, and per month since, the
        active customers and their revenue (a late, older first purchase moves a customer's cohort)."""
        return cohort_table(await asyncio.to_thread(analytics, "cohorts"))

    @app.get("/api/analytics/weekday-hour", response_model=WeekdayHour)
    async def weekday_hour() -> dict[str, Any]:
        """Purchases and revenue by weekday and hour of the event time."""
        return {"timezone": TIMEZONE_NOTE, **weekday_hour_table(await asyncio.to_thread(analytics, "weekday_hour"))}

    @app.get("/api/analytics/geography", response_model=list[StateRow])
    async def geography() -> list[dict[str, Any]]:
        """Customers, purchases, revenue and segment mix by state (Olist) or country; by revenue."""
        return geography_table(await asyncio.to_thread(analytics, "geography"))

    @app.get("/api/analytics/segment-revenue", response_model=list[MonthRevenue])
    async def segment_revenue() -> list[dict[str, Any]]:
        """Revenue per event-month by the segment its buyers hold now."""
        return segment_revenue_table(await asyncio.to_thread(analytics, "segment_revenue"))

    @app.get("/api/analytics/daily", response_model=list[DaySales])
    async def daily() -> list[dict[str, Any]]:
        """Purchases and revenue per event-day with a purchase."""
        return daily_table(await asyncio.to_thread(analytics, "daily"))

    async def run_doc(name: str, what: str) -> dict[str, Any]:
        """The document `name` of the retrain run in force; 404 naming `what` before any retrain."""
        from streams.readmodel import run_document

        found = await asyncio.to_thread(run_document, sync, keys, name)
        if found is None:
            raise HTTPException(404, f"no {what} yet: run `segstream retrain --once`")
        return found

    @app.get("/api/analytics/rules", response_model=Rules, responses={404: {"model": Error}})
    async def rules() -> dict[str, Any]:
        """Market basket rules between categories, of the retrain run in force."""
        return await run_doc("rules", "market basket rules")

    @app.get("/api/analytics/forecast", response_model=Forecast, responses={404: {"model": Error}})
    async def sales_forecast() -> dict[str, Any]:
        """The sales forecast of the retrain run in force: daily purchases and revenue after its cutoff."""
        return await run_doc("forecast", "sales forecast")

    @app.get("/api/targeting", response_model=Targeting, responses={404: {"model": Error}})
    async def targeting() -> dict[str, Any]:
        """The uplift model in force and its targeting list: who the next campaign should go to."""
        return await run_doc("targeting", "uplift model")

    @app.get("/api/health", response_model=Health, responses={503: {"model": Error}})
    async def health() -> dict[str, Any]:
        """Pipeline health: events/s, lag, watermarks, dead letters, re-score progress, models."""
        snap = snapshot()
        return {k: snap[k] for k in Health.model_fields}

    @app.get("/api/models", responses={404: {"model": Error}})
    async def models() -> dict[str, Any]:
        """The models document in force (which retrain runs readers see), as the retrain job wrote it."""
        doc = await asyncio.to_thread(sync.get, keys.models)
        if doc is None:
            raise HTTPException(404, "no model yet: run `segstream retrain --once`")
        return json.loads(doc)

    async def lookup(customer: str) -> Profile:
        """The profile of a full id or of the one id it starts; 404 for none, 409 for several."""
        from streams.readmodel import AmbiguousId, read_profile

        try:
            found = await asyncio.to_thread(read_profile, settings, customer)
        except AmbiguousId as exc:
            raise HTTPException(409, str(exc)) from None
        if found is None:
            raise HTTPException(404, f"no customer {customer!r}")
        return found

    @app.get(
        "/api/customers/{customer}",
        response_model=Customer,
        responses={404: {"model": Error}, 409: {"model": Error}},
    )
    async def customer(customer: Annotated[str, Path(min_length=4, max_length=64)]) -> dict[str, Any]:
        """One customer: a full customer_unique_id, or the start of exactly one."""
        from streams.readmodel import customer_models

        found = await lookup(customer)
        cid = found.customer_unique_id
        modelled = await asyncio.to_thread(customer_models, settings, cid, sync)
        profile = _profile_dict(found)
        own = [c for c in reversed(snapshots.feed) if c.get("customer_unique_id") == cid]
        return {
            "customer_unique_id": cid,
            "profile": profile,
            "models": modelled.models if modelled else None,
            "scores": modelled.scores if modelled else None,
            "recommendations": modelled.recommendations if modelled else None,
            "uplift": modelled.uplift if modelled else None,
            "changes": own,
            "changes_note": f"from the live feed (the last {FEED_KEPT} changes this view has seen); the profile "
            f"counts {found.segment_changes} segment and {found.churn_changes} churn changes in all",
        }

    @app.get(
        "/api/customers/{customer}/history",
        response_model=CustomerHistory,
        responses={404: {"model": Error}, 409: {"model": Error}, 503: {"model": Error}},
    )
    async def customer_history(customer: Annotated[str, Path(min_length=4, max_length=64)]) -> dict[str, Any]:
        """Every segment and churn change of one customer, oldest first, read from the output topics
        (the record of every change; the live feed keeps only the latest). Takes a second or more:
        it reads the customer's partition of each topic from its start."""
        from streams.readmodel import customer_changes

        found = await lookup(customer)
        try:
            history = await customer_changes(settings, found.customer_unique_id)
        except Exception as exc:  # the broker away: say so, the rest of the API keeps serving
            reason = " ".join(str(exc).split()) or repr(exc)
            raise HTTPException(503, f"cannot read the change topics: {reason}") from None
        return {"customer_unique_id": found.customer_unique_id, **history}

    @app.get("/api/stream", include_in_schema=False)
    async def stream(request: Request) -> StreamingResponse:
        """Server-sent events: a snapshot per interval (event ``snapshot``)."""

        async def events() -> AsyncIterator[bytes]:
            seen = -1
            backlog = True
            while not await request.is_disconnected():
                if snapshots.version != seen and (snapshots.snapshot or snapshots.error):
                    seen = snapshots.version
                    body = dict(snapshots.snapshot) if snapshots.snapshot else {}
                    if backlog:  # a page that joins gets the feed so far
                        body["changes"], backlog = list(snapshots.feed), False
                    body["error"] = snapshots.error
                    yield f"event: snapshot\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(snapshots.changed.wait(), 15)
                yield b": keep-alive\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    return app


def _profile_dict(profile: Any) -> dict[str, Any]:
    """The profile's fields a person reads, times as ISO 8601; the per-day purchases summarised."""
    out: dict[str, Any] = {}
    for item in dataclasses.fields(profile):
        value = getattr(profile, item.name)
        if item.name in {"purchases", "held", "version"}:
            continue
        if item.name in {"first_purchase", "last_purchase", "evaluated_at", "last_event_time"}:
            value = _iso(value)
        elif item.name in {"last_review", "last_delivery"} and value is not None:
            value = {"event_time": _iso(value[0]), "event_id": value[1]}
        out[item.name] = value
    products = profile.products
    out["purchase_days"] = len(profile.purchases)
    out["items"], out["distinct_products"] = len(products), len(set(products))
    out["review_mean"] = profile.review_mean
    out["held_reviews"] = len(profile.held)
    return out
