"""The sales forecast: daily purchases and revenue over the next days, with prediction intervals.

Fitted at retrain on the stream's daily read model (``streams/analytics.py``, ``daily``: per
event-day the purchases and their payment total, exact under late events and redelivery), up to
the cutoff's day; days without a purchase count as zero.

The model is statsmodels' ETS with additive errors, a damped additive trend and an additive weekly
season (``ETSModel(error="add", trend="add", damped_trend=True, seasonal="add",
seasonal_periods=7)``), chosen by measurement (docs/benchmarks.md, ``bench/forecast.py``): on a
generated 100k-order history, 30-day horizons from ten rolling origins, its MASE was 1.16 on
orders and 1.08 on revenue in 0.25 s a fit, against SARIMAX(1,1,1)(0,1,1,7) 1.13 and 1.04 in
0.65 s (with convergence warnings at several origins), the seasonal naive forecast (same weekday
last week) 1.51 and 1.46, and river's online models far behind (SNARIMAX 4.5 and 4.7,
HoltWinters 1.7 and 2.0). A fit at retrain also sees the late events that corrected past days, which an online
model updated as each day closes would have learnt without. Intervals are the model's own
prediction intervals at ``SEGSTREAM_FORECAST_LEVEL``; forecasts and bounds below zero are cut to zero.

>>> days = pd.date_range("2018-01-01", periods=70, freq="D")
>>> weekly = pd.Series([10.0, 12, 11, 13, 20, 25, 5] * 10, index=days)
>>> out = forecast(weekly, horizon=7, level=0.9)
>>> [round(v) for v in out["mean"]]
[10, 12, 11, 13, 20, 25, 5]
>>> bool((out["lower"] <= out["mean"]).all() and (out["mean"] <= out["upper"]).all())
True
"""

from __future__ import annotations

import warnings
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MIN_DAYS", "daily_series", "errors", "forecast", "seasonal_naive"]

SEASON = 7
MIN_DAYS = 4 * SEASON  # fewer days of history: no forecast


def daily_series(days: list[dict[str, Any]], until: date) -> pd.DataFrame:
    """The daily read model's rows (``streams.analytics.daily_table``) up to ``until`` as a full
    daily index from the first purchase day: ``orders`` and ``revenue``, zero on days without one."""
    frame = pd.DataFrame(days, columns=["day", "orders", "revenue"])
    frame["day"] = pd.to_datetime(frame["day"])
    frame = frame[frame["day"] <= pd.Timestamp(until)].set_index("day").sort_index()
    if frame.empty:
        return frame.astype(float)
    index = pd.date_range(frame.index[0], pd.Timestamp(until), freq="D")
    return frame.reindex(index, fill_value=0).astype(float)


def forecast(series: pd.Series, horizon: int, level: float) -> pd.DataFrame:
    """The next ``horizon`` days after the series' last: ``day``, ``mean``, ``lower``, ``upper``."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    if len(series) < MIN_DAYS:
        raise ValueError(f"{len(series)} days of history; a forecast needs {MIN_DAYS}")
    values = series.to_numpy(dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' convergence chatter: the errors say how good it is
        model = ETSModel(
            pd.Series(values, index=pd.RangeIndex(len(values))),
            error="add", trend="add", damped_trend=True, seasonal="add", seasonal_periods=SEASON,
        ).fit(disp=False)  # fmt: skip
        frame = model.get_prediction(start=len(values), end=len(values) + horizon - 1).summary_frame(alpha=1 - level)
    last = series.index[-1]
    days = [(last + timedelta(days=k)).date().isoformat() for k in range(1, horizon + 1)]
    mean = frame["mean"].to_numpy().clip(min=0)
    lower = frame["pi_lower"].to_numpy().clip(min=0)
    upper = np.maximum(frame["pi_upper"].to_numpy().clip(min=0), mean)
    return pd.DataFrame({"day": days, "mean": mean, "lower": np.minimum(lower, mean), "upper": upper})


def seasonal_naive(series: pd.Series, horizon: int) -> np.ndarray:
    """The same weekday last week, repeated over the horizon.

    >>> seasonal_naive(pd.Series([1.0, 2, 3, 4, 5, 6, 7, 8]), 9).tolist()
    [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 2.0, 3.0]
    """
    last = series.to_numpy(dtype=float)[-SEASON:]
    return np.array([last[k % SEASON] for k in range(horizon)])


def errors(actual: np.ndarray, predicted: np.ndarray, history: np.ndarray) -> dict[str, float | None]:
    """MAPE (over days with a non-zero actual) and MASE (scaled by the history's in-sample
    seasonal naive error, lag 7, as Hyndman & Koehler 2006 define it for seasonal data).

    >>> errors(np.array([10.0, 20.0]), np.array([12.0, 18.0]), np.array([1.0] * 7 + [3.0] * 7))
    {'mape': 0.15, 'mase': 1.0}
    """
    actual, predicted, history = (np.asarray(a, dtype=float) for a in (actual, predicted, history))
    nonzero = actual != 0
    mape = (
        float(np.mean(np.abs(actual[nonzero] - predicted[nonzero]) / np.abs(actual[nonzero])))
        if nonzero.any()
        else None
    )
    scale = float(np.mean(np.abs(history[SEASON:] - history[:-SEASON]))) if len(history) > SEASON else 0.0
    mase = float(np.mean(np.abs(actual - predicted)) / scale) if scale > 0 else None
    return {"mape": None if mape is None else round(mape, 6), "mase": None if mase is None else round(mase, 6)}
