"""Campaigns and uplift: the event and its schema, campaign logs, the planted truth, the model, and
the stream and retrain against the real services."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from models.clv import ClvModel, rfm_summary
from models.retrain import campaign_sends, retrain_once
from models.uplift import FEATURES, UpliftModel, compare_targeting, fit_targeting, parse_sends, training_table
from replay.campaigns import CampaignMapping, load_campaigns
from replay.history import LoadReport
from replay.producer import replay_history, run_replay
from replay.sources import load_source
from replay.synth import PLANTED, SynthConfig, synthesize
from segstream.schemas import CampaignSent, decode_event, encode_event
from segstream.scoring import DAY, RfmScorer, segment_for
from streams.readmodel import customer_models, models_lines
from tests import oracle
from tests.conftest import Workers

ROOT = Path(__file__).parents[1]
INPUT_SCHEMA = json.loads((ROOT / "docs" / "events.schema.json").read_text())["input"]
WINDOW = 30


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 orders with 12 planted campaigns (about 39,000 sends)."""
    out = tmp_path_factory.mktemp("planted")
    synthesize(SynthConfig(orders=20_000, seed=1, campaigns=12), out)
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 orders with 8 campaigns reaching half the earlier buyers: a stream test's size."""
    out = tmp_path_factory.mktemp("campaigns-small")
    synthesize(SynthConfig(orders=3_000, seed=5, campaigns=8, campaign_reach=0.5), out)
    return out


# ---- the event, the log ----------------------------------------------------------------------------


def test_campaign_sends_validate_against_the_published_schema(small: Path) -> None:
    history = load_source("olist", small)
    sends = [e for e in history.events() if isinstance(e, CampaignSent)]
    assert len(sends) == len(pd.read_csv(small / "campaigns.csv")) > 500
    validator = jsonschema.Draft202012Validator(INPUT_SCHEMA)
    for event in sends[:300]:
        payload = json.loads(encode_event(event))
        assert not list(validator.iter_errors(payload)), payload
        assert decode_event(encode_event(event)) == event
    bad = {**json.loads(encode_event(sends[0])), "group": "maybe"}
    assert list(validator.iter_errors(bad))
    with pytest.raises(ValidationError):
        decode_event(json.dumps(bad))
    assert {e.group for e in sends} == {"treatment", "control"}
    assert sends[0].event_id == f"campaigns:campaign:{sends[0].campaign_id}:{sends[0].customer_unique_id}"


def test_a_campaign_log_with_a_mapping_loads_every_row_or_says_why(tmp_path: Path) -> None:
    log = tmp_path / "sends.csv"
    log.write_text(
        "cust;camp;when;arm;promo\n"
        "u1;spring;02/03/2018 10:00;B;10% off\n"
        "u2;spring;02/03/2018 10:00;A;10% off\n"
        "u3;spring;2018-03-02;B;\n"  # not the format
        "u4;spring;02/03/2018 10:00;C;\n"  # neither group
        ";spring;02/03/2018 10:00;B;\n"
        "u1;spring;01/03/2018 09:00;A;early\n"  # named again, earlier: this one is kept
        "u1;summer;01/06/2018 09:00;B;\n"
    )
    mapping = CampaignMapping(
        customer="cust", campaign="camp", time="when", time_format="%d/%m/%Y %H:%M", group="arm",
        treatment="B", control="A", offer="promo", delimiter=";", source="shop",
    )  # fmt: skip
    report = LoadReport()
    frame = load_campaigns(log, mapping, report)
    assert frame[["campaign_id", "customer_unique_id", "group", "offer"]].values.tolist() == [
        ["spring", "u1", "control", "early"],
        ["spring", "u2", "control", "10% off"],
        ["summer", "u1", "treatment", ""],
    ]
    assert frame["event_time"].iloc[0] == pd.Timestamp("2018-03-01 09:00")
    assert report.counts() == {
        ("sends.csv", "bad time"): 1,
        ("sends.csv", "group neither 'B' nor 'A'"): 1,
        ("sends.csv", "no customer id"): 1,
        ("sends.csv", "customer named again in the campaign (the earliest send kept)"): 1,
    }
    assert report.rows_read["sends.csv"] == 7


