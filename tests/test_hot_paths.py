"""The metadata hot paths (get_artifact, ``in``, query, keys, len) on the driver's cursor.

SQLite reads run on one connection per thread, kept open: closed by ``close()``, by the end of
their thread, never shared with (nor closed by) a forked child, unable to write. PostgreSQL reads
run on a pooled connection without a pre-ping: a dropped connection is recovered on the next call.
Whatever the path, the answers are the ones SQLAlchemy gives: expiry, store scoping, a store
without an index yet.
"""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from xpersist_sql import Artifact, CacheStore
from xpersist_sql.db import engine as engine_module
from xpersist_sql.db.engine import sqlite_readers
from xpersist_sql.db.queries import artifacts_from_rows
from xpersist_sql.db.tables import ARTIFACTS
from xpersist_sql.errors import OverlappingKeyError


def _readers(store: CacheStore) -> engine_module.SQLiteReaders:
    readers = sqlite_readers(store.engine)
    assert readers is not None
    return readers


@pytest.fixture
def sqlite_store(tmp_path: Path) -> CacheStore:
    store = CacheStore(tmp_path / "store")
    store.put("a.json", {"a": 1}, serializer="json", additional_metadata={"flow_name": "f"})
    return store


# -- SQLite: one connection per thread -----------------------------------------------------------
def test_reads_keep_one_connection_per_thread_and_close_closes_them(
    sqlite_store: CacheStore,
) -> None:
    store = sqlite_store
    assert store.get_artifact("a.json").key == "a.json"
    readers = _readers(store)
    conn = readers.connection()
    assert "a.json" in store
    assert readers.connection() is conn  # the same connection again, no checkout
    assert readers.open_connections == 1

    barrier = threading.Barrier(3)
    seen: list[sqlite3.Connection] = []

    def read() -> None:
        assert store.query(flow_name="f")[0].key == "a.json"
        seen.append(readers.connection())
        barrier.wait()  # all threads hold theirs at once
        barrier.wait()

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    barrier.wait()
    assert len({id(c) for c in seen}) == 2 and conn not in seen
    assert readers.open_connections == 3
    barrier.wait()
    for thread in threads:
        thread.join()
    seen.clear()
    gc.collect()
    assert readers.open_connections == 1  # a thread's connection ends with it

    store.close()
    assert readers.open_connections == 0
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    # used again, the store reopens what it needs
    assert store.get_artifact("a.json").key == "a.json"
    store.close()


def test_read_connections_cannot_write(sqlite_store: CacheStore, tmp_path: Path) -> None:
    conn = _readers(sqlite_store).connection()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM xpersist_artifacts")
    sqlite_store.close()

    readonly = CacheStore(tmp_path / "store", readonly=True)
    assert "a.json" in readonly
    assert readonly.keys() == ["a.json"]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        _readers(readonly).connection().execute("DELETE FROM xpersist_artifacts")
    readonly.close()
    hidden = tmp_path / "store" / ".xpersist_sql"
    assert not list(hidden.glob("*-wal")) and not list(hidden.glob("*-shm"))


def test_a_failing_read_connection_is_replaced(sqlite_store: CacheStore) -> None:
    store = sqlite_store
    readers = _readers(store)
    readers.connection().close()  # broken behind the store's back
    assert store.get_artifact("a.json").key == "a.json"  # answered anyway
    assert "a.json" in store
    assert readers.connection().execute("SELECT 1").fetchone() == (1,)
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_neither_uses_nor_closes_the_parents_connection(
    sqlite_store: CacheStore,
) -> None:
    store = sqlite_store
    assert "a.json" in store
    readers = _readers(store)
    parent_conn = readers.connection()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read)
            mine = readers.connection()
            ok = mine is not parent_conn and mine.execute("SELECT 1").fetchone() == (1,)
            ok = ok and "a.json" in store and store.get_artifact("a.json").key == "a.json"
            store.close()  # must not close the parent's connection
            readers.close()
            ok = ok and parent_conn in engine_module._INHERITED
            code = 0 if ok else 3
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        status = pipe.read()
    os.waitpid(pid, 0)
    assert status == bytes([0])
    assert parent_conn.execute("SELECT 1").fetchone() == (1,)
    assert readers.connection() is parent_conn
    assert store.get_artifact("a.json").key == "a.json"
    store.close()


