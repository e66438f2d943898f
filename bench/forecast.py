"""Which sales forecast: statsmodels ETS and SARIMAX at retrain, or river's online models.

    python bench/forecast.py --orders 100000

A generated Olist-like history (``replay.synth``), its daily purchases and revenue (placed, not
canceled or unavailable, orders' payments), 30-day forecasts from rolling origins every 30 days
(2017-09-01 to 2018-07-01); per model the mean MASE over the origins (scaled by the in-sample
seasonal naive error, lag 7) and the fit time per origin. The seasonal naive forecast (same
weekday last week) is the baseline. models/forecast.py uses the winner of accuracy at its cost.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from models.forecast import errors, forecast, seasonal_naive
from replay.synth import SynthConfig, synthesize

HORIZON = 30


def _daily(data: Path) -> pd.DataFrame:
    orders = pd.read_csv(
        data / "olist_orders_dataset.csv", usecols=["order_id", "order_status", "order_purchase_timestamp"]
    )
    paid = pd.read_csv(data / "olist_order_payments_dataset.csv").groupby("order_id")["payment_value"].sum()
    orders = orders[~orders["order_status"].isin(["canceled", "unavailable"])]
    orders["day"] = pd.to_datetime(orders["order_purchase_timestamp"]).dt.normalize()
    orders["revenue"] = orders["order_id"].map(paid).fillna(0.0)
    daily = orders.groupby("day").agg(orders=("order_id", "size"), revenue=("revenue", "sum"))
    return daily.asfreq("D", fill_value=0).astype(float)


def _sarimax(train: pd.Series) -> np.ndarray:
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    fitted = SARIMAX(train.to_numpy(), order=(1, 1, 1), seasonal_order=(0, 1, 1, 7)).fit(disp=False)
    return np.asarray(fitted.get_forecast(HORIZON).predicted_mean)


def _river(model_name: str) -> Callable[[pd.Series], np.ndarray]:
    def run(train: pd.Series) -> np.ndarray:
        from river import time_series

        if model_name == "snarimax":
            model = time_series.SNARIMAX(p=1, d=1, q=1, m=7, sp=0, sd=1, sq=1)
        else:
            model = time_series.HoltWinters(alpha=0.3, beta=0.1, gamma=0.5, seasonality=7)
        for value in train.to_numpy():  # as each event day closes
            model.learn_one(value)
        return np.asarray(model.forecast(horizon=HORIZON))

    return run


MODELS: dict[str, Callable[[pd.Series], np.ndarray]] = {
    "seasonal_naive": lambda train: seasonal_naive(train, HORIZON),
    "ets (models/forecast.py)": lambda train: forecast(train, HORIZON, 0.9)["mean"].to_numpy(),
    "sarimax(1,1,1)(0,1,1,7)": _sarimax,
    "river SNARIMAX(1,1,1)(0,1,1,7)": _river("snarimax"),
    "river HoltWinters": _river("holtwinters"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # statsmodels' convergence chatter; the errors are the measure
    data = Path(tempfile.mkdtemp(prefix="segstream-forecast-bench-"))
    synthesize(SynthConfig(orders=args.orders, seed=1), data)
    daily = _daily(data)
    origins = pd.date_range("2017-09-01", "2018-07-01", freq="30D")
    figures: dict = {"orders": args.orders, "origins": len(origins), "horizon_days": HORIZON, "models": {}}
    for name, model in MODELS.items():
        row: dict = {}
        for column in ("orders", "revenue"):
            scores, seconds = [], 0.0
            for origin in origins:
                train = daily.loc[:origin, column]
                actual = daily.loc[origin + pd.Timedelta(days=1) :, column].to_numpy()[:HORIZON]
                started = time.perf_counter()
                predicted = model(train)
                seconds += time.perf_counter() - started
                scores.append(errors(actual, predicted, train.to_numpy())["mase"])
            row[column] = {
                "mase": round(float(np.mean(scores)), 3),
                "seconds_per_fit": round(seconds / len(origins), 3),
            }
        figures["models"][name] = row
        print(f"{name:<32} orders MASE {row['orders']['mase']:.3f}  revenue MASE {row['revenue']['mase']:.3f}  "
              f"{row['orders']['seconds_per_fit']:.3f} s per fit")  # fmt: skip
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
