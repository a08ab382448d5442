"""Keeping a store healthy: size-bounded LRU eviction, garbage collection, integrity checks.

Functions over the parts of a :class:`~xpersist_sql.CacheStore` (its payload storage and its
index); the command line's ``gc``, ``verify`` and ``evict`` call them.

Rules that make them safe while other processes read and write the store:

- **Rows first, payload second.** An artifact is removed exactly like ``CacheStore.delete``
  does it: its row is deleted in a write transaction that also moves the payload to the trash,
  and the trash is emptied after the commit, so no reader sees a row without its payload.
- **Only what existed when the work began.** Eviction and gc only remove rows created before
  they started, and re-read each row in the removing transaction: a row replaced meanwhile (a new
  ``created_at``) is left alone. An artifact that another writer is committing has no visible
  row yet and is never a candidate.
- **Grace period for files.** gc removes a staging directory, a trash entry or an orphan payload
  only when nothing in it changed (modification or status change time: a rename counts) for
  ``older_than`` (1 hour by default) *before the scan started*: a live writer's staging
  directory, the payload a put has just published but not committed yet, and the trash of an
  in-flight overwrite are all newer than that. An orphan is checked again against the index
  right before it goes, and restored if a row for it appeared meanwhile. A payload that still
  has a 2021 xpersist sidecar (``xpersist_metadata_store/<key>.artifact.json``) is never an
  orphan, nor is that directory.
"""

from __future__ import annotations

import re
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, case, func, or_, select

from .db.index import ArtifactIndex, row_to_artifact
from .db.tables import ARTIFACTS
from .errors import ReadonlyStoreError
from .legacy import LEGACY_METADATA_DIR, LEGACY_SUFFIX
from .models import Artifact
from .storage import HIDDEN_DIR, PayloadStorage

if TYPE_CHECKING:
    from .store import CacheStore

__all__ = [
    "DEFAULT_GRACE",
    "EvictReport",
    "GcItem",
    "GcReport",
    "Progress",
    "SizeGuard",
    "VerifyProblem",
    "VerifyReport",
    "evict",
    "format_size",
    "gc",
    "parse_duration",
    "parse_size",
    "repair_missing",
    "store_size",
    "verify",
]

#: ``progress(phase, done, total)``: called as work advances (``total`` may be 0 if unknown).
Progress = Callable[[str, int, int], None]

#: Default grace period of gc for staging leftovers, trash entries and orphan payloads.
DEFAULT_GRACE = timedelta(hours=1)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(s|m|h|d|w)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _noop(phase: str, done: int, total: int) -> None:
    return None


# -- parsing ---------------------------------------------------------------------------------------
def parse_size(value: int | str) -> int:
    """Return a size in bytes from an int or a string such as ``"50GB"``, ``"500 MiB"``.

    Units: ``B``, ``KB``/``MB``/``GB``/``TB``/``PB`` (powers of 1000, also written ``K``, ``M``,
    ...) and ``KiB``/``MiB``/``GiB``/``TiB``/``PiB`` (powers of 1024), case-insensitive.

    Raises
    ------
    TypeError
        If ``value`` is neither an int nor a str.
    ValueError
        If the string is not a size, or the size is not positive.

    Examples
    --------
    >>> parse_size("50GB")
    50000000000
    >>> parse_size("1.5 KiB")
    1536
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"a size must be an int (bytes) or a str like '50GB', got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(
                f"cannot read {value!r} as a size; write a number of bytes or a number with a "
                "unit: '500MB', '50GB', '2TiB'"
            )
        number, prefix, binary, _ = match.groups()
        base = 1024 if binary else 1000
        size = int(float(number) * base ** _POWERS[prefix.lower()])
    if size <= 0:
        raise ValueError(f"a size must be positive, got {value!r}")
    return size


def format_size(size: int | float) -> str:
    """Return a human-readable size with a decimal unit (``"1.5 GB"``)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def parse_duration(value: timedelta | int | float | str) -> timedelta:
    """Return a non-negative duration from a timedelta, seconds, or ``"30m"``/``"12h"``/``"7d"``.

    Raises
    ------
    TypeError, ValueError
        For another type, an unreadable string or a negative duration.

    Examples
    --------
    >>> parse_duration("12h")
    datetime.timedelta(seconds=43200)
    """
    if isinstance(value, bool) or not isinstance(value, (timedelta, int, float, str)):
        raise TypeError(
            f"a duration must be a timedelta, seconds or a str like '12h', not {value!r}"
        )
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                f"cannot read {value!r} as a duration; write seconds or a number with a unit "
                "s, m, h, d or w: '30m', '12h', '7d'"
            )
        delta = timedelta(seconds=float(match[1]) * _UNITS[(match[2] or "s").lower()])
    else:
        delta = timedelta(seconds=value)
    if delta < timedelta(0):
        raise ValueError(f"a duration must not be negative, got {value!r}")
    return delta


