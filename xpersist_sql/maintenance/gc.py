"""Garbage collection: expired artifacts, orphan payloads, crashed writers' leftovers.

Rules that make it safe while other processes read and write the store:

- **Only a store.** gc refuses a directory that carries no store marker, and never descends into
  a nested store (a directory holding its own ``.xpersist_sql``): those are never orphans.
- **Rows first, payload second.** An expired artifact is removed exactly like ``delete`` does
  it: its row is deleted in a write transaction that also moves the payload to the trash, and the
  trash is emptied after the commit, so no reader sees a row without its payload. Rows whose key
  is not a valid key (``../x``, an absolute path) are never acted on: ``verify`` reports them.
- **Only what existed when the work began.** Only rows created before gc started are removed,
  each re-read in the removing transaction: a row replaced meanwhile is left alone.
- **Grace period for files.** A staging directory, a trash entry or an orphan payload is removed
  only when nothing in it changed (modification or status change time: a rename counts) for
  ``older_than`` (1 hour by default) *before the scan started*. An orphan is checked again
  against the index right before it goes, and restored if a row for it appeared meanwhile. A
  payload that still has a 2021 xpersist sidecar is never an orphan, nor is that directory.
- **Tokens last.** On an object store, the commit token of a payload that was removed behind the
  store's back (nothing at its path, no row naming it) goes once it is older than
  ``older_than``, under the write lock of its key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ..backend import StoreBackend
from ..db.index import ArtifactIndex, key_prefixes
from ..errors import InvalidKeyError, StoreNotFoundError
from ..legacy import LEGACY_METADATA_DIR, LEGACY_SUFFIX
from ..storage import (
    COMMIT_TOKEN,
    HIDDEN_DIR,
    TOKEN_SUFFIX,
    PayloadStorage,
    split_fingerprint,
    validate_key,
)
from ..units import parse_duration

__all__ = ["DEFAULT_GRACE", "GcItem", "GcReport", "Progress", "gc"]

#: ``progress(phase, done, total)``: called as work advances (``total`` may be 0 if unknown).
Progress = Callable[[str, int, int], None]

#: Default grace period of gc for staging leftovers, trash entries and orphan payloads.
DEFAULT_GRACE = timedelta(hours=1)


def _noop(phase: str, done: int, total: int) -> None:
    return None


def _now() -> datetime:
    return datetime.now(timezone.utc)


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


@dataclass(frozen=True)
class GcItem:
    """One thing gc removes (or, in a dry run, would remove).

    Attributes
    ----------
    kind : {"expired", "orphan", "staging", "trash", "token", "invalid"}
        An expired artifact (row and payload), a payload without a row, a crashed writer's
        staging directory, a leftover of a replaced / deleted payload, the commit token of a
        payload removed behind the store's back (object stores), or (only ever skipped) an
        expired row whose key is not a valid key.
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
    """What :func:`~xpersist_sql.maintenance.gc.gc` found and removed.

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


def _legacy_sidecar(storage: PayloadStorage, relative: str) -> str:
    return storage.path(f"{LEGACY_METADATA_DIR}/{relative}{LEGACY_SUFFIX}")


def _find_orphans(storage: PayloadStorage, keys: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """Top-most paths under the root that no key covers (the hidden directories excluded)."""
    ancestors = {prefix for key in keys for prefix in key_prefixes(key)}
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
            try:
                validate_key(relative)
            except InvalidKeyError:
                continue  # a name no key could have: not the store's
            if info.get("type") == "directory" and storage.holds_store(relative):
                continue  # a nested store (or a directory holding one) is never an orphan
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
    if not storage.check_internal_dir(name):  # never lists through a link
        return []
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
    backend: StoreBackend,
    *,
    older_than: timedelta | int | float | str = DEFAULT_GRACE,
    dry_run: bool = False,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> GcReport:
    """Remove expired artifacts, orphan payloads, crashed writers' staging and trash leftovers.

    Safe while other processes use the store: see the module's rules. Nothing created or changed
    after the scan started is removed; files (staging, trash, orphans) must also be unchanged for
    ``older_than`` before the scan started.

    Parameters
    ----------
    backend : StoreBackend
        The store to clean.
    older_than : timedelta, float or str
        Grace period for files (default 1 hour). ``0`` removes every leftover older than the
        scan, a live writer's staging directory included: only for a store nobody writes to.
        Expired artifacts are removed whatever their age.
    dry_run : bool
        Only list what would be removed.
    progress : callable, optional
        ``progress(phase, done, total)``.
    now : datetime, optional
        The clock: when the scan starts (default: now). Tests pass a later time instead of
        waiting for the grace period.

    Returns
    -------
    GcReport

    Raises
    ------
    StoreNotFoundError
        If the root carries no store marker.
    """
    grace = parse_duration(older_than)
    report = progress or _noop
    storage = backend.storage
    if backend.marker() is None:
        backend.require_store()  # an older index: its SchemaVersionError says how to upgrade
        raise StoreNotFoundError(
            f"refusing to run gc on {storage.url()!r}: it carries no store marker, so nothing "
            "in it is known to belong to a store"
        )
    index = backend.index()
    if index is None:  # pragma: no cover - a marker always resolves to rows or an error
        return GcReport(dry_run=dry_run)
    started = now or _now()
    cutoff = (started - grace).timestamp()
    result = GcReport(dry_run=dry_run, started_at=started)

    # 1. expired artifacts: row first, then payload
    expired = index.expired_rows(started)
    for done, row in enumerate(expired, 1):
        item = GcItem("expired", row.key, int(row.size_bytes or 0))
        try:
            validate_key(row.key)
            removed = dry_run or (
                backend.remove_if(row.key, row.id, row.created_at, lambda a: a.is_expired(started))
                is not None
            )
        except InvalidKeyError:  # never acted on; ``verify`` reports it
            removed, item = False, GcItem("invalid", row.key, item.size_bytes)
        (result.items if removed else result.skipped).append(item)
        report("expired artifacts", done, len(expired))

    # 2. orphan payloads: no row covers them
    report("scanning payloads", 0, 0)
    orphans = _find_orphans(storage, index.all_keys())
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
    walks = _Walks(index)
    for kind in ("staging", "trash"):
        entries = _internal_entries(storage, kind)
        for done, (relative, info) in enumerate(entries, 1):
            path = storage.path(relative)
            tree = _tree(storage, path, info)
            if tree is not None and tree.newest is not None and tree.newest < cutoff:
                item = GcItem(kind, relative, tree.size_bytes)
                if _displaced_payload(walks, storage, path, kind) is not None:
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

    # 5. commit tokens of payloads removed behind the store's back (object stores)
    if not storage.is_local:
        tokens = _lone_tokens(storage, index)
        for done, (relative, token, info) in enumerate(tokens, 1):
            stamps = _times(info)
            if stamps and max(stamps) < cutoff:
                item = GcItem("token", _relative(storage, token), int(info.get("size") or 0))
                if dry_run or _remove_token(backend, index, relative, token, cutoff):
                    result.items.append(item)
                else:
                    result.skipped.append(item)
            report("commit tokens", done, len(tokens))
    return result


def _lone_tokens(
    storage: PayloadStorage, index: ArtifactIndex
) -> list[tuple[str, str, dict[str, Any]]]:
    """``(payload path relative to the root, token path, token info)`` of the lone tokens.

    A token is lone when nothing lies at its payload's path and no row names that path (a row
    whose payload went missing keeps its token: ``verify`` reports the row).
    """
    base = storage.internal_dir(COMMIT_TOKEN).rstrip("/")
    storage.fs.invalidate_cache(base)
    try:
        found = storage.fs.find(base, detail=True)
    except FileNotFoundError:  # pragma: no cover - find answers {} on most filesystems
        return []
    lone = []
    for name, info in sorted(found.items()):
        if not (name.startswith(base + "/") and name.endswith(TOKEN_SUFFIX)):
            continue
        relative = name[len(base) + 1 : -len(TOKEN_SUFFIX)]
        if _payload_absent(storage, index, relative):
            lone.append((relative, name, info))
    return lone


def _payload_absent(storage: PayloadStorage, index: ArtifactIndex, relative: str) -> bool:
    internal = relative == HIDDEN_DIR or relative.startswith(HIDDEN_DIR + "/")
    if not internal:
        try:
            validate_key(relative)
        except InvalidKeyError:
            return False  # a name no payload could have: not the store's to judge
        if index.covered(relative):
            return False
    path = storage.path(relative)
    storage.fs.invalidate_cache(path)
    return not storage.fs.exists(path)


def _remove_token(
    backend: StoreBackend, index: ArtifactIndex, relative: str, token: str, cutoff: float
) -> bool:
    """Remove a lone token under its key's write lock, if it is still lone and old."""
    storage = backend.storage
    with backend.writing(relative):  # a writer of the key publishes its token under it
        storage.fs.invalidate_cache(token)
        try:
            stamps = _times(storage.fs.info(token))
        except FileNotFoundError:
            return False
        if not stamps or max(stamps) >= cutoff or not _payload_absent(storage, index, relative):
            return False
        storage.purge(token)
    return True


