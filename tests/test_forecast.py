"""The sales forecast on planted daily series: the weekly season and the trend are found, the
intervals cover about what they claim, and the errors are those of models.forecast.errors."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from models.forecast import MIN_DAYS, daily_series, errors, forecast, seasonal_naive

WEEK = np.array([1.0, 1.1, 1.05, 1.0, 1.2, 0.7, 0.6])


def planted(days: int, seed: int, growth: float = 0.4) -> pd.Series:
    """Daily orders growing by ``growth`` a day with a weekly pattern and Poisson noise."""
    rng = np.random.default_rng(seed)
    level = 60 + growth * np.arange(days)
    values = rng.poisson(level * WEEK[np.arange(days) % 7]).astype(float)
    return pd.Series(values, index=pd.date_range("2017-01-02", periods=days, freq="D"))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_forecast_beats_seasonal_naive_on_a_trend_with_a_weekly_season(seed: int) -> None:
    series = planted(330, seed)
    history, ahead = series.iloc[:300], series.iloc[300:]
    out = forecast(history, horizon=30, level=0.9)
    assert list(out["day"]) == [d.date().isoformat() for d in ahead.index]
    mine = errors(ahead.to_numpy(), out["mean"].to_numpy(), history.to_numpy())
    naive = errors(ahead.to_numpy(), seasonal_naive(history, 30), history.to_numpy())
    assert mine["mase"] < naive["mase"], (mine, naive)
    inside = ((out["lower"] <= ahead.to_numpy()) & (ahead.to_numpy() <= out["upper"])).mean()
    assert 0.7 <= inside <= 1.0, inside  # 90% intervals, 30 days
    # Saturdays and Sundays are the low days, as planted
    weekday = pd.to_datetime(out["day"]).dt.day_of_week
    lows = out.groupby(weekday.to_numpy())["mean"].mean().nsmallest(2).index
    assert set(lows) == {5, 6}


def test_a_forecast_without_the_season_loses_to_it() -> None:
    """The check can fail: the same series with its days shuffled has no weekly pattern to find."""
    series = planted(330, 4, growth=0.0)
    shuffled = pd.Series(np.random.default_rng(0).permutation(series.to_numpy()), index=series.index)
    history, ahead = shuffled.iloc[:300], series.iloc[300:]
    out = forecast(history, horizon=30, level=0.9)
    true_history = series.iloc[:300].to_numpy()
    blind = errors(ahead.to_numpy(), out["mean"].to_numpy(), true_history)
    seen = errors(ahead.to_numpy(), forecast(series.iloc[:300], 30, 0.9)["mean"].to_numpy(), true_history)
    assert seen["mase"] < blind["mase"]


def test_daily_series_fills_days_without_a_purchase_and_stops_at_the_cutoff() -> None:
    rows = [{"day": "2018-01-01", "orders": 2, "revenue": 10.0}, {"day": "2018-01-04", "orders": 1, "revenue": 5.0},
            {"day": "2018-02-01", "orders": 9, "revenue": 90.0}]  # fmt: skip
    frame = daily_series(rows, date(2018, 1, 5))
    assert frame["orders"].tolist() == [2, 0, 0, 1, 0] and frame["revenue"].sum() == 15.0
    with pytest.raises(ValueError, match=f"needs {MIN_DAYS}"):
        forecast(frame["orders"], 30, 0.9)