# -- shared helpers --------------------------------------------------------------------------------
def _now() -> datetime:
    return datetime.now(timezone.utc)


def _check_writable(store: CacheStore, action: str) -> None:
    if store.readonly:
        raise ReadonlyStoreError(
            f"cannot {action}: the store {store.path!r} is readonly; open it with "
            "readonly=False (or use the dry-run option to only list what would be removed)"
        )


def store_size(store: CacheStore) -> tuple[int, int]:
    """Return ``(total bytes, number of artifacts)`` of every row, expired ones included."""
    stmt = select(func.coalesce(func.sum(ARTIFACTS.c.size_bytes), 0), func.count())
    with store._index.read() as conn:
        total, count = conn.execute(stmt).one()
    return int(total or 0), int(count or 0)


def _remove_row(
    index: ArtifactIndex,
    storage: PayloadStorage,
    key: str,
    artifact_id: int,
    created_at: datetime,
    still: Callable[[Artifact], bool] = lambda artifact: True,
) -> Artifact | None:
    """Delete the row of ``key`` then its payload, if the row is still the one that was seen.

    Returns the removed artifact, or None when the row is gone, was replaced (another id or
    ``created_at``) or no longer satisfies ``still``.
    """
    with index.write() as conn:
        found = index.fetch(conn, key, for_update=True)
        if found is None:
            return None
        found_id, artifact = found
        if found_id != artifact_id or artifact.created_at != created_at or not still(artifact):
            return None
        index.remove(conn, key)
        trash = storage.move_to_trash(key)
    storage.purge(trash)
    return artifact


