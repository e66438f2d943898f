"""The descriptive analyses of customer notebooks, on the source data: plain pandas.

The backtest report shows them beside the scores (the same run, the same history): monthly
acquisition cohorts and their retention, purchases and revenue by weekday and hour, customers and
revenue by state (or country), and review score against repeat purchase. Times are the data's
own (Olist: São Paulo local time without an offset, read as is).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pandas as pd

__all__ = ["cohorts", "descriptive", "review_vs_repeat", "weekday_hour"]


def cohorts(orders: pd.DataFrame, months: int = 12) -> list[dict[str, Any]]:
    """Per month of first purchase: its customers and, for each month since (0 = the first), the
    share of them who bought in that month and their revenue.

    >>> o = pd.DataFrame({"customer": ["a", "a", "b"], "spend": [1.0, 2.0, 4.0],
    ...                   "time": pd.to_datetime(["2017-01-05", "2017-02-01", "2017-01-20"])})
    >>> cohorts(o, months=2)
    [{'cohort': '2017-01', 'customers': 2, 'retention': [1.0, 0.5], 'revenue': [5.0, 2.0]}]
    """
    month = orders["time"].dt.year * 12 + orders["time"].dt.month - 1
    frame = pd.DataFrame({"customer": orders["customer"], "month": month, "spend": orders["spend"]})
    first = frame.groupby("customer")["month"].transform("min")
    frame["since"], frame["cohort"] = frame["month"] - first, first
    size = frame.groupby("cohort")["customer"].nunique()
    active = frame.groupby(["cohort", "since"])["customer"].nunique()
    revenue = frame.groupby(["cohort", "since"])["spend"].sum()
    out = []
    for cohort, n in size.items():
        out.append(
            {
                "cohort": f"{cohort // 12}-{cohort % 12 + 1:02d}",
                "customers": int(n),
                "retention": [round(float(active.get((cohort, k), 0)) / n, 6) for k in range(months)],
                "revenue": [round(float(revenue.get((cohort, k), 0.0)), 2) for k in range(months)],
            }
        )
    return out


def weekday_hour(orders: pd.DataFrame) -> dict[str, list[list[float]]]:
    """Orders and revenue by weekday (rows, Monday first) and hour of the event time (columns)."""
    grid = orders.assign(weekday=orders["time"].dt.weekday, hour=orders["time"].dt.hour)
    counts = grid.pivot_table(index="weekday", columns="hour", values="spend", aggfunc="size", fill_value=0)
    revenue = grid.pivot_table(index="weekday", columns="hour", values="spend", aggfunc="sum", fill_value=0.0)
    full = pd.MultiIndex.from_product([range(7), range(24)])

    def cells(table: pd.DataFrame) -> list[list[float]]:
        stacked = table.stack().reindex(full, fill_value=0)
        return [[round(float(stacked[(d, h)]), 2) for h in range(24)] for d in range(7)]

    return {"orders": cells(counts), "revenue": cells(revenue)}


def review_vs_repeat(orders: pd.DataFrame, reviews: pd.DataFrame) -> list[dict[str, Any]]:
    """Per score of a customer's first review: customers, and the share with more than one
    purchase day."""
    days = orders.assign(day=orders["time"].dt.date).groupby("customer")["day"].nunique()
    first = reviews.sort_values(["event_time", "review_id"]).drop_duplicates("customer_unique_id")
    scored = pd.DataFrame(
        {"score": first["score"].to_numpy(), "days": days.reindex(first["customer_unique_id"]).to_numpy()}
    )
    scored = scored.dropna()
    out = []
    for score, group in scored.groupby("score"):
        out.append(
            {"score": int(score), "customers": len(group), "repeat_share": round(float((group["days"] > 1).mean()), 6)}
        )
    return out


def descriptive(orders: pd.DataFrame, reviews: pd.DataFrame, until: date) -> dict[str, Any]:
    """All four, on the orders and reviews up to the day ``until`` included."""
    end = pd.Timestamp(until + timedelta(days=1))
    orders = orders[orders["time"] < end]
    reviews = reviews[reviews["event_time"] < end]
    # a customer counts in the state of their latest purchase, as the live read model counts them
    latest_state = orders.sort_values("time").drop_duplicates("customer", keep="last")
    by_state = (
        orders.groupby("state")["spend"]
        .sum()
        .to_frame("revenue")
        .join(latest_state.groupby("state").size().rename("customers"))
    )
    by_state = by_state.fillna(0).sort_values(["revenue", "customers"], ascending=False)
    return {
        "until": until.isoformat(),
        "cohorts": cohorts(orders),
        "weekday_hour": weekday_hour(orders),
        "states": [
            {"state": str(s), "customers": int(row.customers), "revenue": round(float(row.revenue), 2)}
            for s, row in by_state.iterrows()
        ],
        "review_vs_repeat": review_vs_repeat(orders, reviews),
    }
