"""`floatbridge topics` against a fake admin client: idempotence and error reporting."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from floatbridge.commands import topics as cmd
from schemas.topics import CREDIT_LIMITS, catalog

pytestmark = pytest.mark.unit


def run_cli(argv: list[str]) -> int:
    """Only this area's subcommands: other areas' CLIs are not needed here."""
    parser = argparse.ArgumentParser(prog="floatbridge")
    cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


class FakeAdmin:
    def __init__(self, existing: dict[str, int] | None = None, fail: dict[str, int] | None = None) -> None:
        self.topics: dict[str, dict[str, Any]] = {n: {"num_partitions": p} for n, p in (existing or {}).items()}
        self.fail = fail or {}
        self.create_calls: list[dict[str, Any]] = []

    def list_topics(self) -> list[str]:
        return list(self.topics)

    def create_topics(self, new_topics: Any, **kwargs: Any) -> Any:
        assert kwargs.get("raise_errors") is False
        self.create_calls.append(new_topics)
        rows = []
        for name, spec in new_topics.items():
            code = self.fail.get(name, 36 if name in self.topics else 0)
            if code == 0:
                self.topics[name] = spec
            rows.append({"name": name, "error_code": code, "error_message": None if code == 0 else "boom"})
        return {"topics": rows}

    def describe_topics(self, topics: list[str] | None = None) -> list[dict[str, Any]]:
        return [{"name": n, "partitions": [{}] * self.topics[n]["num_partitions"]} for n in topics or []]

    def close(self) -> None:
        pass


def test_first_run_creates_whole_catalog_with_configs_and_second_run_changes_nothing() -> None:
    admin = FakeAdmin()
    wanted = cmd.desired_topics(3, "x.")
    first = cmd.ensure_topics(admin, wanted)
    assert [o.status for o in first] == ["created"] * len(catalog())
    assert admin.topics[f"x.{CREDIT_LIMITS}"]["configs"]["cleanup.policy"] == "compact"
    assert {spec["num_partitions"] for spec in admin.topics.values()} == {3}

    second = cmd.ensure_topics(admin, wanted)
    assert [o.status for o in second] == ["exists"] * len(catalog())
    assert len(admin.create_calls) == 1  # nothing sent the second time


def test_existing_topic_is_left_alone_even_with_other_partition_count() -> None:
    admin = FakeAdmin(existing={CREDIT_LIMITS: 1})
    outcomes = {o.name: o.status for o in cmd.ensure_topics(admin, cmd.desired_topics(6))}
    assert outcomes[CREDIT_LIMITS] == "exists"
    assert admin.topics[CREDIT_LIMITS]["num_partitions"] == 1
    assert CREDIT_LIMITS not in admin.create_calls[0]


def test_topic_created_concurrently_by_someone_else_counts_as_existing() -> None:
    admin = FakeAdmin(fail={CREDIT_LIMITS: 36})
    outcomes = {o.name: o.status for o in cmd.ensure_topics(admin, cmd.desired_topics(2))}
    assert outcomes[CREDIT_LIMITS] == "exists"


def test_broker_refusal_names_the_topic() -> None:
    admin = FakeAdmin(fail={CREDIT_LIMITS: 38})  # INVALID_REPLICATION_FACTOR
    with pytest.raises(cmd.TopicsError, match=CREDIT_LIMITS):
        cmd.ensure_topics(admin, cmd.desired_topics(2))


def test_zero_partitions_is_rejected_with_clear_message() -> None:
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        cmd.desired_topics(0)


def test_bootstrap_defaults_to_env_then_dev_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cmd.BOOTSTRAP_ENV, raising=False)
    assert cmd.default_bootstrap() == "127.0.0.1:19092"
    monkeypatch.setenv(cmd.BOOTSTRAP_ENV, "kafka:9092")
    assert cmd.default_bootstrap() == "kafka:9092"


def test_cli_create_prints_status_per_topic(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    admin = FakeAdmin(existing={CREDIT_LIMITS: 2})
    monkeypatch.setattr(cmd, "connect", lambda bootstrap: admin)
    assert run_cli(["topics", "create", "--partitions", "2", "--bootstrap", "h:1"]) == 0
    out = capsys.readouterr().out
    assert f"exists   {CREDIT_LIMITS}" in out
    assert f"{len(catalog()) - 1} created, 1 already existed (h:1)" in out


def test_cli_list_exits_1_when_a_topic_is_missing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cmd, "connect", lambda bootstrap: FakeAdmin(existing={CREDIT_LIMITS: 4}))
    assert run_cli(["topics", "list"]) == 1
    out = capsys.readouterr().out
    assert "4 partitions" in out and "MISSING" in out


def test_cli_rejects_non_positive_partitions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_cli(["topics", "create", "--partitions", "0"])
    assert "must be >= 1" in capsys.readouterr().err
