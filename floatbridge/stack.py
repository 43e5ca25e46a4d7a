"""The full distributed run: ingest, two underwriter workers and disbursement as separate processes
against a real Kafka broker and PostgreSQL. Used by `floatbridge up`, the e2e and fault tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

INGEST_PORT = 8080
DISBURSEMENT_PORT = 8082
UNDERWRITER_METRICS_PORTS = (9101, 9102)


@dataclass
class ServiceProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    health_url: str | None
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        if not self.alive():
            return False
        if self.health_url is None:
            return True
        try:
            with urllib.request.urlopen(self.health_url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class StackConfig:
    kafka: str
    database_url: str
    workdir: Path
    ingest_api_key: str
    admin_api_key: str
    buyer_hash_key: str
    topic_partitions: int = 4
    app_id: str = "floatbridge-underwriter"
    underwriter_workers: int = 2
    ingest_port: int = INGEST_PORT
    disbursement_port: int = DISBURSEMENT_PORT
    metrics_port_base: int = UNDERWRITER_METRICS_PORTS[0]  # worker i serves /metrics on base + i
    web_port_base: int = 6066
    # Explicit per-worker ports (tests pick free ones); base + i otherwise. A free base says nothing of base + 1.
    metrics_ports: tuple[int, ...] = ()
    web_ports: tuple[int, ...] = ()
    topic_prefix: str = ""  # isolates a test run's topics, consumer groups and app id
    extra_env: dict[str, str] = field(default_factory=dict)


class Stack:
    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.procs: dict[str, ServiceProcess] = {}

    def env(self) -> dict[str, str]:
        c = self.cfg
        env = dict(os.environ)
        env.update({
            "FLOATBRIDGE_KAFKA_BOOTSTRAP": c.kafka,
            "FLOATBRIDGE_INGEST_KAFKA_BOOTSTRAP": c.kafka,
            "FLOATBRIDGE_INGEST_DATABASE_URL": c.database_url,
            "FLOATBRIDGE_INGEST_API_KEYS": c.ingest_api_key,
            "FLOATBRIDGE_INGEST_BUYER_HASH_KEY": c.buyer_hash_key,
            "FLOATBRIDGE_INGEST_HOST": "127.0.0.1",
            "FLOATBRIDGE_INGEST_PORT": str(c.ingest_port),
            "FLOATBRIDGE_UNDERWRITER_KAFKA_BOOTSTRAP": c.kafka,
            "FLOATBRIDGE_UNDERWRITER_APP_ID": c.app_id,
            "FLOATBRIDGE_UNDERWRITER_PARTITIONS": str(c.topic_partitions),
            "FLOATBRIDGE_DISBURSEMENT_KAFKA_BOOTSTRAP": c.kafka,
            "FLOATBRIDGE_DISBURSEMENT_DATABASE_URL": c.database_url,
            "FLOATBRIDGE_DISBURSEMENT_HTTP_HOST": "127.0.0.1",
            "FLOATBRIDGE_DISBURSEMENT_HTTP_PORT": str(c.disbursement_port),
            "FLOATBRIDGE_DISBURSEMENT_ADMIN_API_KEY": c.admin_api_key,
            # a local stack: the merchants' webhook receivers run on this machine
            "FLOATBRIDGE_DISBURSEMENT_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
            "PYTHONUNBUFFERED": "1",
        })
        if c.topic_prefix:
            from schemas import topics as t

            p = c.topic_prefix
            env.update({
                "FLOATBRIDGE_INGEST_EVENTS_TOPIC": p + t.MARKETPLACE_EVENTS,
                "FLOATBRIDGE_INGEST_REJECTED_TOPIC": p + t.INGEST_REJECTED,
                "FLOATBRIDGE_INGEST_RAW_TOPIC": p + t.MARKETPLACE_RAW,
                "FLOATBRIDGE_INGEST_RAW_GROUP_ID": p + "ingest-raw",
                "FLOATBRIDGE_UNDERWRITER_MARKETPLACE_TOPIC": p + t.MARKETPLACE_EVENTS,
                "FLOATBRIDGE_UNDERWRITER_LOANS_TOPIC": p + t.LOANS,
                "FLOATBRIDGE_UNDERWRITER_LIMITS_TOPIC": p + t.CREDIT_LIMITS,
                "FLOATBRIDGE_UNDERWRITER_OFFERS_TOPIC": p + t.LOAN_OFFERS,
                "FLOATBRIDGE_UNDERWRITER_REJECTED_TOPIC": p + t.INGEST_REJECTED,
                "FLOATBRIDGE_UNDERWRITER_APP_ID": p + c.app_id,
                "FLOATBRIDGE_DISBURSEMENT_TOPIC_PREFIX": p,
                "FLOATBRIDGE_DISBURSEMENT_CONSUMER_GROUP": p + "disbursement",
            })
        env.update(c.extra_env)
        return env

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "floatbridge.cli", *args]

    def prepare(self) -> None:
        """Create topics and migrate the database (both idempotent)."""
        env = self.env()
        subprocess.run(self._cli("topics", "create", "--bootstrap", self.cfg.kafka, "--prefix", self.cfg.topic_prefix,
                                 "--partitions", str(self.cfg.topic_partitions)), env=env, check=True,
                       capture_output=True, timeout=120)
        subprocess.run(self._cli("disbursement", "migrate"), env=env, check=True, capture_output=True, timeout=120)

    def define(self) -> None:
        c, env, logs = self.cfg, self.env(), self.cfg.workdir / "logs"
        self.procs["ingest"] = ServiceProcess(
            "ingest", self._cli("ingest", "serve"), env, f"http://127.0.0.1:{c.ingest_port}/readyz",
            logs / "ingest.log")
        self.procs["disbursement"] = ServiceProcess(
            "disbursement", self._cli("disbursement", "serve"), env,
            f"http://127.0.0.1:{c.disbursement_port}/readyz", logs / "disbursement.log")
        for i in range(c.underwriter_workers):
            wenv = dict(env)
            wenv.update({
                "FLOATBRIDGE_UNDERWRITER_METRICS_PORT": str(_nth_port(c.metrics_ports, c.metrics_port_base, i)),
                "FLOATBRIDGE_UNDERWRITER_WEB_PORT": str(_nth_port(c.web_ports, c.web_port_base, i)),
                "FLOATBRIDGE_UNDERWRITER_DATA_DIR": str(c.workdir / f"underwriter-{i}"),
                "FLOATBRIDGE_UNDERWRITER_STORE": env.get("FLOATBRIDGE_UNDERWRITER_STORE", "memory://"),
            })
            port = wenv["FLOATBRIDGE_UNDERWRITER_METRICS_PORT"]
            self.procs[f"underwriter-{i}"] = ServiceProcess(
                f"underwriter-{i}", self._cli("underwriter", "worker"), wenv,
                f"http://127.0.0.1:{port}/metrics", logs / f"underwriter-{i}.log")

    def start(self, wait: float = 90.0) -> None:
        if not self.procs:
            self.define()
        try:
            for p in self.procs.values():
                p.start()
            self.wait_healthy(wait)
        except BaseException:
            self.stop()  # a failed start must not leave the other services running (orphaned, holding ports)
            raise

    def wait_healthy(self, wait: float = 90.0, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + wait
        pending = [self.procs[n] for n in (names or list(self.procs))]
        while pending and time.monotonic() < deadline:
            for p in list(pending):
                if not p.alive():
                    raise RuntimeError(f"{p.name} exited with {p.proc.returncode if p.proc else '?'}; "
                                       f"see {p.log_path}:\n{tail(p.log_path)}")
                if p.healthy():
                    pending.remove(p)
            time.sleep(0.3)
        if pending:
            raise RuntimeError("not healthy in time: " + ", ".join(p.name for p in pending))

    def restart(self, name: str, wait: float = 90.0) -> None:
        self.procs[name].stop()
        self.procs[name].start()
        self.wait_healthy(wait, [name])

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.stop()


def _nth_port(explicit: tuple[int, ...], base: int, i: int) -> int:
    return explicit[i] if i < len(explicit) else base + i


def free_ports(n: int) -> tuple[int, ...]:
    """n distinct free ports (all held open while choosing, so none is picked twice)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return tuple(int(s.getsockname()[1]) for s in socks)
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def from_env(workdir: Path, environ: Mapping[str, str] | None = None) -> StackConfig:
    env = os.environ if environ is None else environ
    return StackConfig(
        kafka=env.get("FLOATBRIDGE_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
        database_url=env.get("FLOATBRIDGE_DATABASE_URL",
                             "postgresql+psycopg2://floatbridge:floatbridge@127.0.0.1:55432/floatbridge"),
        workdir=workdir,
        ingest_api_key=env.get("FLOATBRIDGE_UP_INGEST_API_KEY", "dev-marketplace-key"),
        admin_api_key=env.get("FLOATBRIDGE_UP_ADMIN_API_KEY", "dev-admin-key"),
        buyer_hash_key=env.get("FLOATBRIDGE_UP_BUYER_HASH_KEY", "dev-buyer-hash-key-change-me"),
    )
