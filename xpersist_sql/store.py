"""The :class:`CacheStore`: payloads on fsspec, metadata in a SQL index."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import platform
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import platformdirs
from sqlalchemy import Engine

from ._version import __version__
from .backend import StoreBackend
from .db.engine import DATABASE_URL_ENV, check_database_url, redact_options, redact_url
from .db.index import ArtifactIndex
from .db.lineage import LineageWalk, all_edges, artifacts_by_id
from .db.lineage import walk as lineage_walk
from .db.locks import KeyLock, key_lock
from .db.schema import INDEX_FILENAME
from .errors import (
    ArtifactNotFoundError,
    CollisionError,
    DuplicateKeyError,
    MissingDependencyError,
    PayloadChangedError,
    PayloadLoadError,
    PayloadMissingError,
    ReadonlyStoreError,
    SerializationError,
    XpersistSQLError,
)
from .explain import Explanation
from .explain import explain as _explain
from .legacy import LegacyImportReport, import_legacy_into
from .lineage import DERIVED_FROM, DIRECTIONS, GRAPH_FORMATS, parent_record, to_graph
from .maintenance import evict as _evict
from .maintenance import gc as _gc
from .maintenance import verify as _verify
from .metadata import INT64_MAX, check_json_value, json_metadata
from .models import Artifact, DuplicateKeyEnum
from .provenance import ArtifactIdentity, record_loaded
from .query import (
    ArtifactQuery,
    MetadataValue,
    SummaryRow,
    TimeBound,
    artifacts_to_frame,
    parse_query,
    parse_time,
)
from .serializers import Serializer, get_serializer, pick_serializer
from .storage import HIDDEN_DIR, PayloadStorage, validate_key
from .trust import check_accepted, check_trusted, trusted_names, verify_payload, wrote
from .units import parse_duration, parse_size, parse_ttl

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DATABASE_URL_ENV", "STORE_ENV", "CacheStore", "import_legacy"]

TTL = timedelta | int | float | str
Progress = _gc.Progress
_MAX_SETTLE_ROUNDS = 20
#: Library versions recorded with each artifact, by serializer (see ``CacheStore._versions``).
_VERSIONS: dict[tuple[type, str], dict[str, str]] = {}
_log = logging.getLogger("xpersist_sql")

#: The longest ttl: about 1000 years (every expiry date then fits every index database).
MAX_TTL = timedelta(days=365_000)
_TTL_RANGE = (
    f"a ttl is a duration greater than 0 and at most {MAX_TTL.days} days (about 1000 years): "
    "a timedelta, seconds or a string such as '12h' or '7d'; pass None for no expiry"
)
#: A limit above this many rows is no limit.
_NO_LIMIT_BEYOND = 2**31 - 1
_YEAR_ONE = datetime(1, 1, 1, tzinfo=timezone.utc)
#: What a serializer raises for a value it cannot write (the rest propagates as it is).
_UNWRITABLE = (TypeError, ValueError, AttributeError, pickle.PicklingError)


#: The environment variable naming the default store path (``CacheStore()``, the CLI).
STORE_ENV = "XPERSIST_SQL_STORE"


def _default_path() -> str:
    return os.environ.get(STORE_ENV) or platformdirs.user_cache_dir("xpersist_sql")


def _as_timedelta(ttl: TTL | None, where: str, what: str = "ttl") -> timedelta | None:
    """Read a ttl, refusing what is not a duration in ``(0, MAX_TTL]`` (``where`` prefixes)."""
    try:
        delta = parse_ttl(ttl)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}invalid {what}={ttl!r}: {exc}; {_TTL_RANGE}") from None
    if delta is not None and delta > MAX_TTL:
        raise ValueError(f"{where}{what}={ttl!r} is out of range: {_TTL_RANGE}")
    return delta


def _policy(value: DuplicateKeyEnum | str, where: str) -> DuplicateKeyEnum:
    try:
        return DuplicateKeyEnum(value)
    except ValueError as exc:
        raise ValueError(f"{where}{exc}") from None


def _time_bound(name: str, value: TimeBound, now: datetime) -> datetime:
    """``parse_time``, whose refusal of a duration reaching before the year 1 gives the range."""
    try:
        return parse_time(value, name=name, now=now)
    except ValueError:
        delta: timedelta | None = value if isinstance(value, timedelta) else None
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                delta = parse_duration(value.strip())
        longest = now - _YEAR_ONE
        if delta is not None and delta > longest:
            raise ValueError(
                f"{name}={value!r} is out of range: a duration means that long ago, at most "
                f"{longest.days} days (back to the year 1); pass a shorter duration or a date"
            ) from None
        raise


def _query_spec(filters: dict[str, Any]) -> ArtifactQuery:
    """Check the ranges of the query filters, then parse them (see :func:`parse_query`)."""
    limit = filters.get("limit")
    if isinstance(limit, int) and not isinstance(limit, bool) and not 0 <= limit <= INT64_MAX:
        raise ValueError(
            f"limit={limit} is out of range: limit must be >= 0 and <= {INT64_MAX} "
            "(2**63 - 1), or None for no limit"
        )
    if isinstance(limit, int) and limit > _NO_LIMIT_BEYOND:
        # more rows than any index holds (PostgreSQL binds LIMIT as a 32-bit integer)
        filters["limit"] = None
    metadata = filters.get("metadata")
    if isinstance(metadata, Mapping):
        # compared with recorded metadata, so converted as put converts it
        filters["metadata"] = {
            name: check_json_value(item, f"metadata[{name!r}]", "query: ")
            for name, item in metadata.items()
        }
    if filters.get("now") is None:
        now = filters["now"] = datetime.now(timezone.utc)
        for name in ("since", "until"):
            if filters.get(name) is not None:
                filters[name] = _time_bound(name, filters[name], now)
    return parse_query(**filters)


def _type_name(value: Any) -> str:
    kind = type(value)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


class CacheStore:
    """A cache of payloads in an fsspec directory, indexed by a SQL database.

    Datasets (:class:`xarray.Dataset`, :class:`xarray.DataArray`) are stored as zarr or netCDF
    and loaded lazily (:func:`xarray.open_zarr`), data frames (:class:`pandas.DataFrame`) as
    parquet or CSV, arrays (:class:`numpy.ndarray`) as ``.npy``: see
    :func:`available_serializers`.

    Parameters
    ----------
    path : str, optional
        Root directory of the payloads: a local path or an fsspec URL (``s3://bucket/prefix``).
        Defaults to ``$XPERSIST_SQL_STORE``, else ``<user cache dir>/xpersist_sql``
        (platformdirs: ``~/.cache/xpersist_sql`` on Linux).
    database_url : str, optional
        SQLAlchemy URL of the index (as :func:`sqlalchemy.create_engine` takes it, e.g.
        ``postgresql+psycopg://user@host/db``). Defaults to ``$XPERSIST_SQL_DATABASE_URL``
        or, for a local path, a SQLite file in the store's hidden ``.xpersist_sql`` directory.
        Required for a remote path.
    readonly : bool
        Refuse every write (``put``, ``delete``, ...) with :class:`ReadonlyStoreError`; the
        index is opened read-only and nothing is ever written (a directory the process cannot
        write is fine). The path must hold a store (:class:`StoreNotFoundError` otherwise).
    on_duplicate_key : DuplicateKeyEnum or str
        What ``put`` does with a key that exists: ``"skip"`` (default), ``"overwrite"``,
        ``"check_collision"`` or ``"raise_error"``.
    storage_options : dict, optional
        Options of the fsspec filesystem (:class:`fsspec.spec.AbstractFileSystem`: credentials,
        ``endpoint_url``...).
    checksum : bool
        Compute a sha256 of every payload on ``put``, and check it on every ``get`` (off by
        default: hashing a large dataset costs a full read).
    trusted_serializers : list of str, optional
        Serializers whose loads run code (``pickle``, ``joblib``; ``numpy.npy`` for rows with
        ``allow_pickle=True``) that this store loads for any row. Default ``["joblib"]``, the
        format ``serializer="auto"`` writes for plain Python objects; ``[]`` trusts none. A
        row of another such serializer loads only when the caller names its serializer or
        this process wrote it: see :mod:`xpersist_sql.trust`.
    default_ttl : timedelta or float, optional
        Expiry applied to every ``put`` that gives no ``ttl``.
    max_size : int or str, optional
        Bound on the payloads' total size (bytes, or ``"50GB"``, ``"500MiB"``): a ``put`` that
        takes the store over it evicts least-recently-used artifacts down to 90 % of it.
    create : bool
        Whether the first write may make ``path`` a store (writing its marker). With
        ``create=False`` a path that is not a store raises :class:`StoreNotFoundError` here.

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
        create: bool = True,
        trusted_serializers: Iterable[str] | None = None,
    ) -> None:
        raw = _default_path() if path is None else os.fspath(path)
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self._storage = PayloadStorage(raw, self.storage_options)
        if self._storage.is_local:
            raw = os.path.abspath(os.path.expanduser(raw))
        self.path: str = raw.rstrip("/") or "/"
        self.readonly = bool(readonly)
        self.create = bool(create) and not self.readonly
        where = f"CacheStore({self.path!r}): "
        self.on_duplicate_key = _policy(on_duplicate_key, where)
        self.checksum = bool(checksum)
        self.trusted_serializers: frozenset[str] = trusted_names(trusted_serializers, where)
        self.default_ttl = _as_timedelta(default_ttl, where, "default_ttl")
        self.max_size: int | None = None if max_size is None else parse_size(max_size)
        self._size_guard = None if self.max_size is None else _evict.SizeGuard(self.max_size)
        self._explicit_database_url = database_url
        self.database_url: str = self._resolve_database_url(database_url)
        self._backend = StoreBackend(
            self._storage,
            self.database_url,
            readonly=self.readonly,
            storage_options=self.storage_options,
        )
        if not self.create:
            self._backend.require_store()

    # -- configuration ---------------------------------------------------------------------------
    def _resolve_database_url(self, database_url: str | None) -> str:
        url = database_url or os.environ.get(DATABASE_URL_ENV)
        if url:
            try:
                parsed = check_database_url(url)
            except ValueError as exc:
                origin = "" if database_url else f" (from ${DATABASE_URL_ENV})"
                raise ValueError(f"cannot open the store {self.path!r}{origin}: {exc}") from None
            if parsed.drivername != url.partition(":")[0]:  # postgres:// -> postgresql+psycopg://
                return parsed.render_as_string(hide_password=False)
            return url
        if not self._storage.is_local:
            raise ValueError(
                f"the store {self.path!r} is not on the local filesystem, so its index cannot be "
                "an embedded SQLite file inside it; pass database_url= (e.g. "
                "'postgresql+psycopg://user@host/db', or 'sqlite:////path/index.sqlite' for one "
                f"machine) or set ${DATABASE_URL_ENV}"
            )
        return f"sqlite:///{os.path.join(self._storage.root, HIDDEN_DIR, INDEX_FILENAME)}"

    def _rows(self, *, create: bool = False) -> ArtifactIndex | None:
        """Return the store's rows in the index (None while the path is not a store)."""
        return self._backend.index(create=create)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self.path!r}, readonly={self.readonly!r}, "
            f"on_duplicate_key={self.on_duplicate_key!r}, "
            f"storage_options={redact_options(self.storage_options)!r}, "
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
            "create": self.create,
            "trusted_serializers": sorted(self.trusted_serializers),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.pop("path"), **state)  # type: ignore[misc]

    # -- engine ----------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine of the index (schema checked)."""
        return self._backend.engine

    def close(self) -> None:
        """Dispose of the index's connections (the store reopens them when used again)."""
        self._backend.close()

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
        # Looking distributions up costs milliseconds: once per serializer and process.
        cache_key = (type(serializer), serializer.name)
        found = _VERSIONS.get(cache_key)
        if found is None:
            found = _VERSIONS[cache_key] = {
                "xpersist_sql": __version__,
                "python": platform.python_version(),
                **serializer.versions(),
            }
        return dict(found)

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
        on_duplicate_key: DuplicateKeyEnum | str | None = None,
        checksum: bool | None = None,
        derived_from: Iterable[str | Artifact | ArtifactIdentity] | None = None,
    ) -> Artifact:
        """Write ``value`` under ``key`` and record it in the index.

        On local disk the payload is written to a staging path inside the store and renamed to
        ``<path>/<key>`` in the transaction that commits its row; on an object store it is
        written at ``<path>/<key>`` under the key's write lock, sealed by a commit token, and
        then its row is committed. Either way readers never see a half-written payload (see
        the write protocol in the design notes). What happens when ``key`` exists follows
        ``on_duplicate_key``, decided by the database's unique key constraint.

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
        ttl : timedelta, float or str, optional
            Time to live (seconds, or ``"7d"``, ``"12h"``...); the artifact counts as absent
            after it.
        on_duplicate_key : DuplicateKeyEnum or str, optional
            The policy for this call (default: the store's ``on_duplicate_key``).
        checksum : bool, optional
            Compute a sha256 of the payload (default: the store's ``checksum``).
        derived_from : iterable, optional
            The stored artifacts ``value`` was computed from (lineage): keys of this store,
            :class:`Artifact` rows of this store, or
            :class:`~xpersist_sql.provenance.ArtifactIdentity` (of any store). Recorded with
            the version each was read as in ``additional_metadata["derived_from"]``, and as
            edges in the index in the same transaction as the row (see :meth:`lineage`).

        Returns
        -------
        Artifact
            The stored artifact (the existing one when a duplicate is skipped).

        Raises
        ------
        ReadonlyStoreError, InvalidKeyError, OverlappingKeyError, UnsafePathError,
        SerializerNotFoundError, DuplicateKeyError, CollisionError, MissingDependencyError
        SerializationError
            The serializer cannot write the value (nothing is left behind).
        ValueError
            An unknown ``on_duplicate_key``, a ``ttl`` out of range, or metadata (in
            ``additional_metadata``, ``load_kwargs`` or ``dump_kwargs``) that would not read
            back as given: integers beyond 64 bits, NaN or infinities, lone surrogates,
            non-string keys, objects that are not JSON (see :mod:`xpersist_sql.metadata` for
            the types converted explicitly).
        """
        self._check_writable("put", key)
        key = validate_key(key, store=self.path)
        where = f"put of key {key!r} in store {self.path!r}: "
        name = pick_serializer(value) if serializer == "auto" else serializer
        ser = get_serializer(name, where=where)
        ser.check_requirements()
        delta = _as_timedelta(ttl, where) or self.default_ttl
        policy = _policy(
            self.on_duplicate_key if on_duplicate_key is None else on_duplicate_key, where
        )
        # everything recorded must read back as it is: checked before any work is done
        metadata = json_metadata(additional_metadata, "additional_metadata", where)
        if derived_from is not None:
            metadata = self._with_parents(metadata, derived_from, where)
        recorded_load = json_metadata(load_kwargs, "load_kwargs", where)
        recorded_dump = json_metadata(dump_kwargs, "dump_kwargs", where)
        storage = self._storage
        # no symlink on the way or at the key, before any work; on local disk the same walk
        # tells whether anything lies at the key (on object stores: assumed, no request)
        _path, present = storage.locate(key)

        rows = self._rows(create=True)  # the first write makes the path a store
        assert rows is not None
        if present and policy in (DuplicateKeyEnum.skip, DuplicateKeyEnum.raise_error):
            # Cheap early answer, skipped where no payload lies at the key (a stored key has
            # one, or lost it behind the index's back); the database still decides atomically
            # below.
            existing = rows.get(key)
            if existing is not None and not existing.is_expired():
                return self._on_existing(key, existing, None, policy)

        now = datetime.now(timezone.utc)
        want_checksum = self.checksum if checksum is None else checksum
        produced: list[Artifact] = []

        def produce(path: str) -> Artifact:
            """Write the payload at ``path``, seal it, and return the artifact describing it."""
            hints = self._dump(key, value, ser, path, dump_kwargs)
            stat = storage.seal(path)
            digest = (
                storage.checksum(path)
                if want_checksum or policy is DuplicateKeyEnum.check_collision
                else None
            )
            artifact = Artifact(
                key=key,
                serializer=name,
                load_kwargs={**json_metadata(hints, "load hints", where), **recorded_load},
                dump_kwargs=recorded_dump,
                additional_metadata=metadata,
                created_at=now,
                size_bytes=stat.size_bytes,
                checksum=digest,
                fingerprint=stat.recorded,
                expires_at=now + delta if delta else None,
                versions=self._versions(ser),
            )
            produced.append(artifact)
            return artifact

        def decide(existing: Artifact) -> Artifact | None:
            if policy is not DuplicateKeyEnum.overwrite and not existing.is_expired():
                return self._on_existing(key, existing, produced[-1].checksum, policy)
            return None

        if storage.is_local or policy is DuplicateKeyEnum.check_collision:
            # staged, then renamed into place (local disk), or copied there once its content
            # was compared with the stored one (check_collision on an object store)
            staged = storage.staging_path(key)
            try:
                stored = self._backend.write(staged, produce(staged), decide)
            except BaseException:
                storage.discard_staging(staged)
                raise
            storage.discard_staging(staged, published=stored is produced[-1])
        else:
            # object stores: written in place, under the key's write lock (see write_in_place)
            stored = self._backend.write_in_place(key, produce, decide)
        if stored.created_at == now:  # written, not skipped
            wrote(self.path, stored)  # this process may load what it wrote (see trust.py)
            if self._size_guard is not None:
                self._size_guard.after_put(self._backend, stored)
        return stored

    def check_writable(self, key: str) -> str:
        """Raise what a put of ``key`` would raise before anything is written; return the key.

        For work that is expensive to redo, ahead of computing the value (the Prefect
        integration calls it before a task's body runs on a miss). The put decides again,
        atomically: a key taken meanwhile still fails there.

        Parameters
        ----------
        key : str
            The key a value is about to be put under.

        Returns
        -------
        str
            The key, validated.

        Raises
        ------
        ReadonlyStoreError, InvalidKeyError, UnsafePathError
            As :meth:`put` raises them.
        OverlappingKeyError
            If a stored key contains ``key`` or lies inside it.
        """
        self._check_writable("put", key)
        key = validate_key(key, store=self.path)
        self._storage.check_path(key, final=True)
        self._storage.refuse_inside_store(key)
        self._backend.check_overlap(key)
        return key

    def _dump(
        self,
        key: str,
        value: Any,
        ser: Serializer,
        staged: str,
        dump_kwargs: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Write ``value`` at ``staged``; a value the serializer cannot write is explained."""
        try:
            return ser.dump(value, self._storage.fs, staged, **(dump_kwargs or {}))
        except XpersistSQLError:
            raise
        except _UNWRITABLE as exc:
            raise self._unwritable(key, value, ser.name, dump_kwargs, exc) from exc
        except Exception as exc:
            # any other error propagates as it is, its traceback naming the key and the store
            exc.add_note(f"while serializer {ser.name!r} wrote key {key!r} of store {self.path!r}")
            raise

    def _unwritable(
        self,
        key: str,
        value: Any,
        name: str,
        dump_kwargs: dict[str, Any] | None,
        exc: Exception,
    ) -> SerializationError:
        kind = _type_name(value)
        auto = pick_serializer(value)
        checked = f"the dump_kwargs ({', '.join(map(str, dump_kwargs))})" if dump_kwargs else ""
        if auto != name:
            remedy = f"Use serializer={auto!r} (what serializer='auto' picks for a {kind})" + (
                f", or check {checked}" if checked else ""
            )
        else:
            remedy = (
                f"{name!r} is also what serializer='auto' picks for a {kind}: check "
                + (f"{checked} and " if checked else "")
                + "the value, convert it to a type another serializer writes, or register a "
                "serializer for it (xpersist_sql.serializers.register_serializer)"
            )
        return SerializationError(
            f"cannot put key {key!r} in store {self.path!r}: serializer {name!r} cannot write "
            f"this {kind} ({type(exc).__name__}: {exc}). {remedy}. Nothing was stored"
        )

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
                stored = self._storage.checksum(self._storage.check_path(key))
            if stored != digest:
                raise CollisionError(
                    f"key {key!r} already exists in store {self.path!r} with different content "
                    f"({stored} != {digest}); use another key, delete the stored artifact, or "
                    "open the store with on_duplicate_key='overwrite'"
                )
        age = datetime.now(timezone.utc) - existing.created_at
        _log.info(
            "put of key %r skipped: store %r already holds it (stored %s ago, at %s); pass "
            "on_duplicate_key='overwrite' to replace it",
            key,
            self.path,
            str(age).split(".")[0],
            existing.created_at.isoformat(),
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
        rows = self._rows()
        artifact = None if rows is None else rows.get(key)
        if artifact is None or artifact.is_expired():
            raise self._not_found(key, artifact)
        return artifact

    def get(
        self,
        key: str,
        serializer: str | None = None,
        load_kwargs: dict[str, Any] | None = None,
        *,
        verify: bool | None = None,
        accept: Iterable[str] | None = None,
    ) -> Any:
        """Load the value stored under ``key`` (lazily for zarr and netCDF).

        The payload loaded is the one the row describes, checked by its identity (one ``lstat``
        on local disk, one ``HEAD`` on an object store) after the load, and on an object store
        also before opening a directory payload, which is written in place; ``verify`` checks
        it whole. Formats whose loads run code (pickle, joblib) load only where that is trusted:
        see :mod:`xpersist_sql.trust`.

        Parameters
        ----------
        key : str
            The key given to :meth:`put`.
        serializer : str, optional
            Read with another serializer than the one that wrote the payload (naming it also
            trusts it: see :mod:`xpersist_sql.trust`).
        load_kwargs : dict, optional
            Merged over the ``load_kwargs`` recorded at put time.
        verify : bool, optional
            Check the whole payload against its row: the recorded checksum (a full read), or,
            for a row without one, every file's name, size and modification time or ETag.
            Default: the store's ``checksum`` setting (off unless opened with
            ``checksum=True``).
        accept : iterable of str, optional
            The serializers this read accepts: a row written with another one is refused with
            :class:`SerializerMismatchError`, before anything is read. These count as asked
            for.

        Raises
        ------
        ArtifactNotFoundError
            No unexpired artifact under ``key``.
        PayloadMissingError
            The row exists but the payload was removed behind the index's back.
        PayloadChangedError
            The payload is not the one the row describes (its identity, or with ``verify``
            its checksum or files, differ): it was changed behind the index's back.
        UntrustedPayloadError
            Loading would run code the payload holds, and nothing trusts it (the message says
            how to); :class:`SerializerMismatchError` for a row outside ``accept``.
        PayloadLoadError
            The serializer could not read the payload (the message compares library versions).
        MissingDependencyError
            The serializer, or the load options, need a package that is not installed.
        """
        key = validate_key(key, store=self.path)
        storage, backend = self._storage, self._backend
        accepted = None if accept is None else frozenset(accept)
        deep = self.checksum if verify is None else bool(verify)
        settled_for: Artifact | None = None  # the row last waited out / repaired
        rounds = 0
        while True:
            artifact = self.get_artifact(key)
            # Give up only when settling changed nothing: the same row still lacks its payload.
            # A different row means other writers are making progress: wait them out again.
            settled = artifact == settled_for or rounds >= _MAX_SETTLE_ROUNDS
            check_accepted(artifact, accepted, self.path)
            ser = get_serializer(
                serializer or artifact.serializer,
                where=f"get of key {key!r} in store {self.path!r}: ",
            )
            check_trusted(
                artifact,
                ser,
                asked=serializer is not None or (accepted is not None and ser.name in accepted),
                load_kwargs=load_kwargs,
                trusted=self.trusted_serializers,
                store=self.path,
            )
            ser.check_requirements()
            # Never read through a symlink. On local disk the lstat of that check says whether
            # the payload is there; on an object store the load (or the token) says so (an
            # existence check would cost requests on every hit).
            _path, present = storage.locate(key)
            committed = True
            if present and backend.written_in_place(artifact):
                # A directory payload on an object store is written in place: its token says
                # whether the tree at the key is the row's whole payload, before a file of a
                # killed or live writer's half-written tree is opened.
                committed = backend.payload_matches(artifact, repair=not self.readonly)
                present = committed or storage.exists(key)
            if present and committed:
                try:
                    value = self._load(artifact, ser, load_kwargs)
                except PayloadLoadError:
                    if storage.is_local or storage.exists(key):
                        if settled:
                            raise
                    else:
                        present = False
                else:
                    record_loaded(value, self, artifact)  # inputs_hash: this value is the artifact
                    # The payload opened is the row's (not one a concurrent or killed writer
                    # swapped in): its identity, one lstat or one HEAD, still matches after the
                    # load.
                    if backend.payload_matches(artifact, repair=not self.readonly):
                        if deep:
                            verify_payload(storage, artifact, self.path)
                        return value
                    committed = False
            if present and not committed and settled:
                self._check_not_displaced(artifact)
                raise PayloadChangedError(
                    f"the payload of key {key!r} in store {self.path!r} is not the one its row "
                    "describes (its identity differs: it was rewritten, replaced or touched "
                    f"behind the index's back). Recompute it with store.put({key!r}, value, "
                    "on_duplicate_key='overwrite'), or, if the change was deliberate, record it "
                    "with `xpersist-sql verify --refingerprint`"
                )
            if not present and settled:
                self._check_not_displaced(artifact)
                raise PayloadMissingError(
                    f"key {key!r} is in the index of store {self.path!r} but its payload "
                    f"{storage.url(key)} is gone (deleted behind the index's back?); "
                    f"remove the row with store.delete({key!r}) or `xpersist-sql verify --repair`"
                    " and compute the value again"
                )
            backend.settle(key)
            settled_for = artifact
            rounds += 1

    def _check_not_displaced(self, artifact: Artifact) -> None:
        """Raise if the row's payload lies where a killed writer moved it (readonly stores).

        A writable store's ``get`` moves it back (``settle``); a readonly one cannot, and the
        payload at the key is then the killed writer's, which is never served.
        """
        found = self._backend.displaced(artifact)
        if found is not None:
            raise PayloadMissingError(
                f"the payload of key {artifact.key!r} in store {self.path!r} was moved to "
                f"{found!r} by a writer killed while replacing it, and what lies at "
                f"{self._storage.url(artifact.key)} (if anything) is not the stored value. A "
                "read through a writable store (not readonly) moves it back"
            )

    def _load(self, artifact: Artifact, ser: Serializer, load_kwargs: dict[str, Any] | None) -> Any:
        self._backend.record_access(artifact.key)  # batched, throttled (see db/access.py)
        kwargs = {**artifact.load_kwargs, **(load_kwargs or {})}
        try:
            return ser.load(self._storage.fs, self._storage.path(artifact.key), **kwargs)
        except MissingDependencyError:
            raise
        except Exception as exc:
            raise PayloadLoadError(
                f"could not load key {artifact.key!r} from store {self.path!r} with serializer "
                f"{ser.name!r}: {type(exc).__name__}: {str(exc).rstrip('.')}. "
                + self._load_advice(artifact, ser, load_kwargs)
            ) from exc

    def _load_advice(
        self, artifact: Artifact, ser: Serializer, load_kwargs: dict[str, Any] | None
    ) -> str:
        """Say what to do about a payload that would not load, the likeliest cause first."""
        key = artifact.key
        recompute = (
            f"recompute it with store.put({key!r}, value, on_duplicate_key='overwrite') "
            f"(or remove it with store.delete({key!r}))"
        )
        advice = []
        if load_kwargs:
            advice.append(
                f"Check the load_kwargs given to get ({', '.join(map(str, load_kwargs))})."
            )
        if ser.name != artifact.serializer:  # the likeliest cause by far
            advice.insert(
                0,
                f"It was written by serializer {artifact.serializer!r}: read it with that one "
                f"(store.get({key!r}) without serializer=).",
            )
            return " ".join(advice)
        current = self._versions(ser)
        changed = {
            name: f"{version} -> {current.get(name, 'not installed')}"
            for name, version in artifact.versions.items()
            if current.get(name) != version
        }
        if changed:
            advice.append(
                f"It was written with other library versions ({changed}): load it in an "
                f"environment with those versions, or {recompute}."
            )
        elif not artifact.versions:
            advice.append(
                "The library versions that wrote it were not recorded (an artifact imported "
                "from xpersist 2021?): load it where it was written, or "
                f"{recompute}."
            )
        else:
            advice.append(
                "The library versions are the ones that wrote it, so the payload itself has "
                "probably changed: check it with store.verify() (`xpersist-sql verify`), then "
                f"{recompute}."
            )
        return " ".join(advice)

    def keys(self) -> list[str]:
        """Return the keys of the stored (unexpired) artifacts, sorted."""
        rows = self._rows()
        return [] if rows is None else rows.keys()

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
        parameters: Mapping[str, Any] | None = None,
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
        parameters : dict, optional
            The recorded parameter value ``name`` (``additional_metadata["parameter_values"]``,
            filled by the Prefect integration) equals ``value``, for every item. Values are
            compared as JSON values, numbers as numbers: ``2`` matches a recorded ``2`` or
            ``2.0`` but not ``"2"`` nor ``True``; lists item by item, dicts whatever their key
            order. A value recorded by its hash (larger than the cap, or not JSON) is matched
            by giving the value itself (see :mod:`xpersist_sql.parameters`).
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
        spec = _query_spec(
            {
                "key": key,
                "flow_name": flow_name,
                "task_name": task_name,
                "flow_run_id": flow_run_id,
                "task_run_id": task_run_id,
                "serializer": serializer,
                "tags": tags,
                "metadata": metadata,
                "parameters": parameters,
                "since": since,
                "until": until,
                "limit": limit,
                "order": order,
                "include_expired": include_expired,
            }
        )
        rows = self._rows()
        return [] if rows is None else rows.query(spec)

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

    def delete(self, key: str, dry_run: bool = False, *, downstream: bool = False) -> Artifact:
        """Remove the artifact's row, then its payload.

        Parameters
        ----------
        key : str
            The key to delete.
        dry_run : bool
            Only return what would be deleted.
        downstream : bool
            Also remove everything derived from ``key``, transitively (see
            :meth:`delete_downstream`, which returns the whole list).

        Returns
        -------
        Artifact
            The deleted (or, with ``dry_run``, the would-be deleted) artifact of ``key``.
        """
        if downstream:
            return self.delete_downstream(key, dry_run=dry_run)[0]
        key = validate_key(key, store=self.path)
        if dry_run:
            rows = self._rows()
            found = None if rows is None else rows.get(key)
            if found is None:
                raise self._not_found(key)
            return found
        self._check_writable("delete", key)
        artifact = self._backend.delete(key)
        if artifact is None:
            raise self._not_found(key)
        return artifact

    # -- lineage -----------------------------------------------------------------------------------
    def _with_parents(
        self,
        metadata: dict[str, Any],
        parents: Iterable[str | Artifact | ArtifactIdentity],
        where: str,
    ) -> dict[str, Any]:
        """Return ``metadata`` with the ``derived_from`` records of ``parents`` (checked)."""
        if isinstance(parents, (str, Artifact, ArtifactIdentity)):
            parents = [parents]
        if DERIVED_FROM in metadata:
            raise ValueError(
                f"{where}give the parents either as derived_from= or as "
                f"additional_metadata[{DERIVED_FROM!r}], not both"
            )
        rows = self._rows()
        marker = self._backend.marker() if rows is not None else None
        uid = None if marker is None else marker.store_id
        records: list[dict[str, Any]] = []
        for parent in parents:
            if isinstance(parent, ArtifactIdentity):
                if parent.store_id == uid:
                    self.get_artifact(parent.key)  # of this store: it must be stored
                identity = parent
            elif isinstance(parent, (str, Artifact)):
                stored = self.get_artifact(parent if isinstance(parent, str) else parent.key)
                found = stored if isinstance(parent, str) else parent
                assert uid is not None  # get_artifact found it: the path is a store
                identity = ArtifactIdentity(
                    store_id=uid,
                    key=found.key,
                    created_at=found.created_at.isoformat(),
                    fingerprint=found.fingerprint,
                    checksum=found.checksum,
                )
            else:
                raise TypeError(
                    f"{where}derived_from takes keys (str), Artifact or ArtifactIdentity, got "
                    f"{type(parent).__name__} {parent!r}"
                )
            record = parent_record(identity)
            if record not in records:
                records.append(record)
        return {**metadata, DERIVED_FROM: records} if records else metadata

    def _lineage_walk(
        self, key: str, direction: str, depth: int | None, *, expired: bool
    ) -> tuple[int, Artifact, LineageWalk, dict[int, Artifact]]:
        """Walk the lineage of ``key``: its row id and artifact, the walk, the artifacts reached."""
        if direction not in DIRECTIONS:
            raise ValueError(
                f"direction must be one of {', '.join(map(repr, DIRECTIONS))}, got {direction!r}"
            )
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int)):
            raise TypeError(f"depth must be an int or None, got {type(depth).__name__} {depth!r}")
        if depth is not None and depth < 1:
            raise ValueError(f"depth must be >= 1 (or None for the whole lineage), got {depth}")
        key = validate_key(key, store=self.path)
        rows = self._rows()
        if rows is None:
            raise self._not_found(key)
        with rows.read() as conn:
            found = rows.fetch(conn, key)
            if found is None or (not expired and found[1].is_expired()):
                raise self._not_found(key, None if found is None else found[1])
            walked = lineage_walk(conn, rows.store_id, (found[0], key), direction, depth)
            reached = artifacts_by_id(conn, rows.store_id, [ident for _, ident, _ in walked.nodes])
        return found[0], found[1], walked, reached

    def lineage(
        self, key: str, direction: str = "upstream", depth: int | None = None
    ) -> list[Artifact]:
        """Return the artifacts ``key`` was computed from, or that were computed from it.

        Follows the parents recorded by ``put(..., derived_from=...)`` (the Prefect integration
        records a task's inputs loaded from the store). Only this store's artifacts are
        returned: a parent recorded in another store, or deleted since, is left out (its record
        stays in the child's ``additional_metadata["derived_from"]``). A parent overwritten
        since is returned as it is now; compare its ``created_at`` with the child's record
        (:func:`xpersist_sql.lineage.parents_of`) to tell.

        Parameters
        ----------
        key : str
            The artifact whose lineage to follow.
        direction : {"upstream", "downstream"}
            ``"upstream"``: what it was computed from; ``"downstream"``: what was derived from
            it.
        depth : int, optional
            ``1``: direct parents (children) only; ``None`` (default): all of them,
            transitively.

        Returns
        -------
        list of Artifact
            Breadth first (nearest first), then by key; each artifact once (cycles end), the
            artifact of ``key`` itself excluded, expired artifacts left out (but followed).

        Raises
        ------
        ArtifactNotFoundError
            If no unexpired artifact has that key.
        ValueError
            For a direction other than ``"upstream"`` and ``"downstream"``, or a depth < 1.

        Examples
        --------
        >>> store.put("raw.json", [1, 2], serializer="json")  # doctest: +SKIP
        >>> store.put("sum.json", 3, serializer="json", derived_from=["raw.json"])  # doctest: +SKIP
        >>> [a.key for a in store.lineage("sum.json")]  # doctest: +SKIP
        ['raw.json']
        """
        _, _, walked, reached = self._lineage_walk(key, direction, depth, expired=False)
        now = datetime.now(timezone.utc)
        return [
            reached[ident]
            for _, ident, _ in walked.nodes
            if ident in reached and not reached[ident].is_expired(now)
        ]

    def explain(self, key: str, fn: Callable[..., Any] | None = None) -> Explanation:
        """Explain why ``key`` exists and whether it would be a hit now (nothing is loaded).

        The row (serializer, ``created_at``, expiry, size, checksum), whether the payload is
        present and the one the row describes, the target template and context values an
        ``xpersist_task`` rendered the key from, its inputs hash and per-argument components,
        the task version and code hash recorded, and each upstream artifact recorded at
        derivation with its status now (``"unchanged"``, ``"changed"``, ``"missing"``).

        Parameters
        ----------
        key : str
            The key (an expired one is explained too).
        fn : callable, optional
            The function, or the ``xpersist_task``, computing the value: its code hash now
            (:func:`xpersist_sql.provenance.code_hash`) is compared with the recorded one, and
            a task's ``version`` with the recorded version.

        Returns
        -------
        Explanation
            ``would_hit``, ``stale`` and ``reasons``; ``str()`` of it reads as a report,
            ``to_dict()`` / ``to_json()`` give its JSON form.

        Raises
        ------
        ArtifactNotFoundError
            If nothing is stored under ``key``.

        Examples
        --------
        >>> store.put("raw.json", [1, 2], serializer="json")  # doctest: +SKIP
        >>> store.put("sum.json", 3, serializer="json", derived_from=["raw.json"])  # doctest: +SKIP
        >>> store.explain("sum.json").would_hit  # doctest: +SKIP
        True
        """
        return _explain(self, key, fn)

    def delete_downstream(self, key: str, dry_run: bool = False) -> list[Artifact]:
        """Remove ``key`` and everything derived from it, transitively.

        What would be removed is listed first (as ``lineage(key, "downstream")`` walks it,
        expired artifacts included); each artifact is then removed by the guarded path that
        ``gc`` uses, deepest first, and only if its row is still the one listed (an artifact
        recomputed meanwhile stays). Interrupted, a second run removes the rest.

        Parameters
        ----------
        key : str
            The artifact to remove with its descendants.
        dry_run : bool
            Only list what would be removed; nothing is.

        Returns
        -------
        list of Artifact
            The artifact of ``key`` first, then its descendants breadth first (then by key):
            the ones removed, or with ``dry_run`` the ones that would be.

        Raises
        ------
        ArtifactNotFoundError
            If nothing is stored under ``key``.
        ReadonlyStoreError
            If the store is readonly and ``dry_run`` is False.
        """
        key = validate_key(key, store=self.path)
        if not dry_run:
            self._check_writable("delete", key)
        root_id, root, walked, reached = self._lineage_walk(key, "downstream", None, expired=True)
        planned = [(root_id, root)] + [
            (ident, reached[ident]) for _, ident, _ in walked.nodes if ident in reached
        ]
        if dry_run:
            return [artifact for _, artifact in planned]
        removed: dict[int, Artifact] = {}
        for ident, artifact in reversed(planned):
            gone = self._backend.remove_if(artifact.key, ident, artifact.created_at)
            if gone is not None:
                removed[ident] = gone
        return [removed[ident] for ident, _ in planned if ident in removed]

    def lineage_graph(
        self, keys: str | Iterable[str] | None = None, format: str = "mermaid"
    ) -> str:
        """Return a lineage graph as Mermaid or DOT text, deterministic (for docs).

        Parameters
        ----------
        keys : str or iterable of str, optional
            Draw these artifacts with everything upstream and downstream of them; ``None``
            (default): every edge between this store's artifacts (and the artifacts on them).
        format : {"mermaid", "dot"}
            A Mermaid ``flowchart TD`` or a Graphviz ``digraph``; edges go from parent to
            child.

        Returns
        -------
        str

        Raises
        ------
        ArtifactNotFoundError
            A key that is not stored.
        ValueError
            An unknown format.
        """
        if format not in GRAPH_FORMATS:
            to_graph([], [], format)  # raises, naming the formats
        nodes: set[str] = set()
        edges: set[tuple[str, str]] = set()
        if keys is None:
            rows = self._rows()
            if rows is not None:
                with rows.read() as conn:
                    edges = all_edges(conn, rows.store_id)
        else:
            for key in [keys] if isinstance(keys, str) else keys:
                nodes.add(validate_key(key, store=self.path))
                for direction in DIRECTIONS:
                    walked = self._lineage_walk(key, direction, None, expired=True)[2]
                    edges |= walked.edges
        return to_graph(nodes, edges, format)

    def summarize(self, by: str, **filters: Any) -> list[SummaryRow]:
        """Count the artifacts matching ``filters`` and add up their sizes, per value of ``by``.

        Parameters
        ----------
        by : {"flow_name", "task_name", "serializer"}
            The field to group by.
        **filters
            The keyword filters of :meth:`query` (``limit`` and ``order`` are ignored).

        Returns
        -------
        list of SummaryRow
            Largest groups (by count) first.
        """
        spec = _query_spec(dict(filters))
        rows = self._rows()
        return [] if rows is None else rows.summarize(spec, by)

    # -- maintenance -----------------------------------------------------------------------------
    def _check_maintenance(
        self,
        action: str,
        instead: str = "use the dry-run option to only list what would be removed",
    ) -> None:
        if self.readonly:
            raise ReadonlyStoreError(
                f"cannot {action}: the store {self.path!r} is readonly; open it with "
                f"readonly=False (or {instead})"
            )

    def gc(
        self,
        *,
        older_than: timedelta | int | float | str = _gc.DEFAULT_GRACE,
        dry_run: bool = False,
        progress: Progress | None = None,
        now: datetime | None = None,
    ) -> _gc.GcReport:
        """Remove expired artifacts, orphan payloads and the leftovers of crashed writes.

        Safe while other processes use the store; only a directory carrying a store marker is
        cleaned, and nested stores are never touched (see :mod:`xpersist_sql.maintenance.gc`).

        Parameters
        ----------
        older_than : timedelta, float or str
            Grace period for files (default 1 hour; ``"30m"``, ``"7d"``, seconds).
        dry_run : bool
            Only list what would be removed.
        progress : callable, optional
            ``progress(phase, done, total)``.
        now : datetime, optional
            The clock (default: now).

        Returns
        -------
        GcReport

        Raises
        ------
        ReadonlyStoreError
            If the store is readonly and ``dry_run`` is False.
        StoreNotFoundError
            If the path carries no store marker.
        """
        if not dry_run:
            self._check_maintenance("run gc")
        return _gc.gc(
            self._backend, older_than=older_than, dry_run=dry_run, progress=progress, now=now
        )

    def verify(
        self,
        *,
        checksums: bool = True,
        repair: bool = False,
        refingerprint: bool = False,
        progress: Progress | None = None,
    ) -> _verify.VerifyReport:
        """Check that every artifact's payload is present and unchanged.

        Parameters
        ----------
        checksums : bool
            Hash the payloads that have a recorded checksum (a full read of each).
        repair : bool
            Drop the rows whose payload is gone (see :meth:`repair`).
        refingerprint : bool
            Re-record the fingerprint and size of payloads whose files changed on disk but
            whose content did not, after a legitimate copy (``cp -r`` changes modification
            times): where a checksum was recorded only if the content still matches it (else
            the payload stays a ``corrupt`` problem); without one, the content is taken as
            unchanged. The keys are listed in ``report.refingerprinted``.
        progress : callable, optional
            ``progress(phase, done, total)``.

        Returns
        -------
        VerifyReport
            Problems by key: ``missing``, ``modified``, ``corrupt``, ``invalid key``.

        Raises
        ------
        ReadonlyStoreError
            With ``refingerprint`` on a readonly store.
        """
        if refingerprint:
            self._check_maintenance(
                "re-record fingerprints", "run verify without refingerprint to only check"
            )
        report = _verify.verify(
            self._backend, checksums=checksums, refingerprint=refingerprint, progress=progress
        )
        if repair and report.missing:
            report.repaired = self.repair(report.missing, progress=progress)
        return report

    def repair(self, keys: Iterable[str], *, progress: Progress | None = None) -> list[str]:
        """Drop the rows of ``keys`` whose payload is (still) gone; return the keys dropped.

        Raises
        ------
        ReadonlyStoreError
            If the store is readonly.
        """
        self._check_maintenance("repair the index")
        return _verify.repair_missing(self._backend, keys, progress=progress)

    def evict(
        self,
        max_size: int | str | None = None,
        *,
        target: int | str | None = None,
        dry_run: bool = False,
        keep: Collection[str] = (),
        progress: Progress | None = None,
        now: datetime | None = None,
    ) -> _evict.EvictReport:
        """Evict least-recently-used artifacts (expired ones first) until the store fits.

        Parameters
        ----------
        max_size : int or str, optional
            The limit (bytes or ``"50GB"``); default: the store's ``max_size``. ``0`` evicts
            every artifact not in ``keep``.
        target : int or str, optional
            Evict down to this size (default: ``max_size``).
        dry_run : bool
            Only list what would be evicted.
        keep : collection of str
            Keys never evicted.
        progress : callable, optional
            ``progress("evicting", freed bytes, bytes to free)``.
        now : datetime, optional
            The clock: only rows created before it are candidates (default: now).

        Returns
        -------
        EvictReport

        Raises
        ------
        ValueError
            Without ``max_size`` on a store that has none.
        ReadonlyStoreError
            If the store is readonly and ``dry_run`` is False.
        """
        limit = self.max_size if max_size is None else max_size
        if limit is None:
            raise ValueError(
                f"evict needs a max_size: the store {self.path!r} was opened without one; pass "
                "store.evict('50GB') or open it with CacheStore(..., max_size='50GB')"
            )
        if not dry_run:
            self._check_maintenance("evict artifacts")
        return _evict.evict(
            self._backend,
            limit,
            target=target,
            dry_run=dry_run,
            keep=keep,
            progress=progress,
            now=now,
        )

    def import_legacy(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        progress: Progress | None = None,
    ) -> LegacyImportReport:
        """Index the 2021 xpersist sidecars under this store's root, in place.

        Payloads stay where they are; running it again changes nothing (see
        :mod:`xpersist_sql.legacy`).

        Parameters
        ----------
        path : str or path-like, optional
            The 2021 store's root: this store's own path (the default). A 2021 store is
            imported where it lies; to import another directory, open it:
            ``CacheStore(path).import_legacy()`` or :func:`xpersist_sql.import_legacy`.
        progress : callable, optional
            ``progress("importing", done, total)``.

        Returns
        -------
        LegacyImportReport
            What was imported, and what was skipped and why.

        Raises
        ------
        ValueError
            If ``path`` is not this store's root.
        FileNotFoundError
            If the root has no ``xpersist_metadata_store`` directory.
        ReadonlyStoreError
            If the store is readonly.
        """
        if path is not None and not self._is_own_root(path):
            raise ValueError(
                f"cannot import the 2021 store {os.fspath(path)!r} into the store {self.path!r}: "
                "a 2021 store is indexed in place, where its payloads lie, and that is another "
                f"directory. Use xpersist_sql.import_legacy({os.fspath(path)!r}), or "
                "CacheStore(path).import_legacy()"
            )
        self._check_maintenance("import a legacy store")
        return import_legacy_into(self._backend, progress=progress)

    def _is_own_root(self, path: str | os.PathLike[str]) -> bool:
        raw = os.fspath(path)
        if self._storage.is_local:
            if "://" in raw and not raw.startswith("file://"):
                return False
            raw = raw.removeprefix("file://")
            return os.path.realpath(os.path.expanduser(raw)) == os.path.realpath(self.path)
        return raw.rstrip("/") == self.path

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
        """Return an unacquired :class:`~xpersist_sql.db.locks.KeyLock` on any string ``key``.

        The building block of :meth:`lock` for callers that acquire and release in different
        places (the Prefect lock manager); the key is not validated as a path.
        """
        return key_lock(self.engine, key, store=self.path)

    # -- mapping protocol ------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        # a mapping's assignment replaces the value
        self.put(key, value, on_duplicate_key=DuplicateKeyEnum.overwrite)

    def __delitem__(self, key: str) -> None:
        self.delete(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        rows = self._rows()
        return False if rows is None else rows.contains(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        rows = self._rows()
        return 0 if rows is None else rows.count()


def import_legacy(
    path: str | os.PathLike[str],
    *,
    database_url: str | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> LegacyImportReport:
    """Index a store written by xpersist 2021 in place, so that ``CacheStore(path)`` serves it.

    Parameters
    ----------
    path : str or path-like
        Root of the 2021 store (the directory holding ``xpersist_metadata_store/``).
    database_url : str, optional
        The index to record the rows in (default: as ``CacheStore(path)`` resolves it, the
        embedded SQLite file for a local path).
    storage_options : dict, optional
        fsspec options for a remote path.
    progress : callable, optional
        ``progress("importing", done, total)``.

    Returns
    -------
    LegacyImportReport

    Raises
    ------
    FileNotFoundError
        If ``path`` has no ``xpersist_metadata_store`` directory (nothing is created then).

    Examples
    --------
    >>> report = import_legacy("/data/old-cache")  # doctest: +SKIP
    >>> len(report.imported), [issue.key for issue in report.skipped]  # doctest: +SKIP
    """
    store = CacheStore(path, database_url=database_url, storage_options=storage_options)
    try:
        return store.import_legacy(progress=progress)
    finally:
        store.close()