def test_the_mapping_file_names_the_campaign_columns_and_bad_ones_are_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner, Result

    from segstream.cli import cli

    log = tmp_path / "sends.csv"
    log.write_text("who,c,t,g\n00001,c1,1997-02-01,yes\n00002,c1,1997-02-01,no\n")
    mapping = tmp_path / "map.toml"
    fixtures = ROOT / "tests" / "fixtures" / "transactions"
    campaigns = (
        '[campaigns]\ncustomer = "who"\ncampaign = "c"\ntime = "t"\ngroup = "g"\ntreatment = "yes"\ncontrol = "no"\n'
    )
    mapping.write_text((fixtures / "cdnow.toml").read_text() + "\n" + campaigns + 'offer = "c"\n')

    def inspect(log: Path) -> Result:
        arguments = ["--source", "transactions", "--data", str(fixtures / "cdnow.txt"), "--mapping", str(mapping)]
        return CliRunner().invoke(cli, ["inspect", *arguments, "--campaigns", str(log)])

    result = inspect(log)
    assert result.exit_code == 0, result.output
    assert "         2  campaign_sent" in result.output
    (tmp_path / "bad.csv").write_text("who,c,g\n00001,c1,yes\n")
    result = inspect(tmp_path / "bad.csv")
    assert result.exit_code != 0 and "no column 't'" in result.output and "Traceback" not in result.output


# ---- the planted truth and the model -------------------------------------------------------------------


def test_the_generator_plants_the_documented_responses(planted: Path) -> None:
    """Per planted type and group, the observed response rate in the window is the planted one
    plus what the base history buys anyway (a few percent), never the other way round."""
    table = _planted_table(planted)
    rates = table.groupby(["planted", "treated"])["responded"].mean()
    for kind, (p_treated, p_control) in PLANTED.items():
        for treated, planted_rate in ((True, p_treated), (False, p_control)):
            assert planted_rate - 0.02 < rates[(kind, treated)] < planted_rate + 0.06, (kind, treated, rates)
    shares = table["planted"].value_counts(normalize=True)
    assert 0.1 < shares["persuadable"] < 0.25 and shares["sleeping_dog"] > 0.05
    assert abs(table["treated"].mean() - 0.5) < 0.02


def test_the_training_table_equals_pandas_and_uses_nothing_at_or_after_the_send_day(planted: Path) -> None:
    cutoff = pd.Timestamp("2018-08-01", tz="UTC").timestamp()  # some windows still open: left out
    want = oracle.uplift_table(planted, WINDOW, cutoff)
    history = load_source("olist", planted)
    purchases: dict[str, dict[str, list]] = {}
    for event in history.events():
        if event.event_type == "order_placed":
            day = event.event_time.strftime("%Y-%m-%d")
            days = purchases.setdefault(event.customer_unique_id, {})
            days[day] = [round(days.get(day, [0.0])[0] + event.payment_total, 2), [], []]
    sends = history.campaigns.rename(columns={"customer_unique_id": "customer"})
    sends["sent"] = (sends["event_time"] - pd.Timestamp(0)).dt.total_seconds()
    got = training_table(sends, purchases, WINDOW, cutoff)
    got = got.rename(columns={"customer": "customer_unique_id"}).sort_values(["campaign_id", "customer_unique_id"])
    assert len(got) == len(want) and 0 < len(got) < len(sends)
    pd.testing.assert_frame_equal(got.reset_index(drop=True)[want.columns], want, check_dtype=False, atol=0.011)


def _planted_table(planted: Path) -> pd.DataFrame:
    """The pandas training table of every send, with each send's planted type beside it."""
    table = oracle.uplift_table(planted, WINDOW, 2e9)
    sends = pd.read_csv(planted / "campaigns.csv", dtype=str).set_index(["campaign_id", "customer_unique_id"])
    table["planted"] = sends.loc[
        list(zip(table["campaign_id"], table["customer_unique_id"], strict=True)), "planted"
    ].to_numpy()
    return table


def _purchases(facts: pd.DataFrame) -> dict[str, dict[str, list]]:
    """The oracle's purchases as the profiles keep them: customer -> UTC day -> [spend, [], []]."""
    facts = facts.assign(day=pd.to_datetime(facts["time"], unit="s").dt.strftime("%Y-%m-%d"))
    return {
        c: {d: [round(v, 2), [], []] for d, v in g.groupby("day")["value"].sum().items()}
        for c, g in facts.groupby("customer_unique_id")
    }


