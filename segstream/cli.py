"""The ``segstream`` command line: the face of the project.

It may import every stage and nothing imports it. Each subcommand parses its flags, builds
:class:`~segstream.settings.Settings` (flags > ``SEGSTREAM_*`` environment > defaults) and calls
one function of a stage.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from replay.sources import SOURCES
from segstream.settings import Settings, load_settings

log = logging.getLogger("segstream")


class _OnceFilter(logging.Filter):
    """aiokafka logs every reconnection attempt to a broker that went away (about 40 s of ERROR
    lines before its request timeout): let the first through, as one warning, and drop the rest;
    the command then says in one line what happened."""

    def __init__(self) -> None:
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if self.said:
            return False
        self.said = True
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = f"Kafka: {record.getMessage()}; retrying until the request times out (further errors not shown)"
        record.args = ()
        return True


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    if level != "debug":
        once = _OnceFilter()
        for name in ("aiokafka", "aiokafka.producer.sender", "aiokafka.conn", "aiokafka.cluster"):
            logging.getLogger(name).addFilter(once)


def _settings(ctx: click.Context, **flags: Any) -> Settings:
    """Settings from the group's flags plus this command's, then env, then defaults."""
    try:
        settings = load_settings(**{**ctx.obj, **flags})
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise click.UsageError(str(exc)) from None
    _setup_logging(settings.log_level)
    return settings


class _BadValue(click.BadParameter):
    """A bad option value, said in one line (no usage block: the message names the option)."""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def _event_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _BadValue(
            f"{value!r} is not an ISO date or datetime such as 2017-06-01 or 2017-06-01T12:00", param_hint=option
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _where(address: str) -> str:
    """A service address without credentials (never print a password)."""
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    return f"{parts.hostname}:{parts.port}" if parts.hostname else address


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _Errors(click.Group):
    """Turn the project's expected errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as exc:
            # the stages' own errors, looked up only if their module was loaded (an exception of a
            # class never imported cannot have been raised): `config` need not import pandas
            for module, name in (("replay.history", "LoaderError"), ("segstream.services", "ServiceError")):
                known = getattr(sys.modules.get(module), name, None)
                if known is not None and isinstance(exc, known):
                    raise click.ClickException(str(exc)) from None
            message = _service_error(ctx, exc)
            if message is None:
                raise
            raise click.ClickException(message) from None
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to resume from its checkpoint", err=True)
            sys.exit(130)


def _service_error(ctx: click.Context, exc: Exception) -> str | None:
    """One line for a service that is down or went away (Redis, Kafka), or None for anything else."""
    module = type(exc).__module__
    settings = load_settings(**{k: v for k, v in (ctx.obj or {}).items() if v is not None})
    command = ctx.invoked_subcommand or ""
    if module.startswith("redis"):
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        if isinstance(exc, RedisConnectionError | RedisTimeoutError):
            return (
                f"cannot reach Redis at {_where(settings.redis_address)} ({_one_line(exc)}); start the embedded "
                f"services with `segstream services up`, or point SEGSTREAM_REDIS_URL at yours"
            )
    if module.startswith("aiokafka") or isinstance(exc, ConnectionError | TimeoutError):
        where = settings.kafka_bootstrap_servers
        if command == "replay":
            return (
                f"lost the Kafka broker at {where} during the replay ({_one_line(exc)}); every acknowledged "
                f"batch is checkpointed: run the same command again to resume where it stopped"
            )
        return f"cannot reach the Kafka broker at {where} ({_one_line(exc)}); is it running? `segstream services up`"
    return None


