"""Run one stream worker (``segstream worker``); start several to share the partitions."""

from __future__ import annotations

import faust

from segstream.settings import Settings
from streams.app import create_app

__all__ = ["run_worker"]

_FAUST_LEVELS = {"debug": "debug", "info": "info", "warning": "warn", "error": "error", "critical": "crit"}


def run_worker(settings: Settings) -> None:
    """Block running a Faust worker until SIGINT/SIGTERM."""
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=_FAUST_LEVELS[settings.log_level], quiet=True)
    worker.execute_from_commandline()
