"""The schema is created by Alembic only, and a store refuses an index at another revision."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from xpersist_sql import CacheStore, SchemaVersionError, StoreNotFoundError
from xpersist_sql.db.engine import create_index_engine, network_filesystem_type
from xpersist_sql.db.schema import (
    VERSION_TABLE,
    current_revision,
    head_revision,
    migrations_dir,
    run_alembic,
    upgrade,
)


def _url(store_path: Path, database_url: str | None) -> str:
    return database_url or f"sqlite:///{store_path}/.xpersist_sql/index.sqlite"


def test_brand_new_index_is_created_at_head_by_alembic(
    tmp_path: Path, database_url: str | None
) -> None:
    store = CacheStore(tmp_path / "s", database_url=database_url)
    assert store.keys() == []
    with store.engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        tables = set(sa.inspect(conn).get_table_names())
    assert {"xpersist_artifacts", "xpersist_artifact_tags", VERSION_TABLE} <= tables


def test_sqlite_pragmas(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "s")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000


def test_older_index_raises_with_the_upgrade_command(
    tmp_path: Path, database_url: str | None
) -> None:
    path = tmp_path / "s"
    CacheStore(path, database_url=database_url).put("a.json", {"a": 1}, serializer="json")
    url = _url(path, database_url)
    engine = create_index_engine(url)
    run_alembic(engine, "downgrade", "0001")

    with pytest.raises(SchemaVersionError) as info:
        CacheStore(path, database_url=database_url).keys()
    message = str(info.value)
    assert "'0001'" in message and repr(head_revision()) in message
    assert "xpersist-sql db upgrade" in message
    # the old index was not migrated behind the user's back
    with engine.connect() as conn:
        assert current_revision(conn) == "0001"

    engine.dispose()
    # the rows of revision 0001 belong to the store at ``path``: the upgrade is told so
    assert upgrade(url, "head", store_root=str(path)) == ("0001", head_revision())
    store = CacheStore(path, database_url=database_url)
    assert store.get("a.json") == {"a": 1}


def test_newer_index_raises(tmp_path: Path, database_url: str | None) -> None:
    path = tmp_path / "s"
    CacheStore(path, database_url=database_url).put("a.json", 1, serializer="json")
    engine = create_index_engine(_url(path, database_url))
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_future'"))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="newer version") as info:
        CacheStore(path, database_url=database_url).keys()
    assert "9999_future" in str(info.value)


def test_foreign_table_without_version_table(tmp_path: Path, database_url: str | None) -> None:
    path = tmp_path / "s"
    engine = create_index_engine(_url(path, database_url))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE xpersist_artifacts (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="not created by xpersist_sql"):
        CacheStore(path, database_url=database_url).put("a.json", 1, serializer="json")


def test_readonly_store_does_not_create_an_index(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="no xpersist_sql store at"):
        CacheStore(tmp_path / "s", readonly=True)
    assert not (tmp_path / "s").exists()


def test_reading_a_new_writable_store_creates_nothing(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "s")
    assert store.keys() == [] and len(store) == 0 and "a" not in store
    assert store.query() == []
    assert not (tmp_path / "s").exists()


def test_migrations_are_found() -> None:
    found = migrations_dir()
    assert (found / "env.py").is_file()
    assert sorted(p.name for p in (found / "versions").glob("0*.py"))[:2] == [
        "0001_artifacts.py",
        "0002_query_columns.py",
    ]


MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
server:/export /mnt/shared nfs4 rw,relatime 0 0
//nas/share /mnt/smb cifs rw 0 0
tmpfs /mnt/shared/local tmpfs rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/home/user/cache", None),
        ("/mnt/shared/cache", "nfs4"),
        ("/mnt/shared", "nfs4"),
        ("/mnt/smb/x/y", "cifs"),
        ("/mnt/shared/local/cache", None),
        ("/mnt/sharedness", None),
    ],
)
def test_network_filesystem_detection(path: str, expected: str | None) -> None:
    assert network_filesystem_type(Path(path), MOUNTS) == expected


def test_sqlite_on_this_machine_gives_no_network_warning(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    CacheStore(tmp_path / "s").keys()
    assert not [w for w in recwarn if "network filesystem" in str(w.message)]


def test_sqlite_on_a_network_filesystem_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No NFS server can run here: pretend the mount table says the store is on NFS.
    import xpersist_sql.db.engine as engine_module

    monkeypatch.setattr(engine_module, "network_filesystem_type", lambda path: "nfs4")
    with pytest.warns(UserWarning, match="network filesystem") as record:
        CacheStore(tmp_path / "s").put("a.json", 1, serializer="json")
    assert "postgresql" in str(record[0].message).lower()
