"""The correctness oracle: docs/definitions.md computed in batch with pandas, from the raw CSVs.

Independent of segstream's loader and streaming code on purpose: it reads the Olist files
itself and computes, for a history replayed up to its last event, each customer's final R/F/M,
segment and churn status, and every segment transition the stream must publish.
"""

from __future__ import annotations

from collections import Counter
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


def _gap_days(days: pd.Series) -> float:
    """Mean days between distinct purchase days (UTC), or the default before two of them."""
    distinct = np.unique(days.to_numpy())
    if len(distinct) < 2 or distinct[-1] == distinct[0]:
        return DEFAULT_GAP_DAYS
    return float(distinct[-1] - distinct[0]) / (len(distinct) - 1)


def _day(times: pd.Series | np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(times, dtype=float) / DAY).astype(np.int64)


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

    gap = purchases.assign(day=_day(purchases["time"])).groupby("customer_unique_id")["day"].agg(_gap_days)
    reviews = facts["reviews"].assign(event_id=lambda f: f["review_id"] + ":" + f["order_id"])
    low_review = _latest(reviews, "event_id", "review_score").reindex(per.index) <= 2
    late = _latest(facts["deliveries"], "order_id", "late").reindex(per.index).fillna(False).astype(bool)
    at_risk = (recency >= gap) | low_review | late
    if bgnbd is not None:
        per["p_alive"] = p_alive(purchases, now, bgnbd).reindex(per.index)
        at_risk |= per["p_alive"] < p_alive_below
    per["churn"] = np.where(recency >= 2 * gap, "churned", np.where(at_risk, "at_risk", "active"))
    return per


