"""The one place that turns settings into connections: every Redis and Kafka client is built here.

Credentials come from their own settings (``SEGSTREAM_REDIS_PASSWORD``,
``SEGSTREAM_KAFKA_SASL_PASSWORD``: ``SecretStr``, never printed), not from URLs, so that an address
can be shown anywhere. :func:`shown` strips a password from an address that still carries one.

>>> from pydantic import SecretStr
>>> s = Settings(redis_url="redis://cache:6380/2", redis_password=SecretStr("p"), redis_username="app")
>>> sorted(redis_options(s).items())
[('password', 'p'), ('socket_connect_timeout', 10.0), ('socket_timeout', 10.0), ('username', 'app')]
>>> kafka_options(Settings())
{'security_protocol': 'PLAINTEXT'}
>>> shown("redis://app:p4ss@cache:6380/2")
'redis://app:***@cache:6380/2'
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis

from segstream.settings import Settings

__all__ = ["async_redis_client", "faust_credentials", "kafka_options", "redis_client", "redis_options", "shown"]


def shown(address: str) -> str:
    """``address`` with any password in it replaced by ``***``."""
    parts = urlsplit(address)
    if parts.password is None:
        return address
    user = f"{parts.username}:" if parts.username else ":"
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def redis_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``redis.Redis.from_url`` (sync or asyncio) for the configured Redis."""
    # a hung Redis (stopped, partitioned) must fail a call, not block it forever: callers retry
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
    }
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    if settings.redis_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_ca_file)
    return options


def redis_client(settings: Settings, **kwargs: Any) -> redis.Redis:
    """A client of the configured Redis: a ``RedisCluster`` with ``SEGSTREAM_REDIS_CLUSTER`` (it has
    the same commands; keys of one script or transaction share a slot, segstream/keys.py)."""
    options = {**redis_options(settings), **kwargs}
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(settings.redis_address, **options)  # type: ignore[return-value]
    return redis.Redis.from_url(settings.redis_address, **options)


def async_redis_client(settings: Settings, **kwargs: Any) -> aioredis.Redis:
    options = {**redis_options(settings), **kwargs}
    if settings.redis_cluster:
        return aioredis.RedisCluster.from_url(settings.redis_address, **options)  # type: ignore[return-value]
    return aioredis.Redis.from_url(settings.redis_address, **options)


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    from aiokafka.helpers import create_ssl_context

    return create_ssl_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
        certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
        keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
    )


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments every aiokafka client (producer, consumer, admin) gets for security."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(settings)
    if protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value() if password is not None else None,
        )
    return options


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` for the same security settings (None for PLAINTEXT)."""
    from faust.auth import SASLCredentials, SSLCredentials

    protocol = settings.kafka_security_protocol
    context = _ssl_context(settings) if protocol in ("SSL", "SASL_SSL") else None
    if protocol == "SSL":
        return SSLCredentials(context)
    if protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        return SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password is not None else None,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    return None
