"""Locks on keys shared by every process and machine using one index.

With a PostgreSQL index a lock is a session-level advisory lock (``pg_advisory_lock``) on a
connection held for as long as the lock: the key is hashed to the lock's 64-bit id. With a
SQLite index it is a file lock (``flock``, through :mod:`filelock`) in a ``locks/`` directory
next to the SQLite file, one file per key named by the key's sha256, so that keys differing only
by suffix (``a.zarr``, ``a.nc``) or nested keys (``runs/2024/a.zarr``) never share a lock.

Either way the operating system or the database server releases the lock when its holder's
process ends, even killed with SIGKILL: a crashed worker never leaves a key locked.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Protocol

import filelock
from sqlalchemy import Connection, Engine, exc, text

from ..errors import LockTimeoutError, UnsafePathError
from .engine import redact_url, sqlite_path

__all__ = [
    "LOCKS_DIR",
    "AdvisoryLock",
    "FileKeyLock",
    "KeyLock",
    "advisory_lock_id",
    "key_lock",
    "lock_filename",
    "wait_until_free",
]

LOCKS_DIR = "locks"
_NAMESPACE = "xpersist_sql:"
_LOCK_NOT_AVAILABLE = "55P03"


def advisory_lock_id(key: str) -> int:
    """Return the signed 64-bit PostgreSQL advisory lock id of ``key``."""
    digest = hashlib.sha256((_NAMESPACE + key).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_filename(key: str) -> str:
    """Return the name of the lock file of ``key`` (its sha256, never derived from its suffix)."""
    return hashlib.sha256((_NAMESPACE + key).encode()).hexdigest() + ".lock"


def _timeout_error(key: str, store: str, timeout: float | None) -> LockTimeoutError:
    return LockTimeoutError(
        f"could not lock key {key!r} of store {store!r} within {timeout:g} s: another worker "
        "holds it (it is released when that worker finishes or its process dies); wait longer "
        "with store.lock(key, timeout=None)"
    )


class KeyLock(Protocol):
    """A lock on one key, held by one owner at a time across processes and machines."""

    key: str

    def acquire(self, timeout: float | None = None) -> None:
        """Wait for the lock (``None``: as long as it takes; ``0``: do not wait).

        Raises :class:`~xpersist_sql.errors.LockTimeoutError` if it is not free in time.
        """

    def release(self) -> None:
        """Release the lock (a no-op if it is not held)."""

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""

    def locked(self) -> bool:
        """Whether any owner, this one included, holds the lock now."""


class AdvisoryLock:
    """A PostgreSQL session-level advisory lock on a key.

    Parameters
    ----------
    engine : Engine
        Engine of the PostgreSQL index; the lock holds one of its connections while held.
    key : str
        The key to lock.
    store : str
        The store's path, for error messages.
    """

    def __init__(self, engine: Engine, key: str, *, store: str = "") -> None:
        self.engine = engine
        self.key = key
        self.store = store
        self.lock_id = advisory_lock_id(key)
        self._conn: Connection | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._conn is not None

    def _connect(self) -> Connection:
        return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def acquire(self, timeout: float | None = None) -> None:
        """Wait for the lock; see :class:`KeyLock`."""
        if self._conn is not None:
            raise RuntimeError(f"the lock on key {self.key!r} is already held by this object")
        conn = self._connect()
        try:
            if timeout is not None and timeout <= 0:
                got = conn.scalar(text("SELECT pg_try_advisory_lock(:id)"), {"id": self.lock_id})
            else:
                milliseconds = 0 if timeout is None else max(1, round(timeout * 1000))
                conn.execute(text(f"SET lock_timeout = {milliseconds}"))
                try:
                    conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": self.lock_id})
                    got = True
                except exc.OperationalError as error:
                    if getattr(error.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                        raise
                    got = False
                conn.execute(text("RESET lock_timeout"))
        except BaseException:
            conn.invalidate()  # never return a connection that may hold the lock to the pool
            conn.close()
            raise
        if not got:
            conn.close()
            raise _timeout_error(self.key, self.store, timeout)
        self._conn = conn

    def release(self) -> None:
        """Release the lock; see :class:`KeyLock`."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": self.lock_id})
        except BaseException:
            conn.invalidate()  # closing the session releases the lock on the server
            raise
        finally:
            conn.close()

    def locked(self) -> bool:
        """Whether any session holds the lock now."""
        if self._conn is not None:
            return True
        with self._connect() as conn:
            got = conn.scalar(text("SELECT pg_try_advisory_lock(:id)"), {"id": self.lock_id})
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": self.lock_id})
        return not got


class FileKeyLock:
    """A file lock on a key, in a directory shared by the processes using a SQLite index.

    Parameters
    ----------
    directory : Path
        The ``locks/`` directory (created if needed).
    key, store : str
        The key to lock, and the store's path for error messages (as :class:`AdvisoryLock`).
    """

    def __init__(self, directory: Path, key: str, *, store: str = "") -> None:
        self.key = key
        self.store = store
        self.path = Path(directory) / lock_filename(key)
        self._lock: filelock.BaseFileLock | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._lock is not None

    def _new(self) -> filelock.BaseFileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.parent.is_symlink():
            raise UnsafePathError(
                f"the locks directory {str(self.path.parent)!r} of store {self.store!r} is a "
                "symbolic link: xpersist_sql never creates files where one points. Replace it "
                "with a directory of its own (or remove it: the store makes it again)"
            )
        return filelock.FileLock(str(self.path), thread_local=False)

    def acquire(self, timeout: float | None = None) -> None:
        """Wait for the lock; see :class:`KeyLock`."""
        if self._lock is not None:
            raise RuntimeError(f"the lock on key {self.key!r} is already held by this object")
        lock = self._new()
        try:
            lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout))
        except filelock.Timeout:
            raise _timeout_error(self.key, self.store, timeout) from None
        self._lock = lock

    def release(self) -> None:
        """Release the lock; see :class:`KeyLock`."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def locked(self) -> bool:
        """Whether any process holds the lock now."""
        if self._lock is not None:
            return True
        probe = self._new()
        try:
            probe.acquire(timeout=0)
        except filelock.Timeout:
            return True
        probe.release()
        return False


def key_lock(engine: Engine, key: str, *, store: str = "") -> KeyLock:
    """Return an (unacquired) lock on ``key`` for the index behind ``engine``.

    Parameters
    ----------
    engine : Engine
        The index's engine: PostgreSQL gives an :class:`AdvisoryLock`, a SQLite file a
        :class:`FileKeyLock` in ``locks/`` next to it.
    key : str
        Any string; artifact keys and Prefect transaction keys share one namespace.
    store : str
        The store's path, for error messages.

    Raises
    ------
    ValueError
        For an index without a place to keep locks (an in-memory SQLite database, another
        backend).
    """
    backend = engine.dialect.name
    if backend == "postgresql":
        return AdvisoryLock(engine, key, store=store)
    db_file = sqlite_path(engine.url) if backend == "sqlite" else None
    if db_file is None:
        raise ValueError(
            f"cannot lock keys of store {store!r}: its index "
            f"{redact_url(engine.url)!r} is neither PostgreSQL nor a SQLite file; use one of them"
        )
    return FileKeyLock(Path(os.path.abspath(db_file)).parent / LOCKS_DIR, key, store=store)


def wait_until_free(lock: KeyLock, timeout: float | None, poll: float = 0.05) -> bool:
    """Wait until nobody holds ``lock``'s key; return False if it is still held at ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while lock.locked():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(poll if deadline is None else min(poll, max(0.0, deadline - time.monotonic())))
    return True
