"""Customer lifetime value: BG/NBD for purchases and P(alive), Gamma-Gamma for spend.

Works on the RFM summary that ``lifetimes.utils.summary_data_from_transaction_data`` defines
(``frequency``: repeat purchase days, ``recency`` and ``T`` in days, ``monetary_value``: the mean
of the repeat purchase days' totals). A fit that cannot be trusted raises :class:`ClvFitError`
with the reason, so that the retrain job keeps the previous model instead of writing NaN: too few
repeat buyers (Olist is ~97% one-time buyers), an optimizer that does not converge, or parameters
that are not finite.

Not finished (issue 5): building the summary from the profiles in Redis (the profile does not hold
per-day purchase totals yet), the retrain job and the registry.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter
from lifetimes.utils import ConvergenceError

__all__ = ["ClvFitError", "ClvModel"]

SUMMARY_COLUMNS = ["frequency", "recency", "T", "monetary_value"]


class ClvFitError(RuntimeError):
    """The CLV models could not be fitted to be trusted; the reason is the message."""


class ClvModel:
    """BG/NBD (``lifetimes.BetaGeoFitter``) and Gamma-Gamma (``lifetimes.GammaGammaFitter``).

    Parameters
    ----------
    penalizer
        L2 penalty of both fitters (``penalizer_coef``).
    horizon_days
        Horizon of expected purchases and of CLV.
    monthly_discount
        Discount rate per month of the CLV (lifetimes' ``discount_rate``).
    min_repeat_buyers
        Fewest customers with a repeat purchase day (and positive spend) to fit at all.

    Attributes
    ----------
    bgnbd_params_
        ``r``, ``alpha``, ``a``, ``b``: what the stream needs to compute P(alive) online.
    gamma_gamma_params_
        ``p``, ``q``, ``v``.
    frequency_monetary_corr_
        Pearson correlation of frequency and monetary value among repeat buyers; Gamma-Gamma
        assumes it is about 0.
    repeat_buyers_
        How many customers the Gamma-Gamma fit used.
    """

    def __init__(
        self,
        penalizer: float = 0.001,
        horizon_days: float = 90.0,
        monthly_discount: float = 0.01,
        min_repeat_buyers: int = 20,
    ) -> None:
        self.penalizer = penalizer
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
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)  # overflow in the likelihood: not a fit
                bgnbd = BetaGeoFitter(penalizer_coef=self.penalizer)
                bgnbd.fit(summary["frequency"], summary["recency"], summary["T"])
                gamma_gamma = GammaGammaFitter(penalizer_coef=self.penalizer)
                gamma_gamma.fit(repeat["frequency"], repeat["monetary_value"])
        except (ConvergenceError, RuntimeWarning, ValueError) as exc:
            raise ClvFitError(f"the fit did not converge: {type(exc).__name__}: {exc}") from exc
        params = {**dict(bgnbd.params_), **dict(gamma_gamma.params_)}
        bad = [name for name, value in params.items() if not math.isfinite(value) or value <= 0]
        if bad:
            raise ClvFitError(f"parameters not finite and positive: {', '.join(bad)}")
        self.bgnbd_, self.gamma_gamma_ = bgnbd, gamma_gamma
        self.bgnbd_params_ = {name: float(bgnbd.params_[name]) for name in ("r", "alpha", "a", "b")}
        self.gamma_gamma_params_ = {name: float(gamma_gamma.params_[name]) for name in ("p", "q", "v")}
        self.frequency_monetary_corr_ = float(np.corrcoef(repeat["frequency"], repeat["monetary_value"])[0, 1])
        self.repeat_buyers_ = len(repeat)
        return self

    def score(self, summary: pd.DataFrame) -> pd.DataFrame:
        """Per customer: expected purchases over the horizon, P(alive), CLV over the horizon."""
        frequency, recency, age = summary["frequency"], summary["recency"], summary["T"]
        expected = self.bgnbd_.conditional_expected_number_of_purchases_up_to_time(
            self.horizon_days, frequency, recency, age
        )
        alive = self.bgnbd_.conditional_probability_alive(frequency, recency, age)
        clv = self.gamma_gamma_.customer_lifetime_value(
            self.bgnbd_,
            frequency,
            recency,
            age,
            summary["monetary_value"],
            time=self.horizon_days / 30.0,
            discount_rate=self.monthly_discount,
            freq="D",
        )
        return pd.DataFrame({"expected_purchases": expected, "p_alive": alive, "clv": clv}, index=summary.index).astype(
            float
        )
