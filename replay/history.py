"""A loaded history: columnar event frames, the event-time timeline, and the load report.

A source (``replay.olist``, ``replay.transactions``) turns files into a :class:`History`: one DataFrame per event
type plus a :class:`LoadReport` of every row that could not become an event. Events are built
lazily from the frames in timeline order, so a large history costs its frames, not millions of
pydantic objects: as objects (:meth:`History.builder`) or, for the replay, straight to their wire
bytes (:meth:`History.encoder`, which validates and serialises each distinct order line once).

The timeline is the one event-time order of everything a replay sends: customer events sorted by
``(event_time, kind rank, event_id)`` (a stable, deterministic tie-break: at the same instant an
order is placed before it is delivered, canceled or reviewed) with clock ticks at every multiple of
the tick interval, placed before the events of that same instant.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError

from segstream.schemas import (
    CampaignSent,
    CustomerEvent,
    Item,
    OrderCanceled,
    OrderDelivered,
    OrderPlaced,
    OrderReturned,
    ReviewPosted,
    encode_event,
    make_event_id,
)

__all__ = ["CAMPAIGN", "TICK", "History", "LoadReport", "LoaderError", "Reject", "Timeline", "empty_frame"]

# Kind codes in the timeline; their order is the tie-break rank at equal event times.
TICK, PLACED, DELIVERED, CANCELED, REVIEW, RETURNED, CAMPAIGN = 0, 1, 2, 3, 4, 5, 6
KIND_NAMES = {
    PLACED: "order_placed",
    DELIVERED: "order_delivered",
    CANCELED: "order_canceled",
    REVIEW: "review_posted",
    RETURNED: "order_returned",
    CAMPAIGN: "campaign_sent",
}
# Columns of the items frame, in the order of Item's fields.
ITEM_FIELDS = ("product_id", "category", "price", "freight", "seller_id")
# Column dtypes of the frames a source may leave empty (see History): what an empty one holds.
_EMPTY = {
    "delivered": {
        "order_id": "object",
        "customer_unique_id": "object",
        "event_time": "datetime64[ns]",
        "estimated_time": "datetime64[ns]",
        "late": "float64",
    },
    "canceled": {
        "order_id": "object",
        "customer_unique_id": "object",
        "event_time": "datetime64[ns]",
        "status": "object",
        "order_value": "float64",
    },
    "reviews": {
        "review_id": "object",
        "order_id": "object",
        "customer_unique_id": "object",
        "event_time": "datetime64[ns]",
        "created_time": "datetime64[ns]",
        "score": "int64",
        "comment_length": "int64",
        "comment_present": "bool",
    },
    "campaigns": {
        "campaign_id": "object",
        "customer_unique_id": "object",
        "event_time": "datetime64[ns]",
        "offer": "object",
        "group": "object",
    },
    "returned": {
        "order_id": "object",
        "customer_unique_id": "object",
        "event_time": "datetime64[ns]",
        "amount": "float64",
        "item_start": "int64",
        "item_end": "int64",
    },
}


class LoaderError(ValueError):
    """The input is not a readable history; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Reject:
    """One source row that became no event (``kind="rejected"``) or only part of one (``"partial"``)."""

    file: str
    key: str
    reason: str
    kind: str = "rejected"
    value: str = ""  # the offending value, where one column is at fault


# Rejects that say the input is wrong rather than messy (LoadReport.check).
BOUNDED_REASONS = ("bad time", "unknown_order")
MIN_BAD_ROWS = 3


