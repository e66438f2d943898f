"""Customer lifetime value: BG/NBD for purchases and P(alive), Gamma-Gamma for spend.

Works on the RFM summary that ``lifetimes.utils.summary_data_from_transaction_data`` defines
(``frequency``: repeat purchase days, ``recency`` and ``T`` in days, ``monetary_value``: the mean
of the repeat purchase days' totals). A fit that cannot be trusted raises :class:`ClvFitError`
with the reason, so that the retrain job keeps the previous model instead of writing NaN: too few
repeat buyers (Olist is ~97% one-time buyers), an optimizer that does not converge, or parameters
that are not finite.

:func:`rfm_summary` builds that summary from what the stream keeps per customer (``Profile.purchases``:
spend per purchase day), so the retrain job needs no transaction log.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter, ModifiedBetaGeoFitter, ParetoNBDFitter
from lifetimes.utils import ConvergenceError

__all__ = ["PURCHASE_MODELS", "ClvFitError", "ClvModel", "clv_by_segment", "degenerate_reason", "rfm_summary"]

SUMMARY_COLUMNS = ["frequency", "recency", "T", "monetary_value"]

# The purchase-count models lifetimes fits on the same summary (``SEGSTREAM_CLV_MODEL``), and
# their parameters. Only BG/NBD's P(alive) has the closed form the stream evaluates online
# (docs/definitions.md), so only a BG/NBD fit is published to the workers.
PURCHASE_MODELS: dict[str, tuple[type, tuple[str, ...]]] = {
    "bgnbd": (BetaGeoFitter, ("r", "alpha", "a", "b")),
    "modified_bgnbd": (ModifiedBetaGeoFitter, ("r", "alpha", "a", "b")),
    "pareto_nbd": (ParetoNBDFitter, ("r", "alpha", "s", "beta")),
}


def rfm_summary(purchases: Iterable[tuple[str, Mapping[str, list | float]]], cutoff: float) -> pd.DataFrame:
    """The RFM summary of ``lifetimes.utils.summary_data_from_transaction_data`` (``freq="D"``) from
    per-day purchase totals, as of ``cutoff`` (epoch seconds; its UTC day ends the observation).

    ``purchases`` yields ``(customer, {day: spend or [spend, ...]})`` with days as ``YYYY-MM-DD``.
    Days after the cutoff's day are left out, and customers with no day left. ``frequency`` is the
    number of purchase days after the first, ``recency`` the days from the first to the last,
    ``T`` the days from the first to the cutoff's day, ``monetary_value`` the mean spend of the
    days after the first (0 for one-time buyers).

    >>> cutoff = datetime(2017, 3, 31, 12, tzinfo=UTC).timestamp()
    >>> summary = rfm_summary([("a", {"2017-03-01": 10.0, "2017-03-11": 20.0, "2017-03-21": 40.0}),
    ...                        ("b", {"2017-03-30": [15.0, ["p1"], ["toys"]], "2017-04-02": 9.0})], cutoff)
    >>> summary.loc["a"].tolist(), summary.loc["b"].tolist()
    ([2.0, 20.0, 30.0, 30.0], [0.0, 0.0, 1.0, 0.0])
    """
    end = datetime.fromtimestamp(cutoff, tz=UTC).date().toordinal()
    rows: dict[str, tuple[float, float, float, float]] = {}
    for customer, days in purchases:
        spend = sorted(
            (ordinal, value[0] if isinstance(value, list) else value)
            for ordinal, value in ((date.fromisoformat(day).toordinal(), value) for day, value in days.items())
            if ordinal <= end
        )
        if not spend:
            continue
        first, last = spend[0][0], spend[-1][0]
        repeat = [value for _, value in spend[1:]]
        monetary = sum(repeat) / len(repeat) if repeat else 0.0
        rows[customer] = (float(len(repeat)), float(last - first), float(end - first), float(monetary))
    summary = pd.DataFrame.from_dict(rows, orient="index", columns=SUMMARY_COLUMNS, dtype=float)
    summary.index.name = "customer_id"
    return summary


# A BG/NBD r this close to 0 puts the whole purchase-rate distribution at 0: the optimizer ran out
# of data to say anything (seen: r = 0.0009 on a history with 18 repeat buyers, with 8,296 of 8,314
# CLVs negative); the published fit on CDNOW has r = 0.24. a and b at 0 together are not flagged:
# that is a history where nobody drops out (a / (a + b), the mean dropout probability, near 0).
BOUNDARY = 1e-3


def degenerate_reason(bgnbd: Mapping[str, float], gamma_gamma: Mapping[str, float]) -> str | None:
    """Why fitted parameters cannot be used, or None.

    >>> degenerate_reason({"r": 0.24, "alpha": 4.4, "a": 0.79, "b": 2.43}, {"p": 6.25, "q": 3.74, "v": 15.4})
    >>> degenerate_reason({"r": 0.0009, "alpha": 4.4, "a": 0.79, "b": 8.8e-10}, {"p": 6.2, "q": 0.23, "v": 15.4})
    'BG/NBD r = 0.0009 < 0.001 (no purchase rate left); Gamma-Gamma q = 0.23 <= 1 (expected spend undefined)'
    """
    reasons = []
    if bgnbd["r"] < BOUNDARY:
        reasons.append(f"BG/NBD r = {bgnbd['r']:.2g} < {BOUNDARY} (no purchase rate left)")
    if gamma_gamma["q"] <= 1:  # E[spend] = p v / (q - 1)
        reasons.append(f"Gamma-Gamma q = {gamma_gamma['q']:.2g} <= 1 (expected spend undefined)")
    return "; ".join(reasons) or None


class ClvFitError(RuntimeError):
    """The CLV models could not be fitted to be trusted; the reason is the message."""


class ClvModel:
    """BG/NBD (``lifetimes.BetaGeoFitter``; or another purchase model, see ``model``) and
    Gamma-Gamma (``lifetimes.GammaGammaFitter``).

    Parameters
    ----------
    model
        The purchase-count model: ``bgnbd`` (Fader, Hardie & Lee 2005, the default),
        ``modified_bgnbd`` (Batislam et al. 2007) or ``pareto_nbd`` (Schmittlein et al. 1987).
    penalizer
        L2 penalty of both fitters (``penalizer_coef``). The default, none, is the maximum
        likelihood fit of the papers: on lifetimes' CDNOW sample it reproduces Fader, Hardie & Lee
        (2005) and Fader & Hardie's Gamma-Gamma note (a penalty of 0.001 moved a, b from 0.79, 2.43
        to 0.50, 1.32).
    fallback_penalizer
        The penalty of a second attempt when the first fit does not converge (0: no second attempt).
    horizon_days
        Horizon of expected purchases and of CLV.
    monthly_discount
        Discount rate per month of the CLV (lifetimes' ``discount_rate``).
    min_repeat_buyers
        Fewest customers with a repeat purchase day (and positive spend) to fit at all.

    Attributes
    ----------
    purchase_params_
        The purchase model's parameters (``r``, ``alpha``, ``a``, ``b``; Pareto/NBD: ``r``,
        ``alpha``, ``s``, ``beta``).
    bgnbd_params_
        ``r``, ``alpha``, ``a``, ``b`` of a BG/NBD fit, what the stream needs to compute P(alive)
        online; None for the other models.
    gamma_gamma_params_
        ``p``, ``q``, ``v``.
    frequency_monetary_corr_
        Pearson correlation of frequency and monetary value among repeat buyers; Gamma-Gamma
        assumes it is about 0.
    repeat_buyers_
        How many customers the Gamma-Gamma fit used.
    penalizer_
        The penalty the fit that was kept used (``penalizer``, or ``fallback_penalizer``).
    """

    def __init__(
        self,
        penalizer: float = 0.0,
        horizon_days: float = 90.0,
        monthly_discount: float = 0.01,
        min_repeat_buyers: int = 20,
        fallback_penalizer: float = 0.001,
        model: str = "bgnbd",
    ) -> None:
        if model not in PURCHASE_MODELS:
            raise ValueError(f"unknown CLV model {model!r}; one of {', '.join(PURCHASE_MODELS)}")
        self.model = model
        self.penalizer = penalizer
        self.fallback_penalizer = fallback_penalizer
        self.horizon_days = horizon_days
        self.monthly_discount = monthly_discount
        self.min_repeat_buyers = min_repeat_buyers

    def fit(self, summary: pd.DataFrame) -> ClvModel:
        missing = set(SUMMARY_COLUMNS) - set(summary.columns)
        if missing:
            raise ValueError(f"summary: missing columns {sorted(missing)}")
        repeat = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
        if len(repeat) < self.min_repeat_buyers:
            raise ClvFitError(
                f"{len(repeat)} repeat buyers of {len(summary)} customers; at least {self.min_repeat_buyers} needed"
            )
        try:
            bgnbd, gamma_gamma = self._fit(summary, repeat, self.penalizer, self.model)
            self.penalizer_ = self.penalizer
        except ClvFitError as first:
            if not self.fallback_penalizer or self.fallback_penalizer == self.penalizer:
                raise
            try:
                bgnbd, gamma_gamma = self._fit(summary, repeat, self.fallback_penalizer, self.model)
            except ClvFitError as second:
                raise ClvFitError(f"{first}; with penalty {self.fallback_penalizer}: {second}") from second
            self.penalizer_ = self.fallback_penalizer
        self.bgnbd_, self.gamma_gamma_ = bgnbd, gamma_gamma
        self.purchase_params_ = {name: float(bgnbd.params_[name]) for name in PURCHASE_MODELS[self.model][1]}
        self.bgnbd_params_ = self.purchase_params_ if self.model == "bgnbd" else None
        self.gamma_gamma_params_ = {name: float(gamma_gamma.params_[name]) for name in ("p", "q", "v")}
        self.frequency_monetary_corr_ = float(np.corrcoef(repeat["frequency"], repeat["monetary_value"])[0, 1])
        self.repeat_buyers_ = len(repeat)
        return self

    @staticmethod
    def _fit(
        summary: pd.DataFrame, repeat: pd.DataFrame, penalizer: float, model: str = "bgnbd"
    ) -> tuple[BetaGeoFitter, GammaGammaFitter]:
        try:
            # lifetimes prints the optimizer's result to stdout when it does not converge: the
            # ClvFitError below says it in one line instead
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("error", RuntimeWarning)  # overflow in the likelihood: not a fit
                # one row per distinct (frequency, recency, T), weighted by its customers: the same
                # likelihood, and ~97% one-time buyers collapse to a few hundred rows
                grouped = summary.groupby(["frequency", "recency", "T"]).size().reset_index(name="weights")
                bgnbd = PURCHASE_MODELS[model][0](penalizer_coef=penalizer)
                # lifetimes starts the Pareto/NBD optimizer at np.random.normal(1, 0.05) per
                # parameter (the BG/NBD ones at a constant): start it at that mean, so that the same
                # summary always gives the same fit (backtests compare runs digit for digit)
                start = {"initial_params": np.ones(4)} if model == "pareto_nbd" else {}
                bgnbd.fit(grouped["frequency"], grouped["recency"], grouped["T"], weights=grouped["weights"], **start)
                gamma_gamma = GammaGammaFitter(penalizer_coef=penalizer)
                gamma_gamma.fit(repeat["frequency"], repeat["monetary_value"])
        except (ConvergenceError, RuntimeWarning, ValueError) as exc:
            # lifetimes' message carries the optimizer's whole result: its first line is the reason
            first_line = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            raise ClvFitError(f"the fit did not converge: {type(exc).__name__}: {first_line}") from exc
        params = {**dict(bgnbd.params_), **dict(gamma_gamma.params_)}
        bad = [name for name, value in params.items() if not math.isfinite(value) or value <= 0]
        if bad:
            raise ClvFitError(f"parameters not finite and positive: {', '.join(bad)}")
        degenerate = degenerate_reason(dict(bgnbd.params_), dict(gamma_gamma.params_))
        if degenerate:
            raise ClvFitError(f"degenerate fit: {degenerate}")
        return bgnbd, gamma_gamma

    def score(self, summary: pd.DataFrame) -> pd.DataFrame:
        """Per customer: expected purchases over the horizon, P(alive), CLV over the horizon."""
        # a RangeIndex, not the customer ids: lifetimes combines the columns many times, and pandas
        # would compare the (object) customer indexes each time
        plain = summary.reset_index(drop=True)
        frequency, recency, age = plain["frequency"], plain["recency"], plain["T"]
        expected = self.bgnbd_.conditional_expected_number_of_purchases_up_to_time(
            self.horizon_days, frequency, recency, age
        )
        alive = self.bgnbd_.conditional_probability_alive(frequency, recency, age)
        clv = self.gamma_gamma_.customer_lifetime_value(
            self.bgnbd_,
            frequency,
            recency,
            age,
            plain["monetary_value"],
            time=self.horizon_days / 30.0,
            discount_rate=self.monthly_discount,
            freq="D",
        )
        expected, alive, clv = (np.asarray(values, dtype=float) for values in (expected, alive, clv))
        return pd.DataFrame({"expected_purchases": expected, "p_alive": alive, "clv": clv}, index=summary.index)


def clv_by_segment(clv: pd.Series, segments: pd.Series) -> dict[str, dict[str, float]]:
    """The CLV distribution of each segment: customers, mean and the quantiles a box plot draws
    (10th, 25th, 50th, 75th, 90th percentile), for the live view; both series indexed by customer.

    >>> clv = pd.Series([0.0, 10.0, 20.0, 100.0], index=list("abcd"))
    >>> clv_by_segment(clv, pd.Series(["Lost", "Lost", "Lost", "Champions"], index=list("dcba")))
    {'Champions': {'customers': 1, 'mean': 0.0, 'p10': 0.0, 'p25': 0.0, 'p50': 0.0, 'p75': 0.0, 'p90': 0.0}, \
'Lost': {'customers': 3, 'mean': 43.33, 'p10': 12.0, 'p25': 15.0, 'p50': 20.0, 'p75': 60.0, 'p90': 84.0}}
    """
    frame = pd.DataFrame({"clv": clv, "segment": segments.reindex(clv.index)}).dropna()
    out: dict[str, dict[str, float]] = {}
    for segment, values in frame.groupby("segment")["clv"]:
        quantiles = values.quantile([0.1, 0.25, 0.5, 0.75, 0.9]).round(2).tolist()
        out[str(segment)] = {
            "customers": len(values),
            "mean": round(float(values.mean()), 2),
            **dict(zip(("p10", "p25", "p50", "p75", "p90"), quantiles, strict=True)),
        }
    return out
