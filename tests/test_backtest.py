"""`segstream backtest` end to end, on real services: planted behaviour is found, the CDNOW holdout
check of Fader, Hardie & Lee (2005) holds, two runs give identical figures, and the HTML report
renders in a real browser.

The planted history (a transaction log written here, replayed through ``--source transactions``):

- heavy buyers, every 4 to 9 days from 2017-01 on, who keep buying;
- medium buyers, every 12 to 20 days, who keep buying;
- *stoppers*: heavy buyers who stop on 2017-12-01 (the known date);
- light buyers, every 40 to 100 days, who keep buying;
- everyone buys two products per order from their own group of 100 products (three groups), so
  the products of a customer's group are what ALS should find, and a list of the month's most
  bought products is two-thirds other groups' products;
- with ``baskets``, a fourth group of 100 products in five categories of 20 (``g3-c0`` to
  ``g3-c4``), bought every 10 to 20 days by *pair* buyers, each order one product of each category of a planted pair
  (``g3-c0`` with ``g3-c1``, or ``g3-c2`` with ``g3-c3``), and by *noise* buyers, each order two
  products of the group at random: the planted pairs are the market basket rules to find.

At the cutoff 2018-01-15 the stoppers have been silent 45 days: a heavy buyer silent that long is
likely gone, a light buyer is not, which recency alone cannot tell apart (many light buyers are
that silent too) and P(alive) can.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import date, timedelta
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from models.evaluation import classification, ranking, regression
from replay.synth import SynthConfig, synthesize
from segstream.cli import cli
from segstream.settings import Settings

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).parent / "artifacts"
STOP = date(2017, 12, 1)
PAIRS = (("g3-c0", "g3-c1"), ("g3-c2", "g3-c3"))
CUTOFF = "2018-01-15"
MAPPING = """
[columns]
customer = "customer"
order = "order"
time = "time"
amount = "amount"
product = "product"
category = "category"
source = "planted"
"""


def planted_log(path: Path, seed: int = 5, baskets: bool = False) -> dict[str, str]:
    """Write the planted transaction log; returns each customer's kind."""
    rng = np.random.default_rng(seed)
    start, end = date(2017, 1, 1), date(2018, 5, 31)
    kinds = {f"heavy-{i:03d}": "heavy" for i in range(40)}
    kinds |= {f"medium-{i:03d}": "medium" for i in range(40)}
    kinds |= {f"stopper-{i:03d}": "stopper" for i in range(40)}
    kinds |= {f"light-{i:03d}": "light" for i in range(100)}
    if baskets:  # apart: 90 more steady buyers would change the BG/NBD fit the churn plant rests on
        kinds |= {f"pair-{i:03d}": "pair" for i in range(60)}
        kinds |= {f"noise-{i:03d}": "noise" for i in range(30)}
    gaps = {"heavy": (4, 9), "stopper": (4, 9), "medium": (12, 20), "light": (40, 100), "pair": (10, 20)}
    gaps["noise"] = gaps["pair"]
    rows, order = [], 0
    for customer, kind in kinds.items():
        group = 3 if kind in ("pair", "noise") else int(rng.integers(3))
        pair = PAIRS[int(rng.integers(len(PAIRS)))]
        day = start + timedelta(days=int(rng.integers(0, 60)))
        last = STOP if kind == "stopper" else end
        while day < last:
            order += 1
            stamp = f"{day.isoformat()} {int(rng.integers(8, 22)):02d}:{int(rng.integers(60)):02d}:00"
            if kind == "pair":  # one product of each planted category: 20 products each
                chosen = [20 * int(c[-1]) + int(rng.integers(20)) for c in pair]
            else:
                chosen = rng.choice(100, size=2, replace=False)
            for product in chosen:
                rows.append(
                    (customer, f"o{order:06d}", stamp, float(rng.integers(20, 120)), f"g{group}-p{product:03d}")
                )
            low, high = gaps[kind]
            day += timedelta(days=int(rng.integers(low, high + 1)))
    frame = pd.DataFrame(rows, columns=["customer", "order", "time", "amount", "product"])
    frame["category"] = frame["product"].str[:2]
    in_four = frame["category"] == "g3"  # the fourth group's five categories of 20 products
    frame.loc[in_four, "category"] = "g3-c" + (frame.loc[in_four, "product"].str[-3:].astype(int) // 20).astype(str)
    frame.to_csv(path, index=False)
    return kinds


def _env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return {
        "SEGSTREAM_RUN_DIR": str(tmp_path / "run"),
        "SEGSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap_servers,
        "SEGSTREAM_REDIS_URL": settings.redis_address,
        "SEGSTREAM_WORKER_BATCH": "500",
    }


def _backtest(env: dict[str, str], *args: str) -> None:
    done = CliRunner().invoke(cli, ["backtest", *args], env=env)
    assert done.exit_code == 0, done.output + repr(done.exception)


@pytest.fixture(scope="module")
def planted(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("planted")
    log, mapping = tmp / "planted.csv", tmp / "planted.toml"
    kinds = planted_log(log)
    mapping.write_text(MAPPING)
    out = tmp / "out"
    args = ["--data", str(log), "--source", "transactions", "--mapping", str(mapping)]
    _backtest(_env(services, tmp), *args, "--cutoffs", CUTOFF, "--horizon", "90d", "--out", str(out))
    return out, json.loads((out / "figures.json").read_text()), kinds


def test_planted_stoppers_churn_signal_beats_recency_and_a_shuffle(planted) -> None:
    out, figures, kinds = planted
    churn = figures["cutoffs"][0]["churn"]
    table = pd.read_csv(out / "predictions" / f"{CUTOFF}.csv", index_col="customer")
    stoppers = [c for c, k in kinds.items() if k == "stopper"]
    assert not table.loc[stoppers, "actual_bought_again"].any()  # the plant: they never come back
    assert churn["p_alive"]["customers"] == len(kinds)
    assert churn["p_alive"]["auc"] > 0.8, churn
    assert churn["p_alive"]["auc"] > churn["baseline_recency"]["auc"] + 0.05, churn
    assert churn["status"]["auc"] > churn["baseline_recency"]["auc"], churn
    # the report's figure is the frozen predictions' score, and a shuffled P(alive) scores ~0.5
    label = table["actual_bought_again"].astype(bool)
    assert classification(table["p_alive"], label)["auc"] == pytest.approx(churn["p_alive"]["auc"], abs=1e-6)
    shuffled = pd.Series(np.random.default_rng(0).permutation(table["p_alive"].to_numpy()), index=table.index)
    assert classification(shuffled, label)["auc"] < 0.65


def test_planted_heavy_buyers_get_more_predicted_purchases(planted) -> None:
    out, figures, kinds = planted
    served = figures["cutoffs"][0]["purchases"]["served"]
    assert served["model"] == "bgnbd" and served["customers"] == len(kinds)
    # the stoppers are predicted as medium buyers and buy nothing: that is the churn plant's
    # cost to the rank correlation, which stays clearly positive
    assert served["spearman"] > 0.4, served
    table = pd.read_csv(out / "predictions" / f"{CUTOFF}.csv", index_col="customer")
    heavy = [c for c, k in kinds.items() if k == "heavy"]
    light = [c for c, k in kinds.items() if k == "light"]
    assert table.loc[heavy, "expected_purchases"].mean() > 3 * table.loc[light, "expected_purchases"].mean()
    shuffled = np.random.default_rng(1).permutation(table["expected_purchases"].to_numpy())
    assert regression(pd.Series(shuffled), table["actual_purchases"])["spearman"] < 0.2
    # the rival fitters are scored on the same summary, with the customers they rest on
    baselines = figures["cutoffs"][0]["purchases"]["baselines"]
    assert {"historical_rate", "modified_bgnbd", "pareto_nbd"} <= set(baselines)
    assert baselines["historical_rate"]["customers"] == len(kinds)
    weekly = figures["cutoffs"][0]["purchases"]["weekly"]
    assert [w["day"] for w in weekly] == [*range(7, 90, 7), 90]
    assert weekly[-1]["actual"] == int(table["actual_purchases"].sum())


def test_planted_groups_give_als_a_hit_rate_above_popularity(planted) -> None:
    out, figures, _ = planted
    recs = figures["cutoffs"][0]["recommendations"]
    als = recs["by_strategy"]["als"]
    assert als["product"]["customers"] > 100
    assert als["product"]["hit_rate"] > als["baseline_default_list"]["product"]["hit_rate"] + 0.1, als
    assert recs["baseline_default_list"]["strategy"] == "popular_month"
    # the same lists, dealt to the wrong customers: the hit rate falls to popularity's or below
    table = pd.read_csv(out / "predictions" / f"{CUTOFF}.csv", index_col="customer", keep_default_na=False)
    raw = pd.read_csv(out.parent / "planted.csv")
    horizon = raw[pd.to_datetime(raw["time"]) >= pd.Timestamp(CUTOFF) + pd.Timedelta(days=1)]
    horizon = horizon[pd.to_datetime(horizon["time"]) < pd.Timestamp(CUTOFF) + pd.Timedelta(days=91)]
    relevant = horizon.groupby("customer")["product"].agg(set).to_dict()
    lists = {c: table.loc[c, "recommended"].split() for c in relevant if table.loc[c, "strategy"] == "als"}
    mine = {c: relevant[c] for c in lists}
    assert ranking(lists, mine, 10)["hit_rate"] == pytest.approx(als["product"]["hit_rate"], abs=1e-6)
    names = list(lists)
    dealt = dict(zip(names, [lists[c] for c in np.random.default_rng(2).permutation(names)], strict=True))
    assert ranking(dealt, mine, 10)["hit_rate"] < als["product"]["hit_rate"] - 0.1


@pytest.fixture(scope="module")
def planted_baskets(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("planted-baskets")
    log, mapping = tmp / "planted.csv", tmp / "planted.toml"
    planted_log(log, baskets=True)
    mapping.write_text(MAPPING)
    out = tmp / "out"
    args = ["--data", str(log), "--source", "transactions", "--mapping", str(mapping)]
    _backtest(_env(services, tmp), *args, "--cutoffs", CUTOFF, "--horizon", "90d", "--out", str(out))
    return json.loads((out / "figures.json").read_text())


def test_planted_pairs_are_the_top_basket_rules_and_bought_together_beats_popularity(planted_baskets) -> None:
    figures = planted_baskets
    cutoff = figures["cutoffs"][0]
    rules = cutoff["basket_rules"]
    planted_rules = {(a, b) for a, b in PAIRS} | {(b, a) for a, b in PAIRS}
    top = rules["orders"]["rules"][: len(planted_rules)]
    assert {(r["antecedent"], r["consequent"]) for r in top} == planted_rules, top
    assert all(r["lift"] > 1 for r in top)
    # the next rule (noise pairs of the same group) is clearly weaker
    assert rules["orders"]["rules"][len(planted_rules)]["lift"] < min(r["lift"] for r in top)
    rival = cutoff["recommendations"]["rivals"]["bought_together"]
    assert rival["product"]["customers"] == 90  # every pair and noise buyer, and only them
    assert rival["product"]["hit_rate"] > rival["baseline_default_list"]["product"]["hit_rate"] + 0.1, rival


def test_every_strategy_is_scored_per_segment_and_the_best_is_proposed(planted) -> None:
    out, figures, _ = planted
    recs = figures["cutoffs"][0]["recommendations"]
    by_segment, proposed = recs["by_segment"], recs["proposed_map"]
    assert by_segment and set(proposed) == set(by_segment)
    for segment, row in by_segment.items():
        assert set(row["strategies"]) == {"als", "customer2vec", "top_rated", "popular_month", "bought_together"}
        served = {s: v for s, v in row["strategies"].items() if s != "bought_together"}
        best = max(served, key=lambda s: (served[s]["hit_rate"], served[s]["ndcg"]))
        assert proposed[segment] == row["best"] and served[best]["hit_rate"] == served[row["best"]]["hit_rate"]
        assert row["note"]  # says whether the lead is significant, or rests on few customers
    # the planted groups: each model beats popularity over the segments' customers (not that one wins)
    total = sum(row["customers"] for row in by_segment.values())
    assert total > 100

    def rate(strategy: str) -> float:
        return sum(row["strategies"][strategy]["hit_rate"] * row["customers"] for row in by_segment.values()) / total

    assert rate("als") > rate("popular_month") + 0.1
    assert rate("customer2vec") > rate("popular_month") + 0.1
    # the proposal is written as the file `segstream retrain --strategy-map` takes
    assert json.loads((out / "strategy-map.json").read_text()) == proposed


class _Rendered(HTMLParser):
    """The body's data attributes, and per chart div its attributes and the SVG paths drawn in it."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.charts: list[dict[str, str | None]] = []
        self.paths: list[int] = []
        self._depth = 0  # open divs inside the current chart div (0: not in one)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.body = dict(attrs)
        elif self._depth and tag == "div":
            self._depth += 1
        elif tag == "div" and dict(attrs).get("class") == "chart":
            self.charts.append(dict(attrs))
            self.paths.append(0)
            self._depth = 1
        elif self._depth and tag == "path":
            self.paths[-1] += 1

    def handle_endtag(self, tag: str) -> None:
        if self._depth and tag == "div":
            self._depth -= 1


@pytest.fixture(scope="module")
def olist_like(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two backtests of a generated Olist-like history (states, reviews, products, planted
    campaigns: every kind of plot, and ALS lists), with two cutoffs. The campaigns of 2017-12-14 and
    2018-03-03 have their response windows inside the two horizons."""
    tmp = tmp_path_factory.mktemp("olist-like")
    synthesize(SynthConfig(orders=3_000, seed=3, repeat_share=0.2, campaigns=12, campaign_reach=0.6), tmp / "data")
    args = ["--data", str(tmp / "data"), "--cutoffs", "2017-12-01,2018-03-01", "--horizon", "60d"]
    env = _env(services, tmp) | {"SEGSTREAM_UPLIFT_MIN_SENDS": "50"}
    _backtest(env, *args, "--out", str(tmp / "one"))
    _backtest(env, *args, "--out", str(tmp / "two"))
    return tmp / "one", tmp / "two"


@pytest.fixture(scope="module")
def olist_like_report(olist_like: tuple[Path, Path]) -> Path:
    return olist_like[0] / "report.html"


def test_two_runs_with_als_lists_give_identical_figures(olist_like: tuple[Path, Path]) -> None:
    one, two = ((out / "figures.json").read_text() for out in olist_like)
    figures = json.loads(one)
    assert [c["cutoff"] for c in figures["cutoffs"]] == ["2017-12-01", "2018-03-01"]
    # the figures rest on ALS lists and on a fitted CLV model at both cutoffs: not an empty match
    for cutoff in figures["cutoffs"]:
        assert cutoff["recommendations"]["by_strategy"]["als"]["product"]["customers"] > 0
        assert cutoff["purchases"]["served"]["customers"] == cutoff["customers"]["scored"] > 500
        # the sales forecast in force, scored over the horizon against the seasonal naive forecast
        sales = cutoff["forecast"]
        assert sales["days"] == 30 and len(sales["orders"]["series"]) == 30
        for column in ("orders", "revenue"):
            assert sales[column]["forecast"]["mase"] > 0 and sales[column]["baseline_seasonal_naive"]["mase"] > 0
        # the uplift served at the cutoff, scored on the campaign that followed against the baselines
        uplift = cutoff["uplift"]
        assert uplift["sends"] > 300 and len(uplift["campaigns"]) == 1, uplift.get("error")
        assert set(uplift["by_score"]) == {"uplift", "p_alive", "champions", "planted uplift", "random"}
        assert uplift["model"]["trained_on"]["sends"] > 500
        assert uplift["by_score"]["planted uplift"]["qini_coefficient"] > 0  # the truth ranks the responders first
        assert all(len(curve) == len(uplift["curve_share_targeted"]) for curve in uplift["curves"].values())
    assert one == two


def test_report_renders_every_plot_in_headless_chromium(olist_like_report: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Debian's chromium is needed (.ci/run installs it)"
    text = olist_like_report.read_text()
    assert not re.search(r"""(src|href)=["']?https?:""", text)  # nothing to fetch: it works offline
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    dom = subprocess.run(
        [*common, "--enable-logging=stderr", "--v=0", "--dump-dom", olist_like_report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _Rendered()
    page.feed(dom.stdout)
    # every kind of plot the report draws: 9 per cutoff with recommendations, transitions, the
    # sales forecast (orders, revenue) and the Qini curves, and segment mix, cohorts, weekday x
    # hour, states, review score (two cutoffs here)
    assert len(page.charts) == text.count('<div class="chart" id=') == 23
    assert page.body.get("data-charts") == "23"  # report.js saw them all
    assert page.body.get("data-errors") == "", page.body.get("data-errors")  # no error reached the page
    assert "Uncaught" not in dom.stderr and ":CONSOLE" not in dom.stderr, dom.stderr[-2000:]
    unfinished = [c["id"] for c in page.charts if c.get("data-rendered") != "1"]
    assert not unfinished, f"plots that did not finish drawing: {unfinished}"
    empty = [c["id"] for c, n in zip(page.charts, page.paths, strict=True) if n <= 3]
    assert not empty, f"plots with nothing drawn: {empty}"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "backtest-report.png"
    subprocess.run(
        [*common, "--window-size=1200,9000", f"--screenshot={shot}", olist_like_report.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 50_000


CDNOW_MAPPING = """
[columns]
customer = "0"
time = "2"
time_format = "%Y%m%d"
amount = "4"
header = false
delimiter = "whitespace"
source = "cdnow"
"""


def test_cdnow_holdout_matches_lifetimes_and_two_runs_are_identical(services: Settings, tmp_path: Path) -> None:
    from lifetimes import BetaGeoFitter
    from lifetimes.utils import summary_data_from_transaction_data

    mapping = tmp_path / "cdnow.toml"
    mapping.write_text(CDNOW_MAPPING)
    env = _env(services, tmp_path)
    with resources.as_file(resources.files("lifetimes") / "datasets" / "CDNOW_sample.txt") as log:
        args = ["--data", str(log), "--source", "transactions", "--mapping", str(mapping)]
        args += ["--cutoffs", "1997-09-30", "--horizon", "39w"]
        _backtest(env, *args, "--out", str(tmp_path / "one"))
        _backtest(env, *args, "--out", str(tmp_path / "two"))
        raw = pd.read_csv(log, sep=r"\s+", header=None, names=["id", "customer", "date", "cds", "amount"])
    one, two = ((tmp_path / name / "figures.json").read_text() for name in ("one", "two"))
    assert one == two
    figures = json.loads(one)
    served = figures["cutoffs"][0]["purchases"]["served"]
    assert served["customers"] == 2_357

    raw["date"] = pd.to_datetime(raw["date"].astype(str), format="%Y%m%d")
    # lifetimes' own calibration_and_holdout_data fails under pandas 3, so the calibration summary is
    # lifetimes' summary of the rows up to the cutoff and the holdout is counted with pandas
    calibration = raw[raw["date"] <= "1997-09-30"]
    summary = summary_data_from_transaction_data(
        calibration, "id", "date", observation_period_end="1997-09-30", freq="D"
    )
    params = json.loads((tmp_path / "one" / "models" / "run-000001" / "clv.json").read_text())["bgnbd"]
    model = BetaGeoFitter()
    model.params_ = pd.Series(params)
    direct = model.conditional_expected_number_of_purchases_up_to_time(
        273, summary["frequency"], summary["recency"], summary["T"]
    ).sum()
    assert served["predicted_total"] == pytest.approx(direct, rel=0.01)
    # the actual count: distinct customer-days in the holdout, by pandas on the raw file
    holdout = raw[(raw["date"] > "1997-09-30") & (raw["date"] <= "1998-06-30")]
    assert served["actual_total"] == len(holdout.drop_duplicates(["id", "date"]))
