"""The fold as plain code: records in, working profiles and change events out, no Redis."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta

from segstream.schemas import ClockTick, Item, OrderPlaced, ReviewPosted
from segstream.scoring import ChurnRules, RfmScorer
from segstream.scripts import lua
from streams.fold import Fold, Working
from streams.profile import Profile
from streams.protocol import WriteHeader

T0 = datetime(2017, 3, 1, tzinfo=UTC)
DAY = 86_400.0


def _order(day: float, n: int = 1) -> OrderPlaced:
    return OrderPlaced(
        event_id=f"olist:placed:o{n}", event_time=T0 + timedelta(days=day), order_id=f"o{n}",
        customer_unique_id="u", customer_id=f"c{n}", zip_prefix="01000", city="sao paulo", state="SP",
        items=[Item(product_id="p1", category="toys", price=50.0, freight=10.0, seller_id="s1")],
        payment_total=60.0, payment_types=["boleto"], installments=1, payment_source="payments",
    )  # fmt: skip


def _review(day: float, score: int) -> ReviewPosted:
    return ReviewPosted(
        event_id=f"olist:review:r{day}:o1", event_time=T0 + timedelta(days=day), order_id="o1",
        customer_unique_id="u", review_id=f"r{day}", score=score, created_time=T0 + timedelta(days=day),
        comment_present=False, comment_length=0,
    )  # fmt: skip


def _tick(day: float, final: bool = False) -> ClockTick:
    return ClockTick(
        event_id=f"tick:{day}", event_time=T0 + timedelta(days=day), replay_id="r", run_id="run",
        topic="orders", partition=0, final=final,
    )  # fmt: skip


def _churn(state: Working) -> list[tuple]:
    payloads = state.churn_changes[2::3]  # (previous, new, payload) per change
    return [(e["previous_status"], e["status"], e["cause"], e["event_time"]) for e in map(json.loads, payloads)]


def test_a_review_read_before_the_purchase_acts_at_its_own_time() -> None:
    """The reviews topic drained first: the 1-star review (7 days after the purchase) is held,
    and the purchase's own churn status does not see it; it moves the customer at its own time."""
    fold = Fold(RfmScorer(), ChurnRules())
    work = {"u": Working(Profile("u"), None, set())}
    fold.fold([_review(7.5, 1)], 0.0, False, work, {}, None)  # the reviews agent: held
    assert work["u"].profile.held == [[(T0 + timedelta(days=7.5)).timestamp(), "olist:review:r7.5:o1", 1]]
    assert work["u"].due == math.nextafter((T0 + timedelta(days=7.5)).timestamp(), math.inf)  # just after it
    assert work["u"].profile.reviews == 0  # not in effect yet

    orders = [_tick(0), _order(0.25), *(_tick(day) for day in range(1, 10))]
    fold.fold(orders, 0.0, True, work, {"u": work["u"].due}, None)
    state = work["u"]
    assert state.profile.reviews == 1 and state.profile.held == []
    assert _churn(state) == [
        ("", "active", "purchase", "2017-03-01T06:00:00Z"),
        ("active", "at_risk", "review", "2017-03-08T12:00:00Z"),  # the review's own time, not a tick's
    ]


def test_a_review_at_the_last_instant_is_applied_by_the_final_tick() -> None:
    fold = Fold(RfmScorer(), ChurnRules())
    work = {"u": Working(Profile("u"), None, set())}
    fold.fold([_tick(0), _order(0.5)], 0.0, True, work, {}, None)
    fold.fold([_review(3.0, 2)], 0.0, False, work, {}, None)
    due = {"u": work["u"].due}
    fold.fold([_tick(3.0)], 0.0, True, work, due, None)  # a tick at the review's very instant: not yet
    assert work["u"].profile.held and work["u"].profile.reviews == 0
    fold.fold([_tick(3.0, final=True)], 0.0, True, work, {"u": work["u"].due}, None)  # the end: nothing follows
    assert not work["u"].profile.held and work["u"].profile.last_review_score == 2


def test_split_checkout_orders_are_one_purchase_day() -> None:
    fold = Fold(RfmScorer(), ChurnRules())
    work = {"u": Working(Profile("u"), None, set())}
    split = _order(0.5, 2).model_copy(update={"event_time": T0 + timedelta(days=0.5, seconds=5)})
    fold.fold([_tick(0), _order(0.5), split, _tick(1), _tick(2)], 0.0, True, work, {}, None)
    profile = work["u"].profile
    assert profile.orders == 2 and profile.mean_gap_days is None and profile.churn == "active"


def test_the_write_scripts_header_is_the_protocols() -> None:
    source = lua("streams", "write.lua")
    table = re.search(r"local HEADER = \{(.*?)\}", source, re.S).group(1)
    assert re.findall(r"'(\w+)'", table) == WriteHeader.names()
