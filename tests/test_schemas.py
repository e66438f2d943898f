"""Event schemas: wire round trip, validation at the boundary, exported JSON Schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from replay.olist import load_olist
from segstream.schemas import (
    ClockTick,
    OrderDelivered,
    ReviewPosted,
    decode_event,
    encode_event,
    event_json_schema,
)
from tests.conftest import EDGE

DOCS = Path(__file__).parents[1] / "docs"


def test_every_loaded_event_survives_the_wire() -> None:
    events = list(load_olist(EDGE).events())
    assert {e.event_type for e in events} == {"order_placed", "order_delivered", "order_canceled", "review_posted"}
    for event in events:
        wire = encode_event(event)
        assert json.loads(wire)["event_type"] == event.event_type
        assert decode_event(wire) == event


def test_tick_round_trip() -> None:
    tick = ClockTick(
        event_id="end:x:t:0", event_time=datetime(2018, 1, 1, tzinfo=UTC), replay_id="x", topic="t",
        partition=0, final=True, expected_events=12,
    )  # fmt: skip
    assert decode_event(encode_event(tick)) == tick


@pytest.mark.parametrize(
    "change, message",
    [
        ({"event_time": "2017-01-01T00:00:00"}, "timezone"),  # naive times are refused
        ({"score": 6}, "less than or equal to 5"),
        ({"customer_unique_id": ""}, "at least 1 character"),
        ({"event_type": "nope"}, "does not match any of the expected tags"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_events_are_refused(change: dict, message: str) -> None:
    good = ReviewPosted(
        event_id="olist:review:r:o", event_time=datetime(2017, 1, 2, tzinfo=UTC), order_id="o",
        customer_unique_id="u", review_id="r", score=5, created_time=datetime(2017, 1, 1, tzinfo=UTC),
        comment_present=False, comment_length=0,
    )  # fmt: skip
    payload = {**json.loads(encode_event(good)), **change}
    with pytest.raises(ValidationError, match=message):
        decode_event(json.dumps(payload))


def test_undecodable_bytes_are_refused() -> None:
    with pytest.raises(ValidationError):
        decode_event(b"\xff not json")


def test_delivered_late_may_be_unknown() -> None:
    event = OrderDelivered(
        event_id="x", event_time=datetime(2017, 1, 2, tzinfo=UTC), order_id="o", customer_unique_id="u", late=None
    )
    assert decode_event(encode_event(event)).late is None


def test_exported_json_schema_is_current() -> None:
    exported = json.loads((DOCS / "events.schema.json").read_text())
    assert exported == event_json_schema(), "regenerate with: segstream schemas > docs/events.schema.json"