# -- same answers on both backends ---------------------------------------------------------------
def test_expiry_and_store_scoping(make_store: Callable[..., CacheStore], tmp_path: Path) -> None:
    first = make_store(tmp_path / "one")
    second = make_store(tmp_path / "two")
    assert "x.json" not in first and len(first) == 0 and first.keys() == []
    first.put("x.json", 1, serializer="json", additional_metadata={"flow_name": "f"})
    first.put("old.json", 2, serializer="json", ttl=timedelta(seconds=30))
    second.put("y.json", 3, serializer="json", additional_metadata={"flow_name": "f"})
    with first.engine.begin() as conn:  # expire old.json
        conn.execute(
            sa.update(ARTIFACTS)
            .where(ARTIFACTS.c.key == "old.json")
            .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
        )
    assert "x.json" in first and "old.json" not in first and "y.json" not in first
    assert first.keys() == ["x.json"] and len(first) == 1
    assert [a.key for a in first.query(flow_name="f")] == ["x.json"]
    assert {a.key for a in first.query(include_expired=True)} == {"x.json", "old.json"}
    with pytest.raises(KeyError):
        first.get_artifact("old.json")
    with pytest.raises(KeyError):
        first.get_artifact("y.json")
    assert second.keys() == ["y.json"] and "x.json" not in second
    assert first.get_artifact("x.json") == Artifact.model_validate(
        first.get_artifact("x.json").model_dump()
    )


def test_a_path_that_is_not_a_store_answers_empty(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "nothing-yet")
    assert "a" not in store and len(store) == 0 and store.keys() == []
    assert store.query(flow_name="f") == []
    with pytest.raises(KeyError):
        store.get_artifact("a")
    store.close()


def test_rows_become_the_same_artifacts_as_validated_ones() -> None:
    """Driver rows (SQLite text, PostgreSQL objects) and SQLAlchemy rows give equal artifacts."""
    created = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
    expected = Artifact(
        key="k/v.json",
        serializer="json",
        load_kwargs={"a": 1},
        dump_kwargs={},
        additional_metadata={"flow_name": "f", "task_tags": ["t"]},
        created_at=created,
        size_bytes=12,
        checksum=None,
        fingerprint="fp",
        expires_at=created + timedelta(days=1),
        versions={"python": "3.11"},
    )
    sqlite_row: tuple[Any, ...] = (
        "k/v.json",
        "json",
        '{"a": 1}',
        "{}",
        '{"flow_name": "f", "task_tags": ["t"]}',
        "2024-05-06 07:08:09.123456",
        12,
        None,
        "fp",
        "2024-05-07 07:08:09.123456",
        '{"python": "3.11"}',
    )
    paris = timezone(timedelta(hours=2))
    postgres_row: tuple[Any, ...] = (
        "k/v.json",
        "json",
        {"a": 1},
        {},
        {"flow_name": "f", "task_tags": ["t"]},
        created.astimezone(paris),
        12,
        None,
        "fp",
        (created + timedelta(days=1)).astimezone(paris),
        {"python": "3.11"},
    )
    for row in (sqlite_row, postgres_row):
        (artifact,) = artifacts_from_rows([row])
        assert artifact == expected
        assert artifact.model_dump() == expected.model_dump()
        assert artifact.created_at.tzinfo is timezone.utc


# -- PostgreSQL: no pre-ping, recovery on error --------------------------------------------------
def _terminate_others(url: str) -> int:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return len(
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).all()
            )
    finally:
        admin.dispose()


