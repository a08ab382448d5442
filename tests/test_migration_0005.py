"""Revision 0005 (parameter values, lineage edges), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from xpersist_sql import CacheStore
from xpersist_sql.db.engine import create_index_engine
from xpersist_sql.db.schema import current_revision, head_revision, run_alembic, upgrade

TABLES = ("xpersist_artifact_parameters", "xpersist_artifact_edges")


def snapshot(engine: sa.Engine) -> list[tuple[Any, ...]]:
    """Every artifact row (its 0004 columns), comparable across revisions."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, store_id, key, serializer, created_at, size_bytes, fingerprint "
                "FROM xpersist_artifacts ORDER BY id"
            )
        ).all()
        tags = conn.execute(
            sa.text("SELECT artifact_id, tag FROM xpersist_artifact_tags ORDER BY 1, 2")
        ).all()
    return [tuple(row) for row in rows] + [("tag", *row) for row in tags]


def children(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            table: [tuple(row) for row in conn.execute(sa.text(f"SELECT * FROM {table}"))]
            for table in TABLES
        }


def tables(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def fill(store: CacheStore) -> None:
    store.put("raw.json", 1, serializer="json", additional_metadata={"task_tags": ["t"]})
    for member in range(3):
        store.put(
            f"member-{member}.json",
            member,
            serializer="json",
            additional_metadata={"parameter_values": {"member": member}, "task_tags": ["m"]},
            derived_from=["raw.json"],
        )
    store.put("mean.json", 1, serializer="json", derived_from=["member-0.json", "member-1.json"])


def test_0004_to_0005_and_back_keeps_every_row(tmp_path: Path, database_url: str | None) -> None:
    store = CacheStore(tmp_path / "s", database_url=database_url)
    fill(store)
    url = store.database_url
    store.close()
    engine = create_index_engine(url)
    try:
        rows = snapshot(engine)
        indexed = children(engine)
        assert len(indexed["xpersist_artifact_parameters"]) == 3
        assert len(indexed["xpersist_artifact_edges"]) == 5

        run_alembic(engine, "downgrade", "0004")
        with engine.connect() as conn:
            assert current_revision(conn) == "0004"
        assert not tables(engine) & set(TABLES)
        assert snapshot(engine) == rows

        # a 0004 index with rows: the upgrade indexes what their metadata records
        run_alembic(engine, "upgrade", "0005")
        with engine.connect() as conn:
            assert current_revision(conn) == "0005"
        assert snapshot(engine) == rows
        again = children(engine)
        assert {k: sorted(v, key=repr) for k, v in again.items()} == {
            k: sorted(v, key=repr) for k, v in indexed.items()
        }
        run_alembic(engine, "upgrade", "head")  # (0006 changes indexes only)

        reopened = CacheStore(tmp_path / "s", database_url=database_url)
        try:
            assert [a.key for a in reopened.query(parameters={"member": 1})] == ["member-1.json"]
            assert [a.key for a in reopened.lineage("mean.json")] == [
                "member-0.json",
                "member-1.json",
                "raw.json",
            ]
            assert [a.key for a in reopened.lineage("raw.json", "downstream", depth=1)] == [
                "member-0.json",
                "member-1.json",
                "member-2.json",
            ]
        finally:
            reopened.close()

        # and through revision 0004 too (which needs the store the old rows belong to)
        run_alembic(engine, "downgrade", "0003")
        assert upgrade(url, "head", store_root=str(tmp_path / "s")) == ("0003", head_revision())
        assert [row[2] for row in snapshot(engine) if row[0] != "tag"] == [
            row[2] for row in rows if row[0] != "tag"
        ]
        assert sum(len(v) for v in children(engine).values()) == 8
    finally:
        engine.dispose()
