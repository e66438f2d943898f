"""A customer's profile: aggregates folded from events, and what is derived from them at a time.

Every aggregate is order-independent (counts, sums, min/max times, "latest" chosen by
``(event_time, event_id)``), so events that arrive late or out of order give the same state as in
order, and the derived part (R/F/M, segment, churn) is a function of the aggregates and "now",
the event-time watermark. Redelivered events are filtered out before :meth:`Profile.apply` by
their ``event_id`` (see ``streams/state.py``).

>>> from datetime import UTC, datetime
>>> from segstream.schemas import Item, OrderPlaced
>>> placed = OrderPlaced(
...     event_id="olist:placed:o1", event_time=datetime(2017, 3, 1, tzinfo=UTC), order_id="o1",
...     customer_unique_id="u1", customer_id="c1", zip_prefix="01001", city="sao paulo", state="SP",
...     items=[Item(product_id="p1", category="toys", price=90.0, freight=10.0, seller_id="s1")],
...     payment_total=100.0, payment_types=["boleto"], installments=1, payment_source="payments")
>>> profile = Profile("u1")
>>> profile.apply(placed)
>>> profile.evaluate(now=placed.event_time.timestamp(), scorer=RfmScorer(), rules=ChurnRules())
>>> profile.r, profile.f, profile.m, profile.segment, profile.churn
(5, 1, 3, 'Potential Loyalists', 'active')
>>> profile.evaluate(now=placed.event_time.timestamp() + 200 * DAY, scorer=RfmScorer(), rules=ChurnRules())
>>> profile.r, profile.segment, profile.churn, profile.churn_reasons
(2, 'Hibernating', 'at_risk', ['recency'])
>>> Profile.from_redis(profile.changed_fields()) == profile  # what a first write stores reads back whole
True
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, fields
from itertools import compress
from operator import ne

from segstream.schemas import CustomerEvent, OrderCanceled, OrderDelivered, OrderPlaced, OrderReturned, ReviewPosted
from segstream.scoring import DAY, ChurnRules, RfmScorer, segment_for
from streams.analytics import cents, known_categories

__all__ = ["PURCHASE_FIELD", "Profile", "Purchases", "day_entry", "day_text"]

_LATEST = tuple[float, str]  # (event time, event id): the order that picks "the latest" review/delivery


class Purchases(dict[str, list]):
    """Purchase day -> ``[spend, product ids, categories]``, changed in place with a log of what
    each changed day (and month) was at the last write.

    A purchase costs the same for a customer's 1st day and their 1,000th: nothing is copied, a
    write sends only the days in the log (:meth:`changed_days`), and the analytics' per-month view
    (:attr:`months`) moves with it, its months as written kept in the log too
    (:meth:`months_written`). :meth:`settle` empties the log once the write succeeded. A profile's
    working copy shares its purchases with the profile as stored (``Profile.copy``): the log is
    what tells them apart, so a write that failed must not be retried from the stored profile
    (streams/state.py drops it).

    >>> days = Purchases()
    >>> days.add("2017-03-01", 10.0, ["p1"], ["toys"])
    >>> days.settle()
    >>> days.add("2017-03-01", 5.5, ["p2"], ["tools"])
    >>> days.add("2017-04-02", 1.0, [], [])
    >>> days["2017-03-01"], sorted(days.changed_days())
    ([15.5, ['p1', 'p2'], ['toys', 'tools']], ['2017-03-01', '2017-04-02'])
    >>> days.months["2017-03"][0], sorted(days.months["2017-03"][1]), days.months_written()
    (1550, ['tools', 'toys'], {'2017-03': (1000, frozenset({'toys'})), '2017-04': None})
    """

    __slots__ = ("_log", "_months", "_months_log")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._log: dict[str, list | None] = {}  # day -> its entry at the last write (None: none)
        self._months: dict[str, tuple[int, frozenset[str]]] | None = None
        self._months_log: dict[str, tuple[int, frozenset[str]] | None] = {}

    def add(self, day: str, spend: float, products: list[str], categories: list[str]) -> None:
        """One more order on ``day``."""
        had = self.get(day)
        if day not in self._log:
            self._log[day] = had
        spent, had_products, had_categories = had or (0.0, [], [])
        entry = [round(spent + spend, 2), [*had_products, *products], [*had_categories, *categories]]
        months = self.months  # built once (per profile read), then moved a month at a time
        month = day[:7]
        value = months.get(month)
        if month not in self._months_log:
            self._months_log[month] = value
        total, basket = value or (0, frozenset())
        months[month] = (total + cents(entry[0]) - cents(spent), basket | known_categories(categories))
        self[day] = entry  # a new list: the logged one stays as it was

    def changed_days(self) -> set[str]:
        """The days changed since the last write."""
        return set(self._log)

    def months_written(self) -> dict[str, tuple[int, frozenset[str]] | None]:
        """The months changed since the last write, as they were then (None: no purchase then)."""
        return dict(self._months_log)

    def settle(self) -> None:
        """The changes are written: empty the log."""
        self._log, self._months_log = {}, {}

    @property
    def months(self) -> dict[str, tuple[int, frozenset[str]]]:
        """Per purchase month (YYYY-MM): spend in cents and the categories bought."""
        if self._months is None:
            months: dict[str, tuple[int, frozenset[str]]] = {}
            for day, (spent, _products, categories) in self.items():
                total, basket = months.get(day[:7], (0, frozenset()))
                months[day[:7]] = (total + cents(spent), basket | known_categories(categories))
            self._months = months
        return self._months

    # a profile compares its fields pairwise on every write: the same object is equal at once
    # (dict's own comparison walks every day)
    def __eq__(self, other: object) -> bool:
        return other is self or dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]


@dataclass
class Profile:
    """The state kept per ``customer_unique_id`` (one Redis hash)."""

    customer_unique_id: str
    # aggregates
    first_purchase: float | None = None  # epoch seconds
    last_purchase: float | None = None
    orders: int = 0
    monetary: float = 0.0
    # purchase day (UTC, YYYY-MM-DD) -> [spend that day, product ids, their categories]: CLV's
    # per-day totals and the recommendation job's baskets; in Redis one field per day (p:<day>)
    purchases: Purchases = field(default_factory=lambda: Purchases())
    canceled: int = 0  # canceled orders (never purchases) and cancellations of purchases (returns)
    reviews: int = 0
    review_sum: int = 0
    last_review: tuple[float, str] | None = None
    last_review_score: int | None = None
    # reviews that arrived before the customer's clock reached their event time, as
    # [event time, event id, score], in that order: applied when the clock passes them
    held: list = field(default_factory=list)
    deliveries: int = 0
    late_deliveries: int = 0
    last_delivery: tuple[float, str] | None = None
    last_delivery_late: bool | None = None
    state: str = ""
    city: str = ""
    last_event_time: float | None = None
    # derived at "now"
    r: int | None = None
    f: int | None = None
    m: int | None = None
    segment: str = ""
    churn: str = ""
    churn_reasons: list[str] = field(default_factory=list)
    p_alive: float | None = None  # BG/NBD, once the retrain job published its parameters
    cluster: int | None = None
    evaluated_at: float | None = None
    thresholds_version: int = 0  # of the RFM thresholds the derived part was last computed with
    segment_changes: int = 0  # how many times the segment changed: numbers the change events
    churn_changes: int = 0
    version: int = 0

    def __post_init__(self) -> None:
        if type(self.purchases) is not Purchases:  # built from a plain dict (tests, readers)
            self.purchases = Purchases(self.purchases)

    # ---- aggregates ----------------------------------------------------------------------------

    def apply(self, event: CustomerEvent) -> None:
        """Fold one (new, never seen) event into the aggregates."""
        moment = event.event_time.timestamp()
        latest: _LATEST = (moment, event.event_id)
        self.last_event_time = moment if self.last_event_time is None else max(self.last_event_time, moment)
        if isinstance(event, OrderPlaced):
            self.first_purchase = moment if self.first_purchase is None else min(self.first_purchase, moment)
            if self.last_purchase is None or moment >= self.last_purchase:
                self.state, self.city = event.state, event.city
            self.last_purchase = moment if self.last_purchase is None else max(self.last_purchase, moment)
            self.orders += 1
            self.monetary = round(self.monetary + event.payment_total, 2)
            day = time.strftime("%Y-%m-%d", time.gmtime(moment))
            if type(self.purchases) is not Purchases:  # a plain dict put there (tests, tools)
                self.purchases = Purchases(self.purchases)
            self.purchases.add(  # in place: see Purchases
                day,
                event.payment_total,
                [item.product_id for item in event.items],
                [item.category for item in event.items],
            )
        elif isinstance(event, OrderCanceled):
            self.canceled += 1
        elif isinstance(event, OrderReturned):  # not a purchase: only monetary moves
            self.canceled += 1
            self.monetary = round(self.monetary - event.amount, 2)
        elif isinstance(event, ReviewPosted):
            self.apply_review(moment, event.event_id, event.score)
        elif isinstance(event, OrderDelivered):
            self.deliveries += 1
            self.late_deliveries += bool(event.late)
            if self.last_delivery is None or latest > tuple(self.last_delivery):
                self.last_delivery, self.last_delivery_late = latest, event.late

    def apply_review(self, moment: float, event_id: str, score: int) -> None:
        """Fold one review into the aggregates (also a held one, once the clock passed it)."""
        self.reviews += 1
        self.review_sum += score
        latest: _LATEST = (moment, event_id)
        if self.last_review is None or latest > tuple(self.last_review):
            self.last_review, self.last_review_score = latest, score

    def hold(self, event: ReviewPosted) -> None:
        """Keep a review that arrived before the customer's clock reached its event time."""
        entry = [event.event_time.timestamp(), event.event_id, event.score]
        self.held = sorted([*self.held, entry])  # never in place: see copy

    def release(self, before: float) -> list[list]:
        """Take the held reviews with an event time before ``before``, earliest first."""
        held = self.held
        cut = 0
        while cut < len(held) and held[cut][0] < before:
            cut += 1
        if not cut:
            return []
        self.held = held[cut:]
        return held[:cut]

    @property
    def held_due(self) -> float | None:
        """When the earliest held review takes effect: the clock must pass its event time (a tick or
        an order at that very instant does not: at one instant, reviews come after the orders topic)."""
        return math.nextafter(self.held[0][0], math.inf) if self.held else None

    @property
    def products(self) -> list[str]:
        """Every product id bought (one per item), day by day."""
        return [product for _, products, _ in self.purchases.values() for product in products]

    @property
    def mean_gap_days(self) -> float | None:
        """Mean days between purchase days (UTC), once the customer bought on two days: a checkout
        split into several orders seconds apart is one purchase day, not a gap of seconds."""
        # purchase days come from the purchases' times: the first and last are their days (O(1))
        n = len(self.purchases)
        if n < 2 or self.first_purchase is None or self.last_purchase is None:
            return None
        return (self.last_purchase // DAY - self.first_purchase // DAY) / (n - 1)

    @property
    def review_mean(self) -> float | None:
        return self.review_sum / self.reviews if self.reviews else None

    # ---- derived ---------------------------------------------------------------------------------

    def evaluate(self, now: float, scorer: RfmScorer, rules: ChurnRules) -> None:
        """Derive R/F/M, segment and churn status as of ``now`` (epoch seconds, event time)."""
        self.evaluated_at = now
        if self.last_purchase is None:  # reviews or cancellations only: no purchase to score
            self.r = self.f = self.m = None
            self.segment, self.churn, self.churn_reasons = "", "", []
            return
        recency = max(0.0, (now - self.last_purchase) / DAY)
        self.r, self.f, self.m = scorer.score_one(recency, self.orders, self.monetary)
        self.segment = segment_for(self.r, self.f, self.m)
        p_alive = rules.p_alive(*self.purchase_day_counts(now)) if rules.bgnbd and self.purchases else None
        self.p_alive = None if p_alive is None else round(p_alive, 4)
        status, reasons = rules.status_one(
            recency, self.mean_gap_days, self.last_review_score, self.last_delivery_late, p_alive
        )
        self.churn, self.churn_reasons = status, list(reasons)

    def purchase_day_counts(self, now: float) -> tuple[int, int, int]:
        """BG/NBD's ``(frequency, recency, T)`` in whole days as of ``now``: purchase days after the
        first, days from the first purchase day to the last, days from the first to now's day
        (UTC), as ``lifetimes.utils.summary_data_from_transaction_data`` counts them."""
        first, last = int(self.first_purchase // DAY), int(self.last_purchase // DAY)  # type: ignore[operator]
        return len(self.purchases) - 1, last - first, max(int(now // DAY), last) - first

    def next_due(self, now: float, scorer: RfmScorer, rules: ChurnRules) -> float | None:
        """The event time at which time alone next changes R or churn status, or None."""
        if self.last_purchase is None:
            return None
        recency = max(0.0, (now - self.last_purchase) / DAY)
        r_days, churn_days = scorer.next_change_days(recency), rules.due_days(recency, self.mean_gap_days)
        days = [d for d in (r_days, churn_days) if d is not None]
        moments = [self.last_purchase + min(days) * DAY] if days else []
        if rules.bgnbd is not None and self.purchases:  # P(alive) falls below the bound at a day's start
            repeat, span, age = self.purchase_day_counts(now)
            crossing = rules.p_alive_due_days(repeat, span)
            if crossing is not None and math.floor(crossing) + 1 > age:
                moments.append((int(now // DAY) - age + math.floor(crossing) + 1) * DAY)
        return min(moments) if moments else None

    # ---- Redis form ------------------------------------------------------------------------------

    def changed_fields(self, before: Profile | None = None) -> dict[str, str]:
        """The Redis fields that differ from ``before``: what a write of this profile must send.

        Without ``before`` (a customer not stored yet): the fields that differ from a new profile,
        and the customer id; :meth:`from_redis` reads a missing field as its default.

        >>> before = Profile("u1", orders=1, monetary=20.0)
        >>> after = before.copy()
        >>> after.orders, after.monetary = 2, 35.5
        >>> after.changed_fields(before)
        {'orders': '2', 'monetary': '35.5'}
        >>> Profile("u2", orders=1).changed_fields()
        {'customer_unique_id': 'u2', 'orders': '1'}
        """
        if before is None:
            fields = {"customer_unique_id": self.customer_unique_id}
            before = _NEW
        else:
            fields = {}
        # both dicts list the fields in declaration order (dataclass __init__, or a copy's update):
        # compare them pairwise in C, then convert only what changed
        mine, old = self.__dict__, before.__dict__
        if len(mine) != len(old):
            raise ValueError("profiles with different attributes cannot be compared")
        purchases_changed = False
        for name in compress(mine, map(ne, mine.values(), old.values())):
            if name == "purchases":
                purchases_changed = True
            else:
                fields[name] = _text(mine[name])
        purchases, theirs = self.purchases, before.purchases
        days: set[str] = set()
        if purchases is theirs:  # shared with the profile as stored: its log says what changed
            days = purchases.changed_days() if isinstance(purchases, Purchases) else set()
        elif purchases_changed:
            days = {day for day, entry in purchases.items() if theirs.get(day) != entry}
        if days:  # one field per purchase day, written only when it changed
            for day in sorted(days):
                fields[PURCHASE_FIELD + day] = day_text(purchases[day])
        return fields

    def copy(self) -> Profile:
        """A copy that can change without changing this profile.

        Shallow: ``churn_reasons`` and the other containers are only ever replaced, never changed
        in place, so the two profiles may share them; ``purchases`` is shared and changed in
        place, its log telling what changed since the last write (see :class:`Purchases`).
        """
        twin = object.__new__(Profile)
        twin.__dict__ = self.__dict__.copy()  # keeps the declaration order changed_fields relies on
        return twin

    @classmethod
    def from_redis(cls, data: dict[str, str] | dict[bytes, bytes]) -> Profile:
        """The profile a Redis hash holds (fields it does not know, such as the applied events'
        digests of streams/state.py, are left out)."""
        values: dict = {}
        days = Purchases()
        for key, raw in data.items():
            name = key.decode() if isinstance(key, bytes) else key
            if name.startswith(PURCHASE_FIELD):
                days[name[len(PURCHASE_FIELD) :]] = day_entry(raw.decode() if isinstance(raw, bytes) else raw)
                continue
            kind = _KINDS.get(name)
            if kind is None:
                continue
            text = raw.decode() if isinstance(raw, bytes) else raw
            if text == "":
                continue
            values[name] = _PARSE[kind](text)
        if "purchases" in values:  # the layout before one field per day: kept readable
            days = Purchases({**values["purchases"], **days})
        if days:
            values["purchases"] = days
        return cls(**values)


# A purchase day is the field p:<YYYY-MM-DD>, 'spend<TAB>product<TAB>category<TAB>product...':
# a purchase rewrites its day, not the whole history, and a day of a few items stays under
# the 256 bytes up to which our Redis keeps a hash compact (hash-max-listpack-value, services.py).
# Product ids and categories carry no tabs (segstream/schemas.py Item).
PURCHASE_FIELD = "p:"


def day_text(entry: list) -> str:
    spent, products, categories = entry
    return "\t".join([repr(spent), *(x for pair in zip(products, categories, strict=True) for x in pair)])


def day_entry(text: str) -> list:
    """
    >>> day_entry(day_text([12.5, ["p1", "p2"], ["toys", ""]]))
    [12.5, ['p1', 'p2'], ['toys', '']]
    """
    parts = text.split("\t")
    return [float(parts[0]), parts[1::2], parts[2::2]]


_compact = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps without its per-call setup
_json_ascii = json.encoder.encode_basestring_ascii  # a str as json.dumps writes it (C)


def _text(value) -> str:
    """A field's Redis string: lists and pairs as JSON, None as empty, booleans as 1/0."""
    kind = type(value)
    if kind is str:
        return value
    if kind is int:
        return repr(value)
    if kind is float:  # event times are whole seconds: '1515261366', not '1515261366.0' (a float reads it)
        return repr(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if value is None:
        return ""
    if kind is list:
        if not value:
            return ""  # reads back as the default, an empty list
        if value and type(value[0]) is not str:  # held reviews: [time, id, score] each
            return _compact(value)
        # lists of str (churn reasons): joined, the bytes json.dumps would give
        return "[" + ",".join(map(_json_ascii, value)) + "]"
    if kind is tuple or kind is dict:
        return _compact(value)
    if kind is bool:
        return "1" if value else "0"
    return str(value)


def _kind(annotation: str) -> str:
    if annotation == "Purchases":
        return "dict"
    for kind in ("list", "dict", "tuple", "bool", "int", "float"):
        if annotation.startswith(kind):
            return kind
    return "str"


# Field name -> how its Redis string parses back (annotations are strings: `from __future__`).
_KINDS = {item.name: _kind(str(item.type)) for item in fields(Profile)}
_NEW = Profile("")  # the defaults: what a field missing from Redis reads as
_PARSE = {
    "list": json.loads,
    "dict": json.loads,
    "tuple": lambda text: tuple(json.loads(text)),
    "bool": lambda text: text == "1",
    "int": int,
    "float": float,
    "str": str,
}
