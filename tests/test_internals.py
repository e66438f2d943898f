"""The library internals segstream overrides or reads still have the shape the code relies on.

pyproject bounds faust-streaming, river, redis and aiokafka to the versions tested; when one is
raised, these fail loudly on an internal that moved, instead of a worker misbehaving quietly:

- Faust (streams/consumer.py): the drain loop ``Consumer._drain_messages(fetcher)`` and what it
  reads (``_read_offset``, ``_commit_every``, ``_n_acked``, ``_add_gap``, ``suspend_flow``,
  ``wait_first``, ``consumer_stopped_errors``), the consumer thread's
  ``_create_worker_consumer(transport)``, ``Consumer._new_consumer_thread()``, the app's
  ``_new_transport`` / ``_new_producer``, the producer buffer's ``pending`` and
  ``wait_until_ebb``, the stream queue's ``_errors`` and ``Event.message.tracked``;
- aiokafka: ``AIOKafkaConsumer._fetch_max_wait_ms``, read when the consumer starts;
- river (streams/clusters.py): ``cluster.KMeans`` with ``p``, ``centers`` (index -> coordinates)
  and ``predict_one`` / ``learn_predict_one``;
- redis-py: ``connection_pool.connection_kwargs`` (where a Redis outage is logged) and the
  asyncio client's ``aclose`` (5.0.1 on).
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_faust_consumer_internals() -> None:
    from faust.transport import consumer as faust_consumer
    from faust.transport.drivers import aiokafka as driver

    assert _parameters(faust_consumer.Consumer._drain_messages) == ["self", "fetcher"]
    assert _parameters(faust_consumer.Consumer._add_gap) == ["self", "tp", "offset_from", "offset_to"]
    assert _parameters(driver.AIOKafkaConsumerThread._create_worker_consumer) == ["self", "transport"]
    assert _parameters(driver.Consumer._new_consumer_thread) == ["self"]
    source = inspect.getsource(faust_consumer.Consumer)
    for name in ("_read_offset", "_commit_every", "_n_acked", "suspend_flow", "consumer_stopped_errors"):
        assert name in source, f"faust's Consumer no longer has {name}"
    assert hasattr(faust_consumer.Consumer, "wait_first") and hasattr(faust_consumer.Consumer, "getmany")
    # the drain loop we replace still wraps each record in wait_first (the cost we avoid)
    assert "wait_first" in inspect.getsource(faust_consumer.Consumer._drain_messages)


def test_faust_app_producer_and_stream_internals() -> None:
    import faust
    from faust.transport.producer import ProducerBuffer

    for name in ("_new_transport", "_new_producer"):
        assert _parameters(getattr(faust.App, name)) == ["self"], name
    buffer_source = inspect.getsource(ProducerBuffer)
    assert "self.pending" in buffer_source and "def wait_until_ebb" in buffer_source
    assert "max_messages" in buffer_source
    from mode.utils.queues import ThrowableQueue

    assert "_errors" in inspect.getsource(ThrowableQueue)
    from faust.types.tuples import Message

    assert "tracked" in Message.__slots__


def test_aiokafka_fetch_wait_is_read_from_the_attribute() -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer

    async def build() -> int:
        return AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=123)._fetch_max_wait_ms

    assert asyncio.run(build()) == 123
    assert "self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)


def test_river_kmeans_attributes() -> None:
    from river import cluster

    model = cluster.KMeans(n_clusters=3, halflife=0.5, sigma=1.0, seed=1)
    model.learn_predict_one({"a": 1.0, "b": 2.0})
    assert isinstance(model.p, int | float)
    assert set(model.centers) == {0, 1, 2} and all(set(c) >= {"a", "b"} for c in model.centers.values())
    assert "self.centers" in inspect.getsource(cluster.KMeans.predict_one)


def test_redis_py_pool_kwargs_and_aclose() -> None:
    import redis
    import redis.asyncio as aioredis

    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=1)
    assert client.connection_pool.connection_kwargs["port"] == 1
    assert hasattr(aioredis.Redis, "aclose")


@pytest.mark.parametrize(
    ("package", "bound"),
    [("faust-streaming", "0.16"), ("river", "0.27"), ("redis", "8.3"), ("aiokafka", "0.15")],
)
def test_installed_versions_are_within_the_tested_bounds(package: str, bound: str) -> None:
    """The bounds in pyproject are these; a newer release needs the tests above to pass first."""
    installed = tuple(int(x) for x in version(package).split(".")[:2])
    assert installed < tuple(int(x) for x in bound.split(".")), f"{package} {version(package)} >= {bound}"
