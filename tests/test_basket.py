"""Market basket rules from the stream's counts equal mlxtend's Apriori on the same baskets."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from mlxtend.frequent_patterns import apriori
from mlxtend.frequent_patterns import association_rules as mlxtend_rules

from models.basket import association_rules, bought_together
from streams.analytics import BASKET_ORDERS, basket_counts, basket_table


def _baskets(seed: int, n: int = 3_000) -> list[set[str]]:
    """Baskets of 1-4 of 12 categories (Zipf-like), with two planted pairs bought together."""
    rng = np.random.default_rng(seed)
    names = [f"c{i:02d}" for i in range(12)]
    weight = 1.0 / np.arange(1, 13)
    out = []
    for _ in range(n):
        size = int(rng.choice([1, 2, 3, 4], p=[0.55, 0.3, 0.1, 0.05]))
        basket = set(rng.choice(names, size=size, replace=False, p=weight / weight.sum()).tolist())
        if rng.random() < 0.08:
            basket |= {"c07", "c09"}
        if rng.random() < 0.05:
            basket |= {"c03", "c11"}
        out.append(basket)
    return out


def _counted(baskets: list[set[str]]) -> tuple[int, dict[str, int], dict[tuple[str, str], int]]:
    """The counts as the workers keep them: the stream's own counting code, into a hash's fields."""
    deltas: defaultdict = defaultdict(int)
    for basket in baskets:
        basket_counts(basket, deltas, BASKET_ORDERS)
    return basket_table({name.removeprefix(BASKET_ORDERS): n for name, n in deltas.items()})


@pytest.mark.parametrize(("seed", "min_support", "min_confidence"), [(1, 0.01, 0.1), (2, 0.002, 0.05), (3, 0.03, 0.3)])
def test_rules_equal_mlxtend_apriori_on_the_same_baskets(seed: int, min_support: float, min_confidence: float) -> None:
    baskets = _baskets(seed)
    mine = association_rules(*_counted(baskets), min_support=min_support, min_confidence=min_confidence)

    names = sorted(set().union(*baskets))
    onehot = pd.DataFrame([[name in b for name in names] for b in baskets], columns=names)
    frequent = apriori(onehot, min_support=min_support, use_colnames=True, max_len=2)
    theirs = mlxtend_rules(frequent, metric="confidence", min_threshold=min_confidence)
    expected = {
        (next(iter(r.antecedents)), next(iter(r.consequents))): (
            round(r.support, 6), round(r.confidence, 6), round(r.lift, 6), round(r.leverage, 6)
        )
        for r in theirs.itertuples()
    }  # fmt: skip
    got = {(r["antecedent"], r["consequent"]): (r["support"], r["confidence"], r["lift"], r["leverage"]) for r in mine}
    assert set(got) == set(expected)
    for rule, numbers in expected.items():
        assert got[rule] == pytest.approx(numbers, abs=2e-6), rule
    assert len(got) > 4  # not an empty match
    # the planted pairs lead by lift
    assert {(r["antecedent"], r["consequent"]) for r in mine[:4]} == {
        ("c07", "c09"), ("c09", "c07"), ("c03", "c11"), ("c11", "c03"),
    }  # fmt: skip


def test_a_redelivered_or_moved_basket_counts_once() -> None:
    """A customer-month basket that grows is moved, not added twice: -old +new."""
    deltas: defaultdict = defaultdict(int)
    basket_counts({"a"}, deltas, "6")
    basket_counts({"a"}, deltas, "6", -1)
    basket_counts({"a", "b"}, deltas, "6")
    assert {k: v for k, v in deltas.items() if v} == {"6baskets": 1, "6item\ta": 1, "6item\tb": 1, "6pair\ta\tb": 1}


def test_bought_together_follows_the_strongest_rule_of_the_last_basket() -> None:
    rules = association_rules(*_counted(_baskets(4)), min_support=0.005, min_confidence=0.05)
    best = {"c09": ["p9a", "p9b"], "c00": ["p0a"], "c01": ["p1a"]}
    picks = bought_together({"c07"}, rules, best, exclude={"p9a"}, n=3)
    assert picks[0] == "p9b"  # c07 -> c09 is the planted, most confident rule
    assert "p9a" not in picks and len(picks) <= 3
    assert bought_together({"zz"}, rules, best, set(), 3) == []  # no rule applies
