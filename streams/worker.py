"""Run one stream worker (``segstream worker``); start several to share the partitions."""

from __future__ import annotations

import gc

import faust
import mode.loop

from segstream.settings import Settings
from streams.app import create_app

__all__ = ["run_worker"]

_FAUST_LEVELS = {"debug": "debug", "info": "info", "warning": "warn", "error": "error", "critical": "crit"}


def run_worker(settings: Settings) -> None:
    """Block running a Faust worker until SIGINT/SIGTERM."""
    mode.loop.use("uvloop" if settings.worker_loop == "uvloop" else "aio")  # before the app makes its loop
    app = create_app(settings)
    # The worker allocates many short-lived objects per record and keeps many long-lived ones (the
    # profile cache): collect the young generation less often, and leave what exists at start-up
    # (modules, the app) out of every collection (py-spy showed collections inside the fold's allocations);
    # each agent also freezes what survives its batches (streams/app.py).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    worker = faust.Worker(app, loglevel=_FAUST_LEVELS[settings.log_level], quiet=True)
    worker.execute_from_commandline()
