"""`floatbridge disbursement ...` and `floatbridge merchants ...` subcommands."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import threading
import time
from typing import Any

log = logging.getLogger("floatbridge.disbursement")


def register(sub: Any) -> None:
    d = sub.add_parser("disbursement", help="offers, loans, ledger, payouts, collections and webhooks",
                       description="Run or operate the disbursement service (FLOATBRIDGE_DISBURSEMENT_* settings).")
    dsub = d.add_subparsers(dest="disbursement_command", metavar="ACTION")
    p = dsub.add_parser("serve", help="consume Kafka, serve the HTTP API and run the outbox/webhook/aging loops")
    p.add_argument("--no-http", action="store_true", help="do not start the HTTP API")
    p.add_argument("--no-consumer", action="store_true", help="do not consume Kafka")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between background loop passes")
    p.set_defaults(func=_serve)
    p = dsub.add_parser("migrate", help="apply the database migrations (PostgreSQL or SQLite)")
    p.set_defaults(func=_migrate)
    p = dsub.add_parser("relay", help="publish unsent outbox rows to Kafka once")
    p.set_defaults(func=_relay)
    p = dsub.add_parser("age", help="age loans and expire offers as of a time (default: latest event time)")
    p.add_argument("--now", help="RFC 3339 time to age at")
    p.set_defaults(func=_age)
    p = dsub.add_parser("dispatch", help="deliver due webhooks once")
    p.set_defaults(func=_dispatch)
    p = dsub.add_parser("recover", help="re-drive payouts stuck after acceptance and pending refunds")
    p.set_defaults(func=_recover)
    p = dsub.add_parser("payouts", help="payouts parked after failing past the cap: list, resume or cancel "
                                        "(docs/runbook.md, Payout parked)")
    p.add_argument("action", choices=("parked", "resume", "cancel"))
    p.add_argument("loan_id", nargs="?", help="the parked loan (resume, cancel)")
    p.add_argument("--reason", default="", help="cancel: what the rail's owners confirmed (audited)")
    p.set_defaults(func=_payouts)
    p = dsub.add_parser("webhooks-replay", help="queue dead-lettered webhooks again and re-enable their endpoints")
    p.add_argument("--merchant", help="only this merchant's dead letters")
    p.set_defaults(func=_webhooks_replay)
    p = dsub.add_parser("audit-log", help="print the append-only audit trail (decisions, payouts, operator "
                                          "actions) as JSON lines")
    p.add_argument("--merchant", help="only this merchant's rows")
    p.set_defaults(func=_audit_log)
    p = dsub.add_parser("kill-switch", help="pause (on) or resume (off) all acceptances")
    p.add_argument("state", choices=("on", "off"))
    p.set_defaults(func=_kill)
    d.set_defaults(func=lambda a: d.print_help() or 2)

    m = sub.add_parser("merchants", help="manage merchant webhook endpoints, secrets and API keys",
                       description="Manage merchants in the disbursement database.")
    msub = m.add_subparsers(dest="merchants_command", metavar="ACTION")
    p = msub.add_parser("add", help="register or update a merchant; prints its webhook secret")
    p.add_argument("merchant_id")
    p.add_argument("--url", help="webhook endpoint URL")
    p.add_argument("--events", default="", help="comma-separated event types (default: all)")
    p.add_argument("--currency", help="ISO 4217 currency")
    p.add_argument("--api-key", help="merchant API key (generated and printed when omitted)")
    p.set_defaults(func=_add)
    p = msub.add_parser("rotate-secret", help="make a new webhook secret current; the previous keeps signing "
                                              "for WEBHOOK_SECRET_OVERLAP_SECONDS")
    p.add_argument("merchant_id")
    p.add_argument("--drop-previous", action="store_true", help="invalidate the previous secret now")
    p.set_defaults(func=_rotate)
    p = msub.add_parser("set-key", help="set the merchant's API key (stored as a sha256 hash)")
    p.add_argument("merchant_id")
    p.add_argument("--api-key", help="the key (generated and printed when omitted)")
    p.set_defaults(func=_set_key)
    p = msub.add_parser("list", help="list merchants (never shows secrets)")
    p.set_defaults(func=_list)
    m.set_defaults(func=lambda a: m.print_help() or 2)


def _service(**kw: Any) -> Any:
    from services.disbursement.bootstrap import bootstrap

    return bootstrap(**kw)


def _migrate(_: argparse.Namespace) -> int:
    from services.disbursement.bootstrap import make_engine
    from services.disbursement.migrations import current, upgrade
    from services.disbursement.settings import load_settings

    engine = make_engine(load_settings().database_url)
    upgrade(engine)
    print(f"database at revision {current(engine)}")
    return 0


def _publisher() -> Any:
    from services.disbursement.adapters.kafka import KafkaPublisher
    from services.disbursement.settings import load_settings

    return KafkaPublisher(load_settings().kafka_bootstrap)


def _relay(_: argparse.Namespace) -> int:
    print(f"published {_service(bus=_publisher()).relay_outbox()} events")
    return 0


def _age(args: argparse.Namespace) -> int:
    from services.common.timeutil import parse_rfc3339

    svc = _service()
    now = parse_rfc3339(args.now) if args.now else svc.event_clock()
    if now is None:
        print("no event consumed yet; pass --now", file=sys.stderr)
        return 1
    svc.age(now)
    print(f"aged as of {args.now or now.isoformat()}")
    return 0


def _dispatch(_: argparse.Namespace) -> int:
    svc = _service()
    print(f"{svc.dispatch_webhooks(svc.clock())} webhook attempts")
    return 0


def _recover(_: argparse.Namespace) -> int:
    print(f"{_service().recover()} payouts completed")
    return 0


def _payouts(args: argparse.Namespace) -> int:
    svc = _service()
    if args.action == "parked":
        for row in svc.parked_payouts():
            print(json.dumps(row, sort_keys=True))
        return 0
    if not args.loan_id:
        print(f"payouts {args.action} needs a LOAN_ID", file=sys.stderr)
        return 2
    try:
        if args.action == "resume":
            paid = svc.resume_payout(args.loan_id)
            print(f"{args.loan_id}: {'paid' if paid else 'payout failed again (counted from zero)'}")
            return 0 if paid else 1
        if not args.reason:
            print("payouts cancel needs --reason (what the payout API's owners confirmed)", file=sys.stderr)
            return 2
        svc.cancel_parked_payout(args.loan_id, args.reason)
        print(f"{args.loan_id}: cancelled")
        return 0
    except (KeyError, ValueError) as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 1


def _webhooks_replay(args: argparse.Namespace) -> int:
    print(f"{_service().replay_dead_webhooks(args.merchant)} dead-lettered webhooks queued again")
    return 0


def _audit_log(args: argparse.Namespace) -> int:
    for row in _service().audit_trail(args.merchant):
        print(json.dumps({**row, "at": row["at"].isoformat()}, sort_keys=True, default=str))
    return 0


def _kill(args: argparse.Namespace) -> int:
    _service().set_kill_switch(args.state == "on")
    print(f"kill switch {args.state}")
    return 0


def _add(args: argparse.Namespace) -> int:
    api_key = args.api_key or "fbk_" + secrets.token_urlsafe(24)
    events = tuple(e.strip() for e in args.events.split(",") if e.strip())
    try:
        secret = _service().register_merchant(args.merchant_id, args.url, api_key, None, args.currency, events)
    except ValueError as exc:
        print(f"floatbridge merchants add: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"merchant_id": args.merchant_id, "webhook_secret": secret,
                      "api_key": api_key if not args.api_key else "<as given>"}))
    return 0


def _rotate(args: argparse.Namespace) -> int:
    try:
        secret = _service().rotate_secret(args.merchant_id, None, args.drop_previous)
    except KeyError as exc:
        print(f"floatbridge merchants rotate-secret: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"merchant_id": args.merchant_id, "webhook_secret": secret}))
    return 0


def _set_key(args: argparse.Namespace) -> int:
    api_key = args.api_key or "fbk_" + secrets.token_urlsafe(24)
    try:
        _service().set_api_key(args.merchant_id, api_key)
    except (KeyError, ValueError) as exc:
        print(f"floatbridge merchants set-key: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"merchant_id": args.merchant_id, "api_key": api_key if not args.api_key else "<as given>"}))
    return 0


def _list(_: argparse.Namespace) -> int:
    for row in _service().list_merchants():
        print(json.dumps(row))
    return 0


def _loops(svc: Any, stop: threading.Event, interval: float) -> None:
    """Outbox relay, webhook dispatch, payout recovery and aging by the latest event time."""
    while not stop.is_set():
        try:
            svc.relay_outbox()
            svc.dispatch_webhooks(svc.clock())
            svc.recover()
            clock = svc.event_clock()
            if clock is not None:
                svc.age(clock)
        except Exception:  # keep the loop alive; the next pass retries
            log.exception("background loop pass failed")
        stop.wait(interval)


def contract_of(settings: Any) -> Any:
    """The marketplace-record checks the consumer applies, with this service's future skew."""
    from schemas.contract_check import Contract

    skew = settings.max_future_skew_seconds
    return Contract(max_future_skew_seconds=None if skew < 0 else float(skew))


def _serve(args: argparse.Namespace) -> int:
    from services.disbursement.adapters.kafka import consume
    from services.disbursement.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_settings()
    svc = _service(settings=settings, bus=_publisher(), auto_relay=False)
    stop = threading.Event()
    threads = [threading.Thread(target=_loops, args=(svc, stop, args.interval), name="loops", daemon=True)]
    if not args.no_consumer:
        threads.append(threading.Thread(
            target=consume, args=(svc, settings.kafka_bootstrap, settings.consumer_group, settings.topic_prefix, stop),
            kwargs={"contract": contract_of(settings)}, name="consumer", daemon=True))
    for t in threads:
        t.start()
    try:
        if args.no_http:
            while all(t.is_alive() for t in threads):
                time.sleep(1)
        else:
            import uvicorn

            from services.disbursement.adapters.http_api import create_app

            uvicorn.run(create_app(svc), host=settings.http_host, port=settings.http_port, log_level="info")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    return 0
