"""Where the local stack is, and whether it answers (a benchmark without it is 'not run', never faked)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_KAFKA = "127.0.0.1:19092"
DEFAULT_DB = "postgresql+psycopg2://floatbridge:floatbridge@127.0.0.1:55432/floatbridge"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def kafka() -> str | None:
    """Broker address if one answers (FLOATBRIDGE_BENCH_KAFKA, FLOATBRIDGE_TEST_KAFKA or the local default)."""
    addr = os.environ.get("FLOATBRIDGE_BENCH_KAFKA") or os.environ.get("FLOATBRIDGE_TEST_KAFKA") or DEFAULT_KAFKA
    host, _, port = addr.split(",")[0].rpartition(":")
    return addr if _reachable(host or "127.0.0.1", int(port)) else None


def database() -> str | None:
    url = (os.environ.get("FLOATBRIDGE_BENCH_DATABASE_URL") or os.environ.get("FLOATBRIDGE_TEST_DATABASE_URL")
           or DEFAULT_DB)
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url, connect_args={"connect_timeout": 2} if url.startswith("postgresql") else {})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception:  # any failure to connect means not available
        return None
    return url


def olist_data() -> Path | None:
    path = Path(os.environ.get("FLOATBRIDGE_OLIST_DATA") or ROOT.parent / "shared" / "data" / "olist")
    return path if (path / "olist_orders_dataset.csv.gz").exists() or (path / "olist_orders_dataset.csv").exists() \
        else None


def run_id(prefix: str = "bench") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        admin.close()


def delete_topics(bootstrap: str, names: list[str]) -> None:
    from kafka.admin import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.delete_topics(names)
        finally:
            admin.close()
    except Exception:  # cleanup is best effort: a leftover bench topic harms nothing
        pass


def drop_schema(url: str, schema: str) -> None:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
    except Exception:  # best effort, as above
        pass


def delete_topics_with_prefix(bootstrap: str, prefix: str) -> None:
    """Delete every topic whose name starts with `prefix` (Faust's changelog and assignor topics too)."""
    from kafka.admin import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            names = [t for t in admin.list_topics() if t.startswith(prefix)]
            if names:
                admin.delete_topics(names)
        finally:
            admin.close()
    except Exception:  # best effort
        pass
