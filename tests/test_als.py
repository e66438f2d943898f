"""ALS recommendations against the popularity baseline, on purchases with planted structure.

Customers fall into groups; each group buys within its own categories (its own products), with a
few purchases of globally popular products on top. One purchase per customer is held out. A model
that learns the groups recommends the held-out product far more often than the most bought
products do, which only know what is popular overall.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.als import AlsRecommender, NormOrder, dense_factors, distinct_rows, interaction_matrix, popular_items

GROUPS, PER_GROUP, PRODUCTS_PER_GROUP, TOP_N = 20, 60, 15, 10


def _planted(seed: int = 7) -> tuple[dict[str, list[str]], dict[str, str]]:
    rng = np.random.default_rng(seed)
    popular = [f"hit-{i}" for i in range(8)]
    baskets, held_out = {}, {}
    for group in range(GROUPS):
        products = [f"g{group}-p{i}" for i in range(PRODUCTS_PER_GROUP)]
        for member in range(PER_GROUP):
            bought = list(rng.choice(products, size=rng.integers(3, 6), replace=False))
            bought += list(rng.choice(popular, size=rng.integers(0, 3), replace=False))
            customer = f"g{group}-c{member}"
            held_out[customer] = bought.pop(0)  # a product of the group's own
            baskets[customer] = bought
    return baskets, held_out


def _hit_rate(recommended: list[list[int]], customers: list[str], products: list[str], held_out: dict) -> float:
    hits = [held_out[c] in {products[i] for i in recs} for c, recs in zip(customers, recommended, strict=True)]
    return float(np.mean(hits))


def test_als_finds_the_groups_that_popularity_cannot() -> None:
    baskets, held_out = _planted()
    matrix, customers, products = interaction_matrix(baskets)
    rows = list(range(len(customers)))
    als = AlsRecommender(factors=32, iterations=15).fit(matrix)
    als_rate = _hit_rate(als.recommend(rows, TOP_N), customers, products, held_out)
    popular_rate = _hit_rate(popular_items(matrix, rows, TOP_N), customers, products, held_out)
    # a group has 15 products and a customer kept 2-4 of them: 10 picks from the other 11-13 find
    # the held-out one most of the time; the globally most bought products almost never
    assert popular_rate < 0.1
    assert als_rate > 0.5
    assert als_rate > popular_rate + 0.4


def test_recommendations_leave_out_what_was_bought() -> None:
    baskets, _ = _planted()
    matrix, customers, products = interaction_matrix(baskets)
    recommended = AlsRecommender(factors=16, iterations=5).fit(matrix).recommend([0, 1, 2], TOP_N)
    for row, recs in zip([0, 1, 2], recommended, strict=True):
        assert len(recs) == TOP_N
        assert not {products[i] for i in recs} & set(baskets[customers[row]])


def test_an_empty_matrix_is_refused() -> None:
    matrix, _, _ = interaction_matrix({"a": [], "b": []})
    with pytest.raises(ValueError, match="no purchases"):
        AlsRecommender().fit(matrix)


def _factors(rng: np.random.Generator, n: int, skew: float) -> np.ndarray:
    """Random factors whose norms spread like ALS's (log-normal, ``skew`` its sigma)."""
    directions = rng.standard_normal((n, 16)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions * rng.lognormal(0.0, skew, (n, 1)).astype(np.float32)


@pytest.mark.parametrize("skew", [2.0, 0.0])
def test_the_norm_ordered_ranking_is_the_exhaustive_one(skew: float) -> None:
    from implicit.cpu.topk import topk

    rng = np.random.default_rng(3)
    items, users = _factors(rng, 3_000, skew), rng.standard_normal((500, 16)).astype(np.float32)
    by_norm = NormOrder(items, head=64)
    ids, scores = by_norm.topk(users, 12)
    want_ids, want_scores = topk(items, users, 12, num_threads=1)
    assert (ids == want_ids).all()
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)
    if skew:  # skewed norms: every user is settled by a tenth of the items at most
        assert sum(n for size, n in by_norm.settled_at_.items() if size <= 300) == len(users), by_norm.settled_at_
    else:  # even norms: the head grows to every item for most users, and the result is still exact
        assert by_norm.settled_at_[len(items)] > 0, by_norm.settled_at_


def test_more_wanted_than_there_are_items() -> None:
    rng = np.random.default_rng(4)
    items = _factors(rng, 5, 1.0)
    ids, _ = NormOrder(items).topk(rng.standard_normal((3, 16)).astype(np.float32), 9)
    assert ids.shape == (3, 5)
    assert all(sorted(row) == list(range(5)) for row in ids.tolist())


def test_distinct_rows_point_every_row_at_the_first_equal_one() -> None:
    from scipy import sparse

    rng = np.random.default_rng(5)
    dense = np.zeros((400, 6), dtype=np.float32)
    for row in dense:  # mostly one product bought once or twice, some bought several
        row[rng.choice(6, size=rng.choice([0, 1, 1, 1, 2, 3]), replace=False)] = rng.choice([1.0, 2.0], 1)
    firsts, slot = distinct_rows(sparse.csr_matrix(dense))
    first_equal = [next(j for j in range(len(dense)) if (dense[j] == row).all()) for row in dense]
    assert firsts[slot].tolist() == first_equal
    assert len(set(firsts.tolist())) == len(firsts) == len({row.tobytes() for row in dense})


def test_recommend_equals_an_exhaustive_ranking_with_the_bought_filtered() -> None:
    from implicit.cpu.topk import topk

    baskets, _ = _planted()
    matrix, _, _ = interaction_matrix(baskets)
    als = AlsRecommender(factors=16, iterations=5).fit(matrix)
    rows = np.arange(matrix.shape[0])
    users, items = dense_factors(als.model_.user_factors), dense_factors(als.model_.item_factors)
    want, _ = topk(items, users, TOP_N, filter_query_items=matrix, num_threads=1)
    assert als.recommend(rows, TOP_N) == want.tolist()
