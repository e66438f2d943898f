"""The correctness oracle: docs/definitions.md computed in batch with pandas, from the raw CSVs.

Independent of segstream's loader and streaming code on purpose: it reads the Olist files
itself and computes, for a history replayed up to its last event, each customer's final R/F/M,
segment and churn status, and every segment transition the stream must publish.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DAY = 86_400.0
R_THRESHOLDS = np.array([30.0, 90.0, 180.0, 365.0])
M_THRESHOLDS = np.array([55.0, 90.0, 140.0, 220.0])
DEFAULT_GAP_DAYS = 180.0
TABLE = np.array(
    [  # rows R = 1..5, columns FM = 1..5
        ["Lost", "Lost", "At Risk", "At Risk", "Can't Lose Them"],
        ["Hibernating", "Hibernating", "At Risk", "At Risk", "Can't Lose Them"],
        ["About to Sleep", "About to Sleep", "Need Attention", "Loyal", "Loyal"],
        ["Promising", "Potential Loyalists", "Potential Loyalists", "Loyal", "Loyal"],
        ["New Customers", "Potential Loyalists", "Potential Loyalists", "Champions", "Champions"],
    ]
)


def _seconds(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, format="ISO8601").astype("datetime64[ns]").astype("int64") / 1e9


def load_facts(data: Path) -> dict[str, pd.DataFrame]:
    """Purchases, deliveries, cancellations and reviews per customer, straight from the CSVs."""
    orders = pd.read_csv(data / "olist_orders_dataset.csv", dtype=str)
    customers = pd.read_csv(data / "olist_customers_dataset.csv", dtype=str)
    payments = pd.read_csv(data / "olist_order_payments_dataset.csv", dtype={"order_id": str})
    items = pd.read_csv(data / "olist_order_items_dataset.csv", dtype={"order_id": str})
    reviews = pd.read_csv(data / "olist_order_reviews_dataset.csv", dtype={"review_id": str, "order_id": str})

    orders = orders.merge(customers[["customer_id", "customer_unique_id"]], on="customer_id")
    orders["time"] = _seconds(orders["order_purchase_timestamp"])
    paid = payments.groupby("order_id")["payment_value"].sum()
    items_value = (items["price"] + items["freight_value"]).groupby(items["order_id"]).sum()
    orders["value"] = orders["order_id"].map(paid).fillna(orders["order_id"].map(items_value)).fillna(0.0)
    canceled = orders["order_status"].isin(["canceled", "unavailable"])

    purchases = orders.loc[~canceled, ["customer_unique_id", "order_id", "time", "value"]]
    # a canceled Olist order never counted as spend: it changes nothing in monetary
    cancels = orders.loc[canceled, ["customer_unique_id", "order_id", "time"]].assign(value=0.0)
    kept = orders[~canceled & orders["order_delivered_customer_date"].notna()]
    delivered = _seconds(kept["order_delivered_customer_date"])
    delivered_day = pd.to_datetime(kept["order_delivered_customer_date"]).dt.normalize()
    estimated_day = pd.to_datetime(kept["order_estimated_delivery_date"]).dt.normalize()
    deliveries = pd.DataFrame(
        {
            "customer_unique_id": kept["customer_unique_id"],
            "order_id": kept["order_id"],
            "time": delivered,
            "late": (delivered_day > estimated_day).where(estimated_day.notna()),
        }
    )
    deliveries = deliveries[deliveries["time"] >= kept["time"]]

    reviews = reviews.drop_duplicates(["review_id", "order_id"])
    reviews = reviews[reviews["review_score"].between(1, 5)]
    reviews["time"] = _seconds(reviews["review_answer_timestamp"].fillna(reviews["review_creation_date"]))
    reviews = reviews.merge(orders[["order_id", "customer_unique_id", "time"]].rename(columns={"time": "bought"}))
    reviews = reviews[reviews["time"] >= reviews["bought"]]
    return {"purchases": purchases, "cancels": cancels, "deliveries": deliveries, "reviews": reviews}


def load_online_retail_facts(data: Path) -> dict[str, pd.DataFrame]:
    """The same facts from a UCI Online Retail file (``data``: the CSV, or a directory holding
    ``online_retail.csv``), per docs/definitions.md: an invoice is a purchase worth the sum of its
    lines; a ``C`` invoice takes its lines' value off monetary; guest rows, bad dates, prices <= 0,
    zero quantities, negative quantities outside ``C`` invoices and duplicate lines are not events.
    """
    path = data / "online_retail.csv" if data.is_dir() else data
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    rows["customer_unique_id"] = rows["CustomerID"].str.strip().str.replace(r"\.0$", "", regex=True)
    rows["when"] = pd.to_datetime(rows["InvoiceDate"], format="%m/%d/%Y %H:%M", errors="coerce")
    quantity = pd.to_numeric(rows["Quantity"], errors="coerce")
    price = pd.to_numeric(rows["UnitPrice"], errors="coerce")
    is_c = rows["InvoiceNo"].str.startswith("C")
    ok = (rows["customer_unique_id"] != "") & rows["when"].notna() & (price > 0) & (quantity != 0)
    ok &= quantity.notna() & ~((quantity < 0) & ~is_c)
    rows = rows.assign(line=(quantity * price).abs(), C=is_c)[ok]
    rows = rows.drop_duplicates(
        [
            "InvoiceNo",
            "StockCode",
            "Description",
            "Quantity",
            "InvoiceDate",
            "UnitPrice",
            "customer_unique_id",
            "Country",
        ]
    )
    owners = rows.groupby("InvoiceNo")["customer_unique_id"].nunique()
    rows = rows[rows["InvoiceNo"].map(owners) == 1]
    invoices = (
        rows.groupby("InvoiceNo")
        .agg(
            customer_unique_id=("customer_unique_id", "first"),
            when=("when", "min"),
            value=("line", "sum"),
            C=("C", "first"),
        )
        .reset_index()
        .rename(columns={"InvoiceNo": "order_id"})
    )
    invoices["time"] = invoices["when"].astype("datetime64[ns]").astype("int64") / 1e9
    invoices["value"] = invoices["value"].round(2)
    invoices.loc[invoices["C"], "value"] *= -1
    columns = ["customer_unique_id", "order_id", "time", "value"]
    empty_deliveries = pd.DataFrame(columns=["customer_unique_id", "order_id", "time", "late"])
    empty_reviews = pd.DataFrame(columns=["customer_unique_id", "order_id", "review_id", "review_score", "time"])
    return {
        "purchases": invoices.loc[~invoices["C"], columns],
        "cancels": invoices.loc[invoices["C"], columns],
        "deliveries": empty_deliveries.astype({"time": float}),
        "reviews": empty_reviews.astype({"time": float, "review_score": float}),
    }


def _scores(recency_days, orders, monetary, r_thresholds=R_THRESHOLDS, m_thresholds=M_THRESHOLDS):
    r = 5 - np.searchsorted(np.asarray(r_thresholds), recency_days, side="right")
    f = np.where(orders <= 1, 1, np.minimum(orders + 1, 5))
    m = 1 + np.searchsorted(np.asarray(m_thresholds), monetary, side="right")
    return r, f, m


def _latest(frame: pd.DataFrame, id_column: str, value: str) -> pd.Series:
    ordered = frame.assign(_id=frame[id_column]).sort_values(["time", "_id"])
    return ordered.groupby("customer_unique_id")[value].last()


def p_alive(purchases: pd.DataFrame, now: float, bgnbd: tuple[float, float, float, float]) -> pd.Series:
    """BG/NBD P(alive) per customer at ``now``, by lifetimes itself from the purchase rows."""
    from lifetimes import BetaGeoFitter
    from lifetimes.utils import summary_data_from_transaction_data

    transactions = purchases.assign(date=pd.to_datetime(purchases["time"], unit="s"))
    summary = summary_data_from_transaction_data(
        transactions, "customer_unique_id", "date", observation_period_end=pd.Timestamp(now, unit="s")
    )
    fitter = BetaGeoFitter()
    fitter.params_ = pd.Series(dict(zip(["r", "alpha", "a", "b"], bgnbd, strict=True)))
    alive = fitter.conditional_probability_alive(summary["frequency"], summary["recency"], summary["T"])
    return pd.Series(np.asarray(alive, dtype=float), index=summary.index)


def final_state(
    data: Path,
    r_thresholds=R_THRESHOLDS,
    m_thresholds=M_THRESHOLDS,
    load=load_facts,
    bgnbd: tuple[float, float, float, float] | None = None,
    p_alive_below: float = 0.3,
) -> pd.DataFrame:
    """Per customer with a purchase: orders, monetary, r, f, m, segment, churn, as of the last event
    (with ``bgnbd``, also ``p_alive``, a churn reason below ``p_alive_below``)."""
    facts = load(data)
    purchases = facts["purchases"]
    now = max(frame["time"].max() for frame in facts.values() if len(frame))
    per = purchases.groupby("customer_unique_id").agg(
        orders=("order_id", "size"), monetary=("value", "sum"), first=("time", "min"), last=("time", "max")
    )
    taken_off = facts["cancels"].groupby("customer_unique_id")["value"].sum()
    per["monetary"] = (per["monetary"] + taken_off.reindex(per.index).fillna(0.0)).round(2)
    recency = (now - per["last"]) / DAY
    per["r"], per["f"], per["m"] = _scores(
        recency.to_numpy(), per["orders"].to_numpy(), per["monetary"].to_numpy(), r_thresholds, m_thresholds
    )
    per["segment"] = TABLE[per["r"] - 1, (per["f"] + per["m"] + 1) // 2 - 1]

    gap = ((per["last"] - per["first"]) / DAY / (per["orders"] - 1)).where(per["orders"] > 1)
    gap = gap.where(gap > 0, DEFAULT_GAP_DAYS)
    reviews = facts["reviews"].assign(event_id=lambda f: f["review_id"] + ":" + f["order_id"])
    low_review = _latest(reviews, "event_id", "review_score").reindex(per.index) <= 2
    late = _latest(facts["deliveries"], "order_id", "late").reindex(per.index).fillna(False).astype(bool)
    at_risk = (recency >= gap) | low_review | late
    if bgnbd is not None:
        per["p_alive"] = p_alive(purchases, now, bgnbd).reindex(per.index)
        at_risk |= per["p_alive"] < p_alive_below
    per["churn"] = np.where(recency >= 2 * gap, "churned", np.where(at_risk, "at_risk", "active"))
    return per


def transitions(data: Path, tick_seconds: int = 86_400, load=load_facts) -> pd.DataFrame:
    """Every segment change: customer, previous, segment, cause, time (epoch seconds)."""
    facts = load(data)
    times = pd.concat([frame["time"] for frame in facts.values()])
    start, end = times.min(), times.max()
    step = float(tick_seconds)
    ticks = np.arange(np.ceil(start / step) * step, end + 1e-9, step)
    ticks = np.append(ticks, end)  # the final tick of the replay, at its last event

    # The customer's clock moves with the orders topic: purchases, deliveries, cancellations, ticks.
    events = pd.concat(
        [
            facts["purchases"].assign(rank=1, cause="purchase"),
            facts["deliveries"].assign(rank=2, cause="delivery", value=0.0),
            facts["cancels"].assign(rank=3, cause="cancel"),  # value: what it takes off monetary
        ]
    )
    rows = []
    for customer, own in events.groupby("customer_unique_id"):
        bought = own[own["cause"] == "purchase"]
        if bought.empty:
            continue
        own_ticks = ticks[ticks >= bought["time"].min()]
        points = pd.concat(
            [
                own[["time", "rank", "order_id", "cause", "value"]],
                pd.DataFrame({"time": own_ticks, "rank": 0, "order_id": "", "cause": "time", "value": 0.0}),
            ]
        ).sort_values(["time", "rank", "order_id"], kind="mergesort")
        is_purchase = (points["cause"] == "purchase").to_numpy()
        when = points["time"].to_numpy()
        orders = np.cumsum(is_purchase)
        monetary = np.round(np.cumsum(points["value"].to_numpy()), 2)
        last = np.maximum.accumulate(np.where(is_purchase, when, -np.inf))
        valid = orders > 0
        r, f, m = _scores((when - last) / DAY, orders, monetary)
        segment = np.where(valid, TABLE[np.clip(r, 1, 5) - 1, (f + m + 1) // 2 - 1], "")
        previous = np.concatenate([[""], segment[:-1]])
        for i in np.flatnonzero(segment != previous):
            rows.append((customer, previous[i], segment[i], points["cause"].iloc[i], float(when[i])))
    return pd.DataFrame(rows, columns=["customer_unique_id", "previous", "segment", "cause", "time"])
