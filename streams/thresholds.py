"""Publishing the RFM thresholds in force (the retrain job's call; ``segstream thresholds``).

The document (JSON) holds the R and M thresholds, a version and, once the retrain job fitted
BG/NBD, its parameters ``bgnbd`` (``r``, ``alpha``, ``a``, ``b``) for the churn rules' P(alive).

Workers poll the key every second; when the version moves they re-score every customer of their
partitions once (changes carry the cause ``rescore``) and record, per partition, the version it
was re-scored at, so a worker that takes over a partition finishes a re-score another began.
"""

from __future__ import annotations

import json
import time

import redis

from segstream.clients import redis_client
from segstream.keys import Keys
from segstream.scoring import RfmScorer, bgnbd_of
from segstream.settings import Settings

__all__ = ["current_scoring", "current_thresholds", "publish_thresholds", "rescore_progress", "wait_for_rescore"]


def current_thresholds(settings: Settings) -> RfmScorer:
    return current_scoring(settings)[0]


def current_scoring(settings: Settings) -> tuple[RfmScorer, tuple[float, float, float, float] | None]:
    """The thresholds in force and the BG/NBD parameters published with them (None before any)."""
    raw = redis_client(settings).get(Keys(settings.redis_prefix).thresholds)
    return (RfmScorer.from_json(raw.decode()) if raw else RfmScorer()), bgnbd_of(raw)


def publish_thresholds(
    settings: Settings,
    recency_days: tuple[float, ...] | None = None,
    monetary: tuple[float, ...] | None = None,
    bgnbd: dict[str, float] | None = None,
) -> RfmScorer:
    """Store new thresholds (and BG/NBD parameters; those not given stay) with the next version,
    atomically (WATCH/MULTI), and return the thresholds."""
    client, key = redis_client(settings), Keys(settings.redis_prefix).thresholds
    # transaction=True spelled out: a RedisCluster pipeline is not transactional by default
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                current = RfmScorer.from_json(raw.decode()) if raw else RfmScorer()
                scorer = RfmScorer(
                    recency_days or current.recency_days, monetary or current.monetary, current.version + 1
                )
                document = json.loads(scorer.to_json())
                document["bgnbd"] = bgnbd or (json.loads(raw).get("bgnbd") if raw else None)
                pipe.multi()
                pipe.set(key, json.dumps(document))
                pipe.execute()
                return scorer
            except redis.WatchError:
                continue


def rescore_progress(settings: Settings, version: int) -> list[int]:
    """The partitions that have not finished re-scoring with thresholds ``version`` yet."""
    done = redis_client(settings).hgetall(Keys(settings.redis_prefix).rescored)
    finished = {int(p) for p, v in done.items() if int(v) >= version}
    return [p for p in range(settings.topic_partitions) if p not in finished]


def wait_for_rescore(settings: Settings, version: int, timeout_s: float = 120.0) -> list[int]:
    """Wait until every partition is re-scored with thresholds ``version`` (the workers do it);
    returns the partitions still left when ``timeout_s`` ran out (empty: complete)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = rescore_progress(settings, version)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)
