"""The Faust topology: the app, its topics and agents, in one place.

    olist.orders  ──▶ order_events  ──┐                ┌──▶ profiles.segment-changes
                                      ├─▶ Redis ─ outbox ┤
    olist.reviews ──▶ review_events ──┘   (profiles,      └──▶ profiles.churn-signals
                          │               due index,
                          └──▶ segstream.dead-letter     read model,
                                                          cluster model every 5 s)
    marketing.campaigns ──▶ campaign_events ──▶ Redis (campaign sends, for the retrain's uplift model)

The input topics are keyed by customer and co-partitioned, so a worker that owns partition p of
one owns partition p of the other. Agents are thin: they hand batches to
:class:`streams.agents.StreamHandler`. State of record lives in Redis, not in Faust tables (the
embedded broker's end offsets are unreliable, and Faust table recovery depends on them).
"""

from __future__ import annotations

import asyncio
import gc
import logging

import faust

from segstream.clients import faust_credentials
from segstream.settings import Settings
from streams.agents import REDIS_AWAY, Rebalancing, StreamHandler
from streams.consumer import RawSchema, WorkerApp, take_available

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> faust.App:
    brokers = ";".join(f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(","))
    # Faust's per-record delivery loop costs as much as the rest of Faust, and its fetch wait is
    # latency on the embedded broker: see streams/consumer.py.
    app = WorkerApp(
        settings.app_id,
        batch_drain=settings.worker_batch_drain,
        fetch_wait_ms=settings.worker_fetch_wait_ms,
        broker=brokers,
        store="memory://",
        datadir=str(settings.run_dir / "faust"),  # Faust's default is <app id>-data in the working directory
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,  # the output topics Faust creates
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.broker_session_timeout,
        broker_rebalance_timeout=settings.broker_rebalance_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        # Faust's 90 s default is how long a worker waited on a group join the embedded broker never
        # answered (a leave and a join two seconds apart; docs/architecture.md, "Rebalances")
        broker_request_timeout=settings.request_timeout,
        broker_commit_every=settings.worker_batch,
        broker_commit_interval=0.5,
        web_enabled=settings.worker_web_port is not None,
        web_port=settings.worker_web_port or 6066,
        web_bind=settings.worker_web_host,  # Faust's default is every interface
        broker_credentials=faust_credentials(settings),
        producer_acks=-1,
        stream_buffer_maxsize=settings.worker_buffer,
        # The orders agent may wait for the reviews' watermark (streams/agents.py) while the reviews
        # must keep flowing. Faust pauses fetching a partition once its stream's buffer is 80% full,
        # but only when a record of that partition arrives, delivers what a fetch returned in full,
        # and blocks its whole delivery loop on a full buffer. So every partition of a topic may add
        # one more fetch after the 80% mark: fetches of at most 20% / partitions keep the reviews
        # moving (2,000 records a fetch, 20% of the buffer, stalled 2 of 6 catch-ups of 100k orders
        # on 4 partitions until the wait gave up, with the main thread idle).
        broker_max_poll_records=max(1, settings.worker_buffer // (5 * settings.topic_partitions)),
    )
    handler = StreamHandler(settings)
    handler.rebalancing = lambda: not app.flow_control.is_active()  # Faust stops the flow for a rebalance

    def output(name: str) -> faust.TopicT:
        return app.topic(name, key_serializer="raw", value_serializer="raw", partitions=settings.topic_partitions)

    outputs = {
        name: output(name)
        for name in (settings.topic_segment_changes, settings.topic_churn_signals, settings.topic_dead_letter)
    }

    async def send(topic: str, key: bytes | None, value: bytes):
        return await outputs[topic].send(key=key, value=value)

    inputs = {settings.topic_orders, settings.topic_reviews, settings.topic_campaigns}
    orders = app.topic(settings.topic_orders, schema=RawSchema())
    reviews = app.topic(settings.topic_reviews, schema=RawSchema())
    campaigns = app.topic(settings.topic_campaigns, schema=RawSchema())

    async def consume(topic: str, stream) -> None:
        async for batch in take_available(stream, settings.worker_batch):
            records = [
                (e.message.partition, e.message.offset, e.message.key, e.message.value, e.message.headers)
                for e in batch
            ]
            try:
                await handler.handle(topic, records, send)
            except Rebalancing as exc:
                batch.drop()  # unacknowledged: read again from the committed offset
                log.info("a rebalance began: %d records of %s are read again after it (%s)", len(batch), topic, exc)
                continue
            # What outlives a batch (cached profiles, mostly) is long-lived: keep it out of every
            # later collection. Without this, full collections re-scan the growing profile cache
            # (0.3-0.9 s pauses on 100k orders); with it, a 100k-order run left 293 cyclic
            # objects uncollected in all (see streams/worker.py).
            gc.freeze()

    @app.agent(orders, name="order_events")
    async def order_events(stream) -> None:
        await consume(settings.topic_orders, stream)

    @app.agent(reviews, name="review_events")
    async def review_events(stream) -> None:
        await consume(settings.topic_reviews, stream)

    @app.agent(campaigns, name="campaign_events")
    async def campaign_events(stream) -> None:
        await consume(settings.topic_campaigns, stream)

    @app.task
    async def publish_changes() -> None:
        for topic in outputs.values():  # the publisher sends with its own producer: create the topics first
            await topic.maybe_declare()
        # A loop, not a timer: under load one pass can outlast any interval.
        delay = 1.0
        while not app.should_stop:
            # the outboxes of the partitions this worker owns (their writes fill them)
            owned = sorted({tp.partition for tp in app.consumer.assignment() if tp.topic in inputs})
            try:
                published = await handler.publish(owned)
            except REDIS_AWAY as exc:  # the outbox keeps the events: try again
                handler.redis_away(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            except Exception as exc:  # Kafka away: the outbox keeps the events
                log.warning(
                    "publishing change events failed (%s); retrying in %.0f s", " ".join(str(exc).split()), delay
                )
                log.debug("publishing failed", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 1.0
            if published == 0:
                await asyncio.sleep(0.1)

    # Timers skip a beat while Redis is away (restarting, failing over): an exception would crash
    # the worker. What they do is idempotent, so the next beat catches up.
    @app.timer(interval=1.0, name="refresh_thresholds")
    async def refresh_thresholds() -> None:
        owned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == settings.topic_orders)
        try:
            await handler.refresh_thresholds(owned)
        except REDIS_AWAY as exc:
            handler.redis_away(exc)

    @app.timer(interval=5.0, name="checkpoint_clusters")
    async def checkpoint_clusters() -> None:
        try:
            await handler.checkpoint_clusters()
        except REDIS_AWAY as exc:
            handler.redis_away(exc)

    app.segstream_handler = handler  # for tests and tooling
    return app
