"""RFM scoring, named segments and churn rules: plain objects the stream and the tests call.

The definitions are written down in ``docs/definitions.md``; this module is their one
implementation (the test oracle is an independent pandas version).
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass

__all__ = ["DAY", "SEGMENTS", "ChurnRules", "RfmScorer", "bgnbd_of", "bgnbd_tuple", "segment_for", "segment_meaning"]

DAY = 86_400.0

# (R, FM) -> segment, FM = ceil((F + M) / 2). Rows R = 5..1, columns FM = 1..5.
_TABLE = {
    5: ["New Customers", "Potential Loyalists", "Potential Loyalists", "Champions", "Champions"],
    4: ["Promising", "Potential Loyalists", "Potential Loyalists", "Loyal", "Loyal"],
    3: ["About to Sleep", "About to Sleep", "Need Attention", "Loyal", "Loyal"],
    2: ["Hibernating", "Hibernating", "At Risk", "At Risk", "Can't Lose Them"],
    1: ["Lost", "Lost", "At Risk", "At Risk", "Can't Lose Them"],
}
SEGMENTS = (
    "Champions", "Loyal", "Potential Loyalists", "New Customers", "Promising", "Need Attention",
    "About to Sleep", "At Risk", "Can't Lose Them", "Hibernating", "Lost",
)  # fmt: skip


# What each segment means to a person (the live view shows it on hover); the cells of _TABLE
# that give it are added by segment_meaning.
_MEANINGS = {
    "Champions": "bought very recently, often and for a lot",
    "Loyal": "buy often and spend well, bought recently",
    "Potential Loyalists": "recent customers with some repeat or spend",
    "New Customers": "bought very recently, once and for little",
    "Promising": "recent, one small purchase",
    "Need Attention": "middling recency, frequency and spend",
    "About to Sleep": "middling recency, little frequency and spend",
    "At Risk": "spent well or often, but long ago",
    "Can't Lose Them": "the biggest spenders, silent for long",
    "Hibernating": "little spend, long ago",
    "Lost": "little spend, longest ago",
}


def segment_meaning(name: str) -> str:
    """A segment's meaning and the R and FM scores that give it.

    >>> segment_meaning("Champions")
    'bought very recently, often and for a lot (R 5 and FM 4-5)'
    """
    cells = sorted((r, fm) for r, row in _TABLE.items() for fm, segment in enumerate(row, start=1) if segment == name)
    if not cells:
        raise ValueError(f"unknown segment {name!r}")
    by_r: dict[int, list[int]] = {}
    for r, fm in cells:
        by_r.setdefault(r, []).append(fm)
    parts = []
    for r, fms in sorted(by_r.items(), reverse=True):
        span = str(fms[0]) if len(fms) == 1 else f"{fms[0]}-{fms[-1]}"
        parts.append(f"R {r} and FM {span}")
    return f"{_MEANINGS[name]} ({'; '.join(parts)})"


def segment_for(r: int, f: int, m: int) -> str:
    """The named segment of an RFM score.

    >>> segment_for(5, 1, 1), segment_for(5, 5, 5), segment_for(1, 1, 5), segment_for(1, 1, 1)
    ('New Customers', 'Champions', 'At Risk', 'Lost')
    """
    for name, score in (("r", r), ("f", f), ("m", m)):
        if not 1 <= score <= 5:
            raise ValueError(f"{name} score must be 1..5, not {score}")
    return _TABLE[r][(f + m + 1) // 2 - 1]


@dataclass(frozen=True)
class RfmScorer:
    """Scores recency, frequency and monetary value from 1 (worst) to 5 (best).

    R and M are scored against four ascending thresholds each (quantiles of the live population,
    republished by the retrain job; these defaults bootstrap a fresh system). F uses fixed tiers,
    because about 97% of Olist customers buy once and F quantiles would all be 1.

    Parameters
    ----------
    recency_days
        R is 5 while the days since the last purchase are below the first threshold, 4 below the
        second, ..., 1 from the fourth on.
    monetary
        M is 1 below the first threshold, 2 below the second, ..., 5 from the fourth on.
    version
        Increases with every republication; the stream re-scores everyone when it changes.

    Examples
    --------
    >>> scorer = RfmScorer()
    >>> scorer.score_one(recency_days=10, orders=1, monetary=60.0)
    (5, 1, 2)
    >>> scorer.score_one(recency_days=400, orders=4, monetary=1000.0)
    (1, 5, 5)
    >>> scorer.next_change_days(10)  # R drops when 30 days have passed
    30.0
    >>> scorer.next_change_days(400) is None
    True
    >>> RfmScorer.from_json(scorer.to_json()) == scorer
    True
    """

    recency_days: tuple[float, ...] = (30.0, 90.0, 180.0, 365.0)
    monetary: tuple[float, ...] = (55.0, 90.0, 140.0, 220.0)
    version: int = 0

    def __post_init__(self) -> None:
        for name in ("recency_days", "monetary"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 4 or list(values) != sorted(values) or values[0] < 0:
                raise ValueError(f"{name} must be four ascending non-negative thresholds, not {values}")
            object.__setattr__(self, name, values)

    def score_one(self, recency_days: float, orders: int, monetary: float) -> tuple[int, int, int]:
        r = 5 - bisect.bisect_right(self.recency_days, recency_days)
        f = 1 if orders <= 1 else min(orders + 1, 5)
        m = 1 + bisect.bisect_right(self.monetary, monetary)
        return r, f, m

    def next_change_days(self, recency_days: float) -> float | None:
        """The recency (days) at which R next drops, or None if it cannot drop further."""
        index = bisect.bisect_right(self.recency_days, recency_days)
        return self.recency_days[index] if index < len(self.recency_days) else None

    def to_json(self) -> str:
        return json.dumps({"recency_days": self.recency_days, "monetary": self.monetary, "version": self.version})

    @classmethod
    def from_json(cls, text: str) -> RfmScorer:
        data = json.loads(text)
        return cls(tuple(data["recency_days"]), tuple(data["monetary"]), int(data["version"]))


@dataclass(frozen=True)
class ChurnRules:
    """Churn status of a customer: ``active``, ``at_risk`` or ``churned``, with reasons.

    The expected gap between purchases is the customer's own mean gap once they have bought at
    least twice, ``default_gap_days`` before. Recency of at least one gap is a reason to be at
    risk, at least ``churned_gaps`` gaps is churned. A latest review of ``low_review`` stars or
    fewer, and a late latest delivery, are reasons to be at risk too.

    Examples
    --------
    >>> rules = ChurnRules()
    >>> rules.status_one(recency_days=20, mean_gap_days=None, last_review=5, last_delivery_late=False)
    ('active', ())
    >>> rules.status_one(recency_days=20, mean_gap_days=None, last_review=1, last_delivery_late=True)
    ('at_risk', ('low_review', 'late_delivery'))
    >>> rules.status_one(recency_days=200, mean_gap_days=None, last_review=None, last_delivery_late=None)
    ('at_risk', ('recency',))
    >>> rules.status_one(recency_days=70, mean_gap_days=30, last_review=None, last_delivery_late=None)
    ('churned', ('recency',))
    >>> rules.due_days(recency_days=70, mean_gap_days=None)  # next status change: at 180 days
    180.0

    With BG/NBD parameters (published by the retrain job), a P(alive) below ``p_alive_below`` is a
    reason too. P(alive) takes the lifetimes summary's day counts: ``repeat_days`` purchase days
    after the first, ``recency_days`` from the first purchase day to the last, ``age_days`` from
    the first to today.

    >>> rules = ChurnRules(bgnbd=(0.25, 4.0, 0.8, 2.5), p_alive_below=0.3)
    >>> round(rules.p_alive(repeat_days=2, recency_days=60, age_days=90), 3)
    0.648
    >>> rules.p_alive(repeat_days=0, recency_days=0, age_days=400)  # one purchase day: BG/NBD says alive
    1.0
    >>> age = rules.p_alive_due_days(repeat_days=2, recency_days=60)  # the age P(alive) falls below 0.3
    >>> rules.p_alive(2, 60, math.floor(age)) >= 0.3 > rules.p_alive(2, 60, math.floor(age) + 1)
    True
    """

    default_gap_days: float = 180.0
    churned_gaps: float = 2.0
    low_review: int = 2
    bgnbd: tuple[float, float, float, float] | None = None  # r, alpha, a, b
    p_alive_below: float = 0.3

    def __post_init__(self) -> None:
        if not self.default_gap_days > 0 or not self.churned_gaps >= 1:
            raise ValueError("default_gap_days must be > 0 and churned_gaps >= 1 (churned comes after at risk)")
        if not 0 < self.p_alive_below < 1:
            raise ValueError(f"p_alive_below must be between 0 and 1, not {self.p_alive_below}")
        if self.bgnbd is not None:
            params = tuple(float(v) for v in self.bgnbd)
            if len(params) != 4 or not all(math.isfinite(v) and v > 0 for v in params):
                raise ValueError(f"bgnbd must be four finite positive numbers (r, alpha, a, b), not {self.bgnbd}")
            object.__setattr__(self, "bgnbd", params)

    def p_alive(self, repeat_days: int, recency_days: float, age_days: float) -> float | None:
        """BG/NBD P(alive) (lifetimes' ``conditional_probability_alive``), or None without parameters."""
        if self.bgnbd is None:
            return None
        if repeat_days == 0:
            return 1.0
        r, alpha, a, b = self.bgnbd
        log_div = (r + repeat_days) * math.log((alpha + age_days) / (alpha + recency_days))
        log_div += math.log(a / (b + repeat_days - 1))
        return 0.0 if log_div > 700 else 1.0 / (1.0 + math.exp(log_div))

    def p_alive_due_days(self, repeat_days: int, recency_days: float) -> float | None:
        """The age (days since the first purchase day) beyond which P(alive) is below ``p_alive_below``."""
        if self.bgnbd is None or repeat_days == 0:
            return None
        r, alpha, a, b = self.bgnbd
        # P(alive) < p  <=>  log_div > log(1/p - 1); log_div grows with the age
        bound = math.log(1.0 / self.p_alive_below - 1.0) - math.log(a / (b + repeat_days - 1))
        return (alpha + recency_days) * math.exp(bound / (r + repeat_days)) - alpha

    def gaps(self, mean_gap_days: float | None) -> tuple[float, float]:
        gap = mean_gap_days if mean_gap_days and mean_gap_days > 0 else self.default_gap_days
        return gap, gap * self.churned_gaps

    def status_one(
        self,
        recency_days: float,
        mean_gap_days: float | None,
        last_review: int | None,
        last_delivery_late: bool | None,
        p_alive: float | None = None,
    ) -> tuple[str, tuple[str, ...]]:
        at_risk_after, churned_after = self.gaps(mean_gap_days)
        reasons = []
        if recency_days >= at_risk_after:
            reasons.append("recency")
        if last_review is not None and last_review <= self.low_review:
            reasons.append("low_review")
        if last_delivery_late:
            reasons.append("late_delivery")
        if p_alive is not None and p_alive < self.p_alive_below:
            reasons.append("p_alive")
        if recency_days >= churned_after:
            return "churned", tuple(reasons)
        return ("at_risk" if reasons else "active"), tuple(reasons)

    def due_days(self, recency_days: float, mean_gap_days: float | None) -> float | None:
        """The recency (days) at which the status next changes by time alone, or None."""
        at_risk_after, churned_after = self.gaps(mean_gap_days)  # in this order: see __post_init__
        if recency_days < at_risk_after:
            return at_risk_after
        return churned_after if recency_days < churned_after else None


def bgnbd_of(document: str | bytes | None) -> tuple[float, float, float, float] | None:
    """The BG/NBD parameters ``(r, alpha, a, b)`` in a thresholds document, if it has them.

    >>> bgnbd_of('{"recency_days": [30, 90, 180, 365], "monetary": [1, 2, 3, 4], "version": 2}') is None
    True
    >>> bgnbd_of('{"version": 3, "bgnbd": {"r": 0.2, "alpha": 4.0, "a": 0.8, "b": 2.5}}')
    (0.2, 4.0, 0.8, 2.5)
    """
    return bgnbd_tuple(json.loads(document).get("bgnbd")) if document else None


def bgnbd_tuple(params: dict[str, float] | None) -> tuple[float, float, float, float] | None:
    """BG/NBD parameters as a dict (``r``, ``alpha``, ``a``, ``b``) in :class:`ChurnRules`' order.

    >>> bgnbd_tuple({"a": 0.8, "alpha": 4.0, "b": 2.5, "r": 0.2})
    (0.2, 4.0, 0.8, 2.5)
    """
    return None if params is None else tuple(float(params[name]) for name in ("r", "alpha", "a", "b"))
