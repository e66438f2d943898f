"""A downstream service built on segstream's change events: a win-back list.

Keeps the customers who moved into At Risk or Can't Lose Them, or whose churn status is churned,
from ``profiles.segment-changes`` and ``profiles.churn-signals`` (docs/events.md), and, once a CLV
model exists, only those worth it: CLV at least ``--min-clv``, read from segstream's JSON API
(``segstream web``; a customer with no CLV score yet stays on the list). It follows the consumer
contract: delivery is at least once, so each customer's changes are applied by their number
(``segment:<customer>:<n>``): a redelivered or older change changes nothing. The list is saved
(atomically) before the offsets are committed, so a consumer killed at any moment resumes from its
consumer group and ends with the same list.

    python examples/winback_consumer.py --bootstrap 127.0.0.1:9092 --out winback.json \\
        [--api http://127.0.0.1:8765 --min-clv 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaConsumer

WIN_BACK_SEGMENTS = {"At Risk", "Can't Lose Them"}


def change_number(event_id: str) -> int:
    """``segment:<customer>:<n>`` -> n: a customer's changes count up."""
    return int(event_id.rsplit(":", 1)[1])


class Clv:
    """Each customer's CLV from ``GET /api/customers/{id}``, cached per model run."""

    def __init__(self, api: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.api, self.session = api.rstrip("/"), aiohttp.ClientSession(headers=headers)
        self.run: int | None = None
        self.cache: dict[str, float | None] = {}

    async def model_run(self) -> int | None:
        async with self.session.get(f"{self.api}/api/models") as answer:
            if answer.status == 404:
                return None  # no model yet
            answer.raise_for_status()
            return (await answer.json()).get("clv")

    async def of(self, customer: str) -> float | None:
        if customer not in self.cache:
            async with self.session.get(f"{self.api}/api/customers/{customer}") as answer:
                answer.raise_for_status()
                scores = (await answer.json())["scores"]
            self.cache[customer] = scores["clv"] if scores else None
        return self.cache[customer]

    async def refresh(self) -> None:
        run = await self.model_run()
        if run != self.run:  # a new model: every CLV may have changed
            self.run, self.cache = run, {}


class WinBack:
    """Per customer the latest segment and churn status seen, by change number; the list follows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state: dict[str, dict] = json.loads(path.read_text())["customers"] if path.exists() else {}

    def apply(self, event: dict) -> None:
        kind = "segment" if event["event_type"] == "segment_changed" else "churn"
        mine = self.state.setdefault(event["customer_unique_id"], {})
        n = change_number(event["event_id"])
        if n <= mine.get(f"{kind}_n", 0):
            return  # seen already (redelivery) or older than what we have
        mine[f"{kind}_n"] = n
        mine[kind] = event["segment"] if kind == "segment" else event["status"]

    def candidates(self) -> list[str]:
        return sorted(
            c for c, s in self.state.items() if s.get("segment") in WIN_BACK_SEGMENTS or s.get("churn") == "churned"
        )

    async def members(self, clv: Clv | None, min_clv: float) -> list[str]:
        if clv is None or clv.run is None:
            return self.candidates()
        members = []
        for customer in self.candidates():
            value = await clv.of(customer)
            if value is None or value >= min_clv:
                members.append(customer)
        return members

    async def save(self, clv: Clv | None, min_clv: float) -> list[str]:
        members = await self.members(clv, min_clv)
        doc = {"customers": self.state, "win_back": members, "clv_model_run": clv.run if clv else None}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(doc))
        os.replace(temporary, self.path)  # a kill leaves the old file or the new one, never half
        return members


async def run(args: argparse.Namespace) -> int:
    winback = WinBack(args.out)
    clv = Clv(args.api, os.environ.get("SEGSTREAM_WEB_TOKEN")) if args.api else None
    topics = [args.segments_topic, args.churn_topic]
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=args.bootstrap, group_id=args.group, enable_auto_commit=False,
        auto_offset_reset="earliest",
    )  # fmt: skip
    await consumer.start()
    try:
        idle, members = 0.0, winback.candidates()
        while args.exit_when_idle is None or idle < args.exit_when_idle:
            batches = await consumer.getmany(timeout_ms=500, max_records=2_000)
            if not batches:
                idle += 0.5
                continue
            idle = 0.0
            for records in batches.values():
                for record in records:
                    winback.apply(json.loads(record.value))
            if clv:
                await clv.refresh()
            members = await winback.save(clv, args.min_clv)
            await consumer.commit()  # after the save: at least once, never lost
        if clv:  # the last word, with the model in force now
            await clv.refresh()
            members = await winback.save(clv, args.min_clv)
    finally:
        await consumer.stop()
        if clv:
            await clv.session.close()
    return len(members)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--segments-topic", default="profiles.segment-changes")
    parser.add_argument("--churn-topic", default="profiles.churn-signals")
    parser.add_argument("--group", default="winback")
    parser.add_argument("--out", type=Path, default=Path("winback.json"))
    parser.add_argument("--api", help="segstream web's address, for CLV (token: SEGSTREAM_WEB_TOKEN)")
    parser.add_argument("--min-clv", type=float, default=0.0, help="with --api and a CLV model: the least CLV kept")
    parser.add_argument("--exit-when-idle", type=float, help="stop after this many seconds without a record")
    count = asyncio.run(run(parser.parse_args()))
    print(f"{count} customers to win back, in {parser.parse_args().out}")


if __name__ == "__main__":
    main()
