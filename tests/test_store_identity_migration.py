"""Revision 0004 (stores get an identity), on SQLite and PostgreSQL.

An index at revision 0003 holds rows of one store that had no identity yet. Upgrading it:

- without being told the store is refused with a message naming ``db upgrade --store``, and leaves
  the index at 0003 with every row (the migration is one transaction);
- with ``upgrade(url, store_root=ROOT)`` (or ``xpersist-sql db upgrade --store ROOT``) gives every
  row to the store whose marker is at ROOT (written if missing): that store lists them, another
  store sharing the database sees none of them and may use the same keys;
- keeps every row and tag, both ways.

Downgrading a database that holds two stores' rows is refused and changes nothing. Concurrent
``upgrade`` calls on an empty database all succeed (they used to fail with a UniqueViolation on
PostgreSQL, each creating the tables).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fsspec
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from typer.testing import CliRunner

from xpersist_sql import CacheStore, SchemaVersionError, StoreNotFoundError
from xpersist_sql.cli import app
from xpersist_sql.db.engine import create_index_engine
from xpersist_sql.db.schema import (
    VERSION_TABLE,
    current_revision,
    head_revision,
    run_alembic,
    upgrade,
)
from xpersist_sql.db.tables import METADATA, JSONType, UTCDateTime
from xpersist_sql.marker import HIDDEN_DIR, read_marker

T0 = datetime(2021, 12, 14, 8, 0, tzinfo=timezone.utc)
HEAD = "0006"  # revisions 0005 (parameters, lineage) and 0006 (partial indexes) follow 0004
ENV_VARS = ("XPERSIST_SQL_STORE", "XPERSIST_SQL_DATABASE_URL")
REFUSED = r"this index holds 3 artifact rows written before stores had an identity"

#: Rows of one store as revision 0003 recorded them: (key, flow_name, task tags).
OLD_ROWS: list[tuple[str, str | None, list[str]]] = [
    ("a.json", "flow-a", ["nightly", "big"]),
    ("dir/b.json", "flow-a", ["nightly"]),
    ("c.json", None, []),
]
KEYS = sorted(key for key, _, _ in OLD_ROWS)

# revision 0003's tables, as far as these tests write them
OLD_ARTIFACTS = sa.table(
    "xpersist_artifacts",
    sa.column("id", sa.Integer()),
    sa.column("key", sa.String()),
    sa.column("serializer", sa.String()),
    sa.column("load_kwargs", JSONType),
    sa.column("dump_kwargs", JSONType),
    sa.column("additional_metadata", JSONType),
    sa.column("created_at", UTCDateTime()),
    sa.column("size_bytes", sa.BigInteger()),
    sa.column("versions", JSONType),
    sa.column("flow_name", sa.String()),
)
OLD_TAGS = sa.table(
    "xpersist_artifact_tags",
    sa.column("artifact_id", sa.Integer()),
    sa.column("tag", sa.String()),
    sa.column("created_at", UTCDateTime()),
)


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The directory of the store whose rows the old index holds."""
    return tmp_path / "store"


def embedded_url(root: Path) -> str:
    return f"sqlite:///{root}/{HIDDEN_DIR}/index.sqlite"


def shared_url(tmp_path: Path, database_url: str | None) -> str:
    """A database outside every store: the PostgreSQL one, or a SQLite file of its own."""
    return database_url or f"sqlite:///{tmp_path}/shared.sqlite"


