"""Online behavioural clusters with river: a scaler and k-means that learn one customer at a time.

Features (original units): days since the last purchase, orders, monetary total, mean review
score (3 when none), share of late deliveries. They are standardised online
(``preprocessing.StandardScaler``) and clustered by ``cluster.KMeans``; each event of a customer
updates the model and the customer's assignment.

The model is checkpointed as plain JSON (centers, scaler counts/means/variances): restoring it
never unpickles anything another process could have written. Cluster profiles are the centers
mapped back to original units.

>>> clusters = OnlineClusters(n_clusters=2, seed=1)
>>> a = clusters.learn_predict_one({"recency_days": 3, "orders": 1, "monetary": 80, "review": 5, "late_share": 0})
>>> restored = OnlineClusters.from_json(clusters.to_json())
>>> restored.predict_one({"recency_days": 3, "orders": 1, "monetary": 80, "review": 5, "late_share": 0}) == a
True
>>> sorted(restored.profiles()[a])
['late_share', 'monetary', 'orders', 'recency_days', 'review']
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

from river import cluster, preprocessing

from segstream.scoring import DAY
from streams.profile import Profile

__all__ = ["OnlineClusters", "features"]

FEATURES = ("recency_days", "orders", "monetary", "review", "late_share")
# Features with a bounded range: a center mapped back through the exponentially weighted scaler can
# land a little outside it (a late share of -0.001 was seen), which means nothing to a reader.
_RANGES = {"review": (1.0, 5.0), "late_share": (0.0, 1.0)}


def features(profile: Profile, now: float) -> dict[str, float]:
    """The behavioural features of a profile at ``now`` (original units)."""
    recency = (now - profile.last_purchase) / DAY if profile.last_purchase is not None else 0.0
    return {
        "recency_days": max(0.0, recency),
        "orders": float(profile.orders),
        "monetary": float(profile.monetary),
        "review": profile.review_mean if profile.review_mean is not None else 3.0,
        "late_share": profile.late_deliveries / profile.deliveries if profile.deliveries else 0.0,
    }


class _KMeans(cluster.KMeans):
    """river's ``KMeans`` with a leaner distance loop (same distances, same assignments).

    river builds the union of a center's and the point's keys for every center and point; here
    every point has the same keys (:data:`FEATURES`), and so have the centers once the first
    point drew their random coordinates. About a third less time per event.

    >>> import random
    >>> rng = random.Random(7)
    >>> points = [{name: rng.gauss(0, 1) for name in FEATURES} for _ in range(500)]
    >>> ours, rivers = _KMeans(n_clusters=4, seed=3), cluster.KMeans(n_clusters=4, seed=3)
    >>> [ours.learn_predict_one(x) for x in points] == [rivers.learn_predict_one(x) for x in points]
    True
    """

    _drawn = False  # whether every center has all its coordinates (they are never removed)

    def predict_one(self, x: dict[str, float]) -> int:
        p, centers = self.p, self.centers
        if not self._drawn:
            if any(len(center) < len(x) for center in centers.values()):
                return super().predict_one(x)  # the first points draw the centers' coordinates
            self._drawn = True
        best, best_distance, items = 0, math.inf, x.items()
        for index, center in centers.items():
            distance = 0.0
            for key, value in items:
                distance += abs(center[key] - value) ** p
            if distance < best_distance:
                best, best_distance = index, distance
        return best


class OnlineClusters:
    """Standardise-then-k-means, learned online.

    Parameters
    ----------
    n_clusters
        Number of clusters.
    halflife
        How far a center moves toward each new point (river's KMeans).
    seed
        Random seed of the initial centers.
    """

    def __init__(self, n_clusters: int = 5, halflife: float = 0.3, seed: int = 42) -> None:
        self.n_clusters = n_clusters
        self.halflife = halflife
        self.seed = seed
        self.scaler = preprocessing.StandardScaler()
        self.kmeans = _KMeans(n_clusters=n_clusters, halflife=halflife, sigma=1.0, seed=seed)
        self.learned = 0

    def learn_predict_one(self, x: dict[str, float]) -> int:
        self.scaler.learn_one(x)
        z = self.scaler.transform_one(x)
        self.learned += 1
        return int(self.kmeans.learn_predict_one(z))

    def predict_one(self, x: dict[str, float]) -> int:
        return int(self.kmeans.predict_one(self.scaler.transform_one(x)))

    def profiles(self) -> dict[int, dict[str, float]]:
        """Each center in original units (inverse of the online standardisation), bounded features
        kept in their range."""
        out = {}
        for index, center in self.kmeans.centers.items():
            values = {}
            for name in FEATURES:
                value = center.get(name, 0.0) * math.sqrt(self.scaler.vars.get(name, 0.0))
                low, high = _RANGES.get(name, (-math.inf, math.inf))
                values[name] = round(min(max(value + self.scaler.means.get(name, 0.0), low), high), 3)
            out[int(index)] = values
        return out

    def to_json(self) -> str:
        return json.dumps(
            {
                "n_clusters": self.n_clusters,
                "halflife": self.halflife,
                "seed": self.seed,
                "learned": self.learned,
                "centers": {str(k): dict(v) for k, v in self.kmeans.centers.items()},
                "counts": dict(self.scaler.counts),
                "means": dict(self.scaler.means),
                "vars": dict(self.scaler.vars),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> OnlineClusters:
        data = json.loads(text)
        model = cls(int(data["n_clusters"]), float(data["halflife"]), int(data["seed"]))
        model.learned = int(data["learned"])
        for key, center in data["centers"].items():
            model.kmeans.centers[int(key)] = defaultdict(float, {k: float(v) for k, v in center.items()})
        model.scaler.counts.update({k: int(v) for k, v in data["counts"].items()})
        model.scaler.means.update({k: float(v) for k, v in data["means"].items()})
        model.scaler.vars.update({k: float(v) for k, v in data["vars"].items()})
        return model