def test_a_dropped_postgres_connection_is_recovered_on_the_next_read(
    postgres_url: str, tmp_path: Path
) -> None:
    store = CacheStore(tmp_path / "store", database_url=postgres_url)
    try:
        store.put("a.json", {"a": 1}, serializer="json", additional_metadata={"flow_name": "f"})
        for _ in range(6):  # psycopg prepares the statement after a few runs
            assert store.get_artifact("a.json").key == "a.json"
        assert _terminate_others(postgres_url) >= 1
        assert store.get_artifact("a.json").key == "a.json"
        assert _terminate_others(postgres_url) >= 1
        assert "a.json" in store
        assert _terminate_others(postgres_url) >= 1
        assert [a.key for a in store.query(flow_name="f")] == ["a.json"]
        assert _terminate_others(postgres_url) >= 1
        assert store.keys() == ["a.json"] and len(store) == 1
        # the pool was renewed: a write goes through too
        store.put("b.json", {"b": 2}, serializer="json")
        assert store.get("b.json") == {"b": 2}
    finally:
        store.close()


def test_postgres_checkouts_ping_only_idle_connections(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CacheStore(tmp_path / "store", database_url=postgres_url)
    pings: list[object] = []
    try:
        store.put("a.json", {"a": 1}, serializer="json")
        dialect = store.engine.dialect
        original = dialect.do_ping

        def counting_ping(dbapi_connection: Any) -> bool:
            pings.append(dbapi_connection)
            return original(dbapi_connection)

        monkeypatch.setattr(dialect, "do_ping", counting_ping)
        for _ in range(20):
            assert "a.json" in store
        assert pings == []  # in steady use: no round trip besides the lookup
        monkeypatch.setattr(engine_module, "PG_IDLE_PING_SECONDS", 0.0)
        _terminate_others(postgres_url)
        store.put("b.json", {"b": 2}, serializer="json")  # the idle connection is pinged, renewed
        assert pings
        assert store.keys() == ["a.json", "b.json"]
    finally:
        store.close()


# -- writes: statements compiled once, run on the transaction's driver cursor ----------------------
_ROW_SQL = (
    "SELECT store_id, serializer, load_kwargs, dump_kwargs, additional_metadata, created_at, "
    "size_bytes, checksum, fingerprint, expires_at, versions, flow_name, task_name, flow_run_id, "
    "task_run_id, last_accessed_at FROM xpersist_artifacts WHERE id = :id"
)
_CHILD_SQL = {
    "tags": "SELECT tag, created_at FROM xpersist_artifact_tags WHERE artifact_id = :id "
    "ORDER BY tag",
    "parameters": "SELECT name, value, created_at FROM xpersist_artifact_parameters "
    "WHERE artifact_id = :id ORDER BY name",
    "edges": "SELECT parent_store, parent_key, parent_created_at, parent_fingerprint, "
    "parent_checksum FROM xpersist_artifact_edges WHERE artifact_id = :id ORDER BY parent_key",
}


def _stored(store: CacheStore, row_id: int) -> dict[str, list[tuple[Any, ...]]]:
    """The row and its child rows as the database holds them (no type processing)."""
    with store.engine.connect() as conn:
        found = {"row": [tuple(r) for r in conn.execute(sa.text(_ROW_SQL), {"id": row_id})]}
        for name, sql in _CHILD_SQL.items():
            found[name] = [tuple(r) for r in conn.execute(sa.text(sql), {"id": row_id})]
    return found


def _row_id(store: CacheStore, key: str) -> int:
    with store.engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT id FROM xpersist_artifacts WHERE key = :key"), {"key": key}
        ).scalar_one()
    return int(found)


