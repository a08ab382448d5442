"""SQLAlchemy engines for the index: SQLite pragmas, PostgreSQL pooling, fork safety."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, NoSuchModuleError
from sqlalchemy.exc import OperationalError as SQLOperationalError

from .._process import current_pid
from ..errors import IndexUnavailableError, MissingDependencyError

__all__ = [
    "DATABASE_URL_ENV",
    "SQLITE_BUSY_TIMEOUT_MS",
    "SUPPORTED_URLS",
    "SQLiteReaders",
    "check_database_url",
    "create_index_engine",
    "network_filesystem_type",
    "redact_options",
    "redact_url",
    "sqlite_path",
    "sqlite_readers",
    "sqlite_writers",
]

#: The environment variable holding the default index URL.
DATABASE_URL_ENV = "XPERSIST_SQL_DATABASE_URL"
#: The index URLs xpersist_sql works with, as messages name them.
SUPPORTED_URLS = (
    "'sqlite:////absolute/path/index.sqlite' (one machine) or "
    "'postgresql+psycopg://user@host:5432/dbname' (postgresql:// and postgres:// are read as "
    "postgresql+psycopg://)"
)
#: Seconds a PostgreSQL connection attempt may take (unless the URL sets ``connect_timeout``).
PG_CONNECT_TIMEOUT = 15
#: A pooled PostgreSQL connection idle for longer than this is pinged when checked out (one
#: round trip); one in steady use is not: reads then recover from a dropped connection on error.
PG_IDLE_PING_SECONDS = 1.0

SQLITE_BUSY_TIMEOUT_MS = 60_000
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "afs",
        "fuse.sshfs",
        "9p",
        "lustre",
        "gpfs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "beegfs",
    }
)
#: Execution option marking a connection whose transactions write (BEGIN IMMEDIATE on SQLite).
WRITE_OPTION = "xpersist_write"


#: Names of URL query parameters and storage options whose values are secrets.
_SECRET_NAME = re.compile(
    r"pass|pwd|secret|token|key|credential|auth|sas|signature|connection_?str|session|cookie",
    re.IGNORECASE,
)
_USERINFO_PASSWORD = re.compile(r"(?P<head>//[^/?#@:]*:)[^/?#@]*@")
_HIDDEN = "***"
_PLACEHOLDER = "XPERSISTSQLREDACTED"


def redact_url(url: str | URL) -> str:
    """Return the URL as a string with its secrets hidden.

    The password of the user part and the values of query parameters that hold secrets
    (``?password=``, ``sslpassword``, ``token``...) are shown as ``***``.

    Examples
    --------
    >>> redact_url("postgresql+psycopg://me:pw@db/cache?password=pw&sslmode=require")
    'postgresql+psycopg://me:***@db/cache?password=***&sslmode=require'
    """
    try:
        parsed = make_url(url)
    except ArgumentError:  # not a URL SQLAlchemy reads: hide what looks like a password
        return _USERINFO_PASSWORD.sub(rf"\g<head>{_HIDDEN}@", str(url))
    secret = [name for name in parsed.query if _SECRET_NAME.search(name)]
    if secret:
        parsed = parsed.update_query_dict(dict.fromkeys(secret, _PLACEHOLDER))
    return parsed.render_as_string(hide_password=True).replace(_PLACEHOLDER, _HIDDEN)


def redact_options(options: Any) -> Any:
    """Return a copy of fsspec ``storage_options`` fit to show: secret values replaced by ``***``.

    An option whose name looks secret (``key``, ``secret``, ``token``, ``password``,
    ``account_key``, ``sas_token``, ``connection_string``...) is hidden; nested options
    (``client_kwargs``, ``config_kwargs``, ``headers``) are looked into, and a password in a URL
    value (``endpoint_url``) is hidden too.

    Examples
    --------
    >>> redact_options({"key": "AKIA", "client_kwargs": {"endpoint_url": "http://s3:9000"}})
    {'key': '***', 'client_kwargs': {'endpoint_url': 'http://s3:9000'}}
    """
    if isinstance(options, Mapping):
        return {
            name: _HIDDEN
            if isinstance(name, str) and _SECRET_NAME.search(name) and value is not None
            else redact_options(value)
            for name, value in options.items()
        }
    if isinstance(options, (list, tuple)):
        return type(options)(redact_options(item) for item in options)
    if isinstance(options, str):
        return _USERINFO_PASSWORD.sub(rf"\g<head>{_HIDDEN}@", options)
    return options


def check_database_url(url: str | URL) -> URL:
    """Parse an index URL and check that xpersist_sql can use it.

    ``postgres://`` (as psql and Heroku write it) and ``postgresql://`` are read as
    ``postgresql+psycopg://``, the supported driver.

    Raises
    ------
    ValueError
        If ``url`` is not a database URL, names an unknown driver, an asyncio driver, or a
        database other than SQLite and PostgreSQL; the message names the supported URLs.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            f"cannot read {redact_url(url)!r} as a database URL; use {SUPPORTED_URLS}"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgres", "postgresql"):
        parsed = parsed.set(drivername=f"postgresql+{driver or 'psycopg'}")
    shown = redact_url(parsed)
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(
            f"unsupported index database {shown!r}: the index of a store is a SQLite file or a "
            f"PostgreSQL database; use {SUPPORTED_URLS}"
        )
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise ValueError(
            f"unknown database driver {parsed.drivername!r} in {shown!r}; use {SUPPORTED_URLS}"
        ) from None
    if getattr(dialect, "is_async", False):
        raise ValueError(
            f"the driver {parsed.drivername!r} of {shown!r} is an asyncio driver, which the "
            f"index cannot use; use {SUPPORTED_URLS}"
        )
    return parsed


