"""Any transaction log as a history: a column mapping, and the Online Retail preset.

One row per order line (an invoice line, a CDNOW-style ``customer date quantity amount`` row):

- the mapping (:class:`ColumnMapping`, from a TOML file or flags) names the columns of the customer,
  the order (invoice), the event time (with an optional ``strftime`` format such as ``%Y%m%d``) and
  the amount, either a column or quantity x unit price; optionally product, category, geography;
- files are CSV with any delimiter (``delimiter = "whitespace"`` for runs of blanks), gzip-ped CSV,
  or .xlsx (openpyxl), read in chunks: the raw file never has to fit in memory, only the compact
  lines kept from it;
- the lines of one order become one ``OrderPlaced`` (items list, amount = sum of its lines) at the
  order's earliest line time, with the deterministic event id ``<source>:placed:<order>``; orders
  whose id starts with ``cancel_prefix`` (Online Retail: ``C``) become one ``OrderReturned`` whose
  amount comes off the customer's monetary value (docs/definitions.md);
- rows that become no event are counted by reason in the load report, never silently dropped:
  no customer id (guest checkouts), a bad time, a bad or non-positive price, a bad quantity,
  a negative quantity outside a cancellation, a duplicate line, an order spread over several
  customers.

>>> mapping = ColumnMapping(customer="cust", order="inv", time="day", time_format="%Y%m%d",
...                         quantity="qty", unit_price="price")
>>> mapping.columns()
['cust', 'inv', 'day', 'qty', 'price']
"""

from __future__ import annotations

import gzip
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from replay.history import History, LoaderError, LoadReport, empty_frame

__all__ = [
    "ONLINE_RETAIL",
    "ONLINE_RETAIL_II",
    "ColumnMapping",
    "load_mapping",
    "load_online_retail",
    "load_transactions",
]

CHUNK_ROWS = 200_000


