"""Alembic glue: where the migrations live, the schema version guard, first creation.

The schema is only ever created or changed by the Alembic scripts in ``migrations/`` (shipped in
the wheel as ``xpersist_sql/_migrations``). Opening a store checks the database's revision:

- a brand-new database is brought to head, under a lock (a file lock next to a SQLite file, an
  advisory lock on PostgreSQL) so that many processes opening it at once all succeed;
- a database at another revision raises :class:`~xpersist_sql.SchemaVersionError` naming the
  command that upgrades it: an existing, possibly shared, database is never migrated implicitly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
import fsspec
from sqlalchemy import Connection, Engine, inspect, make_url, text

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

from .._version import __version__
from ..errors import SchemaVersionError, StoreNotFoundError
from ..marker import HIDDEN_DIR, create_marker, store_root_url
from .engine import WRITE_OPTION, create_index_engine, redact_url, sqlite_path
from .tables import ARTIFACTS

__all__ = [
    "VERSION_TABLE",
    "SchemaDrift",
    "alembic_config",
    "check_target",
    "current_revision",
    "db_command",
    "downgrade",
    "ensure_schema",
    "head_revision",
    "is_known_revision",
    "known_revisions",
    "migration_sql",
    "migrations_dir",
    "newer_revision_message",
    "run_alembic",
    "schema_drift",
    "schema_lock",
    "schema_state",
    "upgrade",
    "upgrade_command",
]

VERSION_TABLE = "xpersist_sql_alembic_version"
#: ``config.attributes`` entry through which revision 0004 learns the store of existing rows.
STORE_ATTRIBUTE = "xpersist_store"
#: File name of the embedded SQLite index inside a store's hidden directory.
INDEX_FILENAME = "index.sqlite"
_PG_LOCK_ID = int.from_bytes(
    hashlib.sha256(b"xpersist_sql schema").digest()[:8], "big", signed=True
)


def migrations_dir() -> Path:
    """Return the Alembic script directory: inside the installed package, else the repository's."""
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "_migrations", package_dir.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError(
        f"the Alembic migrations of xpersist_sql were not found next to {package_dir}; "
        "reinstall the package"
    )


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Return an Alembic :class:`Config` for the packaged migrations.

    ``connection`` (shared through ``config.attributes``) is used when given, else ``url``.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("version_table", VERSION_TABLE)
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


#: The newest revision in ``migrations/versions`` (a test checks it against Alembic's head).
#: Opening a store compares the index with it without loading Alembic, which only migrations,
#: ``db`` commands and schema messages need.
HEAD_REVISION = "0006"


def head_revision() -> str:
    """Return the head revision id of the packaged migrations."""
    return HEAD_REVISION


def current_revision(connection: Connection) -> str | None:
    """Return the revision the database is at (None for a database without our schema).

    Reads Alembic's version table with plain SQL (what Alembic's ``MigrationContext`` does).

    Raises
    ------
    SchemaVersionError
        If the version table names several revisions (branches this package never creates).
    """
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        raise SchemaVersionError(
            f"the index's {VERSION_TABLE!r} table names several revisions ({', '.join(rows)}); "
            "xpersist_sql's migrations have one line of revisions. Restore it from a backup"
        )
    return str(rows[0]) if rows else None


def run_alembic(
    engine: Engine,
    action: str,
    *args: object,
    attributes: dict[str, Any] | None = None,
    **kwargs: object,
) -> None:
    """Run an Alembic command (``upgrade``, ``downgrade``, ``current``, ...) on ``engine``.

    Migrations run in one write transaction on a connection shared with Alembic;
    ``attributes`` are added to the Alembic config's ``attributes``.
    """
    with engine.connect() as connection:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            # Batch migrations rebuild a table (copy, drop, rename): with foreign keys enforced,
            # dropping the artifacts table would cascade to the tags. SQLite ignores this pragma
            # inside a transaction, so it is set on the driver connection before any BEGIN.
            _driver_execute(connection, "PRAGMA foreign_keys = OFF")
        try:
            connection = connection.execution_options(**{WRITE_OPTION: True})
            config = alembic_config(connection=connection)
            config.attributes.update(attributes or {})
            from alembic import command

            getattr(command, action)(config, *args, **kwargs)
            if sqlite:
                dangling = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if dangling:
                    raise RuntimeError(
                        f"the migration would leave {len(dangling)} rows pointing at rows that "
                        f"do not exist (first: {tuple(dangling[0])}); it was rolled back"
                    )
            if connection.in_transaction():
                connection.commit()
        finally:
            if sqlite:
                if connection.in_transaction():
                    connection.rollback()
                _driver_execute(connection, "PRAGMA foreign_keys = ON")


