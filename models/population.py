"""What the retrain job reads: every customer's profile fields it needs, in one pass over Redis.

The job reads the state the stream keeps (``streams/profile.py``), never the source files: per
customer the purchases per day (spend, products, categories), last purchase, monetary value,
segment and review mean. Profiles are read with ``SCAN`` and a read script per chunk, so the stream
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
from segstream.scripts import lua
from streams.profile import PURCHASE_FIELD, day_entry

__all__ = ["Population", "read_population"]

log = logging.getLogger(__name__)

# Many profiles in one call: one command to pack and parse instead of one per customer. Reads
# only; each profile is read whole, as before or after a worker's write (scripts are atomic).
_READ = lua("models", "read_profiles.lua")
_FIELDS = ("customer_unique_id", "purchases", "last_purchase", "monetary", "segment", "reviews", "review_sum")


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

    @classmethod
    def from_rows(cls, rows: list[list[bytes | None]]) -> Population:
        population = cls()
        last, monetary, means = [], [], []
        for customer, purchases, last_purchase, spent, segment, reviews, review_sum, days in rows:
            if customer is None:  # deleted between SCAN and the read
                continue
            population.customers.append(customer.decode())
            # one field per purchase day; a profile written before that layout has them in one field
            own = orjson.loads(purchases) if purchases else {}
            for k in range(0, len(days), 2):
                own[days[k][len(PURCHASE_FIELD) :].decode()] = day_entry(days[k + 1].decode())
            population.purchases.append(own)
            last.append(float(last_purchase) if last_purchase else np.nan)
            monetary.append(float(spent) if spent else 0.0)
            population.segments.append(segment.decode() if segment else "")
            count = int(reviews) if reviews else 0
            means.append(int(review_sum or 0) / count if count else np.nan)
        population.last_purchase = np.asarray(last, dtype=float)
        population.monetary = np.asarray(monetary, dtype=float)
        population.review_means = np.asarray(means, dtype=float)
        return population


def read_population(client: redis.Redis, keys: Keys, chunk: int = 1_000) -> Population:
    """Every profile in Redis, in customer-id order, read in chunks of ``chunk`` customers (one
    script call each: Redis is busy ~1 ms per call, which the workers wait out)."""
    rows: list[list[bytes | None]] = []
    pending: list[bytes] = []
    read = client.register_script(_READ)

    def flush() -> None:
        rows.extend(read(keys=pending, args=_FIELDS))
        pending.clear()

    seen: set[bytes] = set()
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
    rows.sort(key=lambda row: row[0] or b"")
    population = Population.from_rows(rows)
    log.info("read %d profiles (%d with a purchase)", len(population), int(population.scored.sum()))
    return population
