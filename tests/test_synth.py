"""The synthetic generator: real Olist layout, deterministic, Olist-like shape."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from replay.olist import OLIST_COLUMNS, OLIST_FILES, load_olist
from replay.synth import SynthConfig, synthesize
from tests.conftest import REAL_SAMPLE


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.csv"))}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    synthesize(SynthConfig(orders=500, seed=3), tmp_path / "a")
    synthesize(SynthConfig(orders=500, seed=3), tmp_path / "b")
    synthesize(SynthConfig(orders=500, seed=4), tmp_path / "c")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a")[OLIST_FILES["orders"]] != _digest(tmp_path / "c")[OLIST_FILES["orders"]]


def test_files_and_columns_equal_the_real_ones(synth_small: Path) -> None:
    for real in sorted(REAL_SAMPLE.glob("*.csv")):
        generated = synth_small / real.name
        assert generated.exists(), real.name
        real_columns = list(pd.read_csv(real, nrows=0, encoding="utf-8-sig").columns)
        assert list(pd.read_csv(generated, nrows=0, encoding="utf-8-sig").columns) == real_columns
    assert {p.name for p in synth_small.glob("*.csv")} == {n for k, n in OLIST_FILES.items() if k != "geolocation"}
    assert set(OLIST_COLUMNS) == set(OLIST_FILES)


def test_loader_reads_generated_files_like_real_ones(synth_small: Path) -> None:
    history = load_olist(synth_small)
    assert history.report.rejected == 0
    assert len(history.placed) + len(history.canceled) == 400
    orders = pd.read_csv(synth_small / OLIST_FILES["orders"], dtype=str)
    assert orders["order_purchase_timestamp"].str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()
    customers = pd.read_csv(synth_small / OLIST_FILES["customers"], dtype=str)
    assert customers["customer_zip_code_prefix"].str.fullmatch(r"\d{5}").all()
    # quirks the real files have: multi-line comments and one review_id on two orders
    reviews = pd.read_csv(synth_small / OLIST_FILES["reviews"], dtype=str)
    assert reviews["review_comment_message"].fillna("").str.contains("\n").any()


@pytest.fixture(scope="module")
def synth_20k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth-20k")
    synthesize(SynthConfig(orders=20_000, seed=5), out)
    return out


def test_distributions_look_like_olist(synth_20k: Path) -> None:
    customers = pd.read_csv(synth_20k / OLIST_FILES["customers"], dtype=str)
    orders_per_person = customers["customer_unique_id"].value_counts()
    assert 0.02 <= (orders_per_person > 1).mean() <= 0.04  # ~3% repeat buyers
    states = customers.drop_duplicates("customer_unique_id")["customer_state"].value_counts(normalize=True)
    assert states.index[0] == "SP" and 0.38 <= states["SP"] <= 0.46

    history = load_olist(synth_20k)
    assert 0.06 <= history.delivered["late"].mean() <= 0.10  # ~8% late
    scores = history.reviews["score"].value_counts(normalize=True)
    assert scores.idxmax() == 5 and scores[1] > scores[2] and scores[1] > scores[3]  # skew to 5, bump at 1
    reviews = pd.read_csv(synth_20k / OLIST_FILES["reviews"], dtype=str)
    assert reviews["review_id"].duplicated().any()  # shared review ids
    assert reviews["order_id"].duplicated().any()  # several reviews per order
    spend = history.placed["payment_total"]
    assert spend.quantile(0.99) > 4 * spend.median()  # heavy tail
    translation = pd.read_csv(synth_20k / OLIST_FILES["categories"], encoding="utf-8-sig")
    used = set(history.items["category"]) - {"unknown"}
    assert used <= set(translation["product_category_name_english"])
    assert len(used) > 40
    status = pd.read_csv(synth_20k / OLIST_FILES["orders"], dtype=str)["order_status"].value_counts(normalize=True)
    assert status["delivered"] > 0.95 and 0.003 < status["canceled"] < 0.012


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="orders must be at least 1"):
        SynthConfig(orders=0)
    with pytest.raises(ValueError, match="repeat_share"):
        SynthConfig(orders=10, repeat_share=1.5)
