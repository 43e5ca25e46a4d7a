"""The dedupe store contract, on the in-memory store and the SQL store over SQLite."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.ingest.adapters.memory import InMemoryDedupeStore
from services.ingest.adapters.sql_dedupe import SqlDedupeStore
from services.ingest.domain.ports import Claim, ClaimRequest
from tests.unit.ingest_helpers import NOW

pytestmark = pytest.mark.unit
LEASE = timedelta(seconds=30)


def _sqlite(tmp_path: Path) -> SqlDedupeStore:
    return SqlDedupeStore(f"sqlite:///{tmp_path / 'dedupe.db'}", LEASE)


STORES: dict[str, Callable[[Path], Any]] = {
    "memory": lambda _p: InMemoryDedupeStore(LEASE),
    "sqlite": _sqlite,
}


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return STORES[request.param](tmp_path)


def _req(*pairs: tuple[str, str]) -> list[ClaimRequest]:
    return [ClaimRequest(e, h) for e, h in pairs]


def test_new_ids_are_claimed_then_done_ids_are_duplicates(store: Any) -> None:
    assert store.claim(_req(("a", "h1"), ("b", "h2")), "o1", NOW) == {"a": Claim.NEW, "b": Claim.NEW}
    store.mark_done(["a", "b"], "o1")
    assert store.claim(_req(("a", "h1"), ("c", "h3")), "o2", NOW) == {"a": Claim.DONE, "c": Claim.NEW}


def test_different_content_is_conflict_pending_or_done(store: Any) -> None:
    store.claim(_req(("a", "h1"), ("b", "h1")), "o1", NOW)
    store.mark_done(["a"], "o1")
    assert store.claim(_req(("a", "h2"), ("b", "h2")), "o2", NOW) == {"a": Claim.CONFLICT, "b": Claim.CONFLICT}


def test_pending_within_lease_is_pending_and_stale_is_taken_over_once(store: Any) -> None:
    store.claim(_req(("a", "h1")), "dead", NOW)
    assert store.claim(_req(("a", "h1")), "o2", NOW + timedelta(seconds=29)) == {"a": Claim.PENDING}
    later = NOW + timedelta(seconds=31)
    assert store.claim(_req(("a", "h1")), "o3", later) == {"a": Claim.TAKEN_OVER}
    assert store.claim(_req(("a", "h1")), "o4", later) == {"a": Claim.PENDING}


def test_release_forgets_only_own_pending_claims(store: Any) -> None:
    store.claim(_req(("a", "h1"), ("b", "h1")), "o1", NOW)
    store.mark_done(["b"], "o1")
    store.release(["a", "b"], "someone-else")
    assert store.state("a") == "pending"
    store.release(["a", "b"], "o1")
    assert store.state("a") is None and store.state("b") == "done"


def test_purge_forgets_ids_older_than_window(store: Any) -> None:
    store.claim(_req(("old", "h")), "o", NOW - timedelta(days=31))
    store.claim(_req(("new", "h")), "o", NOW)
    store.mark_done(["old", "new"], "o")
    assert store.purge(NOW - timedelta(days=30)) == 1
    assert store.size() == 1 and store.state("new") == "done"


def test_sqlite_store_survives_a_restart(tmp_path: Path) -> None:
    first = _sqlite(tmp_path)
    first.claim(_req(("a", "h1")), "o1", NOW)
    first.mark_done(["a"], "o1")
    first.close()
    assert _sqlite(tmp_path).claim(_req(("a", "h1")), "o2", NOW) == {"a": Claim.DONE}
