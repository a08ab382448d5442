"""Cheap last-access recording for LRU eviction: throttled per key, written in batches.

A read must not become a write transaction. :class:`AccessLog` keeps, per process:

- the keys whose access it recorded less than ``resolution`` ago (60 s): a repeated read of such
  a key costs one dictionary lookup and writes nothing;
- the accesses not yet written, flushed as one ``UPDATE ... executemany`` transaction at most
  every ``flush_interval`` seconds (5 s), when ``max_pending`` (1000) keys wait, before an
  eviction, and on :meth:`CacheStore.close <xpersist_sql.CacheStore.close>`.

The first access of a process is written at once, so a short-lived process records at least
that. A crash loses at most the last few seconds of accesses: eviction order is approximate by
design. A failed flush (a locked or readonly database; on PostgreSQL, rows locked by a writer for
more than 2 s) is logged, never raised into a read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from sqlalchemy import Engine, bindparam, or_, update
from sqlalchemy.exc import SQLAlchemyError

from .._process import current_pid
from .engine import WRITE_OPTION
from .tables import ARTIFACTS

__all__ = ["AccessLog"]

_log = logging.getLogger(__name__)

_UPDATE = (
    update(ARTIFACTS)
    .where(
        ARTIFACTS.c.store_id == bindparam("store"),
        ARTIFACTS.c.key == bindparam("k"),
        or_(
            ARTIFACTS.c.last_accessed_at.is_(None),
            ARTIFACTS.c.last_accessed_at < bindparam("at"),
        ),
    )
    .values(last_accessed_at=bindparam("at"))
)


class AccessLog:
    """Per-process, throttled and batched recording of ``last_accessed_at``.

    Parameters
    ----------
    store_id : int
        The store whose rows are updated (its row id in the index).
    resolution : float
        Seconds during which further reads of a key are not recorded again.
    flush_interval : float
        Seconds between two writes of the pending accesses.
    max_pending : int
        Write at once when this many keys wait.
    """

    def __init__(
        self,
        store_id: int,
        resolution: float = 60.0,
        flush_interval: float = 5.0,
        max_pending: int = 1000,
    ) -> None:
        self.store_id = store_id
        self.resolution = resolution
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = current_pid()
        self._recorded: dict[str, float] = {}
        self._pending: dict[str, datetime] = {}
        self._last_flush = float("-inf")

    @property
    def pending(self) -> int:
        """Number of accesses not written yet."""
        return len(self._pending)

    def record(self, key: str, engine: Callable[[], Engine]) -> None:
        """Note a read of ``key``; write the pending reads when they are due.

        ``engine`` is called only when a write is due (it may open the index).
        """
        now = time.monotonic()
        with self._lock:
            if self._pid != current_pid():
                self._reset()  # a forked child starts afresh
            seen = self._recorded.get(key)
            if seen is not None and now - seen < self.resolution:
                return
            if len(self._recorded) > 100_000:
                self._recorded.clear()
            self._recorded[key] = now
            self._pending[key] = datetime.now(timezone.utc)
            due = (
                now - self._last_flush >= self.flush_interval
                or len(self._pending) >= self.max_pending
            )
        if due:
            self.flush(engine())

    def flush(self, engine: Engine) -> int:
        """Write the pending accesses in one transaction; return how many were written."""
        with self._lock:
            if self._pid != current_pid():
                self._reset()
            pending, self._pending = self._pending, {}
            self._last_flush = time.monotonic()
        if not pending:
            return 0
        rows = [{"store": self.store_id, "k": key, "at": at} for key, at in sorted(pending.items())]
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(**{WRITE_OPTION: True})
                with conn.begin():
                    if conn.dialect.name == "postgresql":
                        # a row locked by a writer must not hold up a read for long
                        conn.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
                    conn.execute(_UPDATE, rows)
        except SQLAlchemyError as exc:
            _log.warning(
                "could not record the last access of %d artifacts in %s (%s); eviction order "
                "may be less accurate",
                len(rows),
                engine.url.render_as_string(hide_password=True),
                exc,
            )
            return 0
        return len(rows)
