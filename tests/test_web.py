"""`segstream web` on real services: the page in headless Chromium while a replay runs, the JSON
API against the state the workers wrote, the token rule, and the OpenAPI document in docs/.

One module-wide setup: a broker topic pair, a Redis prefix and a consumer group of its own, a real
`segstream web` process (uvicorn) and, from the second test on, a stream worker.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from models.retrain import retrain_once
from replay.producer import ensure_topics, replay_history
from replay.sources import load_source
from replay.synth import SynthConfig, synthesize
from segstream.demo import start_worker, stop_worker
from segstream.schemas import ChurnChanged, SegmentChanged
from segstream.settings import Settings, settings_env
from segstream.web import WebRefused, check_bind, create_app
from tests.browser import Browser
from tests.conftest import Workers, free_port, isolated, wait_for_web

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[1]
ARTIFACTS = Path(__file__).parent / "artifacts"


@dataclass
class Live:
    settings: Settings
    workers: Workers
    url: str
    web: subprocess.Popen

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)

    def redis_segments(self) -> dict[str, int]:
        return self.workers.summed("segments")


@pytest.fixture(scope="module")
def web_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """synth_small's shape (400 orders, many repeat buyers) with four planted campaigns."""
    out = tmp_path_factory.mktemp("web-history")
    synthesize(SynthConfig(orders=400, seed=11, repeat_share=0.2, campaigns=4, campaign_reach=0.8), out)
    return out


@pytest.fixture(scope="module")
def live(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("web")
    settings = isolated(services, "web").model_copy(
        update={
            "run_dir": tmp / "run",
            "worker_batch": 200,
            "web_port": free_port(),
            "web_interval_s": 0.5,
            "uplift_min_sends": 50,
        }
    )
    topics = [settings.topic_orders, settings.topic_reviews]
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, topics, settings.topic_partitions, 1))
    web = start_worker(settings, tmp / "web.log", "web")
    url = f"http://127.0.0.1:{settings.web_port}"
    wait_for_web(url, web, tmp / "web.log")
    group = Workers(settings, tmp)
    try:
        yield Live(settings, group, url, web)
    finally:
        group.stop()
        stop_worker(web)
    group.assert_published_valid()


def test_the_page_loads_empty_and_says_what_to_do(live: Live) -> None:
    with Browser() as browser:
        page = browser.open(live.url + "/")
        page.wait_for("Number(document.body.dataset.snapshots || 0) >= 2")
        banner = page.evaluate("(b => b.hidden ? '' : b.innerText)(document.getElementById('banner'))")
        assert "Nothing has been replayed yet" in banner and "segstream replay" in banner
        assert page.evaluate("document.getElementById('total').dataset.total") == "0"
        assert page.errors == [] and page.evaluate("document.body.dataset.errors") == ""


