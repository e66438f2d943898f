"""The command line: help everywhere, configuration precedence, clear errors, the demo end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from segstream.cli import cli
from segstream.demo import sample_path
from segstream.settings import Settings
from tests import oracle
from tests.conftest import EDGE, free_port


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


@pytest.mark.parametrize("path", [(), *_commands(cli)], ids=lambda p: " ".join(p) or "segstream")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: segstream" in result.output and len(result.output.splitlines()) > 3


def test_flags_beat_environment_beat_defaults() -> None:
    runner = CliRunner()
    env = {"SEGSTREAM_TOPIC_PARTITIONS": "7", "SEGSTREAM_KAFKA_PORT": "19999"}
    shown = json.loads(runner.invoke(cli, ["config"], env=env).output)
    assert shown["topic_partitions"] == 7 and shown["kafka_port"] == 19999
    shown = json.loads(runner.invoke(cli, ["--kafka-port", "18888", "config"], env=env).output)
    assert shown["kafka_port"] == 18888 and shown["topic_partitions"] == 7
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEGSTREAM_")}
    done = subprocess.run([sys.executable, "-m", "segstream.cli", "config"], env=clean, capture_output=True, text=True)
    assert json.loads(done.stdout)["kafka_port"] == Settings.model_fields["kafka_port"].default == 9092


def test_bad_environment_value_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["config"], env={"SEGSTREAM_TOPIC_PARTITIONS": "zero"})
    assert result.exit_code == 2 and "topic_partitions" in result.output


def test_inspect_counts_events_and_rejects(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["inspect", "--data", str(EDGE), "--rejects", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.output
    assert "events            7  order_placed" in result.output
    assert "rejected          1  olist_orders_dataset.csv: unknown_customer" in result.output
    assert "partial           1  olist_orders_dataset.csv: missing_delivery_date" in result.output
    assert (tmp_path / "r.csv").read_text().count("\n") == 15


def test_missing_file_is_one_line_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "olist_orders_dataset.csv").write_text("order_id\n")
    done = subprocess.run(
        [sys.executable, "-m", "segstream.cli", "inspect", "--data", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "lacks olist_customers_dataset.csv, olist_order_items_dataset.csv" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_strategy_map_file_is_one_line_without_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "map.json"
    broken.write_text("{not json")
    done = subprocess.run(
        [sys.executable, "-m", "segstream.cli", "retrain", "--once", "--strategy-map", str(broken)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "is not a JSON file" in done.stderr


def test_replay_without_a_broker_says_how_to_start_one(tmp_path: Path) -> None:
    env = {**os.environ, "SEGSTREAM_RUN_DIR": str(tmp_path), "SEGSTREAM_KAFKA_PORT": str(free_port())}
    env.pop("SEGSTREAM_KAFKA_BOOTSTRAP", None)
    done = subprocess.run(
        [sys.executable, "-m", "segstream", "replay", "--data", str(EDGE)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "nothing accepts connections at Kafka address" in done.stderr
    assert "segstream services up" in done.stderr


@pytest.mark.integration
def test_demo_runs_end_to_end_on_fresh_embedded_services(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SEGSTREAM_")},
        "SEGSTREAM_RUN_DIR": str(tmp_path / "run"),
        "SEGSTREAM_KAFKA_PORT": str(free_port()),
        "SEGSTREAM_REDIS_PORT": str(free_port()),
        "SEGSTREAM_WEB_PORT": str(web_port := free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "segstream.cli", "demo", "--stop-services"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # the live view's address comes first, so a user can open it before the replay starts
    assert done.stdout.splitlines()[0].startswith(f"live view: http://127.0.0.1:{web_port}/"), done.stdout[:300]
    assert "started the live view pid" in done.stdout and "the live view exited" not in done.stdout
    assert "Uvicorn running on" in (tmp_path / "run" / "logs" / "web.log").read_text()
    assert "segments after the replay:" in done.stdout
    assert "order_placed          2,971" in done.stdout
    # the table after the replay is the oracle's final state of the bundled sample
    expected = oracle.final_state(sample_path())["segment"].value_counts()
    table = done.stdout.split("segments after the replay:")[1].split("latest shifts:")[0]
    for segment, count in expected.items():
        assert re.search(rf"^  {re.escape(segment)} +{count:,} ", table, re.MULTILINE), (segment, count, table)
    assert f"total {expected.sum():,} ".replace(" ", "") in table.replace(" ", "")
    assert "consumed 8,903, applied 8,903" in done.stdout
    assert re.search(r"run 1: [\d,]+ customers, [\d,]+ products .*recommendations fitted", done.stdout), done.stdout
    assert "recommendations      " in done.stdout  # the biggest spender's list
    assert "kafka: stopped pid" in done.stdout and "redis: stopped pid" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cutoffs", "2017-13-01"], "'2017-13-01' is not an ISO date"),
        (["--cutoffs", "2017-09-01", "--horizon", "3m"], "'3m' is not a horizon such as 90d"),
        (["--cutoffs", "2017-09-01,2017-09-01"], "a cutoff is given twice"),
        (["--cutoffs", "2030-01-01"], "cutoff 2030-01-01 + 90 days ends after the history's last purchase"),
        (["--cutoffs", "2001-01-01"], "cutoff 2001-01-01 is before the history's first purchase"),
    ],
)
def test_backtest_bad_cutoffs_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    # checked before any service starts: the ports here have nothing listening
    env = {**os.environ, "SEGSTREAM_RUN_DIR": str(tmp_path), "SEGSTREAM_KAFKA_PORT": str(free_port())}
    env.pop("SEGSTREAM_KAFKA_BOOTSTRAP", None)
    command = [sys.executable, "-m", "segstream", "backtest", "--data", str(EDGE), "--out", str(tmp_path / "out")]
    done = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert message in done.stderr, done.stderr
    assert len([line for line in done.stderr.splitlines() if "Error" in line]) == 1, done.stderr
    assert not (tmp_path / "out" / "figures.json").exists()
