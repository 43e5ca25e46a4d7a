"""Messages produced with kafka-python reach a real Faust agent on the test broker and land in its Table."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

APP = Path(__file__).parent / "faust_apps" / "roundtrip_app.py"
TIMEOUT_S = 60.0


def _wait_for_result(proc: subprocess.Popen[bytes], result: Path, deadline: float) -> dict[str, int]:
    while time.monotonic() < deadline:
        if result.exists():
            return dict(json.loads(result.read_text()))
        if proc.poll() is not None:
            raise AssertionError(f"Faust worker exited early with code {proc.returncode}")
        time.sleep(0.2)
    raise AssertionError(f"Faust worker wrote no table within {TIMEOUT_S}s")


def test_values_produced_with_kafka_python_are_summed_into_faust_table(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    from kafka import KafkaAdminClient, KafkaProducer

    topic = unique_name("fb-rt").replace("_", "-")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="test-roundtrip")
    # One partition to match the Table's partition count (Faust requires co-partitioning).
    admin.create_topics({topic: {"num_partitions": 1, "replication_factor": 1}})
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for key, value in [("m-1", 100), ("m-2", 5), ("m-1", 23)]:
        producer.send(topic, key=key.encode(), value=str(value).encode())
    producer.flush(timeout=10)
    producer.close()

    result = tmp_path / "table.json"
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(APP), kafka_bootstrap, topic, f"{topic}-app", "3", str(result)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        cwd=tmp_path,  # Faust writes its data directory into the working directory
    )
    try:
        table = _wait_for_result(proc, result, time.monotonic() + TIMEOUT_S)
    except AssertionError as exc:
        log.flush()
        raise AssertionError(f"{exc}\n{(tmp_path / 'worker.log').read_text(errors='replace')[-3000:]}") from None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        stale = [t for t in admin.list_topics() if t.startswith(topic)]
        admin.delete_topics(stale)
        admin.close()
    assert table == {"m-1": 123, "m-2": 5}
