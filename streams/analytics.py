"""The notebooks' analyses as live read models: what each customer write adds to them; plain code.

Each read model is one Redis hash of integer counts (``Keys.analytics``). Money is counted in
cents, so sums are exact and a move (a customer changing cohort, state or segment) leaves no
float residue. Two kinds of contribution, both idempotent under at-least-once delivery because
they travel in the same atomic, compare-and-set write as the profile (``streams/lua/write.lua``):
a redelivered event is in the applied set and adds nothing; a write that loses its
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
>>> deltas = Counter()
>>> order_deltas(order, deltas)
>>> deltas[("weekday_hour", "0\\t14\\torders")], deltas[("daily", "2017-03-06\\trevenue")]  # Monday, 14:00
(1, 10000)
>>> deltas[("geography", "SP\\trevenue")], deltas[("basket_orders", "pair\\tbaby\\ttoys")]
(10000, 1)
"""

from __future__ import annotations

from collections import Counter
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

# The read models, in the order the write script numbers them (its delta names start with the index).
READ_MODELS = (
    "cohorts",
    "weekday_hour",
    "geography",
    "segment_revenue",
    "daily",
    "basket_orders",
    "basket_months",
)
TIMEZONE_NOTE = (
    "the event time's own clock, as the source wrote it (Olist: São Paulo local time, which its files give "
    "without an offset)"
)
# Fields join their parts with a tab: segment names hold spaces and apostrophes, categories and
# states may hold anything a source writes but control characters.
SEP = "\t"

Deltas = Counter  # (read model, field) -> integer change


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
    """One basket (a set of categories) into an association-rule count: baskets, each item, each pair."""
    if not basket:
        return
    deltas[(model, "baskets")] += sign
    ordered = sorted(basket)
    for item in ordered:
        deltas[(model, f"item{SEP}{item}")] += sign
    for a, b in combinations(ordered, 2):
        deltas[(model, f"pair{SEP}{a}{SEP}{b}")] += sign


def _categories(items) -> set[str]:
    return {item for item in items if item and item != UNKNOWN_CATEGORY}


def order_deltas(event: OrderPlaced, deltas: Deltas) -> None:
    """What one applied purchase adds: by weekday x hour (Monday = 0), by its state, by its day,
    and its categories as a same-order basket."""
    moment = event.event_time
    amount = cents(event.payment_total)
    for model, where in (
        ("weekday_hour", f"{moment.weekday()}{SEP}{moment.hour}"),
        ("geography", event.state),
        ("daily", moment.strftime("%Y-%m-%d")),
    ):
        deltas[(model, f"{where}{SEP}orders")] += 1
        deltas[(model, f"{where}{SEP}revenue")] += amount
    basket_counts(_categories(item.category for item in event.items), deltas, "basket_orders")


def _months(purchases: dict[str, list]) -> dict[str, tuple[int, set[str]]]:
    """Per purchase month: spend in cents and the categories bought."""
    months: dict[str, tuple[int, set[str]]] = {}
    for day, (spent, _products, categories) in purchases.items():
        total, basket = months.get(day[:7], (0, set()))
        months[day[:7]] = (total + cents(spent), basket | _categories(categories))
    return months


def _purchase_part(purchases: dict[str, list], deltas: Deltas, sign: int) -> None:
    """Cohort cells and monthly baskets: functions of the purchases alone."""
    months = _months(purchases)
    if not months:
        return
    cohort = min(months)
    start = month_index(cohort)
    deltas[("cohorts", f"{cohort}{SEP}customers")] += sign
    for month, (amount, basket) in months.items():
        since = month_index(month) - start
        deltas[("cohorts", f"{cohort}{SEP}{since}{SEP}active")] += sign
        deltas[("cohorts", f"{cohort}{SEP}{since}{SEP}revenue")] += sign * amount
        basket_counts(basket, deltas, "basket_months", sign)


def _segment_part(profile: Profile, deltas: Deltas, sign: int) -> None:
    """The customer's state and segment mix, and their months' revenue under their segment."""
    if profile.last_purchase is None:
        return
    deltas[("geography", f"{profile.state}{SEP}customers")] += sign
    if profile.segment:
        deltas[("geography", f"{profile.state}{SEP}segment{SEP}{profile.segment}")] += sign
        for month, (amount, _) in _months(profile.purchases).items():
            deltas[("segment_revenue", f"{month}{SEP}{profile.segment}")] += sign * amount


def profile_deltas(new: Profile, old: Profile | None, deltas: Deltas) -> None:
    """``contribution(new) - contribution(old)`` (``old``: as stored; None for a new customer).

    Purchases are replaced, never changed in place (``Profile.copy``), so an unchanged object means
    unchanged purchases, and a write that moved no purchase, state or segment costs nothing here.
    """
    purchases_moved = old is None or new.purchases is not old.purchases
    if purchases_moved and (old is None or new.purchases != old.purchases):
        _purchase_part(new.purchases, deltas, 1)
        if old is not None:
            _purchase_part(old.purchases, deltas, -1)
    if (
        old is None
        or purchases_moved
        or new.segment != old.segment
        or new.state != old.state
        or (new.last_purchase is None) != (old.last_purchase is None)
    ):
        _segment_part(new, deltas, 1)
        if old is not None:
            _segment_part(old, deltas, -1)


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
