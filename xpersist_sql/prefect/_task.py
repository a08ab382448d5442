"""``xpersist_task``: a Prefect 3 task whose value lives in a :class:`CacheStore`.

The task's function is wrapped: the wrapper captures the run context, renders the target, and
either loads the stored value (returning ``Completed(name="Cached")`` without running the body) or
runs the body and puts its value in the store. Prefect's own caching and result persistence are
turned off for these tasks (``cache_policy=NO_CACHE``, ``persist_result=False``): the value is
stored once, by the store, in its native format.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

from prefect import State, Task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.results import ResultRecord  # type: ignore[attr-defined]
from prefect.states import Completed

from ..db.locks import KeyLock
from ..errors import ArtifactNotFoundError, PayloadLoadError, PayloadMissingError
from ..storage import validate_key
from ..store import CacheStore
from ._context import RunContext, Target, render_target
from ._result import XpersistResult

__all__ = ["CACHED_STATE_NAME", "REFRESH_ENV", "XpersistTask", "xpersist_task"]

P = ParamSpec("P")
R = TypeVar("R")

#: Set to ``1`` to recompute (and overwrite) every xpersist task of a run.
REFRESH_ENV = "XPERSIST_SQL_REFRESH"
#: Name of the ``Completed`` state of a cache hit.
CACHED_STATE_NAME = "Cached"

_TRUE = {"1", "true", "yes", "on"}
_MODULE_LOGGER = logging.getLogger("xpersist_sql.prefect")

#: Prefect options that would cache or persist the value a second time, and what to use instead.
_CONFLICTING_OPTIONS = {
    "cache_policy": "target=",
    "cache_key_fn": "target=",
    "cache_expiration": "ttl=",
    "refresh_cache": "refresh=",
    "result_storage_key": "target=",
    "result_storage": "XpersistResult(store)",
    "result_serializer": "serializer=",
}


def _check_options(options: dict[str, Any]) -> None:
    for name, instead in _CONFLICTING_OPTIONS.items():
        if name in options and options[name] is not None:
            raise TypeError(
                f"xpersist_task does not take Prefect's {name}=: the value is cached in the "
                f"CacheStore under its target; use {instead} instead"
            )
    if options.get("persist_result"):
        raise TypeError(
            "xpersist_task does not take persist_result=True: the value is already stored in the "
            "CacheStore in its native format, and Prefect would write a second, pickled copy"
        )


def refresh_requested(refresh: bool = False) -> bool:
    """Return whether a task must recompute: ``refresh=True`` or ``$XPERSIST_SQL_REFRESH=1``."""
    return refresh or os.environ.get(REFRESH_ENV, "").strip().lower() in _TRUE


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return _MODULE_LOGGER


@dataclass(frozen=True)
class _Spec:
    """What one xpersist task stores, where, and how."""

    fn: Callable[..., Any]
    name: str
    result: XpersistResult
    target: Target
    serializer: str
    dump_kwargs: dict[str, Any] = field(default_factory=dict)
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    refresh: bool = False
    ttl: timedelta | float | None = None
    serializable: bool = False

    @property
    def store(self) -> CacheStore:
        return self.result.store

    def target_text(self) -> str:
        if callable(self.target):
            return getattr(self.target, "__qualname__", repr(self.target))
        return self.target


@dataclass
class _Call:
    """One call of an xpersist task: its context, key and the outcome of the lookup."""

    spec: _Spec
    context: RunContext
    key: str
    refresh: bool
    broken: bool = False

    @classmethod
    def begin(cls, spec: _Spec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call:
        """Capture the context and render the key (before the body runs)."""
        context = RunContext.capture(spec.fn, spec.name, args, kwargs)
        key = validate_key(render_target(spec.target, context), store=spec.store.path)
        return cls(spec=spec, context=context, key=key, refresh=refresh_requested(spec.refresh))

    @property
    def location(self) -> str:
        """Where the payload lives: ``<store path>/<key>``."""
        return f"{self.spec.store.path.rstrip('/')}/{self.key}"

    def lookup(self) -> tuple[bool, Any]:
        """Load the stored value: ``(True, value)`` on a valid hit, ``(False, None)`` else.

        A row whose payload is gone or unreadable is a miss (logged as a warning) that the next
        put overwrites.
        """
        if self.refresh:
            return False, None
        store = self.spec.store
        try:
            value = store.get(self.key, load_kwargs=self.spec.load_kwargs or None)
        except ArtifactNotFoundError:
            return False, None
        except (PayloadMissingError, PayloadLoadError) as exc:
            self.broken = True
            _logger().warning(
                "the artifact %r in store %r cannot be loaded, recomputing it: %s",
                self.key,
                store.path,
                exc,
            )
            return False, None
        if not self.context.in_task_run:
            # Inside a task run Prefect itself logs the final state, whose message says where
            # the value was loaded from; a second log record would cost ~2 ms per hit.
            _MODULE_LOGGER.info("loaded from cache at %s", self.location)
        return True, value

    def save(self, value: Any) -> None:
        """Put the body's value under the key (overwriting on refresh or a broken hit)."""
        spec = self.spec
        if spec.store.readonly:
            _logger().warning(
                "the store %r is readonly: the value of %r is returned but not stored",
                spec.store.path,
                self.key,
            )
            return
        store = spec.result.overwriting_store() if self.refresh or self.broken else spec.store
        metadata = {**self.context.metadata(), "target": spec.target_text()}
        store.put(
            self.key,
            value,
            serializer=spec.serializer,
            dump_kwargs=spec.dump_kwargs or None,
            load_kwargs=spec.load_kwargs or None,
            additional_metadata=metadata,
            ttl=spec.ttl,
        )
        _logger().info("stored result at %s", self.location)

    def lock(self) -> KeyLock | None:
        """Return the store's (unacquired) lock on the key for ``SERIALIZABLE`` tasks, or None."""
        return self.spec.store.key_lock(self.key) if self.spec.serializable else None

    def hit(self, value: Any) -> Any:
        """Return what the wrapper returns on a hit: a ``Cached`` state inside a task run."""
        if not self.context.in_task_run:
            return value
        message = f"loaded from cache at {self.location}"
        return Completed(name=CACHED_STATE_NAME, data=value, message=message)