def _driver_execute(connection: Connection, statement: str) -> None:
    """Run ``statement`` on the DBAPI connection itself, outside SQLAlchemy's transactions."""
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.execute(statement)


def _describe(url: str, store: str | None) -> str:
    return f"the index of store {store!r} ({url})" if store else f"the index {url}"


def _upgrade_hint(url: str, store: str | None) -> str:
    return upgrade_command(url, store)


def upgrade_command(url: str, store: str | None) -> str:
    """Return the ``xpersist-sql db upgrade`` command line for an index (password hidden)."""
    shown = redact_url(url)
    if not store:
        return f"xpersist-sql db upgrade --db '{shown}'"
    if embedded_root(url) is not None:
        return f"xpersist-sql db upgrade --store {store}"
    return f"xpersist-sql db upgrade --store {store} --db '{shown}'"


def schema_state(engine: Engine) -> str | None:
    """Return None at head, ``""`` for a database without any schema, else the revision."""
    return _check(engine)


@contextlib.contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """Hold the lock under which the schema is created or migrated (one holder at a time).

    An advisory lock on PostgreSQL, a file lock next to a SQLite file.
    """
    db_file = sqlite_path(engine.url)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _PG_LOCK_ID})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _PG_LOCK_ID})
                conn.commit()
    elif db_file is not None:
        with filelock.FileLock(str(db_file) + ".lock", timeout=600):
            yield
    else:
        yield


_FOREIGN = "<no version table>"


def _check(engine: Engine) -> str | None:
    """Return None at head, '' for an empty database, _FOREIGN, or the current revision."""
    head = head_revision()
    with engine.connect() as conn:
        current = current_revision(conn)
        if current == head:
            return None
        if current is None:
            return _FOREIGN if inspect(conn).has_table(ARTIFACTS.name) else ""
    return current


def ensure_schema(engine: Engine, *, store: str | None = None, readonly: bool = False) -> None:
    """Check the index schema; create it at head when the database is brand new.

    Raises
    ------
    SchemaVersionError
        If the database is at a revision other than head, or is empty and ``readonly``.
    """
    url = redact_url(engine.url)
    current = _check(engine)
    if current is None:
        return
    if current == "" and readonly:
        raise SchemaVersionError(
            f"{_describe(url, store)} has no xpersist_sql schema yet and the store is "
            "readonly; open it once without readonly=True (or run "
            f"`{_upgrade_hint(url, store)}`) to create it"
        )
    if not readonly:
        # Whatever we saw may be another process creating the schema right now: decide under
        # the creation lock, which that process holds until its migration transaction has
        # committed. (A reader takes no lock: it writes nothing, not even a lock file.)
        with schema_lock(engine):
            current = _check(engine)
            if current == "":
                run_alembic(engine, "upgrade", "head")
                current = None
    if current is None:
        return
    if current == _FOREIGN:
        raise SchemaVersionError(
            f"{_describe(url, store)} has an xpersist_sql table but no {VERSION_TABLE!r} "
            "table; it was not created by xpersist_sql's migrations. Point the store at "
            "another database, or stamp it with Alembic."
        )
    if is_known_revision(current):
        raise SchemaVersionError(
            f"{_describe(url, store)} is at schema revision {current!r}, but xpersist_sql "
            f"{__version__} needs revision {head_revision()!r}. Upgrade it (back it up first "
            f"if it is shared) with: {_upgrade_hint(url, store)}"
        )
    raise SchemaVersionError(newer_revision_message(url, store, current))


def embedded_root(url: str) -> str | None:
    """Return the store root of an embedded SQLite index URL (``<root>/.xpersist_sql/...``)."""
    db_file = sqlite_path(url)
    if db_file is None or db_file.parent.name != HIDDEN_DIR:
        return None
    return str(db_file.parent.parent)


