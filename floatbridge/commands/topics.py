"""`floatbridge topics create|list`: apply the topic catalog (schemas.topics) to a Kafka cluster.

Creation is idempotent: topics that already exist are left exactly as they are (reported "exists"),
so running it on every deploy is safe. It never alters partitions or configs of existing topics.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from schemas.topics import Topic, catalog

BOOTSTRAP_ENV = "FLOATBRIDGE_KAFKA_BOOTSTRAP"
DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code


class TopicsError(Exception):
    """The broker refused or could not be reached; message says which topic and why."""


class Admin(Protocol):
    """The slice of kafka-python's KafkaAdminClient used here (fakes implement it in unit tests)."""

    def list_topics(self) -> list[str]: ...

    def create_topics(self, new_topics: Any, **kwargs: Any) -> Any: ...

    def describe_topics(self, topics: list[str] | None = None) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    status: str  # "created" | "exists"


def default_bootstrap() -> str:
    return os.environ.get(BOOTSTRAP_ENV, "").strip() or DEFAULT_BOOTSTRAP


def desired_topics(partitions: int | None = None, prefix: str = "") -> list[Topic]:
    """The catalog, optionally with another partition count and a name prefix (tests use both)."""
    if partitions is not None and partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    base = catalog() if partitions is None else catalog(partitions)
    return [_renamed(t, prefix + t.name) for t in base]


def _renamed(topic: Topic, name: str) -> Topic:
    return Topic(name, topic.key, topic.partitions, topic.retention_ms, topic.compacted, topic.description)


def new_topic_specs(topics: Iterable[Topic], replication_factor: int) -> dict[str, dict[str, Any]]:
    """kafka-python's dict form of CreateTopics input."""
    return {
        t.name: {"num_partitions": t.partitions, "replication_factor": replication_factor, "configs": t.configs()}
        for t in topics
    }


def ensure_topics(admin: Admin, topics: Sequence[Topic], replication_factor: int = 1) -> list[Outcome]:
    """Create the missing topics; existing ones are reported "exists" and not touched."""
    existing = set(admin.list_topics())
    missing = [t for t in topics if t.name not in existing]
    created = _create(admin, missing, replication_factor) if missing else set()
    return [Outcome(t.name, "created" if t.name in created else "exists") for t in topics]


def _create(admin: Admin, topics: list[Topic], replication_factor: int) -> set[str]:
    response = admin.create_topics(new_topic_specs(topics, replication_factor), raise_errors=False)
    created: set[str] = set()
    for row in response.get("topics", []):
        code = int(row.get("error_code", 0))
        if code == 0:
            created.add(row["name"])
        elif code != TOPIC_ALREADY_EXISTS:  # lost a race with another creator: fine
            raise TopicsError(f"cannot create topic {row['name']}: error {code} {row.get('error_message') or ''}".strip())
    return created


def connect(bootstrap: str) -> Admin:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="floatbridge-topics", request_timeout_ms=15000)  # type: ignore[no-any-return]
    except KafkaError as exc:
        raise TopicsError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc


def _partition_counts(admin: Admin, names: list[str]) -> dict[str, int]:
    return {d["name"]: len(d.get("partitions", [])) for d in admin.describe_topics(names)}


def _cmd_create(args: argparse.Namespace) -> int:
    topics = desired_topics(args.partitions, args.prefix)
    admin = connect(args.bootstrap)
    try:
        outcomes = ensure_topics(admin, topics, args.replication_factor)
    finally:
        admin.close()
    for o in outcomes:
        print(f"{o.status:8} {o.name}")
    created = sum(o.status == "created" for o in outcomes)
    print(f"{created} created, {len(outcomes) - created} already existed ({args.bootstrap})")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    topics = desired_topics(None, args.prefix)
    admin = connect(args.bootstrap)
    try:
        existing = set(admin.list_topics())
        present = [t.name for t in topics if t.name in existing]
        counts = _partition_counts(admin, present) if present else {}
    finally:
        admin.close()
    for t in topics:
        state = f"{counts.get(t.name, '?')} partitions" if t.name in existing else "MISSING"
        print(f"{t.name:32} {state:15} {t.description}")
    return 0 if len(present) == len(topics) else 1


def _handle(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except (TopicsError, ValueError) as exc:
            print(f"floatbridge topics: {exc}", file=sys.stderr)
            return 1

    return run


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(sub: Any) -> None:
    parser = sub.add_parser("topics", help="create or list the Kafka topics of the catalog",
                            description="Manage the Kafka topics defined in schemas/topics.py.")
    tsub = parser.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bootstrap", default=default_bootstrap(), metavar="HOST:PORT",
                        help=f"Kafka bootstrap servers (env {BOOTSTRAP_ENV}, default {DEFAULT_BOOTSTRAP})")
    common.add_argument("--prefix", default="", help="prefix every topic name (isolated test environments)")

    create = tsub.add_parser("create", parents=[common], help="create missing topics; existing ones are left alone",
                             description="Create every catalog topic that does not exist yet. Safe to repeat.")
    create.add_argument("--partitions", type=_positive, default=None,
                        help="partitions per new topic (default: the catalog's, 12)")
    create.add_argument("--replication-factor", type=_positive, default=1,
                        help="replicas per partition (default 1: single-broker development cluster)")
    create.set_defaults(func=_handle(_cmd_create))

    lst = tsub.add_parser("list", parents=[common], help="show catalog topics and whether they exist",
                          description="List the catalog topics with their partition count on the broker; "
                          "exit 1 when any is missing.")
    lst.set_defaults(func=_handle(_cmd_list))