@click.group(
    name="segstream", cls=_Errors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    help="Directory for embedded services' data, logs, pids, checkpoints [env SEGSTREAM_RUN_DIR; default .segstream].",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Logging level [env SEGSTREAM_LOG_LEVEL; default info].",
)
@click.option(
    "--kafka-bootstrap",
    help="External Kafka bootstrap servers; unset uses the embedded broker [env SEGSTREAM_KAFKA_BOOTSTRAP].",
)
@click.option("--kafka-port", type=int, help="Port of the embedded broker [env SEGSTREAM_KAFKA_PORT; default 9092].")
@click.option("--redis-url", help="External Redis URL; unset uses the embedded redis-server [env SEGSTREAM_REDIS_URL].")
@click.option(
    "--redis-port", type=int, help="Port of the embedded redis-server [env SEGSTREAM_REDIS_PORT; default 6379]."
)
@click.version_option(package_name="segstream")
@click.pass_context
def cli(ctx: click.Context, **flags: Any) -> None:
    """segstream: live customer profiles (RFM, segments, CLV, recommendations) from event streams.

    Data path: replay (history -> Kafka topics) -> streams (topics -> Redis) -> models (Redis ->
    models -> Redis). With no external URLs configured, everything runs on an embedded Kafka-
    compatible broker (tansu) and a real redis-server, started by `segstream services up`.
    """
    ctx.obj = flags


# --- services ---------------------------------------------------------------------------------


@cli.group()
def services() -> None:
    """Start, stop and inspect the embedded broker and Redis (or check external ones)."""


@services.command("up")
@click.pass_context
def services_up_command(ctx: click.Context) -> None:
    """Start the embedded broker and redis-server if not running; wait until they answer."""
    from segstream.services import services_up

    for status in services_up(_settings(ctx.parent)):
        click.echo(status.line())


@services.command("down")
@click.pass_context
def services_down_command(ctx: click.Context) -> None:
    """Stop the embedded services started from this run directory (Redis flushes its AOF)."""
    from segstream.services import services_down

    for message in services_down(_settings(ctx.parent)):
        click.echo(message)


@services.command("status")
@click.pass_context
def services_status_command(ctx: click.Context) -> None:
    """Say what runs where and whether it answers; exit 1 if something is down."""
    from segstream.services import services_status

    statuses = services_status(_settings(ctx.parent))
    for status in statuses:
        click.echo(status.line())
    if not all(s.healthy for s in statuses):
        sys.exit(1)


# --- data -------------------------------------------------------------------------------------


@cli.command()
@click.option("--orders", type=click.IntRange(min=1), required=True, help="Number of orders (invoices) to generate.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random seed; the same seed writes the same files."
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to write the CSVs into.")
@click.option(
    "--layout",
    type=click.Choice(["olist", "online-retail"]),
    default="olist",
    show_default=True,
    help="The Olist files, or one UCI Online Retail file (replay it with --source online-retail).",
)
@click.option(
    "--repeat-share",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.03,
    show_default=True,
    help="Share of people who buy more than once.",
)
@click.option(
    "--late-share",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.08,
    show_default=True,
    help="Share of deliveries that arrive late.",
)
@click.option(
    "--campaigns",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Marketing campaigns to plant (Olist layout): campaigns.csv, with a known response by customer type.",
)
def synth(
    orders: int, seed: int, out: Path, layout: str, repeat_share: float, late_share: float, campaigns: int
) -> None:
    """Write a synthetic history, deterministic per seed: the Olist files or an Online Retail log.

    --repeat-share, --late-share and --campaigns shape the Olist layout only.
    """
    import time

    from replay.synth import SynthConfig, synthesize, synthesize_online_retail

    started = time.monotonic()
    if campaigns and layout != "olist":
        raise click.UsageError("--campaigns plants campaigns in the Olist layout only")
    config = SynthConfig(orders, seed, repeat_share, late_share, campaigns=campaigns)
    written = synthesize(config, out) if layout == "olist" else synthesize_online_retail(config, out)
    for name, rows in written.items():
        click.echo(f"{rows:>10,}  {out / name}")
    caused = written.get("olist_orders_dataset.csv", orders) - orders  # the planted campaigns' responses
    also = f" and {caused:,} orders the campaigns caused" if caused else ""
    click.echo(f"wrote {orders:,} orders{also} in {time.monotonic() - started:.1f} s")


def _source_options(func):
    func = click.option(
        "--max-rejects",
        "replay_max_reject_share",
        type=click.FloatRange(0, 1),
        help="Refuse the input when a time that does not parse, or an order the orders file lacks, rejects more "
        "than this share of a file's rows [env SEGSTREAM_REPLAY_MAX_REJECT_SHARE; default 0.01].",
    )(func)
    func = click.option(
        "--mapping",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help="Column mapping (TOML) of a --source transactions log, and of a --campaigns log in its [campaigns] "
        "table; see docs/mapping.toml.",
    )(func)
    func = click.option(
        "--campaigns",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help="Campaign log (CSV: customer, campaign, sent time, treatment or control) replayed with the history "
        "[default: campaigns.csv beside Olist files, if any].",
    )(func)
    return click.option(
        "--source",
        type=click.Choice(SOURCES),
        default="olist",
        show_default=True,
        help="What --data holds: Olist files, any transaction log (with --mapping), or UCI Online Retail (I or II).",
    )(func)


@cli.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="Olist CSVs (directory or .zip), or a transaction log (CSV, .gz, .xlsx) with --source.",
)
@_source_options
@click.option(
    "--rejects",
    type=click.Path(path_type=Path),
    help="Write every rejected or partial row (file, key, reason) to this CSV.",
)
@click.pass_context
def inspect(
    ctx: click.Context,
    data: Path,
    source: str,
    mapping: Path | None,
    campaigns: Path | None,
    rejects: Path | None,
    **flags: Any,
) -> None:
    """Load a history without sending it: events by type, and rejected rows by reason."""
    from replay.sources import check_history, load_source

    settings = _settings(ctx, **flags)
    history = load_source(source, data, mapping, campaigns)
    _print_load(history)
    if rejects:
        click.echo(f"wrote {history.report.write_rejects(rejects):,} rows to {rejects}")
    check_history(history, data, settings.replay_max_reject_share)