@dataclass
class LoadReport:
    """What a load made of its input: rows read per file, rejects by reason, partial rows."""

    rows_read: Counter = field(default_factory=Counter)
    rejects: list[Reject] = field(default_factory=list)
    # (file, reason) -> what is at fault, for the error when too many rows fail: "column 'date' with format '%Y%m%d'"
    culprits: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(
        self,
        file: str,
        keys: pd.Series | list[str],
        reason: str,
        kind: str = "rejected",
        values: pd.Series | list[str] | None = None,
    ) -> None:
        if values is None:
            self.rejects.extend(Reject(file, str(key), reason, kind) for key in keys)
        else:
            self.rejects.extend(
                Reject(file, str(key), reason, kind, "" if value is None else str(value))
                for key, value in zip(keys, values, strict=True)
            )

    def counts(self, kind: str = "rejected") -> Counter:
        """``Counter`` of ``(file, reason)`` for rejects of one kind."""
        return Counter((r.file, r.reason) for r in self.rejects if r.kind == kind)

    @property
    def rejected(self) -> int:
        return sum(1 for r in self.rejects if r.kind == "rejected")

    def write_rejects(self, path: Path) -> int:
        """Write every reject as CSV (file, key, reason, kind, value); returns the number written."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["file", "key", "reason", "kind", "value"])
            writer.writerows((r.file, r.key, r.reason, r.kind, r.value) for r in self.rejects)
        return len(self.rejects)

    def check(self, max_share: float, min_rows: int = MIN_BAD_ROWS) -> None:
        """Refuse a load whose input looks wrong rather than messy: a reason that says the mapping
        or a file is at fault (a time that does not parse, rows naming orders the orders file lacks)
        rejecting more than ``max_share`` of a file's rows, and more than ``min_rows`` of them (a
        stray row or two in a small file is messy data, not a broken mapping)."""
        for (file, reason), count in sorted(self.counts().items()):
            read = self.rows_read.get(file, 0)
            if reason not in BOUNDED_REASONS or not read or count / read <= max_share or count <= min_rows:
                continue
            if reason == "bad time":
                samples = [r.value for r in self.rejects if r.file == file and r.reason == reason]
                shown = ", ".join(map(repr, list(dict.fromkeys(samples))[:3]))
                culprit = self.culprits.get((file, reason), "the time column")
                detail = f"{culprit} gives no time for {shown}; fix the mapping"
            else:
                detail = "is olist_orders_dataset.csv truncated, or from another export than this file?"
            raise LoaderError(
                f"{file}: {count:,} of {read:,} rows ({count / read:.1%}) rejected as {reason!r}, more than the "
                f"{max_share:.1%} allowed (--max-rejects): {detail}"
            )


@dataclass(frozen=True)
class Timeline:
    """Entries of a replay in event-time order: parallel arrays, one row per entry."""

    time_ns: np.ndarray  # int64 nanoseconds since the epoch (UTC)
    kind: np.ndarray  # int8 kind code (TICK for clock ticks)
    row: np.ndarray  # int64 row in the kind's frame (for ticks: unused)
    customer: np.ndarray  # object: customer_unique_id, None for ticks

    def __len__(self) -> int:
        return len(self.time_ns)


@dataclass
class History:
    """Event frames of one source, ready to be replayed.

    Frames (all timestamps naive ``datetime64[ns]``, read as UTC):

    - ``placed``: order_id, customer_unique_id, customer_id, zip_prefix, city, state, event_time,
      payment_total, payment_types ('|'-joined), installments, payment_source, item_start, item_end
    - ``items``: product_id, category, price, freight, seller_id; rows item_start:item_end of an order
    - ``delivered``: order_id, customer_unique_id, event_time, estimated_time, late (float: 1/0/NaN)
    - ``canceled``: order_id, customer_unique_id, event_time, status, order_value
    - ``reviews``: review_id, order_id, customer_unique_id, event_time, created_time, score,
      comment_length, comment_present
    - ``returned``: order_id, customer_unique_id, event_time, amount, item_start, item_end (rows of
      ``items``, prices positive): cancellations of purchases (Online Retail ``C`` invoices)
    - ``campaigns``: campaign_id, customer_unique_id, event_time (sent), offer, group ('treatment' or
      'control'): campaign sends, from a campaign log (``replay.transactions.load_campaigns``)
    """

    source: str
    placed: pd.DataFrame
    items: pd.DataFrame
    delivered: pd.DataFrame
    canceled: pd.DataFrame
    reviews: pd.DataFrame
    report: LoadReport
    returned: pd.DataFrame = field(default_factory=lambda: empty_frame("returned"))
    campaigns: pd.DataFrame = field(default_factory=lambda: empty_frame("campaigns"))
    campaign_source: str = "campaigns"  # the prefix of the campaign sends' event ids

    # ---- counts ------------------------------------------------------------------------------

    def event_counts(self) -> dict[str, int]:
        return {
            "order_placed": len(self.placed),
            "order_delivered": len(self.delivered),
            "order_canceled": len(self.canceled),
            "review_posted": len(self.reviews),
            "order_returned": len(self.returned),
            "campaign_sent": len(self.campaigns),
        }

    # ---- timeline ----------------------------------------------------------------------------

    def timeline(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        tick_seconds: int | None = 86_400,
        lateness_seconds: int = 0,
        seed: int = 0,
    ) -> Timeline:
        """Every event with ``since <= event_time < until`` plus clock ticks, in event-time order.

        ``lateness_seconds`` > 0 makes a disordered timeline for robustness backtests: each customer
        event is delivered as if it were up to that many seconds late (uniformly at random,
        reproducible by ``seed``); ticks stay in place, so late events arrive after the watermark.
        """
        frames = [
            (PLACED, self.placed, "order_id"),
            (DELIVERED, self.delivered, "order_id"),
            (CANCELED, self.canceled, "order_id"),
            (REVIEW, self.reviews, "review_id"),
            (RETURNED, self.returned, "order_id"),
            (CAMPAIGN, self.campaigns, "campaign_id"),
        ]
        parts = []
        for kind, frame, id_column in frames:
            if kind == REVIEW:
                ids = frame["review_id"] + ":" + frame["order_id"]
            elif kind == CAMPAIGN:
                ids = frame["campaign_id"] + ":" + frame["customer_unique_id"]
            else:
                ids = frame[id_column]
            parts.append(
                pd.DataFrame(
                    {
                        "time_ns": frame["event_time"].to_numpy("datetime64[ns]").astype("int64"),
                        "kind": np.int8(kind),
                        "row": np.arange(len(frame), dtype="int64"),
                        "tie": ids.to_numpy(dtype=object),
                        "customer": frame["customer_unique_id"].to_numpy(dtype=object),
                    }
                )
            )
        entries = pd.concat(parts, ignore_index=True)
        if since is not None:
            entries = entries[entries["time_ns"] >= _ns(since)]
        if until is not None:
            entries = entries[entries["time_ns"] < _ns(until)]
        if tick_seconds and len(entries):
            step = tick_seconds * 1_000_000_000
            first = -(-int(entries["time_ns"].min()) // step) * step  # first boundary at/after start
            # Integer arithmetic: np.arange(first, stop, step) sizes itself in floating point and can
            # drop the last boundary at nanosecond magnitudes.
            count = max(0, (int(entries["time_ns"].max()) - first) // step + 1)
            boundaries = first + step * np.arange(count, dtype="int64")
            ticks = pd.DataFrame(
                {
                    "time_ns": boundaries,
                    "kind": np.int8(TICK),
                    "row": np.arange(len(boundaries), dtype="int64"),
                    "tie": "",
                    "customer": None,
                }
            )
            entries = pd.concat([entries, ticks], ignore_index=True)
        entries["order"] = entries["time_ns"]
        if lateness_seconds > 0:
            late = entries["kind"] != TICK
            delay = np.random.default_rng(seed).integers(0, lateness_seconds * 1_000_000_000, int(late.sum()))
            entries.loc[late, "order"] += delay
        entries = entries.sort_values(["order", "kind", "tie"], kind="mergesort", ignore_index=True)
        return Timeline(
            time_ns=entries["time_ns"].to_numpy("int64"),
            kind=entries["kind"].to_numpy("int8"),
            row=entries["row"].to_numpy("int64"),
            customer=entries["customer"].to_numpy(dtype=object),
        )

    # ---- materialisation ---------------------------------------------------------------------

    def events(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[CustomerEvent | CampaignSent]:
        """Customer events in event-time order (no ticks): what a replay sends, as objects."""
        timeline = self.timeline(since, until, tick_seconds=None)
        builder = self.builder()
        for kind, row in zip(timeline.kind.tolist(), timeline.row.tolist(), strict=True):
            yield builder(kind, row)

    def builder(self) -> Callable[[int, int], CustomerEvent | CampaignSent]:
        """A function ``(kind, row) -> event`` over this history's frames (columns pre-extracted)."""
        items = _columns(self.items)
        product, category, price, freight, seller = (items[name] for name in ITEM_FIELDS)

        def lines(start: int, end: int) -> list[dict]:
            # dicts, validated into Items by the event's own validation (a fifth faster than Item objects)
            return [
                {
                    "product_id": product[j],
                    "category": category[j],
                    "price": price[j],
                    "freight": freight[j],
                    "seller_id": seller[j],
                }
                for j in range(start, end)
            ]

        return self._factory(lines)

    def encoder(self) -> Callable[[int, int], bytes]:
        """A function ``(kind, row) -> wire bytes``, equal to ``encode_event(builder()(kind, row))``.

        What the replay sends. An order's items are most of its bytes (an invoice has ~20 lines);
        validated and serialised inside each event, they made an Online Retail event five times as
        costly to build and encode as an Olist one (58 against 11 us). Here every
        distinct item (product, category, price, freight, seller) is validated and serialised by
        pydantic once, up front: an invalid one raises :class:`LoaderError` before anything is sent.
        An event is validated and serialised with no items, and its items' JSON is put in its empty
        ``"items":[]``. That text occurs nowhere else in the payload: inside a JSON string every
        quote is escaped, so ``"items":`` can only be the key.
        """
        build = self._factory(lambda start, end: [])
        columns = list(ITEM_FIELDS)
        codes, first = _distinct_rows(self.items[columns])
        distinct = self.items.iloc[first][columns]
        validate, serialize = Item.__pydantic_validator__.validate_python, Item.__pydantic_serializer__.to_json
        fragments = np.empty(len(first), dtype=object)
        for code, values in enumerate(zip(*(distinct[name].tolist() for name in columns), strict=True)):
            try:
                fragments[code] = serialize(validate(dict(zip(columns, values, strict=True))))
            except ValidationError as exc:
                raise LoaderError(
                    f"{self.source}: order line {int(first[code])} ({dict(zip(columns, values, strict=True))}) "
                    f"is not a valid item: {exc}"
                ) from exc
        bounds = {
            kind: (frame["item_start"].tolist(), frame["item_end"].tolist())
            for kind, frame in ((PLACED, self.placed), (RETURNED, self.returned))
        }

        def encode(kind: int, i: int) -> bytes:
            payload = encode_event(build(kind, i))
            if kind in bounds:
                start, end = bounds[kind][0][i], bounds[kind][1][i]
                if end > start:
                    items = b",".join(fragments[codes[start:end]].tolist())
                    payload = payload.replace(b'"items":[]', b'"items":[' + items + b"]", 1)
            return payload

        return encode

    def _factory(self, lines: Callable[[int, int], list]) -> Callable[[int, int], CustomerEvent | CampaignSent]:
        """The event builder of :meth:`builder` and :meth:`encoder`, with ``lines(start, end)`` giving
        an order's items (rows ``start:end`` of the items frame)."""
        placed = _columns(self.placed)
        delivered = _columns(self.delivered)
        canceled = _columns(self.canceled)
        reviews = _columns(self.reviews)
        returned = _columns(self.returned)
        campaigns = _columns(self.campaigns)
        source, campaign_source = self.source, self.campaign_source

        def build(kind: int, i: int) -> CustomerEvent | CampaignSent:
            if kind == PLACED:
                order_id = placed["order_id"][i]
                types = placed["payment_types"][i]
                return OrderPlaced(
                    event_id=make_event_id(source, "placed", order_id),
                    event_time=placed["event_time"][i],
                    order_id=order_id,
                    customer_unique_id=placed["customer_unique_id"][i],
                    customer_id=placed["customer_id"][i],
                    zip_prefix=placed["zip_prefix"][i],
                    city=placed["city"][i],
                    state=placed["state"][i],
                    items=lines(placed["item_start"][i], placed["item_end"][i]),
                    payment_total=placed["payment_total"][i],
                    payment_types=types.split("|") if types else [],
                    installments=placed["installments"][i],
                    payment_source=placed["payment_source"][i],
                )
            if kind == DELIVERED:
                order_id = delivered["order_id"][i]
                late = delivered["late"][i]
                estimated = delivered["estimated_time"][i]
                return OrderDelivered(
                    event_id=make_event_id(source, "delivered", order_id),
                    event_time=delivered["event_time"][i],
                    order_id=order_id,
                    customer_unique_id=delivered["customer_unique_id"][i],
                    estimated_time=None if pd.isna(estimated) else estimated,
                    late=None if late != late else bool(late),  # NaN != NaN: unknown
                )
            if kind == CANCELED:
                order_id = canceled["order_id"][i]
                return OrderCanceled(
                    event_id=make_event_id(source, "canceled", order_id),
                    event_time=canceled["event_time"][i],
                    order_id=order_id,
                    customer_unique_id=canceled["customer_unique_id"][i],
                    status=canceled["status"][i],
                    order_value=canceled["order_value"][i],
                )
            if kind == REVIEW:
                order_id = reviews["order_id"][i]
                return ReviewPosted(
                    event_id=make_event_id(source, "review", reviews["review_id"][i], order_id),
                    event_time=reviews["event_time"][i],
                    order_id=order_id,
                    customer_unique_id=reviews["customer_unique_id"][i],
                    review_id=reviews["review_id"][i],
                    score=reviews["score"][i],
                    created_time=reviews["created_time"][i],
                    comment_present=reviews["comment_present"][i],
                    comment_length=reviews["comment_length"][i],
                )
            if kind == RETURNED:
                order_id = returned["order_id"][i]
                return OrderReturned(
                    event_id=make_event_id(source, "returned", order_id),
                    event_time=returned["event_time"][i],
                    order_id=order_id,
                    customer_unique_id=returned["customer_unique_id"][i],
                    amount=returned["amount"][i],
                    items=lines(returned["item_start"][i], returned["item_end"][i]),
                )
            if kind == CAMPAIGN:
                campaign, customer = campaigns["campaign_id"][i], campaigns["customer_unique_id"][i]
                return CampaignSent(
                    event_id=make_event_id(campaign_source, "campaign", campaign, customer),
                    event_time=campaigns["event_time"][i],
                    customer_unique_id=customer,
                    campaign_id=campaign,
                    offer=campaigns["offer"][i],
                    group=campaigns["group"][i],
                )
            raise ValueError(f"no customer event of kind {kind}")

        return build


