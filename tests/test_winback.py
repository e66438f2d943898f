"""The example consumer (examples/winback_consumer.py) on a real replay: its win-back list equals a
direct query of the final Redis state, also when it was killed (-9) mid-way and restarted, and,
after a retrain, with a CLV bound read through `segstream web`."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from models.retrain import retrain_once
from replay.olist import load_olist
from replay.producer import replay_history
from segstream.demo import start_worker, stop_worker
from segstream.partitioned import outbox_length
from streams.thresholds import wait_for_rescore
from tests.conftest import Workers, free_port, wait_for_web

pytestmark = pytest.mark.integration

CONSUMER = Path(__file__).parents[1] / "examples" / "winback_consumer.py"


def _consumer(
    workers: Workers, group: str, out: Path, idle_s: float | None = None, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    s = workers.settings
    args = [sys.executable, str(CONSUMER), "--bootstrap", s.kafka_bootstrap_servers, "--group", group]
    args += ["--segments-topic", s.topic_segment_changes, "--churn-topic", s.topic_churn_signals, "--out", str(out)]
    args += ["--exit-when-idle", str(idle_s)] if idle_s else []
    args += extra
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _from_redis(workers: Workers) -> list[str]:
    return sorted(
        c for c, p in workers.profiles().items() if p.segment in ("At Risk", "Can't Lose Them") or p.churn == "churned"
    )


def test_the_winback_list_equals_the_redis_state_after_a_kill_and_restart(
    workers: Workers, synth_small: Path, tmp_path: Path
) -> None:
    workers.start()
    summary: list = []
    # ~2 years of event time at ~40 days a second: the consumer is killed while changes still arrive
    replay = threading.Thread(
        target=lambda: summary.append(
            asyncio.run(replay_history(load_olist(synth_small), workers.settings, speed=3_456_000.0))
        ),
        daemon=True,
    )
    replay.start()
    killed = tmp_path / "killed.json"
    first = _consumer(workers, "winback-killed", killed)
    deadline = time.monotonic() + 60
    while not (killed.exists() and json.loads(killed.read_text())["customers"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert killed.exists(), first.communicate(timeout=5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    seen_before_kill = len(json.loads(killed.read_text())["customers"])
    replay.join(300)
    workers.wait_for_end(summary[0])
    want = _from_redis(workers)
    assert want and seen_before_kill < len(workers.profiles())  # killed mid-way, not at the end

    again = _consumer(workers, "winback-killed", killed, idle_s=5)
    whole = _consumer(workers, "winback-whole", tmp_path / "whole.json", idle_s=5)
    for proc in (again, whole):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert f"{len(want)} customers to win back" in out
    assert json.loads(killed.read_text())["win_back"] == want
    assert json.loads((tmp_path / "whole.json").read_text())["win_back"] == want

    # with a CLV model: only those worth it (CLV >= the bound), read through the JSON API
    report = retrain_once(workers.settings)
    assert report.clv == "fitted", report.line()
    # its RFM thresholds re-score the customers (changes with cause "rescore"): the list moves too
    assert wait_for_rescore(workers.settings, report.models["thresholds_version"]) == []
    deadline = time.monotonic() + 30
    while outbox_length(workers.redis, workers.keys) and time.monotonic() < deadline:
        time.sleep(0.1)
    want = _from_redis(workers)
    written = workers.redis.hgetall(workers.keys.scores(report.run))
    scores = {k.decode(): json.loads(v)["clv"] for k, v in written.items()}
    bound = float(np.median([scores[c] for c in want if c in scores]))
    worth = [c for c in want if c not in scores or scores[c] >= bound]
    assert 0 < len(worth) < len(want)
    settings = workers.settings.model_copy(update={"web_port": free_port()})
    web = start_worker(settings, tmp_path / "web.log", "web")
    try:
        api = f"http://127.0.0.1:{settings.web_port}"
        wait_for_web(api, web, tmp_path / "web.log")
        extra = ("--api", api, "--min-clv", str(bound))
        bounded = _consumer(workers, "winback-clv", tmp_path / "clv.json", idle_s=5, extra=extra)
        out, err = bounded.communicate(timeout=120)
        assert bounded.returncode == 0, err
    finally:
        stop_worker(web)
    saved = json.loads((tmp_path / "clv.json").read_text())
    assert saved["clv_model_run"] == report.run and saved["win_back"] == worth, out
