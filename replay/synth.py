"""Synthetic Olist: any number of orders in exactly the Kaggle files' names and columns.

Deterministic per seed, vectorised with numpy (a million orders in well under two minutes), and
shaped like the real data where it matters to segstream:

- about 3% of people buy more than once (``repeat_share``); each order has its own customer_id;
- heavy-tailed spend (log-normal product prices, several items now and then, split payments);
- review scores skewed to 5 with a bump at 1, lower after a late delivery; ~8% late deliveries;
- SP-heavy states, categories from the real translation table, volume growing over 2016-2018;
- the real files' quirks at small rates: multi-line quoted comments, review_ids shared by two
  orders, orders with two reviews, unavailable orders without items, an order without payments,
  delivered orders without a delivery date, products without a category.

With ``campaigns`` > 0 it also plants marketing campaigns whose effect is known (``campaigns.csv``
beside the Olist files; :func:`plant_campaigns` says how).

The loader reads the output exactly like the real files (tests check both).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from replay.campaigns import CAMPAIGN_FILE
from replay.olist import OLIST_COLUMNS, OLIST_FILES

__all__ = ["PLANTED", "SynthConfig", "plant_campaigns", "planted_type", "synthesize"]

START = np.datetime64("2016-09-04T00:00:00", "s")
END = np.datetime64("2018-10-17T00:00:00", "s")
DAY = 86_400

# Share of customers by state, from the Olist customers file.
STATES = {
    "SP": 0.420,
    "RJ": 0.129,
    "MG": 0.117,
    "RS": 0.055,
    "PR": 0.051,
    "SC": 0.037,
    "BA": 0.034,
    "DF": 0.022,
    "ES": 0.020,
    "GO": 0.020,
    "PE": 0.017,
    "CE": 0.013,
    "PA": 0.010,
    "MT": 0.009,
    "MA": 0.008,
    "MS": 0.007,
    "PB": 0.005,
    "PI": 0.005,
    "RN": 0.005,
    "AL": 0.004,
    "SE": 0.003,
    "TO": 0.003,
    "RO": 0.003,
    "AM": 0.002,
    "AC": 0.001,
    "AP": 0.001,
    "RR": 0.001,
}
CAPITALS = {
    "SP": "sao paulo",
    "RJ": "rio de janeiro",
    "MG": "belo horizonte",
    "RS": "porto alegre",
    "PR": "curitiba",
    "SC": "florianopolis",
    "BA": "salvador",
    "DF": "brasilia",
    "ES": "vitoria",
    "GO": "goiania",
    "PE": "recife",
    "CE": "fortaleza",
    "PA": "belem",
    "MT": "cuiaba",
    "MA": "sao luis",
    "MS": "campo grande",
    "PB": "joao pessoa",
    "PI": "teresina",
    "RN": "natal",
    "AL": "maceio",
    "SE": "aracaju",
    "TO": "palmas",
    "RO": "porto velho",
    "AM": "manaus",
    "AC": "rio branco",
    "AP": "macapa",
    "RR": "boa vista",
}
OTHER_CITIES = ["campinas", "guarulhos", "santo andre", "niteroi", "londrina", "juiz de fora", "santos", "sorocaba"]
STATUSES = {
    "delivered": 0.9702,
    "shipped": 0.0111,
    "canceled": 0.0063,
    "unavailable": 0.0061,
    "invoiced": 0.0032,
    "processing": 0.0030,
    "created": 0.0001,
}
SCORES = np.array([1, 2, 3, 4, 5])
SCORE_ON_TIME = np.array([0.09, 0.028, 0.078, 0.20, 0.604])
SCORE_LATE = np.array([0.45, 0.10, 0.12, 0.13, 0.20])
PAYMENT_TYPES = np.array(["credit_card", "boleto", "voucher", "debit_card"])
PAYMENT_SHARES = np.array([0.74, 0.19, 0.055, 0.015])
COMMENTS = [
    "Produto chegou antes do prazo, recomendo.",
    "Muito bom",
    "Nao recebi o produto ate agora.",
    'Veio diferente do anunciado, "tamanho errado".',
    "Otimo vendedor.\nEntrega rapida, produto de qualidade!",
    "Demorou muito para chegar;\r\nembalagem danificada, mas o produto funciona.",
    "Gostei, chegou certinho",
    "Comprei dois, chegou apenas um.\nAguardo retorno.",
]
TITLES = ["Recomendo", "Otimo", "Nao recebi", "Bom", "Pessimo"]


@dataclass(frozen=True)
class SynthConfig:
    orders: int
    seed: int = 0
    repeat_share: float = 0.03  # share of people with more than one order
    late_share: float = 0.08  # share of delivered orders that arrive after the estimated day
    campaigns: int = 0  # planted campaigns (campaigns.csv), 0: none
    campaign_reach: float = 0.3  # share of the customers who bought before a campaign that it picks

    def __post_init__(self) -> None:
        if self.orders < 1:
            raise ValueError(f"orders must be at least 1, not {self.orders}")
        if not 0 <= self.repeat_share < 1:
            raise ValueError(f"repeat_share must be in [0, 1), not {self.repeat_share}")
        if not 0 <= self.late_share < 1:
            raise ValueError(f"late_share must be in [0, 1), not {self.late_share}")
        if self.campaigns < 0 or not 0 < self.campaign_reach <= 1:
            raise ValueError(f"campaigns must be >= 0 and campaign_reach in (0, 1], not {self.campaigns}, "
                             f"{self.campaign_reach}")  # fmt: skip


def _hex_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.frombuffer(rng.bytes(16 * n).hex().encode(), dtype="S32").astype(str)


def _category_table() -> pd.DataFrame:
    path = resources.files("replay") / "data" / OLIST_FILES["categories"]
    with resources.as_file(path) as file:
        return pd.read_csv(file, dtype=str, encoding="utf-8-sig")


def synthesize(config: SynthConfig, out: str | Path) -> dict[str, int]:
    """Write a synthetic Olist history into ``out``; returns rows written per file."""
    rng = np.random.default_rng(config.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_orders = config.orders
    categories = _category_table()

    # --- products and sellers ------------------------------------------------------------------
    n_products = max(20, n_orders // 3)
    category_weight = 1.0 / np.arange(1, len(categories) + 1) ** 0.9
    category_weight /= category_weight.sum()
    product_category = rng.choice(categories["product_category_name"].to_numpy(), n_products, p=category_weight)
    product_category = np.where(rng.random(n_products) < 0.018, "", product_category)
    product_price = np.round(np.exp(rng.normal(4.3, 0.95, n_products)).clip(3.0, 6_700.0), 2)
    products = pd.DataFrame(
        {
            "product_id": _hex_ids(rng, n_products),
            "product_category_name": product_category,
            "product_name_lenght": rng.integers(5, 77, n_products),
            "product_description_lenght": rng.integers(4, 3993, n_products),
            "product_photos_qty": rng.integers(1, 8, n_products),
            "product_weight_g": rng.integers(50, 30_000, n_products),
            "product_length_cm": rng.integers(7, 106, n_products),
            "product_height_cm": rng.integers(2, 106, n_products),
            "product_width_cm": rng.integers(6, 119, n_products),
        }
    )
    n_sellers = max(5, n_orders // 32)
    state_names = np.array(list(STATES))
    state_p = np.array(list(STATES.values()))
    state_p /= state_p.sum()
    seller_state = rng.choice(state_names, n_sellers, p=state_p)
    sellers = pd.DataFrame(
        {
            "seller_id": _hex_ids(rng, n_sellers),
            "seller_zip_code_prefix": [f"{z:05d}" for z in rng.integers(1000, 99_990, n_sellers)],
            "seller_city": [CAPITALS[s] for s in seller_state],
            "seller_state": seller_state,
        }
    )

    # --- people and their orders ---------------------------------------------------------------
    # Orders per person: 1, or for repeat buyers 2 + a geometric tail.
    n_people_guess = n_orders  # an upper bound: everyone buys at least once
    repeats = rng.random(n_people_guess) < config.repeat_share
    per_person = np.where(repeats, 1 + rng.geometric(0.62, n_people_guess), 1)
    cumulative = np.cumsum(per_person)
    n_people = int(np.searchsorted(cumulative, n_orders) + 1)
    per_person = per_person[:n_people]
    per_person[-1] -= cumulative[n_people - 1] - n_orders
    person = np.repeat(np.arange(n_people), per_person)
    rank_in_person = np.arange(n_orders) - np.repeat(np.cumsum(per_person) - per_person, per_person)

    people_state = rng.choice(state_names, n_people, p=state_p)
    capital = np.array([CAPITALS[s] for s in people_state])
    people_city = np.where(rng.random(n_people) < 0.75, capital, rng.choice(OTHER_CITIES, n_people))
    people_zip = np.char.zfill(rng.integers(1000, 99_990, n_people).astype(str), 5)
    people_id = _hex_ids(rng, n_people)

    # Volume grows over time: first purchases have a linearly increasing density.
    span = int((END - START) / np.timedelta64(1, "s")) - 60 * DAY
    first_offset = (np.sqrt(rng.random(n_people)) * span).astype("int64")
    gaps = rng.exponential(75 * DAY, n_orders).astype("int64") + DAY
    gaps[rank_in_person == 0] = 0
    # Cumulative gaps within each person; clipped so repeat purchases stay inside the window.
    group_start = np.cumsum(per_person) - per_person
    cumulative_gaps = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[group_start] - gaps[group_start], per_person)
    offset = np.minimum(first_offset[person] + cumulative_gaps, span + 55 * DAY - rng.integers(0, DAY, n_orders))
    purchase = START + offset.astype("timedelta64[s]")
    order_in_time = np.argsort(purchase, kind="stable")  # rows of the orders file by purchase time
    person, purchase = person[order_in_time], purchase[order_in_time]

    status = rng.choice(
        np.array(list(STATUSES)), n_orders, p=np.array(list(STATUSES.values())) / sum(STATUSES.values())
    )
    seconds = lambda values: values.astype("int64").astype("timedelta64[s]")  # noqa: E731
    approved = purchase + seconds(rng.exponential(10 * 3600, n_orders))
    carrier = approved + seconds(rng.exponential(2.5 * DAY, n_orders) + 3600)
    estimated_days = rng.integers(12, 40, n_orders)
    estimated = (purchase.astype("datetime64[D]") + estimated_days).astype("datetime64[s]")
    is_late = rng.random(n_orders) < config.late_share
    on_time_days = (rng.random(n_orders) * (estimated_days - 2) + 2).astype("int64")
    delivered_days = np.where(is_late, estimated_days + rng.integers(1, 25, n_orders), on_time_days)
    delivered = (purchase.astype("datetime64[D]") + delivered_days).astype("datetime64[s]") + seconds(
        rng.integers(8 * 3600, 21 * 3600, n_orders)
    )
    delivered = np.maximum(delivered, carrier + np.timedelta64(3600, "s"))
    has_carrier = np.isin(status, ["delivered", "shipped"])
    has_delivery = (status == "delivered") & (rng.random(n_orders) >= 0.0002)
    nat = np.datetime64("NaT", "s")
    order_ids = _hex_ids(rng, n_orders)
    customer_ids = _hex_ids(rng, n_orders)
    orders = pd.DataFrame(
        {
            "order_id": order_ids,
            "customer_id": customer_ids,
            "order_status": status,
            "order_purchase_timestamp": purchase,
            "order_approved_at": np.where(status == "created", nat, approved),
            "order_delivered_carrier_date": np.where(has_carrier, carrier, nat),
            "order_delivered_customer_date": np.where(has_delivery, delivered, nat),
            "order_estimated_delivery_date": estimated,
        }
    )
    customers = pd.DataFrame(
        {
            "customer_id": customer_ids,
            "customer_unique_id": people_id[person],
            "customer_zip_code_prefix": people_zip[person],
            "customer_city": people_city[person],
            "customer_state": people_state[person],
        }
    )

    # --- items -------------------------------------------------------------------------------
    n_items = rng.choice([1, 2, 3, 4, 6], n_orders, p=[0.90, 0.075, 0.015, 0.007, 0.003])
    n_items[status == "unavailable"] = 0
    item_order = np.repeat(np.arange(n_orders), n_items)
    item_number = np.arange(len(item_order)) - np.repeat(np.cumsum(n_items) - n_items, n_items) + 1
    popularity = 1.0 / np.arange(1, n_products + 1) ** 0.8
    product = rng.choice(n_products, len(item_order), p=popularity / popularity.sum())
    price = product_price[product]
    freight = np.round(np.exp(rng.normal(2.8, 0.55, len(item_order))).clip(0.0, 400.0), 2)
    items = pd.DataFrame(
        {
            "order_id": order_ids[item_order],
            "order_item_id": item_number,
            "product_id": products["product_id"].to_numpy()[product],
            "seller_id": sellers["seller_id"].to_numpy()[rng.integers(0, n_sellers, len(item_order))],
            "shipping_limit_date": purchase[item_order] + np.timedelta64(6 * DAY, "s"),
            "price": price,
            "freight_value": freight,
        }
    )

    # --- payments ----------------------------------------------------------------------------
    order_value = np.bincount(item_order, weights=price + freight, minlength=n_orders)
    no_items = n_items == 0
    order_value[no_items] = np.round(np.exp(rng.normal(4.3, 0.9, int(no_items.sum()))), 2)
    paid = rng.random(n_orders) >= 0.00002  # Olist has an order with no payment rows
    split = rng.random(n_orders) < 0.03  # a voucher first, the rest by card
    first_value = np.where(split, np.round(order_value * rng.uniform(0.1, 0.6, n_orders), 2), order_value)
    pay_type = rng.choice(PAYMENT_TYPES, n_orders, p=PAYMENT_SHARES)
    installments = np.where(pay_type == "credit_card", rng.choice([1, 2, 3, 4, 5, 6, 8, 10], n_orders), 1)
    payment_order = np.concatenate([np.flatnonzero(paid), np.flatnonzero(paid & split)])
    sequential = np.concatenate([np.ones(int(paid.sum()), "int64"), np.full(int((paid & split).sum()), 2)])
    values = np.concatenate([first_value[paid], np.round(order_value - first_value, 2)[paid & split]])
    types = np.concatenate(
        [np.where(split, "voucher", pay_type)[paid], np.full(int((paid & split).sum()), "credit_card")]
    )
    inst = np.concatenate([np.where(split, 1, installments)[paid], installments[paid & split]])
    payments = pd.DataFrame(
        {
            "order_id": order_ids[payment_order],
            "payment_sequential": sequential,
            "payment_type": types,
            "payment_installments": inst,
            "payment_value": values,
        }
    ).sort_values(["order_id", "payment_sequential"], kind="stable")

    # --- reviews -----------------------------------------------------------------------------
    reviewed = rng.random(n_orders) < np.where(status == "delivered", 0.995, 0.8)
    twice = reviewed & (rng.random(n_orders) < 0.005)  # some orders get a second review
    review_order = np.sort(np.concatenate([np.flatnonzero(reviewed), np.flatnonzero(twice)]), kind="stable")
    n_reviews = len(review_order)
    late_order = is_late & has_delivery
    score = np.where(
        late_order[review_order],
        rng.choice(SCORES, n_reviews, p=SCORE_LATE),
        rng.choice(SCORES, n_reviews, p=SCORE_ON_TIME),
    )
    basis = np.where(has_delivery, delivered, estimated)[review_order]
    created = (basis.astype("datetime64[D]") + 1).astype("datetime64[s]")
    created = np.maximum(created, (purchase[review_order].astype("datetime64[D]") + 1).astype("datetime64[s]"))
    answered = created + seconds(rng.exponential(2 * DAY, n_reviews) + 600)
    review_ids = _hex_ids(rng, n_reviews)
    shared = np.flatnonzero(rng.random(n_reviews) < 0.008)  # one review_id on two orders
    shared = shared[shared > 0]
    shared = shared[review_order[shared] != review_order[shared - 1]]  # never the same (review, order) twice
    review_ids[shared] = review_ids[shared - 1]
    has_message = rng.random(n_reviews) < 0.41
    message = np.where(has_message, rng.choice(np.array(COMMENTS), n_reviews), "")
    title = np.where(rng.random(n_reviews) < 0.12, rng.choice(np.array(TITLES), n_reviews), "")
    reviews = pd.DataFrame(
        {
            "review_id": review_ids,
            "order_id": order_ids[review_order],
            "review_score": score,
            "review_comment_title": title,
            "review_comment_message": message,
            "review_creation_date": created,
            "review_answer_timestamp": answered,
        }
    )

    if config.campaigns:
        sends, orders, customers, items, payments = plant_campaigns(
            rng, config, orders, customers, items, payments, products, sellers, order_value
        )
        sends.to_csv(out / CAMPAIGN_FILE, index=False, date_format="%Y-%m-%d %H:%M:%S")
    tables = {
        "customers": customers,
        "items": items,
        "payments": payments,
        "reviews": reviews,
        "orders": orders,
        "products": products,
        "sellers": sellers,
        "categories": categories,
    }
    written = {}
    for name, frame in tables.items():
        assert list(frame.columns) == OLIST_COLUMNS[name], name
        frame.to_csv(out / OLIST_FILES[name], index=False, date_format="%Y-%m-%d %H:%M:%S", float_format="%.2f")
        written[OLIST_FILES[name]] = len(frame)
    if config.campaigns:
        written[CAMPAIGN_FILE] = len(sends)
    return written


# ---- planted campaigns ------------------------------------------------------------------------------

CAMPAIGN_OFFERS = np.array(["10% off", "free shipping", "20% off the next order"])
# The planted response: P(a purchase in the 30 days after the send) for treatment and control,
# by what the customer looks like on the send's day (purchases before it only).
PLANTED = {
    # bought in the 30 days before: the message annoys them away from a purchase they would make
    "sleeping_dog": (0.03, 0.15),
    # two or more orders: buy anyway, message or not
    "sure_thing": (0.25, 0.25),
    # one order 30-180 days before, of 120 or more: buy mostly because of the message
    "persuadable": (0.30, 0.04),
    # everyone else: rarely buy either way
    "lost_cause": (0.02, 0.02),
}


def planted_type(days_since_last: np.ndarray, orders: np.ndarray, spent: np.ndarray) -> np.ndarray:
    """The planted response type of customers with a purchase before a send (see PLANTED).

    >>> days, orders = np.array([10, 60, 60, 60, 400]), np.array([1, 3, 1, 1, 1])
    >>> planted_type(days, orders, np.array([50, 50, 200, 50, 200])).tolist()
    ['sleeping_dog', 'sure_thing', 'persuadable', 'lost_cause', 'lost_cause']
    """
    kind = np.full(len(orders), "lost_cause", dtype="<U12")
    persuadable = (orders == 1) & (days_since_last >= 30) & (days_since_last <= 180) & (spent >= 120)
    kind[persuadable] = "persuadable"
    kind[(orders >= 2) & (days_since_last >= 30)] = "sure_thing"
    kind[days_since_last < 30] = "sleeping_dog"
    return kind


def plant_campaigns(
    rng: np.random.Generator,
    config: SynthConfig,
    orders: pd.DataFrame,
    customers: pd.DataFrame,
    items: pd.DataFrame,
    payments: pd.DataFrame,
    products: pd.DataFrame,
    sellers: pd.DataFrame,
    order_value: np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Campaigns whose effect is known, and the orders they cause; returns the sends and the tables
    with those orders added.

    ``config.campaigns`` campaigns, evenly spaced over the last 60% of the window (the last ends
    30 days before its end), each sent at 10:00 to a random ``campaign_reach`` of the people who
    bought before it, every one of them put in treatment or control with probability 1/2. Each
    customer's planted type (:func:`planted_type`, from their purchases before the send, including
    those earlier campaigns caused) sets their chance of a purchase in the 30 days after it, with
    and without the message (PLANTED): that purchase is added as a delivered order 1-29 days after
    the send. ``campaigns.csv`` has one row per send with the planted type beside it (the truth a
    backtest scores against; the loader does not read it).
    """
    person_of = dict(zip(customers["customer_id"], customers["customer_unique_id"], strict=True))
    bought = ~orders["order_status"].isin(["canceled", "unavailable"]).to_numpy()
    people = orders["customer_id"].map(person_of).to_numpy()[bought]
    when = orders["order_purchase_timestamp"].to_numpy("datetime64[s]")[bought]
    value = order_value[bought]
    first = START + 0.4 * (END - START)
    seconds = np.linspace(0, (END - np.timedelta64(30 * DAY, "s") - first) / np.timedelta64(1, "s"), config.campaigns)
    days = (first + seconds.astype("int64").astype("timedelta64[s]")).astype("datetime64[D]")
    moments = (days + np.timedelta64(10, "h")).astype("datetime64[s]")
    place = customers.drop_duplicates("customer_unique_id").set_index("customer_unique_id")
    sends, added = [], []
    for number, sent in enumerate(moments.tolist(), start=1):
        sent = np.datetime64(sent, "s")
        before = when < sent
        frame = pd.DataFrame({"person": people[before], "when": when[before], "value": value[before]})
        summary = frame.groupby("person").agg(last=("when", "max"), orders=("when", "size"), spent=("value", "sum"))
        picked = summary[rng.random(len(summary)) < config.campaign_reach]
        days = ((sent - picked["last"].to_numpy("datetime64[s]")) / np.timedelta64(1, "D")).astype(float)
        kind = planted_type(days, picked["orders"].to_numpy(), picked["spent"].to_numpy())
        treated = rng.random(len(picked)) < 0.5
        p_treated, p_control = (np.array([PLANTED[k][i] for k in kind]) for i in (0, 1))
        responds = rng.random(len(picked)) < np.where(treated, p_treated, p_control)
        campaign = f"c{number:02d}"
        sends.append(
            pd.DataFrame(
                {
                    "campaign_id": campaign,
                    "customer_unique_id": picked.index.to_numpy(),
                    "offer": CAMPAIGN_OFFERS[(number - 1) % len(CAMPAIGN_OFFERS)],
                    "sent_at": sent,
                    "group": np.where(treated, "treatment", "control"),
                    "planted": kind,
                }
            )
        )
        n = int(responds.sum())
        later = rng.integers(DAY, 29 * DAY, n).astype("timedelta64[s]")
        response = pd.DataFrame({"person": picked.index.to_numpy()[responds], "when": sent + later, "value": 0.0})
        product = rng.integers(0, len(products), n)
        response["product"] = product
        response["value"] = np.round(np.exp(rng.normal(4.3, 0.95, n)).clip(3.0, 6_700.0), 2)
        added.append(response)
        people = np.concatenate([people, response["person"].to_numpy()])
        when = np.concatenate([when, response["when"].to_numpy("datetime64[s]")])
        value = np.concatenate([value, response["value"].to_numpy()])
    extra = pd.concat(added, ignore_index=True)
    n = len(extra)
    order_ids, customer_ids = _hex_ids(rng, n), _hex_ids(rng, n)
    purchase = extra["when"].to_numpy("datetime64[s]")
    delivered = purchase + rng.integers(3 * DAY, 15 * DAY, n).astype("timedelta64[s]")
    new_orders = pd.DataFrame(
        {
            "order_id": order_ids,
            "customer_id": customer_ids,
            "order_status": "delivered",
            "order_purchase_timestamp": purchase,
            "order_approved_at": purchase + np.timedelta64(3600, "s"),
            "order_delivered_carrier_date": purchase + np.timedelta64(DAY, "s"),
            "order_delivered_customer_date": delivered,
            "order_estimated_delivery_date": (purchase.astype("datetime64[D]") + 20).astype("datetime64[s]"),
        }
    )
    where = place.loc[extra["person"]]
    new_customers = pd.DataFrame(
        {
            "customer_id": customer_ids,
            "customer_unique_id": extra["person"].to_numpy(),
            "customer_zip_code_prefix": where["customer_zip_code_prefix"].to_numpy(),
            "customer_city": where["customer_city"].to_numpy(),
            "customer_state": where["customer_state"].to_numpy(),
        }
    )
    freight = np.round(np.exp(rng.normal(2.8, 0.55, n)).clip(0.0, 400.0), 2)
    new_items = pd.DataFrame(
        {
            "order_id": order_ids,
            "order_item_id": 1,
            "product_id": products["product_id"].to_numpy()[extra["product"].to_numpy()],
            "seller_id": sellers["seller_id"].to_numpy()[rng.integers(0, len(sellers), n)],
            "shipping_limit_date": purchase + np.timedelta64(6 * DAY, "s"),
            "price": extra["value"].to_numpy(),
            "freight_value": freight,
        }
    )
    new_payments = pd.DataFrame(
        {
            "order_id": order_ids,
            "payment_sequential": 1,
            "payment_type": "credit_card",
            "payment_installments": 1,
            "payment_value": np.round(extra["value"].to_numpy() + freight, 2),
        }
    )
    orders = pd.concat([orders, new_orders], ignore_index=True).sort_values(
        "order_purchase_timestamp", kind="stable", ignore_index=True
    )
    return (
        pd.concat(sends, ignore_index=True),
        orders,
        pd.concat([customers, new_customers], ignore_index=True),
        pd.concat([items, new_items], ignore_index=True),
        pd.concat([payments, new_payments], ignore_index=True),
    )