def _timestamp(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    return None


def _times(info: dict[str, Any]) -> list[float]:
    found = []
    for name in ("mtime", "created", "LastModified", "last_modified", "updated"):
        stamp = _timestamp(info.get(name))
        if stamp is not None:
            found.append(stamp)
    return found


@dataclass(frozen=True)
class _Tree:
    size_bytes: int
    newest: float | None  # latest modification / status change in the tree; None if unknown


def _tree(storage: PayloadStorage, path: str, info: dict[str, Any] | None = None) -> _Tree | None:
    """Size and newest time of a file or directory tree (None if it vanished)."""
    fs = storage.fs
    try:
        info = info or fs.info(path)
        stamps = _times(info)
        size = 0
        if info.get("type") == "directory":
            for meta in fs.find(path, detail=True, withdirs=True).values():
                stamps.extend(_times(meta))
                if meta.get("type") != "directory":
                    size += int(meta.get("size") or 0)
        else:
            size = int(info.get("size") or 0)
    except FileNotFoundError:
        return None
    return _Tree(size, max(stamps) if stamps else None)


def _relative(storage: PayloadStorage, name: str) -> str:
    name = name.rstrip("/")
    prefix = storage.root.rstrip("/") + "/"
    return name[len(prefix) :] if name.startswith(prefix) else name


# -- gc --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GcItem:
    """One thing gc removes (or, in a dry run, would remove).

    Attributes
    ----------
    kind : {"expired", "orphan", "staging", "trash"}
        An expired artifact (row and payload), a payload without a row, a crashed writer's
        staging directory, or a leftover of a replaced / deleted payload.
    path : str
        The key (expired, orphan) or the path inside the store (``.xpersist_sql/...``).
    size_bytes : int
        Bytes it occupies.
    """

    kind: str
    path: str
    size_bytes: int


@dataclass
class GcReport:
    """What :func:`gc` found and removed.

    Attributes
    ----------
    items : list of GcItem
        Everything removed (or that would be, with ``dry_run``).
    skipped : list of GcItem
        Found in the scan but changed or claimed before its removal, so kept.
    dry_run : bool
        Whether nothing was removed.
    started_at : datetime
        When the scan started: nothing newer is ever removed.
    """

    items: list[GcItem] = field(default_factory=list)
    skipped: list[GcItem] = field(default_factory=list)
    dry_run: bool = False
    started_at: datetime = field(default_factory=_now)

    @property
    def total_bytes(self) -> int:
        """Bytes of all items."""
        return sum(item.size_bytes for item in self.items)

    def count(self, kind: str) -> int:
        """Return the number of items of one kind."""
        return sum(1 for item in self.items if item.kind == kind)


def _prefixes(key: str) -> Iterable[str]:
    parts = key.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _all_keys(index: ArtifactIndex) -> set[str]:
    with index.read() as conn:
        return set(conn.scalars(select(ARTIFACTS.c.key)))


def _covered(conn: Connection, relative: str) -> bool:
    """Whether a row's key is ``relative``, lies below it, or contains it."""
    escaped = relative.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    candidates = [relative, *_prefixes(relative)]
    stmt = select(ARTIFACTS.c.id).where(
        or_(ARTIFACTS.c.key.in_(candidates), ARTIFACTS.c.key.like(escaped + "/%", escape="\\"))
    )
    return conn.execute(stmt.limit(1)).first() is not None


def _legacy_sidecar(storage: PayloadStorage, relative: str) -> str:
    return storage.path(f"{LEGACY_METADATA_DIR}/{relative}{LEGACY_SUFFIX}")


def _find_orphans(storage: PayloadStorage, keys: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """Top-most paths under the root that no key covers (the hidden directories excluded)."""
    ancestors = {prefix for key in keys for prefix in _prefixes(key)}
    orphans: list[tuple[str, dict[str, Any]]] = []
    stack = [""]
    while stack:
        directory = stack.pop()
        try:
            entries = storage.fs.ls(
                storage.path(directory) if directory else storage.root, detail=True
            )
        except FileNotFoundError:
            continue
        for info in entries:
            relative = _relative(storage, info["name"])
            if not relative or relative == directory:
                continue
            if not directory and relative in (HIDDEN_DIR, LEGACY_METADATA_DIR):
                continue
            if relative in keys:
                continue
            if relative in ancestors:
                if info.get("type") == "directory":
                    stack.append(relative)
                continue
            if storage.fs.exists(_legacy_sidecar(storage, relative)):
                continue  # a 2021 payload not imported (yet): `import-legacy` reports why
            orphans.append((relative, info))
    return sorted(orphans)


def _internal_entries(storage: PayloadStorage, name: str) -> list[tuple[str, dict[str, Any]]]:
    directory = storage.internal_dir(name)
    try:
        entries = storage.fs.ls(directory, detail=True)
    except FileNotFoundError:
        return []
    return sorted(
        (_relative(storage, info["name"]), info)
        for info in entries
        if info["name"].rstrip("/") != directory.rstrip("/")
    )


def gc(
    store: CacheStore,
    *,
    older_than: timedelta | int | float | str = DEFAULT_GRACE,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> GcReport:
    """Remove expired artifacts, orphan payloads, crashed writers' staging and trash leftovers.

    Safe while other processes use the store: see the module's rules. Nothing created or changed
    after the scan started is removed; files (staging, trash, orphans) must also be unchanged for
    ``older_than`` before the scan started.

    Parameters
    ----------
    store : CacheStore
        The store to clean.
    older_than : timedelta, float or str
        Grace period for files (default 1 hour). ``0`` removes every leftover older than the
        scan, a live writer's staging directory included: only for a store nobody writes to.
        Expired artifacts are removed whatever their age.
    dry_run : bool
        Only list what would be removed.
    progress : callable, optional
        ``progress(phase, done, total)``.

    Returns
    -------
    GcReport

    Raises
    ------
    ReadonlyStoreError
        If the store is readonly and ``dry_run`` is False.
    """
    grace = parse_duration(older_than)
    if not dry_run:
        _check_writable(store, "run gc")
    report = progress or _noop
    index, storage = store._index, store._storage
    started = _now()
    cutoff = (started - grace).timestamp()
    result = GcReport(dry_run=dry_run, started_at=started)

    # 1. expired artifacts: row first, then payload
    stmt = (
        select(ARTIFACTS.c.id, ARTIFACTS.c.key, ARTIFACTS.c.created_at, ARTIFACTS.c.size_bytes)
        .where(ARTIFACTS.c.expires_at <= started, ARTIFACTS.c.created_at < started)
        .order_by(ARTIFACTS.c.expires_at)
    )
    with index.read() as conn:
        expired = conn.execute(stmt).all()
    for done, row in enumerate(expired, 1):
        item = GcItem("expired", row.key, int(row.size_bytes or 0))
        if dry_run or _remove_row(
            index, storage, row.key, row.id, row.created_at, lambda a: a.is_expired(started)
        ):
            result.items.append(item)
        else:
            result.skipped.append(item)
        report("expired artifacts", done, len(expired))

    # 2. orphan payloads: no row covers them
    report("scanning payloads", 0, 0)
    orphans = _find_orphans(storage, _all_keys(index))
    for done, (relative, info) in enumerate(orphans, 1):
        tree = _tree(storage, storage.path(relative), info)
        if tree is not None and tree.newest is not None and tree.newest < cutoff:
            item = GcItem("orphan", relative, tree.size_bytes)
            if dry_run or _remove_orphan(index, storage, relative, cutoff):
                result.items.append(item)
            else:
                result.skipped.append(item)
        report("orphan payloads", done, len(orphans))

    # 3. staging leftovers of crashed writers, 4. trash leftovers
    for kind in ("staging", "trash"):
        entries = _internal_entries(storage, kind)
        for done, (relative, info) in enumerate(entries, 1):
            path = storage.path(relative)
            tree = _tree(storage, path, info)
            if tree is not None and tree.newest is not None and tree.newest < cutoff:
                item = GcItem(kind, relative, tree.size_bytes)
                if _displaced_payload(index, storage, path, kind) is not None:
                    # a killed writer moved a row's payload here: ``get`` puts it back
                    result.skipped.append(item)
                elif dry_run:
                    result.items.append(item)
                else:
                    again = _tree(storage, path)  # changed meanwhile: a live writer, keep it
                    if again is not None and again.newest is not None and again.newest < cutoff:
                        storage.purge(path)
                        result.items.append(item)
                    else:
                        result.skipped.append(item)
            report(f"{kind} leftovers", done, len(entries))
    return result


def _displaced_payload(
    index: ArtifactIndex, storage: PayloadStorage, path: str, kind: str
) -> str | None:
    """Return the key whose row describes the payload at ``path`` but not the one at its key.

    That is a payload a writer killed mid-publish moved into its staging directory or the trash;
    gc keeps it so that the next read of the key can put it back.
    """
    try:
        if kind == "staging":
            inner = storage.fs.ls(path, detail=False)
            if len(inner) != 1:
                return None
            path = inner[0].rstrip("/")
        fingerprint = storage.stat(path).fingerprint
    except FileNotFoundError:
        return None
    with index.read() as conn:
        keys = list(
            conn.scalars(select(ARTIFACTS.c.key).where(ARTIFACTS.c.fingerprint == fingerprint))
        )
    for key in keys:
        try:
            if storage.stat(storage.path(key)).fingerprint == fingerprint:
                continue
        except FileNotFoundError:
            pass
        return str(key)
    return None


def _remove_orphan(
    index: ArtifactIndex, storage: PayloadStorage, relative: str, cutoff: float
) -> bool:
    with index.read() as conn:
        if _covered(conn, relative):
            return False
    again = _tree(storage, storage.path(relative))
    if again is None or again.newest is None or again.newest >= cutoff:
        return False
    trash = storage.move_to_trash(relative)
    if trash is None:
        return False
    with index.read() as conn:
        claimed = _covered(conn, relative)
    if claimed:  # a put committed a row for it while we moved it: give it back
        if not storage.exists(relative):
            storage.restore(trash, relative)
        else:
            storage.purge(trash)
        return False
    storage.purge(trash)
    return True


# -- verify ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyProblem:
    """A row whose payload is gone or no longer what was stored.

    Attributes
    ----------
    key : str
        The artifact's key.
    problem : {"missing", "modified", "corrupt"}
        ``missing``: no payload; ``modified``: its size / files / modification times differ from
        the recorded fingerprint (and no checksum proves the content unchanged); ``corrupt``: its
        content no longer matches the recorded sha256 checksum.
    detail : str
        What differs.
    """

    key: str
    problem: str
    detail: str


@dataclass
class VerifyReport:
    """What :func:`verify` checked and found.

    Attributes
    ----------
    checked : int
        Number of rows checked.
    problems : list of VerifyProblem
        Missing, modified and corrupt payloads, by key.
    """

    checked: int = 0
    problems: list[VerifyProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every payload is present and intact."""
        return not self.problems

    @property
    def missing(self) -> list[str]:
        """Keys whose payload is gone."""
        return [p.key for p in self.problems if p.problem == "missing"]

    @property
    def damaged(self) -> list[str]:
        """Keys whose payload changed (modified or corrupt)."""
        return [p.key for p in self.problems if p.problem != "missing"]


def _describe_change(recorded: str, current: str) -> str:
    def size(fingerprint: str) -> str:
        fields = dict(part.split("=", 1) for part in fingerprint.split(";") if "=" in part)
        return f"{fields.get('files', '?')} files, {fields.get('size', '?')} bytes"

    was, now = size(recorded), size(current)
    if was != now:
        return f"payload changed since it was stored: {was} -> {now}"
    return f"payload files were rewritten since it was stored ({now}, other modification times)"


def _check_row(
    storage: PayloadStorage, artifact: Artifact, checksums: bool
) -> VerifyProblem | None:
    key = artifact.key
    path = storage.path(key)
    if not storage.exists(key):
        return VerifyProblem(key, "missing", f"no payload at {storage.url(key)}")
    try:
        stat = storage.stat(path)
    except FileNotFoundError:
        return VerifyProblem(key, "missing", f"no payload at {storage.url(key)}")
    fingerprint_ok = artifact.fingerprint is None or stat.fingerprint == artifact.fingerprint
    if artifact.checksum and (checksums or not fingerprint_ok):
        digest = storage.checksum(path)
        if digest != artifact.checksum:
            return VerifyProblem(
                key, "corrupt", f"checksum {digest} differs from the recorded {artifact.checksum}"
            )
        return None
    if not fingerprint_ok:
        assert artifact.fingerprint is not None
        return VerifyProblem(
            key, "modified", _describe_change(artifact.fingerprint, stat.fingerprint)
        )
    return None


def verify(
    store: CacheStore,
    *,
    checksums: bool = True,
    progress: Progress | None = None,
    batch_size: int = 500,
) -> VerifyReport:
    """Check that every row has its payload and that the payload is what was stored.

    Each payload's fingerprint (file names, sizes, modification times or ETags) is compared
    with the one recorded at put time; where a sha256 checksum was recorded (``checksum=True``)
    the content is hashed and compared too, and decides. A problem is confirmed against a fresh
    read of the row, so a payload replaced by a concurrent put is not reported.

    Parameters
    ----------
    store : CacheStore
        The store to check (readonly stores too).
    checksums : bool
        Hash the content of payloads that have a recorded checksum (a full read of each).
    progress : callable, optional
        ``progress("verifying", done, total)``.
    batch_size : int
        Rows read from the index at a time.

    Returns
    -------
    VerifyReport
    """
    report = progress or _noop
    index, storage = store._index, store._storage
    with index.read() as conn:
        last_id, total = conn.execute(select(func.max(ARTIFACTS.c.id), func.count())).one()
    result = VerifyReport()
    after = -1
    while last_id is not None and after < last_id:
        with index.read() as conn:
            rows = conn.execute(
                select(ARTIFACTS)
                .where(ARTIFACTS.c.id > after, ARTIFACTS.c.id <= last_id)
                .order_by(ARTIFACTS.c.id)
                .limit(batch_size)
            ).all()
        if not rows:
            break
        after = rows[-1].id
        for row in rows:
            artifact = row_to_artifact(row)
            problem = _check_row(storage, artifact, checksums)
            if problem is not None:
                # a concurrent put or delete may have been swapping it: look again
                fresh = index.get(artifact.key)
                if fresh is not None and fresh.created_at == artifact.created_at:
                    problem = _check_row(storage, fresh, checksums)
                    if problem is not None:
                        result.problems.append(problem)
            result.checked += 1
            report("verifying", result.checked, int(total))
    result.problems.sort(key=lambda p: p.key)
    return result


def repair_missing(
    store: CacheStore, keys: Iterable[str], *, progress: Progress | None = None
) -> list[str]:
    """Drop the rows of ``keys`` whose payload is (still) gone; return the keys dropped.

    Each row is re-checked in the removing transaction: a key whose payload came back, or that
    was stored again meanwhile, is kept.

    Raises
    ------
    ReadonlyStoreError
        If the store is readonly.
    """
    _check_writable(store, "repair the index")
    report = progress or _noop
    index, storage = store._index, store._storage
    wanted = sorted(set(keys))
    dropped: list[str] = []
    for done, key in enumerate(wanted, 1):
        with index.write() as conn:
            found = index.fetch(conn, key, for_update=True)
            if found is not None and not storage.exists(key):
                index.remove(conn, key)
                dropped.append(key)
        report("repairing", done, len(wanted))
    return dropped


# -- eviction --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvictedItem:
    """An artifact evicted (or that would be): its key, size and last use."""

    key: str
    size_bytes: int
    last_used: datetime


@dataclass
class EvictReport:
    """What :func:`evict` did.

    Attributes
    ----------
    max_size : int
        The limit in bytes.
    size_before, size_after : int
        Total bytes of the store before and after (projected, with ``dry_run``).
    evicted : list
        The artifacts removed, least recently used first.
    dry_run : bool
        Whether nothing was removed.
    """

    max_size: int
    size_before: int
    size_after: int
    evicted: list[EvictedItem] = field(default_factory=list)
    dry_run: bool = False

    @property
    def freed_bytes(self) -> int:
        """Bytes freed (or that would be)."""
        return sum(item.size_bytes for item in self.evicted)


_LAST_USED = func.coalesce(ARTIFACTS.c.last_accessed_at, ARTIFACTS.c.created_at)


def evict(
    store: CacheStore,
    max_size: int | str,
    *,
    target: int | str | None = None,
    dry_run: bool = False,
    keep: Collection[str] = (),
    progress: Progress | None = None,
) -> EvictReport:
    """Remove least-recently-used artifacts until the store's payloads fit in ``max_size``.

    The size of the store is the sum of its rows' ``size_bytes`` (expired ones included). Expired
    artifacts go first, then the others by last use: the last recorded read, or the creation for
    an artifact never read. Only rows created before the eviction began are candidates, each
    re-read in the transaction that removes it (row first, then payload, as ``delete``).

    Parameters
    ----------
    store : CacheStore
        The store.
    max_size : int or str
        Evict only when the store is larger than this (bytes or ``"50GB"``).
    target : int or str, optional
        Evict down to this size (default: ``max_size``).
    dry_run : bool
        Only list what would be evicted.
    keep : collection of str
        Keys never evicted.
    progress : callable, optional
        ``progress("evicting", freed bytes, bytes to free)``.

    Returns
    -------
    EvictReport

    Raises
    ------
    ReadonlyStoreError
        If the store is readonly and ``dry_run`` is False.
    """
    limit = parse_size(max_size)
    goal = limit if target is None else min(parse_size(target), limit)
    if not dry_run:
        _check_writable(store, "evict artifacts")
    report = progress or _noop
    index, storage = store._index, store._storage
    store._flush_accesses()
    started = _now()
    before, _ = store_size(store)
    result = EvictReport(max_size=limit, size_before=before, size_after=before, dry_run=dry_run)
    if before <= limit:
        return result
    expired_first = case((ARTIFACTS.c.expires_at <= started, 0), else_=1)
    stmt = (
        select(
            ARTIFACTS.c.id,
            ARTIFACTS.c.key,
            ARTIFACTS.c.created_at,
            ARTIFACTS.c.size_bytes,
            _LAST_USED.label("last_used"),
        )
        .where(ARTIFACTS.c.created_at < started)
        .order_by(expired_first, _LAST_USED, ARTIFACTS.c.id)
    )
    size = before
    excess = before - goal
    with index.read() as conn:
        candidates = []
        planned = 0
        for row in conn.execute(stmt).yield_per(1000):
            if row.key in keep:
                continue
            candidates.append(row)
            planned += int(row.size_bytes or 0)
            if planned >= excess:
                break
    for row in candidates:
        if size <= goal:
            break
        nbytes = int(row.size_bytes or 0)
        last_used = row.last_used
        if isinstance(last_used, str):  # SQLite returns COALESCE() untyped
            last_used = datetime.fromisoformat(last_used)
        if last_used.tzinfo is None:
            last_used = last_used.replace(tzinfo=timezone.utc)
        item = EvictedItem(row.key, nbytes, last_used)
        if dry_run or _remove_row(index, storage, row.key, row.id, row.created_at):
            result.evicted.append(item)
            size -= nbytes
        report("evicting", before - size, excess)
    result.size_after = size if dry_run else store_size(store)[0]
    return result


class SizeGuard:
    """Keeps a store under its ``max_size`` after each put, cheaply.

    A running estimate of the store's size (the index's total, plus what this process put since)
    avoids a ``SUM`` query per put; the total is read again every ``recheck`` seconds (other
    processes write too) and whenever the estimate exceeds the limit. Over the limit, least
    recently used artifacts are evicted down to ``low_water`` (90 %) of it, so that a store at
    capacity does not evict on every put.

    Parameters
    ----------
    max_size : int
        The limit in bytes.
    low_water : float
        Fraction of ``max_size`` to evict down to.
    recheck : float
        Seconds after which the estimate is refreshed from the index.
    """

    def __init__(self, max_size: int, *, low_water: float = 0.9, recheck: float = 30.0) -> None:
        self.max_size = max_size
        self.low_water = low_water
        self.recheck = recheck
        self._lock = threading.Lock()
        self._estimate: int | None = None
        self._checked_at = float("-inf")

    def after_put(self, store: CacheStore, artifact: Artifact) -> EvictReport | None:
        """Account for a committed put; evict if the store is over its limit."""
        with self._lock:
            now = time.monotonic()
            if self._estimate is None or now - self._checked_at > self.recheck:
                self._estimate, _ = store_size(store)
                self._checked_at = now
            else:
                self._estimate += artifact.size_bytes or 0
            if self._estimate <= self.max_size:
                return None
            result = evict(
                store,
                self.max_size,
                target=max(1, int(self.max_size * self.low_water)),
                keep={artifact.key},
            )
            self._estimate = result.size_after
            self._checked_at = time.monotonic()
        if result.size_after > self.max_size:
            warnings.warn(
                f"the store {store.path!r} holds {format_size(result.size_after)} after "
                f"evicting what it could, more than its max_size {format_size(self.max_size)}: "
                f"the artifact {artifact.key!r} just written is "
                f"{format_size(artifact.size_bytes or 0)} on its own, or newer artifacts fill it;"
                " raise max_size",
                UserWarning,
                stacklevel=3,
            )
        return result
