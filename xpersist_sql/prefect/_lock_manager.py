"""A Prefect 3 ``LockManager`` backed by :meth:`CacheStore.lock`, for ``SERIALIZABLE`` isolation.

Prefect's transactions with ``isolation_level="SERIALIZABLE"`` take a lock on the transaction's
key before reading or computing, so that of several workers only one computes a missing value.
Prefect ships in-memory and file-system lock managers, good for one machine; this one keeps its
locks where the store's index is (PostgreSQL advisory locks, or file locks next to a SQLite
index), so workers on several machines sharing one store exclude each other, and a lock is freed
when its holder's process dies.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from prefect.locking.protocol import LockManager

from ..db.locks import KeyLock, wait_until_free
from ..errors import LockTimeoutError
from ..store import CacheStore

__all__ = ["StoreLockManager"]


@dataclass
class _Held:
    holder: str
    lock: KeyLock
    timer: threading.Timer | None


class StoreLockManager(LockManager):
    """Prefect ``LockManager`` whose locks are :meth:`CacheStore.lock` locks.

    Parameters
    ----------
    store : CacheStore
        The store whose index keeps the locks. Lock keys share the namespace of
        ``store.lock(key)``, so a Prefect transaction on key ``"ds.zarr"`` and a plain
        ``with store.lock("ds.zarr")`` exclude each other.

    Examples
    --------
    >>> from prefect.cache_policies import INPUTS  # doctest: +SKIP
    >>> policy = INPUTS.configure(
    ...     isolation_level="SERIALIZABLE", lock_manager=StoreLockManager(store)
    ... )  # doctest: +SKIP
    """

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self._held: dict[str, _Held] = {}
        self._mutex = threading.Lock()

    # -- identity and pickling (Prefect compares and ships lock managers) ------------------------
    def _identity(self) -> tuple[str, str]:
        return (self.store.path, self.store.database_url)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoreLockManager):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Locks belong to this process's connections and files: a copy starts with none.
        return {"store": self.store}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["store"])  # type: ignore[misc]

    # -- the LockManager protocol ----------------------------------------------------------------
    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Take the lock on ``key`` for ``holder``; False if not free within ``acquire_timeout``.

        ``hold_timeout`` releases the lock that many seconds later if the holder has not. A
        holder asking again for a lock it holds gets True at once.
        """
        with self._mutex:
            held = self._held.get(key)
            if held is not None and held.holder == holder:
                return True
        lock = self.store.key_lock(key)
        try:
            lock.acquire(acquire_timeout)
        except LockTimeoutError:
            return False
        timer = None
        if hold_timeout is not None:
            timer = threading.Timer(hold_timeout, self._expire, args=(key, lock))
            timer.daemon = True
        with self._mutex:
            self._held[key] = _Held(holder, lock, timer)
        if timer is not None:
            timer.start()
        return True

    async def aacquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Async :meth:`acquire_lock` (waits in a worker thread)."""
        return await asyncio.to_thread(
            self.acquire_lock, key, holder, acquire_timeout, hold_timeout
        )

    def _expire(self, key: str, lock: KeyLock) -> None:
        with self._mutex:
            held = self._held.get(key)
            if held is None or held.lock is not lock:
                return
            del self._held[key]
        lock.release()

    def release_lock(self, key: str, holder: str) -> None:
        """Release ``holder``'s lock on ``key``.

        Raises
        ------
        ValueError
            If ``holder`` does not hold the lock on ``key`` (Prefect's own managers do the same).
        """
        with self._mutex:
            held = self._held.get(key)
            if held is None or held.holder != holder:
                raise ValueError(
                    f"No lock held by {holder} for transaction with key {key} in store "
                    f"{self.store.path!r}"
                )
            del self._held[key]
        if held.timer is not None:
            held.timer.cancel()
        held.lock.release()

    def is_locked(self, key: str) -> bool:
        """Whether any worker, in any process, holds the lock on ``key``."""
        with self._mutex:
            if key in self._held:
                return True
        return self.store.key_lock(key).locked()

    def is_lock_holder(self, key: str, holder: str) -> bool:
        """Whether ``holder`` holds the lock on ``key`` (through this manager)."""
        with self._mutex:
            held = self._held.get(key)
            return held is not None and held.holder == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until nobody holds the lock on ``key``; False if still held at ``timeout``."""
        return wait_until_free(self.store.key_lock(key), timeout)

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Async :meth:`wait_for_lock`."""
        return await asyncio.to_thread(self.wait_for_lock, key, timeout)
