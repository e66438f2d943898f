"""A Faust consumer whose drain loop hands records to the streams a fetch at a time.

Profiling a bare Faust agent on this machine (``bench/stream_throughput.py``, notes in the README)
showed most of its time outside the agent: ``faust.transport.consumer.Consumer._drain_messages``
wraps *every* record in ``Service.wait_first(callback(message), suspend_flow.wait())``, which
creates two tasks and an ``asyncio.wait`` per record so that a rebalance can interrupt a delivery
blocked on a full stream buffer. No setting changes that; it costs about as much as everything
else Faust does per record.

:class:`BatchDrainConsumer` keeps the same per-record work (gap tracking, commit cadence, read
offsets, the conductor callback) but puts one ``wait_first`` around each fetched batch: a rebalance
still interrupts a blocked delivery, and anything interrupted is read again from the committed
offsets after the rebalance, as before (at-least-once; our state updates are idempotent). The
stock loop is one flag away: ``SEGSTREAM_WORKER_BATCH_DRAIN=false``.

An agent's ``take_events(n, within)`` collects records one at a time through the stream's
per-record iterator and, while a batch is processed, stops collecting; after each batch it waits
``within`` to fill the next one. Under load its batches were about 150 records whatever ``n``
was, and at low rates each record waited ``within``. :func:`take_available` takes what the
stream's queue already holds, right away, up to ``n``: batches grow with the backlog and shrink
to a single record when the worker keeps up.

Faust also hard-codes the consumer's fetch wait (``fetch_max_wait_ms=1500``); :class:`WorkerApp`
makes it a setting (``SEGSTREAM_WORKER_FETCH_WAIT_MS``), see :class:`_ConsumerThread`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import cached_property
from typing import Any

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import EventT

__all__ = ["Batch", "RawSchema", "WorkerApp", "take_available"]


class _ConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's consumer thread with a configurable fetch wait (Faust hard-codes 1,500 ms).

    A broker that does not answer a waiting fetch when new records arrive turns the whole wait
    into latency: measured on the embedded tansu broker, an aiokafka consumer's p50 latency at
    100 records/s was 405 ms with a 1,500 ms wait, 28 ms with 100 ms and 9 ms with 20 ms.
    """

    def _create_worker_consumer(self, transport: aiokafka_driver.Transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.app.fetch_wait_ms  # read when the consumer starts
        return consumer


class FetchWaitConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer, with the app's ``fetch_wait_ms`` as the fetch wait."""

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class BatchDrainConsumer(FetchWaitConsumer):
    """Faust's aiokafka consumer with one ``wait_first`` per fetched batch instead of per record."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._jumps: dict = {}  # partition -> (read offset, offset) of the last jump read again

    async def on_partitions_assigned(self, assigned: set, generation_id: int = 0) -> None:
        # a stale fetch can begin at the same offset in the next generation too: read it again
        self._jumps.clear()
        await super().on_partitions_assigned(assigned, generation_id)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs in the worker
        callback = self.callback
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        async def deliver(records) -> None:
            since_yield = 0
            delivered: set = set()  # partitions with a record delivered from this fetch
            dropped: set = set()  # partitions whose records in this fetch are stale
            async for tp, message in records:
                since_yield += 1
                if since_yield >= 100:  # let timers and heartbeats run during long batches
                    since_yield = 0
                    await asyncio.sleep(0)
                offset, read = message.offset, get_read_offset(tp)
                if tp in dropped or (read is not None and offset < read):
                    continue  # stale, or already delivered (a seek went back)
                if read and offset - read > 1 and acks_enabled_for(message.topic):
                    if tp not in delivered and self._jumps.get(tp) != (read, offset):
                        # A fetch whose first record is past the read offset. After a rebalance
                        # this is a fetch issued before the seek to the committed offset (Faust
                        # labels its records with the new generation): taken as a gap, the
                        # records between, read before the rebalance and dropped with the stream
                        # buffers, would be committed unprocessed (seen: 45-375 of 4,429 events
                        # lost, 4 workers on 8 partitions with joins, leaves and a kill;
                        # bench/chaos.py --workers 4). Read from the read offset again; a gap the
                        # broker shows again from there, in this generation, is real (compaction,
                        # transaction markers). Faust's seek() calls aiokafka from this thread,
                        # not the consumer's: seek_wait runs it in the consumer's thread.
                        self._jumps[tp] = (read, offset)
                        dropped.add(tp)
                        if tp in self.assignment():
                            self.log.info(
                                "%s: a fetch began at offset %d, past %d: reading from %d again", tp, offset, read, read
                            )
                            await self.seek_wait({tp: read})
                        continue
                    await self._add_gap(tp, read + 1, offset)
                delivered.add(tp)
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                await callback(message)
                set_read_offset(tp, offset)

        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):
                records = self.getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    await self.wait_first(deliver(records), self.suspend_flow.wait())
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise


class RawSchema(faust.Schema):
    """Keys and values as the bytes on the wire, without Faust's per-record codec lookups.

    What ``key_serializer="raw", value_serializer="raw"`` gives, decoded in one call: the agents
    parse records themselves (``segstream.schemas.decode_event``), and Faust's generic decode
    (schema, serializer registry, codec, settings lookups per record) cost more than the Event.
    """

    def __init__(self) -> None:
        super().__init__(key_serializer="raw", value_serializer="raw")

    def compile(self, app: Any, *, default_propagate: bool = False, **_errors: Any) -> Any:
        create_event = app.create_event

        async def decode(message: Any, *, propagate: bool = default_propagate) -> EventT:
            return create_event(message.key, message.value, message.headers, message)

        return decode


class WorkerApp(faust.App):
    """A ``faust.App`` with segstream's consumer, an Event class looked up once, and Faust's
    producer with a cheaper per-record buffer check (:func:`_cheap_ebb`).

    ``batch_drain``: use :class:`BatchDrainConsumer` (else Faust's drain loop);
    ``fetch_wait_ms``: how long a fetch waits for records at most (Faust's own: 1,500 ms).
    """

    def __init__(self, *args: Any, batch_drain: bool = True, fetch_wait_ms: int = 1_500, **kwargs: Any) -> None:
        self.batch_drain, self.fetch_wait_ms = batch_drain, fetch_wait_ms
        super().__init__(*args, **kwargs)

    def create_event(self, key: Any, value: Any, headers: Any, message: Any) -> EventT:
        # Faust looks the Event class up in its settings for every record (a settings-registry call)
        return self._event_class(self, key, value, headers, message)

    @cached_property
    def _event_class(self) -> type:
        return self.conf.Event

    def _new_producer(self) -> Any:
        producer = super()._new_producer()
        if not self.conf.producer_threaded:
            _cheap_ebb(producer.buffer)
        return producer

    def _new_transport(self) -> aiokafka_driver.Transport:
        transport = aiokafka_driver.Transport(self.conf.broker_consumer, self)
        transport.Consumer = BatchDrainConsumer if self.batch_drain else FetchWaitConsumer
        return transport


def _cheap_ebb(buffer: Any) -> None:
    """Faust's conductor awaits ``buffer.wait_until_ebb()`` for every record; its size check reads
    a setting (``producer_threaded``) each time. Same check, the setting read once."""
    pending, wait_until_ebb = buffer.pending, buffer.wait_until_ebb

    async def cheap_wait_until_ebb() -> None:
        if pending.qsize() > buffer.max_messages:
            await wait_until_ebb()

    buffer.wait_until_ebb = cheap_wait_until_ebb


class Batch(list):
    """The events :func:`take_available` yields; ``drop()`` leaves them unacknowledged (unprocessed:
    they are read again from the committed offset)."""

    dropped = False

    def drop(self) -> None:
        self.dropped = True


async def take_available(stream: faust.StreamT, max_: int) -> AsyncIterator[Batch]:
    """The stream's events in batches: wait for one, then take what is queued, up to ``max_``.

    Does per record what Faust's stream iterator does (skip records of an older consumer
    generation or read while flow is suspended by a rebalance, track acking topics' messages as
    unacked, call the sensors) and acks the whole batch when the consumer of the batch asks for
    the next one: offsets are committed only once a batch was processed (at-least-once). Unlike
    Faust's iterator, it never acks a record it skipped, nor a batch its consumer dropped.
    """
    app = stream.app
    consumer = app.consumer
    queue = stream.channel.queue
    errors = queue._errors
    unacked = consumer.unacked
    acking_topics = app.topics.acking_topics
    flow_control = app.flow_control
    sensors = app.sensors
    started = await stream.maybe_start()
    try:
        while not stream.should_stop:
            if errors:
                raise errors.popleft()
            try:
                items = [await queue.get()]
            except StopAsyncIteration:  # Faust stopping the stream: inside a generator it would be a RuntimeError
                return
            while len(items) < max_ and not queue.empty():
                items.append(queue.get_nowait())
            events, generation = Batch(), app.consumer_generation_id
            active = flow_control.is_active()
            for event in items:
                message = event.message
                if not active or message.generation_id != generation:
                    continue  # read before a rebalance: read again from the committed offset
                if message.topic in acking_topics and not message.tracked:
                    message.tracked = True
                    unacked.add(message)
                    sensors.on_message_in(message.tp, message.offset, message)
                events.append(event)
            if events:
                yield events
            # Only what was processed is acked. Faust's own iterator acks skipped records too, but
            # a record of an older generation is one this worker reads again after its seek to
            # the committed offset: acked now, its offset would count as done, and a commit could
            # pass it before it is read again (a worker that then dies or leaves loses it).
            if events.dropped:  # Faust's rebalance waits for what is unacked: not for these
                unacked.difference_update(event.message for event in events)
                continue
            for event in events:
                if event.ack():
                    message = event.message
                    sensors.on_message_out(message.tp, message.offset, message)
    finally:
        if started:
            await stream.stop()
