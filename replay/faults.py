"""Faults a replay can inject, for chaos runs (bench/chaos.py, tests/test_chaos.py).

A real producer re-sends records (a retry after a timeout whose first send had landed) and
sometimes writes garbage. :class:`Faults` makes a replay do both, reproducibly by ``seed``: after
a customer event, with probability ``duplicate_share`` the same record is sent again, on the same
partition, after up to ``max_delay`` further records (always after the original, before the
replay's final ticks); with probability ``malformed_share`` a malformed record follows on the same
topic and partition. Every injected record is listed, so a run can check each one's fate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["MALFORMED", "Faults"]

# Malformed records and the first word of the reason the worker dead-letters them with
# (streams/agents.py: pydantic's error type, or json_invalid for bytes that are not JSON).
MALFORMED: list[tuple[bytes, str]] = [
    (b"\xff\xfe not json at all", "json_invalid"),
    (b'{"event_type": "order_placed", "event_id": "broken"}', "missing"),
    (b'{"event_type": "teleported", "event_id": "y", "event_time": "2017-01-01T00:00:00Z"}', "union_tag_invalid"),
    (b'{"event_type": "order_placed", "event_id": "cut', "json_invalid"),
]

Record = tuple[str, int, bytes | None, bytes]  # topic, partition, key, value


@dataclass
class Faults:
    duplicate_share: float = 0.05
    malformed_share: float = 0.01
    max_delay: int = 2_000
    seed: int = 0
    duplicates: list[Record] = field(default_factory=list)  # what was injected, in order
    malformed: list[tuple[Record, str]] = field(default_factory=list)  # with the expected reason
    _pending: list[tuple[int, Record]] = field(default_factory=list)
    _sent: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def after(self, record: Record) -> list[Record]:
        """The records to send after this customer event: due duplicates and new faults."""
        self._sent += 1
        out = []
        if self._pending:
            due = [r for at, r in self._pending if at <= self._sent]
            if due:
                self._pending = [(at, r) for at, r in self._pending if at > self._sent]
                out += due
                self.duplicates += due
        draw = self._rng.random(2)
        if draw[0] < self.duplicate_share:
            self._pending.append((self._sent + int(self._rng.integers(0, self.max_delay + 1)), record))
        if draw[1] < self.malformed_share:
            value, reason = MALFORMED[int(self._rng.integers(len(MALFORMED)))]
            topic, partition, key, _ = record
            bad = (topic, partition, key, value)
            self.malformed.append((bad, reason))
            out.append(bad)
        return out

    def rest(self) -> list[Record]:
        """The duplicates still pending at the end of the replay (sent before its final ticks)."""
        out = [r for _, r in self._pending]
        self._pending = []
        self.duplicates += out
        return out
