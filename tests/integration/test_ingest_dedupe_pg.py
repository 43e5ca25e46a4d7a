"""The PostgreSQL dedupe store: the same contract as SQLite, plus racing replicas."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from services.ingest.adapters.sql_dedupe import SqlDedupeStore
from services.ingest.domain.ports import Claim, ClaimRequest
from tests.unit.ingest_helpers import NOW

pytestmark = pytest.mark.integration
LEASE = timedelta(seconds=30)


def test_claims_survive_a_new_store_instance_and_conflicts_never_overwrite(pg_schema_url: str) -> None:
    first = SqlDedupeStore(pg_schema_url, LEASE)
    assert first.claim([ClaimRequest("a", "h1"), ClaimRequest("b", "h1")], "o1", NOW) == {
        "a": Claim.NEW, "b": Claim.NEW}
    first.mark_done(["a"], "o1")
    first.close()
    second = SqlDedupeStore(pg_schema_url, LEASE)
    got = second.claim([ClaimRequest("a", "h1"), ClaimRequest("b", "h1"), ClaimRequest("a2", "h")], "o2", NOW)
    assert got == {"a": Claim.DONE, "b": Claim.PENDING, "a2": Claim.NEW}
    assert second.claim([ClaimRequest("a", "other")], "o3", NOW) == {"a": Claim.CONFLICT}
    assert second.claim([ClaimRequest("b", "h1")], "o3", NOW + LEASE) == {"b": Claim.TAKEN_OVER}
    assert second.purge(NOW + timedelta(days=1)) == 3 and second.size() == 0
    second.close()


def test_racing_replicas_claim_each_id_exactly_once(pg_schema_url: str) -> None:
    stores = [SqlDedupeStore(pg_schema_url, LEASE) for _ in range(4)]
    ids = [f"id-{i}" for i in range(300)]
    wins: list[list[str]] = [[] for _ in stores]

    def run(n: int) -> None:
        for start in range(0, len(ids), 50):
            got = stores[n].claim([ClaimRequest(e, "h") for e in ids[start:start + 50]], f"o{n}", NOW)
            wins[n].extend(e for e, c in got.items() if c is Claim.NEW)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [e for w in wins for e in w]
    assert sorted(claimed) == sorted(ids)
    for s in stores:
        s.close()


def test_a_connection_the_server_dropped_is_replaced_without_failing_the_batch(pg_schema_url: str) -> None:
    from sqlalchemy import create_engine, text

    store = SqlDedupeStore(pg_schema_url, LEASE)
    assert store.claim([ClaimRequest("a", "h")], "o1", NOW) == {"a": Claim.NEW}
    with store.engine.connect() as conn:  # the one pooled connection (the store is used from one thread)
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    killer = create_engine(pg_schema_url)
    with killer.begin() as conn:  # drop it, as a server restart would
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    killer.dispose()
    got = store.claim([ClaimRequest("a", "h"), ClaimRequest("b", "h")], "o2", NOW)
    assert got == {"a": Claim.PENDING, "b": Claim.NEW}
    store.mark_done(["a", "b"], "o2")
    assert store.state("a") == "done" and store.state("b") == "done"
    store.close()


def test_a_repeated_claim_by_the_same_owner_is_its_own_not_someone_elses(pg_schema_url: str) -> None:
    # A claim whose commit reached the server but whose answer was lost is retried with the same owner:
    # the rows it already holds count as claimed by it, not as another replica's pending claims.
    store = SqlDedupeStore(pg_schema_url, LEASE)
    assert store.claim([ClaimRequest("a", "h")], "o1", NOW) == {"a": Claim.NEW}
    assert store.claim([ClaimRequest("a", "h")], "o1", NOW) == {"a": Claim.NEW}
    assert store.claim([ClaimRequest("a", "h")], "o2", NOW) == {"a": Claim.PENDING}
    store.close()


def test_ids_with_quotes_backslashes_commas_and_braces_are_claimed_and_marked_as_themselves(pg_schema_url: str) -> None:
    store = SqlDedupeStore(pg_schema_url, LEASE)
    odd = ['a"b', "c\\d", "e,f", "{g}", "h i", "NULL", "", "é-ü", 'j\\"k', "l" * 128]
    got = store.claim([ClaimRequest(e, f"h{n}") for n, e in enumerate(odd)], "o1", NOW)
    assert got == {e: Claim.NEW for e in odd}
    store.mark_done(odd[:5], "o1")
    assert [store.state(e) for e in odd] == ["done"] * 5 + ["pending"] * 5
    again = store.claim([ClaimRequest(e, f"h{n}") for n, e in enumerate(odd)] + [ClaimRequest("new", "x")], "o2", NOW)
    assert again == {**{e: Claim.DONE for e in odd[:5]}, **{e: Claim.PENDING for e in odd[5:]}, "new": Claim.NEW}
    assert store.claim([ClaimRequest('a"b', "other")], "o3", NOW) == {'a"b': Claim.CONFLICT}
    store.close()
