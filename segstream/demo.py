"""``segstream demo``: the main job on the embedded default, end to end.

Starts the embedded broker and Redis if needed, a stream worker, replays the bundled sample (or
``--data``) and shows the segment counts live while the worker catches up, then the latest shifts.
Like the CLI, this is the face of the project: it may import every stage, and nothing imports it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from segstream.settings import Settings, settings_env

__all__ = ["run_demo", "sample_path", "start_worker", "stop_worker"]


def sample_path() -> Path:
    """The bundled synthetic Olist sample (see its README for how it was generated)."""
    return Path(str(resources.files("replay") / "data" / "sample"))


def start_worker(settings: Settings, log_path: Path, command: str = "worker") -> subprocess.Popen:
    """A ``segstream worker`` (or another long-running ``command``, such as ``web``) process with
    exactly these settings, logging to ``log_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSTREAM_")}
    env.update(settings_env(settings))
    env["SEGSTREAM_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap_servers
    env["SEGSTREAM_REDIS_URL"] = settings.redis_address
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "segstream", command], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def stop_worker(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM (the worker commits and leaves its group cleanly), SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_demo(
    settings: Settings,
    *,
    data: Path | None = None,
    source: str = "olist",
    mapping: Path | None = None,
    campaigns: Path | None = None,
    speed: float | None = None,
    keep_services: bool = True,
    timeout_s: float = 600,
    web: bool = True,
    echo: Callable[[str], None] = print,
) -> bool:
    """Returns whether the worker processed the whole replay (every partition's end tick)."""
    from replay.producer import run_replay, summary_lines
    from segstream.services import services_down, services_up
    from streams.readmodel import overview, overview_lines, replay_consumed

    web_view = None
    if web:
        echo(f"live view: http://{settings.web_host}:{settings.web_port}/ (open it to watch the replay)")
    echo("services:")
    for status in services_up(settings):
        echo("  " + status.line())
    if web:
        web_log = settings.run_dir / "logs" / "web.log"
        web_view = start_worker(settings, web_log, "web")
        echo(f"started the live view pid {web_view.pid} (log {web_log})")
    worker_log = settings.run_dir / "logs" / "worker.log"
    worker = start_worker(settings, worker_log)
    echo(f"started stream worker pid {worker.pid} (log {worker_log})")
    caught_up = False
    try:
        data = data or sample_path()
        echo(f"replaying {data} (event-time order, speed {'max' if speed is None else speed})")
        history, summary = run_replay(
            data,
            settings,
            speed=speed,
            restart=True,
            progress=sys.stderr.isatty(),
            source=source,
            mapping=mapping,
            campaigns=campaigns,
        )
        for line in summary_lines(history, summary):
            echo(line)
        partitions = summary.topic_partitions
        live = sys.stdout.isatty()
        deadline, shown = time.monotonic() + timeout_s, 0.0
        while time.monotonic() < deadline:
            done = replay_consumed(settings, summary.replay_id, summary.run_id)
            if worker.poll() is not None:
                echo(f"the worker exited with code {worker.returncode}; see {worker_log}")
                break
            if done == partitions:
                caught_up = True
                break
            if live or time.monotonic() - shown > 5:
                now = overview(settings, latest=0)
                consumed = now.counters.get("consumed", 0)
                if consumed == 0 and done == 0:
                    status = "waiting for the worker to join its consumer group (a few seconds)"
                else:
                    status = (
                        f"worker catching up: {consumed:,} of {summary.events_sent:,} events, {done} of "
                        f"{partitions} partitions ({summary.partitions} per topic) at the end of the replay"
                    )
                lines = [status, *overview_lines(now)]
                if live:
                    echo("\033[2J\033[H" + "\n".join(lines))
                else:
                    echo("\n".join(lines))
                shown = time.monotonic()
            time.sleep(1 if live else 0.5)
        echo("segments after the replay:" if caught_up else "segments so far (the worker did not catch up in time):")
        for line in overview_lines(overview(settings, latest=10)):
            echo("  " + line)
        echo(
            "  (latest shifts: newest event time first. Causes: purchase, delivery, cancel, review: that event "
            "moved the customer; time: time alone, a recency threshold or churn gap crossed without buying; "
            "rescore: new RFM thresholds. Definitions: docs/definitions.md)"
        )
        if caught_up:
            _demo_retrain(settings, echo)
        echo("more: `segstream segments`, `segstream profile <customer_unique_id>`, `segstream worker`")
        if web_view is not None and web_view.poll() is None and sys.stdin.isatty():
            echo(f"the live view keeps running at http://{settings.web_host}:{settings.web_port}/: Ctrl-C stops it")
            with contextlib.suppress(KeyboardInterrupt):
                web_view.wait()
    finally:
        stop_worker(worker)
        if web_view is not None:
            if web_view.poll() is not None and web_view.returncode:
                echo(f"the live view exited with code {web_view.returncode}; see {web_log}")
            stop_worker(web_view)
        if not keep_services:
            for message in services_down(settings):
                echo("  " + message)
    if keep_services:
        echo("services keep running: `segstream services status`, `segstream services down`")
    return caught_up


def _demo_retrain(settings: Settings, echo: Callable[[str], None]) -> None:
    """One retrain run on what the worker built, and what it says about the biggest spender."""
    from models.population import read_population
    from models.retrain import retrain_once
    from segstream.clients import redis_client
    from segstream.keys import Keys
    from streams.readmodel import customer_models, models_lines
    from streams.thresholds import wait_for_rescore

    echo("retraining the models on the profiles in Redis (`segstream retrain --once`):")
    report = retrain_once(settings)
    echo("  " + report.line(cutoff=False))
    if report.thresholds.startswith("published version"):
        version = report.models["thresholds_version"]  # the version in force at the switch: this run's
        echo(f"  waiting for the worker to re-score every customer with thresholds version {version} ...")
        left = wait_for_rescore(settings, version)
        if left:
            echo(f"  re-scoring not finished on partitions {left} after 120 s; the worker goes on when restarted")
        else:
            echo(
                f"  re-scoring complete: all {settings.topic_partitions} partitions carry thresholds version {version}"
            )
    population = read_population(redis_client(settings), Keys(settings.redis_prefix))
    best = population.customers[int(population.monetary.argmax())] if len(population) else None
    if best is not None:
        echo(f"  the biggest spender, {best}:")
        for line in models_lines(customer_models(settings, best), settings.currency):
            echo("    " + line)
