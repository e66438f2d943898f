"""The Olist loader against a hand-made edge-case history and 1,000 real orders."""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from replay.olist import OLIST_FILES, LoaderError, load_olist
from segstream.schemas import OrderCanceled, OrderDelivered, OrderPlaced, ReviewPosted
from tests.conftest import EDGE, REAL_SAMPLE


def _by_id(location: Path) -> dict:
    return {event.event_id: event for event in load_olist(location).events()}


def test_edge_cases_become_exactly_the_expected_events() -> None:
    events = _by_id(EDGE)
    assert sorted(events) == sorted(
        [
            "olist:placed:o1", "olist:placed:o2", "olist:placed:o5", "olist:placed:o6",
            "olist:placed:o7", "olist:placed:o10", "olist:placed:o11",
            "olist:canceled:o3", "olist:canceled:o4",
            "olist:delivered:o1", "olist:delivered:o2", "olist:delivered:o10", "olist:delivered:o11",
            "olist:review:r1:o1", "olist:review:r2:o1", "olist:review:r3:o2", "olist:review:r3:o5",
            "olist:review:r6:o3",
        ]
    )  # fmt: skip
    o1 = events["olist:placed:o1"]
    assert isinstance(o1, OrderPlaced)
    # two customer_ids, one person
    assert o1.customer_unique_id == events["olist:placed:o2"].customer_unique_id == "u1"
    assert (o1.customer_id, events["olist:placed:o2"].customer_id) == ("c1", "c2")
    assert o1.zip_prefix == "01001"  # leading zero kept
    # money: sum of payments; several payment types
    assert o1.payment_total == pytest.approx(85.0) and o1.payment_source == "payments"
    assert o1.payment_types == ["credit_card", "voucher"] and o1.installments == 3
    assert [(i.product_id, i.category, i.price, i.freight) for i in o1.items] == [
        ("p1", "bed_bath_table", 50.0, 10.0),
        ("p2", "unknown", 20.0, 5.0),  # product without a category
    ]
    # no payment rows: items' price + freight; neither: worth 0
    o6 = events["olist:placed:o6"]
    assert o6.payment_source == "items" and o6.payment_total == pytest.approx(30 + 7.25 + 45.5 + 7.25)
    assert [i.category for i in o6.items] == ["bed_bath_table", "unknown"]  # p9 is not in products
    o7 = events["olist:placed:o7"]
    assert (o7.payment_source, o7.payment_total, o7.items) == ("none", 0.0, [])
    assert events["olist:placed:o2"].items[0].category == "pc_gamer"  # untranslated: Portuguese name kept
    # a bad payment row is rejected, the good one still counts
    assert events["olist:placed:o10"].payment_total == pytest.approx(30.0)
    # a bad item row is rejected; the order's money comes from its payments
    assert [i.price for i in events["olist:placed:o5"].items] == [60.0]
    # canceled/unavailable: not purchases
    assert isinstance(events["olist:canceled:o3"], OrderCanceled)
    assert events["olist:canceled:o3"].order_value == pytest.approx(92.0)
    assert events["olist:canceled:o4"].status == "unavailable"
    # deliveries: late by calendar day; unknown without an estimate; on the estimated day is on time
    assert events["olist:delivered:o2"].late is True
    assert events["olist:delivered:o1"].late is False
    assert events["olist:delivered:o10"].late is None
    assert events["olist:delivered:o11"].late is False
    assert isinstance(events["olist:delivered:o1"], OrderDelivered)
    assert events["olist:delivered:o1"].event_time == datetime(2017, 3, 8, 15, tzinfo=UTC)
    # reviews: multi-line quoted comment, answer time as event time, creation date as fallback
    r1 = events["olist:review:r1:o1"]
    assert isinstance(r1, ReviewPosted)
    message = 'Chegou antes do prazo, recomendo.\nSegunda linha com "aspas", e virgula.'
    assert r1.comment_present and r1.comment_length == len(message)
    assert r1.event_time == datetime(2017, 3, 10, 12, tzinfo=UTC)
    assert r1.created_time == datetime(2017, 3, 9, tzinfo=UTC)
    assert events["olist:review:r6:o3"].event_time == datetime(2017, 4, 5, tzinfo=UTC)
    assert events["olist:review:r2:o1"].comment_present is False
    # one review_id on two orders reaches both customers through order_id
    assert events["olist:review:r3:o2"].customer_unique_id == "u1"
    assert events["olist:review:r3:o5"].customer_unique_id == "u4"


def test_edge_cases_count_every_reject_by_reason() -> None:
    report = load_olist(EDGE).report
    assert report.counts("rejected") == Counter(
        {
            (OLIST_FILES["customers"], "missing_customer_unique_id"): 1,
            (OLIST_FILES["customers"], "duplicate_customer_id"): 1,
            (OLIST_FILES["orders"], "duplicate_order_id"): 1,
            (OLIST_FILES["orders"], "bad_purchase_timestamp"): 1,
            (OLIST_FILES["orders"], "unknown_customer"): 1,
            (OLIST_FILES["items"], "unknown_order"): 1,
            (OLIST_FILES["items"], "bad_price"): 1,
            (OLIST_FILES["payments"], "unknown_order"): 1,
            (OLIST_FILES["payments"], "bad_payment_value"): 1,
            (OLIST_FILES["reviews"], "unknown_order"): 1,
            (OLIST_FILES["reviews"], "duplicate_review"): 1,
            (OLIST_FILES["reviews"], "bad_review_score"): 1,
            (OLIST_FILES["reviews"], "review_before_purchase"): 1,
        }
    )
    assert report.counts("partial") == Counter({(OLIST_FILES["orders"], "missing_delivery_date"): 1})
    keys = {(r.reason, r.key) for r in report.rejects}
    assert ("unknown_customer", "o8") in keys and ("bad_review_score", "r5:o2") in keys


