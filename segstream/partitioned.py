"""Reading state kept per Kafka partition (segstream/keys.py): which partitions hold state, and
counts, streams and lists summed or merged over them.

Each partition's keys share one hash slot, so on Redis Cluster they live on one node and the
partitions spread over the nodes; a reader pipelines one command per partition (redis-py's
cluster pipeline sends each node its own). The set of partitions holding state
(``Keys.partition_numbers``) is written by the workers before their first write to a partition.

>>> summed([{b"Champions": b"2", b"Lost": b"1"}, {b"Champions": b"3", b"Lost": b"-1"}])
{b'Champions': 5}
>>> newest([[(b"5-0", {}), (b"2-1", {})], [(b"4-0", {})]], 2)
[(b'5-0', {}), (b'4-0', {})]
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
import redis.asyncio as aioredis

from segstream.keys import Keys, PartitionKeys

__all__ = [
    "apartitions",
    "counters",
    "merged",
    "newest",
    "oldest",
    "outbox_length",
    "partitions",
    "sum_hashes",
    "summed",
]

Entry = tuple[bytes, dict[bytes, bytes]]  # a stream entry: its id and fields


def _numbers(members: Iterable[bytes]) -> list[int]:
    return sorted(int(m) for m in members)


def partitions(client: redis.Redis, keys: Keys) -> list[PartitionKeys]:
    """The keys of every partition that holds state, in partition order."""
    return [keys.partition(n) for n in _numbers(client.smembers(keys.partition_numbers))]


async def apartitions(client: aioredis.Redis, keys: Keys) -> list[PartitionKeys]:
    return [keys.partition(n) for n in _numbers(await client.smembers(keys.partition_numbers))]


def summed(hashes: Iterable[dict[bytes, bytes]]) -> dict[bytes, int]:
    """Integer hashes added up field by field, zeros left out (field names stay as Redis gave them)."""
    total: dict[bytes, int] = {}
    for fields in hashes:
        for name, value in fields.items():
            total[name] = total.get(name, 0) + int(value)
    return {name: n for name, n in total.items() if n}


def merged(hashes: Iterable[dict[bytes, bytes]]) -> dict[bytes, bytes]:
    """Hashes of disjoint fields (each partition's watermark under its number) in one."""
    return {name: value for fields in hashes for name, value in fields.items()}


def sum_hashes(client: redis.Redis, names: list[str]) -> dict[bytes, int]:
    """The integer hashes ``names`` (one per partition) added up, in one pipelined read."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
    return summed(pipe.execute() if names else [])


def _order(entry: Entry) -> tuple[int, int]:
    ms, _, seq = entry[0].partition(b"-")
    return int(ms), int(seq or 0)


def newest(streams: Iterable[list[Entry]], count: int) -> list[Entry]:
    """The ``count`` newest entries of several streams (each read newest first), newest first.

    Stream ids are the writing server's clock in ms: across partitions (and, on a cluster,
    across nodes whose clocks agree to the ms) the merge is in write order."""
    merged: list[Entry] = [entry for stream in streams for entry in stream]
    return sorted(merged, key=_order, reverse=True)[:count]


def oldest(streams: Iterable[list[Entry]]) -> list[Entry]:
    """The entries of several streams (each read oldest first) in one list, oldest first."""
    return sorted((entry for stream in streams for entry in stream), key=_order)


def counters(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """Every partition's counters (consumed, applied, duplicates, dead_lettered, ticks, published), summed."""
    found = sum_hashes(client, [part.counters for part in partitions(client, keys)])
    return {name.decode(): n for name, n in found.items()}


def outbox_length(client: redis.Redis, keys: Keys) -> int:
    """Change events' entries still waiting in the partitions' outboxes."""
    parts = partitions(client, keys)
    pipe = client.pipeline(transaction=False)
    for part in parts:
        pipe.xlen(part.outbox)
    return sum(pipe.execute()) if parts else 0