def _sync_wrapper(spec: _Spec) -> Callable[..., Any]:
    fn = spec.fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = _Call.begin(spec, args, kwargs)
        found, value = call.lookup()
        if found:
            return call.hit(value)
        lock = call.lock()
        if lock is not None:
            lock.acquire()
        try:
            if lock is not None:
                # another run may have stored the value while this one waited for the lock
                found, value = call.lookup()
                if found:
                    return call.hit(value)
            value = fn(*args, **kwargs)
            if not isinstance(value, State):
                call.save(value)
            return value
        finally:
            if lock is not None:
                lock.release()

    return wrapper


def _async_wrapper(spec: _Spec) -> Callable[..., Coroutine[Any, Any, Any]]:
    fn = spec.fn

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = _Call.begin(spec, args, kwargs)
        found, value = await asyncio.to_thread(call.lookup)
        if found:
            return call.hit(value)
        lock = call.lock()
        if lock is not None:
            await asyncio.to_thread(lock.acquire)
        try:
            if lock is not None:
                found, value = await asyncio.to_thread(call.lookup)
                if found:
                    return call.hit(value)
            value = await fn(*args, **kwargs)
            if not isinstance(value, State):
                await asyncio.to_thread(call.save, value)
            return value
        finally:
            if lock is not None:
                lock.release()

    return wrapper


def _unwrap(value: Any) -> Any:
    """Return the value of a ``Cached`` state (a direct call returns the state itself)."""
    if isinstance(value, State) and value.name == CACHED_STATE_NAME and value.is_completed():
        data = value.data
        if isinstance(data, ResultRecord):
            return data.result
        return value.result()
    return value


async def _unwrap_async(awaitable: Awaitable[Any]) -> Any:
    return _unwrap(await awaitable)


