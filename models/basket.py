"""Market basket rules from the counts the stream keeps, and the ``bought_together`` lists.

The workers count, per kind of basket, the baskets, the baskets holding each category and those
holding each pair of categories (``streams/analytics.py``: ``basket_orders``, the categories of one
order; ``basket_months``, those one customer bought in one calendar month). That is all Apriori
needs for itemsets of up to two items: every pair's support is exact, and a pair can only be
frequent if both its items are (support is anti-monotone), so the frequent itemsets, and the rules
``A -> B`` between single categories, follow without a pass over the baskets:

- support(A -> B) = n(A, B) / N, the share of baskets holding both;
- confidence = n(A, B) / n(A); lift = confidence / support(B); leverage = support(A, B) -
  support(A) x support(B).

A rule is kept when its support is at least ``SEGSTREAM_BASKET_MIN_SUPPORT`` and its confidence
at least ``SEGSTREAM_BASKET_MIN_CONFIDENCE``; mlxtend's ``apriori(max_len=2)`` and
``association_rules`` on the same baskets give the same rules (tests/test_basket.py).

Bounded: the counts are per category and per pair of categories, so they hold at most
``C + C (C - 1) / 2`` fields whatever the number of orders or customers (``C`` categories:
Olist's 73 give at most 2,701). Products are not counted in pairs: Olist's 32,951 products could
give ~5.4e8 pairs, and only 3% of its orders hold two different products (30 of the 995 orders
with items in the real sample under tests/fixtures), spread over so many products that a product
pair should rarely reach a useful support (not measured on the full data set, which is not on
this machine: a product-level count is left for then); the
``bought_together`` lists go from the rules' categories to each category's most bought products.

>>> rules = association_rules(100, {"a": 40, "b": 30, "c": 10}, {("a", "b"): 20, ("a", "c"): 1},
...                           min_support=0.05, min_confidence=0.3)
>>> [(r["antecedent"], r["consequent"], r["support"], r["confidence"], r["lift"]) for r in rules]
[('b', 'a', 0.2, 0.666667, 1.666667), ('a', 'b', 0.2, 0.5, 1.666667)]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["association_rules", "bought_together", "rules_of_counts", "top_products_by_category"]


def association_rules(
    baskets: int,
    items: dict[str, int],
    pairs: dict[tuple[str, str], int],
    min_support: float,
    min_confidence: float,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Rules between single items from basket, item and pair counts; by lift, then confidence,
    then support, largest first (ties by names). Numbers rounded to six digits."""
    if baskets <= 0:
        return []
    out = []
    for (a, b), n in pairs.items():
        if n / baskets < min_support:
            continue
        for x, y in ((a, b), (b, a)):
            confidence = n / items[x]
            if confidence < min_confidence:
                continue
            support_y = items[y] / baskets
            out.append(
                {
                    "antecedent": x,
                    "consequent": y,
                    "baskets": n,
                    "support": round(n / baskets, 6),
                    "confidence": round(confidence, 6),
                    "lift": round(confidence / support_y, 6),
                    "leverage": round(n / baskets - items[x] / baskets * support_y, 6),
                }
            )
    out.sort(key=lambda r: (-r["lift"], -r["confidence"], -r["support"], r["antecedent"], r["consequent"]))
    return out[:limit] if limit is not None else out


def rules_of_counts(
    counts: dict[str, dict], min_support: float, min_confidence: float, limit: int
) -> dict[str, dict[str, Any]]:
    """Both kinds' rules from the read models' hashes (``{"basket_orders": raw, "basket_months": raw}``):
    per kind its baskets, categories, pairs counted and the rules kept (at most ``limit``)."""
    from streams.analytics import basket_table

    out = {}
    for kind, model in (("orders", "basket_orders"), ("months", "basket_months")):
        baskets, items, pairs = basket_table(counts.get(model, {}))
        rules = association_rules(baskets, items, pairs, min_support, min_confidence)
        out[kind] = {
            "baskets": baskets,
            "categories": len(items),
            "pairs": len(pairs),
            "rules_found": len(rules),
            "rules": rules[:limit],
        }
    return out


def top_products_by_category(purchases: Iterable[dict[str, list]], until: str, n: int) -> dict[str, list[str]]:
    """Per category, its ``n`` products with the most buyers on purchase days up to ``until``.

    >>> top_products_by_category([{"2017-01-01": [1.0, ["p1", "p2"], ["toys", "toys"]]},
    ...                           {"2017-01-02": [1.0, ["p2"], ["toys"]]}], "2017-12-31", 5)
    {'toys': ['p2', 'p1']}
    """
    from collections import Counter

    buyers: dict[str, Counter] = {}
    for days in purchases:
        mine = {(c, p) for day, (_, products, categories) in days.items() if day <= until
                for p, c in zip(products, categories, strict=True)}  # fmt: skip
        for category, product in mine:
            buyers.setdefault(category, Counter())[product] += 1
    return {
        c: [p for p, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]
        for c, counts in sorted(buyers.items())
    }


def bought_together(
    basket: Iterable[str],
    rules: list[dict[str, Any]],
    top_products: dict[str, list[str]],
    exclude: set[str],
    n: int,
) -> list[str]:
    """Products for a customer whose last basket held the categories ``basket``: the consequents of
    the rules from those categories, by confidence then lift (each category once), each as its
    most bought products not in ``exclude`` (what the customer bought); empty when no rule
    applies. A consequent may be a category of the basket itself (its other products go with it).

    >>> rules = [{"antecedent": "toys", "consequent": "baby", "confidence": 0.4, "lift": 3.0},
    ...          {"antecedent": "toys", "consequent": "books", "confidence": 0.2, "lift": 1.2}]
    >>> bought_together({"toys"}, rules, {"baby": ["b1", "b2"], "books": ["k1"]}, {"b1"}, 3)
    ['b2', 'k1']
    """
    held = set(basket)
    ranked = sorted(
        (r for r in rules if r["antecedent"] in held),
        key=lambda r: (-r["confidence"], -r["lift"], r["consequent"]),
    )
    out: list[str] = []
    seen: set[str] = set()
    for rule in ranked:
        if rule["consequent"] in seen:
            continue
        seen.add(rule["consequent"])
        for product in top_products.get(rule["consequent"], []):
            if product not in exclude and product not in out:
                out.append(product)
                if len(out) == n:
                    return out
    return out
