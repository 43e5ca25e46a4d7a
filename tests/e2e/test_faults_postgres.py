"""PostgreSQL restart during acceptances, on a throwaway cluster (never the shared one): ingest and the
acceptance API answer a clean, retryable 503 while it is down; retries with the same Idempotency-Key
succeed exactly once after it is back; the checker finds nothing wrong."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from floatbridge.audit.sources import audit
from floatbridge.audit.traffic import DecisionFeeder, Marketplace, register_merchant
from floatbridge.stack import free_port
from tests.e2e.test_faults_kill import ADMIN_KEY, INGEST_KEY, histories, make_stack

pytestmark = pytest.mark.e2e
SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "postgres.sh"


class ThrowawayPostgres:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="fb-pg-fault-", dir="/tmp")
        os.chmod(self.dir, 0o755)  # the server runs as the postgres user when we are root
        self.port = free_port()
        self.env = {**os.environ, "FLOATBRIDGE_LOCAL_DIR": self.dir, "FLOATBRIDGE_PG_PORT": str(self.port)}
        self.url = f"postgresql+psycopg2://floatbridge:floatbridge@127.0.0.1:{self.port}/floatbridge"

    def run(self, action: str) -> None:
        subprocess.run(["bash", str(SCRIPT), action], env=self.env, check=True, capture_output=True, timeout=120)


@pytest.fixture
def pg() -> Iterator[ThrowawayPostgres]:
    if not SCRIPT.exists() or not Path(os.environ.get("FLOATBRIDGE_PG_BIN", "/usr/lib/postgresql/15/bin")).exists():
        pytest.skip("PostgreSQL binaries unavailable for a throwaway cluster")
    p = ThrowawayPostgres()
    p.run("start")
    try:
        yield p
    finally:
        p.run("stop")


def test_postgres_restart_during_acceptances_gives_503_then_exactly_one_loan_each(
        kafka_bootstrap: str, pg: ThrowawayPostgres, fresh_topic_prefix: str, tmp_path: Path) -> None:
    stack = make_stack(kafka_bootstrap, pg.url, fresh_topic_prefix, tmp_path, workers=0)
    stack.prepare()
    stack.start(wait=90)
    feeder = DecisionFeeder(kafka_bootstrap, fresh_topic_prefix)
    try:
        ingest, disb = f"http://127.0.0.1:{stack.cfg.ingest_port}", f"http://127.0.0.1:{stack.cfg.disbursement_port}"
        merchants = histories(3, days=3)
        keys = {mid: f"key-{mid}-0123456789abcdef" for mid, _, _ in merchants}
        for mid, key in keys.items():
            register_merchant(disb, ADMIN_KEY, mid, key)
        market = Marketplace(ingest, INGEST_KEY)
        market.send(merchants[0][2])
        offers = {mid: feeder.offer(mid, 4_000, [o for o, _ in oo[:1]]) for mid, oo, _ in merchants}
        _wait_offers_stored(pg.url, len(offers))

        pg.run("stop")
        down = [_accept(disb, keys[mid], oid) for mid, oid in offers.items()]
        r = httpx.post(f"{ingest}/v1/events", json=merchants[1][2][:20], timeout=30,
                       headers={"Authorization": f"Bearer {INGEST_KEY}"})
        pg.run("start")

        assert {c for c, _ in down} == {503}, down
        assert all(h.get("retry-after") for _, h in down)
        assert r.status_code == 503 and r.headers.get("retry-after"), r.text[:300]
        answers = {}
        for mid, oid in offers.items():
            for _ in range(40):  # bounded retries with the same Idempotency-Key
                code, _h = _accept(disb, keys[mid], oid)
                if code in (200, 202):
                    answers[oid] = code
                    break
                time.sleep(0.5)
        assert set(answers) == set(offers.values()), answers
        market.send(merchants[1][2])  # the marketplace's retry after the outage
        report = audit(kafka_bootstrap, pg.url, fresh_topic_prefix, settle_seconds=60)
        print(report.to_text())
        assert report.ok, report.to_text()
        assert report.counts["loans"] == 3 and report.counts["payouts"] == 3 and report.counts["rail_payouts"] == 3
    finally:
        feeder.close()
        stack.stop()


def _accept(disb: str, key: str, offer_id: str) -> tuple[int, dict[str, str]]:
    try:
        r = httpx.post(f"{disb}/v1/offers/{offer_id}/accept", timeout=20,
                       headers={"Authorization": f"Bearer {key}", "Idempotency-Key": f"acc-{offer_id}"})
    except httpx.HTTPError:
        return 0, {}
    return r.status_code, dict(r.headers)


def _wait_offers_stored(url: str, n: int, timeout: float = 60) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(sa.text("SELECT count(*) FROM offers WHERE state = 'open'")).scalar_one() >= n:
                    return
            time.sleep(0.3)
    finally:
        engine.dispose()
    raise AssertionError(f"{n} offers not stored within {timeout}s")
