"""The one settings module: every stage reads its configuration from here.

Precedence is flags > environment variables (``SEGSTREAM_*``) > defaults. The command line
passes only the flags a user actually gave (see :func:`load_settings`), so an unset flag never
hides an environment variable.

>>> s = Settings(kafka_port=19092, redis_port=16379)
>>> s.kafka_bootstrap_servers, s.embedded_kafka
('127.0.0.1:19092', True)
>>> s.redis_address
'redis://127.0.0.1:16379/0'
>>> Settings(kafka_bootstrap="broker:9092").embedded_kafka
False
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "load_settings", "settings_env"]


class Settings(BaseSettings):
    """Configuration shared by replay, streams and models."""

    model_config = SettingsConfigDict(env_prefix="SEGSTREAM_", extra="ignore")

    # --- where things live -------------------------------------------------------------------
    run_dir: Path = Field(
        Path(".segstream"),
        description="Directory for embedded services' data, logs, pids and replay checkpoints.",
    )
    log_level: str = Field("info", description="Logging level: debug, info, warning, error.")

    # --- Kafka ---------------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        None,
        description="External Kafka bootstrap servers (host:port,...). Unset: use the embedded broker.",
    )
    kafka_host: str = Field("127.0.0.1", description="Address the embedded broker listens on.")
    kafka_port: int = Field(9092, description="Port of the embedded broker.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism (with SASL_PLAINTEXT or SASL_SSL)."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password. Never printed.")
    kafka_ssl_cafile: Path | None = Field(None, description="CA certificate (PEM) for the brokers (SSL, SASL_SSL).")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (PEM), for brokers that require one.")
    kafka_ssl_keyfile: Path | None = Field(None, description="Private key (PEM) of the client certificate.")
    topic_orders: str = Field("olist.orders", description="Topic for order events.")
    topic_reviews: str = Field("olist.reviews", description="Topic for review events.")
    topic_campaigns: str = Field(
        "marketing.campaigns", description="Topic for campaign sends (treatment and control), when a history has any."
    )
    topic_partitions: int = Field(4, ge=1, description="Partitions of topics the replay creates.")
    topic_replication: int = Field(1, ge=1, description="Replication factor of created topics.")

    # --- Redis ---------------------------------------------------------------------------------
    redis_url: str | None = Field(
        None, description="External Redis URL (redis://host:port/db). Unset: use the embedded redis-server."
    )
    redis_cluster: bool = Field(
        False,
        description="The Redis at redis_url is a Redis Cluster: give any node's address, the client learns the "
        "others and sends each key to the node serving its slot.",
    )
    redis_username: str | None = Field(None, description="Redis ACL user (Redis 6+); unset: the default user.")
    redis_password: SecretStr | None = Field(
        None, description="Redis password, kept out of the URL so that it is never printed."
    )
    redis_ca_file: Path | None = Field(None, description="CA certificate (PEM) to verify Redis over TLS (rediss://).")
    redis_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds every Redis client waits for a reply (and to connect) before it calls Redis away and "
        "retries: a hung Redis delays, never blocks, the worker.",
    )
    redis_host: str = Field("127.0.0.1", description="Address the embedded redis-server listens on.")
    redis_port: int = Field(6379, description="Port of the embedded redis-server.")

    # --- replay --------------------------------------------------------------------------------
    replay_tick_seconds: int = Field(
        86_400,
        ge=60,
        description="Event-time interval between clock ticks written to every partition (seconds).",
    )
    replay_batch: int = Field(
        5_000, ge=1, description="Timeline entries (events, ticks) sent between acknowledged replay checkpoints."
    )

    # --- streams ------------------------------------------------------------------------------
    app_id: str = Field("segstream", description="Faust application id: the consumer group of the workers.")
    redis_prefix: str = Field("segstream", description="Prefix of every Redis key segstream writes.")
    topic_segment_changes: str = Field("profiles.segment-changes", description="Topic of segment-change events.")
    topic_churn_signals: str = Field("profiles.churn-signals", description="Topic of churn-status transitions.")
    topic_dead_letter: str = Field("segstream.dead-letter", description="Topic of messages the workers cannot use.")
    worker_web_port: int | None = Field(
        None, description="Port of a worker's Faust web server; unset disables it (two workers on one host)."
    )
    worker_batch: int = Field(
        5000, ge=1, description="Most events an agent takes at once; it takes what is queued, without waiting."
    )
    worker_batch_drain: bool = Field(
        True, description="Hand fetched records to the agents a batch at a time (false: Faust's per-record loop)."
    )
    worker_fetch_wait_ms: int = Field(
        25, ge=0, description="Longest a worker's fetch waits for records (ms); Faust's own is 1500."
    )
    worker_buffer: int = Field(
        20_000, ge=1, description="Records a worker buffers per stream before fetching pauses (Faust stream buffer)."
    )
    replay_max_reject_share: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Largest share of a file's rows a load may reject for a time that does not parse or an order "
        "the orders file lacks, before it refuses the input.",
    )
    worker_rescore_chunk: int = Field(
        500, ge=1, description="Customers a re-score reads and writes per Redis round trip."
    )
    worker_web_host: str = Field(
        "127.0.0.1", description="Address a worker's Faust web server binds (this machine only unless changed)."
    )
    web_host: str = Field(
        "127.0.0.1", description="Address `segstream web` binds; beyond this machine it needs SEGSTREAM_WEB_TOKEN."
    )
    web_port: int = Field(8765, ge=1, le=65535, description="Port of `segstream web`.")
    web_token: SecretStr | None = Field(
        None,
        description="Token `segstream web` requires on every request once set (bearer header or cookie); "
        "required to bind beyond 127.0.0.1. Never printed.",
    )
    web_interval_s: float = Field(
        1.0, gt=0, description="How often `segstream web` reads Redis and pushes a snapshot to open pages (s)."
    )
    worker_reviews_wait_s: float = Field(
        60.0,
        gt=0,
        description="Longest the orders clock of a partition waits for the reviews topic's watermark to catch up (s); "
        "then it goes on, and reviews behind it take effect when they arrive.",
    )
    worker_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="Event loop of a worker: uvloop (faster) or the standard asyncio loop."
    )
    worker_outbox_max: int = Field(
        20_000,
        ge=1,
        description="Outbox entries (one per written batch and partition) at which a worker stops taking input "
        "until the publisher drains it: Kafka away for long must not grow Redis without bound.",
    )
    worker_cache: int = Field(
        200_000, ge=0, description="Profiles a worker keeps in memory between writes (0: read every one from Redis)."
    )
    worker_analytics: bool = Field(
        True,
        description="Keep the analytics read models (cohorts, weekday x hour, geography, segment revenue, daily "
        "sales, baskets) with each profile write.",
    )
    broker_session_timeout: float = Field(
        6.0, gt=0, description="Kafka consumer session timeout (s): how long a dead worker's partitions wait."
    )
    broker_rebalance_timeout: float = Field(5.0, gt=0, description="Kafka consumer-group rebalance timeout (s).")
    broker_heartbeat_interval: float = Field(1.0, gt=0, description="Kafka consumer heartbeat interval (s).")
    broker_request_timeout: float | None = Field(
        None,
        gt=0,
        description="Kafka client request timeout (s), at least the session timeout [default: the larger of the "
        "session and rebalance timeouts, plus 10 s]. A group join waits for the rebalance timeout: this is how "
        "long a worker waits for a coordinator that never answers before it joins again (Faust's own: 90 s).",
    )
    churn_default_gap_days: float = Field(
        180.0, gt=0, description="Expected days between purchases for customers who bought once."
    )
    churn_p_alive_below: float = Field(
        0.3, gt=0, lt=1, description="A BG/NBD P(alive) below this is a churn reason (once a retrain fitted BG/NBD)."
    )

    # --- models (the retrain job) ----------------------------------------------------------
    models_dir: Path | None = Field(
        None, description="Model registry: one directory per retrain run [default <run_dir>/models]."
    )
    clv_penalizer: float = Field(
        0.0, ge=0, description="L2 penalty of the BG/NBD and Gamma-Gamma fits (0: the papers' maximum likelihood)."
    )
    clv_fallback_penalizer: float = Field(
        0.001, ge=0, description="L2 penalty of a second fit when the first does not converge (0: none)."
    )
    currency: str = Field("BRL", description="Currency of the amounts in the data, for display (Olist: BRL).")
    clv_model: Literal["bgnbd", "modified_bgnbd", "pareto_nbd"] = Field(
        "bgnbd",
        description="Purchase-count model of the CLV: BG/NBD (the default; its P(alive) is also a churn reason "
        "online), modified BG/NBD or Pareto/NBD (lifetimes' fitters; no online P(alive)).",
    )
    clv_horizon_days: float = Field(90.0, gt=0, description="Horizon of expected purchases and CLV (days).")
    clv_monthly_discount: float = Field(0.01, ge=0, description="Monthly discount rate of the CLV.")
    clv_min_repeat_buyers: int = Field(20, ge=1, description="Fewest repeat buyers to fit the CLV models at all.")
    recs_top_n: int = Field(10, ge=1, description="Recommendations kept per customer.")
    recs_strategy_map: dict[str, Literal["als", "customer2vec", "top_rated", "popular_month"]] = Field(
        default_factory=dict,
        description='Segment -> recommendation strategy (JSON, e.g. {"Champions": "customer2vec"}); segments not '
        "named keep the default: top-rated for big spenders, ALS for other buyers.",
    )
    recs_rivals: bool = Field(
        False,
        description="Also write every strategy's list for every buyer (als, customer2vec, top_rated), for a "
        "backtest to score them per segment; off in service (one more list per buyer and strategy).",
    )
    recs_min_reviews: int = Field(
        3, ge=1, description="Fewest reviewing buyers for a product to count as top-rated (big spenders' seed)."
    )
    basket_min_support: float = Field(
        0.0005, ge=0, le=1, description="Fewest baskets, as a share of all, for a market basket rule."
    )
    basket_min_confidence: float = Field(
        0.05, ge=0, le=1, description="Lowest confidence (share of the antecedent's baskets) of a market basket rule."
    )
    basket_rules_kept: int = Field(200, ge=1, description="Market basket rules kept per kind, by lift.")
    forecast_horizon_days: int = Field(30, ge=1, le=365, description="Days of the sales forecast (retrain).")
    forecast_level: float = Field(0.9, gt=0, lt=1, description="Coverage of the sales forecast's prediction intervals.")
    uplift_window_days: int = Field(
        30, ge=1, le=365, description="Days after a campaign send in which a purchase counts as its response."
    )
    uplift_min_sends: int = Field(
        200,
        ge=1,
        description="Fewest sends per group (treatment, control) with a closed window to fit the uplift model.",
    )
    uplift_targets: int = Field(
        1000, ge=1, description="Length of the targeting list: customers with the highest positive uplift."
    )
    als_factors: int = Field(32, ge=1, description="ALS latent factors.")
    als_iterations: int = Field(10, ge=1, description="ALS sweeps.")
    als_threads: int = Field(
        0,
        ge=0,
        description="Threads of the ALS fit and ranking and of the Customer2Vec ranking (0: every core; 1 leaves "
        "cores to a worker beside it).",
    )
    thresholds_tolerance: float = Field(
        0.05, ge=0, description="Republish R/M thresholds only when one moves by more than this share."
    )

    @model_validator(mode="after")
    def _request_timeout_covers_the_session(self) -> Settings:
        if self.broker_request_timeout is not None and self.broker_request_timeout < self.broker_session_timeout:
            raise ValueError(
                f"broker_request_timeout ({self.broker_request_timeout} s) must be at least broker_session_timeout "
                f"({self.broker_session_timeout} s)"
            )
        return self

    @model_validator(mode="after")
    def _cluster_is_external(self) -> Settings:
        if self.redis_cluster and not self.redis_url:
            raise ValueError("redis_cluster needs redis_url: the embedded redis-server is a single Redis")
        return self

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = {"warn": "warning", "crit": "critical"}.get(value.lower(), value.lower())
        if level not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError(f"log_level must be debug, info, warning or error, not {value!r}")
        return level

    @property
    def embedded_kafka(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def kafka_bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"{self.kafka_host}:{self.kafka_port}"

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.run_dir / "models"

    @property
    def request_timeout(self) -> float:
        """``broker_request_timeout``, or the larger of the session and rebalance timeouts plus 10 s."""
        if self.broker_request_timeout is not None:
            return self.broker_request_timeout
        return max(self.broker_session_timeout, self.broker_rebalance_timeout) + 10.0

    @property
    def redis_address(self) -> str:
        return self.redis_url or f"redis://{self.redis_host}:{self.redis_port}/0"


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``SEGSTREAM_*`` environment that reproduces ``settings`` in another process.

    >>> settings_env(Settings(kafka_port=19092))["SEGSTREAM_KAFKA_PORT"]
    '19092'
    >>> settings_env(Settings(recs_strategy_map={"Champions": "als"}))["SEGSTREAM_RECS_STRATEGY_MAP"]
    '{"Champions": "als"}'
    """
    env = {
        # a dict or list as JSON, the form the settings read back (str() of a dict is not)
        f"SEGSTREAM_{name.upper()}": json.dumps(value) if isinstance(value, dict | list) else str(value)
        for name, value in settings.model_dump(mode="json").items()
        if value is not None
    }
    # a secret dumps as asterisks: pass its value (the environment of a child process, never printed)
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            env[f"SEGSTREAM_{name.upper()}"] = value.get_secret_value()
    return env


def load_settings(**flags: Any) -> Settings:
    """Settings from the flags that were given (``None`` means "not given"), then env, then defaults.

    >>> load_settings(kafka_port=None).kafka_port == Settings().kafka_port
    True
    >>> load_settings(topic_partitions=8).topic_partitions
    8
    """
    return Settings(**{name: value for name, value in flags.items() if value is not None})