def _print_load(history) -> None:
    for name, rows in history.report.rows_read.items():
        click.echo(f"read     {rows:>10,}  {name}")
    for kind, count in history.event_counts().items():
        click.echo(f"events   {count:>10,}  {kind}")
    for kind in ("rejected", "partial"):
        for (file, reason), count in sorted(history.report.counts(kind).items()):
            click.echo(f"{kind:<8} {count:>10,}  {file}: {reason}")


@cli.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="Olist CSVs (directory or .zip), or a transaction log (CSV, .gz, .xlsx) with --source.",
)
@_source_options
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    help="Event seconds per wall second (86400: a day per second). Default: as fast as possible.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Instead of --speed: a constant number of events per wall second, whatever their event times (load tests).",
)
@click.option("--from", "since", help="Replay events at or after this event time (ISO date/datetime, UTC).")
@click.option("--until", help="Replay events before this event time (ISO date/datetime, UTC).")
@click.option("--restart", is_flag=True, help="Ignore the checkpoint and replay the window from its start.")
@click.option("--max-events", type=click.IntRange(min=1), help="Stop after this many timeline entries (resumable).")
@click.option("--rejects", type=click.Path(path_type=Path), help="Write rejected and partial rows to this CSV.")
@click.option(
    "--partitions",
    "topic_partitions",
    type=click.IntRange(min=1),
    help="Partitions of topics created by the replay [env SEGSTREAM_TOPIC_PARTITIONS; default 4].",
)
@click.option(
    "--orders-topic", "topic_orders", help="Topic for order events [env SEGSTREAM_TOPIC_ORDERS; default olist.orders]."
)
@click.option(
    "--reviews-topic",
    "topic_reviews",
    help="Topic for review events [env SEGSTREAM_TOPIC_REVIEWS; default olist.reviews].",
)
@click.option(
    "--tick-seconds",
    "replay_tick_seconds",
    type=click.IntRange(min=60),
    help="Event-time interval between clock ticks [env SEGSTREAM_REPLAY_TICK_SECONDS; default 86400].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def replay(
    ctx: click.Context,
    data: Path,
    source: str,
    mapping: Path | None,
    campaigns: Path | None,
    speed: float | None,
    rate: float | None,
    since: str | None,
    until: str | None,
    restart: bool,
    max_events: int | None,
    rejects: Path | None,
    as_json: bool,
    **flags: Any,
) -> None:
    """Replay a history (Olist, or any transaction log) onto Kafka in event-time order; resumes from its checkpoint."""
    from replay.producer import run_replay, summary_dict, summary_lines

    if speed is not None and rate is not None:
        raise click.UsageError("give --speed or --rate, not both")
    start, end = _event_time(since, "--from"), _event_time(until, "--until")
    if start is not None and end is not None and start >= end:
        raise _BadValue(
            f"--from {start.isoformat()} is not before --until {end.isoformat()} (--until is exclusive)",
            param_hint="--from/--until",
        )
    settings = _settings(ctx, **flags)
    history, summary = run_replay(
        data,
        settings,
        since=start,
        until=end,
        speed=speed,
        rate=rate,
        restart=restart,
        max_events=max_events,
        rejects_path=rejects,
        progress=sys.stderr.isatty(),
        source=source,
        mapping=mapping,
        campaigns=campaigns,
    )
    if as_json:
        click.echo(json.dumps({**summary_dict(summary), "rejected_rows": history.report.rejected}, indent=2))
    else:
        click.echo("\n".join(summary_lines(history, summary)))


