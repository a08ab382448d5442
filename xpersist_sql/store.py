"""The :class:`CacheStore`: payloads on fsspec, metadata in a SQL index."""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from pydantic_core import to_jsonable_python
from sqlalchemy import Engine

from ._version import __version__
from .db.access import AccessLog
from .db.engine import create_index_engine, redact_url
from .db.index import ArtifactIndex
from .db.schema import ensure_schema
from .errors import (
    ArtifactNotFoundError,
    CollisionError,
    DuplicateKeyError,
    MissingDependencyError,
    PayloadLoadError,
    PayloadMissingError,
    ReadonlyStoreError,
)
from .lifecycle import SizeGuard, parse_size
from .locks import KeyLock, key_lock
from .models import Artifact, DuplicateKeyEnum
from .query import MetadataValue, TimeBound, artifacts_to_frame, fetch_artifacts, parse_query
from .serializers import Serializer, get_serializer, pick_serializer
from .storage import HIDDEN_DIR, PayloadStorage, validate_key

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DATABASE_URL_ENV", "CacheStore"]

DATABASE_URL_ENV = "XPERSIST_SQL_DATABASE_URL"
INDEX_FILENAME = "index.sqlite"

TTL = timedelta | int | float
_MAX_SETTLE_ROUNDS = 20


def _default_path() -> str:
    return os.path.join(tempfile.gettempdir(), "xpersist_sql")


def _as_timedelta(ttl: TTL | None, what: str = "ttl") -> timedelta | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (timedelta, int, float)):
        raise TypeError(f"{what} must be a timedelta or a number of seconds, got {ttl!r}")
    delta = ttl if isinstance(ttl, timedelta) else timedelta(seconds=ttl)
    if delta <= timedelta(0):
        raise ValueError(f"{what} must be positive, got {ttl!r}")
    return delta


