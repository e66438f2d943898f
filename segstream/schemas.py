"""The one schemas module: every event on segstream's topics, as pydantic v2 models.

Events travel as UTF-8 JSON. Each carries ``event_type`` (the discriminator), ``schema_version``,
a deterministic ``event_id`` (the same source row always gives the same id, so a consumer can
drop redeliveries and replay overlaps by id) and its ``event_time``. Times must carry a UTC offset
(naive times are rejected, so no consumer has to guess a zone).

Customer events are keyed on the wire by ``customer_unique_id``, the person; Olist's
``customer_id`` is per order and only travels as an attribute of :class:`OrderPlaced`.

:class:`ClockTick` carries the event-time clock to consumers when no customer event arrives;
see ``docs/events.md`` for its contract.

>>> placed = OrderPlaced(
...     event_id=make_event_id("olist", "placed", "o1"), event_time="2017-03-01T10:00:00Z",
...     order_id="o1", customer_unique_id="u1", customer_id="c1", zip_prefix="01001",
...     city="sao paulo", state="SP", payment_total=10.5, payment_types=["boleto"],
...     installments=1, payment_source="payments",
...     items=[Item(product_id="p1", category="toys", price=9.0, freight=1.5, seller_id="s1")])
>>> placed.event_id, placed.event_time.isoformat()
('olist:placed:o1', '2017-03-01T10:00:00+00:00')
>>> decode_event(encode_event(placed)) == placed
True
>>> kafka_timestamp_ms(placed.event_time)
1488362400000
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "SCHEMA_VERSION",
    "SENT_AT_HEADER",
    "UNKNOWN_CATEGORY",
    "AnyEvent",
    "CampaignSent",
    "ChurnChanged",
    "ClockTick",
    "CustomerEvent",
    "DeadLetter",
    "Item",
    "OrderCanceled",
    "OrderDelivered",
    "OrderPlaced",
    "OrderReturned",
    "OutputEvent",
    "ReviewPosted",
    "SegmentChanged",
    "decode_event",
    "decode_output",
    "encode_event",
    "event_digest",
    "flat_encoder",
    "kafka_timestamp_ms",
    "make_event_id",
    "wire_time",
]

SCHEMA_VERSION = 1
# Kafka header the replay puts on customer events: wall-clock send time in ms, for latency metrics.
SENT_AT_HEADER = "segstream-sent-at-ms"


def event_digest(event_id: str) -> bytes:
    """The 8 bytes (BLAKE2b-64) of an event id by which a profile recognises a redelivered event.

    A profile keeps these instead of the ids (8 bytes an event, not ~60). Two different events of
    one customer share a digest with probability about n²/2⁶⁵ for n events (1e-13 at 3,000), and
    only then would the second be taken for a redelivery.

    >>> event_digest("olist:placed:o1").hex()
    'db3779c7a8bf6c8d'
    """
    return hashlib.blake2b(event_id.encode(), digest_size=8).digest()


def make_event_id(source: str, kind: str, *parts: str) -> str:
    """A deterministic, readable event id built from the source row's natural key.

    >>> make_event_id("olist", "review", "r9", "o1")
    'olist:review:r9:o1'
    """
    return ":".join((source, kind, *parts))


def kafka_timestamp_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, the Kafka record timestamp of an event."""
    return int(moment.timestamp() * 1000)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(min_length=1)
    event_time: AwareDatetime


class CustomerEvent(_Event):
    """Base of every event about one customer's order; keyed on the wire by the person."""

    customer_unique_id: str = Field(min_length=1)
    order_id: str = Field(min_length=1)


UNKNOWN_CATEGORY = "unknown"  # the category of a product the source names none for


