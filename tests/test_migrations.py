"""The real upgrade path of an index, on SQLite and PostgreSQL, and the migrations in the wheel.

- an index created at revision 0001 with rows (written by SQL, as the version that made them did)
  is upgraded to head with ``upgrade(url, store_root=...)`` (revision 0004 gives the old rows to
  the store at that root): the promoted columns and tags are backfilled and queries find the rows;
- downgrading to 0001 (before stores had an identity) and upgrading again loses no row, and the
  rows come back to the same store (its marker stays);
- Alembic's autogenerate finds no difference between the tables in ``db/tables.py`` and the
  schema the migrations build (also after a downgrade/upgrade cycle);
- a wheel built from the repository carries the migrations and its ``xpersist-sql db`` finds
  them inside the installed package (down to 0001 and back up with ``--store``).

Revision 0004 itself (no store given, several stores, concurrent upgrades) is covered in
``test_store_identity_migration.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fsspec
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tests.helpers import install_wheel_in_fresh_venv
from xpersist_sql import CacheStore, SchemaVersionError
from xpersist_sql.db.engine import create_index_engine
from xpersist_sql.db.index import promoted_columns, tags_of
from xpersist_sql.db.schema import (
    VERSION_TABLE,
    current_revision,
    head_revision,
    run_alembic,
    upgrade,
)
from xpersist_sql.db.tables import ARTIFACTS, METADATA, STORES, TAGS
from xpersist_sql.marker import read_marker

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2021, 12, 14, 8, 0, tzinfo=timezone.utc)

#: Rows as revision 0001 stored them: the Prefect context only inside additional_metadata.
OLD_ROWS: list[tuple[str, dict[str, Any]]] = [
    (
        "a/one.json",
        {
            "flow_name": "flow-a",
            "task_name": "get_data",
            "flow_run_id": "3f1c0d1e-0000-4000-8000-000000000001",
            "task_run_id": "task-run-1",
            "task_tags": ["nightly", "big"],
            "tags": ["big", "extra"],
        },
    ),
    ("a/two.json", {"flow_name": "flow-a", "task_name": "clean", "task_tags": []}),
    ("b.json", {"flow_name": "flow-b", "task_tags": "not-a-list", "experiment": "ctrl"}),
    ("plain.json", {}),
    ("long.json", {"flow_name": "x" * 600, "flow_run_id": 12345, "map_index": 3}),
    ("unicode.json", {"flow_name": "flüss-日本", "task_tags": ["ünï", "nightly"]}),
]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def index_url(store_path: Path, database_url: str | None) -> str:
    """The URL of the (parametrised) index of ``store_path``."""
    return database_url or f"sqlite:///{store_path}/.xpersist_sql/index.sqlite"


def open_store(store_path: Path, index_url: str) -> CacheStore:
    url = None if index_url.startswith("sqlite") else index_url
    return CacheStore(store_path, database_url=url)


def create_old_index(store_path: Path, url: str) -> sa.Engine:
    """An index at revision 0001 holding OLD_ROWS (payload files included), by plain SQL."""
    engine = create_index_engine(url)
    run_alembic(engine, "upgrade", "0001")
    postgres = engine.dialect.name == "postgresql"
    json_value = "CAST(:{} AS JSONB)" if postgres else ":{}"
    insert = sa.text(
        "INSERT INTO xpersist_artifacts (key, serializer, load_kwargs, dump_kwargs, "
        "additional_metadata, created_at, size_bytes, checksum, fingerprint, expires_at, "
        f"versions) VALUES (:key, 'json', {json_value.format('empty')}, "
        f"{json_value.format('empty')}, {json_value.format('metadata')}, "
        f"{'CAST(:created_at AS TIMESTAMPTZ)' if postgres else ':created_at'}, 8, NULL, NULL, "
        f"NULL, {json_value.format('versions')})"
    )
    with engine.begin() as conn:
        for day, (key, metadata) in enumerate(OLD_ROWS):
            created = T0 + timedelta(days=day)
            conn.execute(
                insert,
                {
                    "key": key,
                    "empty": "{}",
                    "metadata": json.dumps(metadata),
                    "created_at": created.isoformat()
                    if postgres
                    else created.strftime("%Y-%m-%d %H:%M:%S.%f"),
                    "versions": json.dumps({"xpersist_sql": "0.0.1"}),
                },
            )
            payload = store_path / key
            payload.parent.mkdir(parents=True, exist_ok=True)
            payload.write_text(json.dumps({"key": key}))
    return engine


def snapshot(engine: sa.Engine) -> list[tuple[Any, ...]]:
    """The rows' 0001 columns, comparable across revisions."""
    columns = [
        ARTIFACTS.c[name]
        for name in ("id", "key", "serializer", "additional_metadata", "created_at", "versions")
    ]
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(*columns).order_by(ARTIFACTS.c.id))]


