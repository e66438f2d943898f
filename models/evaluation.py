"""Scores of served predictions against what happened next: plain functions on pandas objects.

The backtest (``segstream backtest``, ``segstream/backtest.py``) freezes what the system served at a
cutoff and hands it here with the source data's own record of the horizon. Nothing here reads
Redis or Kafka, so every score is tested on small hand-made frames (``tests/test_evaluation.py``).

Conventions, as the CLV models count (``docs/definitions.md``, "Backtests"):

- a cutoff is a day: the calibration period ends with that whole UTC day (lifetimes'
  ``calibration_period_end``), the horizon is the ``horizon_days`` days after it;
- a purchase is an ``OrderPlaced`` (canceled orders never are); purchases are counted as distinct
  UTC purchase days, spend is the sum of the orders' ``payment_total``.

implicit's ``ranking_metrics_at_k`` scores a model it calls; the served lists are frozen lists
mixing several strategies, so the ranking scores are computed here (binary relevance).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, timedelta

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import brier_score_loss, roc_auc_score

__all__ = [
    "calibration_deciles",
    "classification",
    "cumulative_repeat",
    "holdout",
    "ranking",
    "regression",
    "transactions_days",
]


def _r(value: float, digits: int = 6) -> float | None:
    """A number for figures.json: rounded (identical runs give identical text), None if undefined."""
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def transactions_days(transactions: pd.DataFrame) -> pd.DataFrame:
    """One row per customer and purchase day: ``customer``, ``day`` (``datetime.date``), ``spend``.

    ``transactions`` has one row per order: ``customer``, ``time`` (naive UTC), ``spend``.

    >>> times = pd.to_datetime(["2017-01-01 10:00:00", "2017-01-01 10:00:05", "2017-01-03 09:00:00"])
    >>> t = pd.DataFrame({"customer": ["a", "a", "a"], "spend": [1.0, 2.0, 4.0], "time": times})
    >>> transactions_days(t).to_dict("list")
    {'customer': ['a', 'a'], 'day': [datetime.date(2017, 1, 1), datetime.date(2017, 1, 3)], 'spend': [3.0, 4.0]}
    """
    days = transactions.assign(day=transactions["time"].dt.date)
    return days.groupby(["customer", "day"], as_index=False, sort=True)["spend"].sum()


def holdout(days: pd.DataFrame, cutoff: date, horizon_days: int) -> pd.DataFrame:
    """What each customer did in the horizon: days ``cutoff + 1`` to ``cutoff + horizon_days``.

    Indexed by every customer with a purchase day up to ``cutoff`` (the calibration customers):
    ``purchases`` (distinct purchase days in the horizon), ``spend``, ``first_day`` (first purchase
    day), ``bought_again`` (at least one purchase day in the horizon).
    """
    end = cutoff + timedelta(days=horizon_days)
    before = days[days["day"] <= cutoff]
    first = before.groupby("customer")["day"].min().rename("first_day")
    inside = days[(days["day"] > cutoff) & (days["day"] <= end)]
    counts = inside.groupby("customer").agg(purchases=("day", "nunique"), spend=("spend", "sum"))
    out = pd.DataFrame(index=first.index).join(first).join(counts)
    out["purchases"] = out["purchases"].fillna(0).astype(int)
    out["spend"] = out["spend"].fillna(0.0)
    out["bought_again"] = out["purchases"] > 0
    return out.sort_index()


def regression(predicted: pd.Series, actual: pd.Series) -> dict[str, float | int | None]:
    """MAE, RMSE and Spearman's rank correlation of per-customer predictions, with the count.

    >>> regression(pd.Series([0.0, 1.0, 2.0]), pd.Series([0.0, 1.0, 4.0]))
    {'customers': 3, 'mae': 0.666667, 'rmse': 1.154701, 'spearman': 1.0, 'predicted_total': 3.0, 'actual_total': 5.0}
    """
    p, a = predicted.to_numpy(float), actual.to_numpy(float)
    error = p - a
    rho = spearmanr(p, a).statistic if len(p) > 1 and np.ptp(p) > 0 and np.ptp(a) > 0 else float("nan")
    return {
        "customers": len(p),
        "mae": _r(np.abs(error).mean()) if len(p) else None,
        "rmse": _r(math.sqrt((error**2).mean())) if len(p) else None,
        "spearman": _r(rho),
        "predicted_total": _r(p.sum(), 4),
        "actual_total": _r(a.sum(), 4),
    }


def calibration_deciles(predicted: pd.Series, actual: pd.Series, bins: int = 10) -> list[dict[str, float | int]]:
    """Mean predicted and mean actual by decile of the prediction (ties split by customer order,
    so that equal predictions, such as every one-time buyer's, fill deciles evenly).

    >>> for row in calibration_deciles(pd.Series([1.0, 2, 3, 4]), pd.Series([0.0, 2, 2, 6]), bins=2):
    ...     print(row)
    {'decile': 1, 'customers': 2, 'predicted': 1.5, 'actual': 1.0}
    {'decile': 2, 'customers': 2, 'predicted': 3.5, 'actual': 4.0}
    """
    if len(predicted) == 0:
        return []
    frame = pd.DataFrame({"p": predicted.to_numpy(float), "a": actual.to_numpy(float)})
    rank = frame["p"].rank(method="first")
    frame["bin"] = np.ceil(rank * bins / len(frame)).astype(int)
    groups = frame.groupby("bin").agg(customers=("p", "size"), predicted=("p", "mean"), actual=("a", "mean"))
    return [
        {"decile": int(b), "customers": int(row.customers), "predicted": _r(row.predicted), "actual": _r(row.actual)}
        for b, row in groups.iterrows()
    ]


def cumulative_repeat(
    expected_up_to: Mapping[int, float], days: pd.DataFrame, customers: Iterable[str], cutoff: date
) -> list[dict[str, float | int]]:
    """Cumulative repeat purchase days in the horizon, predicted and actual, at each given day
    (Fader, Hardie & Lee 2005's holdout check, week by week).

    ``expected_up_to``: horizon day -> predicted purchase days of ``customers`` from the cutoff to it.
    """
    wanted = days[days["customer"].isin(set(customers)) & (days["day"] > cutoff)]
    offsets = np.asarray([(d - cutoff).days for d in wanted["day"]], dtype=int)
    return [
        {"day": int(t), "predicted": _r(value, 4), "actual": int((offsets <= t).sum())}
        for t, value in sorted(expected_up_to.items())
    ]


def classification(score: pd.Series, label: pd.Series, probability: bool = True) -> dict[str, float | int | None]:
    """AUC (and the Brier score if ``score`` is a probability) of ``score`` for a binary ``label``.

    >>> classification(pd.Series([0.9, 0.8, 0.3, 0.1]), pd.Series([True, False, True, False]))
    {'customers': 4, 'positives': 2, 'auc': 0.75, 'brier': 0.2875}
    """
    y, s = label.to_numpy(bool), score.to_numpy(float)
    both = 0 < y.sum() < len(y)
    return {
        "customers": len(y),
        "positives": int(y.sum()),
        "auc": _r(roc_auc_score(y, s)) if both else None,
        "brier": (_r(brier_score_loss(y, s)) if len(y) else None) if probability else None,
    }


def _dcg(hits: Sequence[bool]) -> float:
    return sum(1.0 / math.log2(i + 2) for i, hit in enumerate(hits) if hit)


def ranking(
    lists: Mapping[str, Sequence[str]], relevant: Mapping[str, set[str]], k: int
) -> dict[str, float | int | None]:
    """Precision@k, recall@k, hit rate and NDCG@k (binary relevance), averaged over the customers
    of ``relevant`` (those with something to find), each scored on ``lists[customer][:k]``.

    >>> ranking({"a": ["x", "y"], "b": ["z", "w"]}, {"a": {"y"}, "b": {"q"}}, k=2)
    {'customers': 2, 'k': 2, 'precision': 0.25, 'recall': 0.5, 'hit_rate': 0.5, 'ndcg': 0.315465}
    """
    rows = []
    for customer, wanted in relevant.items():
        shown = list(dict.fromkeys(lists.get(customer, ())))[:k]
        hits = [item in wanted for item in shown]
        ideal = _dcg([True] * min(k, len(wanted)))
        rows.append((sum(hits) / k, sum(hits) / len(wanted), any(hits), _dcg(hits) / ideal if ideal else 0.0))
    if not rows:
        return {"customers": 0, "k": k, "precision": None, "recall": None, "hit_rate": None, "ndcg": None}
    means = np.asarray(rows, dtype=float).mean(axis=0)
    return {
        "customers": len(rows),
        "k": k,
        **{n: _r(v) for n, v in zip(("precision", "recall", "hit_rate", "ndcg"), means, strict=True)},
    }
