"""RFM thresholds from the live population: the retrain job's step that re-scores everyone.

R and M are scored against quintile thresholds of the customers' recency (days since their last
purchase, at the event-time watermark) and monetary value. The job republishes them only when one
moved by more than a tolerance, so that a retrain does not set off a storm of tiny segment changes:
each publication makes every worker re-score every customer (``streams.thresholds``).

The retrain job (``models/retrain.py``) calls it on every run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from models.population import Population
from segstream.scoring import DAY, RfmScorer, bgnbd_tuple
from segstream.settings import Settings
from streams.thresholds import current_scoring, publish_thresholds

__all__ = ["quintile_thresholds", "refresh_thresholds", "thresholds_moved"]

log = logging.getLogger(__name__)


def quintile_thresholds(values: Iterable[float]) -> tuple[float, ...]:
    """The 20th, 40th, 60th and 80th percentiles (linear interpolation), rounded to cents.

    >>> quintile_thresholds([10, 20, 30, 40, 50, 60])
    (20.0, 30.0, 40.0, 50.0)
    """
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        raise ValueError("values: no customers to take quantiles of")
    return tuple(round(float(q), 2) for q in np.percentile(array, [20, 40, 60, 80]))


def thresholds_moved(old: tuple[float, ...], new: tuple[float, ...], tolerance: float) -> bool:
    """Whether any threshold moved by more than ``tolerance`` of its old value (absolute below 1).

    >>> thresholds_moved((30.0, 90.0, 180.0, 365.0), (31.0, 90.0, 180.0, 365.0), 0.05)
    False
    >>> thresholds_moved((30.0, 90.0, 180.0, 365.0), (30.0, 90.0, 200.0, 365.0), 0.05)
    True
    """
    return any(abs(b - a) > tolerance * max(abs(a), 1.0) for a, b in zip(old, new, strict=True))


def refresh_thresholds(
    settings: Settings,
    population: Population,
    cutoff: float,
    tolerance: float = 0.05,
    bgnbd: dict[str, float] | None = None,
) -> RfmScorer | None:
    """Recompute R and M thresholds from every scored customer of ``population`` as of ``cutoff``
    (epoch seconds, event time) and publish them, with new BG/NBD parameters if given, when any of
    them moved beyond ``tolerance`` (one publication, so workers re-score once); returns the
    published scorer, or None when nothing was published (and says why in the log)."""
    scored = population.scored
    if not scored.any():
        log.info("RFM thresholds: no scored customers yet; nothing published")
        return None
    recency = np.maximum(0.0, (cutoff - population.last_purchase[scored]) / DAY)
    monetary = population.monetary[scored]
    current, old_bgnbd = current_scoring(settings)
    new_recency, new_monetary = quintile_thresholds(recency), quintile_thresholds(monetary)
    new_bgnbd = bgnbd_tuple(bgnbd)
    if not (
        thresholds_moved(current.recency_days, new_recency, tolerance)
        or thresholds_moved(current.monetary, new_monetary, tolerance)
        or (new_bgnbd is not None and (old_bgnbd is None or thresholds_moved(old_bgnbd, new_bgnbd, tolerance)))
    ):
        log.info(
            "RFM thresholds from %d customers moved less than %.0f%%; version %d stays",
            len(recency),
            tolerance * 100,
            current.version,
        )
        return None
    scorer = publish_thresholds(settings, new_recency, new_monetary, bgnbd)
    log.info(
        "RFM thresholds version %d from %d customers: recency %s days, monetary %s; BG/NBD %s",
        scorer.version,
        len(recency),
        new_recency,
        new_monetary,
        ", ".join(f"{name} = {value:.4g}" for name, value in (bgnbd or {}).items()) or "unchanged",
    )
    return scorer
