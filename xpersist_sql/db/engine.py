"""SQLAlchemy engines for the index: SQLite pragmas, PostgreSQL pooling, fork safety."""

from __future__ import annotations

import os
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "create_index_engine",
    "network_filesystem_type",
    "redact_url",
    "sqlite_path",
]

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


def redact_url(url: str | URL) -> str:
    """Return the URL as a string with its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


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


def _sqlite_engine(url: URL, *, readonly: bool = False) -> Engine:
    db_file = sqlite_path(url)
    if readonly and db_file is not None:
        engine = create_engine(url, creator=_readonly_creator(db_file), pool_pre_ping=False)

        @event.listens_for(engine, "connect")
        def _on_connect_readonly(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            dbapi_connection.execute("PRAGMA query_only = ON")

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

    return engine


def create_index_engine(url: str | URL, *, readonly: bool = False) -> Engine:
    """Create the engine for an index database URL.

    SQLite gets WAL, a busy timeout, foreign keys and ``BEGIN IMMEDIATE`` for writes;
    PostgreSQL a small pre-pinged pool. ``readonly`` opens a SQLite file read-only (no WAL
    switch, no directory created, nothing written).
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, readonly=readonly)
    if backend == "postgresql" and parsed.drivername == "postgresql":
        # psycopg 3 is the supported driver; a bare postgresql:// would pick psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg")
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "postgresql":
        kwargs.update(pool_size=5, max_overflow=10, pool_recycle=1800)
    return create_engine(parsed, **kwargs)
