"""Time the synthetic generator (target: 1M orders in under 2 minutes) and the loader on its output.

python bench/synth_speed.py --orders 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

from replay.olist import load_olist
from replay.synth import SynthConfig, synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--no-load", action="store_true", help="time only the generator")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="segstream-synth-"))
    try:
        started = time.monotonic()
        written = synthesize(SynthConfig(orders=args.orders, seed=1), out)
        synth_s = time.monotonic() - started
        figures = {
            "orders": args.orders,
            "synth_seconds": round(synth_s, 1),
            "megabytes_written": round(sum(p.stat().st_size for p in out.iterdir()) / 1e6, 1),
            "rows": written,
        }
        if not args.no_load:
            started = time.monotonic()
            history = load_olist(out)
            figures["load_seconds"] = round(time.monotonic() - started, 1)
            figures["events"] = history.event_counts()
            figures["rejected_rows"] = history.report.rejected
        figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
