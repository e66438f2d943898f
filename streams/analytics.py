"""The notebooks' analyses as live read models: what each customer write adds to them; plain code.

Each read model is one Redis hash of integer counts (``Keys.analytics``). Money is counted in
cents, so sums are exact and a move (a customer changing cohort, state or segment) leaves no
float residue. Two kinds of contribution, both idempotent under at-least-once delivery because
they travel in the same atomic, compare-and-set write as the profile (``streams/lua/write.lua``):
a redelivered event's digest is in its profile and it adds nothing; a write that loses its
compare-and-set adds nothing and is folded again from a fresh read.

- **per event** (:func:`order_deltas`): what one applied ``OrderPlaced`` adds, whatever else the
  customer did: purchases and revenue by weekday x hour, by state and by day, and its basket;
- **per profile** (:func:`profile_deltas`): what a customer contributes as a function of the
  profile (``contribution(new) - contribution(stored)``): their acquisition cohort and its
  cells, their state and segment, their revenue by event-month under their current segment, and
  their monthly baskets. A late purchase older than the first one moves the customer's whole
  cohort row; a segment change moves their state's mix and their months' revenue.

Both are functions of the set of applied events (and, for the segment, of the profile's derived
state), never of the order events arrived in, so any interleaving gives the same read models.
What each counts is in docs/definitions.md ("Analytics read models"). The hours are those of the
event time as the source wrote it (Olist: São Paulo local time without an offset, which the
replay labels UTC, so no conversion moves it).

>>> from segstream.schemas import Item, OrderPlaced
>>> from datetime import UTC, datetime
>>> order = OrderPlaced(
...     event_id="e1", event_time=datetime(2017, 3, 6, 14, 30, tzinfo=UTC), order_id="o1",
...     customer_unique_id="u1", customer_id="c1", zip_prefix="01001", city="sao paulo", state="SP",
...     items=[Item(product_id="p1", category="toys", price=80, freight=5, seller_id="s"),
...            Item(product_id="p2", category="baby", price=10, freight=5, seller_id="s")],
...     payment_total=100.0, payment_types=["boleto"], installments=1, payment_source="payments")
>>> deltas = defaultdict(int)
>>> order_deltas(order, deltas)
>>> deltas[WEEKDAY_HOUR + "0\\t14\\torders"], deltas[DAILY + "2017-03-06\\trevenue"]  # Monday, 14:00
(1, 10000)
>>> deltas[GEOGRAPHY + "SP\\trevenue"], deltas[BASKET_ORDERS + "pair\\tbaby\\ttoys"]
(10000, 1)
"""

from __future__ import annotations

import time
from collections import defaultdict
from itertools import combinations
from typing import TYPE_CHECKING

from segstream.schemas import UNKNOWN_CATEGORY, OrderPlaced

if TYPE_CHECKING:
    from streams.profile import Profile

__all__ = [
    "READ_MODELS",
    "SEP",
    "TIMEZONE_NOTE",
    "basket_counts",
    "basket_table",
    "cents",
    "cohort_table",
    "daily_table",
    "geography_table",
    "month_index",
    "order_deltas",
    "profile_deltas",
    "segment_revenue_table",
    "weekday_hour_table",
]

# The read models, in the order the write script numbers them: a delta's name is the read model's
# index (one character) and the hash field, the form the write script takes (streams/lua/write.lua).
READ_MODELS = (
    "cohorts",
    "weekday_hour",
    "geography",
    "segment_revenue",
    "daily",
    "basket_orders",
    "basket_months",
)
COHORTS, WEEKDAY_HOUR, GEOGRAPHY, SEGMENT_REVENUE, DAILY, BASKET_ORDERS, BASKET_MONTHS = (
    str(index) for index in range(len(READ_MODELS))
)
TIMEZONE_NOTE = (
    "the event time's own clock, as the source wrote it (Olist: São Paulo local time, which its files give "
    "without an offset)"
)
# Fields join their parts with a tab: segment names hold spaces and apostrophes, categories and
# states may hold anything a source writes but control characters.
SEP = "\t"

# delta name (model index + field) -> integer change. The worker builds these for every customer
# write: names are built once in the write script's form (no (model, field) tuples to join later),
# days with date().isoformat() (strftime cost 6 us), which took a new customer's purchase from ~92
# to ~30 us and a segment change from ~25 to ~13 us (timeit, one sitting).
Deltas = defaultdict


def cents(amount: float) -> int:
    """An amount as whole cents (payments have two decimals): sums stay exact integers."""
    return round(amount * 100)


def month_index(month: str) -> int:
    """``YYYY-MM`` as a month count, so two months subtract.

    >>> month_index("2017-03") - month_index("2016-11")
    4
    """
    return int(month[:4]) * 12 + int(month[5:7]) - 1