def upgrade(
    url: str,
    revision: str = "head",
    *,
    store_root: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[str | None, str | None]:
    """Migrate the index at ``url`` to ``revision`` under the schema lock.

    The same lock as a store's first open is held, so that concurrent upgrades (and stores
    opening meanwhile) wait for each other instead of failing half-way. Rows written before
    revision 0004 are given to the store at ``store_root`` (default: the store an embedded
    SQLite index lives in), whose marker is created if it has none.

    Parameters
    ----------
    url : str
        SQLAlchemy URL of the index.
    revision : str
        Target revision: ``head``, ``+1``, an id.
    store_root : str, optional
        Root (path or fsspec URL) of the store whose index this is.
    storage_options : dict, optional
        fsspec options for a remote ``store_root``.

    Returns
    -------
    tuple
        The revision before and after (None: no schema).

    Raises
    ------
    StoreNotFoundError
        If ``url`` is the embedded index of ``store_root`` and that index does not exist.
    SchemaVersionError
        If the migration cannot run (e.g. rows whose store is not known).
    """
    db_file = sqlite_path(url)
    root = store_root if store_root is not None else embedded_root(url)
    if db_file is not None and not db_file.exists() and store_root is not None:
        raise StoreNotFoundError(
            f"no xpersist_sql store at {store_root!r}: it has no index {db_file}; check the path "
            "(a store is created by its first put)"
        )

    def store_of_existing_rows() -> dict[str, str]:
        if root is None:
            return {}
        fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
        marker = create_marker(fs, path)
        return {"uid": marker.store_id, "root": store_root_url(fs, path)}

    return _migrate(url, "upgrade", revision, {STORE_ATTRIBUTE: store_of_existing_rows})


def downgrade(url: str, revision: str) -> tuple[str | None, str | None]:
    """Migrate the index at ``url`` down to ``revision`` under the schema lock.

    Parameters
    ----------
    url : str
        SQLAlchemy URL of the index.
    revision : str
        Target revision: ``-1``, an id, ``base``.

    Returns
    -------
    tuple
        As :func:`upgrade`: the revisions before and after.

    Raises
    ------
    SchemaVersionError
        If the migration refuses (e.g. revision 0004 with several stores' rows).
    """
    return _migrate(url, "downgrade", revision, {})


def _migrate(
    url: str, action: str, revision: str, attributes: dict[str, Any]
) -> tuple[str | None, str | None]:
    engine = create_index_engine(url)
    try:
        with schema_lock(engine):
            with engine.connect() as conn:
                before = current_revision(conn)
            try:
                run_alembic(engine, action, revision, attributes=attributes)
            except RuntimeError as exc:
                raise SchemaVersionError(f"cannot {action} {redact_url(url)}: {exc}") from exc
            with engine.connect() as conn:
                after = current_revision(conn)
    finally:
        engine.dispose()
    return before, after


# -- for the ``xpersist-sql db`` commands: revision checks, offline SQL, schema drift ------------
#: The revision that gives existing rows to their store: its SQL needs the store's identity.
STORE_REVISION = "0004"
_SPECIAL_TARGETS = frozenset({"head", "heads", "base"})
_TARGET = re.compile(r"(?P<base>.*?)(?P<step>[+-]\d+)?")


def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def known_revisions() -> list[str]:
    """Return the ids of the packaged revisions, oldest first."""
    return [script.revision for script in reversed(list(_script().walk_revisions()))]


def is_known_revision(revision: str) -> bool:
    """Return whether ``revision`` is the id of a packaged revision."""
    return revision in known_revisions()


def check_target(revision: str) -> None:
    """Check that ``revision`` names a target Alembic can resolve in the packaged migrations.

    Accepted: ``head``, ``base``, a revision id, and relative steps (``+1``, ``-1``,
    ``head-1``, ``0002+1``).

    Raises
    ------
    ValueError
        Naming the revisions this version knows, for an id it does not know or a range.
    """
    known = known_revisions()
    forms = (
        f"give head, base, a revision this xpersist_sql knows ({', '.join(known)}) or a step "
        "such as +1 or -1"
    )
    if ":" in revision:
        raise ValueError(f"{revision!r} is a range of revisions; {forms}")
    match = _TARGET.fullmatch(revision.strip())
    assert match is not None  # the pattern matches any text
    base, step = match["base"], match["step"]
    if (base in _SPECIAL_TARGETS and (base != "base" or step is None)) or (
        not base and step is not None
    ):
        return
    if base not in known:
        raise ValueError(
            f"unknown revision {revision!r}: xpersist_sql {__version__} does not know it "
            f"(a newer xpersist_sql may); {forms}"
        )


def db_command(action: str, url: str, store: str | None, *args: str) -> str:
    """Return an ``xpersist-sql db ACTION [ARGS]`` command line for an index (password hidden).

    ``--store`` is named when the store is known, ``--db`` unless the index is the store's
    embedded one.
    """
    words = ["xpersist-sql", "db", action, *args]
    if store:
        words += ["--store", store]
    if not store or embedded_root(url) is None:
        words += ["--db", f"'{redact_url(url)}'"]
    return " ".join(words)


def newer_revision_message(url: str, store: str | None, current: str) -> str:
    """Say that the index at ``url`` is at ``current``, a revision from a newer xpersist_sql."""
    head = head_revision()
    return (
        f"{_describe(redact_url(url), store)} is at schema revision {current!r}, which "
        f"xpersist_sql {__version__} (head {head!r}) does not know: it was upgraded by a newer "
        "xpersist_sql. Upgrade this package (pip install -U xpersist_sql), or downgrade the "
        f"index with that newer version: {db_command('downgrade', url, store, head)}"
    )


def migration_sql(
    url: str,
    action: str,
    revision: str,
    *,
    start: str | None,
    store: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Return the SQL that takes an index at ``start`` to ``revision`` (Alembic's offline mode).

    Nothing is read from or written to the database: ``url`` only selects the SQL dialect. An
    upgrade through revision 0004 from a non-empty schema gives the existing rows to ``store``:
    its identity is read from the store's marker, which is created if the store has none yet
    (as the live upgrade does).

    Parameters
    ----------
    url : str
        SQLAlchemy URL of the index (its dialect).
    action : {"upgrade", "downgrade"}
        The direction.
    revision : str
        Target revision (``head``, an id, ``base``, ``+1``...).
    start : str or None
        The revision the database is at (None: an empty database).
    store : str, optional
        Root of the store the index belongs to (needed to upgrade an index with rows through
        revision 0004), also named in the commands messages advise.
    storage_options : dict, optional
        fsspec options for a remote ``store``.

    Returns
    -------
    str
        The SQL script; empty when the index is already at ``revision``.

    Raises
    ------
    ValueError
        If ``revision`` is not in the direction of ``action`` from ``start``, an upgrade through
        revision 0004 from a non-empty schema has no ``store``, or the dialect cannot write a
        step without the live database (SQLite rebuilding a table).
    """
    from alembic.script.revision import RevisionError

    script = _script()
    try:
        if action == "upgrade":
            steps = list(script.iterate_revisions(revision, start or "base"))
        else:
            steps = list(script.iterate_revisions(start or "base", revision))
    except RevisionError:
        way = "above" if action == "upgrade" else "below"
        other = "downgrade" if action == "upgrade" else "upgrade"
        raise ValueError(
            f"cannot {action} from {start or 'an empty database'} to {revision!r}: it is not "
            f"{way} {start or 'base'} (to go the other way, use db {other})"
        ) from None
    if not steps:
        return ""
    span = f"{start or 'base'}:{revision}" if start or action == "downgrade" else revision
    through_store_revision = any(step.revision == STORE_REVISION for step in steps)
    if not (action == "upgrade" and through_store_revision and start is not None):
        return _offline_sql(url, action, span, revision, start, store, None)
    if store is None:
        raise ValueError(
            f"the SQL of revision {STORE_REVISION} gives the rows already in the index to the "
            "store they belong to, so it needs that store: "
            f"`{db_command('upgrade', url, 'ROOT', revision, '--sql')}`, ROOT being the store's "
            "directory or URL (its marker is created if it has none)"
        )
    # Render once with a stand-in identity: a dialect that cannot write the steps in advance
    # fails here, before the store's marker is created.
    _offline_sql(url, action, span, revision, start, store, {"uid": "0" * 32, "root": store})
    fs, path = fsspec.core.url_to_fs(store, **(storage_options or {}))
    marker = create_marker(fs, path)
    identity = {"uid": marker.store_id, "root": store_root_url(fs, path)}
    return _offline_sql(url, action, span, revision, start, store, identity)


def _offline_sql(
    url: str,
    action: str,
    span: str,
    revision: str,
    start: str | None,
    store: str | None,
    identity: dict[str, str] | None,
) -> str:
    """Run Alembic in offline mode over ``span``; return the SQL it writes."""
    config = alembic_config(url=url)
    if identity is not None:
        config.attributes[STORE_ATTRIBUTE] = identity
    buffer = io.StringIO()
    config.output_buffer = buffer
    from alembic import command
    from alembic.util.exc import CommandError

    try:
        getattr(command, action)(config, span, sql=True)
    except CommandError as exc:
        if "--sql mode" not in str(exc):
            raise
        raise ValueError(
            f"the SQL to {action} a {make_url(url).get_backend_name()} index from "
            f"{start or 'an empty database'} to {revision} cannot be written in advance: on "
            "this database a step rebuilds a table, which needs the live database. Run "
            f"`{db_command(action, url, store, revision)}` against the database instead"
        ) from None
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class SchemaDrift:
    """How an index's tables, columns and indexes differ from those of its recorded revision.

    Attributes
    ----------
    extra : list of str
        Objects the index has and the revision does not (``column t.c``, ``index i``,
        ``table t``): most often half of a later migration.
    missing : list of str
        Objects the revision has and the index lacks.
    drops : list of str
        The SQL statements that remove the extra objects.
    """

    extra: list[str]
    missing: list[str]
    drops: list[str]


def _schema_objects(conn: Connection) -> dict[str, str]:
    """Return the schema's objects (``table t``, ``column t.c``, ``index i``) and their drop."""
    inspector = inspect(conn)
    found: dict[str, str] = {}
    for name in inspector.get_table_names():
        if name == VERSION_TABLE:
            continue
        found[f"table {name}"] = f"DROP TABLE {name}"
        for column in inspector.get_columns(name):
            found[f"column {name}.{column['name']}"] = (
                f"ALTER TABLE {name} DROP COLUMN {column['name']}"
            )
        for index in inspector.get_indexes(name):
            if index["name"] and not index.get("duplicates_constraint"):
                found[f"index {index['name']}"] = f"DROP INDEX {index['name']}"
    return found


def schema_drift(url: str, revision: str | None) -> SchemaDrift:
    """Compare the index at ``url`` with the schema the packaged migrations give ``revision``.

    The expected schema is built by migrating a scratch SQLite database; names (not types) of
    tables, columns and indexes are compared, so a PostgreSQL index compares too. Nothing is
    written to the index.
    """
    engine = create_index_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            actual = _schema_objects(conn)
    finally:
        engine.dispose()
    with tempfile.TemporaryDirectory(prefix="xpersist_sql_schema_") as scratch:
        reference = create_index_engine(f"sqlite:///{Path(scratch) / INDEX_FILENAME}")
        try:
            if revision is not None:
                run_alembic(reference, "upgrade", revision)
            with reference.connect() as conn:
                expected = _schema_objects(conn)
        finally:
            reference.dispose()
    extra_tables = {name for name in actual if name.startswith("table ") and name not in expected}

    def in_extra_table(name: str) -> bool:
        table = name.split(" ", 1)[1].split(".", 1)[0]
        return name.startswith("column ") and f"table {table}" in extra_tables

    extra = sorted(name for name in actual if name not in expected and not in_extra_table(name))
    # indexes before columns before tables: the order their drops must run in
    order = {"index": 0, "column": 1, "table": 2}
    extra.sort(key=lambda name: order[name.split(" ", 1)[0]])
    missing = sorted(name for name in expected if name not in actual)
    return SchemaDrift(extra=extra, missing=missing, drops=[actual[name] for name in extra])
