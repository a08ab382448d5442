"""Put/get/query latency with the index in PostgreSQL against the embedded SQLite index.

Same store code, same local payload directory kind, same operations; only the index differs.
The PostgreSQL rows carry ``ratio`` = PostgreSQL median / SQLite median (so ``1.5`` means the
PostgreSQL index makes that operation 1.5 times slower on this machine; it pays a network round
trip per statement where SQLite reads a local file).

PostgreSQL is taken from ``$XPERSIST_SQL_TEST_POSTGRES_URL`` (a server where the user may
``CREATE DATABASE``): the benchmark creates a scratch database there and drops it afterwards.
Without that variable only the SQLite rows are measured, and a note says so.

Operations:

- ``put small json``: a new key each time (``skip`` policy: one insert);
- ``overwrite small json``: the same key again (``overwrite``: row lock, update, payload swap);
- ``get small json``: read row, open payload, check fingerprint;
- ``get_artifact``: the row alone;
- ``query flow_name``: ``store.query(flow_name=..., limit=50)`` over a few thousand rows;
- ``lock + unlock``: ``with store.lock(key)`` (advisory lock vs file lock).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from run import row, timings

from xpersist_sql import CacheStore

POSTGRES_ENV = "XPERSIST_SQL_TEST_POSTGRES_URL"
SQLITE = "SQLite index"
POSTGRES = "PostgreSQL index (ratio: PG / SQLite)"
VALUE = {"threshold": 0.5, "members": list(range(20)), "name": "ctrl", "ok": True}


@contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str]:
    """A new PostgreSQL database for the benchmark, dropped afterwards."""
    import sqlalchemy as sa

    name = f"xpersist_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(admin_url).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def measure(case: str, root: Path, database_url: str | None, quick: bool) -> list[dict[str, Any]]:
    """All operations on one index backend."""
    repeats = 20 if quick else 100
    n_rows = 300 if quick else 3000
    store = CacheStore(root / "store", database_url=database_url)
    overwriting = CacheStore(
        root / "store", database_url=database_url, on_duplicate_key="overwrite"
    )
    for i in range(n_rows):  # rows for the query to sift through
        store.put(
            f"filler/{i}.json",
            i,
            serializer="json",
            additional_metadata={"flow_name": f"flow-{i % 20}", "task_name": f"t{i % 7}"},
        )
    store.put("read-me.json", VALUE, serializer="json")
    rows = [
        row(
            "backends: put small json",
            case,
            timings(lambda i: store.put(f"put/{i}.json", VALUE, serializer="json"), repeats),
        ),
        row(
            "backends: overwrite small json",
            case,
            timings(lambda i: overwriting.put("over.json", VALUE, serializer="json"), repeats),
        ),
        row(
            "backends: get small json", case, timings(lambda i: store.get("read-me.json"), repeats)
        ),
        row(
            "backends: get_artifact",
            case,
            timings(lambda i: store.get_artifact("read-me.json"), repeats),
        ),
        row(
            f"backends: query flow_name ({n_rows} rows)",
            case,
            timings(lambda i: store.query(flow_name="flow-3", limit=50), repeats),
        ),
        row("backends: lock + unlock", case, timings(lambda i: _lock(store), repeats)),
    ]
    store.close()
    overwriting.close()
    return rows


def _lock(store: CacheStore) -> None:
    with store.lock("locked.json"):
        pass


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every operation on SQLite and, when configured, PostgreSQL."""
    root = Path(tempfile.mkdtemp(prefix="xpersist-bench-backends-"))
    try:
        rows = measure(SQLITE, root / "sqlite", None, quick)
        admin_url = os.environ.get(POSTGRES_ENV)
        if not admin_url:
            print(
                f"  note: PostgreSQL rows skipped; set {POSTGRES_ENV}="
                "postgresql+psycopg://postgres@127.0.0.1:5432/test to measure them"
            )
            return rows
        with scratch_postgres(admin_url) as url:
            pg_rows = measure(POSTGRES, root / "postgres", url, quick)
        sqlite_median = {r["benchmark"]: r["median_ms"] for r in rows}
        for r in pg_rows:
            base = sqlite_median.get(r["benchmark"])
            r["ratio"] = r["median_ms"] / base if base else None
        merged: list[dict[str, Any]] = []
        for sqlite_row, pg_row in zip(rows, pg_rows, strict=True):
            merged += [sqlite_row, pg_row]
        return merged
    finally:
        shutil.rmtree(root, ignore_errors=True)