def basket_counts(basket: set[str], deltas: Deltas, model: str, sign: int = 1) -> None:
    """One basket (a set of categories) into an association-rule count (``model``: its index):
    baskets, each item, each pair."""
    if not basket:
        return
    deltas[model + "baskets"] += sign
    ordered = sorted(basket)
    for item in ordered:
        deltas[f"{model}item\t{item}"] += sign
    if len(ordered) > 1:
        for a, b in combinations(ordered, 2):
            deltas[f"{model}pair\t{a}\t{b}"] += sign


def known_categories(items) -> set[str]:
    """The categories that count in a basket (not empty, not the unknown category)."""
    return {item for item in items if item and item != UNKNOWN_CATEGORY}


def order_deltas(event: OrderPlaced, deltas: Deltas) -> None:
    """What one applied purchase adds: by weekday x hour (Monday = 0), by its state, by its day,
    and its categories as a same-order basket."""
    moment = event.event_time
    amount = cents(event.payment_total)
    hour = f"{WEEKDAY_HOUR}{moment.weekday()}\t{moment.hour}\t"
    state = f"{GEOGRAPHY}{event.state}\t"
    day = f"{DAILY}{moment.date().isoformat()}\t"
    deltas[hour + "orders"] += 1
    deltas[hour + "revenue"] += amount
    deltas[state + "orders"] += 1
    deltas[state + "revenue"] += amount
    deltas[day + "orders"] += 1
    deltas[day + "revenue"] += amount
    items = event.items
    if len(items) == 1:  # most orders: one line, no pair
        category = items[0].category
        if category and category != UNKNOWN_CATEGORY:
            deltas[BASKET_ORDERS + "baskets"] += 1
            deltas[f"{BASKET_ORDERS}item\t{category}"] += 1
    else:
        basket_counts(known_categories(item.category for item in items), deltas, BASKET_ORDERS)


def _month_cells(cohort: str, month: str, value: tuple[int, frozenset[str]], deltas: Deltas, sign: int) -> None:
    """One purchase month's cohort cell and monthly basket."""
    amount, basket = value
    cell = f"{COHORTS}{cohort}\t{month_index(month) - month_index(cohort)}\t"
    deltas[cell + "active"] += sign
    deltas[cell + "revenue"] += sign * amount
    basket_counts(basket, deltas, BASKET_MONTHS, sign)


def _purchase_part(months: dict[str, tuple[int, frozenset[str]]], deltas: Deltas, sign: int) -> None:
    """Cohort cells and monthly baskets: functions of the purchases alone."""
    cohort = min(months)
    deltas[f"{COHORTS}{cohort}\tcustomers"] += sign
    for month, value in months.items():
        _month_cells(cohort, month, value, deltas, sign)


def _segment_part(profile: Profile, months: dict[str, tuple[int, frozenset[str]]], deltas: Deltas, sign: int) -> None:
    """The customer's state and segment mix, and their months' revenue under their segment."""
    state = f"{GEOGRAPHY}{profile.state}\t"
    deltas[state + "customers"] += sign
    segment = profile.segment
    if segment:
        deltas[f"{state}segment\t{segment}"] += sign
        for month, (amount, _) in months.items():
            deltas[f"{SEGMENT_REVENUE}{month}\t{segment}"] += sign * amount


def _first_month(profile: Profile) -> str:
    """The month of the first purchase: its cohort (the first of its purchase days' months)."""
    return time.strftime("%Y-%m", time.gmtime(profile.first_purchase))


def profile_deltas(new: Profile, old: Profile | None, deltas: Deltas) -> None:
    """``contribution(new) - contribution(old)`` (``old``: as stored; None for a new customer).

    A worker's ``new`` shares its purchases with ``old`` (``Profile.copy``): their log says which
    days and months changed since ``old`` was written (``Purchases``), so while the first month
    stays, only those months move, and a customer's 1,000th purchase costs what the first did. A
    write that moved no purchase, state or segment costs nothing here.
    """
    had = old is not None and old.last_purchase is not None
    purchases = new.purchases
    shared = had and old.purchases is purchases  # type: ignore[union-attr]
    purchases_moved = not had or (bool(purchases.changed_days()) if shared else purchases != old.purchases)  # type: ignore[union-attr]
    segment_moved = not had or new.segment != old.segment or new.state != old.state  # type: ignore[union-attr]
    if not (purchases_moved or segment_moved):
        return
    mine = purchases.months if new.last_purchase is not None else None
    # the months as written, when only they move: the first month (the cohort) stayed
    changed = purchases.months_written() if shared else None
    if changed is not None and purchases_moved and _first_month(new) != _first_month(old):  # type: ignore[arg-type]
        changed = None
    if purchases_moved and changed is not None and mine:
        cohort = _first_month(new)
        for month, value in changed.items():
            if value is not None:
                _month_cells(cohort, month, value, deltas, -1)
            _month_cells(cohort, month, mine[month], deltas, 1)
        if not segment_moved:  # the same segment: only these months' revenue under it
            if new.segment:
                for month, value in changed.items():
                    moved = mine[month][0] - (value[0] if value is not None else 0)
                    deltas[f"{SEGMENT_REVENUE}{month}\t{new.segment}"] += moved
            return
    theirs = None
    if had:
        if shared:  # as written: the changed months as they were, the new ones left out
            written = {**mine, **(changed or purchases.months_written())}  # type: ignore[dict-item]
            theirs = {month: value for month, value in written.items() if value is not None}
        else:
            theirs = old.purchases.months  # type: ignore[union-attr]
    if purchases_moved and changed is None:
        if mine:
            _purchase_part(mine, deltas, 1)
        if theirs:
            _purchase_part(theirs, deltas, -1)
    if mine is not None:
        _segment_part(new, mine, deltas, 1)
    if had and theirs is not None:
        _segment_part(old, theirs, deltas, -1)  # type: ignore[arg-type]