class ColumnMapping(BaseModel):
    """Which column is what in a transaction log (names as in the file's header)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    customer: str
    order: str | None = None  # None: every row is an order of its own (CDNOW-style logs), id "r<row>"
    time: str
    time_format: str | None = None  # strftime format; None: let pandas parse ISO-like dates
    amount: str | None = None  # the line's amount; else quantity x unit_price
    quantity: str | None = None
    unit_price: str | None = None
    product: str | None = None
    category: str | None = None
    geography: str | None = None
    cancel_prefix: str | None = None  # order ids starting with it cancel purchases (Online Retail: "C")
    delimiter: str = ","  # "whitespace": runs of spaces and tabs
    header: bool = True  # False: columns are named by position, "0", "1", ...
    source: str = "transactions"  # the prefix of event ids

    @model_validator(mode="after")
    def _amount_is_defined(self) -> ColumnMapping:
        if self.amount is None and (self.quantity is None or self.unit_price is None):
            raise ValueError("map either `amount`, or both `quantity` and `unit_price`")
        return self

    def columns(self) -> list[str]:
        named = [self.customer, self.order, self.time, self.amount, self.quantity, self.unit_price]
        named += [self.product, self.category, self.geography]
        return [name for name in named if name is not None]


ONLINE_RETAIL = ColumnMapping(
    customer="CustomerID",
    order="InvoiceNo",
    time="InvoiceDate",
    quantity="Quantity",
    unit_price="UnitPrice",
    product="StockCode",  # no category column: items are in category "unknown"
    geography="Country",
    cancel_prefix="C",
    source="online-retail",
)
ONLINE_RETAIL_II = ONLINE_RETAIL.model_copy(
    update={"customer": "Customer ID", "order": "Invoice", "unit_price": "Price"}
)


def load_mapping(path: str | Path) -> ColumnMapping:
    """A mapping from a TOML file (keys as :class:`ColumnMapping`'s fields; see docs/mapping.toml)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
        # the [columns] table, or the file's top level without a campaign log's [campaigns] table
        return ColumnMapping(**data.get("columns", {k: v for k, v in data.items() if k != "campaigns"}))
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise LoaderError(f"mapping {path}: {exc}") from None


def _chunks(path: Path, mapping: ColumnMapping, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The file's rows as string frames of at most ``chunk_rows`` rows."""
    name = path.name.lower()
    if name.endswith(".xlsx"):
        yield from _xlsx_chunks(path, mapping, chunk_rows)
        return
    options: dict = {"dtype": str, "keep_default_na": False, "chunksize": chunk_rows}
    if mapping.delimiter == "whitespace":
        options["sep"] = r"\s+"
    else:
        options["sep"] = mapping.delimiter
    if not mapping.header:
        options["header"] = None
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as handle:
        for chunk in pd.read_csv(handle, **options):
            chunk.columns = [str(column).strip() for column in chunk.columns]
            yield chunk


def _xlsx_chunks(path: Path, mapping: ColumnMapping, chunk_rows: int) -> Iterator[pd.DataFrame]:
    from openpyxl import load_workbook

    book = load_workbook(path, read_only=True, data_only=True)
    try:
        rows = book.worksheets[0].iter_rows(values_only=True)
        header = [str(c).strip() for c in next(rows)] if mapping.header else None

        def frame(batch: list) -> pd.DataFrame:
            return pd.DataFrame(batch, columns=header or [str(i) for i in range(len(batch[0]))])

        batch: list = []
        for row in rows:
            batch.append(["" if value is None else str(value) for value in row])
            if len(batch) >= chunk_rows:
                yield frame(batch)
                batch = []
        if batch:
            yield frame(batch)
    finally:
        book.close()


def _lines(chunk: pd.DataFrame, mapping: ColumnMapping, report: LoadReport, file: str, first_row: int) -> pd.DataFrame:
    """The chunk's valid lines, compact; every other row counted in ``report`` by reason."""
    missing = [c for c in mapping.columns() if c not in chunk.columns]
    if missing:
        raise LoaderError(f"{file}: no column {', '.join(map(repr, missing))} (columns: {', '.join(chunk.columns)})")
    rows = first_row + np.arange(len(chunk), dtype="int64")  # data row numbers, for the report
    frame = pd.DataFrame(
        {
            "row": rows,
            # a spreadsheet's number (17850.0) is the id 17850
            "customer": chunk[mapping.customer].str.strip().str.replace(r"^(\d+)\.0$", r"\1", regex=True),
            "order": chunk[mapping.order].str.strip()
            if mapping.order
            else "r" + pd.Series(rows, index=chunk.index).astype(str),
            "product": chunk[mapping.product].str.strip() if mapping.product else "",
            "category": chunk[mapping.category].str.strip() if mapping.category else "unknown",
            "geography": chunk[mapping.geography].str.strip() if mapping.geography else "",
        }
    )
    frame["time"] = pd.to_datetime(chunk[mapping.time].str.strip(), format=mapping.time_format, errors="coerce")
    if mapping.amount is not None:
        frame["quantity"] = 1.0
        frame["amount"] = pd.to_numeric(chunk[mapping.amount], errors="coerce")
        frame["price"] = frame["amount"].abs()
        bad_price = frame["amount"].isna()
    else:
        frame["quantity"] = pd.to_numeric(chunk[mapping.quantity], errors="coerce")
        frame["price"] = pd.to_numeric(chunk[mapping.unit_price], errors="coerce")
        frame["amount"] = frame["quantity"] * frame["price"]
        bad_price = frame["price"].isna() | (frame["price"] <= 0)
    frame["category"] = frame["category"].where(frame["category"] != "", "unknown")
    canceling = _canceling(frame["order"], mapping)
    checks = [
        (frame["customer"] == "", "no customer id (guest checkout)"),
        (frame["order"] == "", "no order id"),
        (frame["time"].isna(), "bad time"),
        (bad_price, "bad, zero or negative price" if mapping.amount is None else "bad amount"),
        (frame["quantity"].isna() | (frame["quantity"] == 0), "bad or zero quantity"),
        ((frame["quantity"] < 0) & ~canceling, "negative quantity outside a cancellation"),
    ]
    report.culprits[(file, "bad time")] = f"column {mapping.time!r} with format {mapping.time_format or 'ISO'!r}"
    keep = pd.Series(True, index=frame.index)
    for bad, reason in checks:
        bad = bad & keep
        if bad.any():
            values = chunk.loc[bad, mapping.time] if reason == "bad time" else None
            report.add(file, frame.loc[bad, "row"], reason, values=values)
        keep &= ~bad
    kept = frame[keep]
    # repeated strings as categories: the kept lines of a large log are most of a load's memory
    return kept.astype({name: "category" for name in _CATEGORICAL})


_CATEGORICAL = ("customer", "product", "category", "geography")


def _canceling(orders: pd.Series, mapping: ColumnMapping) -> pd.Series:
    """Which order ids are cancellations (start with the mapping's ``cancel_prefix``)."""
    if not mapping.cancel_prefix:
        return pd.Series(False, index=orders.index)
    return orders.astype(str).str.startswith(mapping.cancel_prefix)


def load_transactions(path: str | Path, mapping: ColumnMapping, chunk_rows: int = CHUNK_ROWS) -> History:
    """A :class:`History` of a transaction log (one row per order line), read in chunks."""
    path = Path(path)
    if not path.is_file():
        raise LoaderError(f"no transaction log at {path}")
    report = LoadReport()
    file = path.name
    kept, first_row = [], 0
    for chunk in _chunks(path, mapping, chunk_rows):
        report.rows_read[file] += len(chunk)
        kept.append(_lines(chunk, mapping, report, file, first_row))
        first_row += len(chunk)
    columns = ["row", "customer", "order", "product", "category", "geography", "time", "quantity", "price", "amount"]
    if not kept:
        return _history(pd.DataFrame(columns=columns), mapping, report, file)
    lines = pd.concat(kept, ignore_index=True)
    for name in _CATEGORICAL:  # concat falls back to strings when the chunks' categories differ
        lines[name] = union_categoricals([frame[name] for frame in kept])
    return _history(lines, mapping, report, file)


def _history(lines: pd.DataFrame, mapping: ColumnMapping, report: LoadReport, file: str) -> History:
    same = ["customer", "order", "product", "category", "geography", "time", "quantity", "price"]
    duplicate = lines.duplicated(same)
    if duplicate.any():
        report.add(file, lines.loc[duplicate, "row"], "duplicate line")
    lines = lines[~duplicate]
    owners = lines.groupby("order", observed=True)["customer"].nunique()
    shared = lines["order"].isin(owners.index[owners > 1])
    if shared.any():
        report.add(file, lines.loc[shared, "row"], "order spread over several customers")
    lines = lines[~shared]
    # one order per id, its lines in file order; a cancellation's lines count as positive amounts
    lines = lines.sort_values(["order", "row"], kind="mergesort", ignore_index=True)
    lines["amount"] = lines["amount"].abs().where(_canceling(lines["order"], mapping), lines["amount"])
    items = pd.DataFrame(
        {
            "product_id": lines["product"],
            "category": lines["category"],
            "price": lines["amount"].abs().round(2),
            "freight": 0.0,
            "seller_id": "",
        }
    )
    grouped = lines.groupby("order", sort=False)
    orders = grouped.agg(
        customer_unique_id=("customer", "first"),
        event_time=("time", "min"),
        amount=("amount", "sum"),
        geography=("geography", "first"),
        item_count=("row", "size"),
    ).reset_index()
    orders["item_end"] = orders["item_count"].cumsum()
    orders["item_start"] = orders["item_end"] - orders["item_count"]
    orders["amount"] = orders["amount"].round(2)
    is_return = _canceling(orders["order"], mapping)
    bought, back = orders[~is_return], orders[is_return]
    placed = pd.DataFrame(
        {
            "order_id": bought["order"],
            "customer_unique_id": bought["customer_unique_id"],
            "customer_id": bought["customer_unique_id"],
            "zip_prefix": "",
            "city": "",
            "state": bought["geography"],
            "event_time": bought["event_time"],
            "payment_total": bought["amount"],
            "payment_types": "",
            "installments": 0,
            "payment_source": "items",
            "item_start": bought["item_start"],
            "item_end": bought["item_end"],
        }
    ).reset_index(drop=True)
    returned = empty_frame("returned")
    if len(back):
        returned = pd.DataFrame(
            {
                "order_id": back["order"],
                "customer_unique_id": back["customer_unique_id"],
                "event_time": back["event_time"],
                "amount": back["amount"].abs(),
                "item_start": back["item_start"],
                "item_end": back["item_end"],
            }
        ).reset_index(drop=True)
    return History(
        source=mapping.source,
        placed=placed,
        items=items,
        delivered=empty_frame("delivered"),
        canceled=empty_frame("canceled"),
        reviews=empty_frame("reviews"),
        report=report,
        returned=returned,
    )


def load_online_retail(path: str | Path, chunk_rows: int = CHUNK_ROWS) -> History:
    """The UCI Online Retail or Online Retail II file (CSV, gzip or .xlsx), by its header."""
    path = Path(path)
    header = next(_chunks(path, ONLINE_RETAIL.model_copy(update={"header": True}), 1)).columns
    mapping = ONLINE_RETAIL_II if "Invoice" in header else ONLINE_RETAIL
    return load_transactions(path, mapping, chunk_rows)