class XpersistTask(Task[P, R], Generic[P, R]):
    """A Prefect task made by :func:`xpersist_task`.

    It behaves as a :class:`prefect.Task`; a direct call that hits the cache returns the stored
    value (not the ``Cached`` state), and :meth:`with_options` keeps it an ``XpersistTask``.
    """

    def __call__(  # type: ignore[override]
        self,
        *args: Any,
        return_state: bool = False,
        wait_for: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Run the task and return its value (or its final state with ``return_state=True``)."""
        task = cast("Task[..., Any]", self)
        if return_state:
            return Task.__call__(task, *args, return_state=True, wait_for=wait_for, **kwargs)
        out: Any = Task.__call__(task, *args, wait_for=wait_for, **kwargs)
        if inspect.isawaitable(out):
            return _unwrap_async(out)
        return _unwrap(out)

    def with_options(self, **options: Any) -> XpersistTask[P, R]:
        """Return a copy with other Prefect options (e.g. ``tags``, ``retries``, ``name``).

        The caching options stay those given to :func:`xpersist_task`.
        """
        _check_options(options)
        new = Task.with_options(cast("Task[P, R]", self), **options)
        new.__class__ = type(self)
        return cast(XpersistTask[P, R], new)


@overload
def xpersist_task(
    fn: Callable[P, R],
    *,
    target: Target,
    result: XpersistResult | None = None,
    store: CacheStore | None = None,
    serializer: str | None = None,
    dump_kwargs: dict[str, Any] | None = None,
    load_kwargs: dict[str, Any] | None = None,
    refresh: bool = False,
    ttl: timedelta | float | None = None,
    isolation_level: str | None = None,
    **task_options: Any,
) -> XpersistTask[P, R]: ...


@overload
def xpersist_task(
    fn: None = None,
    *,
    target: Target,
    result: XpersistResult | None = None,
    store: CacheStore | None = None,
    serializer: str | None = None,
    dump_kwargs: dict[str, Any] | None = None,
    load_kwargs: dict[str, Any] | None = None,
    refresh: bool = False,
    ttl: timedelta | float | None = None,
    isolation_level: str | None = None,
    **task_options: Any,
) -> Callable[[Callable[P, R]], XpersistTask[P, R]]: ...


def xpersist_task(
    fn: Callable[P, R] | None = None,
    *,
    target: Target,
    result: XpersistResult | None = None,
    store: CacheStore | None = None,
    serializer: str | None = None,
    dump_kwargs: dict[str, Any] | None = None,
    load_kwargs: dict[str, Any] | None = None,
    refresh: bool = False,
    ttl: timedelta | float | None = None,
    isolation_level: str | None = None,
    **task_options: Any,
) -> XpersistTask[P, R] | Callable[[Callable[P, R]], XpersistTask[P, R]]:
    """Make a Prefect task whose value is cached in a :class:`~xpersist_sql.CacheStore`.

    The first call runs the body and puts its value under the rendered ``target``; a later call
    whose target renders to a stored key ends ``Completed`` with the name ``Cached``, does not run
    the body, and returns the stored value (lazily for zarr/netCDF).

    Parameters
    ----------
    fn : callable, optional
        The task body (sync or async). Without it, ``xpersist_task(...)`` is a decorator.
    target : str or callable
        The key: a ``str.format`` template over the run context (``date``, ``today``,
        ``yesterday``, ``tomorrow``, ``flow_name``, ``flow_run_id``, ``flow_run_name``,
        ``task_name``, ``task_run_id``, ``task_run_name``, ``task_tags``, ``parameters``), e.g.
        ``"{date:%A}-{flow_name}-{task_name}.zarr"`` or ``"{parameters[i]}.zarr"``; or a
        callable receiving those values as a dict and returning the key.
    result : XpersistResult, optional
        The store and serializer settings. Either ``result`` or ``store`` is needed.
    store : CacheStore, optional
        The store, when no ``result`` is given.
    serializer : str, optional
        Overrides ``result.serializer`` (default ``"auto"``).
    dump_kwargs, load_kwargs : dict, optional
        Override ``result.serializer_dump_kwargs`` / ``serializer_load_kwargs``.
    refresh : bool
        Always run the body and overwrite the stored value (also for every task of a run with
        the environment variable ``XPERSIST_SQL_REFRESH=1``).
    ttl : timedelta or float, optional
        Time to live (seconds) of the stored value; an expired value is a miss.
    isolation_level : {"READ_COMMITTED", "SERIALIZABLE"}, optional
        ``"SERIALIZABLE"`` (or ``prefect.transactions.IsolationLevel.SERIALIZABLE``): on a miss,
        take the store's lock on the key (:meth:`CacheStore.lock`, shared by every process and
        machine using the index), look again, and only then compute: concurrent runs compute a
        missing target once, the others wait and load it. Hits never take the lock.
    **task_options
        Any option of :func:`prefect.task` (``name``, ``tags``, ``retries``,
        ``task_run_name``...), except those that would cache or persist the value a second time.

    Returns
    -------
    XpersistTask
        A real Prefect task: call it, ``.submit()`` it, ``.map()`` it.

    Raises
    ------
    TypeError
        Neither or both of ``result`` and ``store``, or a Prefect caching option.

    Notes
    -----
    The target is rendered when the task run starts; an unknown template name
    (:class:`~xpersist_sql.prefect.TargetTemplateError`) or an invalid key
    (:class:`~xpersist_sql.InvalidKeyError`) fails the task before the body runs. A hit is
    validated: a row whose payload is missing or unreadable is a miss that logs a warning,
    recomputes and overwrites. A body that raises stores nothing. Two runs storing the same
    missing target at once follow the store's ``on_duplicate_key``. On a readonly store, hits
    are served and misses are computed but not stored (with a warning).

    Examples
    --------
    >>> import tempfile
    >>> from xpersist_sql import CacheStore
    >>> store = CacheStore(f"{tempfile.mkdtemp()}/my-cache")
    >>> @xpersist_task(store=store, target="answer.json", serializer="json")
    ... def answer() -> dict:
    ...     return {"answer": 42}
    >>> answer.fn()  # the body, cached without a task run
    {'answer': 42}
    >>> store.keys()
    ['answer.json']
    """
    if (result is None) == (store is None):
        raise TypeError(
            "xpersist_task needs exactly one of result=XpersistResult(store, ...) or "
            f"store=CacheStore(...); got result={result!r} and store={store!r}"
        )
    if result is None:
        assert store is not None
        result = XpersistResult(store)
    if not isinstance(result, XpersistResult):
        raise TypeError(f"result must be an XpersistResult, got {type(result).__name__}")
    if not (isinstance(target, str) or callable(target)):
        raise TypeError(f"target must be a str or a callable, got {type(target).__name__}")
    _check_options(task_options)
    level = str(getattr(isolation_level, "value", isolation_level or "READ_COMMITTED")).upper()
    if level not in ("READ_COMMITTED", "SERIALIZABLE"):
        raise ValueError(
            f"isolation_level must be 'READ_COMMITTED' or 'SERIALIZABLE', got {isolation_level!r}"
        )
    options: dict[str, Any] = {
        **task_options,
        "cache_policy": NO_CACHE,
        "persist_result": False,
    }
    settings = result

    def decorate(body: Callable[P, R]) -> XpersistTask[P, R]:
        if isinstance(body, Task):
            raise TypeError(
                f"{body.name!r} is already a Prefect task; apply xpersist_task to the plain "
                "function instead of @task"
            )
        spec = _Spec(
            fn=body,
            name=str(options.get("name") or getattr(body, "__name__", "task")),
            result=settings,
            target=target,
            serializer=serializer or settings.serializer,
            dump_kwargs=dict(
                dump_kwargs if dump_kwargs is not None else settings.serializer_dump_kwargs
            ),
            load_kwargs=dict(
                load_kwargs if load_kwargs is not None else settings.serializer_load_kwargs
            ),
            refresh=bool(refresh),
            ttl=ttl,
            serializable=level == "SERIALIZABLE",
        )
        wrapper = _async_wrapper(spec) if inspect.iscoroutinefunction(body) else _sync_wrapper(spec)
        return XpersistTask(fn=cast(Callable[P, R], wrapper), **options)

    if fn is None:
        return decorate
    return decorate(fn)
