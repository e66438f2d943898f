"""Bad input and absent services: one line on stderr, a non-zero exit, no traceback, nothing lost."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segstream.demo import sample_path
from tests.conftest import REAL_SAMPLE, free_port

TRANSACTIONS = Path(__file__).parent / "fixtures" / "transactions"


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEGSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "segstream", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_line_error(done: subprocess.CompletedProcess, code: int = 1) -> str:
    """The command failed with ``code`` and said why in exactly one ``Error:`` line, no traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def _mapping(tmp_path: Path, time_format: str) -> Path:
    path = tmp_path / "mapping.toml"
    path.write_text(
        '[columns]\ncustomer = "customer"\ntime = "date"\n'
        f'time_format = "{time_format}"\namount = "amount"\ndelimiter = "whitespace"\nsource = "cdnow"\n'
    )
    return path


def _log(tmp_path: Path, rows: int) -> Path:
    """A CDNOW-style log of ``rows`` rows, dates as YYYYMMDD (a third of them with a day above 12)."""
    lines = ["customer date amount"]
    for i in range(rows):
        lines.append(f"{i % 50:05d} 1997{1 + i % 12:02d}{1 + i % 28:02d} {10 + i % 7}.50")
    path = tmp_path / "log.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("command", ["inspect", "replay"])
def test_a_date_format_that_matches_no_row_is_refused(tmp_path: Path, command: str) -> None:
    log, rejects = _log(tmp_path, 300), tmp_path / "rejects.csv"
    args = ["--source", "transactions", "--data", str(log), "--mapping", str(_mapping(tmp_path, "%d.%m.%Y"))]
    env = {"SEGSTREAM_RUN_DIR": str(tmp_path / "run"), "SEGSTREAM_KAFKA_PORT": str(free_port())}
    line = _one_line_error(_run(command, *args, "--rejects", str(rejects), env=env))
    assert "300 of 300 rows (100.0%) rejected as 'bad time'" in line
    assert "column 'date' with format '%d.%m.%Y' gives no time for '19970101', '19970202', '19970303'" in line
    written = rejects.read_text().splitlines()
    assert written[0] == "file,key,reason,kind,value" and written[1] == "log.txt,0,bad time,rejected,19970101"
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was sent, no checkpoint written


def test_a_swapped_day_and_month_is_refused_and_a_small_share_passes(tmp_path: Path) -> None:
    log = _log(tmp_path, 300)
    args = ["inspect", "--source", "transactions", "--data", str(log), "--mapping", str(_mapping(tmp_path, "%Y%d%m"))]
    line = _one_line_error(_run(*args))
    assert "rejected as 'bad time'" in line and "format '%Y%d%m'" in line  # months 13+ do not parse: most rows
    allowed = _run(*args, "--max-rejects", "0.9")
    assert allowed.returncode == 0, allowed.stderr
    assert "rejected        " in allowed.stdout


def _olist_copy(tmp_path: Path) -> Path:
    out = tmp_path / "olist"
    shutil.copytree(REAL_SAMPLE, out)
    return out


