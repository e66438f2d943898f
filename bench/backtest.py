"""Time and peak memory of ``segstream backtest`` on a generated Olist-size history.

    python bench/backtest.py --orders 100000 --cutoffs 2017-09-01,2018-01-01,2018-03-01

On fresh embedded services on free ports: a synthetic Olist-shaped history of --orders orders
(seed --seed), then ``segstream backtest`` on it with the given cutoffs and --horizon, in a
process of its own. Reported: wall time of the command (interpreter start and imports included),
its phase timings (``run.json``: replay, catch-up, retrain, scoring), events through the pipeline,
the peak RSS of the backtest process and of its worker (the largest of its children), and the
headline figures of each cutoff (``figures.json``), so the note can quote them.

Target (issue 17): three cutoffs on the full Olist history (~99k orders) in a few minutes on 2
cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from replay.synth import SynthConfig, synthesize
from segstream.services import free_port, services_down, services_up
from segstream.settings import Settings, settings_env


def headline(cutoff: dict) -> dict:
    """The figures a reader checks first, per cutoff."""
    purchases, churn, recs = cutoff["purchases"], cutoff["churn"], cutoff["recommendations"]
    together, sales = recs.get("rivals", {}).get("bought_together", {}), cutoff.get("forecast", {})
    served = purchases.get("served", {})
    return {
        "cutoff": cutoff["cutoff"],
        "customers": cutoff["customers"]["scored"],
        "bought_again_share": cutoff["customers"]["bought_again_share"],
        "purchases_served": {k: served.get(k) for k in ("model", "mae", "spearman", "predicted_total", "actual_total")},
        "purchases_baselines": {
            name: {k: b.get(k) for k in ("mae", "spearman", "predicted_total", "error") if k in b}
            for name, b in purchases.get("baselines", {}).items()
        },
        "auc": {
            name: churn[name]["auc"]
            for name in ("p_alive", "expected_purchases", "status", "baseline_recency")
            if name in churn
        },
        "auc_repeat_buyers": {
            name: churn["repeat_buyers"][name]["auc"]
            for name in ("p_alive", "expected_purchases", "status", "baseline_recency")
            if name in churn["repeat_buyers"]
        },
        "recs_product_hit_rate": {
            "overall": recs.get("overall", {}).get("product", {}).get("hit_rate"),
            "default_list": recs.get("baseline_default_list", {}).get("product", {}).get("hit_rate"),
            **{s: r["product"]["hit_rate"] for s, r in recs.get("by_strategy", {}).items()},
        },
        "recs_customers": recs.get("overall", {}).get("product", {}).get("customers"),
        "bought_together": {
            "customers": together.get("product", {}).get("customers"),
            "hit_rate": together.get("product", {}).get("hit_rate"),
            "default_list_hit_rate": together.get("baseline_default_list", {}).get("product", {}).get("hit_rate"),
        },
        "basket_rules_found": {
            kind: r.get("rules_found") for kind, r in cutoff.get("basket_rules", {}).items() if isinstance(r, dict)
        },
        "forecast": {
            column: {
                "mape": sales[column]["forecast"]["mape"],
                "mase": sales[column]["forecast"]["mase"],
                "seasonal_naive_mape": sales[column]["baseline_seasonal_naive"]["mape"],
                "seasonal_naive_mase": sales[column]["baseline_seasonal_naive"]["mase"],
                "interval_coverage": sales[column]["interval_coverage"],
            }
            for column in ("orders", "revenue")
            if column in sales
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cutoffs", default="2017-09-01,2018-01-01,2018-03-01")
    parser.add_argument("--horizon", default="90d")
    parser.add_argument("--keep", type=Path, help="copy the backtest's output directory here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="segstream-bench-backtest-"))
    settings = Settings(run_dir=workdir / "run", kafka_port=free_port(), redis_port=free_port(), log_level="warning")
    services_up(settings)
    try:
        data, out = workdir / "data", workdir / "out"
        synthesize(SynthConfig(orders=args.orders, seed=args.seed), data)
        command = [sys.executable, "-m", "segstream", "backtest", "--data", str(data), "--out", str(out)]
        command += ["--cutoffs", args.cutoffs, "--horizon", args.horizon]
        env = {**os.environ, **settings_env(settings)}
        started = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall = time.monotonic() - started
        if done.returncode:
            raise SystemExit(f"backtest failed: {done.stderr.strip()[-3000:]}")
        run = json.loads((out / "run.json").read_text())
        figures = json.loads((out / "figures.json").read_text())
        # ru_maxrss of the children: the backtest process, or its worker if larger (waited-for
        # descendants count); both are in KiB on Linux
        report = {
            "orders": args.orders,
            "cutoffs": args.cutoffs,
            "horizon": args.horizon,
            "wall_seconds": round(wall, 1),
            "phases_seconds": run["seconds"],
            "events_replayed": run["events_replayed"],
            "events_per_second": run["events_per_second"],
            "peak_rss_mb_largest_process": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "cutoff_figures": [headline(c) for c in figures["cutoffs"]],
        }
        print(json.dumps(report, indent=2))
        if args.keep:
            shutil.copytree(out, args.keep, dirs_exist_ok=True)
    finally:
        services_down(settings)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