def create_0003_index(url: str, root: Path) -> None:
    """An index at revision 0003 holding OLD_ROWS (with tags, payloads at ``root``), by SQL."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_index_engine(url)
    try:
        run_alembic(engine, "upgrade", "0003")
        with engine.begin() as conn:
            for day, (key, flow, tags) in enumerate(OLD_ROWS):
                created = T0 + timedelta(days=day)
                metadata: dict[str, Any] = {"task_tags": tags}
                if flow:
                    metadata["flow_name"] = flow
                artifact_id = conn.execute(
                    OLD_ARTIFACTS.insert()
                    .values(
                        key=key,
                        serializer="json",
                        load_kwargs={},
                        dump_kwargs={},
                        additional_metadata=metadata,
                        created_at=created,
                        size_bytes=len(json.dumps({"key": key})),
                        versions={"xpersist_sql": "0.0.3"},
                        flow_name=flow,
                    )
                    .returning(OLD_ARTIFACTS.c.id)
                ).scalar_one()
                for tag in tags:
                    conn.execute(
                        OLD_TAGS.insert().values(
                            artifact_id=artifact_id, tag=tag, created_at=created
                        )
                    )
                payload = root / key
                payload.parent.mkdir(parents=True, exist_ok=True)
                payload.write_text(json.dumps({"key": key}))
    finally:
        engine.dispose()


def state(url: str) -> dict[str, Any]:
    """Everything the index holds: revision, tables and every row of every table of ours."""
    engine = create_index_engine(url)
    try:
        with engine.connect() as conn:
            tables = sorted(sa.inspect(conn).get_table_names())
            rows = {}
            for name in tables:
                if name == VERSION_TABLE:
                    continue
                table = sa.Table(name, sa.MetaData(), autoload_with=conn)
                rows[name] = sorted(
                    (tuple(map(repr, row)) for row in conn.execute(sa.select(table))),
                )
            return {"revision": current_revision(conn), "tables": tables, "rows": rows}
    finally:
        engine.dispose()


def owners(url: str) -> dict[str, set[str]]:
    """Key -> marker ids of the stores holding it."""
    engine = create_index_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text(
                    "SELECT a.key, s.uid FROM xpersist_artifacts a "
                    "JOIN xpersist_stores s ON s.id = a.store_id"
                )
            ).all()
    finally:
        engine.dispose()
    result: dict[str, set[str]] = {}
    for key, uid in found:
        result.setdefault(key, set()).add(uid)
    return result


def stores_table(url: str) -> list[tuple[str, str]]:
    engine = create_index_engine(url)
    try:
        with engine.connect() as conn:
            return [
                (row.uid, row.root)
                for row in conn.execute(sa.text("SELECT uid, root FROM xpersist_stores"))
            ]
    finally:
        engine.dispose()


def tags(url: str) -> list[tuple[str, str]]:
    engine = create_index_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(
                conn.execute(
                    sa.text(
                        "SELECT a.key, t.tag FROM xpersist_artifact_tags t "
                        "JOIN xpersist_artifacts a ON a.id = t.artifact_id"
                    )
                ).all()
            )
    finally:
        engine.dispose()


OLD_TAG_ROWS = sorted((key, tag) for key, _, row_tags in OLD_ROWS for tag in row_tags)


def marker_id(root: Path) -> str | None:
    marker = read_marker(fsspec.filesystem("file"), str(root))
    return None if marker is None else marker.store_id


def revision_of(url: str) -> str | None:
    engine = create_index_engine(url)
    try:
        with engine.connect() as conn:
            return current_revision(conn)
    finally:
        engine.dispose()


def schema_differences(url: str) -> list[Any]:
    engine = create_index_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            return list(compare_metadata(context, METADATA))
    finally:
        engine.dispose()


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_head_is_0006() -> None:
    """These tests are about revision 0004; 0005 and 0006 only add tables and change indexes."""
    assert head_revision() == HEAD


# -- no store given --------------------------------------------------------------------------
def test_upgrade_without_a_store_is_refused_and_changes_nothing(
    tmp_path: Path, root: Path, database_url: str | None, runner: CliRunner
) -> None:
    url = shared_url(tmp_path, database_url)  # no store can be derived from this URL
    create_0003_index(url, root)
    before = state(url)
    assert before["revision"] == "0003"

    engine = create_index_engine(url)
    try:
        with pytest.raises(RuntimeError, match=REFUSED) as plain:
            run_alembic(engine, "upgrade", "head")
    finally:
        engine.dispose()
    assert "xpersist-sql db upgrade --store ROOT" in str(plain.value)
    assert state(url) == before

    with pytest.raises(SchemaVersionError, match=REFUSED) as public:
        upgrade(url)
    assert "xpersist-sql db upgrade --store ROOT" in str(public.value)
    assert state(url) == before
    assert "xpersist_stores" not in before["tables"]

    result = invoke(runner, "db", "upgrade", "--db", url)
    assert result.exit_code == 2, result.output
    assert "written before stores had an identity" in result.stderr
    assert "--store ROOT" in result.stderr
    assert state(url) == before
    assert marker_id(root) is None  # nothing was decided about the store


def test_a_store_on_an_old_index_says_how_to_upgrade(
    tmp_path: Path, root: Path, database_url: str | None, runner: CliRunner
) -> None:
    """A write to a store whose index is at 0003 names the command that upgrades it, and that
    command works (it needs --db when the index is not the store's embedded file)."""
    url = database_url or embedded_url(root)
    create_0003_index(url, root)
    before = state(url)
    store = CacheStore(root, database_url=database_url)
    try:
        with pytest.raises(SchemaVersionError, match="xpersist-sql db upgrade --store") as error:
            store.put("new.json", {"new": 1}, serializer="json")
    finally:
        store.close()
    assert state(url) == before
    assert not (root / "new.json").exists()

    hinted = shlex.split(str(error.value).rpartition("with: ")[2])
    assert hinted[:3] == ["xpersist-sql", "db", "upgrade"], hinted
    result = invoke(runner, *hinted[1:])
    assert result.exit_code == 0, (hinted, result.output)
    assert revision_of(url) == HEAD
    uid = marker_id(root)
    assert owners(url) == {key: {uid} for key in KEYS}


# -- the store given -------------------------------------------------------------------------
def test_upgrade_with_store_root_gives_the_rows_to_that_store(
    tmp_path: Path, root: Path, database_url: str | None
) -> None:
    url = database_url or embedded_url(root)
    create_0003_index(url, root)
    assert marker_id(root) is None

    assert upgrade(url, "head", store_root=str(root)) == ("0003", HEAD)
    uid = marker_id(root)
    assert uid is not None  # the marker was written
    assert stores_table(url) == [(uid, os.path.realpath(root))]
    assert owners(url) == {key: {uid} for key in KEYS}
    assert schema_differences(url) == []
    # running it again changes nothing
    assert upgrade(url, "head", store_root=str(root)) == (HEAD, HEAD)
    assert marker_id(root) == uid

    store = CacheStore(root, database_url=database_url)
    reader = CacheStore(root, database_url=database_url, readonly=True)
    try:
        assert store.keys() == KEYS
        assert reader.keys() == KEYS
        assert store.get("dir/b.json") == {"key": "dir/b.json"}
        assert store.get_artifact("a.json").created_at == T0
        assert [a.key for a in store.query(flow_name="flow-a")] == ["dir/b.json", "a.json"]
        store.put("new.json", {"new": 1}, serializer="json")
        assert owners(url)["new.json"] == {uid}
    finally:
        store.close()
        reader.close()


def test_a_second_store_in_the_database_sees_none_of_the_upgraded_rows(
    tmp_path: Path, root: Path, database_url: str | None
) -> None:
    url = shared_url(tmp_path, database_url)
    create_0003_index(url, root)
    upgrade(url, store_root=str(root))
    first = CacheStore(root, database_url=url)
    second = CacheStore(tmp_path / "second", database_url=url)
    try:
        assert second.keys() == []
        assert "a.json" not in second
        # keys are unique per store: the second store may use the first one's keys
        second.put("a.json", {"second": True}, serializer="json")
        second.put("mine.json", 1, serializer="json", additional_metadata={"flow_name": "flow-a"})
        assert second.keys() == ["a.json", "mine.json"]
        assert second.get("a.json") == {"second": True}
        assert [a.key for a in second.query(flow_name="flow-a")] == ["mine.json"]
        assert first.keys() == KEYS  # unchanged
        assert first.get("a.json") == {"key": "a.json"}
        assert [a.key for a in first.query(flow_name="flow-a")] == ["dir/b.json", "a.json"]
        uid, other = marker_id(root), marker_id(tmp_path / "second")
        assert uid is not None and other is not None and uid != other
        assert owners(url) == {
            **{key: {uid} for key in KEYS},
            "a.json": {uid, other},
            "mine.json": {other},
        }
        assert sorted(row_uid for row_uid, _ in stores_table(url)) == sorted([uid, other])
    finally:
        first.close()
        second.close()


def test_upgrade_of_an_embedded_index_finds_its_store(root: Path, runner: CliRunner) -> None:
    """``<root>/.xpersist_sql/index.sqlite`` belongs to the store at ``<root>``: no option."""
    url = embedded_url(root)
    create_0003_index(url, root)
    assert upgrade(url) == ("0003", HEAD)
    uid = marker_id(root)
    assert uid is not None
    assert owners(url) == {key: {uid} for key in KEYS}
    with contextlib.closing(CacheStore(root, readonly=True)) as store:
        assert store.keys() == KEYS

    # the same through the command line, from 0003 again
    run = create_index_engine(url)
    try:
        run_alembic(run, "downgrade", "0003")
    finally:
        run.dispose()
    result = invoke(runner, "db", "upgrade", "--store", str(root))
    assert result.exit_code == 0, result.output
    assert revision_of(url) == HEAD
    assert owners(url) == {key: {uid} for key in KEYS}  # the same store id came back


def test_db_upgrade_store_and_db_options(
    tmp_path: Path, root: Path, postgres_url: str, runner: CliRunner
) -> None:
    """``xpersist-sql db upgrade --store ROOT --db URL``: a store whose index is shared."""
    create_0003_index(postgres_url, root)
    result = invoke(runner, "db", "upgrade", "--store", str(root), "--db", postgres_url)
    assert result.exit_code == 0, result.output
    uid = marker_id(root)
    assert uid is not None
    assert owners(postgres_url) == {key: {uid} for key in KEYS}
    with contextlib.closing(CacheStore(root, database_url=postgres_url)) as store:
        assert store.keys() == KEYS


def test_upgrade_of_a_store_that_does_not_exist(tmp_path: Path, root: Path) -> None:
    """The embedded index of a path that is not a store: a clear error, nothing created."""
    with pytest.raises(StoreNotFoundError, match="no xpersist_sql store"):
        upgrade(embedded_url(root), store_root=str(root))
    assert not root.exists()


def test_upgrade_and_downgrade_through_0004_keep_every_tag(
    tmp_path: Path, root: Path, database_url: str | None
) -> None:
    """The tags rows reference the artifacts (ON DELETE CASCADE): rebuilding the artifacts
    table (SQLite's batch mode) must not take them with it."""
    url = database_url or embedded_url(root)
    create_0003_index(url, root)
    assert tags(url) == OLD_TAG_ROWS
    upgrade(url, store_root=str(root))
    assert tags(url) == OLD_TAG_ROWS
    with contextlib.closing(CacheStore(root, database_url=database_url)) as store:
        assert [a.key for a in store.query(tags=["nightly"])] == ["dir/b.json", "a.json"]
    engine = create_index_engine(url)
    try:
        run_alembic(engine, "downgrade", "0003")
    finally:
        engine.dispose()
    assert tags(url) == OLD_TAG_ROWS


def test_postgres_keys_compare_bytewise_from_0004(postgres_url: str, root: Path) -> None:
    create_0003_index(postgres_url, root)
    query = sa.text(
        "SELECT collation_name FROM information_schema.columns "
        "WHERE table_name = 'xpersist_artifacts' AND column_name = 'key'"
    )
    engine = create_index_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(query).scalar() is None
        upgrade(postgres_url, store_root=str(root))
        with engine.connect() as conn:
            assert conn.execute(query).scalar() == "C"
        run_alembic(engine, "downgrade", "0003")
        with engine.connect() as conn:
            assert conn.execute(query).scalar() is None
    finally:
        engine.dispose()


# -- downgrade -------------------------------------------------------------------------------
def test_downgrade_of_two_stores_is_refused_and_loses_nothing(
    tmp_path: Path, database_url: str | None
) -> None:
    url = shared_url(tmp_path, database_url)
    first = CacheStore(tmp_path / "first", database_url=url)
    second = CacheStore(tmp_path / "second", database_url=url)
    try:
        for store in (first, second):
            store.put("same.json", {"store": store.path}, serializer="json")
            store.put(
                f"{Path(store.path).name}.json",
                1,
                serializer="json",
                additional_metadata={"task_tags": ["t"]},
            )
    finally:
        first.close()
        second.close()
    before = state(url)
    assert before["revision"] == HEAD

    engine = create_index_engine(url)
    try:
        for target in ("0003", "base", "-3"):  # (-3: through 0004, from head 0006)
            with pytest.raises(RuntimeError, match="holds the artifacts of 2 stores") as error:
                run_alembic(engine, "downgrade", target)
            assert "Give each store its own database" in str(error.value)
            assert state(url) == before
    finally:
        engine.dispose()

    for name in ("first", "second"):
        with contextlib.closing(CacheStore(tmp_path / name, database_url=url)) as store:
            assert store.keys() == sorted(["same.json", f"{name}.json"])
            assert store.get("same.json") == {"store": store.path}
            assert [a.key for a in store.query(tags=["t"])] == [f"{name}.json"]


def test_db_downgrade_of_two_stores_is_a_user_error(
    tmp_path: Path, database_url: str | None, runner: CliRunner
) -> None:
    """``xpersist-sql db downgrade`` says why in one line (exit 2), not with a traceback."""
    url = shared_url(tmp_path, database_url)
    for name in ("first", "second"):
        with contextlib.closing(CacheStore(tmp_path / name, database_url=url)) as store:
            store.put("same.json", name, serializer="json")
    before = state(url)
    result = runner.invoke(app, ["db", "downgrade", "0003", "--db", url])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "holds the artifacts of 2 stores" in result.stderr
    assert state(url) == before


# -- concurrent upgrades ---------------------------------------------------------------------
@contextlib.contextmanager
def empty_database(backend: str, tmp_path: Path, admin_url: str | None) -> Iterator[str]:
    """A fresh empty database: a PostgreSQL database (dropped afterwards) or a SQLite file."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/{uuid.uuid4().hex[:8]}.sqlite"
        return
    assert admin_url is not None
    name = f"xpersist_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def admin_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    return None if backend == "sqlite" else str(request.getfixturevalue("postgres_admin_url"))


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_upgrades_of_an_empty_database_all_succeed(
    backend: str, tmp_path: Path, admin_url: str | None, round_: int
) -> None:
    """Three threads call ``upgrade(url)`` at once: all succeed, one of them creates the schema."""
    with empty_database(backend, tmp_path, admin_url) as url:
        barrier = threading.Barrier(3)
        results: list[tuple[str | None, str | None]] = []
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                barrier.wait(timeout=30)
                results.append(upgrade(url))
            except BaseException as exc:  # reported below
                errors.append(exc)

        # daemon threads: migrations racing without the schema lock can hang (a database lock
        # against a Python one); the test then fails instead of never ending
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads), "an upgrade never finished"
        assert not errors, errors
        # under the schema lock: one creates the schema, the others find it at head
        expected = [(None, HEAD), (HEAD, HEAD), (HEAD, HEAD)]
        assert sorted(results, key=repr) == sorted(expected, key=repr)
        assert revision_of(url) == HEAD
        assert schema_differences(url) == []


#: Imports first, then waits for the parent's go so that the three upgrades start together.
WORKER = """
import json, sys
from xpersist_sql.db.schema import upgrade
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(upgrade(sys.argv[1])), flush=True)
"""


@pytest.mark.parametrize("round_", range(2))
def test_concurrent_upgrades_from_processes(
    backend: str, tmp_path: Path, admin_url: str | None, round_: int
) -> None:
    """Three processes call ``upgrade(url)`` at once on an empty database: all succeed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPERSIST_SQL")}
    with empty_database(backend, tmp_path, admin_url) as url:
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(3)
        ]
        try:
            for process in processes:
                assert process.stdout is not None
                assert process.stdout.readline().strip() == "ready", process.stderr
            for process in processes:  # all three go at once
                assert process.stdin is not None
                process.stdin.write("go\n")
                process.stdin.flush()
            outcomes = [process.communicate(timeout=120) for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        for process, (_, err) in zip(processes, outcomes, strict=True):
            assert process.returncode == 0, err
        results = sorted((json.loads(out) for out, _ in outcomes), key=repr)
        assert results == sorted([[None, HEAD], [HEAD, HEAD], [HEAD, HEAD]], key=repr)
        assert revision_of(url) == HEAD
        assert schema_differences(url) == []
