"""Reads and writes of one store's artifact rows: one short transaction per operation.

Every statement here is restricted to the store the :class:`ArtifactIndex` was made for, so that
several stores can share one database and each sees and changes only its own rows.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import sqlite3
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, NoReturn

from sqlalchemy import (
    Connection,
    Dialect,
    Engine,
    Row,
    Select,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from ..lineage import parents_of
from ..models import Artifact
from ..parameters import PARAMETER_VALUES, parameter_index_text
from ..query import ArtifactQuery, SummaryRow
from .engine import WRITE_OPTION, sqlite_readers, sqlite_writers
from .queries import (
    ARTIFACT_FIELDS,
    CompiledSelect,
    artifact_columns,
    artifacts_from_rows,
    compile_query,
    summarize,
)
from .tables import (
    ARTIFACTS,
    EDGES,
    INDEXED_TEXT_LENGTHS,
    PARAMETER_NAME_LENGTH,
    PARAMETER_VALUE_LENGTH,
    PARAMETERS,
    STORE_UID_LENGTH,
    TAG_LENGTH,
    TAGS,
    index_text,
)

__all__ = [
    "ArtifactIndex",
    "WriteConnection",
    "edges_of",
    "key_prefixes",
    "parameters_of",
    "promoted_columns",
    "row_to_artifact",
    "tags_of",
]

TAG_FIELDS = ("task_tags", "tags")

#: What the writes of a put run in: a SQLAlchemy connection in a write transaction, or this
#: thread's SQLite write connection in its ``BEGIN IMMEDIATE`` (:meth:`ArtifactIndex.write_driver`).
WriteConnection = Connection | sqlite3.Connection


def promoted_columns(metadata: Mapping[str, Any]) -> dict[str, str | None]:
    """Values of the indexed columns, taken from the same names in ``additional_metadata``."""
    values: dict[str, str | None] = {}
    for name, length in INDEXED_TEXT_LENGTHS.items():
        value = metadata.get(name)
        values[name] = None if value is None else index_text(str(value), length)
    return values


def tags_of(metadata: Mapping[str, Any]) -> set[str]:
    """Tags of an artifact: the strings in its ``task_tags`` and ``tags`` metadata lists."""
    tags: set[str] = set()
    for field in TAG_FIELDS:
        value = metadata.get(field)
        if isinstance(value, (list, tuple, set, frozenset)):
            tags.update(index_text(str(tag), TAG_LENGTH) for tag in value)
    return tags


def parameters_of(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Index entries of an artifact's parameter values: name -> canonical JSON of the value.

    Both shortened to their columns as :func:`~xpersist_sql.db.tables.index_text` does; read
    from ``additional_metadata["parameter_values"]`` (a dict, else nothing).
    """
    values = metadata.get(PARAMETER_VALUES)
    if not isinstance(values, Mapping):
        return {}
    return {
        index_text(str(name), PARAMETER_NAME_LENGTH): index_text(
            parameter_index_text(value), PARAMETER_VALUE_LENGTH
        )
        for name, value in values.items()
    }