def all_transitions(
    data: Path,
    tick_seconds: int = 86_400,
    load=load_facts,
    r_thresholds=R_THRESHOLDS,
    m_thresholds=M_THRESHOLDS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every segment change and every churn-status change, as a replay in event-time order gives them.

    Each customer's state is evaluated at each of their points in time: purchases, deliveries,
    cancellations and clock ticks (the orders topic), and reviews, each at its own event time; at
    one instant the ticks come first, then purchases, deliveries, cancellations, then reviews.
    Returns ``(segments, churn)``: customer, previous, segment, cause, time; and customer,
    previous, status, reasons (a tuple), cause, time (epoch seconds).
    """
    facts = load(data)
    times = pd.concat([frame["time"] for frame in facts.values() if len(frame)])
    start, end = times.min(), times.max()
    step = float(tick_seconds)
    ticks = np.arange(np.ceil(start / step) * step, end + 1e-9, step)
    ticks = np.append(ticks, end)  # the final tick of the replay, at its last event

    columns = ["time", "rank", "order_id", "cause", "value", "late", "score"]
    reviews = facts["reviews"]
    reviews = reviews.assign(
        rank=4, cause="review", value=0.0, late=np.nan, order_id=reviews["review_id"] + ":" + reviews["order_id"]
    )
    events = pd.concat(
        [
            facts["purchases"].assign(rank=1, cause="purchase", late=np.nan, score=np.nan),
            facts["deliveries"].assign(rank=2, cause="delivery", value=0.0, score=np.nan),
            facts["cancels"].assign(rank=3, cause="cancel", late=np.nan, score=np.nan),  # value: taken off monetary
            reviews.rename(columns={"review_score": "score"}),
        ]
    )
    segment_rows, churn_rows = [], []
    for customer, own in events.groupby("customer_unique_id"):
        bought = own[own["cause"] == "purchase"]
        if bought.empty:
            continue
        own_ticks = ticks[ticks >= min(own["time"].min(), bought["time"].min())]
        tick_rows = pd.DataFrame({"time": own_ticks, "rank": 0, "order_id": "", "cause": "time", "value": 0.0})
        points = pd.concat([own[columns], tick_rows.assign(late=np.nan, score=np.nan)])
        points = points.sort_values(["time", "rank", "order_id"], kind="mergesort")
        cause = points["cause"].to_numpy()
        when = points["time"].to_numpy(dtype=float)
        is_purchase = cause == "purchase"
        orders = np.cumsum(is_purchase)
        monetary = np.round(np.cumsum(points["value"].to_numpy(dtype=float)), 2)
        last = np.maximum.accumulate(np.where(is_purchase, when, -np.inf))
        days = _day(when)
        valid = orders > 0
        r, f, m = _scores((when - last) / DAY, orders, monetary, r_thresholds, m_thresholds)
        segment = np.where(valid, TABLE[np.clip(r, 1, 5) - 1, (f + m + 1) // 2 - 1], "")
        # latest review score and delivery lateness so far (points are in time order)
        score = pd.Series(points["score"].to_numpy(dtype=float)).ffill().to_numpy()
        # a delivery without an estimated date is not late (the profile keeps its None as not late)
        delivered_late = np.nan_to_num(points["late"].to_numpy(dtype=float), nan=0.0)
        late = pd.Series(np.where(cause == "delivery", delivered_late, np.nan)).ffill()
        late = late.fillna(0.0).to_numpy() > 0
        status, reasons = [], []
        seen_days: set[int] = set()
        for i in range(len(points)):
            if is_purchase[i]:
                seen_days.add(int(days[i]))
            if not valid[i]:
                status.append("")
                reasons.append(())
                continue
            distinct = sorted(seen_days)
            gap = (distinct[-1] - distinct[0]) / (len(distinct) - 1) if len(distinct) > 1 else 0.0
            gap = gap if gap > 0 else DEFAULT_GAP_DAYS
            recency = (when[i] - last[i]) / DAY
            why = []
            if recency >= gap:
                why.append("recency")
            if score[i] <= 2:
                why.append("low_review")
            if late[i]:
                why.append("late_delivery")
            status.append("churned" if recency >= 2 * gap else ("at_risk" if why else "active"))
            reasons.append(tuple(why))
        previous = np.concatenate([[""], segment[:-1]])
        for i in np.flatnonzero(segment != previous):
            segment_rows.append((customer, previous[i], segment[i], cause[i], float(when[i])))
        before = ""
        for i, now in enumerate(status):
            if now != before:
                churn_rows.append((customer, before, now, reasons[i], cause[i], float(when[i])))
            before = now
    return (
        pd.DataFrame(segment_rows, columns=["customer_unique_id", "previous", "segment", "cause", "time"]),
        pd.DataFrame(churn_rows, columns=["customer_unique_id", "previous", "status", "reasons", "cause", "time"]),
    )


def transitions(data: Path, tick_seconds: int = 86_400, load=load_facts) -> pd.DataFrame:
    """Every segment change: customer, previous, segment, cause, time (epoch seconds)."""
    return all_transitions(data, tick_seconds, load)[0]


def read_models(data: Path, state: pd.DataFrame | None = None) -> dict[str, dict[str, int]]:
    """The analytics read models (docs/definitions.md, "Analytics read models") in batch from the
    Olist CSVs, as the hash fields the stream keeps (tab-joined parts, money in cents); ``state``:
    the final state (:func:`final_state`) whose segments they count."""
    facts = load_facts(data)
    customers = pd.read_csv(data / "olist_customers_dataset.csv", dtype=str)
    orders = pd.read_csv(data / "olist_orders_dataset.csv", dtype=str)
    items = pd.read_csv(data / "olist_order_items_dataset.csv", dtype=str)
    products = pd.read_csv(data / "olist_products_dataset.csv", dtype=str)
    names = data / "product_category_name_translation.csv"
    english = {}
    if names.exists():
        table = pd.read_csv(names, dtype=str, encoding="utf-8-sig")
        english = dict(zip(table["product_category_name"], table["product_category_name_english"], strict=True))
    category = products.set_index("product_id")["product_category_name"]
    items["category"] = items["product_id"].map(category).map(lambda c: english.get(c, c) if isinstance(c, str) else c)
    where = orders.merge(customers, on="customer_id").set_index("order_id")["customer_state"]

    bought = facts["purchases"].copy()
    bought["cents"] = (bought["value"] * 100).round().astype(int)
    stamp = pd.to_datetime(bought["time"], unit="s")
    bought["weekday"], bought["hour"] = stamp.dt.day_of_week, stamp.dt.hour
    bought["day"], bought["month"] = stamp.dt.strftime("%Y-%m-%d"), stamp.dt.strftime("%Y-%m")
    bought["state"] = bought["order_id"].map(where)
    out: dict[str, Counter] = {name: Counter() for name in ("weekday_hour", "geography", "daily", "cohorts")}
    for model, columns in (("weekday_hour", ["weekday", "hour"]), ("geography", ["state"]), ("daily", ["day"])):
        for key, group in bought.groupby(columns):
            label = "\t".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
            out[model][f"{label}\torders"] += len(group)
            out[model][f"{label}\trevenue"] += int(group["cents"].sum())

    index = stamp.dt.year * 12 + stamp.dt.month - 1
    first = index.groupby(bought["customer_unique_id"]).transform("min")
    bought["cohort"] = bought["customer_unique_id"].map(bought.groupby("customer_unique_id")["month"].min())
    bought["since"] = index - first
    for cohort, n in bought.groupby("cohort")["customer_unique_id"].nunique().items():
        out["cohorts"][f"{cohort}\tcustomers"] = n
    for (cohort, since), group in bought.groupby(["cohort", "since"]):
        out["cohorts"][f"{cohort}\t{since}\tactive"] = group["customer_unique_id"].nunique()
        out["cohorts"][f"{cohort}\t{since}\trevenue"] = int(group["cents"].sum())

    # the customer's state is their latest purchase's; the segment is the final one
    state = final_state(data) if state is None else state
    latest = (
        bought.sort_values(["time"]).drop_duplicates("customer_unique_id", keep="last").set_index("customer_unique_id")
    )
    for customer, row in latest.iterrows():
        out["geography"][f"{row['state']}\tcustomers"] += 1
        out["geography"][f"{row['state']}\tsegment\t{state.loc[customer, 'segment']}"] += 1
    out["segment_revenue"] = Counter()
    bought["segment"] = bought["customer_unique_id"].map(state["segment"])
    for (month, segment), group in bought.groupby(["month", "segment"]):
        out["segment_revenue"][f"{month}\t{segment}"] = int(group["cents"].sum())

    kept = items[items["order_id"].isin(set(bought["order_id"])) & items["category"].notna()]
    kept = kept[kept["category"] != "unknown"].merge(bought[["order_id", "customer_unique_id", "month"]])
    for model, by in (("basket_orders", ["order_id"]), ("basket_months", ["customer_unique_id", "month"])):
        counts = out[model] = Counter()
        for _key, group in kept.groupby(by):
            basket = sorted(set(group["category"]))
            counts["baskets"] += 1
            for a in basket:
                counts[f"item\t{a}"] += 1
            for i, a in enumerate(basket):
                for b in basket[i + 1 :]:
                    counts[f"pair\t{a}\t{b}"] += 1
    return {name: {k: v for k, v in counts.items() if v} for name, counts in out.items()}


def uplift_table(data: Path, window_days: int, cutoff: float) -> pd.DataFrame:
    """The uplift model's training table (docs/definitions.md, Uplift) from the CSVs, in pandas: per
    send of campaigns.csv whose window closed by ``cutoff``, the features from the purchase days
    before the send's day, whether it was treated, and whether a purchase day followed within
    ``window_days`` days. Sorted by campaign and customer."""
    sends = pd.read_csv(data / "campaigns.csv", dtype=str)
    sends["send_day"] = (_seconds(sends["sent_at"]) // DAY).astype("int64")
    sends = sends[(sends["send_day"] + window_days + 1) * DAY <= cutoff]
    purchases = load_facts(data)["purchases"]
    purchases = purchases.assign(day=(purchases["time"] // DAY).astype("int64"))
    days = purchases.groupby(["customer_unique_id", "day"], as_index=False)["value"].sum()
    pairs = sends[["campaign_id", "customer_unique_id", "send_day", "group"]].merge(days, how="left")
    before = pairs[pairs["day"] < pairs["send_day"]]
    features = before.groupby(["campaign_id", "customer_unique_id"]).agg(
        last=("day", "max"), first=("day", "min"), purchase_days=("day", "nunique"), monetary=("value", "sum")
    )
    after = pairs[(pairs["day"] > pairs["send_day"]) & (pairs["day"] <= pairs["send_day"] + window_days)]
    responded = after.groupby(["campaign_id", "customer_unique_id"]).size() > 0
    table = sends.set_index(["campaign_id", "customer_unique_id"])[["send_day", "group"]].join(features)
    table["days_since_last"] = (table["send_day"] - table["last"]).fillna(10_000.0)
    table["tenure_days"] = (table["send_day"] - table["first"]).fillna(0.0)
    table["purchase_days"] = table["purchase_days"].fillna(0.0)
    table["monetary"] = table["monetary"].fillna(0.0).round(2)
    table["treated"] = table["group"] == "treatment"
    table["responded"] = responded.reindex(table.index, fill_value=False)
    columns = ["send_day", "days_since_last", "purchase_days", "monetary", "tenure_days", "treated", "responded"]
    return table[columns].sort_index().reset_index()