@pytest.mark.parametrize(
    "name", ["olist_order_items_dataset.csv", "olist_order_payments_dataset.csv", "olist_order_reviews_dataset.csv",
             "olist_orders_dataset.csv"],
)  # fmt: skip
def test_a_csv_cut_in_the_middle_of_a_line_is_refused(tmp_path: Path, name: str) -> None:
    data = _olist_copy(tmp_path)
    content = (data / name).read_bytes()
    (data / name).write_bytes(content[: len(content) // 2])
    line = _one_line_error(_run("inspect", "--data", str(data)))
    assert f"{name} in {data} looks truncated: it ends in the middle of a row" in line


def test_an_orders_csv_with_only_a_header_is_refused(tmp_path: Path) -> None:
    data = _olist_copy(tmp_path)
    orders = data / "olist_orders_dataset.csv"
    orders.write_text(orders.read_text().splitlines()[0] + "\n")
    assert "olist_orders_dataset.csv" in _one_line_error(_run("inspect", "--data", str(data)))
    assert "has a header but no rows" in _one_line_error(_run("inspect", "--data", str(data)))


def test_an_orders_csv_cut_at_a_line_break_is_refused_with_a_hint(tmp_path: Path) -> None:
    data = _olist_copy(tmp_path)
    orders = data / "olist_orders_dataset.csv"
    orders.write_text("\n".join(orders.read_text().splitlines()[:500]) + "\n")
    line = _one_line_error(_run("inspect", "--data", str(data)))
    assert "rejected as 'unknown_order'" in line and "is olist_orders_dataset.csv truncated" in line


@pytest.mark.parametrize("command", [["segments"], ["profile", "someone"], ["thresholds"]])
def test_reading_commands_without_redis_say_so_in_one_line(command: list[str]) -> None:
    port = free_port()
    line = _one_line_error(_run(*command, env={"SEGSTREAM_REDIS_PORT": str(port)}))
    assert f"cannot reach Redis at 127.0.0.1:{port}" in line and "segstream services up" in line


def test_global_options_are_accepted_after_the_subcommand() -> None:
    port = free_port()
    line = _one_line_error(_run("segments", "--latest", "3", "--redis-port", str(port)))
    assert f"cannot reach Redis at 127.0.0.1:{port}" in line  # the option reached the settings


def test_redis_password_never_shows_in_the_error() -> None:
    port = free_port()
    line = _one_line_error(_run("segments", env={"SEGSTREAM_REDIS_URL": f"redis://me:s3cret@127.0.0.1:{port}/0"}))
    assert "s3cret" not in line and f"127.0.0.1:{port}" in line


def test_from_not_before_until_and_bad_dates_name_the_option(tmp_path: Path) -> None:
    env = {"SEGSTREAM_RUN_DIR": str(tmp_path / "run")}
    base = ["replay", "--data", str(sample_path())]
    line = _one_line_error(_run(*base, "--from", "2018-01-01", "--until", "2018-01-01", env=env), code=2)
    assert "--from 2018-01-01T00:00:00+00:00 is not before --until 2018-01-01T00:00:00+00:00" in line
    line = _one_line_error(_run(*base, "--until", "2018-13-01", env=env), code=2)
    assert "Invalid value for --until: '2018-13-01'" in line
    assert not (tmp_path / "run").exists()  # no topics, no checkpoint: nothing happened


def test_a_taken_web_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_line_error(_run("worker", "--web-port", str(port), env={"SEGSTREAM_RUN_DIR": str(tmp_path)}))
    assert f"web port 127.0.0.1:{port} is taken" in line


def test_services_up_with_a_taken_port_leaves_nothing_running_and_status_tells_a_death(tmp_path: Path) -> None:
    env = {"SEGSTREAM_RUN_DIR": str(tmp_path / "run"), "SEGSTREAM_KAFKA_PORT": str(free_port())}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        line = _one_line_error(_run("services", "up", env={**env, "SEGSTREAM_REDIS_PORT": str(taken.getsockname()[1])}))
    assert "is already in use" in line
    status = _run("services", "status", env={**env, "SEGSTREAM_REDIS_PORT": str(free_port())})
    assert "kafka  embedded" in status.stdout and "not started" in status.stdout  # the broker was stopped again

    env["SEGSTREAM_REDIS_PORT"] = str(free_port())
    assert _run("services", "up", env=env).returncode == 0
    try:
        state = (tmp_path / "run" / "services.json").read_text()
        import json

        os.kill(json.loads(state)["redis"]["pid"], signal.SIGKILL)
        time.sleep(0.5)
        status = _run("services", "status", env=env)
        assert status.returncode == 1
        assert "but no longer running" in status.stdout and "redis.log" in status.stdout
    finally:
        _run("services", "down", env=env)


@pytest.mark.integration
def test_a_worker_says_once_that_redis_is_away_and_stops_cleanly(workers, tmp_path: Path) -> None:
    """Redis down: one warning with the reason, then short lines with backoff, never a traceback;
    a normal stop logs no error (it used to log an agent crash)."""
    from replay.olist import load_olist
    from replay.producer import replay_history
    from segstream.demo import start_worker, stop_worker

    summary = __import__("asyncio").run(replay_history(load_olist(REAL_SAMPLE), workers.settings))
    away = workers.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    log = tmp_path / "away.log"
    proc = start_worker(away, log)
    deadline = time.monotonic() + 60
    while "retried in 2.0 s" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    stop_worker(proc)
    text = log.read_text()
    assert text.count("is unavailable") == 1 and "retried in 2.0 s" in text, text[-3000:]
    assert "Traceback" not in text and "[ERROR]" not in text, text[-3000:]

    workers.start()
    workers.wait_for_end(summary)
    workers.stop()
    text = workers.log_text()
    assert "Crashed" not in text and "[ERROR]" not in text and "Traceback" not in text, text


@pytest.mark.integration
def test_a_broker_killed_mid_replay_is_one_line_and_the_checkpoint_resumes(tmp_path: Path) -> None:
    from segstream.services import services_down, services_up
    from segstream.settings import Settings

    settings = Settings(run_dir=tmp_path / "run", kafka_port=free_port(), redis_port=free_port())
    services_up(settings)
    env = {
        "SEGSTREAM_RUN_DIR": str(settings.run_dir),
        "SEGSTREAM_KAFKA_PORT": str(settings.kafka_port),
        "SEGSTREAM_REDIS_PORT": str(settings.redis_port),
        "SEGSTREAM_REPLAY_BATCH": "200",
    }
    try:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SEGSTREAM_")}
        replay = subprocess.Popen(
            [sys.executable, "-m", "segstream", "replay", "--data", str(sample_path()), "--speed", "3000000"],
            env={**clean, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        checkpoints = settings.run_dir / "checkpoints"
        deadline = time.monotonic() + 60
        while not (checkpoints.exists() and any(checkpoints.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.1)
        import json

        os.kill(json.loads((settings.run_dir / "services.json").read_text())["kafka"]["pid"], signal.SIGKILL)
        stdout, stderr = replay.communicate(timeout=120)
        done = subprocess.CompletedProcess(replay.args, replay.returncode, stdout, stderr)
        line = _one_line_error(done)
        assert "lost the Kafka broker at 127.0.0.1:" in line and "run the same command again to resume" in line
        assert len(stderr.strip().splitlines()) <= 5, stderr  # not 40 s of client errors
        assert any(checkpoints.iterdir())  # the acknowledged part is kept
    finally:
        services_down(settings)


def test_the_request_timeout_follows_the_group_timeouts_and_never_undercuts_the_session() -> None:
    from pydantic import ValidationError

    from segstream.settings import Settings

    assert Settings(broker_session_timeout=6, broker_rebalance_timeout=5).request_timeout == 16
    assert Settings(broker_session_timeout=30, broker_rebalance_timeout=60).request_timeout == 70
    assert Settings(broker_request_timeout=20).request_timeout == 20
    with pytest.raises(ValidationError, match="must be at least broker_session_timeout"):
        Settings(broker_session_timeout=6, broker_request_timeout=5)
