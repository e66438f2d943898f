"""Olist loader: the Kaggle "Brazilian E-Commerce Public Dataset by Olist" CSVs to a :class:`History`.

Reads the files from a directory or a .zip (members matched by file name at any depth). What it
makes of them, and why:

- A person is ``customer_unique_id``; ``customer_id`` is per order and joins orders to customers.
- ``canceled`` and ``unavailable`` orders become :class:`~segstream.schemas.OrderCanceled`, never
  a purchase; every other status is a purchase (:class:`~segstream.schemas.OrderPlaced`).
- Money is the sum of the order's ``payment_value``; an order without payment rows falls back to
  its items' price + freight, and one with neither is worth 0 (``payment_source`` says which).
- An order with a customer delivery date (and not canceled) gets an ``OrderDelivered``; late means
  delivered on a later calendar day than the estimate (the estimate is a date at midnight).
- Reviews join to customers through ``order_id``. Comments may span lines (quoted CSV). The same
  ``review_id`` may review several orders, and an order may have several reviews: each
  ``(review_id, order_id)`` pair is one review; an exact repeat of a pair is a duplicate.
- Every row that cannot become an event is recorded with its reason in the :class:`LoadReport`,
  and rows that became an event without one of their parts (a delivered order with no date) are
  recorded as ``partial``. Nothing is dropped silently.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from replay.history import History, LoaderError, LoadReport
from segstream.schemas import UNKNOWN_CATEGORY

__all__ = ["CANCELED_STATUSES", "OLIST_COLUMNS", "OLIST_FILES", "REQUIRED_FILES", "LoaderError", "load_olist"]

# The nine files as Kaggle publishes them, and every column of each.
OLIST_FILES = {
    "customers": "olist_customers_dataset.csv",
    "geolocation": "olist_geolocation_dataset.csv",
    "items": "olist_order_items_dataset.csv",
    "payments": "olist_order_payments_dataset.csv",
    "reviews": "olist_order_reviews_dataset.csv",
    "orders": "olist_orders_dataset.csv",
    "products": "olist_products_dataset.csv",
    "sellers": "olist_sellers_dataset.csv",
    "categories": "product_category_name_translation.csv",
}
OLIST_COLUMNS = {
    "customers": [
        "customer_id",
        "customer_unique_id",
        "customer_zip_code_prefix",
        "customer_city",
        "customer_state",
    ],
    "geolocation": [
        "geolocation_zip_code_prefix",
        "geolocation_lat",
        "geolocation_lng",
        "geolocation_city",
        "geolocation_state",
    ],
    "items": [
        "order_id",
        "order_item_id",
        "product_id",
        "seller_id",
        "shipping_limit_date",
        "price",
        "freight_value",
    ],
    "payments": ["order_id", "payment_sequential", "payment_type", "payment_installments", "payment_value"],
    "reviews": [
        "review_id",
        "order_id",
        "review_score",
        "review_comment_title",
        "review_comment_message",
        "review_creation_date",
        "review_answer_timestamp",
    ],
    "orders": [
        "order_id",
        "customer_id",
        "order_status",
        "order_purchase_timestamp",
        "order_approved_at",
        "order_delivered_carrier_date",
        "order_delivered_customer_date",
        "order_estimated_delivery_date",
    ],
    "products": [
        "product_id",
        "product_category_name",
        "product_name_lenght",
        "product_description_lenght",
        "product_photos_qty",
        "product_weight_g",
        "product_length_cm",
        "product_height_cm",
        "product_width_cm",
    ],
    "sellers": ["seller_id", "seller_zip_code_prefix", "seller_city", "seller_state"],
    "categories": ["product_category_name", "product_category_name_english"],
}
# Sellers and geolocation carry nothing an event needs; they are optional.
REQUIRED_FILES = ("orders", "customers", "items", "payments", "reviews", "products", "categories")
# The columns the loader reads; a file missing one of these is an error naming it.
USED_COLUMNS = {
    "orders": [
        "order_id",
        "customer_id",
        "order_status",
        "order_purchase_timestamp",
        "order_delivered_customer_date",
        "order_estimated_delivery_date",
    ],
    "customers": OLIST_COLUMNS["customers"],
    "items": ["order_id", "order_item_id", "product_id", "seller_id", "price", "freight_value"],
    "payments": OLIST_COLUMNS["payments"],
    "reviews": OLIST_COLUMNS["reviews"],
    "products": ["product_id", "product_category_name"],
    "categories": OLIST_COLUMNS["categories"],
}
CANCELED_STATUSES = frozenset({"canceled", "unavailable"})


# --- reading ----------------------------------------------------------------------------------


class _Files:
    """The Olist files of a directory or a zip archive, by logical name."""

    def __init__(self, location: Path) -> None:
        self.location = location
        if not location.exists():
            raise LoaderError(f"{location} does not exist; give a directory or .zip holding the Olist CSVs")
        self.zip: zipfile.ZipFile | None = None
        self.members: dict[str, str] = {}
        if location.is_file():
            if not zipfile.is_zipfile(location):
                raise LoaderError(f"{location} is neither a directory nor a .zip archive of the Olist CSVs")
            self.zip = zipfile.ZipFile(location)
            self.members = {Path(n).name: n for n in self.zip.namelist() if not n.endswith("/")}

    def has(self, name: str) -> bool:
        filename = OLIST_FILES[name]
        return filename in self.members if self.zip else (self.location / filename).exists()

    def require(self, names: Iterable[str]) -> None:
        """Fail before reading anything if a file is missing, naming every missing one."""
        missing = [OLIST_FILES[name] for name in names if not self.has(name)]
        if missing:
            raise LoaderError(
                f"{self.location} lacks {', '.join(missing)} (the loader needs the Kaggle Olist files: "
                f"{', '.join(OLIST_FILES[n] for n in REQUIRED_FILES)})"
            )

    def read(self, name: str) -> pd.DataFrame:
        filename = OLIST_FILES[name]
        self.require([name])
        handle = io.BytesIO(self.zip.read(self.members[filename])) if self.zip else self.location / filename
        try:
            frame = pd.read_csv(
                handle,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                encoding="utf-8-sig",  # the category translation file starts with a BOM
            )
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise LoaderError(f"{filename} in {self.location} is not a readable CSV: {exc}") from None
        frame.columns = [str(c).strip() for c in frame.columns]
        missing = [c for c in USED_COLUMNS[name] if c not in frame.columns]
        if missing:
            raise LoaderError(f"{filename} lacks column(s) {', '.join(missing)}; found: {', '.join(frame.columns)}")
        if name in ("orders", "customers") and frame.empty:
            raise LoaderError(f"{filename} in {self.location} has a header but no rows")
        # A download cut short ends without a line break, in the middle of its last row: pandas
        # pads that row with empty fields and nothing else would notice.
        if len(frame) and not self._ends_with_newline(filename) and frame.iloc[-1].isna().any():
            raise LoaderError(
                f"{filename} in {self.location} looks truncated: it ends in the middle of a row "
                f"(row {len(frame):,}, no line break, fields missing); download or extract it again"
            )
        return frame[USED_COLUMNS[name]]

    def _ends_with_newline(self, filename: str) -> bool:
        if self.zip:
            with self.zip.open(self.members[filename]) as member:
                data = member.read()  # zip members do not seek cheaply; the files are small
            return data.endswith(b"\n")
        with (self.location / filename).open("rb") as handle:
            handle.seek(0, io.SEEK_END)
            if handle.tell() == 0:
                return True
            handle.seek(-1, io.SEEK_END)
            return handle.read(1) == b"\n"


def _timestamps(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, format="ISO8601", errors="coerce").astype("datetime64[ns]")


def _numbers(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce")


def _take(frame: pd.DataFrame, bad: pd.Series, report: LoadReport, file: str, key: str | Iterable[str], reason: str):
    """Drop the rows flagged ``bad``, recording each with ``reason``."""
    if bad.any():
        rows = frame[bad]
        keys = rows[key] if isinstance(key, str) else rows[list(key)].astype(str).agg(":".join, axis=1)
        report.add(file, keys.fillna(""), reason)
    return frame[~bad]


# --- loading ----------------------------------------------------------------------------------


def load_olist(location: str | Path) -> History:
    """Load the Olist CSVs in ``location`` (a directory or a .zip) into a :class:`History`."""
    files = _Files(Path(location))
    files.require(REQUIRED_FILES)
    report = LoadReport()
    raw = {name: files.read(name) for name in REQUIRED_FILES}
    for name, frame in raw.items():
        report.rows_read[OLIST_FILES[name]] = len(frame)

    customers = _customers(raw["customers"], report)
    orders = _orders(raw["orders"], customers, report)
    items = _items(raw["items"], raw["products"], raw["categories"], orders, report)
    payments = _payments(raw["payments"], orders, report)
    reviews = _reviews(raw["reviews"], orders, report)

    value = _order_values(orders, items, payments)
    orders = orders.join(value, on="order_id")
    is_canceled = orders["order_status"].isin(CANCELED_STATUSES)

    placed, items = _placed(orders[~is_canceled], items)
    canceled = pd.DataFrame(
        {
            "order_id": orders.loc[is_canceled, "order_id"],
            "customer_unique_id": orders.loc[is_canceled, "customer_unique_id"],
            "event_time": orders.loc[is_canceled, "purchase_time"],
            "status": orders.loc[is_canceled, "order_status"],
            "order_value": orders.loc[is_canceled, "payment_total"],
        }
    ).reset_index(drop=True)
    delivered = _delivered(orders[~is_canceled], report)
    return History(
        source="olist",
        placed=placed,
        items=items,
        delivered=delivered,
        canceled=canceled,
        reviews=reviews,
        report=report,
    )


def _customers(frame: pd.DataFrame, report: LoadReport) -> pd.DataFrame:
    file = OLIST_FILES["customers"]
    frame = _take(frame, frame["customer_id"].isna(), report, file, "customer_unique_id", "missing_customer_id")
    frame = _take(frame, frame["customer_unique_id"].isna(), report, file, "customer_id", "missing_customer_unique_id")
    frame = _take(frame, frame["customer_id"].duplicated(), report, file, "customer_id", "duplicate_customer_id")
    return frame.rename(
        columns={"customer_zip_code_prefix": "zip_prefix", "customer_city": "city", "customer_state": "state"}
    ).fillna({"zip_prefix": "", "city": "", "state": ""})


def _orders(frame: pd.DataFrame, customers: pd.DataFrame, report: LoadReport) -> pd.DataFrame:
    file = OLIST_FILES["orders"]
    frame = _take(frame, frame["order_id"].isna(), report, file, "customer_id", "missing_order_id")
    frame = _take(frame, frame["order_id"].duplicated(), report, file, "order_id", "duplicate_order_id")
    frame = frame.assign(
        purchase_time=_timestamps(frame["order_purchase_timestamp"]),
        delivered_time=_timestamps(frame["order_delivered_customer_date"]),
        estimated_time=_timestamps(frame["order_estimated_delivery_date"]),
        order_status=frame["order_status"].fillna("").str.strip().str.lower(),
    )
    frame = _take(frame, frame["purchase_time"].isna(), report, file, "order_id", "bad_purchase_timestamp")
    frame = _take(
        frame, ~frame["customer_id"].isin(customers["customer_id"]), report, file, "order_id", "unknown_customer"
    )
    return frame.merge(customers, on="customer_id", how="left", validate="many_to_one")


def _items(
    frame: pd.DataFrame, products: pd.DataFrame, categories: pd.DataFrame, orders: pd.DataFrame, report: LoadReport
) -> pd.DataFrame:
    file = OLIST_FILES["items"]
    frame = frame.assign(price=_numbers(frame["price"]), freight=_numbers(frame["freight_value"]))
    frame = _take(
        frame, ~frame["order_id"].isin(orders["order_id"]), report, file, ("order_id", "order_item_id"), "unknown_order"
    )
    bad_money = frame["price"].isna() | frame["freight"].isna() | (frame["price"] < 0) | (frame["freight"] < 0)
    frame = _take(frame, bad_money, report, file, ("order_id", "order_item_id"), "bad_price")
    duplicate = frame.duplicated(["order_id", "order_item_id"])
    frame = _take(frame, duplicate, report, file, ("order_id", "order_item_id"), "duplicate_item")
    english = (
        categories.dropna()
        .drop_duplicates("product_category_name")
        .set_index("product_category_name")["product_category_name_english"]
    )
    product_category = products.drop_duplicates("product_id").set_index("product_id")["product_category_name"]
    portuguese = frame["product_id"].map(product_category)
    # Untranslated categories keep their Portuguese name; products without one are 'unknown'.
    category = portuguese.map(english).fillna(portuguese).fillna(UNKNOWN_CATEGORY)
    return frame.assign(
        category=category, seller_id=frame["seller_id"].fillna(""), product_id=frame["product_id"].fillna("")
    )


def _payments(frame: pd.DataFrame, orders: pd.DataFrame, report: LoadReport) -> pd.DataFrame:
    file = OLIST_FILES["payments"]
    key = ("order_id", "payment_sequential")
    frame = frame.assign(
        value=_numbers(frame["payment_value"]),
        installments=_numbers(frame["payment_installments"]).fillna(0).clip(lower=0).astype("int64"),
    )
    frame = _take(frame, ~frame["order_id"].isin(orders["order_id"]), report, file, key, "unknown_order")
    frame = _take(frame, frame["value"].isna() | (frame["value"] < 0), report, file, key, "bad_payment_value")
    frame = _take(frame, frame.duplicated(["order_id", "payment_sequential"]), report, file, key, "duplicate_payment")
    return frame


def _order_values(orders: pd.DataFrame, items: pd.DataFrame, payments: pd.DataFrame) -> pd.DataFrame:
    by_payments = payments.groupby("order_id").agg(paid=("value", "sum"), installments=("installments", "max"))
    by_payments["payment_types"] = _joined_types(payments)
    by_items = (items["price"] + items["freight"]).groupby(items["order_id"]).sum().rename("items_value")
    value = pd.DataFrame(index=pd.Index(orders["order_id"], name="order_id")).join(by_payments).join(by_items)
    has_payments = value["paid"].notna()
    has_items = value["items_value"].notna()
    value["payment_total"] = value["paid"].where(has_payments, value["items_value"]).fillna(0.0).round(2)
    value["payment_source"] = np.select([has_payments, has_items], ["payments", "items"], "none")
    value["installments"] = value["installments"].fillna(0).astype("int64")
    value["payment_types"] = value["payment_types"].fillna("")
    return value[["payment_total", "payment_source", "installments", "payment_types"]]


def _joined_types(payments: pd.DataFrame) -> pd.Series:
    """Each order's distinct payment types, sorted and '|'-joined (vectorised: most orders have one)."""
    pairs = payments[["order_id", "payment_type"]].dropna().drop_duplicates().sort_values(["order_id", "payment_type"])
    several = pairs["order_id"].duplicated(keep=False)
    single = pairs[~several].set_index("order_id")["payment_type"]
    joined = pairs[several].groupby("order_id")["payment_type"].agg("|".join)
    return pd.concat([single, joined])