def _reference_write(store: CacheStore, artifact: Artifact, row_id: int | None) -> int:
    """Write ``artifact`` as the SQLAlchemy Core path did: ``insert().values()`` / ``update``."""
    from xpersist_sql.db.index import edges_of, parameters_of, tags_of
    from xpersist_sql.db.tables import EDGES, PARAMETERS, TAGS

    index = store._backend.index()
    assert index is not None
    values = index._values(artifact)
    metadata = artifact.additional_metadata
    with index.write() as conn:
        if row_id is None:
            stmt = sa.insert(ARTIFACTS).values(values).returning(ARTIFACTS.c.id)
            row_id = int(conn.execute(stmt).scalar_one())
        else:
            conn.execute(sa.update(ARTIFACTS).where(ARTIFACTS.c.id == row_id).values(values))
            for table in (TAGS, PARAMETERS, EDGES):
                conn.execute(sa.delete(table).where(table.c.artifact_id == row_id))
        created = artifact.created_at
        tags = [{"artifact_id": row_id, "tag": t, "created_at": created} for t in tags_of(metadata)]
        params = [
            {"artifact_id": row_id, "name": n, "value": v, "created_at": created}
            for n, v in parameters_of(metadata).items()
        ]
        edges = [{"artifact_id": row_id, **edge} for edge in edges_of(metadata)]
        for table, rows in ((TAGS, tags), (PARAMETERS, params), (EDGES, edges)):
            if rows:
                conn.execute(sa.insert(table), rows)
    return row_id


def test_compiled_writes_store_what_sqlalchemy_would(
    make_store: Callable[..., CacheStore],
) -> None:
    store = make_store(on_duplicate_key="overwrite")
    store.put("parent.json", {"p": 1}, serializer="json")
    metadata: dict[str, Any] = {
        "flow_name": "f",
        "task_name": "t" * 600,  # shortened with its digest
        "flow_run_id": "run-1",
        "task_tags": ["x", "y"],
        "tags": ["z", "x"],
        "parameter_values": {"member": 2, "name": "ctrl", "when": [1.5, None, "\u00e9"]},
        "nested": {"a": [1, 2.5, None, "\u00e9\U0001f600", True]},
    }
    first = store.put(
        "child.json",
        {"v": 1},
        serializer="json",
        dump_kwargs={"indent": 1},
        additional_metadata=metadata,
        ttl="1d",
        derived_from=["parent.json"],
    )
    put_id = _row_id(store, "child.json")
    ref_id = _reference_write(store, first.model_copy(update={"key": "ref.json"}), None)
    written = _stored(store, put_id)
    assert written["row"] and written["tags"] and written["parameters"] and written["edges"]
    assert written == _stored(store, ref_id)
    assert store.get_artifact("child.json") == first

    # replace: the row is updated in place, its child rows rewritten in the same transaction
    again = store.put(
        "child.json",
        {"v": 2},
        serializer="json",
        additional_metadata={"tags": ["only"], "parameter_values": {"member": 3}},
    )
    assert _row_id(store, "child.json") == put_id
    _reference_write(store, again.model_copy(update={"key": "ref.json"}), ref_id)
    rewritten = _stored(store, put_id)
    assert rewritten == _stored(store, ref_id)
    assert rewritten["edges"] == [] and [t[0] for t in rewritten["tags"]] == ["only"]
    assert store.get_artifact("child.json") == again

    # delete: the row and every child row go
    store.delete("child.json")
    assert _stored(store, put_id) == {"row": [], "tags": [], "parameters": [], "edges": []}


def test_puts_reuse_one_write_connection_per_thread(sqlite_store: CacheStore) -> None:
    store = sqlite_store
    writers = engine_module.sqlite_writers(store.engine)
    assert writers is not None
    store.put("b.json", {"b": 1}, serializer="json")
    conn = writers.connection()
    store.put("c.json", {"c": 1}, serializer="json")
    store.delete("b.json")
    assert writers.connection() is conn and not conn.in_transaction
    # a put failing inside its transaction (the overlap check) rolls back, keeps the writer
    with pytest.raises(OverlappingKeyError):
        store.put("a.json/d.json", {"d": 1}, serializer="json")
    assert writers.connection() is conn and not conn.in_transaction
    assert store.keys() == ["a.json", "c.json"]
    store.close()
    assert writers.open_connections == 0
