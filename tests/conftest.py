"""Shared fixtures: stores on a real SQLite file and, when configured, a real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from tests.helpers import CLI_ENV_VARS
from tests.s3 import (  # noqa: F401 (S3 fixtures)
    index_url,
    moto_endpoint,
    s3_bucket,
    s3_storage_options,
    s3_store,
    slow_s3_storage_options,
)
from xpersist_sql import CacheStore

# The session's temporary Prefect server (fixture ``prefect_server``); it also isolates Prefect's
# settings from the developer's environment as soon as the test session starts.
pytest_plugins = ["tests.prefect_harness"]

POSTGRES_ENV = "XPERSIST_SQL_TEST_POSTGRES_URL"
POSTGRES_HINT = (
    f"PostgreSQL tests are disabled: set "
    f"{POSTGRES_ENV}=postgresql+psycopg://postgres@127.0.0.1:5432/test "
    "(any database the user may CREATE DATABASE from) to run them"
)

# Tests never read a developer's own store or index location.
os.environ.pop("XPERSIST_SQL_DATABASE_URL", None)
os.environ.pop("XPERSIST_SQL_STORE", None)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """URL of the PostgreSQL server the tests create their databases on."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(POSTGRES_HINT)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:  # configured but down: a failure, not a skip
        pytest.fail(f"{POSTGRES_ENV} is set but PostgreSQL is unreachable: {exc}")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"xpersist_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(postgres_admin_url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """None (the embedded SQLite default) or the URL of a fresh PostgreSQL database."""
    if backend == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def make_store(tmp_path: Path, database_url: str | None) -> Iterator[Callable[..., CacheStore]]:
    """Factory of stores sharing one root and one index, on the parametrised backend."""
    created: list[CacheStore] = []

    def make(path: str | Path | None = None, **kwargs: Any) -> CacheStore:
        kwargs.setdefault("database_url", database_url)
        store = CacheStore(str(path or tmp_path / "store"), **kwargs)
        created.append(store)
        return store

    yield make
    for store in created:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., CacheStore]) -> CacheStore:
    """A writable store on the parametrised backend."""
    return make_store()


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """Typer's test runner; commands see neither of ``CLI_ENV_VARS``, only their options."""
    for name in CLI_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return CliRunner()
