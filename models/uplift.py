"""Uplift: who a campaign should go to, learnt from past campaigns' treatment and control groups.

A campaign's customers were put at random in a treatment group (sent the message) and a control
group (held out). The *response* to a send is a purchase on one of the ``window_days`` days after
the send's day (UTC purchase days, as the profile keeps them; a purchase on the send's own day is
neither feature nor response: the profile does not say whether it came before the send). Features
are what the customer's purchase days before the send's day say (nothing at or after it):

- ``days_since_last``: days from the last purchase day to the send's day (``NO_PURCHASE`` if none);
- ``purchase_days``: days with a purchase; ``monetary``: their spend; ``tenure_days``: days from the
  first purchase day to the send's day (0 if none).

The model is a two-model (T-learner) estimate: one scikit-learn ``HistGradientBoostingClassifier``
of P(response | features) on the treatment sends, one on the control sends; a customer's uplift is
the difference, P(buy | treated) - P(buy | control): the purchase probability the next campaign
adds. Why this one: it needs no equal group sizes (a class-transformation model does, or
weights), the two probabilities are worth showing on their own, gradient boosting finds the
thresholds a response type is made of without feature engineering, and it is deterministic
(``early_stopping=False``: no random validation split). No maintained uplift library is among
this machine's packages (scikit-uplift and causalml are not).

Evaluation (:func:`qini_curve`): sends ranked by a score, highest first; after the top k, the
incremental responses are ``Y_t(k) - Y_c(k) * N_t(k) / N_c(k)`` (treatment responders less the
control responders scaled to the treatment's size). AUUC is the mean of that curve over k = 1..N,
divided by N (incremental responses per send, averaged over every list length); random targeting's
expected curve is the straight line to the same end, so the Qini coefficient, AUUC minus random's,
is 0 for a score that knows nothing. Ties are broken by a fixed random order, so a score with few
values (Champions or not) is random within its ties.

>>> curve = qini_curve(np.array([0.9, 0.5, 0.1, 0.0]), np.array([True, False, True, False]),
...                    np.array([True, False, False, True]))
>>> curve.tolist()
[1.0, 1.0, 1.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier

from segstream.scoring import DAY

__all__ = [
    "FEATURES",
    "NO_PURCHASE",
    "PurchaseDays",
    "UpliftModel",
    "auuc",
    "compare_targeting",
    "fit_targeting",
    "parse_sends",
    "qini_coefficient",
    "qini_curve",
    "random_targeting",
    "training_table",
]

FEATURES = ("days_since_last", "purchase_days", "monetary", "tenure_days")
NO_PURCHASE = 10_000.0  # days_since_last of a customer without a purchase before the send


class PurchaseDays:
    """Every customer's purchase days (UTC) and spend, as flat arrays for vectorised look-ups.

    Entry ``k`` is one purchase day of one customer: customers in code order, each one's days
    ascending, so ``code * 2**21 + day`` is sorted and one ``searchsorted`` finds, for any number of
    (customer, day) pairs at once, where that day falls among the customer's purchase days (a
    Python loop over ~200k sends and 95k customers cost 2 s of a full-size retrain).

    >>> days = PurchaseDays({"u1": {"1970-04-11": [50.0], "1970-05-11": [20.0]}, "u2": {}})
    >>> days.features(["u1", "u1", "u1"], np.array([140, 130, 100])).tolist()  # u1 bought on days 100, 130
    [[10.0, 2.0, 70.0, 40.0], [30.0, 1.0, 50.0, 30.0], [10000.0, 0.0, 0.0, 0.0]]
    >>> days.features(["u2", "nobody"], np.array([140, 140])).tolist()
    [[10000.0, 0.0, 0.0, 0.0], [10000.0, 0.0, 0.0, 0.0]]
    >>> days.bought_within(["u1", "u1", "u1"], np.array([100, 129, 130]), 30).tolist()  # day 130 is in (100, 130]
    [True, True, False]
    """

    _SHIFT = 1 << 21  # above any day number (days since 1970 stay below 2**21 until the year 7711)

    def __init__(self, purchases_of: Mapping[str, Mapping[str, list]]) -> None:
        """From the profiles' purchases (customer -> day -> [spend, products, categories])."""
        counts, names, spend = [], [], []
        for days in purchases_of.values():
            ordered = sorted(days)  # ISO days sort as dates
            counts.append(len(ordered))
            names += ordered
            spend += [float(days[day][0]) for day in ordered]
        self._build(list(purchases_of), counts, np.array(names, dtype="datetime64[D]").astype(np.int64), spend)

    @classmethod
    def from_orders(cls, customer: pd.Series, time: pd.Series, spend: pd.Series) -> PurchaseDays:
        """From orders (customer, naive UTC time, spend), as a backtest reads them from the source.

        >>> orders = PurchaseDays.from_orders(pd.Series(["u1", "u1", "u1"]),
        ...     pd.Series(pd.to_datetime(["1970-05-11 09:00", "1970-04-11 10:00", "1970-04-11 18:00"])),
        ...     pd.Series([20.0, 30.0, 20.0]))
        >>> orders.features(["u1"], np.array([140])).tolist()  # two purchase days: 100 (50.0) and 130
        [[10.0, 2.0, 70.0, 40.0]]
        """
        day = time.to_numpy("datetime64[D]").astype(np.int64)
        daily = pd.DataFrame({"customer": customer.to_numpy(object), "day": day, "spend": spend.to_numpy(float)})
        daily = daily.groupby(["customer", "day"], sort=True)["spend"].sum()
        names, counts = np.unique(daily.index.get_level_values("customer").to_numpy(object), return_counts=True)
        found = cls.__new__(cls)
        found._build(names.tolist(), counts, daily.index.get_level_values("day").to_numpy(np.int64), daily.to_numpy())
        return found

    def _build(self, customers: list[str], counts: Sequence[int], days: np.ndarray, spend: Sequence[float]) -> None:
        self.index = pd.Index(customers)
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.days = days
        self.cumulative = np.concatenate([[0.0], np.cumsum(spend)])
        codes = np.repeat(np.arange(len(customers), dtype=np.int64), counts)
        self.keys = codes * self._SHIFT + self.days

    def _where(self, customers: Sequence[str], day: np.ndarray, side: str) -> tuple[np.ndarray, ...]:
        codes = self.index.get_indexer(customers)
        known = codes >= 0
        start = np.where(known, self.offsets[np.maximum(codes, 0)], 0)
        end = np.where(known, self.offsets[np.maximum(codes, 0) + 1], 0)
        position = np.searchsorted(self.keys, np.maximum(codes, 0) * self._SHIFT + day, side=side)
        return start, np.clip(position, start, end), end

    def features(self, customers: Sequence[str], day: np.ndarray) -> np.ndarray:
        """:data:`FEATURES` from each customer's purchase days strictly before their ``day`` (days
        since 1970-01-01): one row per (customer, day) pair."""
        day = np.asarray(day, dtype=np.int64)
        start, before, _ = self._where(customers, day, "left")
        n = before - start
        has = n > 0
        last = self.days[np.maximum(before - 1, 0)] if len(self.days) else np.zeros(len(day), np.int64)
        first = self.days[np.minimum(start, max(len(self.days) - 1, 0))] if len(self.days) else last
        out = np.empty((len(day), len(FEATURES)), dtype=float)
        out[:, 0] = np.where(has, day - last, NO_PURCHASE)
        out[:, 1] = n
        out[:, 2] = np.where(has, np.round(self.cumulative[before] - self.cumulative[start], 2), 0.0)
        out[:, 3] = np.where(has, day - first, 0.0)
        return out

    def bought_within(self, customers: Sequence[str], day: np.ndarray, window_days: int) -> np.ndarray:
        """Whether each customer has a purchase day among the ``window_days`` days after their ``day``."""
        day = np.asarray(day, dtype=np.int64)
        _, after, end = self._where(customers, day, "right")
        following = self.days[np.minimum(after, max(len(self.days) - 1, 0))] if len(self.days) else day
        return (after < end) & (following <= day + window_days)