class _Walks:
    """The store's rows by walk fingerprint, read once per gc run and only if needed."""

    def __init__(self, index: ArtifactIndex) -> None:
        self.index = index
        self._keys: dict[str, list[str]] | None = None

    def keys(self, walk: str) -> list[str]:
        if self._keys is None:
            self._keys = {}
            last_id, _total = self.index.id_range()
            after = -1
            while last_id is not None and after < last_id:
                rows = self.index.batch_after(after, last_id, 1000)
                if not rows:
                    break
                after = rows[-1][0]
                for _row_id, artifact in rows:
                    recorded = split_fingerprint(artifact.fingerprint)[0]
                    if recorded is not None:
                        self._keys.setdefault(recorded, []).append(artifact.key)
        return self._keys.get(walk, [])


def _displaced_payload(walks: _Walks, storage: PayloadStorage, path: str, kind: str) -> str | None:
    """Return the key whose row describes the payload at ``path`` but not the one at its key.

    That is a payload a writer killed mid-publish moved into its staging entry or the trash;
    gc keeps it so that the next read of the key can put it back.
    """
    try:
        if kind == "staging":
            payload = storage.staged_payload(path)
            if payload is None:
                return None
            path = payload
        fingerprint = storage.stat(path).fingerprint
    except (FileNotFoundError, NotADirectoryError):
        return None
    for key in walks.keys(fingerprint):
        try:
            if storage.stat(storage.path(key)).fingerprint == fingerprint:
                continue
        except (FileNotFoundError, NotADirectoryError):
            pass
        return str(key)
    return None


def _remove_orphan(
    index: ArtifactIndex, storage: PayloadStorage, relative: str, cutoff: float
) -> bool:
    if index.covered(relative):
        return False
    again = _tree(storage, storage.path(relative))
    if again is None or again.newest is None or again.newest >= cutoff:
        return False
    try:
        trash = storage.take(relative)
    except InvalidKeyError:  # a symlink on the way, a nested store: not the store's
        return False
    if trash is None:
        return False
    claimed = index.covered(relative)
    if claimed:  # a put committed a row for it while we moved it: give it back
        if not storage.exists(relative):
            storage.restore(trash, relative)
        else:
            storage.purge(trash)
        return False
    storage.purge(trash)
    return True
