"""The write script's protocol: the header every call of ``streams/lua/write.lua`` starts with.

One named structure for both sides: Python builds a :class:`WriteHeader` and sends
:meth:`WriteHeader.args`; the script names the same fields in the same order in its ``HEADER``
table (tests/test_fold.py checks the two lists are equal). What follows the header (watermarks,
send times, then each customer's write) is described at the top of the script.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

__all__ = ["WriteHeader"]


@dataclass(frozen=True, slots=True)
class WriteHeader:
    """The first arguments of a write call: the keys it touches, its caps and topics, and counts."""

    profile_prefix: str  # + customer: the profile hash
    transitions_prefix: str  # + event-day: the transition counts of that day
    analytics_keys: str  # the analytics read models' hashes, newline-separated, in READ_MODELS order
    due: str  # the partition's due index
    segments: str  # customers per segment (a hash)
    churn_statuses: str  # customers per churn status (a hash)
    changes: str  # the capped stream of recent segment and churn changes
    outbox: str  # change events waiting for Kafka (a stream)
    counters: str
    watermarks: str  # the topic's watermarks (a hash: partition -> event time)
    latencies: str  # a capped list of send-to-update latencies (ms)
    recent_changes: int  # cap of ``changes``
    recent_latencies: int  # cap of ``latencies``
    segment_topic: str
    churn_topic: str
    duplicates: int  # redelivered events of customers with nothing to write
    ticks: int  # clock ticks in the batch (counted once, with its last call)
    watermark_count: int  # (partition, watermark) pairs after the header
    sent_count: int  # send times after them
    write_count: int  # customers' writes after them

    @classmethod
    def names(cls) -> list[str]:
        return [item.name for item in fields(cls)]

    def args(self) -> list[str | int]:
        return list(astuple(self))