@cli.command()
@click.option(
    "--web-port", "worker_web_port", type=int, help="Serve Faust's web interface on this port (default: off)."
)
@click.option(
    "--batch", "worker_batch", type=click.IntRange(min=1), help="Most events an agent takes at once [default 5000]."
)
@click.pass_context
def worker(ctx: click.Context, **flags: Any) -> None:
    """Run a stream worker: consume the replay topics and keep profiles current in Redis.

    Start several to share the partitions (each with its own --web-port, if any).
    """
    from streams.worker import run_worker

    run_worker(_settings(ctx, **flags))


@cli.command()
@click.argument("customer_unique_id")
@click.option("--json", "as_json", is_flag=True, help="Print the raw profile as JSON.")
@click.pass_context
def profile(ctx: click.Context, customer_unique_id: str, as_json: bool) -> None:
    """Print one customer's profile (RFM, segment, churn, aggregates) and what the models in force
    say about them (CLV, P(alive), recommendations) from Redis."""
    from streams.readmodel import AmbiguousId, customer_models, models_lines, profile_lines, read_profile

    settings = _settings(ctx)
    try:
        found = read_profile(settings, customer_unique_id)
    except AmbiguousId as exc:
        raise click.ClickException(f"{exc}: give more of the id") from None
    if found is None:
        raise click.ClickException(f"no profile for {customer_unique_id} (is the worker running, the id right?)")
    models = customer_models(settings, found.customer_unique_id)
    if as_json:
        click.echo(json.dumps({**vars(found), "models": vars(models) if models else None}, indent=2))
    else:
        click.echo("\n".join(profile_lines(found, settings.currency) + models_lines(models, settings.currency)))


@cli.command()
@click.option("--latest", type=click.IntRange(min=0), default=10, show_default=True, help="How many recent shifts.")
@click.pass_context
def segments(ctx: click.Context, latest: int) -> None:
    """Print customers per segment and the latest segment shifts."""
    from streams.readmodel import overview, overview_lines

    click.echo("\n".join(overview_lines(overview(_settings(ctx), latest))))


