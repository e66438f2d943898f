"""Event schemas: wire round trip, validation at the boundary, exported JSON Schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from replay.history import PLACED, History, LoaderError, _distinct_rows
from replay.olist import load_olist
from replay.sources import load_source
from replay.synth import SynthConfig, synthesize_online_retail
from segstream.schemas import (
    ChurnChanged,
    ClockTick,
    OrderDelivered,
    ReviewPosted,
    SegmentChanged,
    decode_event,
    decode_output,
    encode_event,
    event_json_schema,
    flat_encoder,
    wire_time,
)
from tests.conftest import EDGE, REAL_SAMPLE

DOCS = Path(__file__).parents[1] / "docs"


def test_every_loaded_event_survives_the_wire() -> None:
    events = list(load_olist(EDGE).events())
    assert {e.event_type for e in events} == {"order_placed", "order_delivered", "order_canceled", "review_posted"}
    for event in events:
        wire = encode_event(event)
        assert json.loads(wire)["event_type"] == event.event_type
        assert decode_event(wire) == event


def _wire_of(history: History) -> tuple[list[bytes], list[bytes]]:
    """What the replay sends (History.encoder) and what pydantic makes of the built events."""
    timeline = history.timeline(tick_seconds=None)
    entries = list(zip(timeline.kind.tolist(), timeline.row.tolist(), strict=True))
    encode, build = history.encoder(), history.builder()
    return [encode(k, r) for k, r in entries], [encode_event(build(k, r)) for k, r in entries]


TRANSACTIONS = Path(__file__).parent / "fixtures" / "transactions"


@pytest.mark.parametrize(
    "load",
    [
        lambda _: load_olist(EDGE),
        lambda _: load_olist(REAL_SAMPLE),
        lambda _: load_source("online-retail", TRANSACTIONS / "online_retail.csv"),
        lambda _: load_source("online-retail", TRANSACTIONS / "online_retail_ii.csv"),
        lambda _: load_source("transactions", TRANSACTIONS / "cdnow.txt", TRANSACTIONS / "cdnow.toml"),
        lambda tmp: (
            synthesize_online_retail(SynthConfig(orders=300, seed=3), tmp)
            and load_source("online-retail", tmp / "online_retail.csv")
        ),
    ],
    ids=["olist-edge", "olist-real-1000", "online-retail", "online-retail-ii", "cdnow", "synth-online-retail"],
)
def test_the_replay_sends_exactly_what_pydantic_encodes(load, tmp_path: Path) -> None:
    sent, expected = _wire_of(load(tmp_path))
    assert len(sent) > 3 and sent == expected
    assert any(json.loads(payload).get("items") for payload in sent)


def test_the_encoder_with_strings_that_look_like_json_and_signed_zeros() -> None:
    history = load_olist(EDGE)
    placed, items = history.placed.copy(), history.items.copy()
    # the spliced key spelled inside values, quotes, backslashes, control characters, non-ASCII
    placed.loc[0, "city"] = '"items":[]'
    placed.loc[1, "city"] = 'x"items":[]'
    items.loc[0, "product_id"] = 'p"items":[]\\\u00e9\x01'  # no tab or line break: the schema refuses them
    items["category"] = items["category"].astype(object)
    items.loc[1, "category"] = "cama_mesa_banho \u2603"
    # the same item twice, but for the sign of a zero freight: distinct on the wire
    items.loc[3] = items.loc[2]
    items.loc[2, "freight"], items.loc[3, "freight"] = 0.0, -0.0
    tricky = History("olist", placed, items, history.delivered, history.canceled, history.reviews, history.report)
    sent, expected = _wire_of(tricky)
    assert sent == expected
    cities = {decode_event(payload).city for payload in sent if b'"order_placed"' in payload}
    assert {'"items":[]', 'x"items":[]'} <= cities
    assert any(item.product_id.startswith('p"items"') for p in sent for item in getattr(decode_event(p), "items", []))
    assert any(b'"freight":-0.0' in payload for payload in sent)


def test_the_encoder_refuses_a_bad_item_before_sending_anything() -> None:
    history = load_olist(EDGE)
    items = history.items.copy()
    items.loc[0, "price"] = -1.0
    bad = History("olist", history.placed, items, history.delivered, history.canceled, history.reviews, history.report)
    row = int(bad.placed.index[(bad.placed["item_start"] == 0) & (bad.placed["item_end"] > 0)][0])
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        bad.builder()(PLACED, row)
    with pytest.raises(LoaderError, match=r"(?s)olist: order line 0 .* not a valid item.*greater than or equal to 0"):
        bad.encoder()


def test_distinct_rows_number_like_groupby_also_past_int64() -> None:
    rng = np.random.default_rng(7)
    half = pd.DataFrame({name: rng.integers(0, 50_000, 20_000).astype(str) for name in "abcde"})  # 50k^5 > 2^63
    half["f"] = rng.choice([0.5, 1.25, np.nan], 20_000)
    frame = pd.concat([half, half.sample(frac=1.0, random_state=1)], ignore_index=True)
    codes, first = _distinct_rows(frame)
    expected = frame.groupby(list(frame.columns), sort=False, dropna=False).ngroup().to_numpy()
    assert codes.tolist() == expected.tolist()
    assert first.tolist() == np.unique(expected, return_index=True)[1].tolist()
    assert len(first) == 20_000


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


_text = st.text(min_size=1, max_size=12)  # any code point: quotes, backslashes, control characters, non-ASCII
_score = st.none() | st.integers(1, 5)
_cause = st.sampled_from(["purchase", "review", "delivery", "cancel", "time", "rescore"])
_moment = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
) | st.datetimes(timezones=st.sampled_from([timezone(timedelta(0)), timezone(timedelta(hours=-3))]))


@given(
    st.tuples(
        _text,
        _moment,
        _text,
        st.text(max_size=12),
        st.text(max_size=12),
        _cause,
        _score,
        _score,
        _score,
        st.none() | st.integers(-(2**40), 2**40),
        st.text(max_size=8),
        st.none() | _text,
    )
)
def test_flat_encoder_writes_what_the_segment_model_writes(values: tuple) -> None:
    _assert_flat_encoder_matches(SegmentChanged, values)


@given(
    st.tuples(
        _text,
        _moment,
        _text,
        st.text(max_size=12),
        st.sampled_from(["active", "at_risk", "churned", ""]),
        st.lists(st.text(max_size=8), max_size=4),
        _cause,
        st.none() | _text,
    )
)
def test_flat_encoder_writes_what_the_churn_model_writes(values: tuple) -> None:
    _assert_flat_encoder_matches(ChurnChanged, values)


def _assert_flat_encoder_matches(model_class: type, values: tuple) -> None:
    """The encoder's bytes for ``values`` (every field but the constant ones) are the model's."""
    names = [n for n in model_class.model_fields if n not in ("schema_version", "event_type")]
    model = model_class(**dict(zip(names, values, strict=True)))
    payload = flat_encoder(model_class)(*values)
    assert payload == encode_event(model)
    assert decode_output(payload) == model


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_wire_time_is_the_wire_form_of_a_utc_time(seconds: float) -> None:
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    tick = ClockTick(event_id="t", event_time=moment, replay_id="r", run_id="x", topic="o", partition=0)
    assert json.loads(encode_event(tick))["event_time"] == wire_time(seconds)


def test_flat_encoder_refuses_what_it_cannot_encode() -> None:
    encode = flat_encoder(ChurnChanged)
    with pytest.raises(TypeError, match="takes 8 positional arguments"):
        encode("churn:u:1", "2017-01-01T00:00:00Z", "u", "", "active", ["recency"], "time", None, "extra")
    with pytest.raises(TypeError):
        encode(1.5, "2017-01-01T00:00:00Z", "u", "", "active", [], "time", None)  # a float id
    with pytest.raises(TypeError, match="UTC offset"):
        encode("c", datetime(2017, 1, 1), "u", "", "active", [], "time", None)  # naive time


def _breaking(old: dict, new: dict) -> list[str]:
    """What in ``new`` would break a consumer written against ``old`` (the published output schema):
    an event or field removed, a field retyped, a required field made optional, a new value in a
    closed set (``cause``, ``status``: an old consumer's validator refuses it). New events, new
    optional fields and values no longer sent are compatible."""
    problems = []
    for name, before in old["$defs"].items():
        after = new["$defs"].get(name)
        if after is None:
            problems.append(f"{name}: removed")
            continue
        for field_name, spec in before["properties"].items():
            now = after["properties"].get(field_name)
            if now is None:
                problems.append(f"{name}.{field_name}: removed")
                continue
            shape = {k: v for k, v in spec.items() if k not in ("title", "description", "default", "enum")}
            if shape != {k: v for k, v in now.items() if k not in ("title", "description", "default", "enum")}:
                problems.append(f"{name}.{field_name}: type changed")
            if "enum" in spec and not set(now.get("enum", ())) <= set(spec["enum"]):
                problems.append(f"{name}.{field_name}: a value added")
        for field_name in set(before.get("required", [])) - set(after.get("required", [])):
            problems.append(f"{name}.{field_name}: no longer required")
    return problems


def test_the_published_output_events_stay_compatible_with_version_1_consumers() -> None:
    v1 = json.loads((Path(__file__).parent / "fixtures" / "output-schema-v1.json").read_text())
    assert {"SegmentChanged", "ChurnChanged", "DeadLetter"} <= set(v1["$defs"])
    assert _breaking(v1, event_json_schema()["output"]) == []
    # the check itself: each kind of breaking change is caught, a compatible one is not
    changed = json.loads(json.dumps(v1))
    segment = changed["$defs"]["SegmentChanged"]
    del segment["properties"]["cause"]
    segment["properties"]["r"] = {"type": "string"}
    segment["required"].remove("segment")
    churn = changed["$defs"]["ChurnChanged"]["properties"]
    churn["status"]["enum"].append("dormant")
    churn["cause"]["enum"].remove("rescore")  # no longer sent: old consumers still accept all that is
    churn["note"] = {"type": "string"}  # new, optional: fine
    assert sorted(_breaking(v1, changed)) == [
        "ChurnChanged.status: a value added",
        "SegmentChanged.cause: removed",
        "SegmentChanged.r: type changed",
        "SegmentChanged.segment: no longer required",
    ]
