"""``xpersist-sql db``: URLs as MLflow users type them, unknown and newer revisions, half-applied
migrations and the SQL a DBA runs (``--sql``), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from tests.test_cli import assert_user_error, invoke, where
from tests.test_store_identity_migration import revision_of
from xpersist_sql import CacheStore
from xpersist_sql.db.engine import create_index_engine, redact_url
from xpersist_sql.db.schema import VERSION_TABLE, head_revision

NEWER = "0099_from_the_future"


@pytest.fixture
def store(make_store: Any) -> CacheStore:
    """A store with two artifacts on the parametrised backend, closed (the CLI opens it)."""
    store: CacheStore = make_store()
    store.put("a.json", {"a": 1}, serializer="json")
    store.put("b.json", [1, 2], serializer="json")
    store.close()
    return store


def one_line_error(result: Any, *fragments: str) -> str:
    """Exit status 2, one ``error:`` line on stderr naming the fragments; return that line."""
    assert_user_error(result, *fragments)
    return str(result.stderr.strip())


def at_revision(runner: CliRunner, store: CacheStore, revision: str) -> tuple[str, list[str]]:
    """Downgrade the store's index to ``revision``; return its URL and the CLI options."""
    opts = where(store)
    assert invoke(runner, "db", "downgrade", revision, *opts).exit_code == 0
    return store.database_url, opts


def execute(url: str, *statements: str) -> None:
    engine = create_index_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def columns(url: str, table: str) -> set[str]:
    engine = create_index_engine(url)
    try:
        with engine.connect() as conn:
            return {column["name"] for column in sa.inspect(conn).get_columns(table)}
    finally:
        engine.dispose()


