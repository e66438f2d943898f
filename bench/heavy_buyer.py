"""What a customer's 1,000th order costs the worker, against their 1st.

    python bench/heavy_buyer.py --customers 200 --orders 1000

The profile store of the stream worker (streams/state.py: the fold in memory, the read and write
scripts) against the embedded redis-server, without a broker: a batch is one order for each of
``--customers`` customers, each order on a day of its own (the costliest case: every order is a
new purchase day). Veterans first get ``--orders - 10`` orders. Then, alternating batch by batch
in one sitting (this machine's speed drifts within minutes), the veterans' next 10 orders and
fresh customers' first 10: cost per event = batch time / customers, median over the 10 batches
of each. Twice: with the worker's profile cache (a profile stays in memory between batches:
the steady state), then with none (every batch reads every profile from Redis, as after a
restart; the veterans go on to order ``--orders + 10``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/ is not installed: its event builder

from segstream.clients import async_redis_client, redis_client
from segstream.keys import Keys
from segstream.scoring import ChurnRules, RfmScorer
from segstream.services import free_port, services_down, services_up
from segstream.settings import Settings
from streams.state import ProfileStore
from tests.conftest import placed_order


async def run(settings: Settings, customers: int, orders: int) -> dict:
    client = async_redis_client(settings)
    keys = Keys("heavy")
    store = ProfileStore(
        client,
        keys,
        scorer=RfmScorer(),
        rules=ChurnRules(default_gap_days=180),
        segment_topic="segments",
        churn_topic="churn",
        cache_size=10 * customers,
    )
    veterans = [f"v{i:04d}" for i in range(customers)]

    async def batch(who: list[str], n: int) -> float:
        # a new purchase day every order; ~1,000 distinct products
        events = [placed_order(c, n, n, product=f"product-{n % 997:05d}") for c in who]
        started = time.perf_counter()
        await store.process({0: events}, {0: 0.0})
        elapsed = time.perf_counter() - started
        gc.freeze()  # as the worker does after each batch (streams/app.py)
        return elapsed / len(who) * 1e6

    started = time.monotonic()
    for n in range(1, orders - 9):
        await batch(veterans, n)
        if n % 200 == 0:
            print(f"  veterans at order {n:,} ({time.monotonic() - started:.0f} s)", flush=True)
    figures: dict = {"customers": customers}
    for cache in (True, False):
        if not cache:  # every profile read from Redis, as after a restart
            store.cache_size = 0
            store._cache.clear()
        fresh = [f"{'c' if cache else 'n'}{i:04d}" for i in range(customers)]
        offset = 0 if cache else 10
        late, first = [], []
        for k in range(10):
            late.append(await batch(veterans, orders - 9 + offset + k))
            first.append(await batch(fresh, 1 + k))
        name = "cached" if cache else "read from Redis"
        figures[name] = {
            "first_10_orders_us_per_event": round(statistics.median(first), 1),
            f"orders_{orders - 9 + offset}_to_{orders + offset}_us_per_event": round(statistics.median(late), 1),
            "ratio": round(statistics.median(late) / statistics.median(first), 3),
        }
    sync = redis_client(settings)
    figures["heavy_profile_bytes"] = sync.memory_usage(keys.partition(0).profile(veterans[0]), samples=0)
    figures["heavy_profile_fields"] = sync.hlen(keys.partition(0).profile(veterans[0]))
    await client.aclose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=200, help="customers per batch")
    parser.add_argument("--orders", type=int, default=1000, help="orders of each veteran by the end")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="segstream-heavy-"))
    settings = Settings(run_dir=workdir / "run", kafka_port=free_port(), redis_port=free_port(), log_level="info")
    services_up(settings)
    try:
        results = asyncio.run(run(settings, args.customers, args.orders))
    finally:
        services_down(settings)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
