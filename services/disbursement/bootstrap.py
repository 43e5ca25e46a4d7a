"""Wire the disbursement service from settings and real or fake adapters. Nothing connects at import."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from services.common.timeutil import utc_now
from services.disbursement.adapters.metrics import DisbursementMetrics
from services.disbursement.ports import Clock, PayoutRail, Publisher, WebhookTransport
from services.disbursement.service import DisbursementService
from services.disbursement.settings import DisbursementSettings, load_settings


def make_engine(db_url: str, schema: str | None = None, pool_size: int = 10, scratch: bool = False) -> sa.Engine:
    """An engine for PostgreSQL (optionally pinned to one schema) or SQLite (embedded mode).

    `scratch` (SQLite files only): a throwaway database rebuilt by every run (the embedded demo and
    replays), so commits need not survive a crash: synchronous=OFF. Never for a database that is kept."""
    if db_url.startswith("sqlite"):
        memory = db_url in ("sqlite://", "sqlite:///:memory:")
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
        if memory:
            kwargs["poolclass"] = sa.pool.StaticPool
        engine = sa.create_engine(db_url, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: a commit survives a process crash; only an OS crash may lose the last ones.
                # A scratch database is recreated on every run: OFF (no syncs at all).
                cur.execute("PRAGMA synchronous=OFF" if scratch else "PRAGMA synchronous=NORMAL")
                if scratch:
                    cur.execute("PRAGMA temp_store=MEMORY")
                cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

        return engine
    connect_args = {"options": f"-csearch_path={schema}"} if schema else {}
    return sa.create_engine(db_url, pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True,
                            connect_args=connect_args)


def http_transport(timeout: float, allow_private: bool = False) -> WebhookTransport:
    """POST a signed delivery. Redirects are not followed (a 3xx is a failed attempt), the answer's body is
    never read (a huge or endless one costs nothing), and the URL is checked again when called: its host is
    resolved once, every address must be one Floatbridge may call (never loopback, private, link-local or
    metadata ones unless allowed), and the connection goes to one of exactly those addresses (the merchant's
    host kept in Host and TLS SNI), so a name rebinding between the check and the connection reaches nothing
    else (adapters/webhook_http.py)."""
    from services.disbursement.adapters.webhook_http import pinned_transport

    return pinned_transport(timeout, allow_private)


def bootstrap(
    settings: DisbursementSettings | None = None,
    *,
    db_url: str | None = None,
    engine: sa.Engine | None = None,
    db_schema: str | None = None,
    bus: Publisher | None = None,
    rail: PayoutRail | None = None,
    transport: WebhookTransport | None = None,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    migrate: bool | None = None,
    auto_relay: bool | None = None,
) -> DisbursementService:
    """Build the service. With SQLite the migrations run by default (embedded mode); with PostgreSQL
    run `floatbridge disbursement migrate` first (or pass migrate=True). `auto_relay` publishes the
    outbox to `bus` after every call (default: on when a bus is given and the database is SQLite)."""
    settings = settings or load_settings()
    url = db_url or settings.database_url
    engine = engine or make_engine(url, db_schema)
    is_sqlite = engine.dialect.name == "sqlite"
    if migrate if migrate is not None else is_sqlite:
        from services.disbursement.migrations import upgrade

        upgrade(engine)
    clock = clock or utc_now
    if rail is None:
        from services.disbursement.adapters.payout_rails import HttpRail, SandboxRail

        rail = HttpRail(settings.payout_api_url, settings.payout_api_key) if settings.payout_rail == "http" \
            else SandboxRail(engine)
    metrics = DisbursementMetrics(registry)
    metrics.attach_state(engine, clock, settings.kill_switch)
    return DisbursementService(
        engine=engine, settings=settings, rail=rail,
        transport=transport or http_transport(settings.webhook_timeout_seconds, settings.webhook_allow_private_targets),
        clock=clock, metrics=metrics, publisher=bus,
        auto_relay=auto_relay if auto_relay is not None else (bus is not None and is_sqlite),
    )