def empty_frame(name: str) -> pd.DataFrame:
    """An empty ``delivered``, ``canceled``, ``reviews``, ``returned`` or ``campaigns`` frame, for a
    source that has no such events (Olist has no returns; a transaction log has only orders and returns)."""
    return pd.DataFrame({column: pd.Series(dtype=kind) for column, kind in _EMPTY[name].items()})


def _distinct_rows(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Number the distinct rows of ``frame``: ``codes[i]`` is row i's number, ``first[n]`` the first row
    numbered n. Floats compare by their bits, so 0.0 and -0.0 (which serialise differently) differ.

    >>> codes, first = _distinct_rows(pd.DataFrame({"a": ["x", "y", "x"], "b": [0.0, 1.0, -0.0]}))
    >>> codes.tolist(), first.tolist()
    ([0, 1, 2], [0, 1, 2])
    >>> _distinct_rows(pd.DataFrame({"a": ["x", "y", "x"], "b": [1.0, 2.0, 1.0]}))[0].tolist()
    [0, 1, 0]
    """
    key, size = np.zeros(len(frame), dtype="int64"), 1  # key < size
    for name in frame.columns:
        column = frame[name]
        values = column.to_numpy("float64").view("int64") if pd.api.types.is_float_dtype(column) else column
        codes, distinct = pd.factorize(values, use_na_sentinel=False)
        if size * len(distinct) >= 1 << 62:  # renumber the key before the product could overflow
            key, size = pd.factorize(key)[0], len(frame)
        key, size = key * len(distinct) + codes, size * len(distinct)
    key = pd.factorize(key)[0]  # numbered in order of first appearance, so a row is its number's
    running = np.maximum.accumulate(key)  # first when its number exceeds every number before it
    return key, np.flatnonzero(np.diff(running, prepend=-1) > 0)


def _columns(frame: pd.DataFrame) -> dict[str, list]:
    # Python lists index an order of magnitude faster than DataFrame rows in the replay loop.
    # Datetime columns become UTC-aware python datetimes (NaT stays NaT, checked with pd.isna):
    # Olist times are naive local times, labelled UTC without shifting, since only their order
    # and differences matter downstream (docs/events.md).
    columns = {}
    for name in frame.columns:
        series = frame[name]
        if pd.api.types.is_datetime64_any_dtype(series):
            columns[name] = list(series.dt.tz_localize("UTC").dt.to_pydatetime())
        else:
            columns[name] = series.tolist()
    return columns


def _ns(moment: datetime) -> int:
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return int(stamp.as_unit("ns").value)
