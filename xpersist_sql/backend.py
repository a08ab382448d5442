"""The store backend: one store's payload storage, its rows in the index, and the write protocol.

:class:`StoreBackend` is the seam between :class:`~xpersist_sql.CacheStore` (configuration,
serializers, policies, messages) and the parts it composes (:mod:`~xpersist_sql.storage`,
:mod:`~xpersist_sql.db`). It knows what the store owns:

- **its identity**: the id in the store's marker (``.xpersist_sql/store.json``), recorded in the
  index's ``xpersist_stores`` table. Only its rows are read or changed; a marker the index does
  not know, or a root the index knows under another id, is a :class:`StoreMismatchError`.
- **its files**: payloads leave their key only through :meth:`PayloadStorage.take
  <xpersist_sql.storage.PayloadStorage.take>` (validated key, no symlink, no nested store, never
  outside the root) and are deleted only from the hidden trash, after the removing transaction
  committed (:meth:`transact`, after diskcache's ``Cache._transact``).

Reading creates nothing: a store without a marker has no rows, and its index is not opened.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import fsspec
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from ._process import current_pid
from .db.access import AccessLog
from .db.engine import create_index_engine, redact_url, sqlite_path
from .db.index import ArtifactIndex, WriteConnection
from .db.locks import KeyLock, key_lock
from .db.schema import ensure_schema, schema_state, upgrade_command
from .db.stores import find_store, register_store, set_store_root, stores_at_root
from .errors import (
    InvalidKeyError,
    LockTimeoutError,
    OverlappingKeyError,
    StoreMismatchError,
    StoreNotFoundError,
)
from .marker import HIDDEN_DIR, StoreMarker, create_marker, read_marker, store_root_url
from .models import Artifact
from .storage import (
    PayloadStat,
    PayloadStorage,
    join_fingerprint,
    sealed_by_token,
    split_fingerprint,
    validate_key,
)

__all__ = ["WRITE_LOCK_PREFIX", "Changes", "StoreBackend"]

#: Prefix of the key locks that writers of an object store hold while they write a key's payload
#: in place (never the lock of ``CacheStore.lock(key)``, which a caller may hold around a put).
WRITE_LOCK_PREFIX = "\x00xpersist_sql-write\x00"
#: The lock on a store root while its marker is made (object stores; see _marker_lock).
MARKER_LOCK_PREFIX = "\x00xpersist_sql-marker\x00"


class _Kept(Exception):
    """Raised inside an in-place write whose key turned out to be kept (``decide``)."""

    def __init__(self, artifact: Artifact) -> None:
        super().__init__(artifact.key)
        self.artifact = artifact


@dataclass
class Changes:
    """Payloads a write transaction moved out of their keys, as ``(trash path, key)``.

    After COMMIT they are purged; if the transaction fails they are put back at their keys.
    """

    displaced: list[tuple[str, str]] = field(default_factory=list)

    def add(self, trash: str | None, key: str) -> None:
        """Record that the payload of ``key`` now lies at ``trash`` (no-op for None)."""
        if trash is not None:
            self.displaced.append((trash, key))


class StoreBackend:
    """Payload storage, index rows and write protocol of one store.

    Parameters
    ----------
    storage : PayloadStorage
        The store's files.
    database_url : str
        SQLAlchemy URL of the index.
    readonly : bool
        Open the index read-only and never write anything.
    storage_options : dict, optional
        The fsspec options of ``storage`` (to look at where a store was recorded before).
    """

    def __init__(
        self,
        storage: PayloadStorage,
        database_url: str,
        *,
        readonly: bool,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.storage = storage
        self.storage_options = dict(storage_options or {})
        self.database_url = database_url
        self.readonly = readonly
        self.root_url = store_root_url(storage.fs, storage.root)
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._engine: Engine | None = None
        self._index: ArtifactIndex | None = None
        self._access: AccessLog | None = None

    # -- identity ----------------------------------------------------------------------------------
    def marker(self) -> StoreMarker | None:
        """Return the store's marker, or None if the root is not (yet) a store."""
        return read_marker(self.storage.fs, self.storage.root)

    def _embedded_index(self) -> bool:
        db_file = sqlite_path(self.database_url)
        return db_file is not None and db_file.parent == _local_hidden_dir(self.storage)

    def _embedded_index_exists(self) -> bool:
        db_file = sqlite_path(self.database_url)
        return self._embedded_index() and db_file is not None and db_file.exists()

    def is_store(self) -> bool:
        """Whether the root holds a store: a marker, or an embedded index of an older version."""
        return self.marker() is not None or self._embedded_index_exists()

    def require_store(self) -> None:
        """Raise :class:`StoreNotFoundError` unless the root holds a store.

        Raises
        ------
        StoreNotFoundError
            If the root holds no marker (nor an embedded index of an older version).
        SchemaVersionError
            If it holds none because its index, outside the root, predates store markers.
        """
        if self.is_store():
            return
        self._check_outside_index()
        raise StoreNotFoundError(
            f"no xpersist_sql store at {self.storage.url()!r}: it has no "
            f"{HIDDEN_DIR}/store.json marker. Check the path (and --db / database_url); a store "
            "is created by its first put. A store written by an older xpersist_sql is upgraded "
            f"with `{upgrade_command(self.database_url, self.storage.url())}`"
        )

    def _check_outside_index(self) -> None:
        """Raise SchemaVersionError if an index outside the root is not at head (reads only)."""
        if self._embedded_index():
            return
        db_file = sqlite_path(self.database_url)
        if db_file is not None and not db_file.exists():
            return
        probe = create_index_engine(self.database_url, readonly=True)
        try:
            state = schema_state(probe)
            if state:  # an older, newer or foreign schema: say so, and how to upgrade
                ensure_schema(probe, store=self.storage.url(), readonly=True)
        finally:
            probe.dispose()

    def _has_payloads(self) -> bool:
        try:
            entries = self.storage.fs.ls(self.storage.root, detail=False)
        except FileNotFoundError:
            return False
        root = self.storage.root.rstrip("/")
        return any(entry.rstrip("/") not in (root, f"{root}/{HIDDEN_DIR}") for entry in entries)

    @property
    def engine(self) -> Engine:
        """The index's engine (schema checked, created at head for a new database)."""
        with self._lock:
            return self._engine_locked()

    def _engine_locked(self) -> Engine:
        pid = current_pid()
        if self._engine is not None and self._pid != pid:
            # Never close the parent's connections from a forked child: drop them.
            self._engine.dispose(close=False)
            self._engine, self._index, self._access = None, None, None
        if self._engine is None:
            engine = create_index_engine(self.database_url, readonly=self.readonly)
            try:
                ensure_schema(engine, store=self.storage.url(), readonly=self.readonly)
            except BaseException:
                engine.dispose()
                raise
            self._engine, self._pid = engine, pid
        return self._engine

    def index(self, *, create: bool = False) -> ArtifactIndex | None:
        """Return the store's rows; None when the root is not a store and ``create`` is False.

        With ``create`` (a first write) the marker is written and the store recorded in the
        index.

        Raises
        ------
        StoreMismatchError
            If the marker and the index disagree about which store this is.
        """
        index = self._index
        if index is not None and self._pid == current_pid():
            return index
        with self._lock:
            if self._index is not None and self._pid == current_pid():
                return self._index
            marker = self.marker()
            fresh = False
            if marker is None:
                if not create or self.readonly:
                    if self._embedded_index_exists():
                        self._engine_locked()  # an older index: SchemaVersionError says how
                    self._check_outside_index()
                    return None
                engine = self._engine_locked()  # the schema is checked before the marker
                self.storage.fs.makedirs(self.storage.root, exist_ok=True)
                with self._marker_lock(engine):
                    marker = create_marker(self.storage.fs, self.storage.root)
                fresh = True
            engine = self._engine_locked()
            with engine.connect() as conn:
                known = find_store(conn, marker.store_id)
                others = [
                    row
                    for row in stores_at_root(conn, self.root_url)
                    if row.uid != marker.store_id  # (a concurrent first put may add ours)
                ]
            if known is None:
                try:
                    self._check_unknown(marker, fresh, [row.uid for row in others])
                except StoreMismatchError:
                    with engine.connect() as conn:  # a concurrent first put recorded it since?
                        known = find_store(conn, marker.store_id)
                    if known is None:
                        raise
            if known is None:
                with contextlib.closing(engine.connect()) as conn, conn.begin():
                    known = register_store(conn, marker.store_id, self.root_url)
            elif known.root != self.root_url and not self.readonly:
                self._check_not_a_copy(marker, known.root)
                with contextlib.closing(engine.connect()) as conn, conn.begin():
                    set_store_root(conn, known.id, self.root_url)  # moved (or copied with it)
            self._index = ArtifactIndex(engine, known.id)
            self._access = AccessLog(known.id)
            return self._index

    @contextlib.contextmanager
    def _marker_lock(self, engine: Engine) -> Iterator[None]:
        """Hold the index's lock on this root while the store's marker is made (object stores).

        A local marker is published with ``link()``, which exactly one process wins. An object
        store has no portable exclusive create (S3's ``If-None-Match`` is AWS's alone): two
        first writes of one new store would each upload a marker, the last one winning after
        the other had recorded its own id, and every later open would then refuse the store.
        Under this lock the second writer finds the first one's marker. An index without locks
        (an in-memory SQLite database) is one process's: there is nobody to wait for.
        """
        if self.storage.is_local:
            yield
            return
        try:
            lock = key_lock(engine, MARKER_LOCK_PREFIX + self.root_url, store=self.storage.url())
        except ValueError:
            yield
            return
        lock.acquire(timeout=None)  # released at once, or when a killed holder's process ends
        try:
            yield
        finally:
            lock.release()

    def _check_not_a_copy(self, marker: StoreMarker, recorded_root: str) -> None:
        """Refuse a copy of a store whose index is shared: two folders, one set of rows.

        A store folder copied with its embedded index is a new, independent store (its own
        index); with an index outside the folder the copy would share the original's rows.
        """
        if self._embedded_index():
            return
        try:
            fs, root = fsspec.core.url_to_fs(recorded_root, **self.storage_options)
            still_there = read_marker(fs, root)
        except (OSError, ValueError):
            return  # the old root is gone or unreachable: the store was moved
        if still_there is not None and still_there.store_id == marker.store_id:
            raise StoreMismatchError(
                f"the store at {self.storage.url()!r} has id {marker.store_id}, which "
                f"{redact_url(self.database_url)} records at {recorded_root!r}, where that "
                "store still is: this folder is a copy, and both would share one set of rows. "
                f"Remove {HIDDEN_DIR}/store.json from the copy to make it a new store (its "
                "payloads are then not indexed), or open the original"
            )

    def _check_unknown(self, marker: StoreMarker, fresh: bool, others: list[str]) -> None:
        where = f"the index {redact_url(self.database_url)}"
        if others:
            raise StoreMismatchError(
                f"the store at {self.storage.url()!r} has id {marker.store_id} in its marker, but "
                f"{where} records the store {', '.join(others)} at that path (the folder was "
                "replaced, or its .xpersist_sql/store.json removed). Open it with the database "
                "it belongs to, restore its marker, or use another path"
            )
        if self.readonly or (not fresh and self._has_payloads()):
            raise StoreMismatchError(
                f"the store at {self.storage.url()!r} (id {marker.store_id}) is not recorded in "
                f"{where}: its artifacts are indexed in another database. Pass the database_url "
                "(--db) it was written with; to start an empty store here instead, remove its "
                f"{HIDDEN_DIR}/store.json"
            )

    # -- access recording --------------------------------------------------------------------------
    def record_access(self, key: str) -> None:
        """Note a read of ``key`` for LRU eviction (batched and throttled)."""
        if self.readonly or self._access is None:
            return
        self._access.record(key, lambda: self.engine)

    def reset_access_log(self, resolution: float = 60.0, flush_interval: float = 5.0) -> None:
        """Write what is pending, then start a fresh access log (benchmarks, tests)."""
        self.flush_accesses()
        index = self.index()
        if index is not None:
            self._access = AccessLog(
                index.store_id, resolution=resolution, flush_interval=flush_interval
            )

    def flush_accesses(self) -> None:
        """Write the last-access times this process has not recorded yet."""
        access = self._access
        if access is not None and access.pending and self._pid == current_pid():
            access.flush(self.engine)

    def close(self) -> None:
        """Write pending accesses and dispose of the index's connections."""
        self.flush_accesses()
        with self._lock:
            if self._engine is not None and self._pid == current_pid():
                self._engine.dispose()
            self._engine, self._index, self._access = None, None, None

    # -- the write protocol ------------------------------------------------------------------------
    @contextlib.contextmanager
    def transact(self, index: ArtifactIndex) -> Iterator[tuple[WriteConnection, Changes]]:
        """Open a write transaction; purge what it displaced after COMMIT, restore on failure.

        It runs the index's compiled writes only (:meth:`ArtifactIndex.write_driver
        <xpersist_sql.db.index.ArtifactIndex.write_driver>`: on SQLite, this thread's write
        connection).
        """
        changes = Changes()
        try:
            with index.write_driver() as conn:
                yield conn, changes
        except BaseException:
            for trash, key in reversed(changes.displaced):
                self.storage.restore(trash, key)
            raise
        for trash, _key in changes.displaced:
            self.storage.purge(trash)

    @contextlib.contextmanager
    def writing(self, key: str) -> Iterator[None]:
        """Hold the write lock of ``key`` on an object store (a no-op on local disk).

        On object stores a payload is written in place (:meth:`write_in_place`), so its writer,
        and whatever moves a payload out of the key (``delete``, ``gc``, ``evict``, the repair
        of a read), hold this lock, shared by every process and machine using the index and
        released when the holder dies. On local disk the write transaction orders them.
        """
        if self.storage.is_local:
            yield
            return
        lock = self._write_lock(key)
        lock.acquire(None)
        try:
            yield
        finally:
            lock.release()

    def _write_lock(self, key: str) -> KeyLock:
        return key_lock(self.engine, WRITE_LOCK_PREFIX + key, store=self.storage.url())

    def check_overlap(self, key: str) -> None:
        """Raise :class:`OverlappingKeyError` if a stored key contains ``key`` or lies inside it.

        A read, ahead of a write (the write transaction decides again, atomically).
        """
        index = self.index()
        if index is None:
            return
        with index.read() as conn:
            self._overlap(index, conn, key)

    def _overlap(self, index: ArtifactIndex, conn: WriteConnection, key: str) -> None:
        conflict = index.conflicting_key(conn, key)
        if conflict is None:
            return
        raise OverlappingKeyError(
            f"cannot store key {key!r} in store {self.storage.url()!r}: it "
            + (
                f"lies inside the stored key {conflict!r}"
                if key.startswith(conflict + "/")
                else f"contains the stored key {conflict!r}"
            )
            + ". A key may not contain or lie inside another key; choose another key, "
            f"or delete {conflict!r} first"
        )

    def _record_row(
        self,
        index: ArtifactIndex,
        conn: WriteConnection,
        artifact: Artifact,
        decide: Callable[[Artifact], Artifact | None],
    ) -> tuple[int, Artifact | None]:
        """Insert the row, or replace the one holding the key; ``(id, kept artifact or None)``."""
        key = artifact.key
        artifact_id = index.insert_if_absent(conn, artifact)
        while artifact_id is None:
            found = index.fetch(conn, key, for_update=True)
            if found is None:
                # PostgreSQL: a concurrent delete committed between our conflicting insert
                # and this read; the key is free again, insert once more.
                artifact_id = index.insert_if_absent(conn, artifact)
                continue
            artifact_id, existing = found
            kept = decide(existing)
            if kept is not None:
                return artifact_id, kept
            index.replace(conn, artifact_id, artifact)
        return artifact_id, None

    def write(
        self,
        staged: str,
        artifact: Artifact,
        decide: Callable[[Artifact], Artifact | None],
    ) -> Artifact:
        """Publish the staged payload at ``artifact.key`` and record its row, atomically.

        ``decide(existing)`` is called (inside the transaction) when an artifact holds the key:
        it returns the artifact to give back unchanged, or None to replace it (it may raise).
        On local disk the artifact's fingerprint, taken from the staged payload by
        :meth:`PayloadStorage.seal`, is the published payload's (a rename keeps it).

        Raises
        ------
        OverlappingKeyError
            If a stored key contains the key or lies inside it.
        """
        index = self.index(create=True)
        assert index is not None
        key = artifact.key
        storage = self.storage
        with self.writing(key), self.transact(index) as (conn, changes):
            self._overlap(index, conn, key)
            artifact_id, kept = self._record_row(index, conn, artifact, decide)
            if kept is not None:
                return kept
            changes.add(storage.publish(staged, key), key)
            if not storage.is_local:
                # object stores copy on move: fingerprint what now lies at the key
                path = storage.path(key)
                final = storage.stat(path)
                recorded = join_fingerprint(final.fingerprint, storage.identity(path))
                index.update_stat(
                    conn, artifact_id, size_bytes=final.size_bytes, fingerprint=recorded
                )
                artifact = artifact.model_copy(
                    update={"size_bytes": final.size_bytes, "fingerprint": recorded}
                )
        return artifact

    def write_in_place(
        self,
        key: str,
        produce: Callable[[str], Artifact],
        decide: Callable[[Artifact], Artifact | None],
    ) -> Artifact:
        """Write a payload straight at its key (object stores: no staging copy), then its row.

        The protocol, under the key's write lock (:meth:`writing`):

        1. refuse a key that overlaps a stored key, before anything is written;
        2. move whatever lies at the key (the row's payload, or a killed writer's leftover) to
           the trash: its commit token goes first, so no reader trusts it half-moved;
        3. ``produce(path)`` writes the payload at the key, seals it (its commit token last)
           and returns the artifact to record;
        4. one write transaction inserts or replaces the row (``decide`` as in :meth:`write`);
        5. after COMMIT the old payload is purged from the trash. If anything failed, what was
           written at the key goes and the old payload comes back.

        A reader of the old row meanwhile finds no token, or another one, at the key: it waits
        for this lock (:meth:`settle`), then reads the new row, or, if the writer was killed,
        moves the old payload back from the trash. A killed writer of a new key leaves a
        payload without a row: never read, and removed by ``gc`` as an orphan.

        Raises
        ------
        OverlappingKeyError
            If a stored key contains the key or lies inside it.
        """
        index = self.index(create=True)
        assert index is not None
        storage = self.storage
        with self.writing(key):
            with index.read() as conn:
                self._overlap(index, conn, key)
            displaced = storage.take(key)
            try:
                artifact = produce(storage.path(key))
                with index.write_driver() as conn:
                    self._overlap(index, conn, key)
                    _artifact_id, kept = self._record_row(index, conn, artifact, decide)
                    if kept is not None:
                        raise _Kept(kept)
            except BaseException as error:
                storage.purge(storage.take(key))
                if displaced is not None:
                    storage.restore(displaced, key)
                if isinstance(error, _Kept):
                    return error.artifact
                raise
            storage.purge(displaced)
        return artifact

    def delete(self, key: str) -> Artifact | None:
        """Remove the row of ``key``, then its payload; return the row, None if absent."""
        index = self.index()
        if index is None:
            return None
        with self.writing(key), self.transact(index) as (conn, changes):
            artifact = index.remove(conn, key)
            if artifact is None:
                return None
            # Still inside the transaction: a concurrent put of the same key waits for it, so
            # the payload it publishes next cannot be the one removed here.
            changes.add(self.storage.take(key), key)
        return artifact

    def remove_if(
        self,
        key: str,
        artifact_id: int,
        created_at: datetime,
        still: Callable[[Artifact], bool] = lambda artifact: True,
    ) -> Artifact | None:
        """Remove the row of ``key`` and its payload if the row is still the one that was seen.

        Returns the removed artifact, or None when the row is gone, was replaced (another id or
        ``created_at``) or no longer satisfies ``still``.

        Raises
        ------
        InvalidKeyError
            For a row whose key is not a valid key (it is never acted on).
        """
        validate_key(key, store=self.storage.url())
        index = self.index()
        if index is None:
            return None
        with self.writing(key), self.transact(index) as (conn, changes):
            found = index.fetch(conn, key, for_update=True)
            if found is None:
                return None
            found_id, artifact = found
            if found_id != artifact_id or artifact.created_at != created_at or not still(artifact):
                return None
            index.remove_id(conn, found_id)
            changes.add(self.storage.take(key), key)
        return artifact

    def drop_if_missing(self, key: str) -> bool:
        """Drop the row of ``key`` if its payload is (still) gone; return whether it was."""
        try:
            validate_key(key, store=self.storage.url())
        except InvalidKeyError:
            return False
        index = self.index()
        if index is None:
            return False
        with index.write_driver() as conn:
            found = index.fetch(conn, key, for_update=True)
            if found is None or self.storage.exists(key):
                return False
            index.remove_id(conn, found[0])
        return True

    # -- readers' side of the protocol -------------------------------------------------------------
    def written_in_place(self, artifact: Artifact) -> bool:
        """Whether the row's payload is a directory written in place (object stores).

        Such a tree is published file by file, then sealed by its commit token: a reader checks
        the token before opening any file of it, not only after the load.
        """
        return not self.storage.is_local and sealed_by_token(
            split_fingerprint(artifact.fingerprint)[1]
        )

    def payload_matches(self, artifact: Artifact, *, repair: bool = False) -> bool:
        """Whether the payload at the artifact's key is the one its row describes.

        One ``lstat`` or one ``HEAD`` (:meth:`PayloadStorage.identity`) when the row records
        an identity and it matches. Otherwise (a row written before identities were recorded,
        a payload restored by a copy, a store copied elsewhere) the walk fingerprint decides;
        with ``repair`` a matching payload's identity is then recorded in the row, so the next
        read is O(1) again.
        """
        walk, identity = split_fingerprint(artifact.fingerprint)
        if walk is None:
            return True
        storage = self.storage
        path = storage.path(artifact.key)
        if identity is not None:
            try:
                if storage.identity(path, identity) == identity:
                    return True
            except (FileNotFoundError, NotADirectoryError):
                return False
        try:
            current = storage.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if current.fingerprint != walk:
            return False
        if repair and not self.readonly:
            self._record_identity(artifact, current)
        return True

    def _record_identity(self, artifact: Artifact, checked: PayloadStat) -> None:
        """Record the identity of a payload whose walk fingerprint matches its row (best effort).

        In one write transaction: the row must still be the one checked, and the payload must
        keep one identity across a fresh walk that still matches.
        """
        index = self.index()
        if index is None:
            return
        storage = self.storage
        path = storage.path(artifact.key)
        try:
            with index.write_driver() as conn:
                found = index.fetch(conn, artifact.key, for_update=True)
                if found is None or found[1] != artifact:
                    return
                before = storage.identity(path)
                walk = storage.stat(path)
                if walk.fingerprint != checked.fingerprint or storage.identity(path) != before:
                    return
                index.update_stat(
                    conn,
                    found[0],
                    size_bytes=walk.size_bytes,
                    fingerprint=join_fingerprint(walk.fingerprint, before),
                )
        except (OSError, sa_exc.OperationalError):
            return  # a busy index or a vanished payload: the next read tries again

    def settle(self, key: str) -> None:
        """Wait out a writer publishing ``key``; put back a payload a killed writer moved away.

        Runs under the key's write lock (object stores) and in a write transaction, so it
        starts once a concurrent put or delete of the key has committed or rolled back (or its
        process died). If the row still does not match the payload at the key, a writer was
        killed between moving the old payload away and committing: the payload the row
        describes is found by its walk fingerprint in that writer's staging entry or the trash
        and moved back.
        """
        index = self.index()
        if index is None:
            return
        if self.readonly:  # neither takes write locks nor repairs: only waits, if it can
            self._wait_for_writer(key)
            return
        with self.writing(key), index.write_driver() as conn:
            found = index.fetch(conn, key, for_update=True)
            if found is None:
                return
            artifact = found[1]
            if artifact.fingerprint is None or self.payload_matches(artifact):
                return
            displaced = self.storage.find_displaced(key, artifact.fingerprint)
            if displaced is not None:
                self.storage.restore(displaced, key)

    def _wait_for_writer(self, key: str) -> None:
        if self.storage.is_local:
            return
        try:
            with self.writing(key):
                pass
        except (OSError, LockTimeoutError, sa_exc.OperationalError):
            return  # e.g. no permission to create the lock file: nothing to wait on

    def displaced(self, artifact: Artifact) -> str | None:
        """Where the payload of ``artifact`` lies, moved away from its key by a killed writer."""
        if artifact.fingerprint is None or self.payload_matches(artifact):
            return None
        return self.storage.find_displaced(artifact.key, artifact.fingerprint)

    def describe(self) -> dict[str, Any]:
        """Where the store's parts are (for messages and ``repr``)."""
        return {"root": self.storage.url(), "index": redact_url(self.database_url)}


def _local_hidden_dir(storage: PayloadStorage) -> Path | None:
    return Path(storage.root) / HIDDEN_DIR if storage.is_local else None
