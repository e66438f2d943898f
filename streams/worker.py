"""Run one stream worker (``segstream worker``); start several to share the partitions."""

from __future__ import annotations

import gc
import socket

import faust
import mode.loop
import redis

from segstream.clients import redis_client
from segstream.keys import Keys
from segstream.services import ServiceError
from segstream.settings import Settings
from streams.app import create_app

__all__ = ["run_worker"]


def _check_port_free(host: str, port: int) -> None:
    """Refuse a taken web port in one line (Faust would fail deep in its start-up, with a traceback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServiceError(
                f"web port {host}:{port} is taken ({exc.strerror}); give this worker another --web-port, "
                f"or leave it out (a second worker on one machine needs no web server)"
            ) from None


def _check_layout(settings: Settings) -> None:
    """Refuse state of an older key layout (segstream/keys.py, ``legacy_patterns``): applied-id
    sets from before the profiles kept their events' digests (they would be ignored, and a
    redelivered old event counted again), and keys from before the partition hash tags (a worker
    would start over beside them)."""
    keys = Keys(settings.redis_prefix)
    try:
        client = redis_client(settings)
        old = next((k for p in keys.legacy_patterns for k in client.scan_iter(match=p, count=10_000)), None)
    except redis.RedisError:
        return  # Redis away: the worker waits for it, and a later start checks again
    if old is not None:
        raise ServiceError(
            f"Redis holds state of an older segstream under the prefix {settings.redis_prefix!r} ({old.decode()}): "
            "replay into a fresh prefix (SEGSTREAM_REDIS_PREFIX) or remove the old keys first (docs/architecture.md, "
            "Upgrading)"
        )


_FAUST_LEVELS = {"debug": "debug", "info": "info", "warning": "warn", "error": "error", "critical": "crit"}


def run_worker(settings: Settings) -> None:
    """Block running a Faust worker until SIGINT/SIGTERM."""
    if settings.worker_web_port is not None:
        _check_port_free(settings.worker_web_host, settings.worker_web_port)
    _check_layout(settings)
    mode.loop.use("uvloop" if settings.worker_loop == "uvloop" else "aio")  # before the app makes its loop
    app = create_app(settings)
    app.conf.datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    # The worker allocates many short-lived objects per record and keeps many long-lived ones (the
    # profile cache). Each agent freezes what survives its batch (streams/app.py), which resets the
    # young generation's count: with a threshold above what a batch leaves alive, collections
    # almost never run. Offline, 303k records of a 100k-order history: 2.2 s of gen0 collections
    # at 50,000 -> 0.2 s at 500,000, and 138 vs 172 cyclic objects left for a full collection.
    gc.freeze()
    gc.set_threshold(500_000, 20, 100)
    worker = faust.Worker(app, loglevel=_FAUST_LEVELS[settings.log_level], quiet=True)
    worker.execute_from_commandline()
