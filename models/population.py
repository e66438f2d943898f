"""What the retrain job reads: every customer's profile fields it needs, in one pass over Redis.

The job reads the state the stream keeps (``streams/profile.py``), never the source files: per
customer the purchases per day (spend, products, categories), last purchase, monetary value,
segment and review mean. Profiles are read with ``SCAN`` and pipelined ``HGETALL``, so the stream
keeps writing meanwhile; a profile changed during the pass is read either before or after its
change, never half-written (each profile write is one atomic script call).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import orjson
import redis

from segstream.keys import Keys
from streams.profile import PURCHASE_FIELD, day_entry

__all__ = ["Population", "read_population"]

log = logging.getLogger(__name__)


@dataclass
class Population:
    """Column-wise profile fields of every customer (one row per customer)."""

    customers: list[str] = field(default_factory=list)
    purchases: list[dict[str, list]] = field(default_factory=list)  # day -> [spend, products, categories]
    last_purchase: np.ndarray = field(default_factory=lambda: np.empty(0))  # epoch s; NaN: never bought
    monetary: np.ndarray = field(default_factory=lambda: np.empty(0))
    segments: list[str] = field(default_factory=list)
    review_means: np.ndarray = field(default_factory=lambda: np.empty(0))  # NaN: no review

    def __len__(self) -> int:
        return len(self.customers)

    @property
    def scored(self) -> np.ndarray:
        """Which customers have a purchase (and so R/F/M scores)."""
        return ~np.isnan(self.last_purchase)

    def product_categories(self) -> dict[str, str]:
        """Each product bought by anyone, with the category it was bought under (the first seen).

        >>> Population(purchases=[{"2017-01-02": [9.0, ["p1", "p2"], ["toys", "tools"]]}]).product_categories()
        {'p1': 'toys', 'p2': 'tools'}
        """
        found: dict[str, str] = {}
        for days in self.purchases:
            for _, products, categories in days.values():
                for product, category in zip(products, categories, strict=True):
                    found.setdefault(product, category)
        return found

    def baskets(self, until: str = "9999-12-31") -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Per customer, the products and the categories bought (one per item, days in order) up to
        the day ``until`` (``YYYY-MM-DD``) included; every customer has an entry, in row order."""
        products: dict[str, list[str]] = {}
        categories: dict[str, list[str]] = {}
        for customer, days in zip(self.customers, self.purchases, strict=True):
            own_products, own_categories = products[customer], categories[customer] = [], []
            for day in sorted(days):
                if day <= until:
                    own_products += days[day][1]
                    own_categories += days[day][2]
        return products, categories


class _Builder:
    """Collects the profiles' HGETALL replies chunk by chunk; :meth:`population` sorts and packs them."""

    def __init__(self) -> None:
        self.customers: list[str] = []
        self.purchases: list[dict[str, list]] = []
        self.segments: list[str] = []
        self.last: list[float] = []
        self.monetary: list[float] = []
        self.means: list[float] = []

    def add(self, rows: list[dict[bytes, bytes]]) -> None:
        """Profiles as HGETALL gives them (field -> value); an empty one: deleted since the SCAN."""
        prefix = PURCHASE_FIELD.encode()
        cut = len(prefix)
        for fields in rows:
            customer = fields.get(b"customer_unique_id")
            if customer is None:  # deleted between SCAN and the read
                continue
            self.customers.append(customer.decode())
            # one field per purchase day; a profile written before that layout has them in one field
            purchases = fields.get(b"purchases")
            own = orjson.loads(purchases) if purchases else {}
            for name, value in fields.items():
                if name[:cut] == prefix:
                    own[name[cut:].decode()] = day_entry(value.decode())
            self.purchases.append(own)
            last_purchase, spent = fields.get(b"last_purchase"), fields.get(b"monetary")
            self.last.append(float(last_purchase) if last_purchase else np.nan)
            self.monetary.append(float(spent) if spent else 0.0)
            segment = fields.get(b"segment")
            self.segments.append(segment.decode() if segment else "")
            reviews = fields.get(b"reviews")
            count = int(reviews) if reviews else 0
            self.means.append(int(fields.get(b"review_sum") or 0) / count if count else np.nan)

    def population(self) -> Population:
        order = np.asarray(sorted(range(len(self.customers)), key=self.customers.__getitem__), dtype=np.int64)
        return Population(
            customers=[self.customers[i] for i in order],
            purchases=[self.purchases[i] for i in order],
            last_purchase=np.asarray(self.last, dtype=float)[order],
            monetary=np.asarray(self.monetary, dtype=float)[order],
            segments=[self.segments[i] for i in order],
            review_means=np.asarray(self.means, dtype=float)[order],
        )


def read_population(client: redis.Redis, keys: Keys, chunk: int = 1_000) -> Population:
    """Every profile in Redis, in customer-id order, read with pipelined ``HGETALL`` in chunks of
    ``chunk`` customers (one round trip each; Redis is busy ~6 ms per chunk, which the workers
    wait out). Each profile is read whole, as before or after a worker's write (its scripts are
    atomic).

    Plain ``HGETALL``: a read script that picked the fields cost Redis 19.7 us a profile, against
    5.7 for the ``HGETALL`` alone (1M profiles of 23 fields).
    """
    builder = _Builder()
    seen: set[bytes] = set()
    pending: list[bytes] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in pending:
            pipe.hgetall(key)
        builder.add(pipe.execute())
        pending.clear()

    for key in client.scan_iter(match=keys.profiles_pattern, count=chunk):
        if key in seen:  # SCAN may return a key twice (while Redis resizes its table)
            continue
        seen.add(key)
        pending.append(key)
        if len(pending) >= chunk:
            flush()
    if pending:
        flush()
    # SCAN's order follows Redis's hash table (and so the key prefix and the table's history):
    # rows in customer-id order give the same matrices, the same ALS fit and the same lists for
    # the same state, which a backtest's identical figures need
    population = builder.population()
    log.info("read %d profiles (%d with a purchase)", len(population), int(population.scored.sum()))
    return population
