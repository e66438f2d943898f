"""segstream on a real Redis Cluster: three cluster-enabled redis-server masters on local ports.

Everything one script or transaction touches shares its Kafka partition's hash tag, so a worker's
writes route to one node each; the readers that span the population (the retrain's reader, the
models reader, the web view) gather over every node. The same oracle as the single-Redis suite.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from models.retrain import retrain_once
from replay.olist import load_olist
from replay.synth import SynthConfig, synthesize
from segstream.web import create_app
from streams.readmodel import customer_models, overview, read_profile
from tests.conftest import (
    Workers,
    assert_matches_oracle,
    assert_transitions_match_oracle,
    replay_in_background,
    wait_for_applied,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cluster-history")
    synthesize(SynthConfig(orders=2_000, seed=29, repeat_share=0.3, late_share=0.15), out)
    return out


def keys_per_node(client: redis.RedisCluster, prefix: str) -> Counter[str]:
    """How many of ``prefix``'s keys each master holds (a SCAN of each node on its own)."""
    found: Counter[str] = Counter()
    for node in client.get_primaries():
        for _ in node.redis_connection.scan_iter(match=f"{prefix}:*", count=1_000):
            found[node.name] += 1
    return found


def test_a_worker_killed_mid_replay_on_a_cluster_ends_equal_to_the_oracle(
    cluster_workers: Workers, history: Path
) -> None:
    workers = cluster_workers
    assert isinstance(workers.redis, redis.RedisCluster)
    proc = workers.start()
    thread, result = replay_in_background(
        load_olist(history), workers.settings.model_copy(update={"replay_batch": 200}), speed=40 * 86_400
    )
    wait_for_applied(workers, 1_000)
    proc.send_signal(signal.SIGKILL)  # no commit, no clean leave: the restart re-reads what it had not committed
    proc.wait()
    workers.start()
    thread.join(timeout=120)
    workers.wait_for_end(result["summary"], timeout_s=180)

    expected = assert_matches_oracle(workers, history)
    segment_changes, churn_changes = assert_transitions_match_oracle(workers, history, redelivered=True)
    assert segment_changes > 1_000 and churn_changes > 500
    counters = workers.counters()
    assert counters["applied"] == result["summary"].events_total  # nothing counted twice
    assert counters["consumed"] == counters["applied"] + counters["duplicates"] + counters["dead_lettered"]
    assert workers.summed("segments") == expected["segment"].value_counts().to_dict()

    # the state is spread: every master holds some of it
    spread = keys_per_node(workers.redis, workers.settings.redis_prefix)
    assert len(spread) == 3 and min(spread.values()) > 0, spread


def test_retrain_models_reader_and_web_view_span_the_cluster_nodes(cluster_workers: Workers, history: Path) -> None:
    workers = cluster_workers
    workers.start()
    thread, result = replay_in_background(load_olist(history), workers.settings)
    thread.join(timeout=120)
    workers.wait_for_end(result["summary"])
    expected = assert_matches_oracle(workers, history)

    settings = workers.settings.model_copy(update={"models_dir": workers.logs / "models", "clv_min_repeat_buyers": 5})
    repeat = expected.index[expected["orders"] > 1][0]

    # the CLI's readers
    view = overview(settings, latest=20)
    assert view.segments == expected["segment"].value_counts().to_dict()
    assert len(view.latest) == 20
    profile = read_profile(settings, repeat[:12])
    assert profile is not None and profile.customer_unique_id == repeat

    with TestClient(create_app(settings)) as client:  # the web view's API on the same cluster
        segments = first_snapshot(client)
        assert segments["segments"] == view.segments and segments["watermark"] is not None
        assert client.get("/api/segments/history").json()[-1]["segments"] == view.segments
        changes = client.get("/api/changes", params={"limit": 100}).json()
        assert {c["kind"] for c in changes} == {"segment", "churn"}
        assert client.get(f"/api/customers/{repeat}").json()["profile"]["segment"] == expected.loc[repeat, "segment"]
        health = client.get("/api/health").json()
        assert health["counters"]["applied"] == result["summary"].events_total

        # a retrain reads the population from every node and writes the models under one tag
        # (its new thresholds then re-score the segments: they are no longer the oracle's defaults)
        report = retrain_once(settings)
        assert report.customers == len(workers.profiles()), report
        assert report.clv == "fitted" and report.recommendations == "fitted", report
        found = customer_models(settings, repeat)
        assert found is not None and found.models["run"] == report.run
        assert found.scores is not None and found.scores["p_alive"] is not None
        assert found.recommendations is not None and found.recommendations["items"]
        one = client.get(f"/api/customers/{repeat}").json()
        assert one["scores"] == found.scores and one["models"]["run"] == report.run


def first_snapshot(client: TestClient, timeout_s: float = 15) -> dict:
    """/api/segments once the view has read its first snapshot (503 until then)."""
    deadline = time.monotonic() + timeout_s
    while (answer := client.get("/api/segments")).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert answer.status_code == 200, answer.text
    return answer.json()
