"""Shared pytest fixtures: where the real infrastructure is, and unique names per test.

Integration tests get Kafka / PostgreSQL / Prometheus addresses from FLOATBRIDGE_TEST_* variables
(`make test` starts the services and exports them; `eval "$(bash deploy/local/infra.sh env)"` does it
by hand). Without them the tests skip, unless FLOATBRIDGE_REQUIRE_INFRA=1 (CI), where a missing
service, or any skip in tests/integration or tests/e2e, is a failure.

Deliberately free of service imports: only the standard library, pytest and (lazily) SQLAlchemy.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REQUIRE_INFRA_VAR = "FLOATBRIDGE_REQUIRE_INFRA"
_STRICT_DIRS = ("integration", "e2e")


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python loads its protocol schemas through a deprecated importlib API on every client.
    for text in ("read_text is deprecated", "open_text is deprecated"):
        config.addinivalue_line("filterwarnings", f"ignore:{text}:DeprecationWarning")


def infra_required() -> bool:
    return os.environ.get(REQUIRE_INFRA_VAR, "").strip().lower() in {"1", "true", "yes"}


def _from_env(var: str, what: str) -> str:
    value = os.environ.get(var, "").strip()
    if value:
        return value
    message = f"{what} unavailable: set {var} (make test starts it)"
    if infra_required():
        pytest.fail(f"{message}; {REQUIRE_INFRA_VAR}=1 forbids skipping", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of the test broker, "host:port"."""
    return _from_env("FLOATBRIDGE_TEST_KAFKA", "Kafka")


@pytest.fixture(scope="session")
def pg_url() -> str:
    """SQLAlchemy URL of the test database (shared: create your own schema, or use pg_schema_url)."""
    return _from_env("FLOATBRIDGE_TEST_DATABASE_URL", "PostgreSQL")


@pytest.fixture(scope="session")
def prometheus_url() -> str:
    """Base URL of the test Prometheus server, e.g. http://127.0.0.1:19090."""
    return _from_env("FLOATBRIDGE_TEST_PROMETHEUS", "Prometheus").rstrip("/")


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of the promtool binary (checks rule files and runs rule unit tests)."""
    path = _from_env("FLOATBRIDGE_TEST_PROMTOOL", "promtool")
    if not Path(path).is_file():
        message = f"promtool unavailable: FLOATBRIDGE_TEST_PROMTOOL={path} does not exist"
        if infra_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:30] or "t"


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """unique_name("orders") -> "orders_<test>_<8 hex>": safe for topics, schemas, group and app ids."""

    test = _slug(request.node.name)

    def make(base: str = "t") -> str:
        return f"{_slug(base)}_{test}_{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def fresh_topic_prefix(unique_name: Callable[[str], str]) -> str:
    """A prefix no other test uses, e.g. "fb_<test>_<hex>." : prepend it to catalog topic names."""
    return unique_name("fb").replace("_", "-") + "."


def _with_search_path(url: str, schema: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    query = dict(parsed.query)
    query["options"] = f"-csearch_path={schema}"
    return parsed.set(query=query).render_as_string(hide_password=False)


@pytest.fixture
def pg_schema_url(pg_url: str, unique_name: Callable[[str], str]) -> Iterator[str]:
    """A URL whose connections use a fresh, empty schema (search_path) dropped after the test.

    Tables created without a schema qualifier land in it, so tests do not see each other's data.
    The schema name is available as `sqlalchemy.engine.make_url(url).query["options"]`.
    """
    from sqlalchemy import create_engine, text

    schema = unique_name("s")[:63]
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield _with_search_path(pg_url, schema)
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()


_TESTS_DIR = Path(__file__).resolve().parent


def _in_strict_dir(path: Path) -> bool:
    try:
        rel = path.resolve().relative_to(_TESTS_DIR)
    except ValueError:
        return False
    return bool(rel.parts) and rel.parts[0] in _STRICT_DIRS


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With FLOATBRIDGE_REQUIRE_INFRA=1, a skipped integration/e2e test fails: CI must not go green
    just because a service was missing."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not (report.skipped and infra_required() and _in_strict_dir(Path(str(item.path)))):
        return
    if hasattr(report, "wasxfail"):
        return  # an expected failure is not a missing service
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped but {REQUIRE_INFRA_VAR}=1 forbids skips here: {reason}"