@cli.command()
@click.argument(
    "view",
    type=click.Choice(
        ["cohorts", "weekday", "geography", "segment-revenue", "daily", "rules", "forecast", "targeting"]
    ),
)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON (as /api/analytics/... serves it).")
@click.option("--last", type=click.IntRange(min=1), help="Only the last N rows (cohorts, months, days).")
@click.pass_context
def analytics(ctx: click.Context, view: str, as_json: bool, last: int | None) -> None:
    """Print an analytics read model the workers keep live: acquisition cohorts and their
    retention, purchases by weekday and hour, customers and revenue by state, revenue by segment
    per month, daily sales; or, from the retrain run in force, the market basket rules, the
    sales forecast and the uplift model's targeting list. Definitions: docs/definitions.md."""
    from segstream.clients import redis_client
    from segstream.keys import Keys
    from streams.readmodel import (
        analytics_lines,
        analytics_view,
        forecast_lines,
        rules_lines,
        run_document,
        targeting_lines,
    )

    settings = _settings(ctx)
    if view in ("rules", "forecast", "targeting"):
        found = run_document(redis_client(settings), Keys(settings.redis_prefix), view)
        if found is None:
            what = {"rules": "market basket rules", "forecast": "sales forecast", "targeting": "uplift model"}[view]
            hint = " (it needs a campaign log: replay with --campaigns)" if view == "targeting" else ""
            raise click.ClickException(f"no {what} yet: run `segstream retrain --once` beside the workers{hint}")
        if view == "rules":
            lines = rules_lines(found, last or 15)
        elif view == "forecast":
            lines = forecast_lines(found, settings.currency)
        else:
            lines = targeting_lines(found, last or 15)
        click.echo(json.dumps(found, indent=2) if as_json else "\n".join(lines))
        return
    table = analytics_view(settings, view)
    if not (any(map(any, table["orders"])) if view == "weekday" else table):
        raise click.ClickException(
            f"nothing in the {view} read model under prefix {settings.redis_prefix!r} yet: replay a history with a "
            "worker running (SEGSTREAM_WORKER_ANALYTICS must be on)"
        )
    if last and view != "weekday":
        table = table[-last:]
    if as_json:
        click.echo(json.dumps(table, indent=2))
    else:
        click.echo("\n".join(analytics_lines(view, table, settings.currency)))


