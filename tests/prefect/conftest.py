"""Fixtures of the Prefect tests (the session's server is in ``tests/prefect_harness.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from xpersist_sql import CacheStore


@pytest.fixture(autouse=True)
def _prefect_server(prefect_server: str) -> str:
    """Every Prefect test runs against the session's temporary server."""
    return prefect_server


@pytest.fixture
def pstore(tmp_path: Path) -> Iterator[CacheStore]:
    """A store on local disk with its embedded SQLite index."""
    store = CacheStore(tmp_path / "cache")
    yield store
    store.close()


@pytest.fixture
def db_store(tmp_path: Path, database_url: str | None) -> Iterator[CacheStore]:
    """A store on local disk indexed by SQLite or PostgreSQL (parametrised)."""
    store = CacheStore(tmp_path / "cache", database_url=database_url)
    yield store
    store.close()


class LogRecords:
    """Messages logged by Prefect task runs during a test."""

    def __init__(self) -> None:
        self.records: list[tuple[int, str]] = []

    def messages(self, level: int = 0) -> list[str]:
        return [message for lvl, message in self.records if lvl >= level]


@pytest.fixture
def task_logs() -> Iterator[LogRecords]:
    """Collect what ``get_run_logger()`` logs in task and flow runs."""
    import logging

    collected = LogRecords()

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            collected.records.append((record.levelno, record.getMessage()))

    handler = _Handler(level=logging.DEBUG)
    names = ("prefect.task_runs", "prefect.flow_runs", "xpersist_sql.prefect")
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield collected
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