def store_uids(engine: sa.Engine) -> dict[str, set[str]]:
    """The marker id of the store owning each row, by key."""
    query = sa.select(ARTIFACTS.c.key, STORES.c.uid).join(
        STORES, STORES.c.id == ARTIFACTS.c.store_id
    )
    with engine.connect() as conn:
        owners: dict[str, set[str]] = {}
        for key, uid in conn.execute(query):
            owners.setdefault(key, set()).add(uid)
        return owners


def marker_uid(store_path: Path) -> str:
    marker = read_marker(fsspec.filesystem("file"), str(store_path))
    assert marker is not None, f"no marker in {store_path}"
    return marker.store_id


def schema_differences(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        return list(compare_metadata(context, METADATA))


# -- upgrade path ----------------------------------------------------------------------------
def test_upgrade_from_revision_1_backfills_and_queries(store_path: Path, index_url: str) -> None:
    engine = create_old_index(store_path, index_url)
    before = snapshot(engine)
    old = open_store(store_path, index_url)
    try:
        # reading and writing both say how to upgrade (the store has no marker yet: its rows
        # predate store identities)
        with pytest.raises(SchemaVersionError, match="xpersist-sql db upgrade"):
            old.keys()
        with pytest.raises(SchemaVersionError, match="xpersist-sql db upgrade"):
            old.put("new.json", {"new": True}, serializer="json")
    finally:
        old.close()
    assert not (store_path / "new.json").exists()
    assert snapshot(engine) == before

    assert upgrade(index_url, "head", store_root=str(store_path)) == ("0001", head_revision())
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
    assert snapshot(engine) == before
    assert store_uids(engine) == {key: {marker_uid(store_path)} for key, _ in OLD_ROWS}

    store = open_store(store_path, index_url)
    try:
        assert len(store) == len(OLD_ROWS)
        assert [a.key for a in store.query(flow_name="flow-a")] == ["a/two.json", "a/one.json"]
        assert [a.key for a in store.query(task_name="get_data")] == ["a/one.json"]
        assert [a.key for a in store.query(flow_run_id=OLD_ROWS[0][1]["flow_run_id"])] == [
            "a/one.json"
        ]
        assert [a.key for a in store.query(task_run_id="task-run-1")] == ["a/one.json"]
        assert [a.key for a in store.query(tags=["nightly"])] == ["unicode.json", "a/one.json"]
        assert [a.key for a in store.query(tags=["big", "extra"])] == ["a/one.json"]
        assert [a.key for a in store.query(tags=["ünï"])] == ["unicode.json"]
        assert [a.key for a in store.query(flow_name="flüss-日本")] == ["unicode.json"]
        assert [a.key for a in store.query(flow_name="x" * 512)] == ["long.json"]
        assert [a.key for a in store.query(flow_run_id="12345")] == ["long.json"]
        assert store.query(tags=["not-a-list"]) == []
        assert [a.key for a in store.query(metadata={"experiment": "ctrl"})] == ["b.json"]
        got = store.query(since=T0 + timedelta(days=1), until=T0 + timedelta(days=3))
        assert [a.key for a in got] == ["b.json", "a/two.json"]
        assert store.get("a/one.json") == {"key": "a/one.json"}
        assert store.get_artifact("a/one.json").created_at == T0
    finally:
        store.close()


def test_backfill_matches_what_put_records(store_path: Path, index_url: str) -> None:
    """An upgraded row has the same promoted columns and tags as a new put would give it."""
    engine = create_old_index(store_path, index_url)
    upgrade(index_url, "head", store_root=str(store_path))
    promoted = [
        ARTIFACTS.c[name] for name in ("flow_name", "task_name", "flow_run_id", "task_run_id")
    ]
    with engine.connect() as conn:
        rows = {
            row.key: row
            for row in conn.execute(sa.select(ARTIFACTS.c.id, ARTIFACTS.c.key, *promoted))
        }
        tag_rows = conn.execute(sa.select(TAGS.c.artifact_id, TAGS.c.tag, TAGS.c.created_at)).all()
        created = dict(conn.execute(sa.select(ARTIFACTS.c.id, ARTIFACTS.c.created_at)).all())
    for key, metadata in OLD_ROWS:
        row = rows[key]
        if key == "long.json":
            # revision 0002 cut names longer than their column; a put now stores a digest form
            # that an exact filter finds (db/tables.py index_text). Old rows keep the cut, found
            # by a filter on their first 512 characters (see the upgrade test above).
            assert row.flow_name == "x" * 512
            continue
        assert {name: row._mapping[name] for name in promoted_columns(metadata)} == (
            promoted_columns(metadata)
        ), key
        assert {tag for artifact_id, tag, _ in tag_rows if artifact_id == row.id} == tags_of(
            metadata
        ), key
    # the tags carry their artifact's created_at (the index of "newest with tag T")
    assert all(when == created[artifact_id] for artifact_id, _, when in tag_rows)


def test_downgrade_and_upgrade_again_lose_no_row(store_path: Path, index_url: str) -> None:
    store = open_store(store_path, index_url)
    for i in range(5):
        store.put(
            f"k{i}.json",
            {"i": i},
            serializer="json",
            additional_metadata={"flow_name": f"f{i % 2}", "task_tags": ["t", f"t{i}"]},
        )
    queried = [a.model_dump() for a in store.query(tags=["t"])]
    store.close()
    uid = marker_uid(store_path)
    engine = create_index_engine(index_url)
    before = snapshot(engine)
    assert store_uids(engine) == {f"k{i}.json": {uid} for i in range(5)}

    run_alembic(engine, "downgrade", "0001")
    with engine.connect() as conn:
        assert current_revision(conn) == "0001"
        inspector = sa.inspect(conn)
        assert not inspector.has_table(TAGS.name)
        columns = {column["name"] for column in inspector.get_columns(ARTIFACTS.name)}
        assert "flow_name" not in columns
    assert snapshot(engine) == before

    # rows written before 0004 (all of them, now) need their store: the marker stayed, so the
    # upgrade gives them back to the same store id
    assert upgrade(index_url, "head", store_root=str(store_path)) == ("0001", head_revision())
    assert snapshot(engine) == before
    assert store_uids(engine) == {f"k{i}.json": {uid} for i in range(5)}
    assert marker_uid(store_path) == uid
    assert schema_differences(engine) == []

    # and across the 0004 boundary alone, once more
    run_alembic(engine, "downgrade", "0003")
    assert snapshot(engine) == before
    upgrade(index_url, "head", store_root=str(store_path))
    assert snapshot(engine) == before
    assert store_uids(engine) == {f"k{i}.json": {uid} for i in range(5)}
    assert schema_differences(engine) == []
    store = open_store(store_path, index_url)
    try:
        assert [a.model_dump() for a in store.query(tags=["t"])] == queried
        assert [a.key for a in store.query(flow_name="f1")] == ["k3.json", "k1.json"]
        assert store.get("k4.json") == {"i": 4}
    finally:
        store.close()
        engine.dispose()


def test_models_and_migrations_agree(index_url: str) -> None:
    engine = create_index_engine(index_url)
    try:
        run_alembic(engine, "upgrade", "head")
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def test_every_revision_downgrades_to_an_empty_database(index_url: str) -> None:
    engine = create_index_engine(index_url)
    try:
        run_alembic(engine, "upgrade", "head")
        run_alembic(engine, "downgrade", "base")
        with engine.connect() as conn:
            assert set(sa.inspect(conn).get_table_names()) <= {VERSION_TABLE}
        run_alembic(engine, "upgrade", "head")
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


# -- the migrations inside the wheel ---------------------------------------------------------
@pytest.mark.slow
def test_wheel_ships_the_migrations(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # build in this environment when it has the build backend, else in an isolated one
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-isolation"]
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", *isolation, "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = dist.glob("xpersist_sql-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "xpersist_sql/_migrations/env.py" in names
    assert any(name.startswith("xpersist_sql/_migrations/versions/0002") for name in names)

    # a fresh venv whose dependencies come from this one (a path entry, not its .pth files, so
    # the editable install of the repository is not visible), with the wheel installed
    python, site = install_wheel_in_fresh_venv(wheel, tmp_path / "venv")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XPERSIST_SQL"))}
    found = subprocess.run(
        [str(python), "-c", "import xpersist_sql.db.schema as s, xpersist_sql as x; "
         "print(x.__file__); print(s.migrations_dir())"],
        cwd=outside, env=env, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert found[0].startswith(site), found
    assert Path(found[1]) == Path(site, "xpersist_sql", "_migrations"), found

    # a store made by the installed package, taken down to 0001 (before stores had an identity)
    # and back up by its `xpersist-sql db`: the rows come back to the store named by --store
    store = outside / "store"
    script = python.parent / "xpersist-sql"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=outside, env=env, capture_output=True, text=True)

    made = run(
        str(python), "-c", "import sys, xpersist_sql as x; "
        "x.CacheStore(sys.argv[1]).put('a.json', {'a': 1}, serializer='json')", str(store),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    downgrade = run(str(script), "db", "downgrade", "0001", "--store", str(store))
    assert downgrade.returncode == 0, downgrade.stderr
    current = run(str(script), "db", "current", "--store", str(store))
    assert current.returncode == 0, current.stderr
    assert "0001" in current.stdout
    upgraded = run(str(script), "db", "upgrade", "--store", str(store))
    assert upgraded.returncode == 0, upgraded.stderr
    current = run(str(script), "db", "current", "--json", "--store", str(store))
    assert current.returncode == 0, current.stderr
    assert json.loads(current.stdout)["current"] == head_revision()
    listing = run(str(python), "-m", "xpersist_sql", "ls", "--json", "--store", str(store))
    assert listing.returncode == 0, listing.stderr
    assert [artifact["key"] for artifact in json.loads(listing.stdout)] == ["a.json"]


def test_head_revision_constant_is_the_migrations_head() -> None:
    """Opening a store compares the index with HEAD_REVISION without loading Alembic: a new
    revision must move the constant too."""
    from alembic.script import ScriptDirectory

    from xpersist_sql.db.schema import HEAD_REVISION, alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [HEAD_REVISION]


def test_opening_a_store_does_not_load_alembic(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from xpersist_sql import CacheStore\n"
        f"store = CacheStore({str(tmp_path / 's')!r})\n"
        "assert store.get('a.json') == 1\n"
        "assert 'alembic' not in sys.modules, sorted(m for m in sys.modules if 'alembic' in m)\n"
    )
    CacheStore(tmp_path / "s").put("a.json", 1, serializer="json")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
