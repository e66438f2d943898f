"""The retrain job against the real Redis (and, for the replay tests, the real broker and a worker).

- the CLV summary built from the profiles the stream wrote equals lifetimes' own summary of the
  same transactions;
- a run writes finite scores and recommendations, switches readers to them, and records itself
  in the registry;
- failed fits (too few repeat buyers, no convergence, an empty matrix) keep the model in force,
  say why in the log, and write no NaN;
- a retrain while a replay runs: the stream keeps going, readers never see a mixed version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from click.testing import CliRunner
from lifetimes.utils import summary_data_from_transaction_data

from models.clv import rfm_summary
from models.population import read_population
from models.registry import Registry
from models.retrain import RetrainBusy, current_models, retrain_every, retrain_once, watermark
from replay.olist import load_olist
from replay.producer import replay_history
from replay.synth import SynthConfig, synthesize
from segstream.cli import cli
from segstream.keys import Keys
from segstream.scripts import lua
from segstream.settings import Settings
from streams.profile import Profile
from streams.readmodel import customer_models
from tests import oracle
from tests.conftest import Workers, free_port, profile_key, save_profiles, set_watermarks

CUTOFF = pd.Timestamp("2018-06-30 18:00", tz="UTC").timestamp()
DAY = 86_400.0


@pytest.fixture
def store(services: Settings, tmp_path: Path) -> Settings:
    """The session's Redis under a prefix of this test's own, and a registry in tmp_path."""
    return services.model_copy(update={"redis_prefix": f"rt{uuid.uuid4().hex[:8]}", "models_dir": tmp_path / "models"})


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_address)


def _save(settings: Settings, profiles: list[Profile]) -> None:
    save_profiles(_client(settings), Keys(settings.redis_prefix), profiles)


def _population(n: int, repeat_share: float, seed: int = 4, with_products: bool = True) -> list[Profile]:
    """Customers in 4 taste groups (each buys its own category's products), some coming back."""
    rng = np.random.default_rng(seed)
    profiles = []
    for i in range(n):
        group = i % 4
        first = CUTOFF - rng.uniform(30, 500) * DAY
        moments = [first]
        if rng.random() < repeat_share:
            moments += sorted(rng.uniform(first + DAY, CUTOFF, int(rng.integers(1, 5))))
        purchases: dict[str, list] = {}
        for moment in moments:
            day = pd.Timestamp(moment, unit="s").strftime("%Y-%m-%d")
            products = [f"g{group}-p{k}" for k in rng.choice(12, 2, replace=False)] if with_products else []
            spent, old_products, old_categories = purchases.get(day, [0.0, [], []])
            purchases[day] = [
                round(spent + float(rng.gamma(4.0, 25.0)), 2),
                old_products + products,
                old_categories + [f"cat{group}"] * len(products),
            ]
        days = sorted(purchases)
        reviews = int(rng.integers(0, 3))
        profiles.append(
            Profile(
                f"c{i:05d}",
                first_purchase=min(moments),
                last_purchase=max(moments),
                orders=len(moments),
                monetary=round(sum(v[0] for v in purchases.values()), 2),
                purchases={d: purchases[d] for d in days},
                reviews=reviews,
                review_sum=reviews * int(rng.integers(1, 6)),
                segment="Champions" if len(days) > 3 else "Promising",
            )
        )
    return profiles


def _all_finite(client: redis.Redis, key: str) -> int:
    values = [json.loads(v) for v in client.hvals(key)]
    assert all(math.isfinite(x) for v in values for x in v.values()), "a non-finite score was written"
    return len(values)


def test_a_run_writes_scores_and_lists_and_switches_readers(store: Settings) -> None:
    profiles = _population(600, repeat_share=0.3)
    _save(store, [*profiles, Profile("reviews-only", reviews=1, review_sum=4)])
    report = retrain_once(store, cutoff=CUTOFF)
    assert (report.clv, report.recommendations) == ("fitted", "fitted")
    assert report.customers == 601 and report.scored_customers == 600
    client, keys = _client(store), Keys(store.redis_prefix)
    assert current_models(client, keys)["clv"] == report.run == current_models(client, keys)["recommendations"]
    assert _all_finite(client, keys.scores(report.run)) == 600  # every buyer, not the reviews-only one

    found = customer_models(store, "c00001")
    assert found is not None and found.models["run"] == report.run
    assert 0 < found.scores["p_alive"] <= 1 and found.scores["clv"] >= 0
    assert len(found.recommendations["items"]) == store.recs_top_n
    bought = set(profiles[1].products)
    assert not bought & set(found.recommendations["items"])
    assert found.recommendations["strategy"] in {"als", "top_rated", "top_rated+als"}
    newcomer = customer_models(store, "reviews-only")  # no purchases: this month's popular products
    assert newcomer.scores is None and newcomer.recommendations["strategy"] in {"popular_month", "popular"}

    meta = Registry(store.models_path).show(report.run)
    assert {"meta.json", "clv.json", "als.npz"} <= set(meta["files"])
    assert meta["clv_params"]["bgnbd"].keys() == {"r", "alpha", "a", "b"}
    with np.load(store.models_path / f"run-{report.run:06d}" / "als.npz", allow_pickle=False) as als:
        assert als["item_factors"].shape == (report.products, store.als_factors)
    assert report.products == 48 and report.categories == 4


def test_big_spenders_get_top_rated_products_of_their_categories(store: Settings) -> None:
    profiles = _population(600, repeat_share=0.3)
    for p in profiles:  # every buyer of group 1 rates 5, the others 1-3: group 1's products rate best
        group = int(p.customer_unique_id[1:]) % 4
        p.reviews, p.review_sum = 1, 5 if group == 1 else 1 + group % 3
        p.last_purchase = p.last_purchase or CUTOFF
    _save(store, profiles)
    report = retrain_once(store, cutoff=CUTOFF)
    assert report.strategies.get("top_rated", 0) + report.strategies.get("top_rated+als", 0) > 0
    spender = max((p for p in profiles if int(p.customer_unique_id[1:]) % 4 == 1), key=lambda p: p.monetary)
    recs = customer_models(store, spender.customer_unique_id).recommendations
    assert recs["strategy"].startswith("top_rated")
    unbought = 12 - len(set(spender.products))  # of their category's 12 products
    head = recs["items"][: min(unbought, 10)]
    assert len(head) == min(unbought, 10) and all(item.startswith("g1-") for item in head)  # their category first
    assert not set(recs["items"]) & set(spender.products)


def test_the_strategy_map_serves_customer2vec_and_the_default_list_to_the_segments_it_names(store: Settings) -> None:
    profiles = _population(600, repeat_share=0.3)  # Champions: 4+ purchase days; Promising: the rest
    _save(store, profiles)
    mapped = store.model_copy(update={"recs_strategy_map": {"Champions": "customer2vec", "Promising": "als"}})
    report = retrain_once(mapped, cutoff=CUTOFF)
    champions = [p for p in profiles if p.segment == "Champions"]
    assert champions and report.strategies["customer2vec"] == len(champions), report.strategies
    for p in champions:
        recs = customer_models(mapped, p.customer_unique_id).recommendations
        assert recs["strategy"] == "customer2vec" and len(recs["items"]) == store.recs_top_n
        assert not set(recs["items"]) & set(p.products)
        group = int(p.customer_unique_id[1:]) % 4  # their own taste group's products come first
        assert recs["items"][0].startswith(f"g{group}-"), recs
    promising = next(p for p in profiles if p.segment == "Promising")
    assert customer_models(mapped, promising.customer_unique_id).recommendations["strategy"] == "als"
    files = set(Registry(store.models_path).show(report.run)["files"])
    assert {"customer2vec.npz", "customer2vec.json"} <= files
    with np.load(store.models_path / f"run-{report.run:06d}" / "customer2vec.npz", allow_pickle=False) as c2v:
        assert c2v["product_vectors"].shape[0] == len(c2v["products"]) == report.products
    # the default list for a whole segment
    popular = store.model_copy(
        update={"recs_strategy_map": {"Champions": "popular_month", "Promising": "popular_month"}}
    )
    report = retrain_once(popular, cutoff=CUTOFF)
    assert set(report.strategies) <= {"popular_month (default)", "popular (default)"}, report.strategies
    assert customer_models(popular, champions[0].customer_unique_id).recommendations["strategy"].startswith("popular")


def test_failed_fits_keep_the_model_in_force(store: Settings, caplog: pytest.LogCaptureFixture) -> None:
    client, keys = _client(store), Keys(store.redis_prefix)
    profiles = _population(600, repeat_share=0.3)
    _save(store, profiles)
    first = retrain_once(store, cutoff=CUTOFF)
    scores_before = client.hgetall(keys.scores(first.run))

    # 1. too few repeat buyers: everyone's history cut to their first purchase day
    for p in profiles:
        first_day = min(p.purchases)
        p.purchases = {first_day: p.purchases[first_day]}
    _save(store, profiles)
    caplog.set_level(logging.WARNING, logger="models.retrain")
    second = retrain_once(store, cutoff=CUTOFF)
    assert second.clv.startswith(f"kept run {first.run}") and "repeat buyers" in second.clv
    assert "CLV not refitted" in caplog.text and "repeat buyers" in caplog.text
    models = current_models(client, keys)
    assert models["clv"] == first.run and models["recommendations"] == second.run
    assert not client.exists(keys.scores(second.run))  # nothing written for the failed fit
    assert client.hgetall(keys.scores(first.run)) == scores_before  # the previous scores, whole
    assert customer_models(store, "c00001").scores == json.loads(scores_before[b"c00001"])

    # 2. a fit that does not converge: 50 customers who bought on the same 31 days, the last one
    # the cutoff's day, no penalty
    degenerate = []
    for i in range(50):
        days = {
            pd.Timestamp(CUTOFF - k * 16 * DAY, unit="s").strftime("%Y-%m-%d"): [10.0, ["p"], ["c"]] for k in range(31)
        }
        degenerate.append(Profile(f"d{i}", purchases=days))
    _save(store, degenerate)
    client.unlink(*[profile_key(keys, p.customer_unique_id) for p in profiles])
    caplog.clear()
    third = retrain_once(store.model_copy(update={"clv_penalizer": 0.0, "clv_fallback_penalizer": 0.0}), cutoff=CUTOFF)
    assert "did not converge" in third.clv and "did not converge" in caplog.text
    assert current_models(client, keys)["clv"] == first.run and not client.exists(keys.scores(third.run))

    # 3. an empty matrix: buyers whose purchases name no product
    client.unlink(*[profile_key(keys, p.customer_unique_id) for p in degenerate])
    _save(store, _population(100, repeat_share=0.3, with_products=False))
    caplog.clear()
    fourth = retrain_once(store, cutoff=CUTOFF)
    assert fourth.recommendations.startswith(f"kept run {third.run}") and "no purchases" in caplog.text
    assert current_models(client, keys)["recommendations"] == third.run
    assert not client.exists(keys.recommendations(fourth.run))
    for run in {current_models(client, keys)["clv"], fourth.run}:
        if client.exists(keys.scores(run)):
            _all_finite(client, keys.scores(run))
    runs = [meta["run"] for meta in Registry(store.models_path).runs()]
    assert runs == [first.run, second.run, third.run, fourth.run]


def test_command_line_and_registry(store: Settings) -> None:
    _save(store, _population(300, repeat_share=0.3))
    env = {
        "SEGSTREAM_REDIS_URL": store.redis_address,
        "SEGSTREAM_REDIS_PREFIX": store.redis_prefix,
        "SEGSTREAM_MODELS_DIR": str(store.models_path),
    }
    runner = CliRunner()
    done = runner.invoke(cli, ["retrain", "--once", "--cutoff", "2018-06-30T18:00"], env=env)
    assert done.exit_code == 0, done.output
    assert "run 1 at 2018-06-30T18:00:00+00:00: 300 customers, 48 products" in done.output
    listed = runner.invoke(cli, ["models", "list"], env=env).output
    assert re.search(r"^ +1  2018-06-30T18:00:00\+00:00 +300 +48 ", listed, re.MULTILINE), listed
    assert re.search(r"^ +clv: fitted$", listed, re.MULTILINE) and "thresholds: published version" in listed
    shown = json.loads(runner.invoke(cli, ["models", "show", "1"], env=env).output)
    assert shown["clv"] == "fitted" and shown["clv_params"]["bgnbd"]["r"] > 0
    assert json.loads(runner.invoke(cli, ["models", "show", "run-000001"], env=env).output) == shown
    assert runner.invoke(cli, ["models", "show", "9"], env=env).exit_code == 1
    assert runner.invoke(cli, ["models", "show", "latest"], env=env).exit_code == 2
    profile = runner.invoke(cli, ["profile", "c00002"], env=env).output
    assert re.search(r"^clv +[\d,]+\.\d\d BRL over the next 90 days \(CLV run 1\)$", profile, re.MULTILINE), profile
    assert "p_alive_at_cutoff " in profile and re.search(r"^ +1\. \S+  \(\S+\)$", profile, re.MULTILINE), profile
    assert re.search(r"^last purchase +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", profile, re.MULTILINE), profile
    short = runner.invoke(cli, ["profile", "c0000"], env=env)  # c00000 .. c00009: ambiguous
    assert short.exit_code == 1 and "starts several customer ids" in short.output
    assert runner.invoke(cli, ["profile", "c00002"], env=env).output == profile
    both = runner.invoke(cli, ["retrain", "--once", "--every", "30d"], env=env)
    assert both.exit_code == 2 and "exactly one of --once or --every" in both.output
    assert "30d, 12h" in runner.invoke(cli, ["retrain", "--every", "soon"], env=env).output


def test_event_time_cadence_runs_at_the_boundaries(store: Settings) -> None:
    """--every 30d: a run when the watermark passes each multiple of 30 days, at that boundary."""
    _save(store, _population(300, repeat_share=0.3))
    client, keys = _client(store), Keys(store.redis_prefix)
    every = 30 * DAY
    start = (CUTOFF // every) * every + 5 * DAY  # 5 days after a boundary
    set_watermarks(client, keys, {0: start, 1: start + 40 * DAY})  # the lowest counts
    cutoffs: list[str] = []
    thread = threading.Thread(
        target=retrain_every,
        args=(store, every),
        kwargs={"poll_s": 0.05, "runs": 2, "on_report": lambda r: cutoffs.append(r.cutoff)},
    )
    thread.start()
    time.sleep(1.0)
    assert cutoffs == []  # no boundary passed yet
    set_watermarks(client, keys, {0: start + 26 * DAY})  # past the next boundary (+25 days)
    deadline = time.monotonic() + 30
    while len(cutoffs) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    set_watermarks(client, keys, {0: start + 90 * DAY, 1: start + 90 * DAY})  # over two: one run
    thread.join(timeout=60)
    first, latest = start - 5 * DAY + every, start - 5 * DAY + 3 * every
    assert cutoffs == [pd.Timestamp(t, unit="s", tz="UTC").isoformat() for t in (first, latest)]


# ---- with the stream -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repeat_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("retrain-history")
    synthesize(SynthConfig(orders=3_000, seed=31, repeat_share=0.3), out)
    return out


@pytest.mark.integration
def test_summary_from_redis_equals_lifetimes(workers: Workers, repeat_history: Path) -> None:
    workers.start()
    summary = asyncio.run(replay_history(load_olist(repeat_history), workers.settings))
    workers.wait_for_end(summary)
    cutoff = pd.Timestamp(summary.last_event_time).timestamp() - 20 * DAY  # leaves later purchases out
    population = read_population(workers.redis, workers.keys)
    got = rfm_summary(zip(population.customers, population.purchases, strict=True), cutoff).sort_index()

    purchases = oracle.load_facts(repeat_history)["purchases"]
    transactions = purchases.assign(date=pd.to_datetime(purchases["time"], unit="s"))
    want = summary_data_from_transaction_data(
        transactions,
        "customer_unique_id",
        "date",
        monetary_value_col="value",
        observation_period_end=pd.Timestamp(cutoff, unit="s"),
    ).sort_index()
    assert (want["frequency"] > 0).sum() > 200  # plenty of repeat buyers: the comparison means something
    assert list(got.index) == list(want.index)
    pd.testing.assert_frame_equal(got, want[got.columns], check_names=False, check_dtype=False, atol=0.01)


@pytest.mark.integration
def test_retrain_while_a_replay_runs(workers: Workers, repeat_history: Path) -> None:
    workers.start()
    settings = workers.settings.model_copy(update={"models_dir": workers.logs / "models", "clv_min_repeat_buyers": 5})
    history = load_olist(repeat_history)
    result: dict = {}
    replay = threading.Thread(
        target=lambda: result.setdefault(
            "summary", asyncio.run(replay_history(history, settings, speed=25 * 86_400))
        )  # ~30 s
    )
    replay.start()
    client, keys = workers.redis, workers.keys
    deadline = time.monotonic() + 60
    while (workers.counters()["applied"] < 3_000 or watermark(client, keys) is None) and time.monotonic() < deadline:
        time.sleep(0.1)

    # readers poll while the job runs twice: each answer names one run for both models
    seen, stop = [], threading.Event()
    customers = [k.decode().rsplit(":", 1)[1] for k in client.scan_iter(match=keys.profiles_pattern, count=500)][:50]

    def read() -> None:
        reader = redis.Redis.from_url(settings.redis_address)
        while not stop.is_set():
            for customer in customers:
                found = customer_models(settings, customer, reader)
                if found is not None:
                    seen.append((found.models["run"], found.recommendations and found.recommendations["run"]))

    reader = threading.Thread(target=read)
    reader.start()
    rates = []
    for _ in range(2):
        applied, started = workers.counters()["applied"], time.monotonic()
        report = retrain_once(settings)
        rates.append((workers.counters()["applied"] - applied) / (time.monotonic() - started))
        assert report.recommendations == "fitted"
    stop.set()
    reader.join()
    replay.join(timeout=120)
    workers.wait_for_end(result["summary"], timeout_s=120)

    print(f"events/s applied by the stream during each retrain: {[round(r) for r in rates]}")
    assert all(rate > 0 for rate in rates)  # the stream kept going while the job ran
    assert seen and {run for run, _ in seen} <= {report.run - 1, report.run}
    assert all(recs_run == run for run, recs_run in seen if recs_run is not None)  # never a mix
    counters = workers.counters()
    assert counters["applied"] == result["summary"].events_total


def test_wall_clock_cadence_runs_at_the_watermark(store: Settings) -> None:
    _save(store, _population(200, repeat_share=0.3))
    client, keys = _client(store), Keys(store.redis_prefix)
    set_watermarks(client, keys, {0: CUTOFF, 1: CUTOFF + DAY})
    reports: list = []
    started = time.monotonic()
    made = retrain_every(store, 0.5, clock="wall", poll_s=0.05, runs=2, on_report=reports.append)
    assert made == 2 and time.monotonic() - started >= 0.5  # the second run waited for its turn
    assert [r.cutoff for r in reports] == [pd.Timestamp(CUTOFF, unit="s", tz="UTC").isoformat()] * 2
    assert current_models(client, keys)["run"] == reports[-1].run


def test_a_second_run_at_once_is_refused(store: Settings) -> None:
    _save(store, _population(50, repeat_share=0.3))
    client, keys = _client(store), Keys(store.redis_prefix)
    client.set(keys.retrain_lock, "elsewhere:123", ex=60)
    with pytest.raises(RetrainBusy, match="elsewhere:123"):
        retrain_once(store, cutoff=CUTOFF)
    assert current_models(client, keys) == {}  # nothing switched
    client.delete(keys.retrain_lock)
    assert retrain_once(store, cutoff=CUTOFF).run == 1  # the refused one took no run number


def test_retrain_without_redis_is_one_line(tmp_path: Path) -> None:
    env = {"SEGSTREAM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "SEGSTREAM_MODELS_DIR": str(tmp_path)}
    done = CliRunner().invoke(cli, ["retrain", "--once", "--cutoff", "2018-06-30"], env=env)
    assert done.exit_code == 1 and "is not reachable" in done.output and "Traceback" not in done.output


def test_the_retrain_lock_is_renewed_while_a_run_lasts_and_lost_when_it_stops(
    store: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import models.retrain as retrain

    _save(store, _population(50, repeat_share=0.3))
    client, keys = _client(store), Keys(store.redis_prefix)
    monkeypatch.setattr(retrain, "LOCK_SECONDS", 0.6)  # renewed every 0.2 s
    real_run = retrain._run

    def slow_run(*args, **kwargs):  # a run three times longer than the lock's TTL
        time.sleep(1.8)
        assert client.pttl(keys.retrain_lock) > 0  # still held: renewed
        with pytest.raises(RetrainBusy):
            retrain_once(store, cutoff=CUTOFF)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(retrain, "_run", slow_run)
    assert retrain_once(store, cutoff=CUTOFF).run == 1
    assert client.get(keys.retrain_lock) is None  # released
    # the renewal only ever extends its own holder's lock (one atomic step, not GET then PEXPIRE)
    renew = lua("segstream", "renew_lock.lua")
    client.set(keys.retrain_lock, "other:1", px=10_000)
    assert client.eval(renew, 1, keys.retrain_lock, "me:2", 60_000) == 0 and client.pttl(keys.retrain_lock) <= 10_000
    assert client.eval(renew, 1, keys.retrain_lock, "other:1", 60_000) == 1 and client.pttl(keys.retrain_lock) > 10_000