# -- db upgrade URL (MLflow's habit) ---------------------------------------------------------
def test_db_upgrade_takes_a_url_argument_as_the_database(
    runner: CliRunner, store: CacheStore
) -> None:
    url = store.database_url
    assert invoke(runner, "db", "downgrade", "0003", *where(store)).exit_code == 0
    # the rows of revision 0003 need their store: --store names it, the URL is the argument
    result = invoke(runner, "db", "upgrade", url, "--store", store.path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"upgraded {redact_url(url)} from 0003 to {head_revision()}"
    assert "Range revision" not in result.stdout + result.stderr
    assert revision_of(url) == head_revision()

    again = invoke(runner, "db", "upgrade", url, "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout) == {
        "url": redact_url(url),
        "before": head_revision(),
        "after": head_revision(),
    }


def test_db_upgrade_url_argument_of_an_empty_database(runner: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/index.sqlite"
    result = invoke(runner, "db", "upgrade", url)
    assert result.exit_code == 0, result.stderr
    assert f"from an empty database to {head_revision()}" in result.stdout
    assert revision_of(url) == head_revision()


def test_db_url_argument_mistakes(runner: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/index.sqlite"
    other = f"sqlite:///{tmp_path}/other.sqlite"
    one_line_error(invoke(runner, "db", "upgrade", url, "--db", other), "two databases", "--db")
    message = one_line_error(invoke(runner, "db", "downgrade", url), "--db URL", "downgrade -1")
    assert url in message
    secret = "postgresql+psycopg://me:s3cret@127.0.0.1:1/x"
    result = invoke(runner, "db", "downgrade", secret)
    assert "s3cret" not in one_line_error(result, "--db")
    assert not (tmp_path / "index.sqlite").exists()


# -- revisions this version does not know ----------------------------------------------------
def test_index_upgraded_by_a_newer_version(runner: CliRunner, store: CacheStore) -> None:
    url = store.database_url
    execute(url, f"UPDATE {VERSION_TABLE} SET version_num = '{NEWER}'")
    opts = where(store)

    current = invoke(runner, "db", "current", *opts)
    assert current.exit_code == 1, current.stderr  # a problem found, not a usage error
    text = current.stdout
    assert text.startswith(f"{NEWER}:") and "upgraded by a newer xpersist_sql" in text
    assert "pip install -U xpersist_sql" in text
    assert f"xpersist-sql db downgrade {head_revision()}" in text
    assert "run xpersist-sql db upgrade" not in text and "run `xpersist-sql db upgrade" not in text
    data = json.loads(invoke(runner, "db", "current", "--json", *opts).stdout)
    assert data == {
        "url": redact_url(url),
        "current": NEWER,
        "head": head_revision(),
        "state": "newer",
    }

    for command in (["upgrade"], ["upgrade", "head"], ["downgrade", "-1"], ["downgrade", "0003"]):
        result = invoke(runner, "db", *command, *opts)
        message = one_line_error(result, NEWER, "newer xpersist_sql", "pip install -U")
        assert "Can't locate revision" not in message
    assert revision_of(url) == NEWER  # nothing was touched

    history = invoke(runner, "db", "history", *opts)
    assert history.exit_code == 0
    assert "newer xpersist_sql" in history.stderr


def test_unknown_target_revision(runner: CliRunner, store: CacheStore) -> None:
    opts = where(store)
    for command in (["upgrade", "0007"], ["downgrade", "abc"], ["upgrade", "0007", "--sql"]):
        message = one_line_error(invoke(runner, "db", *command, *opts), "unknown revision")
        assert "Can't locate revision" not in message
        assert "0001, 0002, 0003, 0004, 0005, 0006" in message
    assert revision_of(store.database_url) == head_revision()


def test_db_current_states(runner: CliRunner, store: CacheStore, tmp_path: Path) -> None:
    opts = where(store)
    assert invoke(runner, "db", "current", *opts).exit_code == 0
    assert invoke(runner, "db", "downgrade", "0002", *opts).exit_code == 0
    older = invoke(runner, "db", "current", "--json", *opts)
    assert older.exit_code == 0  # db upgrade is the remedy: not a problem found
    assert json.loads(older.stdout)["state"] == "older"

    empty = f"sqlite:///{tmp_path}/empty.sqlite"
    assert json.loads(invoke(runner, "db", "current", "--json", "--db", empty).stdout) == {
        "url": empty,
        "current": None,
        "head": head_revision(),
        "state": "empty",
    }
    foreign = f"sqlite:///{tmp_path}/foreign.sqlite"
    execute(foreign, "CREATE TABLE xpersist_artifacts (id INTEGER PRIMARY KEY)")
    result = invoke(runner, "db", "current", "--db", foreign)
    assert result.exit_code == 1
    assert "not created by xpersist_sql's migrations" in result.stdout


# -- a half-applied migration ----------------------------------------------------------------
def test_half_applied_migration_explains_how_to_recover(
    runner: CliRunner, store: CacheStore
) -> None:
    url, opts = at_revision(runner, store, "0002")
    # half of revision 0003 (the column, not its index) while the version table says 0002
    execute(url, "ALTER TABLE xpersist_artifacts ADD COLUMN last_accessed_at TIMESTAMP")

    result = invoke(runner, "db", "upgrade", *opts)
    message = one_line_error(
        result,
        "cannot upgrade",
        "from 0002",
        "rolled back",
        "still at revision 0002",
        "already has column xpersist_artifacts.last_accessed_at",
        "half applied",
        "restore the index from the backup",
        "ALTER TABLE xpersist_artifacts DROP COLUMN last_accessed_at",
        "xpersist-sql db upgrade",
    )
    assert "Traceback" not in message and "[SQL:" not in message
    assert revision_of(url) == "0002"
    assert "store_id" not in columns(url, "xpersist_artifacts")  # nothing of 0003/0004 stayed

    # the advice works: drop what was half added, upgrade again
    execute(url, "ALTER TABLE xpersist_artifacts DROP COLUMN last_accessed_at")
    result = invoke(runner, "db", "upgrade", *opts)
    assert result.exit_code == 0, result.stderr
    assert revision_of(url) == head_revision()
    assert len(CacheStore(store.path, database_url=url).keys()) == 2


# -- db upgrade --sql ------------------------------------------------------------------------
PG_URL = "postgresql+psycopg://dba:s3cret@db.example.org:5432/cache"


def test_upgrade_sql_writes_a_script_without_the_database(runner: CliRunner) -> None:
    """The dialect is all --sql needs: a server that does not exist is never contacted."""
    result = invoke(runner, "db", "upgrade", "0003", "--sql", "--from", "base", "--db", PG_URL)
    assert result.exit_code == 0, result.stderr
    script = result.stdout
    assert script.startswith("-- xpersist_sql ") and "from an empty database to 0003" in script
    assert "s3cret" not in script and "dba:***@db.example.org" in script
    assert "CREATE TABLE xpersist_artifacts" in script
    assert "CREATE TABLE xpersist_artifact_tags" in script
    assert "ALTER TABLE xpersist_artifacts ADD COLUMN last_accessed_at" in script
    assert f"INSERT INTO {VERSION_TABLE} (version_num) VALUES ('0001')" in script
    assert script.rstrip().endswith("COMMIT;")

    part = invoke(runner, "db", "upgrade", "0003", "--sql", "--from", "0002", "--db", PG_URL)
    assert part.exit_code == 0, part.stderr
    assert "CREATE TABLE" not in part.stdout and "last_accessed_at" in part.stdout

    down = invoke(runner, "db", "downgrade", "0001", "--sql", "--from", "0003", "--db", PG_URL)
    assert down.exit_code == 0, down.stderr
    assert "DROP TABLE xpersist_artifact_tags" in down.stdout
    assert "SET version_num='0001'" in down.stdout

    data = json.loads(
        invoke(
            runner, "db", "upgrade", "0002", "--sql", "--from", "0001", "--json", "--db", PG_URL
        ).stdout
    )
    assert set(data) == {"url", "before", "target", "sql"}
    assert (data["before"], data["target"]) == ("0001", "0002")
    assert "xpersist_artifact_tags" in data["sql"]


def test_upgrade_sql_through_0004_needs_the_store_of_existing_rows(
    runner: CliRunner, tmp_path: Path
) -> None:
    """From an empty database nothing needs a store; from a schema that may hold rows, the
    script gives them to the store named with --store, whose marker it reads (or creates)."""
    fresh = invoke(runner, "db", "upgrade", "--sql", "--from", "base", "--db", PG_URL)
    assert fresh.exit_code == 0, fresh.stderr
    assert "CREATE TABLE xpersist_stores" in fresh.stdout
    assert "INSERT INTO xpersist_stores" not in fresh.stdout

    result = invoke(runner, "db", "upgrade", "--sql", "--from", "0002", "--db", PG_URL)
    message = one_line_error(
        result, "revision 0004 gives the rows", "xpersist-sql db upgrade head --sql --store ROOT"
    )
    assert "s3cret" not in message

    root = tmp_path / "old-store"
    root.mkdir()
    given = invoke(
        runner, "db", "upgrade", "--sql", "--from", "0003", "--store", str(root), "--db", PG_URL
    )
    assert given.exit_code == 0, given.stderr
    marker = json.loads((root / ".xpersist_sql" / "store.json").read_text())
    script = given.stdout
    assert "INSERT INTO xpersist_stores (uid, root, created_at) SELECT" in script
    assert f"'{marker['store_id']}'" in script and "WHERE EXISTS" in script
    assert "UPDATE xpersist_artifacts SET store_id=(SELECT xpersist_stores.id" in script
    assert "s3cret" not in script
    again = invoke(
        runner, "db", "upgrade", "--sql", "--from", "0003", "--store", str(root), "--db", PG_URL
    )
    assert again.stdout.count(marker["store_id"]) == script.count(marker["store_id"])


def test_upgrade_sql_of_sqlite_through_0004_creates_no_marker(
    runner: CliRunner, tmp_path: Path
) -> None:
    root = tmp_path / "old-store"
    root.mkdir()
    url = f"sqlite:///{tmp_path}/index.sqlite"
    result = invoke(
        runner, "db", "upgrade", "--sql", "--from", "0003", "--store", str(root), "--db", url
    )
    one_line_error(result, "cannot be written in advance", "rebuilds a table")
    assert list(root.iterdir()) == []


def apply_script(url: str, script: str) -> None:
    """Run an ``--sql`` script as a DBA would (one batch, autocommit: its own BEGIN/COMMIT)."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(script)
    finally:
        engine.dispose()


@pytest.mark.parametrize("marker", ["kept", "none yet"])
def test_upgrade_sql_through_0004_applied_on_postgresql_keeps_every_row(
    runner: CliRunner, postgres_url: str, tmp_path: Path, marker: str
) -> None:
    root = tmp_path / "store"
    store = CacheStore(str(root), database_url=postgres_url)
    store.put("a.json", {"a": 1}, serializer="json")
    store.put("runs/b.json", [1, 2], serializer="json", additional_metadata={"task_tags": ["x"]})
    store.close()
    opts = ["--store", str(root), "--db", postgres_url]
    assert invoke(runner, "db", "downgrade", "0003", *opts).exit_code == 0
    if marker == "none yet":  # a store from before 0004 has no marker
        (root / ".xpersist_sql" / "store.json").unlink()
    result = invoke(runner, "db", "upgrade", "--sql", *opts)
    assert result.exit_code == 0, result.stderr
    assert revision_of(postgres_url) == "0003"  # --sql ran nothing
    apply_script(postgres_url, result.stdout)
    assert revision_of(postgres_url) == head_revision()
    reopened = CacheStore(str(root), database_url=postgres_url, readonly=True)
    try:
        assert reopened.keys() == ["a.json", "runs/b.json"]
        assert reopened.get("runs/b.json") == [1, 2]
        assert [a.key for a in reopened.query(tags=["x"])] == ["runs/b.json"]
    finally:
        reopened.close()


def test_downgrade_sql_through_0004_checks_stores_on_the_server(
    runner: CliRunner, postgres_url: str, tmp_path: Path
) -> None:
    """The offline downgrade cannot count stores when written: the script checks when run."""
    for name in ("one", "two"):
        store = CacheStore(str(tmp_path / name), database_url=postgres_url)
        store.put(f"{name}.json", name, serializer="json")
        store.close()
    result = invoke(runner, "db", "downgrade", "0003", "--sql", "--db", postgres_url)
    assert result.exit_code == 0, result.stderr
    assert "COUNT(DISTINCT store_id)" in result.stdout
    with pytest.raises(sa.exc.DBAPIError, match="artifacts of several stores"):
        apply_script(postgres_url, result.stdout)
    assert revision_of(postgres_url) == head_revision()  # the failed script changed nothing
    assert CacheStore(str(tmp_path / "two"), database_url=postgres_url).get("two.json") == "two"

    CacheStore(str(tmp_path / "two"), database_url=postgres_url).delete("two.json")
    execute(postgres_url, "DELETE FROM xpersist_stores WHERE root LIKE '%two'")
    apply_script(postgres_url, result.stdout)
    assert revision_of(postgres_url) == "0003"
    assert (
        invoke(
            runner, "db", "upgrade", "--store", str(tmp_path / "one"), "--db", postgres_url
        ).exit_code
        == 0
    )
    assert CacheStore(str(tmp_path / "one"), database_url=postgres_url).get("one.json") == "one"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["upgrade", "0002", "--sql", "--from", "0003"], ["it is not above 0003", "db downgrade"]),
        (["downgrade", "0003", "--sql", "--from", "0002"], ["it is not below 0002", "db upgrade"]),
        (["upgrade", "0003", "--sql", "--from", "zzz"], ["unknown revision 'zzz'"]),
        (["downgrade", "0001", "--sql", "--from", "base"], ["no xpersist_sql schema"]),
        (["upgrade", "--sql"], ["cannot read the revision", "--from REVISION"]),
    ],
)
def test_upgrade_sql_mistakes(runner: CliRunner, args: list[str], fragments: list[str]) -> None:
    unreachable = "postgresql+psycopg://dba:s3cret@127.0.0.1:1/cache"
    message = one_line_error(invoke(runner, "db", *args, "--db", unreachable), *fragments)
    assert "s3cret" not in message


def test_upgrade_sql_of_sqlite_refuses_table_rebuilds(runner: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/index.sqlite"
    ok = invoke(runner, "db", "upgrade", "0003", "--sql", "--from", "base", "--db", url)
    assert ok.exit_code == 0, ok.stderr  # plain CREATE and ALTER ... ADD statements
    result = invoke(runner, "db", "downgrade", "0001", "--sql", "--from", "0003", "--db", url)
    message = one_line_error(result, "cannot be written in advance", "rebuilds a table")
    assert "copy_from" not in message
    assert not (tmp_path / "index.sqlite").exists()


def test_upgrade_sql_reads_the_revision_and_writes_nothing(
    runner: CliRunner, store: CacheStore
) -> None:
    url, opts = at_revision(runner, store, "0002")
    result = invoke(runner, "db", "upgrade", "0003", "--sql", *opts)
    assert result.exit_code == 0, result.stderr
    assert "from 0002 to 0003" in result.stdout.splitlines()[0]
    assert "ADD COLUMN last_accessed_at" in result.stdout
    assert revision_of(url) == "0002"
    assert "last_accessed_at" not in columns(url, "xpersist_artifacts")

    # at the target already: a script that says so
    assert invoke(runner, "db", "upgrade", "0003", *opts).exit_code == 0
    nothing = invoke(runner, "db", "upgrade", "0003", "--sql", *opts)
    assert nothing.exit_code == 0
    assert "-- nothing to do" in nothing.stdout


def test_upgrade_sql_runs_on_postgresql(runner: CliRunner, postgres_url: str) -> None:
    """The script --sql prints is what a DBA runs: applied with psql-like execution, it gives
    the index the packaged migrations give it, and db upgrade goes on from there."""
    result = invoke(
        runner, "db", "upgrade", "0003", "--sql", "--from", "base", "--db", postgres_url
    )
    assert result.exit_code == 0, result.stderr
    assert revision_of(postgres_url) is None  # --sql wrote nothing
    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(result.stdout)
    finally:
        engine.dispose()
    assert revision_of(postgres_url) == "0003"
    assert "last_accessed_at" in columns(postgres_url, "xpersist_artifacts")
    upgraded = invoke(runner, "db", "upgrade", "--db", postgres_url)
    assert upgraded.exit_code == 0, upgraded.stderr
    assert revision_of(postgres_url) == head_revision()