# ---- reading: a read model's hash as tables (the API, the CLI, the retrain's basket rules) -------


def _parsed(raw: dict) -> dict[str, int]:
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items() if int(v)}


def cohort_table(raw: dict) -> list[dict]:
    """Per acquisition month, oldest first: its customers, and per month since (0 = the first)
    the customers who bought in it and their revenue (currency units)."""
    counts = _parsed(raw)
    rows: dict[str, dict] = {}
    for name, n in counts.items():
        parts = name.split(SEP)
        row = rows.setdefault(parts[0], {"cohort": parts[0], "customers": 0, "active": {}, "revenue": {}})
        if parts[1] == "customers":
            row["customers"] = n
        else:
            row[parts[2]][int(parts[1])] = n
    out = []
    for cohort in sorted(rows):
        row = rows[cohort]
        width = max([*row["active"], *row["revenue"], -1]) + 1
        out.append(
            {
                "cohort": cohort,
                "customers": row["customers"],
                "active": [row["active"].get(k, 0) for k in range(width)],
                "revenue": [row["revenue"].get(k, 0) / 100 for k in range(width)],
            }
        )
    return out


def weekday_hour_table(raw: dict) -> dict[str, list[list[float]]]:
    """Purchases and revenue by weekday (rows, Monday first) and hour (columns, 0-23)."""
    counts = _parsed(raw)
    grid = {"orders": [[0] * 24 for _ in range(7)], "revenue": [[0.0] * 24 for _ in range(7)]}
    for name, n in counts.items():
        weekday, hour, what = name.split(SEP)
        grid[what][int(weekday)][int(hour)] = n if what == "orders" else n / 100
    return grid


def geography_table(raw: dict) -> list[dict]:
    """Per state (or country): customers (by their latest purchase), purchases and revenue (of
    the orders placed there) and the customers' segment mix; by revenue, largest first."""
    counts = _parsed(raw)
    rows: dict[str, dict] = {}
    for name, n in counts.items():
        parts = name.split(SEP)
        row = rows.setdefault(
            parts[0], {"state": parts[0], "customers": 0, "orders": 0, "revenue": 0.0, "segments": {}}
        )
        if parts[1] == "segment":
            row["segments"][parts[2]] = n
        else:
            row[parts[1]] = n / 100 if parts[1] == "revenue" else n
    for row in rows.values():
        row["segments"] = dict(sorted(row["segments"].items()))
    return sorted(rows.values(), key=lambda r: (-r["revenue"], -r["customers"], r["state"]))


def segment_revenue_table(raw: dict) -> list[dict]:
    """Per event-month, oldest first: revenue by the segment its buyers hold now."""
    months: dict[str, dict[str, float]] = {}
    for name, n in _parsed(raw).items():
        month, segment = name.split(SEP)
        months.setdefault(month, {})[segment] = n / 100
    return [{"month": m, "segments": dict(sorted(months[m].items()))} for m in sorted(months)]


def daily_table(raw: dict) -> list[dict]:
    """Per event-day with a purchase, in order: purchases and revenue."""
    days: dict[str, dict] = {}
    for name, n in _parsed(raw).items():
        day, what = name.split(SEP)
        days.setdefault(day, {"day": day, "orders": 0, "revenue": 0.0})[what] = n / 100 if what == "revenue" else n
    return [days[d] for d in sorted(days)]


def basket_table(raw: dict) -> tuple[int, dict[str, int], dict[tuple[str, str], int]]:
    """A basket count's baskets, baskets per item and per pair (the two items in order)."""
    baskets, items, pairs = 0, {}, {}
    for name, n in _parsed(raw).items():
        parts = name.split(SEP)
        if parts[0] == "baskets":
            baskets = n
        elif parts[0] == "item":
            items[parts[1]] = n
        else:
            pairs[(parts[1], parts[2])] = n
    return baskets, items, pairs
