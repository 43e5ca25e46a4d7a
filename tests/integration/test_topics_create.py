"""`floatbridge topics create` against the real broker: creates the catalog once, then is a no-op."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from schemas.topics import catalog

pytestmark = pytest.mark.integration


def _topics(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLOATBRIDGE_KAFKA_BOOTSTRAP": bootstrap}
    code = "import sys; from floatbridge.commands import topics as t; import argparse; " \
           "p = argparse.ArgumentParser(); t.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    return subprocess.run([sys.executable, "-c", code, "topics", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_create_twice_second_run_reports_all_existing_and_changes_nothing(
    kafka_bootstrap: str, fresh_topic_prefix: str
) -> None:
    from kafka import KafkaAdminClient

    names = [fresh_topic_prefix + t.name for t in catalog()]
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="test-topics")
    try:
        first = _topics(kafka_bootstrap, "create", "--prefix", fresh_topic_prefix, "--partitions", "3")
        assert first.returncode == 0, first.stderr
        assert first.stdout.count("created ") == len(names)
        before = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(names)}
        assert before == dict.fromkeys(names, 3)

        # A different partition count on the second run must not alter anything.
        second = _topics(kafka_bootstrap, "create", "--prefix", fresh_topic_prefix, "--partitions", "5")
        assert second.returncode == 0, second.stderr
        assert second.stdout.count("exists ") == len(names)
        assert f"0 created, {len(names)} already existed" in second.stdout
        after = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(names)}
        assert after == before

        listed = _topics(kafka_bootstrap, "list", "--prefix", fresh_topic_prefix)
        assert listed.returncode == 0 and "MISSING" not in listed.stdout
    finally:
        admin.delete_topics([n for n in names if n in set(admin.list_topics())])
        admin.close()
