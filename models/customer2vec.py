"""Customer2Vec: each customer a document of the products they bought, orders as sentences.

gensim's Doc2Vec in its distributed bag-of-words form (PV-DBOW): a customer's vector is trained
to predict the products of their document through the products' output vectors (negative
sampling's ``syn1neg``), so a customer's recommendations are the products their vector predicts
best (the dot product with each output vector) that they have not bought. Products bought by the
same customers get similar output vectors; a customer who bought the first products of a common
sequence is predicted the rest of it.

Cost, measured on a generated 100k-order history (95k customers, 114k items), one thread, 20
epochs: every customer as a document took 88.7 s with skip-gram word training interleaved
(``dbow_words=1``) and 39.5 s without; the 12k customers with two or more different products
alone, 10.8 s and 4.7 s. So only those are documents, without word training, over 40 epochs (20
left the small retrain test's Champions with other groups' products first: 7% had their own
group's first, against 100% with 40); a customer with a
single product (most of Olist) is recommended what the model predicts from that product's output
vector (the mean of their products' output vectors), which is the same relation seen from the
product's side. No down-sampling of frequent products (``sample=0``): word2vec's default (1e-3)
drops most occurrences of a catalogue's best sellers, and on small histories left customers'
vectors untrained (the doctest below failed with it).

Deterministic for the same purchases with one worker thread (the default), a fixed seed, and a hash of its own for
the vectors gensim seeds from strings (the built-in ``hash`` of a str changes with every process,
``PYTHONHASHSEED``). The artifact (:meth:`Customer2Vec.artifact`) is arrays for ``numpy.savez``
(product vectors and ids) and JSON-able parameters: no pickle, which gensim's own ``save`` uses.

>>> days = {f"c{i}": [["a", "b"], ["c"]] for i in range(50)} | {f"d{i}": [["x", "y"], ["z"]] for i in range(50)}
>>> days["new"] = [["a"]]
>>> model = Customer2Vec(vector_size=16).fit(days)
>>> sorted(model.recommend(["new"], n=2, exclude=[{"a"}])[0])  # the rest of the a-b-c customers' purchases
['b', 'c']
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Customer2Vec", "stable_hash"]


def stable_hash(text: str) -> int:
    """A string hash that is the same in every process (gensim seeds vectors from one)."""
    return zlib.crc32(text.encode())


class Customer2Vec:
    """Doc2Vec (PV-DBOW with skip-gram word training) over customers' purchase days."""

    def __init__(
        self, vector_size: int = 32, epochs: int = 40, min_products: int = 2, seed: int = 1, threads: int = 0
    ) -> None:
        self.vector_size = vector_size
        self.epochs = epochs
        self.min_products = min_products  # distinct products of a customer trained as a document
        self.seed = seed
        # threads of the ranking (0: every core; each customer's list is the same whatever the
        # number). Training keeps one gensim worker: the only way to the same vectors for the same
        # purchases, and on 2 cores two workers were slower (12.0 against 9.0 s at full size)
        self.threads = threads

    def fit(self, days: Mapping[str, Sequence[Sequence[str]]]) -> Customer2Vec:
        """``days``: per customer, their purchase days in order, each the products bought that day."""
        from gensim.models.doc2vec import Doc2Vec, TaggedDocument

        documents = []
        for customer, own in days.items():
            words = [p for day in own for p in day]
            if len(set(words)) >= self.min_products:
                documents.append(TaggedDocument(words, [customer]))
        if not documents:
            raise ValueError(
                f"no customer with {self.min_products} different products: nothing to train Customer2Vec on"
            )
        model = Doc2Vec(
            documents, vector_size=self.vector_size, epochs=self.epochs, sample=0, min_count=1, dm=0,
            dbow_words=0, workers=1, seed=self.seed, hashfxn=stable_hash,
        )  # fmt: skip
        self.products_ = list(model.wv.index_to_key)
        self.product_vectors_ = np.asarray(model.syn1neg, dtype=np.float32)  # output vectors, in wv's order
        self._product_row = {p: i for i, p in enumerate(self.products_)}
        self.customers_ = {customer: row for row, customer in enumerate(model.dv.index_to_key)}
        self.customer_vectors_ = np.asarray(model.dv.vectors, dtype=np.float32)
        return self

    def _query(self, customer: str, bought: set[str]) -> np.ndarray | None:
        """A customer's vector; for one not trained, the mean output vector of their known products."""
        row = self.customers_.get(customer)
        if row is not None:
            return self.customer_vectors_[row]
        known = [self._product_row[p] for p in sorted(bought) if p in self._product_row]
        return self.product_vectors_[known].mean(axis=0) if known else None

    def recommend(
        self, customers: Sequence[str], n: int, exclude: Sequence[set[str]], chunk: int = 512
    ) -> list[list[str]]:
        """Per customer, the ``n`` products their vector predicts best, not in their ``exclude`` set
        (empty for a customer with no product the model knows). Ranked ``chunk`` customers at a
        time by implicit's top-k (one dot product per customer and product cost ~1.5 ms a customer
        at 25k products)."""
        out: list[list[str]] = [[] for _ in customers]
        queries = [(i, self._query(c, exclude[i])) for i, c in enumerate(customers)]
        known = [(i, q) for i, q in queries if q is not None]
        if not known:
            return out
        from implicit.cpu.topk import topk
        from scipy.sparse import csr_matrix

        for start in range(0, len(known), chunk):
            part = known[start : start + chunk]
            # what a customer bought never comes up: filtered inside implicit's top-k (a matrix
            # product and an argpartition per customer over 25k products cost 9.8 s at full size)
            columns = [[self._product_row[p] for p in exclude[i] if p in self._product_row] for i, _ in part]
            flat = np.array([c for row in columns for c in row], dtype=np.int32)
            indptr = np.concatenate([[0], np.cumsum([len(row) for row in columns])]).astype(np.int32)
            bought = csr_matrix((np.ones(len(flat), np.float32), flat, indptr), shape=(len(part), len(self.products_)))
            ids, _scores = topk(
                self.product_vectors_, np.stack([q for _, q in part]), min(n, len(self.products_)),
                filter_query_items=bought, num_threads=self.threads,
            )  # fmt: skip
            for (i, _), row in zip(part, ids.tolist(), strict=True):
                out[i] = [self.products_[j] for j in row if j >= 0]
        return out

    def artifact(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The registry's ``customer2vec.npz`` arrays and ``customer2vec.json`` parameters."""
        arrays = {"product_vectors": self.product_vectors_, "products": np.asarray(self.products_, dtype=str)}
        params = {
            "model": "gensim Doc2Vec, PV-DBOW", "vector_size": self.vector_size, "epochs": self.epochs,
            "min_products": self.min_products, "seed": self.seed,
            "customers": len(self.customers_), "products": len(self.products_),
        }  # fmt: skip
        return arrays, params