# ---- the Online Retail layout ---------------------------------------------------------------------

ONLINE_RETAIL_FILE = "online_retail.csv"
RETAIL_START = np.datetime64("2010-12-01T08:00:00", "s")
RETAIL_DAYS = 373
COUNTRIES = np.array(["United Kingdom", "Germany", "France", "EIRE", "Spain", "Netherlands", "Belgium"])
COUNTRY_SHARES = np.array([0.89, 0.025, 0.022, 0.02, 0.015, 0.015, 0.013])


def synthesize_online_retail(config: SynthConfig, out: str | Path, lines_per_invoice: float = 20.0) -> dict[str, int]:
    """Write ``config.orders`` invoices in the UCI Online Retail layout (one row per invoice line).

    Shaped like the real file where it matters: most customers come back (a skewed number of
    invoices each), ~20 lines per invoice, about 2% of invoices canceled later by a ``C`` invoice
    of the same customer with the lines negated, ~1% guest invoices without a customer id, and a
    few duplicate lines and zero prices. Dates as the original (``12/1/2010 8:26``). Returns
    ``{file name: rows}``.
    """
    rng = np.random.default_rng(config.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = config.orders
    customers = max(1, n // 5)
    # invoices: event time ascending, numbers ascending; customers skewed (many come back)
    seconds = np.sort(rng.integers(0, RETAIL_DAYS * DAY, n))
    when = RETAIL_START + seconds.astype("timedelta64[s]")
    number = 536365 + np.arange(n)
    owner = np.minimum((rng.pareto(1.2, n) * customers / 8).astype(np.int64), customers - 1)
    customer_ids = (12346 + rng.permutation(customers))[owner].astype(str)
    customer_ids[rng.random(n) < 0.01] = ""  # guest checkouts
    country = rng.choice(COUNTRIES, size=customers, p=COUNTRY_SHARES / COUNTRY_SHARES.sum())[owner]
    # lines
    count = np.minimum(rng.geometric(1 / lines_per_invoice, n), 200)
    invoice = np.repeat(np.arange(n), count)
    products = 4000
    product = (products * rng.random(len(invoice)) ** 2).astype(np.int64)  # a few products sell most
    unit_price = np.round(np.exp(rng.normal(0.8, 0.9, products)), 2)[product]
    unit_price[rng.random(len(invoice)) < 0.001] = 0.0
    quantity = rng.geometric(0.2, len(invoice))
    lines = pd.DataFrame(
        {
            "InvoiceNo": number[invoice].astype(str),
            "StockCode": (10000 + product).astype(str),
            "Description": np.char.add("PRODUCT ", (10000 + product).astype(str)),
            "Quantity": quantity,
            "InvoiceDate": when[invoice],
            "UnitPrice": unit_price,
            "CustomerID": customer_ids[invoice],
            "Country": country[invoice],
        }
    )
    # cancellations: a later C invoice negating every line of ~2% of the customers' invoices
    canceled = (rng.random(n) < 0.02) & (customer_ids != "")
    back = lines[canceled[invoice]].copy()
    back["InvoiceNo"] = "C" + back["InvoiceNo"]
    back["Quantity"] = -back["Quantity"]
    delay = rng.integers(60, 30 * DAY, n).astype("timedelta64[s]")
    back["InvoiceDate"] = back["InvoiceDate"] + delay[invoice[canceled[invoice]]]
    duplicates = lines.iloc[np.flatnonzero(rng.random(len(lines)) < 0.002)]
    rows = pd.concat([lines, back, duplicates]).sort_values("InvoiceDate", kind="mergesort")
    stamps = pd.DatetimeIndex(rows["InvoiceDate"])
    rows["InvoiceDate"] = [
        f"{m}/{d}/{y} {h}:{mi:02d}"
        for m, d, y, h, mi in zip(stamps.month, stamps.day, stamps.year, stamps.hour, stamps.minute, strict=True)
    ]
    rows.to_csv(out / ONLINE_RETAIL_FILE, index=False)
    return {ONLINE_RETAIL_FILE: len(rows)}
