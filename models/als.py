"""Product recommendations: implicit-feedback ALS over what each customer bought, and the
popularity baseline it must beat.

The input is what the stream keeps per customer (``Profile.purchases``: the product ids of every
purchase day, repeats included). :func:`interaction_matrix` turns it into a customer x product count
matrix; :class:`AlsRecommender` fits ``implicit``'s alternating least squares on it, with
confidence ``alpha * count`` (Hu, Koren and Volinsky, 2008), and recommends the products a
customer has not bought. :func:`popular_items` is the baseline: the most bought products, minus
the customer's own.

The retrain job (``models/retrain.py``) adds the seed strategies and writes the lists back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import sparse
from threadpoolctl import threadpool_limits

__all__ = ["AlsRecommender", "dense_factors", "interaction_matrix", "popular_items"]


def interaction_matrix(
    baskets: Mapping[str, Sequence[str]],
) -> tuple[sparse.csr_matrix, list[str], list[str]]:
    """Customer x product purchase counts, with the customers and products of its rows and columns.

    Rows follow ``baskets``' order; columns are the products in order of first appearance.
    Customers who bought nothing get an empty row.

    >>> matrix, customers, products = interaction_matrix({"a": ["p1", "p2", "p1"], "b": ["p2"], "c": []})
    >>> customers, products
    (['a', 'b', 'c'], ['p1', 'p2'])
    >>> matrix.toarray().tolist()
    [[2.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    """
    columns: dict[str, int] = {}
    rows, cols = [], []
    customers = list(baskets)
    for row, customer in enumerate(customers):
        for product in baskets[customer]:
            rows.append(row)
            cols.append(columns.setdefault(product, len(columns)))
    data = np.ones(len(rows), dtype=np.float32)
    matrix = sparse.csr_matrix((data, (rows, cols)), shape=(len(customers), len(columns)), dtype=np.float32)
    matrix.sum_duplicates()
    return matrix, customers, list(columns)


def popular_items(matrix: sparse.csr_matrix, rows: Iterable[int], n: int = 10) -> list[list[int]]:
    """Per row, the ``n`` most bought columns (by customers who bought them) it has not bought.

    >>> matrix, _, _ = interaction_matrix({"a": ["p1", "p2"], "b": ["p2", "p3"], "c": ["p2"]})
    >>> popular_items(matrix, [0, 2], n=2)
    [[2], [0, 2]]
    """
    buyers = np.asarray((matrix > 0).sum(axis=0)).ravel()
    order = np.argsort(-buyers, kind="stable").tolist()
    out = []
    for row in rows:
        bought = set(matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]].tolist())
        head = order[: n + len(bought)]  # n of these at least were not bought
        out.append([column for column in head if column not in bought][:n])
    return out


class AlsRecommender:
    """Implicit-feedback ALS (``implicit.als.AlternatingLeastSquares``) on purchase counts.

    Parameters
    ----------
    factors
        Latent factors per customer and product.
    regularization
        L2 penalty on the factors.
    alpha
        Confidence per purchase: a customer x product cell of ``count`` weighs ``alpha * count``.
    iterations
        ALS sweeps.
    random_state
        Seed of the factors' initialisation (fits are deterministic on one thread).
    threads
        implicit's own threads for fitting and ranking (0: every core). BLAS stays on one thread.

    Attributes
    ----------
    model_
        The fitted ``implicit`` model.
    matrix_
        The purchase counts it was fitted on: what :meth:`recommend` leaves out.
    """

    def __init__(
        self,
        factors: int = 32,
        regularization: float = 0.05,
        alpha: float = 20.0,
        iterations: int = 10,
        random_state: int = 0,
        threads: int = 0,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.threads = threads

    def fit(self, matrix: sparse.csr_matrix) -> AlsRecommender:
        if matrix.nnz == 0:
            raise ValueError("matrix: no purchases to learn from")
        from implicit.cpu.als import AlternatingLeastSquares

        # implicit parallelises itself; BLAS threads on top of it only fight (it warns when built)
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.random_state,
                num_threads=self.threads,
            )
            model.fit(matrix.tocsr().astype(np.float32), show_progress=False)
        self.model_, self.matrix_ = model, matrix.tocsr()
        return self

    def recommend(
        self, rows: Sequence[int], n: int = 10, chunk: int = 10_000, labels: Sequence | None = None
    ) -> list[list]:
        """Per row, the ``n`` best columns it has not bought, best first (as ``labels[column]`` if
        labels are given).

        Rows with the same purchases are the same data to the model, so each distinct row is scored
        once and its list goes to all of them (most Olist customers bought one product, so many
        rows repeat). The list is that of the first such row: implicit's conjugate-gradient solver
        leaves such rows' factors differing by solver noise only.
        """
        from implicit.cpu.topk import topk

        rows = np.asarray(rows, dtype=np.int64)
        matrix = self.matrix_[rows]
        slot_of: dict[tuple[bytes, bytes], int] = {}
        slot = np.empty(len(rows), dtype=np.int64)
        firsts: list[int] = []  # the first row of each distinct purchase set, in slot order
        indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
        for i in range(len(rows)):
            start, end = indptr[i], indptr[i + 1]
            key = (indices[start:end].tobytes(), data[start:end].tobytes())
            if key not in slot_of:
                slot_of[key] = len(firsts)
                firsts.append(i)
            slot[i] = slot_of[key]
        distinct = np.asarray(firsts, dtype=np.int64)
        users = dense_factors(self.model_.user_factors)[rows[distinct]]
        items = dense_factors(self.model_.item_factors)
        bought = matrix[distinct]
        counts = np.diff(bought.indptr)
        # the n best of all columns, plus as many as the row bought, then the bought ones dropped:
        # implicit's own filter slices the sparse matrix row by row in Python, three times slower
        extra = int(min(counts.max(initial=0), _MAX_FILTERED))
        found: list[list[int]] = [[] for _ in range(len(distinct))]
        with threadpool_limits(1, "blas"):
            for start in range(0, len(distinct), chunk):
                ids, _scores = topk(
                    items, users[start : start + chunk], min(n + extra, items.shape[0]), num_threads=self.threads
                )
                for offset, row in enumerate(ids.tolist()):
                    i = start + offset
                    own = set(bought.indices[bought.indptr[i] : bought.indptr[i + 1]].tolist())
                    found[i] = [column for column in row if column >= 0 and column not in own][:n]
            heavy = np.flatnonzero(counts > _MAX_FILTERED)  # bought more than the margin: filter exactly
            if len(heavy):
                ids, _scores = topk(items, users[heavy], n, filter_query_items=bought[heavy], num_threads=self.threads)
                for i, row in zip(heavy.tolist(), ids.tolist(), strict=True):
                    found[i] = [column for column in row if column >= 0]
        if labels is not None:
            found = [[labels[column] for column in columns] for columns in found]
        return [found[s] for s in slot]


_MAX_FILTERED = 40  # rows that bought more columns than this are filtered by implicit instead


def dense_factors(factors) -> np.ndarray:
    """implicit's factors as a numpy array (CPU models hold numpy already)."""
    return factors.to_numpy() if hasattr(factors, "to_numpy") else np.asarray(factors)