def test_every_input_row_is_accounted_for() -> None:
    """Rows read = rows that became events (or joined into one) + rows rejected, per file."""
    history = load_olist(EDGE)
    rejected = Counter(r.file for r in history.report.rejects if r.kind == "rejected")
    orders = len(history.placed) + len(history.canceled)
    assert history.report.rows_read[OLIST_FILES["orders"]] == orders + rejected[OLIST_FILES["orders"]]
    assert history.report.rows_read[OLIST_FILES["reviews"]] == len(history.reviews) + rejected[OLIST_FILES["reviews"]]
    items = pd.read_csv(EDGE / OLIST_FILES["items"], dtype=str)
    of_canceled = items["order_id"].isin(history.canceled["order_id"]).sum()  # valued in OrderCanceled
    assert of_canceled == 1
    assert (
        history.report.rows_read[OLIST_FILES["items"]]
        == len(history.items) + of_canceled + rejected[OLIST_FILES["items"]]
    )


def test_rejects_file_lists_each_row(tmp_path: Path) -> None:
    history = load_olist(EDGE)
    written = history.report.write_rejects(tmp_path / "rejects.csv")
    frame = pd.read_csv(tmp_path / "rejects.csv", dtype=str)
    assert written == len(frame) == 14
    assert list(frame.columns) == ["file", "key", "reason", "kind", "value"]
    assert set(frame["kind"]) == {"rejected", "partial"}


def test_zip_archive_loads_like_the_directory(tmp_path: Path) -> None:
    archive = tmp_path / "olist.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in EDGE.glob("*.csv"):
            zf.write(path, f"brazilian-ecommerce/{path.name}")  # nested, as some downloads are
    assert _by_id(archive) == _by_id(EDGE)


def test_events_come_in_event_time_order_across_files() -> None:
    events = list(load_olist(EDGE).events())
    times = [e.event_time for e in events]
    assert times == sorted(times)
    placed_at = {e.order_id: e.event_time for e in events if isinstance(e, OrderPlaced | OrderCanceled)}
    for event in events:
        assert event.event_time >= placed_at[event.order_id]
    # ties break deterministically: same instant, o1 before o11 and placed before anything else
    same = [e.event_id for e in events if e.event_time == datetime(2017, 3, 1, 10, tzinfo=UTC)]
    assert same == ["olist:placed:o1", "olist:placed:o11"]


def test_event_ids_are_deterministic() -> None:
    first = [e.event_id for e in load_olist(EDGE).events()]
    second = [e.event_id for e in load_olist(EDGE).events()]
    assert first == second and len(set(first)) == len(first)


def test_missing_file_is_named(tmp_path: Path) -> None:
    shutil.copytree(EDGE, tmp_path / "data")
    (tmp_path / "data" / OLIST_FILES["payments"]).unlink()
    with pytest.raises(LoaderError, match=r"lacks olist_order_payments_dataset\.csv"):
        load_olist(tmp_path / "data")


def test_optional_files_may_be_missing(tmp_path: Path) -> None:
    shutil.copytree(EDGE, tmp_path / "data")
    (tmp_path / "data" / OLIST_FILES["sellers"]).unlink()
    assert len(load_olist(tmp_path / "data").placed) == 7


def test_missing_column_is_named(tmp_path: Path) -> None:
    shutil.copytree(EDGE, tmp_path / "data")
    orders = tmp_path / "data" / OLIST_FILES["orders"]
    orders.write_text(orders.read_text().replace("order_status", "status", 1))
    with pytest.raises(LoaderError, match=r"olist_orders_dataset.csv lacks column\(s\) order_status"):
        load_olist(tmp_path / "data")


def test_missing_location_and_non_zip_file(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="does not exist"):
        load_olist(tmp_path / "nowhere")
    (tmp_path / "file.csv").write_text("a,b\n")
    with pytest.raises(LoaderError, match=r"neither a directory nor a \.zip"):
        load_olist(tmp_path / "file.csv")


def test_real_sample_loads_and_reconciles() -> None:
    """1,000 real orders: every order accounted for; money and people match a direct pandas join."""
    history = load_olist(REAL_SAMPLE)
    orders = pd.read_csv(REAL_SAMPLE / OLIST_FILES["orders"], dtype=str)
    customers = pd.read_csv(REAL_SAMPLE / OLIST_FILES["customers"], dtype=str)
    payments = pd.read_csv(REAL_SAMPLE / OLIST_FILES["payments"], dtype={"order_id": str})
    reviews = pd.read_csv(REAL_SAMPLE / OLIST_FILES["reviews"], dtype=str)

    canceled = orders["order_status"].isin(["canceled", "unavailable"])
    assert len(history.canceled) == canceled.sum() == 14
    assert len(history.placed) == (~canceled).sum() == 986
    assert history.report.rejected == 0

    paid = payments.groupby("order_id")["payment_value"].sum().round(2)
    placed = history.placed.set_index("order_id")
    assert (placed["payment_total"] == paid.reindex(placed.index)).all()
    person = orders.merge(customers, on="customer_id").set_index("order_id")["customer_unique_id"]
    assert (placed["customer_unique_id"] == person.reindex(placed.index)).all()
    assert len(history.reviews) == len(reviews)
    delivered_dates = orders.loc[~canceled, "order_delivered_customer_date"].notna().sum()
    assert len(history.delivered) == delivered_dates