def _jsonable(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict, got {type(value).__name__}")
    result: dict[str, Any] = to_jsonable_python(dict(value), fallback=repr)
    return result


class CacheStore:
    """A cache of payloads in an fsspec directory, indexed by a SQL database.

    Parameters
    ----------
    path : str, optional
        Root directory of the payloads: a local path or an fsspec URL (``s3://bucket/prefix``).
        Defaults to ``<tempdir>/xpersist_sql``.
    database_url : str, optional
        SQLAlchemy URL of the index. Defaults to ``$XPERSIST_SQL_DATABASE_URL`` or, for a local
        path, a SQLite file in the store's hidden ``.xpersist_sql`` directory. Required for a
        remote path.
    readonly : bool
        Refuse every write (``put``, ``delete``, ...) with :class:`ReadonlyStoreError`.
    on_duplicate_key : DuplicateKeyEnum or str
        What ``put`` does with a key that exists: ``"skip"`` (default), ``"overwrite"``,
        ``"check_collision"`` or ``"raise_error"``.
    storage_options : dict, optional
        Options of the fsspec filesystem (credentials, ``endpoint_url``...).
    checksum : bool
        Compute a sha256 of every payload on ``put`` (off by default: hashing a large dataset
        costs a full read).
    default_ttl : timedelta or float, optional
        Expiry applied to every ``put`` that gives no ``ttl``.
    max_size : int or str, optional
        Bound on the payloads' total size (bytes, or ``"50GB"``, ``"500MiB"``): a ``put`` that
        takes the store over it evicts least-recently-used artifacts down to 90 % of it.

    Examples
    --------
    >>> import tempfile
    >>> store = CacheStore(f"{tempfile.mkdtemp()}/my-cache")
    >>> artifact = store.put("answer.json", {"answer": 42}, serializer="json")
    >>> store.get("answer.json")
    {'answer': 42}
    >>> store.keys()
    ['answer.json']
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        database_url: str | None = None,
        readonly: bool = False,
        on_duplicate_key: DuplicateKeyEnum | str = DuplicateKeyEnum.skip,
        storage_options: dict[str, Any] | None = None,
        checksum: bool = False,
        default_ttl: TTL | None = None,
        max_size: int | str | None = None,
    ) -> None:
        raw = _default_path() if path is None else os.fspath(path)
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self._storage = PayloadStorage(raw, self.storage_options)
        if self._storage.is_local:
            raw = os.path.abspath(os.path.expanduser(raw))
            self._storage = PayloadStorage(raw, self.storage_options)
        self.path: str = raw.rstrip("/") or "/"
        self.readonly = bool(readonly)
        self.on_duplicate_key = DuplicateKeyEnum(on_duplicate_key)
        self.checksum = bool(checksum)
        self.default_ttl = _as_timedelta(default_ttl, "default_ttl")
        self.max_size: int | None = None if max_size is None else parse_size(max_size)
        self._size_guard = None if self.max_size is None else SizeGuard(self.max_size)
        self._access = AccessLog()
        self._explicit_database_url = database_url
        self.database_url: str = self._resolve_database_url(database_url)
        if self._storage.is_local and not self.readonly:
            os.makedirs(self._storage.root, exist_ok=True)
        self._engine: Engine | None = None
        self._engine_pid: int | None = None
        self._index_cache: ArtifactIndex | None = None
        self._engine_lock = threading.Lock()

    # -- configuration ---------------------------------------------------------------------------
    def _resolve_database_url(self, database_url: str | None) -> str:
        url = database_url or os.environ.get(DATABASE_URL_ENV)
        if url:
            return url
        if not self._storage.is_local:
            raise ValueError(
                f"the store {self.path!r} is not on the local filesystem, so its index cannot be "
                "an embedded SQLite file inside it; pass database_url= (e.g. "
                "'postgresql+psycopg://user@host/db', or 'sqlite:////path/index.sqlite' for one "
                f"machine) or set ${DATABASE_URL_ENV}"
            )
        return f"sqlite:///{os.path.join(self._storage.root, HIDDEN_DIR, INDEX_FILENAME)}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self.path!r}, readonly={self.readonly!r}, "
            f"on_duplicate_key={self.on_duplicate_key!r}, "
            f"storage_options={self.storage_options!r}, "
            f"database_url={redact_url(self.database_url)!r}"
            + ("" if self.max_size is None else f", max_size={self.max_size!r}")
            + ")"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "database_url": self._explicit_database_url or self.database_url,
            "readonly": self.readonly,
            "on_duplicate_key": self.on_duplicate_key,
            "storage_options": self.storage_options,
            "checksum": self.checksum,
            "default_ttl": self.default_ttl,
            "max_size": self.max_size,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.pop("path"), **state)  # type: ignore[misc]

    # -- engine ----------------------------------------------------------------------------------
    @property
    def _index(self) -> ArtifactIndex:
        """The index, created on first use and again in a forked child process."""
        pid = os.getpid()
        if self._index_cache is not None and self._engine_pid == pid:
            return self._index_cache
        with self._engine_lock:
            if self._engine is not None and self._engine_pid != pid:
                # Never close the parent's connections from the child: drop them.
                self._engine.dispose(close=False)
                self._engine = None
            if self._engine is None:
                engine = create_index_engine(self.database_url)
                try:
                    ensure_schema(engine, store=self.path, readonly=self.readonly)
                except BaseException:
                    engine.dispose()
                    raise
                self._engine = engine
                self._engine_pid = pid
                self._index_cache = ArtifactIndex(engine)
            assert self._index_cache is not None
            return self._index_cache

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine of the index (schema checked)."""
        return self._index.engine

    def close(self) -> None:
        """Dispose of the index's connections (the store reopens them when used again)."""
        self._flush_accesses()
        with self._engine_lock:
            if self._engine is not None and self._engine_pid == os.getpid():
                self._engine.dispose()
            self._engine = None
            self._index_cache = None

    def _flush_accesses(self) -> None:
        """Write the last-access times this process has not recorded yet."""
        if self._access.pending and self._engine is not None and self._engine_pid == os.getpid():
            self._access.flush(self._engine)

    # -- helpers ---------------------------------------------------------------------------------
    def _check_writable(self, action: str, key: str) -> None:
        if self.readonly:
            raise ReadonlyStoreError(
                f"cannot {action} key {key!r}: the store {self.path!r} is readonly; open it with "
                "CacheStore(..., readonly=False) to write"
            )

    def _not_found(self, key: str, artifact: Artifact | None = None) -> ArtifactNotFoundError:
        if artifact is not None and artifact.expires_at is not None:
            reason = f"it expired at {artifact.expires_at.isoformat()}"
        else:
            reason = "no artifact has that key"
        return ArtifactNotFoundError(
            f"key {key!r} not found in store {self.path!r}: {reason}. List the stored keys "
            "with store.keys() or `xpersist-sql ls`"
        )

    def payload_url(self, key: str) -> str:
        """Return the path or URL of the payload of ``key``, openable without xpersist_sql.

        Examples
        --------
        >>> store.payload_url("bar.zarr")  # doctest: +SKIP
        '/tmp/my-cache/bar.zarr'
        """
        return self._storage.url(validate_key(key, store=self.path))

    def _versions(self, serializer: Serializer) -> dict[str, str]:
        return {
            "xpersist_sql": __version__,
            "python": platform.python_version(),
            **serializer.versions(),
        }

    # -- public API ------------------------------------------------------------------------------
    def put(
        self,
        key: str,
        value: Any,
        serializer: str = "auto",
        dump_kwargs: dict[str, Any] | None = None,
        load_kwargs: dict[str, Any] | None = None,
        additional_metadata: dict[str, Any] | None = None,
        ttl: TTL | None = None,
        *,
        checksum: bool | None = None,
    ) -> Artifact:
        """Write ``value`` under ``key`` and record it in the index.

        The payload is written to a staging directory inside the store, moved to
        ``<path>/<key>`` and only then is its row committed, so readers never see a half-written
        payload. What happens when ``key`` exists follows ``on_duplicate_key``, decided by the
        database's unique key constraint.

        Parameters
        ----------
        key : str
            Relative path of the payload inside the store, e.g. ``"bar.zarr"``.
        value : Any
            The object to store.
        serializer : str
            A registered serializer name, or ``"auto"`` to pick one by type.
        dump_kwargs, load_kwargs : dict, optional
            Keyword arguments for the serializer's dump now and its load later.
        additional_metadata : dict, optional
            JSON-able metadata; ``flow_name``, ``task_name``, ``flow_run_id``, ``task_run_id``
            and ``task_tags`` fill the indexed query columns.
        ttl : timedelta or float, optional
            Time to live (seconds); the artifact counts as absent after it.
        checksum : bool, optional
            Compute a sha256 of the payload (default: the store's ``checksum``).

        Returns
        -------
        Artifact
            The stored artifact (the existing one when a duplicate is skipped).

        Raises
        ------
        ReadonlyStoreError, InvalidKeyError, SerializerNotFoundError, DuplicateKeyError,
        CollisionError, MissingDependencyError
        """
        self._check_writable("put", key)
        key = validate_key(key, store=self.path)
        name = pick_serializer(value) if serializer == "auto" else serializer
        ser = get_serializer(name)
        ser.check_requirements()
        delta = _as_timedelta(ttl) or self.default_ttl
        policy = self.on_duplicate_key
        index = self._index

        if policy in (DuplicateKeyEnum.skip, DuplicateKeyEnum.raise_error):
            # Cheap early answer; the database still decides atomically below.
            existing = index.get(key)
            if existing is not None and not existing.is_expired():
                return self._on_existing(key, existing, None, policy)

        now = datetime.now(timezone.utc)
        storage = self._storage
        staged = storage.staging_path(key)
        trash: str | None = None
        committed = False
        try:
            hints = ser.dump(value, storage.fs, staged, **(dump_kwargs or {}))
            stat = storage.stat(staged)
            want_checksum = self.checksum if checksum is None else checksum
            digest = (
                storage.checksum(staged)
                if want_checksum or policy is DuplicateKeyEnum.check_collision
                else None
            )
            artifact = Artifact(
                key=key,
                serializer=name,
                load_kwargs={
                    **_jsonable(hints, "load hints"),
                    **_jsonable(load_kwargs, "load_kwargs"),
                },
                dump_kwargs=_jsonable(dump_kwargs, "dump_kwargs"),
                additional_metadata=_jsonable(additional_metadata, "additional_metadata"),
                created_at=now,
                size_bytes=stat.size_bytes,
                checksum=digest,
                fingerprint=stat.fingerprint,
                expires_at=now + delta if delta else None,
                versions=self._versions(ser),
            )
            with index.write() as conn:
                artifact_id = index.insert_if_absent(conn, artifact)
                while artifact_id is None:
                    found = index.fetch(conn, key, for_update=True)
                    if found is None:
                        # PostgreSQL: a concurrent delete committed between our conflicting
                        # insert and this read; the key is free again, insert once more.
                        artifact_id = index.insert_if_absent(conn, artifact)
                        continue
                    artifact_id, existing = found
                    if policy is not DuplicateKeyEnum.overwrite and not existing.is_expired():
                        return self._on_existing(key, existing, digest, policy)
                    index.replace(conn, artifact_id, artifact)
                trash = storage.publish(staged, key)
                if not storage.is_local:
                    # object stores copy on move: fingerprint what now lies at the key
                    final = storage.stat(storage.path(key))
                    index.update_stat(
                        conn,
                        artifact_id,
                        size_bytes=final.size_bytes,
                        fingerprint=final.fingerprint,
                    )
                    artifact = artifact.model_copy(
                        update={"size_bytes": final.size_bytes, "fingerprint": final.fingerprint}
                    )
            committed = True
        finally:
            if trash is not None:
                if committed:
                    storage.purge(trash)
                else:
                    storage.restore(trash, key)
            storage.discard_staging(staged)
        if self._size_guard is not None:
            self._size_guard.after_put(self, artifact)
        return artifact

    def _on_existing(
        self, key: str, existing: Artifact, digest: str | None, policy: DuplicateKeyEnum
    ) -> Artifact:
        if policy is DuplicateKeyEnum.raise_error:
            raise DuplicateKeyError(
                f"key {key!r} already exists in store {self.path!r} (created "
                f"{existing.created_at.isoformat()}); delete it first, choose another key, or "
                "open the store with on_duplicate_key='overwrite' or 'skip'"
            )
        if policy is DuplicateKeyEnum.check_collision:
            stored = existing.checksum
            if stored is None and self._storage.exists(key):
                stored = self._storage.checksum(self._storage.path(key))
            if stored != digest:
                raise CollisionError(
                    f"key {key!r} already exists in store {self.path!r} with different content "
                    f"({stored} != {digest}); use another key, delete the stored artifact, or "
                    "open the store with on_duplicate_key='overwrite'"
                )
        return existing

    def get_artifact(self, key: str) -> Artifact:
        """Return the metadata of ``key``.

        Raises
        ------
        ArtifactNotFoundError
            If no unexpired artifact has that key.
        """
        key = validate_key(key, store=self.path)
        artifact = self._index.get(key)
        if artifact is None or artifact.is_expired():
            raise self._not_found(key, artifact)
        return artifact

    def get(
        self,
        key: str,
        serializer: str | None = None,
        load_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Load the value stored under ``key`` (lazily for zarr and netCDF).

        Parameters
        ----------
        key : str
            The key given to :meth:`put`.
        serializer : str, optional
            Read with another serializer than the one that wrote the payload.
        load_kwargs : dict, optional
            Merged over the ``load_kwargs`` recorded at put time.

        Raises
        ------
        ArtifactNotFoundError
            No unexpired artifact under ``key``.
        PayloadMissingError
            The row exists but the payload was removed behind the index's back.
        PayloadLoadError
            The serializer could not read the payload (the message compares library versions).
        """
        key = validate_key(key, store=self.path)
        settled_for: Artifact | None = None  # the row last waited out / repaired
        rounds = 0
        while True:
            artifact = self.get_artifact(key)
            # Give up only when settling changed nothing: the same row still lacks its payload.
            # A different row means other writers are making progress: wait them out again.
            settled = artifact == settled_for or rounds >= _MAX_SETTLE_ROUNDS
            ser = get_serializer(serializer or artifact.serializer)
            ser.check_requirements()
            if self._storage.exists(key):
                try:
                    value = self._load(artifact, ser, load_kwargs)
                except PayloadLoadError:
                    if settled:
                        raise
                else:
                    # The payload opened is the row's (not one a concurrent or killed writer
                    # swapped in): its fingerprint still matches after the load.
                    if settled or self._payload_matches(artifact):
                        return value
            elif settled:
                raise PayloadMissingError(
                    f"key {key!r} is in the index of store {self.path!r} but its payload "
                    f"{self._storage.url(key)} is gone (deleted behind the index's back?); "
                    f"remove the row with store.delete({key!r}) or `xpersist-sql verify --repair`"
                    " and compute the value again"
                )
            self._settle(key)
            settled_for = artifact
            rounds += 1

    def _payload_matches(self, artifact: Artifact) -> bool:
        """Whether the payload at the artifact's key is the one its row describes."""
        if artifact.fingerprint is None:
            return True
        try:
            current = self._storage.stat(self._storage.path(artifact.key))
        except FileNotFoundError:
            return False
        return current.fingerprint == artifact.fingerprint

    def _settle(self, key: str) -> None:
        """Wait out a writer publishing ``key``; put back a payload a killed writer moved away.

        Runs in a write transaction, so it starts once a concurrent put or delete of the key has
        committed or rolled back (or its process died). If the row still does not match the
        payload at the key, a writer was killed between moving the old payload away and
        committing: the payload the row describes is found by fingerprint in that writer's
        staging directory or the trash and moved back.
        """
        if self.readonly:
            return  # a readonly store neither takes write locks nor repairs
        index = self._index
        with index.write() as conn:
            found = index.fetch(conn, key, for_update=True)
            if found is None:
                return
            artifact = found[1]
            if artifact.fingerprint is None or self._payload_matches(artifact):
                return
            displaced = self._storage.find_displaced(key, artifact.fingerprint)
            if displaced is not None:
                self._storage.restore(displaced, key)

    def _load(self, artifact: Artifact, ser: Serializer, load_kwargs: dict[str, Any] | None) -> Any:
        if not self.readonly:  # batched and throttled, for LRU eviction (see db/access.py)
            self._access.record(artifact.key, lambda: self._index.engine)
        kwargs = {**artifact.load_kwargs, **(load_kwargs or {})}
        try:
            return ser.load(self._storage.fs, self._storage.path(artifact.key), **kwargs)
        except MissingDependencyError:
            raise
        except Exception as exc:
            current = self._versions(ser)
            changed = {
                name: f"{version} -> {current.get(name, 'not installed')}"
                for name, version in artifact.versions.items()
                if current.get(name) != version
            }
            why = (
                f"it was written with other library versions ({changed})"
                if changed
                else "the library versions are the ones that wrote it"
            )
            raise PayloadLoadError(
                f"could not load key {artifact.key!r} from store {self.path!r} with serializer "
                f"{ser.name!r}: {type(exc).__name__}: {exc}. Note: {why}. Recompute it (put with "
                "on_duplicate_key='overwrite') or load it in an environment with those versions"
            ) from exc

    def keys(self) -> list[str]:
        """Return the keys of the stored (unexpired) artifacts, sorted."""
        return self._index.keys()

    def query(
        self,
        *,
        key: str | None = None,
        flow_name: str | None = None,
        task_name: str | None = None,
        flow_run_id: str | None = None,
        task_run_id: str | None = None,
        serializer: str | None = None,
        tags: str | Iterable[str] | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        since: TimeBound | None = None,
        until: TimeBound | None = None,
        limit: int | None = None,
        order: str = "newest",
        include_expired: bool = False,
    ) -> list[Artifact]:
        """Find artifacts by what produced them, when, and how; answered by the index.

        Filters combine with AND; leaving them all out lists every artifact.

        Parameters
        ----------
        key : str, optional
            Glob on the key: ``*`` matches any characters (``/`` included), ``?`` one.
        flow_name, task_name, flow_run_id, task_run_id : str, optional
            The Prefect context recorded with the artifact (or the same names given in a plain
            ``put``'s ``additional_metadata``).
        serializer : str, optional
            Name of the serializer that wrote the payload.
        tags : list of str, optional
            The artifact has all of these tags (its ``task_tags``/``tags`` metadata).
        metadata : dict, optional
            ``additional_metadata[name] == value`` for every item; values are JSON scalars.
        since, until : datetime, date, str or timedelta, optional
            ``since <= created_at < until``. A datetime (naive means UTC), a date, an ISO-8601
            string, or a timedelta / duration string (``"7d"``, ``"12h"``) meaning that long ago.
        limit : int, optional
            Return at most this many artifacts.
        order : {"newest", "oldest"}
            Newest first (default) or oldest first by ``created_at``.
        include_expired : bool
            Also return artifacts whose ttl has passed.

        Returns
        -------
        list of Artifact

        Raises
        ------
        TypeError, ValueError
            A filter of the wrong type or an unusable value (an unparseable date, a negative
            limit...), or an unknown keyword.

        Examples
        --------
        >>> store.query(flow_name="my-flow", since="2021-12-16")  # doctest: +SKIP
        >>> store.query(tags=["nightly"], since=timedelta(days=7), limit=10)  # doctest: +SKIP
        """
        spec = parse_query(
            key=key,
            flow_name=flow_name,
            task_name=task_name,
            flow_run_id=flow_run_id,
            task_run_id=task_run_id,
            serializer=serializer,
            tags=tags,
            metadata=metadata,
            since=since,
            until=until,
            limit=limit,
            order=order,
            include_expired=include_expired,
        )
        with self._index.read() as conn:
            return fetch_artifacts(conn, spec)

    def query_df(self, **filters: Any) -> pd.DataFrame:
        """Return :meth:`query`'s artifacts as a pandas DataFrame, one row per artifact.

        Takes the same keyword filters as :meth:`query`. The columns are the
        :class:`Artifact` fields plus ``flow_name``, ``task_name``, ``flow_run_id`` and
        ``task_run_id`` from ``additional_metadata``.

        Examples
        --------
        >>> store.query_df(flow_name="my-flow")[["key", "created_at"]]  # doctest: +SKIP
        """
        return artifacts_to_frame(self.query(**filters))

    def delete(self, key: str, dry_run: bool = False) -> Artifact:
        """Remove the artifact's row, then its payload.

        Parameters
        ----------
        key : str
            The key to delete.
        dry_run : bool
            Only return what would be deleted.

        Returns
        -------
        Artifact
            The deleted (or, with ``dry_run``, the would-be deleted) artifact.
        """
        key = validate_key(key, store=self.path)
        if dry_run:
            found = self._index.get(key)
            if found is None:
                raise self._not_found(key)
            return found
        self._check_writable("delete", key)
        index = self._index
        with index.write() as conn:
            artifact = index.remove(conn, key)
            if artifact is None:
                raise self._not_found(key)
            # Still inside the transaction: a concurrent put of the same key waits for it, so
            # the payload it publishes next cannot be the one removed here.
            trash = self._storage.move_to_trash(key)
        self._storage.purge(trash)
        return artifact

    # -- locks ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, key: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the lock on ``key``, shared by every process and machine using this index.

        Workers that need the same missing value compute it once: the first to take the lock
        computes and puts it, the others wait and then read it. The lock is a PostgreSQL
        advisory lock, or for a SQLite index a file lock in a ``locks/`` directory next to the
        SQLite file; it is released when the block exits, or when the holder's process dies.

        Parameters
        ----------
        key : str
            The key to lock (it need not be stored).
        timeout : float, optional
            Seconds to wait for the lock: ``None`` (default) waits as long as it takes, ``0``
            does not wait.

        Raises
        ------
        LockTimeoutError
            If another worker still holds the lock after ``timeout`` seconds.

        Examples
        --------
        >>> with store.lock("ds.zarr"):  # doctest: +SKIP
        ...     if "ds.zarr" not in store:
        ...         store.put("ds.zarr", compute())
        ...     ds = store.get("ds.zarr")
        """
        held = self.key_lock(validate_key(key, store=self.path))
        held.acquire(timeout)
        try:
            yield
        finally:
            held.release()

    def key_lock(self, key: str) -> KeyLock:
        """Return an unacquired :class:`~xpersist_sql.locks.KeyLock` on any string ``key``.

        The building block of :meth:`lock` for callers that acquire and release in different
        places (the Prefect lock manager); the key is not validated as a path.
        """
        return key_lock(self.engine, key, store=self.path)

    # -- mapping protocol ------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: str) -> None:
        self.delete(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        return self._index.contains(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return self._index.count()
