"""``XpersistResult``: where and how a Prefect task's value is stored."""

from __future__ import annotations

import copy
import threading
from typing import Any

from ..models import DuplicateKeyEnum
from ..store import CacheStore

__all__ = ["XpersistResult"]


class XpersistResult:
    """Where and how :func:`~xpersist_sql.prefect.xpersist_task` stores values.

    The names are those of the 2021 ``xpersist.prefect.result.XpersistResult``.

    Parameters
    ----------
    store : CacheStore
        The store the values go to.
    serializer : str
        A registered serializer name, or ``"auto"`` to pick one by the value's type.
    serializer_dump_kwargs : dict, optional
        Keyword arguments of the serializer's dump (e.g. ``{"mode": "w"}`` for zarr).
    serializer_load_kwargs : dict, optional
        Keyword arguments of the serializer's load on a cache hit.

    Examples
    --------
    >>> import tempfile
    >>> from xpersist_sql import CacheStore
    >>> store = CacheStore(f"{tempfile.mkdtemp()}/my-cache")
    >>> result = XpersistResult(store, serializer="xarray.zarr",
    ...                         serializer_dump_kwargs={"mode": "w"})
    >>> result.serializer
    'xarray.zarr'
    """

    def __init__(
        self,
        store: CacheStore,
        serializer: str = "auto",
        serializer_dump_kwargs: dict[str, Any] | None = None,
        serializer_load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(store, CacheStore):
            raise TypeError(
                f"XpersistResult needs a CacheStore, got {type(store).__name__}; create one with "
                "CacheStore('/path/to/cache')"
            )
        self.store = store
        self.serializer = serializer
        self.serializer_dump_kwargs: dict[str, Any] = dict(serializer_dump_kwargs or {})
        self.serializer_load_kwargs: dict[str, Any] = dict(serializer_load_kwargs or {})
        self._overwriting: CacheStore | None = None
        self._lock = threading.Lock()

    @property
    def cache_store(self) -> CacheStore:
        """The store (the 2021 attribute name)."""
        return self.store

    def overwriting_store(self) -> CacheStore:
        """Return the same store, opened with ``on_duplicate_key="overwrite"`` (for refreshes).

        A refresh, or a recomputation after a stored payload turned out unreadable, must replace
        the row whatever the store's own policy says.
        """
        if self.store.on_duplicate_key is DuplicateKeyEnum.overwrite:
            return self.store
        with self._lock:
            if self._overwriting is None:
                twin = copy.copy(self.store)  # a fresh store from the pickled state
                twin.on_duplicate_key = DuplicateKeyEnum.overwrite
                self._overwriting = twin
            return self._overwriting

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(store={self.store!r}, serializer={self.serializer!r}, "
            f"serializer_dump_kwargs={self.serializer_dump_kwargs!r}, "
            f"serializer_load_kwargs={self.serializer_load_kwargs!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "serializer": self.serializer,
            "serializer_dump_kwargs": self.serializer_dump_kwargs,
            "serializer_load_kwargs": self.serializer_load_kwargs,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]