def test_the_page_follows_a_replay_without_reload_and_ends_equal_to_redis(live: Live, web_history: Path) -> None:
    live.workers.start()
    history = load_source("olist", web_history)  # with its campaigns.csv
    summary: list = []
    with Browser() as browser:
        page = browser.open(live.url + "/")
        page.wait_for("Number(document.body.dataset.snapshots || 0) >= 1")
        page.evaluate("window.__sameDocument = 'yes'")  # gone if the page reloads
        # ~400 orders over ~2 years at 20 days of event time a second: ~40 s, read by the page meanwhile
        replay = threading.Thread(
            target=lambda: summary.append(asyncio.run(replay_history(history, live.settings, speed=1_728_000.0))),
            daemon=True,
        )
        replay.start()
        seen: list[int] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(set(seen)) < 4:
            seen.append(int(page.evaluate("document.getElementById('total').dataset.total")))
            time.sleep(0.5)
        assert len(set(seen)) >= 4, f"the count on the page moved through {sorted(set(seen))} only"
        assert seen == sorted(seen)  # customers only arrive
        assert page.evaluate("window.__sameDocument") == "yes"
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
        replay.join(600)
        live.workers.wait_for_end(summary[0])
        # within a few snapshots of the end, the page's table equals Redis's segment counts
        want = live.redis_segments()
        table = (
            "JSON.stringify(Object.fromEntries([...document.querySelectorAll('#segment-table tbody tr')]"
            ".map(r => [r.dataset.segment, Number(r.dataset.count)]).sort()))"
        )
        expected = json.dumps(dict(sorted(want.items())), separators=(",", ":"))
        try:
            page.wait_for(f"{table} === {json.dumps(expected)}", timeout=30)
        except AssertionError:
            assert json.loads(page.evaluate(table)) == want  # shows the difference
        # the customer lookup, from a link in the live feed
        customer = page.evaluate("document.querySelector('#feed a.customer').title")
        page.evaluate(f"document.getElementById('customer').value = {customer[:10]!r}; 1")
        page.evaluate("document.getElementById('lookup').requestSubmit(); 1")
        page.wait_for("!!document.getElementById('customer-profile')")
        assert page.evaluate("document.getElementById('customer-profile').dataset.customer") == customer
        stored = live.workers.profile_of(customer).segment
        assert stored in page.evaluate("document.getElementById('customer-profile').innerText")
        # and the customer's whole history of changes, read from the change topics
        page.wait_for("!!(document.getElementById('customer-history') || {dataset: {}}).dataset.segmentChanges")
        profile = live.workers.profiles()[customer]
        counted = page.evaluate("({...document.getElementById('customer-history').dataset})")
        assert counted == {"segmentChanges": str(profile.segment_changes), "churnChanges": str(profile.churn_changes)}
        shown_rows = page.evaluate("document.querySelectorAll('#customer-history tbody tr').length")
        assert shown_rows == profile.segment_changes + profile.churn_changes
        # segments now, history, flows, churn, CLV (no model yet), cohorts, weekday x hour, states,
        # segment revenue, daily sales (no forecast before a retrain)
        page.wait_for(
            "[...document.querySelectorAll('.chart')].filter(c => c.dataset.rendered).length >= 9", timeout=20
        )
        assert charts_state(page) == ["1", "1", "1", "1", "hidden", "1", "1", "1", "1", "1"]
        assert not page.evaluate("document.getElementById('rules-empty').hidden")
        cohorts = live.get("/api/analytics/cohorts").json()
        drawn = page.evaluate(
            "echarts.getInstanceByDom(document.getElementById('chart-cohorts')).getOption().series[0].data.length"
        )
        assert drawn == sum(min(len(r["active"]), 13) for r in cohorts) > 0  # every cell, from the API
        assert "No CLV model yet" in page.evaluate("document.getElementById('clv-empty').innerText")
        assert page.errors == [] and page.evaluate("document.body.dataset.errors") == ""
        page.screenshot(ARTIFACTS / "web-view.png")


def test_the_api_answers_from_the_workers_state(live: Live) -> None:
    want = live.redis_segments()
    assert want, "the previous test replays a history"
    segments = live.get("/api/segments").json()
    assert segments["segments"] == want and segments["total"] == sum(want.values())
    assert segments["meanings"]["Champions"].startswith("bought very recently")
    # every customer's moves over all days add up to the segment counts now
    history = live.get("/api/segments/history").json()
    assert history[-1]["segments"] == want
    flows = live.get("/api/transitions", params={"from": history[0]["day"], "to": history[-1]["day"]}).json()
    net: Counter[str] = Counter()
    for t in flows["transitions"]:
        net[t["to"]] += t["customers"]
        if t["from"]:
            net[t["from"]] -= t["customers"]
    assert {k: v for k, v in net.items() if v} == want
    one_day = live.get("/api/transitions", params={"from": history[-1]["day"], "to": history[-1]["day"]}).json()
    assert sum(t["customers"] for t in one_day["transitions"]) < sum(t["customers"] for t in flows["transitions"])
    # the feed: both kinds, newest written first, each a valid event of the published schemas
    changes = live.get("/api/changes", params={"limit": 300}).json()
    assert {c["kind"] for c in changes} == {"segment", "churn"}
    positions = [tuple(map(int, c["id"].split("-"))) for c in changes]
    assert positions == sorted(positions, reverse=True)
    for change in changes:
        model = SegmentChanged if change["kind"] == "segment" else ChurnChanged
        model.model_validate({k: v for k, v in change.items() if k not in ("kind", "id")})
    health = live.get("/api/health").json()
    counters = live.workers.counters()
    assert health["counters"]["applied"] == counters["applied"] > 0
    assert health["watermark"] is not None and len(health["partitions"]) == live.settings.topic_partitions
    assert health["lag_total"] is not None, health["lag_note"]  # read from the broker's committed offsets
    customer = changes[0]["customer_unique_id"]
    found = live.get(f"/api/customers/{customer}").json()
    stored = live.workers.profile_of(customer).segment
    assert found["profile"]["segment"] == stored
    assert found["changes"] and all(c["customer_unique_id"] == customer for c in found["changes"])
    # the whole history from the change topics: numbered 1..n as the profile counts, ending where it is
    history = live.get(f"/api/customers/{customer[:12]}/history").json()
    profile = live.workers.profiles()[customer]
    assert history["customer_unique_id"] == customer and history["complete"]
    for kind, model, count, last, field in (
        ("segment_changes", SegmentChanged, profile.segment_changes, profile.segment, "segment"),
        ("churn_changes", ChurnChanged, profile.churn_changes, profile.churn, "status"),
    ):
        events = [model.model_validate(e) for e in history[kind]]
        assert [int(e.event_id.rsplit(":", 1)[1]) for e in events] == list(range(1, count + 1)), kind
        assert getattr(events[-1], field) == last and {e.customer_unique_id for e in events} == {customer}


