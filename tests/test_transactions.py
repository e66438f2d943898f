"""Column-mapped transaction logs and the Online Retail preset, on hand-made fixtures."""

from __future__ import annotations

import gzip
import shutil
from datetime import UTC, datetime
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from replay.history import LoaderError
from replay.sources import load_source
from replay.transactions import ColumnMapping, load_mapping, load_online_retail, load_transactions
from segstream.schemas import OrderPlaced, OrderReturned
from streams.profile import Profile

FIXTURES = Path(__file__).parent / "fixtures" / "transactions"


def _summary(history) -> list[tuple]:
    return [
        (
            event.event_id,
            event.customer_unique_id,
            event.event_time,
            round(event.payment_total if isinstance(event, OrderPlaced) else event.amount, 2),
            [(item.product_id, item.price) for item in event.items],
        )
        for event in history.events()
    ]


def _at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


ONLINE_RETAIL_EVENTS = [
    ("online-retail:placed:536365", "17850", _at(2010, 12, 1, 8, 26), 35.64, [("85123A", 15.3), ("71053", 20.34)]),
    ("online-retail:placed:536366", "17850", _at(2010, 12, 1, 8, 28), 11.1, [("22633", 11.1)]),
    ("online-retail:placed:536367", "13047", _at(2010, 12, 1, 8, 34), 54.08, [("84879", 54.08)]),
    ("online-retail:placed:536370", "12583", _at(2010, 12, 1, 8, 45), 144.0, [("22728", 90.0), ("POST", 54.0)]),
    ("online-retail:placed:536368", "13047", _at(2010, 12, 2, 8, 34), 25.5, [("22960", 25.5)]),
    ("online-retail:returned:C536379", "13047", _at(2010, 12, 3, 9, 41), 27.5, [("D", 27.5)]),
    ("online-retail:returned:C536383", "17850", _at(2010, 12, 3, 9, 49), 4.65, [("35004C", 4.65)]),
]


def test_online_retail_loads_to_exactly_the_expected_events() -> None:
    history = load_online_retail(FIXTURES / "online_retail.csv")
    assert _summary(history) == ONLINE_RETAIL_EVENTS
    assert dict(history.report.counts()) == {
        ("online_retail.csv", "no customer id (guest checkout)"): 1,
        ("online_retail.csv", "bad time"): 1,
        ("online_retail.csv", "bad, zero or negative price"): 2,
        ("online_retail.csv", "negative quantity outside a cancellation"): 1,
        ("online_retail.csv", "duplicate line"): 1,
    }
    assert history.report.rows_read["online_retail.csv"] == 15
    placed = next(history.events())
    assert (placed.state, placed.customer_id, placed.payment_source) == ("United Kingdom", "17850", "items")


def test_online_retail_ii_spelling_and_iso_dates() -> None:
    history = load_online_retail(FIXTURES / "online_retail_ii.csv")
    assert _summary(history) == [
        ("online-retail:placed:489450", "16321", _at(2009, 11, 30, 10), 70.8, [("22087", 70.8)]),
        ("online-retail:placed:489434", "13085", _at(2009, 12, 1, 7, 45), 164.4, [("85048", 83.4), ("79323P", 81.0)]),
        ("online-retail:placed:489435", "13085", _at(2009, 12, 1, 7, 46), 30.6, [("22350", 30.6)]),
        ("online-retail:returned:C489449", "16321", _at(2009, 12, 1, 10, 33), 35.4, [("22087", 35.4)]),
    ]
    assert dict(history.report.counts()) == {
        ("online_retail_ii.csv", "no customer id (guest checkout)"): 1,
        ("online_retail_ii.csv", "bad or zero quantity"): 1,
    }


def test_whitespace_separated_log_with_a_date_format_and_one_order_per_row() -> None:
    history = load_source("transactions", FIXTURES / "cdnow.txt", FIXTURES / "cdnow.toml")
    assert _summary(history) == [
        ("cdnow:placed:r0", "00001", _at(1997, 1, 1), 11.77, [("", 11.77)]),
        ("cdnow:placed:r3", "00003", _at(1997, 1, 2), 20.76, [("", 20.76)]),
        ("cdnow:placed:r1", "00002", _at(1997, 1, 12), 12.0, [("", 12.0)]),
        ("cdnow:placed:r2", "00002", _at(1997, 1, 12), 77.0, [("", 77.0)]),
        ("cdnow:placed:r5", "00001", _at(1997, 6, 2), 43.98, [("", 43.98)]),
    ]
    assert dict(history.report.counts()) == {("cdnow.txt", "bad time"): 1}


def test_gzip_and_xlsx_read_like_the_csv(tmp_path: Path) -> None:
    source = FIXTURES / "online_retail.csv"
    packed = tmp_path / "online_retail.csv.gz"
    with source.open("rb") as raw, gzip.open(packed, "wb") as out:
        shutil.copyfileobj(raw, out)
    book = openpyxl.Workbook()
    rows = pd.read_csv(source, dtype=str, keep_default_na=False)
    book.active.append(list(rows.columns))
    for row in rows.itertuples(index=False):
        book.active.append(list(row))
    book.save(tmp_path / "online_retail.xlsx")
    assert _summary(load_online_retail(packed)) == ONLINE_RETAIL_EVENTS
    assert _summary(load_online_retail(tmp_path / "online_retail.xlsx", chunk_rows=4)) == ONLINE_RETAIL_EVENTS


def test_small_chunks_give_the_same_history() -> None:
    assert _summary(load_online_retail(FIXTURES / "online_retail.csv", chunk_rows=2)) == ONLINE_RETAIL_EVENTS


def test_a_mapping_needs_an_amount() -> None:
    with pytest.raises(ValueError, match="amount"):
        ColumnMapping(customer="c", order="o", time="t", quantity="q")
    assert load_mapping(FIXTURES / "cdnow.toml").delimiter == "whitespace"
    with pytest.raises(LoaderError, match="needs --mapping"):
        load_source("transactions", FIXTURES / "cdnow.txt")


def test_a_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("who,when,total\nu1,2020-01-01,5\n")
    with pytest.raises(LoaderError, match=r"no column 'order'"):
        load_transactions(log, ColumnMapping(customer="who", order="order", time="when", amount="total"))


def test_a_cancellation_reduces_monetary_only() -> None:
    events = {e.event_id: e for e in load_online_retail(FIXTURES / "online_retail.csv").events()}
    profile = Profile("17850")
    for event_id in ("online-retail:placed:536365", "online-retail:placed:536366", "online-retail:returned:C536383"):
        profile.apply(events[event_id])
    assert isinstance(events["online-retail:returned:C536383"], OrderReturned)
    assert (profile.orders, profile.monetary, profile.canceled) == (2, round(35.64 + 11.1 - 4.65, 2), 1)
    assert profile.last_purchase == _at(2010, 12, 1, 8, 28).timestamp()  # recency: purchases only


def test_the_documented_mapping_reads_the_online_retail_fixture() -> None:
    mapping = load_mapping(Path(__file__).parents[1] / "docs" / "mapping.toml")
    log = FIXTURES / "online_retail.csv"
    events = [e.model_dump(exclude={"event_id"}) for e in load_transactions(log, mapping).events()]
    preset = [e.model_dump(exclude={"event_id"}) for e in load_online_retail(log).events()]
    assert events == preset and len(events) == 7
