"""Size-bounded eviction: least recently used artifacts go first, expired ones before them.

Only rows created before the eviction began are candidates, each re-read in the transaction that
removes it (row first, then payload, as ``delete``). Rows whose key is not a valid key are never
acted on. :class:`SizeGuard` runs it after the puts of a store opened with ``max_size``.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..backend import StoreBackend
from ..errors import InvalidKeyError, StoreNotFoundError
from ..models import Artifact
from ..storage import validate_key
from ..units import format_size, parse_size

__all__ = ["EvictReport", "EvictedItem", "SizeGuard", "evict"]

Progress = Callable[[str, int, int], None]


def _noop(phase: str, done: int, total: int) -> None:
    return None


def _now() -> datetime:
    return datetime.now(timezone.utc)


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
    skipped : list
        Candidates whose row has an invalid key: never acted on (``verify`` reports them).
    """

    max_size: int
    size_before: int
    size_after: int
    evicted: list[EvictedItem] = field(default_factory=list)
    dry_run: bool = False
    skipped: list[EvictedItem] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        """Bytes freed (or that would be)."""
        return sum(item.size_bytes for item in self.evicted)


def evict(
    backend: StoreBackend,
    max_size: int | str,
    *,
    target: int | str | None = None,
    dry_run: bool = False,
    keep: Collection[str] = (),
    progress: Progress | None = None,
    now: datetime | None = None,
) -> EvictReport:
    """Remove least-recently-used artifacts until the store's payloads fit in ``max_size``.

    The size of the store is the sum of its rows' ``size_bytes`` (expired ones included). Expired
    artifacts go first, then the others by last use: the last recorded read, or the creation for
    an artifact never read. Only rows created before the eviction began are candidates, each
    re-read in the transaction that removes it (row first, then payload, as ``delete``).

    Parameters
    ----------
    backend : StoreBackend
        The store.
    max_size, target, dry_run, keep, progress, now
        As in :meth:`CacheStore.evict <xpersist_sql.CacheStore.evict>`; ``max_size`` is
        required here.

    Returns
    -------
    EvictReport

    Raises
    ------
    StoreNotFoundError
        If the root carries no store marker.
    """
    limit = parse_size(max_size, allow_zero=True)  # 0: evict everything not kept
    goal = limit if target is None else min(parse_size(target, allow_zero=True), limit)
    report = progress or _noop
    if backend.marker() is None:
        backend.require_store()
        raise StoreNotFoundError(
            f"refusing to evict from {backend.storage.url()!r}: it carries no store marker"
        )
    index = backend.index()
    empty = EvictReport(max_size=limit, size_before=0, size_after=0, dry_run=dry_run)
    if index is None:  # pragma: no cover - a marker always resolves to rows or an error
        return empty
    backend.flush_accesses()
    started = now or _now()
    before, _ = index.total_size()
    result = EvictReport(max_size=limit, size_before=before, size_after=before, dry_run=dry_run)
    if before <= limit:
        return result
    size = before
    excess = before - goal
    candidates = index.eviction_candidates(started, excess, keep)
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
        try:
            validate_key(row.key)
            removed = dry_run or backend.remove_if(row.key, row.id, row.created_at) is not None
        except InvalidKeyError:  # never acted on; ``verify`` reports it
            result.skipped.append(item)
            continue
        if removed:
            result.evicted.append(item)
            size -= nbytes
        report("evicting", before - size, excess)
    result.size_after = size if dry_run else index.total_size()[0]
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

    def after_put(self, backend: StoreBackend, artifact: Artifact) -> EvictReport | None:
        """Account for a committed put; evict if the store is over its limit."""
        with self._lock:
            now = time.monotonic()
            if self._estimate is None or now - self._checked_at > self.recheck:
                index = backend.index()
                self._estimate = 0 if index is None else index.total_size()[0]
                self._checked_at = now
            else:
                self._estimate += artifact.size_bytes or 0
            if self._estimate <= self.max_size:
                return None
            result = evict(
                backend,
                self.max_size,
                target=max(1, int(self.max_size * self.low_water)),
                keep={artifact.key},
            )
            self._estimate = result.size_after
            self._checked_at = time.monotonic()
        if result.size_after > self.max_size:
            warnings.warn(
                f"the store {backend.storage.url()!r} holds {format_size(result.size_after)} after "
                f"evicting what it could, more than its max_size {format_size(self.max_size)}: "
                f"the artifact {artifact.key!r} just written is "
                f"{format_size(artifact.size_bytes or 0)} on its own, or newer artifacts fill it;"
                " raise max_size",
                UserWarning,
                stacklevel=3,
            )
        return result
