"""The chaos run: faults injected into a replay, and nothing lost.

    python bench/chaos.py --orders 5000

On an embedded broker and redis-server of its own (fresh, free ports): a generated Olist-like
history replayed at ``--speed`` with 5% of its events sent twice by the producer (the copy up to
2,000 records later) and 1% malformed records, while the worker is killed with SIGKILL at
``--kills`` random moments (by events applied) and restarted, and redis-server is restarted once
half-way (SIGTERM: the AOF is kept). Then a fresh consumer group reads every topic again onto the
same state (a consumer-group reset). Checked (tests/chaos.py): every profile and every segment and
churn transition equals the pandas oracle's, every malformed record is in the dead-letter topic
with its reason, ``consumed = applied + duplicates + dead_lettered``, and applied equals the
history's events (lost = events - applied). Prints the table.

    python bench/chaos.py --orders 1500 --workers 4 --partitions 8

With ``--workers``: the membership run instead (tests/chaos.py): that many workers share the
partitions while workers leave, die and join six times during the replay; the same checks. Not
in the test suite yet: about one run in six ends with two partitions whose final ticks are never
processed (docs/architecture.md, "Rebalances").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/ is not installed: the oracle and the run

from replay.synth import SynthConfig, synthesize
from segstream.services import free_port, services_down, services_up
from segstream.settings import Settings
from tests.chaos import chaos_run, membership_run, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=5_000, help="orders in the generated history")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the worker")
    parser.add_argument("--speed", type=float, default=8 * 86_400, help="event seconds per wall second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=0, help="the membership run with this many workers")
    parser.add_argument("--partitions", type=int, default=8, help="topic partitions of the membership run")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="segstream-chaos-"))
    data = workdir / "olist"
    synthesize(SynthConfig(orders=args.orders, seed=args.seed, repeat_share=0.25, late_share=0.15), data)
    tag = uuid.uuid4().hex[:6]
    settings = Settings(
        run_dir=workdir / "run",
        kafka_port=free_port(),
        redis_port=free_port(),
        app_id=f"chaos-{tag}",
        worker_batch=200,
        replay_batch=200,
        log_level="info",
    )
    services_up(settings)
    try:
        if args.workers:
            settings = settings.model_copy(update={"topic_partitions": args.partitions})
            figures = membership_run(settings, data, workdir / "logs", workers=args.workers, speed=args.speed)
        else:
            figures = chaos_run(settings, data, workdir / "logs", kills=args.kills, speed=args.speed, seed=args.seed)
    finally:
        services_down(settings)
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