def _planted_split(planted: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = _planted_table(planted)
    return table[table["campaign_id"] <= "c08"], table[table["campaign_id"] > "c08"]


def test_planted_uplift_is_recovered_and_beats_p_alive_and_champions(planted: Path) -> None:
    """Fitted on campaigns 1-8, scored on the sends of campaigns 9-12 (later customers and times)."""
    train, test = _planted_split(planted)
    features = list(FEATURES)
    model = UpliftModel().fit(train[features].to_numpy(), train["treated"].to_numpy(), train["responded"].to_numpy())
    uplift = model.predict(test[features].to_numpy())[2]
    # P(alive) as of each send: BG/NBD fitted on the purchases before the first test campaign's day
    facts = oracle.load_facts(planted)["purchases"]
    first_send = float(test["send_day"].min()) * DAY
    summary = rfm_summary(_purchases(facts[facts["time"] < first_send]).items(), first_send)
    p_alive = ClvModel(min_repeat_buyers=5).fit(summary).score(summary)["p_alive"]
    scorer = RfmScorer()
    champions = [
        segment_for(*scorer.score_one(r, int(f), m)) == "Champions" if f else False
        for r, f, m in zip(test["days_since_last"], test["purchase_days"], test["monetary"], strict=True)
    ]
    treated, responded = test["treated"].to_numpy(), test["responded"].to_numpy()
    truth = (test["planted"] == "persuadable").to_numpy()
    scores = {
        "uplift": uplift,
        "p_alive": test["customer_unique_id"].map(p_alive).fillna(0.0).to_numpy(),
        "champions": np.array(champions, dtype=float),
        "planted persuadable": truth.astype(float),
        "planted uplift": test["planted"].map({k: t - c for k, (t, c) in PLANTED.items()}).to_numpy(),
    }
    got = compare_targeting(treated, responded, scores, truth=truth)
    shuffled = [
        compare_targeting(treated, responded, {"s": np.random.default_rng(seed).permutation(uplift)})["s"][
            "qini_coefficient"
        ]
        for seed in range(10)
    ]
    threshold = 0.005  # about half the model's measured coefficient, ten times the shuffles' largest
    print(json.dumps(got, indent=1), max(shuffled))
    assert got["uplift"]["qini_coefficient"] > threshold
    assert max(abs(q) for q in shuffled) < threshold
    assert abs(got["random"]["qini_coefficient"]) < threshold
    assert got["uplift"]["qini_coefficient"] > got["p_alive"]["qini_coefficient"] + 0.003
    assert got["uplift"]["qini_coefficient"] > got["champions"]["qini_coefficient"] + 0.003
    # near the best any score can do here: the planted uplift itself (measured: 0.0103 against 0.0097: it ranks within
    # the planted types too, where the planted score ties)
    assert got["uplift"]["qini_coefficient"] > 0.8 * got["planted uplift"]["qini_coefficient"]
    assert got["uplift"]["precision_at_persuadable"] > 0.7  # measured 0.93; random would be the share, ~0.16


# ---- against the real services ---------------------------------------------------------------------------


@pytest.mark.integration
def test_sends_stream_into_redis_once_and_the_retrain_targets_from_them(workers: Workers, small: Path) -> None:
    workers.start()
    settings = workers.settings.model_copy(update={"models_dir": workers.logs / "models", "uplift_min_sends": 100})
    history = load_source("olist", small)
    first = asyncio.run(replay_history(history, settings))
    assert settings.topic_campaigns in first.topics and first.topic_partitions == 3 * settings.topic_partitions
    workers.wait_for_end(first)
    again = asyncio.run(replay_history(history, settings, restart=True))  # every send delivered twice
    workers.wait_for_end(again)
    # a malformed send on the campaigns topic: dead-lettered with its reason
    bad = {**json.loads(encode_event(next(e for e in history.events() if isinstance(e, CampaignSent)))), "group": "?"}

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        await producer.send_and_wait(settings.topic_campaigns, json.dumps(bad).encode(), key=b"x", partition=0)
        await producer.stop()

    asyncio.run(produce())
    client, keys = workers.redis, workers.keys
    log = pd.read_csv(small / "campaigns.csv", dtype=str)
    sent = (pd.to_datetime(log["sent_at"]) - pd.Timestamp(0)).dt.total_seconds()
    want = {
        f"campaigns:campaign:{c}:{u}": f"{c}\t{u}\t{s!r}\t{g}\t{o}"
        for c, u, s, g, o in zip(
            log["campaign_id"], log["customer_unique_id"], sent, log["group"], log["offer"], strict=True
        )
    }
    got = {k.decode(): v.decode() for k, v in campaign_sends(client, keys).items()}
    assert got == want
    index = workers.summed("campaigns")
    assert index == {f"{c}\t{g}": n for (c, g), n in log.groupby(["campaign_id", "group"]).size().items()}
    counters = workers.counters()
    deadline = time.monotonic() + 30
    while counters["dead_lettered"] < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        counters = workers.counters()
    assert counters["dead_lettered"] == 1
    assert counters["consumed"] == counters["applied"] + counters["duplicates"] + counters["dead_lettered"]
    assert counters["duplicates"] >= len(log)  # the second replay's sends (and events) changed nothing

    report = retrain_once(settings)
    assert report.uplift.startswith("fitted"), report.line()
    # what the retrain fitted on is the pandas table of the same history: the stream state is exact
    cutoff = pd.Timestamp(report.cutoff).timestamp()
    want_table = oracle.uplift_table(small, settings.uplift_window_days, cutoff)
    doc = json.loads(client.get(keys.targeting(report.run)))
    assert doc["trained_on"]["sends"] == len(want_table)
    assert doc["trained_on"]["treatment"] == int(want_table["treated"].sum())
    assert doc["trained_on"]["response_treatment"] == round(
        float(want_table.loc[want_table["treated"], "responded"].mean()), 4
    )
    # scores: refit independently on the pandas state gives the same per-customer uplift
    purchases = _purchases(oracle.load_facts(small)["purchases"])
    customers = sorted(purchases)
    sends = parse_sends(campaign_sends(client, keys))
    entries, independent = fit_targeting(
        sends, customers, [purchases[c] for c in customers], [""] * len(customers), cutoff, WINDOW, 100, 1000
    )
    served = {k.decode(): json.loads(v) for k, v in client.hgetall(keys.uplift(report.run)).items()}
    assert set(served) == set(customers)
    expected = {c: json.loads(v) for c, v in entries}
    worst = max(abs(served[c]["uplift"] - expected[c]["uplift"]) for c in customers)
    assert worst < 0.002, worst
    assert [t["customer_unique_id"] for t in doc["targets"]][:50] == [
        t["customer_unique_id"] for t in independent["targets"]
    ][:50]
    uplifts = [t["uplift"] for t in doc["targets"]]
    assert uplifts == sorted(uplifts, reverse=True) and min(uplifts) > 0
    # the profile says it
    top = doc["targets"][0]
    found = customer_models(settings, top["customer_unique_id"])
    assert found is not None and found.uplift == {k: top[k] for k in ("uplift", "p_treated", "p_control")}
    assert any(line.startswith("uplift") and f"{top['uplift']:+.3f}" in line for line in models_lines(found))


@pytest.mark.integration
def test_a_campaign_log_with_a_mapping_replays_like_a_transaction_log(workers: Workers, tmp_path: Path) -> None:
    workers.start()
    fixtures = ROOT / "tests" / "fixtures" / "transactions"
    log = tmp_path / "sends.csv"
    log.write_text("who;c;t;g\n00001;c1;1997-02-01;yes\n00002;c1;1997-02-01;no\n00003;c1;1997-02-02;yes\n")
    mapping = tmp_path / "map.toml"
    mapping.write_text(
        (fixtures / "cdnow.toml").read_text()
        + '\n[campaigns]\ncustomer = "who"\ncampaign = "c"\ntime = "t"\ngroup = "g"\ntreatment = "yes"\n'
        'control = "no"\ndelimiter = ";"\nsource = "cdnow-mail"\n'
    )
    history, summary = run_replay(
        fixtures / "cdnow.txt", workers.settings, source="transactions", mapping=mapping, campaigns=log, progress=False
    )
    assert history.event_counts()["campaign_sent"] == 3
    workers.wait_for_end(summary)
    got = {k.decode(): v.decode().split("\t")[3] for k, v in campaign_sends(workers.redis, workers.keys).items()}
    assert got == {
        "cdnow-mail:campaign:c1:00001": "treatment",
        "cdnow-mail:campaign:c1:00002": "control",
        "cdnow-mail:campaign:c1:00003": "treatment",
    }