def _parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def edges_of(metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Edge rows (without ``artifact_id``) of an artifact's ``derived_from`` parents."""
    edges: dict[tuple[str, str], dict[str, Any]] = {}
    for parent in parents_of(metadata):
        store = index_text(parent.store_id, STORE_UID_LENGTH)
        edges.setdefault(
            (store, parent.key),
            {
                "parent_store": store,
                "parent_key": parent.key,
                "parent_created_at": _parse_time(parent.created_at),
                "parent_fingerprint": parent.fingerprint,
                "parent_checksum": parent.checksum,
            },
        )
    return list(edges.values())


def _now() -> datetime:
    return datetime.now(timezone.utc)


def not_expired(now: datetime | None = None) -> Any:
    """Return the SQL condition "no expiry, or an expiry in the future"."""
    return or_(ARTIFACTS.c.expires_at.is_(None), ARTIFACTS.c.expires_at > (now or _now()))


def row_to_artifact(row: Any) -> Artifact:
    """Build an :class:`Artifact` from a row of the artifacts table (not validated again)."""
    mapping = row._mapping
    return artifacts_from_rows([tuple([mapping[field] for field in ARTIFACT_FIELDS])])[0]


def key_prefixes(key: str) -> list[str]:
    """Return the proper path prefixes of ``key``: ``a/b/c`` -> ``["a", "a/b"]``."""
    parts = key.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _namespace_lock_id(store_id: int, key: str) -> int:
    head = key.split("/", 1)[0]
    digest = hashlib.sha256(f"xpersist_sql:keys:{store_id}:{head}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_LAST_USED = func.coalesce(ARTIFACTS.c.last_accessed_at, ARTIFACTS.c.created_at)


def _unexpired() -> Any:
    return or_(ARTIFACTS.c.expires_at.is_(None), ARTIFACTS.c.expires_at > bindparam("now"))


def _statements(dialect: str) -> dict[str, Select[Any]]:
    """Return the hot reads of one store, its id and the key as bound parameters."""
    c = ARTIFACTS.c
    mine = c.store_id == bindparam("store_id")
    return {
        "get": select(*artifact_columns(dialect)).where(mine, c.key == bindparam("key")),
        "contains": select(c.id).where(mine, c.key == bindparam("key"), _unexpired()),
        "keys": select(c.key).where(mine, _unexpired()).order_by(c.key),
        "keys_all": select(c.key).where(mine).order_by(c.key),
        "count": select(func.count()).select_from(ARTIFACTS).where(mine, _unexpired()),
        "count_all": select(func.count()).select_from(ARTIFACTS).where(mine),
    }


@functools.lru_cache(maxsize=64)
def _compiled(dialect: Dialect) -> dict[str, CompiledSelect]:
    """Return the hot reads compiled once per dialect (engine)."""
    return {
        name: CompiledSelect.of(stmt, dialect) for name, stmt in _statements(dialect.name).items()
    }


#: The columns a write sets: the artifact's fields, the promoted query columns, the store.
ROW_COLUMNS = (*ARTIFACT_FIELDS, *INDEXED_TEXT_LENGTHS, "store_id")
_CHILD_COLUMNS = {
    "tags": (TAGS, ("artifact_id", "tag", "created_at")),
    "parameters": (PARAMETERS, ("artifact_id", "name", "value", "created_at")),
    "edges": (
        EDGES,
        (
            "artifact_id",
            "parent_store",
            "parent_key",
            "parent_created_at",
            "parent_fingerprint",
            "parent_checksum",
        ),
    ),
}


def _write_statements(dialect: str) -> dict[str, tuple[Any, tuple[str, ...] | None]]:
    """Return the writes of a put: ``name -> (statement, column keys it sets or None)``.

    Bound parameters are named by the columns they set (``INSERT``) or ``v_<column>``
    (``UPDATE``'s ``SET``), the row and store as ``w_id`` and ``w_store_id``.
    """
    c = ARTIFACTS.c
    conflict = [c.store_id, c.key]
    if dialect == "postgresql":
        add: Any = postgresql.insert(ARTIFACTS).on_conflict_do_nothing(index_elements=conflict)
    elif dialect == "sqlite":
        add = sqlite.insert(ARTIFACTS).on_conflict_do_nothing(index_elements=conflict)
    else:  # pragma: no cover - other backends are not supported yet
        add = insert(ARTIFACTS)
    mine = c.store_id == bindparam("w_store_id")
    fetch = select(c.id, *artifact_columns(dialect)).where(mine, c.key == bindparam("w_key"))
    statements: dict[str, tuple[Any, tuple[str, ...] | None]] = {
        "insert": (add.returning(c.id), ROW_COLUMNS),
        "replace": (
            update(ARTIFACTS)
            .where(mine, c.id == bindparam("w_id"))
            .values({name: bindparam(f"v_{name}") for name in ROW_COLUMNS}),
            None,
        ),
        "update_stat": (
            update(ARTIFACTS)
            .where(mine, c.id == bindparam("w_id"))
            .values(size_bytes=bindparam("v_size_bytes"), fingerprint=bindparam("v_fingerprint")),
            None,
        ),
        "remove": (delete(ARTIFACTS).where(mine, c.id == bindparam("w_id")), None),
        "fetch": (fetch, None),
        "fetch_for_update": (
            fetch.with_for_update() if dialect == "postgresql" else fetch,
            None,
        ),
    }
    for name, (table, columns) in _CHILD_COLUMNS.items():
        statements[f"add_{name}"] = (insert(table), columns)
        statements[f"clear_{name}"] = (
            delete(table).where(table.c.artifact_id == bindparam("w_id")),
            None,
        )
    return statements


@functools.lru_cache(maxsize=64)
def _compiled_writes(dialect: Dialect) -> dict[str, CompiledSelect]:
    """Return the writes of a put compiled once per dialect (engine)."""
    return {
        name: CompiledSelect.of(stmt, dialect, keys)
        for name, (stmt, keys) in _write_statements(dialect.name).items()
    }


def _conflict_statement(prefixes: int) -> Select[Any]:
    """Return the overlap check of a key with ``prefixes`` proper prefixes (``p0``...).

    Two index seeks joined by ``UNION ALL``: the keys the new key lies inside (point lookups)
    and the keys inside it (a range). One ``WHERE store_id = ? AND (... OR ...)`` would make
    SQLite scan every key of the store on each put.
    """
    c = ARTIFACTS.c
    mine = c.store_id == bindparam("w_store_id")
    inside = select(c.key).where(mine, c.key >= bindparam("lo"), c.key < bindparam("hi"))
    if not prefixes:
        return inside.limit(1)
    names = [bindparam(f"p{i}", type_=c.key.type) for i in range(prefixes)]
    containing = select(c.key).where(mine, c.key.in_(names))
    either = union_all(containing, inside).subquery("overlap")
    return select(either.c.key).limit(1)


@functools.lru_cache(maxsize=256)
def _compiled_conflict(dialect: Dialect, prefixes: int) -> CompiledSelect:
    return CompiledSelect.of(_conflict_statement(prefixes), dialect)


def _raise_driver_error(sql: str, error: sqlite3.Error, params: Any = ()) -> NoReturn:
    """Raise a driver error as SQLAlchemy would have (``OperationalError``, ``IntegrityError``)."""
    raise sa_exc.DBAPIError.instance(sql, params, error, sqlite3.Error) from error


def _driver(conn: WriteConnection) -> sqlite3.Connection:
    """Return the SQLite driver connection a write runs on."""
    if isinstance(conn, sqlite3.Connection):
        return conn
    driver: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    return driver


class ArtifactIndex:
    """The artifact rows of one store in an index database.

    Parameters
    ----------
    engine : Engine
        An engine made by :func:`~xpersist_sql.db.engine.create_index_engine` whose schema is at
        head.
    store_id : int
        The store's row id in ``xpersist_stores``: every read and write is limited to its rows.
    """

    def __init__(self, engine: Engine, store_id: int) -> None:
        self.engine = engine
        self.store_id = store_id
        self._mine = ARTIFACTS.c.store_id == store_id
        dialect = engine.dialect
        self._sql = _compiled(dialect)
        # SQLite file: one connection per thread (see engine.SQLiteReaders)
        self._readers = sqlite_readers(engine)
        # PostgreSQL (psycopg 3): a pooled connection, used in autocommit for one statement
        self._psycopg = dialect.name == "postgresql" and dialect.driver == "psycopg"
        # the writes of a put, compiled once; on SQLite run on the transaction's driver cursor
        self._dialect = dialect
        self._writes = _compiled_writes(dialect)
        self._sqlite = dialect.name == "sqlite" and dialect.driver == "pysqlite"
        self._writers = sqlite_writers(engine) if self._sqlite else None

    # -- hot reads on the driver -----------------------------------------------------------------
    def _select(self, compiled: CompiledSelect, params: dict[str, Any]) -> Sequence[Any]:
        """Return the rows of a compiled ``SELECT``, run on the driver's cursor.

        SQLite runs it on this thread's connection; PostgreSQL on a pooled connection in
        autocommit (one round trip, no ``BEGIN``/``ROLLBACK``; psycopg prepares a statement run
        often). If the driver fails (a dropped connection, a locked or replaced file...) that
        connection is discarded and the statement runs once more through SQLAlchemy, on a fresh
        connection: a transient failure is retried, a lasting one raises SQLAlchemy's error.
        """
        readers = self._readers
        if readers is not None:
            try:
                return readers.connection().execute(compiled.sql, compiled.bind(params)).fetchall()
            except sqlite3.Error:
                readers.discard()
        elif self._psycopg:
            rows = self._psycopg_select(compiled, params)
            if rows is not None:
                return rows
        with self.read() as conn:
            return conn.execute(compiled.statement, params).all()

    def _psycopg_select(self, compiled: CompiledSelect, params: dict[str, Any]) -> list[Any] | None:
        """Run the statement on a pooled psycopg connection; None if the driver failed."""
        engine = self.engine
        fairy = engine.raw_connection()
        try:
            dbapi: Any = fairy.driver_connection
            try:
                dbapi.autocommit = True
                try:
                    return list(dbapi.execute(compiled.sql, compiled.bind(params)).fetchall())
                finally:
                    if not dbapi.closed:
                        dbapi.autocommit = False
            except engine.dialect.loaded_dbapi.Error as exc:
                if engine.dialect.is_disconnect(exc, dbapi, None):
                    # the server dropped it (restart, failover, idle timeout): the rest of the
                    # pool was very likely dropped too, renew it as SQLAlchemy does
                    engine.pool._invalidate(fairy, exc)
                else:
                    fairy.invalidate(exc)
                return None
        finally:
            fairy.close()

    def _now(self) -> datetime:
        return datetime.now(timezone.utc)

    # -- transactions ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """Open a write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on exit."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def write_driver(self) -> Iterator[WriteConnection]:
        """Open a write transaction for the statements of a put, committed on exit.

        The statements: :meth:`conflicting_key`, :meth:`fetch`, :meth:`insert_if_absent` and
        :meth:`replace`. On a SQLite file it runs on this thread's write connection, kept open
        (:func:`~xpersist_sql.db.engine.sqlite_writers`): ``BEGIN IMMEDIATE``, the statements,
        ``COMMIT`` (``ROLLBACK`` if the block raises), as :meth:`write` does through the pool.
        A driver error is raised as SQLAlchemy's, and the connection is then closed (the next
        write opens another). Elsewhere (PostgreSQL, a nested write on this thread, a writer
        that cannot be opened) it is :meth:`write`.
        """
        writers = self._writers
        db: sqlite3.Connection | None = None
        if writers is not None:
            try:
                db = writers.connection()
            except sqlite3.Error:
                writers.discard()  # e.g. cannot open: the pool's connection says why
            if db is not None and db.in_transaction:
                db = None  # a write already open on this thread (re-entered): not this one
        if writers is None or db is None:
            with self.write() as conn:
                yield conn
            return
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            writers.discard()
            _raise_driver_error("BEGIN IMMEDIATE", error)
        try:
            yield db
        except BaseException:
            try:
                if db.in_transaction:
                    db.execute("ROLLBACK")
            except sqlite3.Error:
                writers.discard()
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as error:
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            writers.discard()
            _raise_driver_error("COMMIT", error)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """Open a connection for reads."""
        with self.engine.connect() as conn:
            yield conn

    # -- reads -----------------------------------------------------------------------------------
    def fetch(
        self, conn: WriteConnection, key: str, *, for_update: bool = False
    ) -> tuple[int, Artifact] | None:
        """Return ``(id, artifact)`` for ``key`` (expired or not), or None.

        ``for_update`` locks the row on PostgreSQL (``SELECT ... FOR UPDATE``); a SQLite write
        transaction holds the database's write lock already.
        """
        compiled = self._writes["fetch_for_update" if for_update else "fetch"]
        rows = self._run(conn, compiled, {"w_store_id": self.store_id, "w_key": key})
        if not rows:
            return None
        row = tuple(rows[0])
        return int(row[0]), artifacts_from_rows([row[1:]])[0]

    def get(self, key: str) -> Artifact | None:
        """Return the artifact stored under ``key`` (expired or not), or None."""
        rows = self._select(self._sql["get"], {"store_id": self.store_id, "key": key})
        return artifacts_from_rows(rows)[0] if rows else None

    def keys(self, *, include_expired: bool = False) -> list[str]:
        """Return the stored keys, sorted."""
        if include_expired:
            rows = self._select(self._sql["keys_all"], {"store_id": self.store_id})
        else:
            params = {"store_id": self.store_id, "now": self._now()}
            rows = self._select(self._sql["keys"], params)
        return [row[0] for row in rows]

    def count(self, *, include_expired: bool = False) -> int:
        """Return the number of stored artifacts."""
        if include_expired:
            rows = self._select(self._sql["count_all"], {"store_id": self.store_id})
        else:
            params = {"store_id": self.store_id, "now": self._now()}
            rows = self._select(self._sql["count"], params)
        return int(rows[0][0] or 0) if rows else 0

    def contains(self, key: str) -> bool:
        """Return whether an unexpired artifact is stored under ``key`` (one index lookup)."""
        params = {"store_id": self.store_id, "key": key, "now": self._now()}
        return bool(self._select(self._sql["contains"], params))

    def query(self, spec: ArtifactQuery) -> list[Artifact]:
        """Return the artifacts matching ``spec`` (see :mod:`xpersist_sql.db.queries`)."""
        if spec.limit == 0:
            return []
        compiled, params = compile_query(spec, self.engine.dialect, self.store_id)
        return artifacts_from_rows(self._select(compiled, params))

    def summarize(self, spec: ArtifactQuery, by: str) -> list[SummaryRow]:
        """Count and add up the sizes of the artifacts matching ``spec``, per value of ``by``."""
        with self.read() as conn:
            return summarize(conn, spec, by, self.store_id)

    def total_size(self) -> tuple[int, int]:
        """Return ``(total bytes, number of artifacts)`` of every row, expired ones included."""
        stmt = select(func.coalesce(func.sum(ARTIFACTS.c.size_bytes), 0), func.count()).where(
            self._mine
        )
        with self.read() as conn:
            total, count = conn.execute(stmt).one()
        return int(total or 0), int(count or 0)

    def all_keys(self) -> set[str]:
        """Return every key of the store, expired ones included."""
        with self.read() as conn:
            return set(conn.scalars(select(ARTIFACTS.c.key).where(self._mine)))

    def keys_with_fingerprint(self, fingerprint: str) -> list[str]:
        """Return the keys whose recorded fingerprint is ``fingerprint``."""
        stmt = select(ARTIFACTS.c.key).where(self._mine, ARTIFACTS.c.fingerprint == fingerprint)
        with self.read() as conn:
            return list(conn.scalars(stmt))

    def covered(self, relative: str) -> bool:
        """Whether a key is ``relative``, lies inside it, or contains it."""
        with self.read() as conn:
            return self.conflicting_key(conn, relative, include_self=True) is not None

    def expired_rows(self, now: datetime) -> Sequence[Row[Any, Any, Any, Any]]:
        """Rows ``(id, key, created_at, size_bytes)`` expired at ``now`` and created before it."""
        stmt = (
            select(ARTIFACTS.c.id, ARTIFACTS.c.key, ARTIFACTS.c.created_at, ARTIFACTS.c.size_bytes)
            .where(self._mine, ARTIFACTS.c.expires_at <= now, ARTIFACTS.c.created_at < now)
            .order_by(ARTIFACTS.c.expires_at)
        )
        with self.read() as conn:
            return conn.execute(stmt).all()

    def eviction_candidates(
        self, now: datetime, excess: int, keep: Collection[str] = ()
    ) -> list[Row[Any, Any, Any, Any, Any]]:
        """Least recently used rows created before ``now`` adding up to ``excess`` bytes.

        Expired rows come first. Each row is ``(id, key, created_at, size_bytes, last_used)``.
        """
        expired_first = case((ARTIFACTS.c.expires_at <= now, 0), else_=1)
        stmt = (
            select(
                ARTIFACTS.c.id,
                ARTIFACTS.c.key,
                ARTIFACTS.c.created_at,
                ARTIFACTS.c.size_bytes,
                _LAST_USED.label("last_used"),
            )
            .where(self._mine, ARTIFACTS.c.created_at < now)
            .order_by(expired_first, _LAST_USED, ARTIFACTS.c.id)
        )
        candidates: list[Row[Any, Any, Any, Any, Any]] = []
        planned = 0
        with self.read() as conn:
            for row in conn.execute(stmt).yield_per(1000):
                if row.key in keep:
                    continue
                candidates.append(row)
                planned += int(row.size_bytes or 0)
                if planned >= excess:
                    break
        return candidates

    def id_range(self) -> tuple[int | None, int]:
        """Return ``(largest row id, number of rows)`` of the store."""
        stmt = select(func.max(ARTIFACTS.c.id), func.count()).where(self._mine)
        with self.read() as conn:
            last, total = conn.execute(stmt).one()
        return (None if last is None else int(last)), int(total or 0)

    def batch_after(self, after: int, last: int, size: int) -> list[tuple[int, Artifact]]:
        """Return up to ``size`` ``(id, artifact)`` with ``after < id <= last``, by id."""
        stmt = (
            select(ARTIFACTS)
            .where(self._mine, ARTIFACTS.c.id > after, ARTIFACTS.c.id <= last)
            .order_by(ARTIFACTS.c.id)
            .limit(size)
        )
        with self.read() as conn:
            return [(int(row.id), row_to_artifact(row)) for row in conn.execute(stmt)]

    # -- writes (inside a ``write()`` transaction) -----------------------------------------------
    def _run(
        self, conn: WriteConnection, compiled: CompiledSelect, params: Mapping[str, Any]
    ) -> Sequence[Any]:
        """Run a statement compiled once in the transaction of ``conn``; return its rows.

        On SQLite it runs on the driver's cursor of that connection (inside its ``BEGIN
        IMMEDIATE``), its parameters bound as SQLAlchemy would bind them; a driver error is
        raised as SQLAlchemy's. On PostgreSQL it runs through SQLAlchemy.
        """
        if self._sqlite:
            bound = compiled.bind(params)
            driver = _driver(conn)
            try:
                return driver.execute(compiled.sql, bound).fetchall()
            except sqlite3.Error as error:
                _raise_driver_error(compiled.sql, error, bound)
        assert isinstance(conn, Connection)
        result = conn.execute(compiled.statement, dict(params))
        return result.all() if result.returns_rows else ()

    def _run_many(
        self, conn: WriteConnection, compiled: CompiledSelect, rows: list[dict[str, Any]]
    ) -> None:
        """Run a compiled ``INSERT`` once per row of ``rows`` (``executemany``)."""
        if self._sqlite:
            bound = [compiled.bind(row) for row in rows]
            driver = _driver(conn)
            try:
                driver.executemany(compiled.sql, bound)
            except sqlite3.Error as error:
                _raise_driver_error(compiled.sql, error, bound)
            return
        assert isinstance(conn, Connection)
        conn.execute(compiled.statement, rows)

    def _values(self, artifact: Artifact) -> dict[str, Any]:
        fields = artifact.__dict__  # the model's field values, as validated
        values = {field: fields[field] for field in ARTIFACT_FIELDS}
        values.update(promoted_columns(artifact.additional_metadata))
        values["store_id"] = self.store_id
        return values

    def conflicting_key(
        self, conn: WriteConnection, key: str, *, include_self: bool = False
    ) -> str | None:
        """Return a stored key that contains ``key`` or lies inside it (``a`` vs ``a/b``).

        In a write transaction this is decided atomically with the insert that follows: SQLite
        writers are serialized by ``BEGIN IMMEDIATE``; on PostgreSQL the transaction first takes
        an advisory lock on the key's first path segment in this store, which every key that
        could overlap shares.
        """
        if (
            isinstance(conn, Connection)
            and conn.dialect.name == "postgresql"
            and conn.get_execution_options().get(WRITE_OPTION)
        ):
            conn.execute(
                text("SELECT pg_advisory_xact_lock(:id)"),
                {"id": _namespace_lock_id(self.store_id, key)},
            )
        prefixes = key_prefixes(key)
        if include_self:
            prefixes.append(key)
        params: dict[str, Any] = {f"p{i}": prefix for i, prefix in enumerate(prefixes)}
        params.update(w_store_id=self.store_id, lo=key + "/", hi=key + "0")
        rows = self._run(conn, _compiled_conflict(self._dialect, len(prefixes)), params)
        return str(rows[0][0]) if rows else None

    def insert_if_absent(self, conn: WriteConnection, artifact: Artifact) -> int | None:
        """Insert the row unless the key exists; return the new id, None on a conflict.

        The unique ``(store_id, key)`` constraint decides: of two concurrent writers exactly one
        inserts.
        """
        rows = self._run(conn, self._writes["insert"], self._values(artifact))
        if not rows:
            return None
        new_id = int(rows[0][0])
        self._set_tags(conn, new_id, artifact)
        return new_id

    def replace(self, conn: WriteConnection, artifact_id: int, artifact: Artifact) -> None:
        """Overwrite the row ``artifact_id`` with ``artifact``."""
        params = {f"v_{name}": value for name, value in self._values(artifact).items()}
        params.update(w_store_id=self.store_id, w_id=artifact_id)
        self._run(conn, self._writes["replace"], params)
        self._clear_children(conn, artifact_id)
        self._set_tags(conn, artifact_id, artifact)

    def update_stat(
        self, conn: WriteConnection, artifact_id: int, *, size_bytes: int, fingerprint: str
    ) -> None:
        """Record a payload's size and fingerprint."""
        params = {
            "w_store_id": self.store_id,
            "w_id": artifact_id,
            "v_size_bytes": size_bytes,
            "v_fingerprint": fingerprint,
        }
        self._run(conn, self._writes["update_stat"], params)

    def _set_tags(self, conn: WriteConnection, artifact_id: int, artifact: Artifact) -> None:
        """Record the rows the artifact's metadata indexes: tags, parameter values, parents."""
        metadata = artifact.additional_metadata
        if not metadata:
            return
        created_at = artifact.created_at
        tags = tags_of(metadata)
        if tags:
            self._run_many(
                conn,
                self._writes["add_tags"],
                [
                    {"artifact_id": artifact_id, "tag": tag, "created_at": created_at}
                    for tag in sorted(tags)
                ],
            )
        parameters = parameters_of(metadata)
        if parameters:
            self._run_many(
                conn,
                self._writes["add_parameters"],
                [
                    {
                        "artifact_id": artifact_id,
                        "name": name,
                        "value": value,
                        "created_at": created_at,
                    }
                    for name, value in sorted(parameters.items())
                ],
            )
        edges = edges_of(metadata)
        if edges:
            self._run_many(
                conn,
                self._writes["add_edges"],
                [{"artifact_id": artifact_id, **edge} for edge in edges],
            )

    def _clear_children(self, conn: WriteConnection, artifact_id: int) -> None:
        """Delete the tags, parameter values and parents recorded for the row ``artifact_id``."""
        for name in _CHILD_COLUMNS:
            self._run(conn, self._writes[f"clear_{name}"], {"w_id": artifact_id})

    def remove(self, conn: WriteConnection, key: str) -> Artifact | None:
        """Delete the row of ``key`` (its tags go with it); return what was deleted."""
        found = self.fetch(conn, key, for_update=True)
        if found is None:
            return None
        self.remove_id(conn, found[0])
        return found[1]

    def remove_id(self, conn: WriteConnection, artifact_id: int) -> None:
        """Delete the row ``artifact_id`` of this store, its tags, parameter values and parents.

        (What was derived from it keeps its edges, which name this row's key and version: a
        parent deleted or overwritten since is detectable.)
        """
        self._clear_children(conn, artifact_id)
        self._run(conn, self._writes["remove"], {"w_store_id": self.store_id, "w_id": artifact_id})