def _placed(orders: pd.DataFrame, items: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Purchase frame with each order's item rows as a contiguous range of the items frame."""
    placed = orders.reset_index(drop=True)
    position = pd.Series(np.arange(len(placed)), index=placed["order_id"])
    items = items[items["order_id"].isin(position.index)]
    items = items.assign(position=items["order_id"].map(position).to_numpy(), line=_numbers(items["order_item_id"]))
    items = items.sort_values(["position", "line", "product_id"], kind="mergesort", ignore_index=True)
    counts = np.bincount(items["position"].to_numpy(), minlength=len(placed))
    ends = np.cumsum(counts)
    placed = pd.DataFrame(
        {
            "order_id": placed["order_id"],
            "customer_unique_id": placed["customer_unique_id"],
            "customer_id": placed["customer_id"],
            "zip_prefix": placed["zip_prefix"],
            "city": placed["city"],
            "state": placed["state"],
            "event_time": placed["purchase_time"],
            "payment_total": placed["payment_total"],
            "payment_types": placed["payment_types"],
            "installments": placed["installments"],
            "payment_source": placed["payment_source"],
            "item_start": ends - counts,
            "item_end": ends,
        }
    )
    return placed, items[["product_id", "category", "price", "freight", "seller_id"]]


def _delivered(orders: pd.DataFrame, report: LoadReport) -> pd.DataFrame:
    file = OLIST_FILES["orders"]
    undated = orders["delivered_time"].isna()
    report.add(
        file,
        orders.loc[undated & (orders["order_status"] == "delivered"), "order_id"],
        "missing_delivery_date",
        "partial",
    )
    dated = orders[~undated]
    early = dated["delivered_time"] < dated["purchase_time"]
    report.add(file, dated.loc[early, "order_id"], "delivery_before_purchase", "partial")
    dated = dated[~early]
    estimated = dated["estimated_time"]
    late = (dated["delivered_time"].dt.normalize() > estimated.dt.normalize()).astype("float64")
    return pd.DataFrame(
        {
            "order_id": dated["order_id"],
            "customer_unique_id": dated["customer_unique_id"],
            "event_time": dated["delivered_time"],
            "estimated_time": estimated,
            "late": late.where(estimated.notna()),
        }
    ).reset_index(drop=True)


def _reviews(frame: pd.DataFrame, orders: pd.DataFrame, report: LoadReport) -> pd.DataFrame:
    file = OLIST_FILES["reviews"]
    key = ("review_id", "order_id")
    frame = _take(frame, frame["review_id"].isna(), report, file, key, "missing_review_id")
    frame = _take(frame, ~frame["order_id"].isin(orders["order_id"]), report, file, key, "unknown_order")
    frame = _take(frame, frame.duplicated(["review_id", "order_id"]), report, file, key, "duplicate_review")
    score = _numbers(frame["review_score"])
    frame = frame.assign(score=score)
    bad_score = score.isna() | (score < 1) | (score > 5) | (score != score.round())
    frame = _take(frame, bad_score, report, file, key, "bad_review_score")
    created = _timestamps(frame["review_creation_date"])
    answered = _timestamps(frame["review_answer_timestamp"])
    frame = frame.assign(created_time=created, event_time=answered.fillna(created))
    frame = _take(frame, frame["created_time"].isna(), report, file, key, "bad_review_timestamp")
    joined = frame.merge(orders[["order_id", "customer_unique_id", "purchase_time"]], on="order_id", how="left")
    joined = _take(joined, joined["event_time"] < joined["purchase_time"], report, file, key, "review_before_purchase")
    message = joined["review_comment_message"].fillna("").str.strip()
    title = joined["review_comment_title"].fillna("").str.strip()
    return pd.DataFrame(
        {
            "review_id": joined["review_id"],
            "order_id": joined["order_id"],
            "customer_unique_id": joined["customer_unique_id"],
            "event_time": joined["event_time"],
            "created_time": joined["created_time"],
            "score": joined["score"].astype("int64"),
            "comment_length": message.str.len().astype("int64"),
            "comment_present": (message.str.len() > 0) | (title.str.len() > 0),
        }
    ).reset_index(drop=True)