def sqlite_path(url: str | URL) -> Path | None:
    """Return the database file of a SQLite URL (None for other backends and in-memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database))


def network_filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """Return the filesystem type of ``path`` if it is a network filesystem, else None.

    Parameters
    ----------
    path : Path
        Any path; the longest mount point containing it decides.
    mounts : str, optional
        The mount table in ``/proc/mounts`` format (read from the system by default).
    """
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = os.path.abspath(path)
    best, best_type = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fields[2]
    if best_type and (best_type in NETWORK_FILESYSTEMS or best_type.startswith("nfs")):
        return best_type
    return None


def _enable_wal(cursor: Any) -> None:
    """Switch the database to WAL, waiting out other connections as busy_timeout would.

    Changing the journal mode of a brand-new database that another process is creating fails
    at once with "database is locked": SQLite does not call the busy handler for it.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _readonly_creator(db_file: Path) -> Any:
    """Return a connection factory opening ``db_file`` read-only, never writing anything.

    Every connection has ``PRAGMA query_only``. Where this process may write the files, the
    connection is opened read-write (so that, as any last connection, it removes the ``-wal``
    and ``-shm`` files on close); elsewhere ``mode=ro``. A WAL database in a directory this
    process cannot write (a cache shared by another user) cannot be opened ``mode=ro`` when its
    ``-shm`` file is absent, and is then read as an immutable snapshot.
    """
    target = db_file.resolve().as_posix()

    def connect() -> sqlite3.Connection:
        if not db_file.exists():
            raise sqlite3.OperationalError(f"unable to open database file {db_file}")
        timeout = SQLITE_BUSY_TIMEOUT_MS / 1000
        # Where the files are writable, a read-write connection with query_only leaves nothing
        # behind: the last connection to close removes the -wal and -shm files it needed,
        # which a mode=ro connection cannot do.
        mode = "rw" if os.access(db_file, os.W_OK) and os.access(db_file.parent, os.W_OK) else "ro"
        conn = sqlite3.connect(
            f"file:{target}?mode={mode}", uri=True, timeout=timeout, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA schema_version").fetchone()
            return conn
        except sqlite3.OperationalError:
            conn.close()
        return sqlite3.connect(
            f"file:{target}?immutable=1", uri=True, timeout=timeout, check_same_thread=False
        )

    return connect


def _reader_creator(db_file: Path, *, readonly: bool) -> Callable[[], sqlite3.Connection]:
    """Return a factory of connections for reads only (``PRAGMA query_only``, autocommit).

    A readonly store's readers are opened as its engine's connections are (see
    :func:`_readonly_creator`); otherwise the existing file is opened read-write (``mode=rw``:
    never created), its journal mode (WAL) being already set by the engine.
    """
    timeout = SQLITE_BUSY_TIMEOUT_MS / 1000
    if readonly:
        open_readonly = _readonly_creator(db_file)
    else:
        uri = f"file:{quote(db_file.resolve().as_posix())}?mode=rw"

    def connect() -> sqlite3.Connection:
        conn: sqlite3.Connection
        if readonly:
            conn = open_readonly()
        else:
            conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
        try:
            conn.isolation_level = None  # each statement is its own (read) transaction
            conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    return connect


def _writer_creator(db_file: Path) -> Callable[[], sqlite3.Connection]:
    """Return a factory of this thread's write connection (see :func:`sqlite_writers`).

    Set up as the engine's connections are (busy timeout, WAL, ``synchronous = NORMAL``,
    foreign keys) and in autocommit: the writer issues ``BEGIN IMMEDIATE`` and ``COMMIT``
    itself. The existing file is opened read-write (``mode=rw``: never created).
    """
    timeout = SQLITE_BUSY_TIMEOUT_MS / 1000
    uri = f"file:{quote(db_file.resolve().as_posix())}?mode=rw"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
        try:
            conn.isolation_level = None
            cursor = conn.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
                _enable_wal(cursor)
                cursor.execute("PRAGMA synchronous = NORMAL")
                cursor.execute("PRAGMA foreign_keys = ON")
            finally:
                cursor.close()
        except BaseException:
            conn.close()
            raise
        return conn

    return connect


#: Connections opened by a parent process, seen in a forked child: never used nor closed there
#: (closing them could disturb the parent's database), only kept from the garbage collector.
_INHERITED: list[sqlite3.Connection] = []


class _Reader:
    """One thread's read connection; closed when dropped (its thread ended, or its engine)."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn: sqlite3.Connection | None = conn
        self.pid = current_pid()

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if self.pid != current_pid():
            _INHERITED.append(conn)
            return
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown
            self.close()


class SQLiteReaders:
    """One SQLite connection per thread, kept open, for the index's hot reads.

    A point lookup on SQLite takes a few microseconds; checking a connection out of the pool per
    call costs more than that. Each thread gets its own connection (with ``PRAGMA query_only``:
    it cannot write), opened on first use and closed when the thread ends, when
    :meth:`close` is called or when the engine is disposed (``CacheStore.close()``). A forked
    child never uses nor closes its parent's connections: it opens its own.

    Parameters
    ----------
    connect : callable
        Returns a new ``sqlite3.Connection`` (autocommit, ``query_only``).
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._local = threading.local()
        self._lock = threading.Lock()
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()

    def connection(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it if needed.

        Raises
        ------
        sqlite3.Error
            If the database cannot be opened.
        """
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is not None:
            conn = reader.conn
            if conn is not None and reader.pid == current_pid():
                return conn
            reader.close()  # closed by close(), or the parent's after a fork (kept, unused)
        reader = _Reader(self._connect())
        self._local.reader = reader
        with self._lock:
            self._readers.add(reader)
        assert reader.conn is not None
        return reader.conn

    def discard(self) -> None:
        """Close this thread's connection (after an error on it): the next use opens another."""
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is not None:
            self._local.reader = None
            reader.close()

    def close(self) -> None:
        """Close every thread's connection (this process's; a parent's are left alone)."""
        with self._lock:
            readers = list(self._readers)
            self._readers = weakref.WeakSet()
        for reader in readers:
            reader.close()

    @property
    def open_connections(self) -> int:
        """Number of connections open in this process (for tests and diagnostics)."""
        pid = current_pid()
        with self._lock:
            return sum(1 for r in self._readers if r.conn is not None and r.pid == pid)


_READERS: weakref.WeakKeyDictionary[Engine, SQLiteReaders] = weakref.WeakKeyDictionary()
_WRITERS: weakref.WeakKeyDictionary[Engine, SQLiteReaders] = weakref.WeakKeyDictionary()


def sqlite_readers(engine: Engine) -> SQLiteReaders | None:
    """Return the per-thread read connections of an engine on a SQLite file, else None.

    Only engines made by :func:`create_index_engine` on a SQLite file have them (not
    PostgreSQL, not an in-memory database).
    """
    return _READERS.get(engine)


def sqlite_writers(engine: Engine) -> SQLiteReaders | None:
    """Return the per-thread write connections of a writable engine on a SQLite file, else None.

    The same holder as :func:`sqlite_readers` (one connection per thread, kept open, closed
    with the engine, never used across a fork), but its connections write: a put runs its
    transaction there (``BEGIN IMMEDIATE`` ... ``COMMIT``, see
    :meth:`~xpersist_sql.db.index.ArtifactIndex.write_driver`) instead of checking a
    connection out of the pool.
    """
    return _WRITERS.get(engine)


def _attach_readers(
    engine: Engine,
    connect: Callable[[], sqlite3.Connection],
    write: Callable[[], sqlite3.Connection] | None = None,
) -> None:
    readers = SQLiteReaders(connect)
    _READERS[engine] = readers
    writers = None if write is None else SQLiteReaders(write)
    if writers is not None:
        _WRITERS[engine] = writers

    @event.listens_for(engine, "engine_disposed")
    def _on_dispose(_engine: Engine) -> None:
        readers.close()
        if writers is not None:
            writers.close()


def _sqlite_engine(url: URL, *, readonly: bool = False) -> Engine:
    db_file = sqlite_path(url)
    if readonly and db_file is not None:
        engine = create_engine(url, creator=_readonly_creator(db_file), pool_pre_ping=False)

        @event.listens_for(engine, "connect")
        def _on_connect_readonly(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            dbapi_connection.execute("PRAGMA query_only = ON")

        _attach_readers(engine, _reader_creator(db_file, readonly=True))
        return engine
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
        fstype = network_filesystem_type(db_file.parent)
        if fstype:
            warnings.warn(
                f"the SQLite index {db_file} is on a network filesystem ({fstype}), where "
                "SQLite's file locking is unreliable and concurrent writers can corrupt it; "
                "share a cache between machines with PostgreSQL instead: "
                "CacheStore(path, database_url='postgresql+psycopg://...')",
                UserWarning,
                stacklevel=4,
            )
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        pool_pre_ping=False,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own is always DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if db_file is not None:
                _enable_wal(cursor)
                cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A deferred transaction that later upgrades to a write lock can fail with
        # "database is locked" regardless of busy_timeout; writers take the lock up front.
        # Reads run without an explicit transaction (each statement is atomic on its own), which
        # saves a BEGIN/ROLLBACK round per lookup.
        if connection.get_execution_options().get(WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    if db_file is not None:
        _attach_readers(engine, _reader_creator(db_file, readonly=False), _writer_creator(db_file))
    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """Ping a pooled connection on checkout only when it has been idle for a while.

    ``pool_pre_ping`` costs a round trip per checkout, as much as the lookup itself. A connection
    in steady use (checked in less than :data:`PG_IDLE_PING_SECONDS` ago) is not pinged: a read
    that finds it dropped is retried once on a new one (see
    :class:`~xpersist_sql.db.index.ArtifactIndex`) and the rest of the pool is renewed, as
    SQLAlchemy does on any disconnect error. A connection idle for longer (where a server
    restart, a firewall, a proxy or ``idle_session_timeout`` may have dropped it) is pinged
    first, and replaced if dead, so that a write after a pause does not fail on it.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["xpersist_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("xpersist_idle_since")
        if since is None or time.monotonic() - since < PG_IDLE_PING_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            if engine.dialect.is_disconnect(exc, dbapi_connection, None):
                raise DisconnectionError(str(exc)) from exc  # the pool connects anew
            raise


def _first_lines(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines[:3]) or type(error).__name__


def _unavailable(url: URL, error: BaseException) -> IndexUnavailableError:
    """Return the error for an index that cannot be connected to (``error``: the driver's)."""
    shown = redact_url(url)
    db_file = sqlite_path(url)
    if url.get_backend_name() == "sqlite":
        where = f"the SQLite index {db_file or shown}"
        check = (
            "Check that its directory exists and that this process may read and write there "
            "(a cache shared read-only: CacheStore(..., readonly=True)), and that no other "
            "process keeps the database locked"
        )
    else:
        where = f"the index database {shown}"
        check = (
            f"Check that the server is running and reachable at {url.host or 'localhost'}:"
            f"{url.port or 5432} (host, port, firewall, VPN), that the user, password and "
            "database name are right, and that this is the URL you meant (database_url=, "
            f"--db or ${DATABASE_URL_ENV})"
        )
    detail = _first_lines(error)
    stop = "" if detail.endswith((".", "?", "!")) else "."
    return IndexUnavailableError(f"cannot connect to {where}: {detail}{stop} {check}")


def _refuse_unavailable(engine: Engine, url: URL) -> None:
    """Turn a failure to connect (not a failing statement) into :class:`IndexUnavailableError`.

    A pooled connection found dead by a ping is left alone: the pool reconnects.
    """

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        if (
            context.connection is None
            and not context.is_pre_ping
            and isinstance(context.sqlalchemy_exception, SQLOperationalError)
        ):
            raise _unavailable(url, context.original_exception) from context.original_exception


def create_index_engine(url: str | URL, *, readonly: bool = False) -> Engine:
    """Create the engine for an index database URL.

    SQLite gets WAL, a busy timeout, foreign keys and ``BEGIN IMMEDIATE`` for writes, and one
    read connection per thread (:func:`sqlite_readers`); PostgreSQL a small pool whose
    connections are pinged only after :data:`PG_IDLE_PING_SECONDS` idle. ``readonly`` opens a
    SQLite file read-only (no WAL switch, no directory created, nothing written). A connection
    that cannot be made raises :class:`~xpersist_sql.IndexUnavailableError`.

    Raises
    ------
    ValueError
        For a URL xpersist_sql cannot use (see :func:`check_database_url`).
    MissingDependencyError
        If the database driver is not installed.
    """
    parsed = check_database_url(url)
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            engine = _sqlite_engine(parsed, readonly=readonly)
        else:
            # no pool_pre_ping: a round trip per checkout (see _ping_idle_connections)
            kwargs: dict[str, Any] = {}
            if backend == "postgresql":
                kwargs.update(pool_size=5, max_overflow=10, pool_recycle=1800)
                if "connect_timeout" not in parsed.query:
                    kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT}
            engine = create_engine(parsed, **kwargs)
            if backend == "postgresql":
                _ping_idle_connections(engine)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the index database {redact_url(parsed)} needs the Python package "
            f"{exc.name or 'of its driver'!r}, which is not installed: pip install "
            f"'xpersist_sql[postgres]' and use a postgresql+psycopg:// URL"
        ) from exc
    _refuse_unavailable(engine, parsed)
    return engine