def _four(value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not four comma-separated numbers") from None


@cli.command()
@click.option("--recency", help="Four ascending R thresholds in days, e.g. 30,90,180,365.")
@click.option("--monetary", help="Four ascending M thresholds, e.g. 55,90,140,220.")
@click.option(
    "--wait",
    type=float,
    default=120.0,
    show_default=True,
    help="After publishing, wait this many seconds for the workers to finish re-scoring (0: do not wait).",
)
@click.pass_context
def thresholds(ctx: click.Context, recency: str | None, monetary: str | None, wait: float) -> None:
    """Show the RFM thresholds in force, or publish new ones (workers then re-score everyone)."""
    from streams.thresholds import current_thresholds, publish_thresholds, wait_for_rescore

    settings = _settings(ctx)
    if recency is None and monetary is None:
        click.echo(current_thresholds(settings).to_json())
        return
    try:
        scorer = publish_thresholds(settings, _four(recency), _four(monetary))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    click.echo(f"published thresholds version {scorer.version}: {scorer.to_json()}")
    if wait:
        click.echo(f"waiting up to {wait:.0f} s for the workers to re-score every partition ...")
        left = wait_for_rescore(settings, scorer.version, wait)
        if left:
            raise click.ClickException(
                f"partitions {left} not re-scored in {wait:.0f} s (is a worker running?); they will be when one runs"
            )
        click.echo(f"re-scoring complete: all {settings.topic_partitions} partitions carry version {scorer.version}")


@cli.command()
@click.option("--once", is_flag=True, help="Run once at the stream's watermark (or --cutoff) and exit.")
@click.option("--every", help="Run on a cadence, e.g. 30d, 12h, 10m (event time unless --clock wall).")
@click.option(
    "--clock",
    type=click.Choice(["event", "wall"]),
    default="event",
    show_default=True,
    help="What --every counts: event time (runs at fixed event-time boundaries, for backtests) or wall time.",
)
@click.option("--cutoff", help="Event time of a --once run, e.g. 2018-06-01 [default: the stream's watermark].")
@click.option(
    "--models-dir",
    type=click.Path(path_type=Path),
    help="Model registry directory [env SEGSTREAM_MODELS_DIR; default <run-dir>/models].",
)
@click.option(
    "--penalizer",
    "clv_penalizer",
    type=click.FloatRange(min=0),
    help="CLV fits' L2 penalty [env SEGSTREAM_CLV_PENALIZER; default 0: the papers' maximum likelihood].",
)
@click.option(
    "--clv-model",
    type=click.Choice(["bgnbd", "modified_bgnbd", "pareto_nbd"]),
    help="Purchase model of the CLV [env SEGSTREAM_CLV_MODEL; default bgnbd].",
)
@click.option(
    "--strategy-map",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON file: segment -> recommendation strategy (a backtest writes one: strategy-map.json) "
    "[env SEGSTREAM_RECS_STRATEGY_MAP].",
)
@click.option("--top-n", "recs_top_n", type=click.IntRange(min=1), help="Recommendations per customer [default 10].")
@click.pass_context
def retrain(ctx: click.Context, once: bool, every: str | None, clock: str, cutoff: str | None, **flags: Any) -> None:
    """Retrain CLV (BG/NBD + Gamma-Gamma) and ALS recommendations from the profiles in Redis,
    republish RFM thresholds that moved, and switch readers to the new scores atomically.

    Runs beside the stream without pausing it. A fit that fails keeps the model in force.
    """
    import redis

    from models.retrain import RetrainBusy, parse_every, retrain_every, retrain_once

    if once == (every is not None):
        raise click.UsageError("give exactly one of --once or --every")
    strategy_map = flags.pop("strategy_map", None)
    if strategy_map is not None:
        try:
            flags["recs_strategy_map"] = json.loads(strategy_map.read_text())
        except (OSError, ValueError) as exc:
            raise _BadValue(
                f"{strategy_map} is not a JSON file: {_one_line(exc)}", param_hint="--strategy-map"
            ) from None
    settings = _settings(ctx, **flags)

    def show(report) -> None:
        click.echo(report.line())

    try:
        if once:
            moment = _event_time(cutoff, "--cutoff")
            show(retrain_once(settings, cutoff=moment.timestamp() if moment else None))
        else:
            if cutoff is not None:
                raise click.UsageError("--cutoff goes with --once")
            try:
                seconds = parse_every(every)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--every") from None
            click.echo(f"retraining every {every} of {clock} time; Ctrl-C stops")
            try:
                retrain_every(settings, seconds, clock=clock, on_report=show)
            except KeyboardInterrupt:  # a run in progress left nothing readers see, and its lock
                click.echo("stopped", err=True)
    except (RetrainBusy, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except redis.ConnectionError as exc:
        raise click.ClickException(
            f"Redis at {_where(settings.redis_address)} is not reachable ({_one_line(exc)})"
        ) from None


@cli.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="Olist CSVs (directory or .zip), or a transaction log (CSV, .gz, .xlsx) with --source.",
)
@_source_options
@click.option(
    "--cutoffs",
    required=True,
    help="Comma-separated ISO dates, e.g. 2017-09-01,2018-01-01: each the last whole day (UTC) the models see.",
)
@click.option(
    "--horizon",
    default="90d",
    show_default=True,
    help="Days after each cutoff that are scored: 90, 90d or 13w (also the CLV horizon of the run).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Directory for figures.json and report.html."
)
@click.option(
    "--clv-model",
    "clv_model",
    type=click.Choice(["bgnbd", "modified_bgnbd", "pareto_nbd"]),
    help="Purchase model of the served CLV [env SEGSTREAM_CLV_MODEL; default bgnbd]; the others are scored beside it.",
)
@click.option(
    "--partitions",
    "topic_partitions",
    type=click.IntRange(min=1),
    help="Partitions of the run's topics [env SEGSTREAM_TOPIC_PARTITIONS; default 4].",
)
@click.pass_context
def backtest(
    ctx: click.Context,
    data: Path,
    source: str,
    mapping: Path | None,
    campaigns: Path | None,
    cutoffs: str,
    horizon: str,
    out: Path,
    **flags: Any,
) -> None:
    """Replay history through the real pipeline, freeze what it served at each cutoff (segments,
    churn, P(alive), expected purchases, CLV, recommendations) and score it against the horizon
    that followed, next to baselines: writes OUT/figures.json and OUT/report.html.

    Starts the embedded services if needed and a stream worker of its own (own topics, consumer
    group and Redis keys, removed afterwards).
    """
    from segstream.backtest import BacktestError, parse_cutoffs, parse_horizon, run_backtest

    try:
        days = parse_cutoffs(cutoffs)
    except ValueError as exc:
        raise _BadValue(str(exc), param_hint="--cutoffs") from None
    try:
        horizon_days = parse_horizon(horizon)
    except ValueError as exc:
        raise _BadValue(str(exc), param_hint="--horizon") from None
    settings = _settings(ctx, **{k: v for k, v in flags.items() if v is not None})
    try:
        run_backtest(
            settings,
            data,
            cutoffs=days,
            horizon_days=horizon_days,
            out=out,
            source=source,
            mapping=mapping,
            campaigns=campaigns,
            progress=sys.stderr.isatty(),
            echo=click.echo,
        )
    except BacktestError as exc:
        raise click.ClickException(str(exc)) from None


@cli.group()
def models() -> None:
    """The model registry: one entry per retrain run."""


@models.command("list")
@click.pass_context
def models_list(ctx: click.Context) -> None:
    """List retrain runs: run, cutoff, customers, products, what each model did, duration."""
    from models.registry import Registry

    settings = _settings(ctx)
    runs = Registry(settings.models_path).runs()
    if not runs:
        click.echo(f"no runs in {settings.models_path}")
        return
    click.echo(f"{'run':>5}  {'cutoff':<26}{'customers':>10}{'products':>10}{'seconds':>9}")
    for meta in runs:
        click.echo(
            f"{meta['run']:>5}  {meta['cutoff']:<26}{meta['customers']:>10,}{meta['products']:>10,}"
            f"{meta['seconds'].get('total', 0):>9.1f}"
        )
        for model in ("clv", "recommendations", "thresholds"):  # whole: a reason cut short says nothing
            if meta.get(model):
                click.echo(f"{'':>7}{model}: {meta[model]}")


@models.command("show")
@click.argument("run")
@click.pass_context
def models_show(ctx: click.Context, run: str) -> None:
    """Print one run's metadata, fit diagnostics and CLV parameters as JSON (RUN: 7 or run-000007)."""
    import re

    from models.registry import Registry

    settings = _settings(ctx)
    number = re.fullmatch(r"(?:run-)?0*(\d+)", run.strip())
    if number is None:
        raise _BadValue(f"{run!r} is not a run number such as 7 or run-000007", param_hint="RUN")
    try:
        click.echo(json.dumps(Registry(settings.models_path).show(int(number.group(1))), indent=2))
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.pass_context
def config(ctx: click.Context) -> None:
    """Print the settings in effect (flags > SEGSTREAM_* environment > defaults) as JSON."""
    from segstream.clients import shown

    settings = _settings(ctx)
    values = settings.model_dump(mode="json")  # secrets dump as asterisks
    if values.get("redis_url"):
        values["redis_url"] = shown(values["redis_url"])  # a password left inside the URL, too
    click.echo(json.dumps(values, indent=2))


@cli.command()
def schemas() -> None:
    """Print the JSON Schema of every event on segstream's topics (docs/events.schema.json)."""
    from segstream.schemas import event_json_schema

    click.echo(json.dumps(event_json_schema(), indent=2, sort_keys=True))


# --- demo -------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True),
    help="A history to replay instead of the bundled Olist sample (see --source).",
)
@_source_options
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    help="Event seconds per wall second. Default: as fast as possible.",
)
@click.option(
    "--keep-services/--stop-services",
    default=True,
    show_default=True,
    help="Leave the embedded services running afterwards.",
)
@click.option(
    "--web/--no-web",
    default=True,
    show_default=True,
    help="Start the live view (`segstream web`) and print its URL first; on a terminal it keeps running "
    "after the replay until Ctrl-C.",
)
@click.option("--web-port", type=click.IntRange(1, 65535), help="Port of the live view [env SEGSTREAM_WEB_PORT; 8765].")
@click.pass_context
def demo(
    ctx: click.Context,
    data: Path | None,
    source: str,
    mapping: Path | None,
    campaigns: Path | None,
    speed: float | None,
    keep_services: bool,
    web: bool,
    **flags: Any,
) -> None:
    """Start services, the live view and a stream worker, replay the bundled sample, show segments live."""
    from segstream.demo import run_demo

    if data is None and source != "olist":
        raise click.UsageError("--source needs --data (the bundled sample is Olist)")
    settings = _settings(ctx, **flags)
    if not run_demo(
        settings,
        data=data,
        source=source,
        mapping=mapping,
        campaigns=campaigns,
        speed=speed,
        keep_services=keep_services,
        web=web,
        echo=click.echo,
    ):
        sys.exit(1)