def training_table(
    sends: pd.DataFrame, purchases_of: Mapping[str, Mapping[str, list]] | PurchaseDays, window_days: int, cutoff: float
) -> pd.DataFrame:
    """One row per send whose response window closed by ``cutoff`` (epoch s): its features, whether
    it was treated, and whether the customer responded.

    ``sends`` has columns campaign_id, customer, sent (epoch s) and group; ``purchases_of`` maps a
    customer to the profile's purchases (day -> [spend, products, categories]). A window closes at
    the end of its last day: only sends with ``(send day + window_days + 1) * DAY <= cutoff``.
    """
    days = purchases_of if isinstance(purchases_of, PurchaseDays) else PurchaseDays(purchases_of)
    send_day = (sends["sent"].to_numpy(float) // DAY).astype(np.int64)
    closed = (send_day + window_days + 1) * DAY <= cutoff
    sends, send_day = sends[closed], send_day[closed]
    customers = sends["customer"].to_numpy(dtype=object)
    table = pd.DataFrame(days.features(customers, send_day), columns=list(FEATURES))
    table.insert(0, "campaign_id", sends["campaign_id"].to_numpy())
    table.insert(1, "customer", customers)
    table.insert(2, "send_day", send_day)
    table["treated"] = (sends["group"] == "treatment").to_numpy()
    table["responded"] = days.bought_within(customers, send_day, window_days)
    return table


@dataclass
class UpliftModel:
    """T-learner: P(response) under treatment and under control, one gradient-boosted model each."""

    # chosen on planted campaigns (20,000 and 6,000 orders; trained on the earlier campaigns, scored
    # on the last four): as good a Qini as 150 x 15 leaves x 40 a leaf, and a third closer to the
    # planted uplift per send (smaller trees overfit the small arms less)
    max_iter: int = 100
    learning_rate: float = 0.05
    max_leaf_nodes: int = 7
    min_samples_leaf: int = 100

    def _classifier(self) -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(
            max_iter=self.max_iter,
            learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=self.min_samples_leaf,
            early_stopping=False,  # no random validation split: the same sends give the same model
            random_state=0,
        )

    def fit(self, features: np.ndarray, treated: np.ndarray, responded: np.ndarray) -> UpliftModel:
        for arm in (True, False):
            chosen = treated == arm
            if len(np.unique(responded[chosen])) < 2:
                raise ValueError(f"every {'treatment' if arm else 'control'} send has the same response")
        self.treated_ = self._classifier().fit(features[treated], responded[treated])
        self.control_ = self._classifier().fit(features[~treated], responded[~treated])
        return self

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """P(buy | treated), P(buy | control) and their difference, the uplift, per row."""
        p_treated = self.treated_.predict_proba(features)[:, 1]
        p_control = self.control_.predict_proba(features)[:, 1]
        return p_treated, p_control, p_treated - p_control


def _tie_break(n: int) -> np.ndarray:
    return np.random.default_rng(0).random(n)


def qini_curve(score: np.ndarray, treated: np.ndarray, responded: np.ndarray) -> np.ndarray:
    """Incremental responses in the top k sends by ``score``, for k = 1..N (see the module docstring)."""
    order = np.lexsort((_tie_break(len(score)), -np.asarray(score, dtype=float)))
    t, y = np.asarray(treated, bool)[order], np.asarray(responded, bool)[order]
    n_t, n_c = np.cumsum(t), np.cumsum(~t)
    y_t, y_c = np.cumsum(t & y), np.cumsum(~t & y)
    scaled = np.divide(y_c * n_t, n_c, out=np.zeros(len(t), dtype=float), where=n_c > 0)
    return y_t - scaled


def auuc(score: np.ndarray, treated: np.ndarray, responded: np.ndarray) -> float:
    """Area under the Qini curve: its mean over k, per send."""
    curve = qini_curve(score, treated, responded)
    return float(curve.mean() / len(curve)) if len(curve) else 0.0


def qini_coefficient(score: np.ndarray, treated: np.ndarray, responded: np.ndarray) -> float:
    """AUUC less random targeting's (the straight line from 0 to the curve's end).

    >>> treated = np.array([True, False] * 50)
    >>> responded = np.array([True, False] * 25 + [False, False] * 25)  # the first half's treated buy
    >>> round(qini_coefficient(np.arange(100, 0, -1), treated, responded), 4)  # the buyers first
    0.0638
    >>> qini_coefficient(np.arange(100), treated, responded) < 0
    True
    """
    curve = qini_curve(score, treated, responded)
    if not len(curve):
        return 0.0
    n = len(curve)
    line = curve[-1] * np.arange(1, n + 1) / n
    return float((curve - line).mean() / n)


def parse_sends(raw: Mapping[bytes, bytes]) -> pd.DataFrame:
    """The campaign sends hash (``Keys.campaign_sends``) as a frame: campaign_id, customer, sent, group, offer.

    >>> parse_sends({b"s:campaign:c1:u1": b"c1\\tu1\\t1500000000.0\\ttreatment\\t10% off"}).iloc[0].to_dict()
    {'campaign_id': 'c1', 'customer': 'u1', 'sent': 1500000000.0, 'group': 'treatment', 'offer': '10% off'}
    """
    rows = [value.decode().split("\t", 4) for value in raw.values()]
    frame = pd.DataFrame(rows, columns=["campaign_id", "customer", "sent", "group", "offer"])
    frame["sent"] = frame["sent"].astype(float)
    return frame.sort_values(["sent", "campaign_id", "customer"], ignore_index=True)


def fit_targeting(
    sends: pd.DataFrame,
    customers: list[str],
    purchases: list[Mapping[str, list]],
    segments: list[str],
    cutoff: float,
    window_days: int,
    min_sends: int,
    targets: int,
) -> tuple[list[tuple[str, str]], dict]:
    """Fit on the sends whose window closed by ``cutoff``; score every customer with a purchase for
    a campaign sent the day after the cutoff's day. Returns the hash entries (customer -> JSON) and
    the targeting document (summary, held-out validation, the targeting list). Raises
    ``ValueError`` when there is too little to fit on."""
    days = PurchaseDays(dict(zip(customers, purchases, strict=True)))
    table = training_table(sends, days, window_days, cutoff)
    counts = {group: int((table["treated"] == (group == "treatment")).sum()) for group in ("treatment", "control")}
    if min(counts.values()) < min_sends:
        raise ValueError(
            f"{counts['treatment']:,} treatment and {counts['control']:,} control sends with a closed "
            f"{window_days}-day window; {min_sends:,} of each needed (SEGSTREAM_UPLIFT_MIN_SENDS)"
        )
    features = table[list(FEATURES)].to_numpy()
    treated, responded = table["treated"].to_numpy(), table["responded"].to_numpy()
    # held-out validation: a quarter of the customers (fixed by id), scored by a model fitted on the rest
    # pandas' hash has a fixed key: the same customers are held out in every process and run
    held = pd.util.hash_pandas_object(table["customer"], index=False).to_numpy() % 4 == 0
    validation: dict = {"sends": int(held.sum())}
    try:
        trial = UpliftModel().fit(features[~held], treated[~held], responded[~held])
        scored = trial.predict(features[held])[2]
        validation["qini_coefficient"] = round(qini_coefficient(scored, treated[held], responded[held]), 6)
        validation["auuc"] = round(auuc(scored, treated[held], responded[held]), 6)
    except ValueError as exc:
        validation["skipped"] = str(exc)
    model = UpliftModel().fit(features, treated, responded)
    buyers = [i for i, own in enumerate(purchases) if own]
    day = np.full(len(buyers), int(cutoff // DAY) + 1, dtype=np.int64)  # a campaign the day after the cutoff's
    now = days.features([customers[i] for i in buyers], day)
    p_treated, p_control, uplift = model.predict(now) if len(buyers) else (np.empty(0),) * 3
    entries = [
        (customers[i], f'{{"uplift":{u:.4f},"p_treated":{t:.4f},"p_control":{c:.4f}}}')
        for i, u, t, c in zip(buyers, uplift.tolist(), p_treated.tolist(), p_control.tolist(), strict=True)
    ]
    order = np.lexsort((np.array([customers[i] for i in buyers], dtype=object), -uplift))
    chosen = [k for k in order[:targets].tolist() if uplift[k] > 0]
    rate = {g: float(responded[treated == (g == "treatment")].mean()) for g in ("treatment", "control")}
    document = {
        "method": "T-learner: two scikit-learn HistGradientBoostingClassifiers, P(buy | treated) - P(buy | control)",
        "features": list(FEATURES),
        "window_days": window_days,
        "trained_on": {
            "campaigns": int(table["campaign_id"].nunique()),
            "sends": len(table),
            **counts,
            "response_treatment": round(rate["treatment"], 4),
            "response_control": round(rate["control"], 4),
        },
        "average_uplift": round(rate["treatment"] - rate["control"], 4),
        "validation": validation,
        "scored_customers": len(entries),
        "positive_uplift": int((uplift > 0).sum()),
        "targets": [
            {
                "customer_unique_id": customers[buyers[k]],
                "uplift": round(float(uplift[k]), 4),
                "p_treated": round(float(p_treated[k]), 4),
                "p_control": round(float(p_control[k]), 4),
                "segment": segments[buyers[k]],
            }
            for k in chosen
        ],
    }
    return entries, document


def random_targeting(n: int) -> np.ndarray:
    """The score of random targeting (fixed seed: the same sends get the same random order)."""
    return np.random.default_rng(7).random(n)


def compare_targeting(
    treated: np.ndarray, responded: np.ndarray, scores: Mapping[str, np.ndarray], truth: np.ndarray | None = None
) -> dict[str, dict[str, float]]:
    """Qini coefficient and AUUC of each targeting score on the same sends, with random targeting
    (:func:`random_targeting`; its expectation is 0) and, given the planted persuadable flags
    ``truth``, each score's precision at the persuadable group's size.

    >>> got = compare_targeting(np.array([True, False] * 50), np.array([True, False] * 25 + [False] * 50),
    ...                         {"first half": np.arange(100, 0, -1)}, truth=np.arange(100) < 50)
    >>> best = got["first half"]
    >>> best["precision_at_persuadable"], got["random"]["qini_coefficient"] < best["qini_coefficient"]
    (1.0, True)
    """
    scores = {**scores, "random": random_targeting(len(treated))}
    out: dict[str, dict[str, float]] = {}
    for name, score in scores.items():
        row = {
            "qini_coefficient": round(qini_coefficient(score, treated, responded), 6),
            "auuc": round(auuc(score, treated, responded), 6),
        }
        if truth is not None and truth.any():
            k = int(truth.sum())
            top = np.lexsort((_tie_break(len(score)), -np.asarray(score, dtype=float)))[:k]
            row["precision_at_persuadable"] = round(float(truth[top].mean()), 4)
        out[name] = row
    return out
