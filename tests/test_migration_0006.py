"""Revision 0006 (partial indexes of the optional columns), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from xpersist_sql import CacheStore
from xpersist_sql.db.engine import create_index_engine
from xpersist_sql.db.schema import current_revision, run_alembic, schema_drift

TABLE = "xpersist_artifacts"
OPTIONAL = ("flow_name", "task_name", "flow_run_id", "task_run_id")
PARTIAL = {f"ix_{TABLE}_store_id_{column}_created_at_id": column for column in OPTIONAL}
PARTIAL[f"ix_{TABLE}_store_id_expires_at"] = "expires_at"
LAST_ACCESSED = f"ix_{TABLE}_last_accessed_at"


def index_definitions(engine: sa.Engine) -> dict[str, str]:
    """Name -> SQL of the artifacts table's secondary indexes."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                "AND sql IS NOT NULL",
                (TABLE,),
            )
        else:
            rows = conn.exec_driver_sql(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %(t)s "
                "AND indexname LIKE 'ix_%%'",
                {"t": TABLE},
            )
        return {name: sql for name, sql in rows}


def snapshot(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(f"SELECT * FROM {TABLE} ORDER BY id"))]


def fill(store: CacheStore) -> None:
    store.put("plain.json", 1, serializer="json")
    store.put("ttl.json", 2, serializer="json", ttl=timedelta(days=1))
    metadata = {"flow_name": "f", "task_name": "t", "flow_run_id": "r", "task_run_id": "tr"}
    store.put("prefect.json", 3, serializer="json", additional_metadata=metadata)
    store.get("plain.json")  # a recorded last access


def test_0005_to_0006_and_back_keeps_every_row(tmp_path: Path, database_url: str | None) -> None:
    store = CacheStore(tmp_path / "s", database_url=database_url)
    fill(store)
    url = store.database_url
    store.close()
    engine = create_index_engine(url)
    try:
        rows = snapshot(engine)
        assert len(rows) == 3
        head = index_definitions(engine)
        assert LAST_ACCESSED not in head
        for name, column in PARTIAL.items():
            assert f"{column} IS NOT NULL" in head[name], head[name]

        run_alembic(engine, "downgrade", "0005")
        with engine.connect() as conn:
            assert current_revision(conn) == "0005"
        full = index_definitions(engine)
        assert LAST_ACCESSED in full
        assert set(full) == set(head) | {LAST_ACCESSED}
        assert not [sql for sql in full.values() if "WHERE" in sql.upper()], full
        assert snapshot(engine) == rows
        drift = schema_drift(url, "0005")
        assert (drift.extra, drift.missing) == ([], [])

        run_alembic(engine, "upgrade", "0006")
        assert index_definitions(engine) == head
        assert snapshot(engine) == rows
    finally:
        engine.dispose()

    reopened = CacheStore(tmp_path / "s", database_url=database_url)
    try:
        assert [a.key for a in reopened.query(flow_name="f")] == ["prefect.json"]
        assert [a.key for a in reopened.query(task_run_id="tr")] == ["prefect.json"]
        assert reopened.keys() == ["plain.json", "prefect.json", "ttl.json"]
    finally:
        reopened.close()
