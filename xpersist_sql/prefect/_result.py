"""``XpersistResult``: where and how a Prefect task's value is stored."""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from typing import Any

from ..metadata import json_metadata
from ..models import DuplicateKeyEnum
from ..serializers import get_serializer
from ..store import CacheStore

__all__ = ["XpersistResult", "check_serializer_settings"]


def check_serializer_settings(
    serializer: str,
    dump_kwargs: Mapping[str, Any] | None,
    load_kwargs: Mapping[str, Any] | None,
    where: str,
) -> None:
    """Check a declared serializer and its settings before any task body runs.

    The serializer must be registered (or ``"auto"``) with its packages installed, and the
    dump/load keyword arguments must survive the JSON round trip they make through the index.

    Parameters
    ----------
    serializer : str
        A registered serializer name, or ``"auto"``.
    dump_kwargs, load_kwargs : dict, optional
        The serializer's keyword arguments.
    where : str
        What is being declared, for the messages (``"xpersist_task 'get_data'"``).

    Raises
    ------
    SerializerNotFoundError
        An unknown serializer (the message lists the known ones).
    MissingDependencyError
        The serializer needs a package that is not installed (the message names the extra).
    TypeError
        A name that is not a str, or kwargs that are not a dict.
    ValueError
        Kwargs that do not survive a JSON round trip (the message names the field).
    """
    if not isinstance(serializer, str):
        raise TypeError(f"{where}: serializer must be a str, got {type(serializer).__name__}")
    if serializer != "auto":
        get_serializer(serializer).check_requirements()
    for name, kwargs in (("dump_kwargs", dump_kwargs), ("load_kwargs", load_kwargs)):
        json_metadata(kwargs, name, f"{where}: ")  # as put checks them, before any body runs


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

    Raises
    ------
    SerializerNotFoundError, MissingDependencyError
        An unknown serializer, or one whose packages are not installed: checked here, before
        any task body runs.
    ValueError
        Kwargs that do not survive a JSON round trip (the message names the field).

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
        check_serializer_settings(
            serializer, serializer_dump_kwargs, serializer_load_kwargs, "XpersistResult"
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