def charts_state(page) -> list[str]:
    return page.evaluate(
        "[...document.querySelectorAll('.chart')].map(c => c.hidden ? 'hidden' : c.dataset.rendered || '')"
    )


def test_the_analytics_api_and_cli_serve_the_read_models(live: Live, web_history: Path) -> None:
    """The API's tables are the oracle's counts (pandas, from the CSVs) in the documented shapes,
    and they agree with the backtest's batch analyses of the same history (models/analyses.py)."""
    from models.analyses import cohorts as batch_cohorts
    from models.analyses import weekday_hour as batch_weekday_hour
    from streams import analytics
    from tests import oracle

    want = oracle.read_models(web_history)
    for path, model, table in (
        ("cohorts", "cohorts", analytics.cohort_table),
        ("geography", "geography", analytics.geography_table),
        ("segment-revenue", "segment_revenue", analytics.segment_revenue_table),
        ("daily", "daily", analytics.daily_table),
    ):
        assert live.get(f"/api/analytics/{path}").json() == table(want[model]), path
    grid = live.get("/api/analytics/weekday-hour").json()
    assert {k: grid[k] for k in ("orders", "revenue")} == analytics.weekday_hour_table(want["weekday_hour"])
    assert "São Paulo" in grid["timezone"]
    # the same definitions as the backtest's batch analyses, computed apart from the stream
    facts = oracle.load_facts(web_history)["purchases"]
    when = pd.to_datetime(facts["time"], unit="s")
    frame = pd.DataFrame({"customer": facts["customer_unique_id"], "spend": facts["value"], "time": when})
    served = {r["cohort"]: r for r in live.get("/api/analytics/cohorts").json()}
    for row in batch_cohorts(frame, months=6):
        mine = served[row["cohort"]]
        assert mine["customers"] == row["customers"]
        padded = (mine["active"] + [0] * 6)[:6]
        assert [round(a / mine["customers"], 6) for a in padded] == row["retention"]
        assert [round(v, 2) for v in (mine["revenue"] + [0.0] * 6)[:6]] == pytest.approx(row["revenue"])
    assert grid["orders"] == [[int(n) for n in day] for day in batch_weekday_hour(frame)["orders"]]
    # the CLI prints the same, labelled; nothing to show is an error, not an empty table
    env = {**settings_env(live.settings), "PATH": "/usr/bin:/bin"}
    for view, label in (("cohorts", "acquisition cohorts"), ("weekday", "Mon"), ("geography", "customers")):
        done = subprocess.run(
            [sys.executable, "-m", "segstream", "analytics", view], capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 0 and label in done.stdout, done.stderr
    cohort_lines = subprocess.run(
        [sys.executable, "-m", "segstream", "analytics", "cohorts", "--json"], capture_output=True, text=True,
        timeout=60, env=env,
    )  # fmt: skip
    assert json.loads(cohort_lines.stdout) == list(served.values())
    empty = subprocess.run(
        [sys.executable, "-m", "segstream", "analytics", "geography"], capture_output=True, text=True, timeout=60,
        env={**env, "SEGSTREAM_REDIS_PREFIX": "nothing-here"},
    )  # fmt: skip
    assert empty.returncode == 1 and "nothing in the geography read model" in empty.stderr
    assert "Traceback" not in empty.stderr


def test_the_api_refuses_bad_requests_with_json_errors(live: Live) -> None:
    for path in ("/api/customers/ffffffffffffffffffffffffff", "/api/customers/ffffffffffffffffffffffffff/history"):
        missing = live.get(path)
        assert missing.status_code == 404 and "no customer" in missing.json()["error"]
    assert live.get("/api/models").status_code == 404  # no retrain in this module yet
    for path in ("/api/analytics/rules", "/api/analytics/forecast"):
        assert live.get(path).status_code == 404 and "retrain" in live.get(path).json()["error"]
    for path, params in [
        ("/api/changes", {"limit": 0}),
        ("/api/changes", {"limit": "many"}),
        ("/api/transitions", {"from": "2018-13-01", "to": "2018-01-31"}),
        ("/api/transitions", {"from": "2018-02-01", "to": "2018-01-01"}),
        ("/api/transitions", {"from": "2018-02-01"}),
        ("/api/customers/abc", {}),  # shorter than a usable prefix
        ("/api/customers/abc/history", {}),
    ]:
        answer = live.get(path, params=params)
        assert answer.status_code == 422, (path, params, answer.text)
        assert answer.json()["error"], answer.text


def _calls(client: redis.Redis) -> Counter:
    """Calls per command since the server started (INFO commandstats)."""
    return Counter({name.removeprefix("cmdstat_"): v["calls"] for name, v in client.info("commandstats").items()})


def test_nothing_the_api_serves_writes_to_redis(live: Live) -> None:
    client = live.workers.redis
    live.workers.stop()  # no writer left: any write now would be the view's

    def state() -> dict[bytes, bytes | None]:  # every lasting key of the run, serialised
        keys = client.scan_iter(match=f"{live.settings.redis_prefix}:*")
        return {key: client.dump(key) for key in keys if client.ttl(key) == -1}  # leases expire by themselves

    before, calls = state(), _calls(client)
    for path in ("/", "/api/segments", "/api/segments/history", "/api/changes", "/api/health"):
        assert live.get(path).status_code == 200
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert httpx.request(method, live.url + "/api/segments", timeout=10).status_code == 405
    time.sleep(2 * live.settings.web_interval_s)  # a few snapshots read meanwhile
    used = {name for name, n in (_calls(client) - calls).items() if n}
    assert used, "the view read nothing"
    flags = {name: client.execute_command("COMMAND", "INFO", name)[name]["flags"] for name in used}
    writes = {name for name, f in flags.items() if "write" in f or "may-replicate" in f}
    assert writes == set(), writes
    assert state() == before


def test_a_token_is_required_beyond_localhost_and_then_on_every_request(live: Live) -> None:
    with pytest.raises(WebRefused, match="SEGSTREAM_WEB_TOKEN"):
        check_bind(live.settings.model_copy(update={"web_host": "0.0.0.0"}))
    done = subprocess.run(
        [sys.executable, "-m", "segstream", "web", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "SEGSTREAM_RUN_DIR": str(live.settings.run_dir)},
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "set SEGSTREAM_WEB_TOKEN" in done.stderr and len(done.stderr.strip().splitlines()) == 1

    secret = "s3cret-" + uuid.uuid4().hex
    settings = live.settings.model_copy(update={"web_token": SecretStr(secret), "web_host": "0.0.0.0"})
    check_bind(settings)  # with a token: allowed
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/segments").status_code == 401
        assert client.get("/api/segments", headers={"Authorization": "Bearer wrong"}).status_code == 401
        time.sleep(1.5)  # the first snapshot
        ok = client.get("/api/segments", headers={"Authorization": f"Bearer {secret}"})
        assert ok.status_code == 200
        page = client.get(f"/?token={secret}")  # a person opens the link once; the cookie does the rest
        assert page.status_code == 200 and "segstream_token" in page.headers["set-cookie"]
        assert "httponly" in page.headers["set-cookie"].lower()
        assert client.get("/api/health").status_code == 200  # the cookie
        bodies = [client.get(p).text for p in ("/api/segments", "/api/health", "/api/changes", "/openapi.json")]
    assert not any(secret in body for body in bodies)
    shown = subprocess.run(
        [sys.executable, "-m", "segstream", "config"], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "SEGSTREAM_WEB_TOKEN": secret},
    )  # fmt: skip
    assert shown.returncode == 0 and secret not in shown.stdout and '"web_token": "**********"' in shown.stdout


def test_the_openapi_document_in_docs_is_the_served_one(live: Live) -> None:
    served = live.get("/openapi.json").json()
    saved = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert served == saved, "regenerate it: python -m segstream web --openapi > docs/openapi.json"
    assert set(served["paths"]) == {
        "/api/segments",
        "/api/segments/history",
        "/api/transitions",
        "/api/changes",
        "/api/health",
        "/api/models",
        "/api/customers/{customer}",
        "/api/customers/{customer}/history",
        "/api/analytics/cohorts",
        "/api/analytics/weekday-hour",
        "/api/analytics/geography",
        "/api/analytics/segment-revenue",
        "/api/analytics/daily",
        "/api/analytics/rules",
        "/api/analytics/forecast",
        "/api/targeting",
    }


def test_after_a_retrain_the_page_shows_clv_by_segment_and_each_customers_scores(live: Live) -> None:
    report = retrain_once(live.settings)
    assert report.clv == "fitted", report.line()
    # independently: the scores the retrain wrote, grouped by the segments the profiles hold
    client, keys = live.workers.redis, live.workers.keys
    scores = {k.decode(): json.loads(v)["clv"] for k, v in client.hgetall(keys.scores(report.run)).items()}
    segments = {c: p.segment for c, p in live.workers.profiles().items()}
    grouped: dict[str, list[float]] = {}
    for customer, clv in scores.items():
        grouped.setdefault(segments[customer], []).append(clv)
    want = {s: [len(v), float(np.percentile(v, 50)), float(np.mean(v))] for s, v in grouped.items()}
    assert len(want) >= 3
    models = live.get("/api/models").json()
    assert models["clv"] == report.run and set(models["clv_by_segment"]) == set(want)
    with Browser() as browser:
        page = browser.open(live.url + "/")
        page.wait_for("!document.getElementById('clv-table').hidden")
        page.wait_for("document.getElementById('chart-clv').dataset.rendered === '1'")
        shown = json.loads(
            page.evaluate(
                "JSON.stringify(Object.fromEntries([...document.querySelectorAll('#clv-table tbody tr')]"
                ".map(r => [r.dataset.segment, [...r.cells].slice(1, 4)"
                ".map(c => Number(c.innerText.replace(/,/g, '')))])))"
            )
        )
        assert set(shown) == set(want)
        for segment, (customers, median, mean) in want.items():  # shown to the cent
            assert shown[segment][0] == customers, segment
            assert shown[segment][1:] == pytest.approx([median, mean], abs=0.006), segment
        assert f"model run {report.run}" in page.evaluate("document.getElementById('clv-run').innerText")
        # a customer's own scores in the lookup
        customer = max(scores, key=scores.get)
        page.evaluate(f"document.getElementById('customer').value = {customer!r}; 1")
        page.evaluate("document.getElementById('lookup').requestSubmit(); 1")
        page.wait_for(f"(document.getElementById('customer-profile') || {{}}).dataset?.customer === {customer!r}")
        clv_row = page.evaluate(
            "[...document.querySelectorAll('#customer-profile tr')].find(r => r.cells[0].innerText.startsWith('CLV'))"
            ".cells[1].innerText"
        )
        assert float(clv_row.split(",")[0]) == pytest.approx(scores[customer], abs=0.006)
        # the retrain's market basket rules and sales forecast, as the API serves them
        rules = live.get("/api/analytics/rules").json()
        assert rules["run"] == report.run and rules["orders"]["baskets"] > 0
        page.wait_for("!document.getElementById('rules').hidden")
        shown_rules = page.evaluate("document.querySelectorAll('#rules tbody tr[data-kind]').length")
        assert shown_rules == min(10, len(rules["orders"]["rules"])) + min(10, len(rules["months"]["rules"]))
        sales = live.get("/api/analytics/forecast").json()
        assert sales["run"] == report.run and len(sales["orders"]) == live.settings.forecast_horizon_days
        assert all(d["lower"] <= d["mean"] <= d["upper"] for d in sales["orders"] + sales["revenue"])
        page.wait_for("(document.getElementById('forecast-run').innerText || '').includes('forecast of retrain run')")
        drawn = page.evaluate(
            "echarts.getInstanceByDom(document.getElementById('chart-daily')).getOption().series.map(s => s.name)"
        )
        assert drawn == ["purchases", "lower", "90% interval", "forecast"]
        env = {**settings_env(live.settings), "PATH": "/usr/bin:/bin"}
        for view, want in (("rules", rules), ("forecast", sales)):
            shown = subprocess.run(
                [sys.executable, "-m", "segstream", "analytics", view, "--json"], capture_output=True, text=True,
                timeout=60, env=env,
            )  # fmt: skip
            assert shown.returncode == 0 and json.loads(shown.stdout) == want, shown.stderr
        text = subprocess.run(
            [sys.executable, "-m", "segstream", "analytics", "forecast"], capture_output=True, text=True, timeout=60,
            env=env,
        ).stdout  # fmt: skip
        assert f"sales forecast of retrain run {report.run}" in text and sales["orders"][0]["day"] in text
        # the uplift model's targeting list, as the API serves it, and a customer's uplift in the lookup
        assert report.uplift.startswith("fitted"), report.line()
        targeting = live.get("/api/targeting").json()
        assert targeting["run"] == report.run and targeting["targets"]
        page.wait_for("!document.getElementById('targeting').hidden")
        listed = page.evaluate("[...document.querySelectorAll('#targeting tbody tr')].map(r => r.dataset.customer)")
        assert listed == [t["customer_unique_id"] for t in targeting["targets"][:15]]
        assert f"{targeting['trained_on']['sends']:,} sends" in page.evaluate(
            "document.getElementById('targeting-summary').innerText"
        )
        top = targeting["targets"][0]
        assert live.get(f"/api/customers/{top['customer_unique_id']}").json()["uplift"]["uplift"] == top["uplift"]
        page.evaluate(f"document.getElementById('customer').value = {top['customer_unique_id']!r}; 1")
        page.evaluate("document.getElementById('lookup').requestSubmit(); 1")
        page.wait_for(
            f"(document.getElementById('customer-profile') || {{}}).dataset?.customer === {top['customer_unique_id']!r}"
        )
        uplift_row = page.evaluate(
            "[...document.querySelectorAll('#customer-profile tr')]"
            ".find(r => r.cells[0].innerText.startsWith('uplift')).cells[1].innerText"
        )
        assert uplift_row.startswith(f"+{top['uplift']:.3f}")
        shown = subprocess.run(
            [sys.executable, "-m", "segstream", "analytics", "targeting"], capture_output=True, text=True, timeout=60,
            env=env,
        )  # fmt: skip
        assert shown.returncode == 0 and top["customer_unique_id"] in shown.stdout, shown.stderr
        assert page.errors == [] and page.evaluate("document.body.dataset.errors") == ""
        page.screenshot(ARTIFACTS / "web-view-with-models.png")


def test_a_workers_faust_web_server_binds_this_machine_only_unless_told() -> None:
    from streams.app import create_app as create_worker_app

    assert create_worker_app(Settings()).conf.web_enabled is False  # off unless a port is given
    port = free_port()
    app = create_worker_app(Settings(worker_web_port=port))
    assert app.conf.web_enabled and app.conf.web_port == port and app.conf.web_bind == "127.0.0.1"
    assert create_worker_app(Settings(worker_web_port=port, worker_web_host="0.0.0.0")).conf.web_bind == "0.0.0.0"
