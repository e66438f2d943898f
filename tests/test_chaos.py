"""The chaos run, short: duplicated and malformed records, a worker killed four times, a Redis
restart and a consumer-group reset, and still every profile, every transition and every dead
letter as the oracle says (tests/chaos.py; the full run is bench/chaos.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replay.synth import SynthConfig, synthesize
from segstream.settings import Settings
from tests.chaos import chaos_run

pytestmark = pytest.mark.integration


def test_chaos_loses_nothing_and_counts_nothing_twice(own_services: Settings, tmp_path: Path) -> None:
    data = tmp_path / "history"
    synthesize(SynthConfig(orders=1_500, seed=31, repeat_share=0.25, late_share=0.15), data)
    settings = own_services.model_copy(update={"redis_prefix": "chaos", "topic_dead_letter": "chaos.dead-letter"})
    figures = chaos_run(settings, data, tmp_path / "logs", kills=4, speed=30 * 86_400, seed=5)
    print(figures)
    assert figures["kills"] == 4 and figures["redis_restarts"] == 1
    assert figures["duplicated_by_producer"] > 100 and figures["malformed"] > 20  # the faults happened
    assert figures["deduplicated"] >= figures["events"] + figures["duplicated_by_producer"]  # the reset's too
    assert figures["lost"] == 0
