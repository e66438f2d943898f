"""The CDNOW sample that ships inside lifetimes, through the whole system, reproduces the papers.

Fader, Hardie & Lee (2005), "Counting your customers the easy way": BG/NBD on the 2,357 CDNOW
customers' first 39 weeks (to 1997-09-30) gives r = 0.243, alpha = 4.414 (weeks), a = 0.793,
b = 2.426. Fader & Hardie, "The Gamma-Gamma model of monetary value" (2013): p = 6.25, q = 3.74,
v = 15.44 on the same calibration period. The log is replayed through the transaction-log source,
a real worker and Redis, and `segstream retrain --once --cutoff 1997-09-30` fits from that state
with the default settings.
"""

from __future__ import annotations

import asyncio
import json
import math
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from replay.producer import replay_history
from replay.sources import load_source
from segstream.cli import cli
from tests.conftest import Workers

pytestmark = pytest.mark.integration

MAPPING = """
[columns]
customer = "0"
time = "2"
time_format = "%Y%m%d"
amount = "4"
header = false
delimiter = "whitespace"
source = "cdnow"
"""

BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}  # alpha in weeks
GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "v": 15.44}


def _two_digits(value: float) -> float:
    return float(f"{value:.2g}")


def test_cdnow_replayed_and_retrained_reproduces_the_papers(workers: Workers, tmp_path: Path) -> None:
    mapping = tmp_path / "cdnow.toml"
    mapping.write_text(MAPPING)
    with resources.as_file(resources.files("lifetimes") / "datasets" / "CDNOW_sample.txt") as log:
        history = load_source("transactions", log, mapping)
    workers.start()
    summary = asyncio.run(replay_history(history, workers.settings))
    workers.wait_for_end(summary)
    assert summary.events_total > 6_000

    settings = workers.settings
    env = {
        "SEGSTREAM_REDIS_URL": settings.redis_address,
        "SEGSTREAM_REDIS_PREFIX": settings.redis_prefix,
        "SEGSTREAM_MODELS_DIR": str(tmp_path / "models"),
        "SEGSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap_servers,
    }
    done = CliRunner().invoke(cli, ["retrain", "--once", "--cutoff", "1997-09-30"], env=env)
    assert done.exit_code == 0, done.output
    meta = json.loads((tmp_path / "models" / "run-000001" / "meta.json").read_text())
    assert meta["clv"] == "fitted", meta["clv"]
    # a cutoff behind the stream's watermark: the profiles say nothing of recency then
    assert meta["thresholds"].startswith("not published: the cutoff is behind"), meta["thresholds"]
    assert workers.redis.get(workers.keys.thresholds) is None or b'"version": 0' in workers.redis.get(
        workers.keys.thresholds
    )
    assert meta["clv_diagnostics"]["customers"] == 2_357
    params = json.loads((tmp_path / "models" / "run-000001" / "clv.json").read_text())
    assert params["penalizer"] == 0.0 and not params["penalized_fallback"]
    bgnbd = dict(params["bgnbd"], alpha=params["bgnbd"]["alpha"] / 7)  # days -> weeks
    assert {k: _two_digits(v) for k, v in bgnbd.items()} == {k: _two_digits(v) for k, v in BGNBD.items()}
    gamma_gamma = params["gamma_gamma"]
    assert {k: _two_digits(v) for k, v in gamma_gamma.items()} == {k: _two_digits(v) for k, v in GAMMA_GAMMA.items()}
    assert all(math.isclose(bgnbd[k], v, rel_tol=0.01) for k, v in BGNBD.items()), bgnbd