class Item(BaseModel):
    """One line of an order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # no tabs or line breaks: a profile keeps a day's items tab-separated (streams/profile.py)
    product_id: str = Field(pattern=r"^[^\t\r\n]*$")
    category: str = Field(
        pattern=r"^[^\t\r\n]*$", description="English category name ('unknown' when the product has none)."
    )
    price: float = Field(ge=0)
    freight: float = Field(ge=0)
    seller_id: str


class OrderPlaced(CustomerEvent):
    """A purchase. ``event_time`` is the purchase time; canceled orders never produce one."""

    event_type: Literal["order_placed"] = "order_placed"
    customer_id: str = Field(description="Olist's per-order customer id.")
    zip_prefix: str
    city: str
    state: str
    items: list[Item]
    payment_total: float = Field(ge=0, description="Sum of payments, or items' price + freight.")
    payment_types: list[str]
    installments: int = Field(ge=0)
    payment_source: Literal["payments", "items", "none"] = Field(
        description="Where payment_total came from: the payments file, the items' fallback, or neither."
    )


class OrderDelivered(CustomerEvent):
    """The order reached the customer. ``event_time`` is the delivery time."""

    event_type: Literal["order_delivered"] = "order_delivered"
    estimated_time: AwareDatetime | None = None
    late: bool | None = Field(description="Delivered on a later day than estimated; None if no estimate.")


class OrderCanceled(CustomerEvent):
    """A canceled or unavailable order: not a purchase. ``event_time`` is its purchase time."""

    event_type: Literal["order_canceled"] = "order_canceled"
    status: str
    order_value: float = Field(ge=0, description="What the order was worth; it never counted as spend.")


class OrderReturned(CustomerEvent):
    """A cancellation after the purchase (an Online Retail invoice starting with ``C``: goods sent
    back or an order reversed). ``amount`` comes off the customer's monetary value; it is not a
    purchase, so recency and frequency do not move. ``event_time`` is the cancellation's time.
    """

    event_type: Literal["order_returned"] = "order_returned"
    amount: float = Field(ge=0, description="What comes off the customer's monetary value.")
    items: list[Item] = Field(default_factory=list, description="The lines canceled (prices as positive amounts).")


class ReviewPosted(CustomerEvent):
    """A review answer. ``event_time`` is when it was answered (its creation date if unknown)."""

    event_type: Literal["review_posted"] = "review_posted"
    review_id: str
    score: int = Field(ge=1, le=5)
    created_time: AwareDatetime
    comment_present: bool
    comment_length: int = Field(ge=0)


class CampaignSent(_Event):
    """A marketing message sent to a customer, or withheld from them as the campaign's control.

    On ``marketing.campaigns``, keyed by the customer. ``event_time`` is when it was sent (for a
    control customer: when it would have been). ``group`` says whether the customer received it
    (``treatment``) or was held out at random (``control``); the uplift model learns from the two.
    One customer is in a campaign once: ``event_id`` is ``<source>:campaign:<campaign>:<customer>``.
    A campaign send changes no segment and no churn status.
    """

    event_type: Literal["campaign_sent"] = "campaign_sent"
    customer_unique_id: str = Field(min_length=1)
    campaign_id: str = Field(min_length=1)
    offer: str = Field("", description="What the message offered (free text, e.g. '10% off'); may be empty.")
    group: Literal["treatment", "control"]


class ClockTick(_Event):
    """The event-time clock, written by the replay to every partition of every topic it feeds.

    On the partition that carries it, a tick promises that every later record has
    ``event_time >= tick.event_time``: it is that partition's watermark. ``final`` marks the end of
    a replay on the partition, and then ``expected_events`` is the number of customer events the
    replay window holds for it, so a consumer can tell that it has seen everything without
    trusting broker end offsets.
    """

    event_type: Literal["clock_tick"] = "clock_tick"
    replay_id: str
    run_id: str | None = Field(default=None, description="One run of the replay (a resumed replay gets a new one).")
    topic: str
    partition: int = Field(ge=0)
    final: bool = False
    expected_events: int | None = Field(default=None, ge=0)


class SegmentChanged(_Event):
    """Published on ``profiles.segment-changes`` (keyed by customer) when a stored segment changes.

    ``event_id`` is ``segment:<customer>:<n>`` for the customer's n-th change, so a re-publication
    after a crash carries the same id. ``previous_segment`` is empty for a first segment.
    """

    # Output events ignore fields they do not know, and their JSON Schema says so (no
    # additionalProperties: false): a consumer validating against version 1 must accept a new
    # optional field, the compatible change docs/events.md promises.
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_type: Literal["segment_changed"] = "segment_changed"
    customer_unique_id: str = Field(min_length=1)
    previous_segment: str
    segment: str
    cause: Literal["purchase", "review", "delivery", "cancel", "time", "rescore"]
    r: int | None = Field(default=None, ge=1, le=5)
    f: int | None = Field(default=None, ge=1, le=5)
    m: int | None = Field(default=None, ge=1, le=5)
    cluster: int | None = None
    churn: str
    source_event_id: str | None = Field(default=None, description="The event that caused it, if any.")


class ChurnChanged(_Event):
    """Published on ``profiles.churn-signals`` when a customer's churn status changes."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # as SegmentChanged

    event_type: Literal["churn_changed"] = "churn_changed"
    customer_unique_id: str = Field(min_length=1)
    previous_status: str
    status: Literal["active", "at_risk", "churned", ""]
    reasons: list[str]
    cause: Literal["purchase", "review", "delivery", "cancel", "time", "rescore"]
    source_event_id: str | None = None


