"""Customer2Vec on planted purchase sequences: it beats popularity, as ALS does, and it is
deterministic; its artifact loads without pickle."""

from __future__ import annotations

import json

import numpy as np

from models.als import AlsRecommender, interaction_matrix, popular_items
from models.customer2vec import Customer2Vec
from models.evaluation import ranking


def planted(seed: int = 3, groups: int = 8, customers: int = 600) -> tuple[dict, dict]:
    """Each group has a sequence of 12 products bought in order, a few at a time, plus a few
    popular products everyone may buy; a customer bought a start of their group's sequence and
    buys the next products (the holdout)."""
    rng = np.random.default_rng(seed)
    popular = [f"hit-{i}" for i in range(5)]
    days, holdout = {}, {}
    for c in range(customers):
        g = int(rng.integers(groups))
        sequence = [f"g{g}-p{k:02d}" for k in range(12)]
        cut = int(rng.integers(2, 9))
        bought = sequence[:cut]
        own = [bought[i : i + 2] for i in range(0, len(bought), 2)]
        if rng.random() < 0.7:
            own.append([popular[int(rng.integers(len(popular)))]])
        days[f"c{c:04d}"] = own
        holdout[f"c{c:04d}"] = set(sequence[cut : cut + 3])
    return days, holdout


def test_customer2vec_and_als_beat_popularity_on_planted_sequences() -> None:
    days, holdout = planted()
    customers = list(days)
    bought = [{p for day in days[c] for p in day} for c in customers]
    model = Customer2Vec(vector_size=32, epochs=30).fit(days)
    c2v = dict(zip(customers, model.recommend(customers, 10, bought), strict=True))

    matrix, rows, products = interaction_matrix({c: [p for day in days[c] for p in day] for c in customers})
    popular = dict(
        zip(rows, ([products[i] for i in r] for r in popular_items(matrix, range(len(rows)), 10)), strict=True)
    )
    als = AlsRecommender(factors=16, iterations=15, threads=1).fit(matrix)
    als_lists = dict(zip(rows, als.recommend(np.arange(len(rows)), 10, labels=products), strict=True))

    scores = {name: ranking(lists, holdout, 10)["hit_rate"] for name, lists in
              (("customer2vec", c2v), ("als", als_lists), ("popular", popular))}  # fmt: skip
    assert scores["customer2vec"] > scores["popular"] + 0.3, scores
    assert scores["als"] > scores["popular"] + 0.3, scores
    # the same lists dealt to the wrong customers fall to popularity's level or below
    shuffled = dict(zip(customers, [c2v[c] for c in np.random.default_rng(0).permutation(customers)], strict=True))
    assert ranking(shuffled, holdout, 10)["hit_rate"] < scores["customer2vec"] - 0.3


def test_two_fits_give_the_same_lists_and_the_artifact_is_plain_arrays(tmp_path) -> None:
    days, _ = planted(seed=5, customers=200)
    customers = list(days)
    bought = [{p for day in days[c] for p in day} for c in customers]
    one = Customer2Vec(vector_size=16, epochs=10).fit(days)
    two = Customer2Vec(vector_size=16, epochs=10).fit(days)
    assert one.recommend(customers, 10, bought) == two.recommend(customers, 10, bought)
    arrays, params = one.artifact()
    np.savez(tmp_path / "customer2vec.npz", **arrays)
    (tmp_path / "customer2vec.json").write_text(json.dumps(params))
    loaded = np.load(tmp_path / "customer2vec.npz", allow_pickle=False)
    assert loaded["product_vectors"].shape == (len(one.products_), 16)
    assert loaded["products"].tolist() == one.products_
    assert json.loads((tmp_path / "customer2vec.json").read_text())["customers"] == len(customers)