# --- web --------------------------------------------------------------------------------------


@cli.command()
@click.option("--host", "web_host", help="Address to bind [env SEGSTREAM_WEB_HOST; default 127.0.0.1].")
@click.option("--port", "web_port", type=click.IntRange(1, 65535), help="Port [env SEGSTREAM_WEB_PORT; 8765].")
@click.option("--openapi", is_flag=True, help="Print the API's OpenAPI document (docs/openapi.json) and exit.")
@click.pass_context
def web(ctx: click.Context, openapi: bool, **flags: Any) -> None:
    """Serve the live operations view and its read-only JSON API (reads Redis; never writes).

    Binds 127.0.0.1 by default. Beyond this machine (--host 0.0.0.0) it needs SEGSTREAM_WEB_TOKEN,
    which every request must then carry (Authorization: Bearer <token>, or open the page once with
    ?token=<token>, which sets a cookie). The API is described at /openapi.json.
    """
    import uvicorn

    from segstream.web import WebRefused, check_bind, create_app

    settings = _settings(ctx, **flags)
    if openapi:
        click.echo(json.dumps(create_app(settings).openapi(), indent=2, sort_keys=True))
        return
    try:
        check_bind(settings)
    except WebRefused as exc:
        raise click.ClickException(str(exc)) from None
    import socket

    with socket.socket() as probe:  # a taken port: one line, not uvicorn's traceback
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.web_host, settings.web_port))
        except OSError as exc:
            raise click.ClickException(
                f"cannot serve on {settings.web_host}:{settings.web_port}: {exc.strerror}; pass --port"
            ) from None
    click.echo(f"segstream live view: http://{settings.web_host}:{settings.web_port}/ (API: /openapi.json)", err=True)
    uvicorn.run(
        create_app(settings),
        host=settings.web_host,
        port=settings.web_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


# The group's options, each taking a value: accepted after the subcommand too
# (`segstream segments --redis-port 6380`), as users of other CLIs expect.
_GLOBAL_OPTIONS = ("--run-dir", "--log-level", "--kafka-bootstrap", "--kafka-port", "--redis-url", "--redis-port")


def _global_options_first(args: list[str]) -> list[str]:
    """Move the group's options found after the subcommand in front of it.

    >>> _global_options_first(["segments", "--latest", "3", "--redis-port", "6380"])
    ['--redis-port', '6380', 'segments', '--latest', '3']
    >>> _global_options_first(["--kafka-port=1", "replay", "--data", "d", "--run-dir=x"])
    ['--kafka-port=1', '--run-dir=x', 'replay', '--data', 'd']
    """
    front, rest, index = [], [], 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            rest += args[index:]
            break
        taken = 1
        if arg.split("=", 1)[0] in _GLOBAL_OPTIONS:
            taken = 1 if "=" in arg else 2
            front += args[index : index + taken]
        else:
            rest.append(arg)
        index += taken
    return front + rest


def main() -> None:
    cli(args=_global_options_first(sys.argv[1:]), prog_name="segstream")


if __name__ == "__main__":
    main()