class DeadLetter(BaseModel):
    """A message a worker could not use, on ``segstream.dead-letter``, with the reason."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # as SegmentChanged

    event_type: Literal["dead_letter"] = "dead_letter"
    reason: str
    topic: str
    partition: int
    offset: int
    key: str | None
    payload: str = Field(description="The original value, decoded as UTF-8 with replacement characters.")


AnyEvent = Annotated[
    OrderPlaced | OrderDelivered | OrderCanceled | OrderReturned | ReviewPosted | CampaignSent | ClockTick,
    Field(discriminator="event_type"),
]
OutputEvent = Annotated[SegmentChanged | ChurnChanged | DeadLetter, Field(discriminator="event_type")]
_adapter: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
_output_adapter: TypeAdapter[OutputEvent] = TypeAdapter(OutputEvent)


def encode_event(event: _Event) -> bytes:
    """The wire form of an event: compact UTF-8 JSON (what ``model_dump_json`` gives, as bytes)."""
    return event.__pydantic_serializer__.to_json(event)


def flat_encoder(model: type[BaseModel]) -> Callable[..., bytes]:
    """An encoder of ``model``'s wire form straight from its field values, without building the model.

    For events the workers derive themselves (change events, hundreds of thousands per replay),
    where validation only re-checks what the code just computed: the encoder takes the values of
    the model's fields in declaration order, leaving out constant fields (a one-value ``Literal``
    with that default, such as ``event_type``), and gives the same bytes as :func:`encode_event`.
    Values may be str, int, bool, None, lists of those, and datetimes (or their :func:`wire_time`
    text); anything else raises ``TypeError``. It does not validate: the caller passes valid values.

    >>> encode = flat_encoder(ChurnChanged)
    >>> payload = encode("churn:u1:1", "2017-03-01T10:00:00Z", "u1", "", "at_risk", ["recency"], "time", None)
    >>> payload == encode_event(ChurnChanged(
    ...     event_id="churn:u1:1", event_time="2017-03-01T10:00:00Z", customer_unique_id="u1",
    ...     previous_status="", status="at_risk", reasons=["recency"], cause="time"))
    True
    """
    template, names, expressions = [], [], []
    for name, info in model.model_fields.items():
        if get_origin(info.annotation) is Literal and get_args(info.annotation) == (info.default,):
            constant = TypeAdapter(info.annotation).dump_json(info.default).decode()
            template.append(f"{json.dumps(name)}:{constant.replace('%', '%%')}")
            continue
        template.append(f"{json.dumps(name)}:%s")
        value = f"v{len(names)}"
        names.append(value)
        expressions.append(_EXPRESSIONS.get(_kind_of(info.annotation), "_value({})").format(value))
    # generated like a dataclass __init__: one call per event, no per-value function calls
    source = f"def encode({', '.join(names)}):\n    return (form % ({', '.join(expressions)},)).encode()\n"
    scope = {"form": "{" + ",".join(template) + "}", "_s": _json_str, "_int": int.__repr__, "_value": _json_value}
    exec(source, scope)  # the source is built above from the model's field names only
    encode = scope["encode"]
    encode.__qualname__ = f"flat_encoder({model.__name__})"
    return encode


def _kind_of(annotation: Any) -> str:
    """What a field holds, for :func:`flat_encoder`: str, str?, int?, int, list[str], or other."""
    args = set(get_args(annotation))
    if annotation is str or (get_origin(annotation) is Literal and all(type(a) is str for a in args)):
        return "str"
    if annotation is int:
        return "int"
    if args == {str, type(None)}:
        return "str?"
    if args == {int, type(None)}:
        return "int?"
    if get_origin(annotation) is list and args == {str}:
        return "list[str]"
    return "other"


_EXPRESSIONS = {
    "str": "_s({})",  # the C escaper, which refuses anything but a str
    "str?": "('null' if {0} is None else _s({0}))",
    "int": "_int({})",  # int.__repr__ refuses anything but an int
    "int?": "('null' if {0} is None else _int({0}))",
    "list[str]": "('[' + ','.join(map(_s, {0})) + ']')",
}


_json_str = json.encoder.encode_basestring  # escapes as pydantic does: quotes, backslash, control chars


def _json_value(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return _json_str(value)
    if value is None:
        return "null"
    if kind is int:
        return str(value)
    if kind is list:
        return "[" + ",".join(map(_json_value, value)) + "]"
    if kind is bool:
        return "true" if value else "false"
    if kind is datetime:
        return _json_str(_iso(value))
    raise TypeError(f"flat_encoder does not encode {kind.__name__} values")


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise TypeError("event times must carry a UTC offset")
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def wire_time(seconds: float) -> str:
    """Epoch seconds as the wire form writes a UTC event time.

    >>> wire_time(1488362400.0), wire_time(1488362400.25)
    ('2017-03-01T10:00:00Z', '2017-03-01T10:00:00.250000Z')
    """
    return _iso(datetime.fromtimestamp(seconds, tz=UTC))


def decode_event(payload: bytes | str) -> AnyEvent:
    """Parse and validate any segstream event; raises ``pydantic.ValidationError`` on bad input."""
    return _adapter.validate_json(payload)


def decode_output(payload: bytes | str) -> OutputEvent:
    """Parse a record of the workers' output topics (segment changes, churn signals, dead letters)."""
    return _output_adapter.validate_json(payload)


def event_json_schema() -> dict:
    """JSON Schema of every event, input and output, for consumers in other languages (docs/)."""
    return {
        "title": "segstream events",
        "input": _adapter.json_schema(),
        "output": _output_adapter.json_schema(),
    }
