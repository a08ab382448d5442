"""``xpersist_task``: a Prefect 3 task whose value lives in a :class:`CacheStore`.

``task.fn`` is the plain body. What Prefect's engine runs is a copy of the task whose function
is a caching wrapper: the wrapper captures the run context, renders the target, and either loads
the stored value (returning ``Completed(name="Cached")`` without running the body) or runs the
body and puts its value in the store. Prefect's own caching and result persistence are turned
off for these tasks (``cache_policy=NO_CACHE``, ``persist_result=False``): the value is stored
once, by the store, in its native format. Prefect's caching options keep their meaning
(``refresh_cache``, ``PREFECT_TASKS_REFRESH_CACHE``, ``cache_expiration``, ``isolation_level``,
transactions); see docs/design.md, "Prefect integration", for why this is not a ``CachePolicy``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import random
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

from prefect import State, Task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.results import (  # type: ignore[attr-defined]
    ResultRecord,
    ResultRecordMetadata,
    get_result_store,
)
from prefect.settings import get_current_settings
from prefect.states import Completed
from prefect.transactions import BaseTransaction, IsolationLevel, get_transaction
from prefect.utilities.callables import expand_mapping_parameters, get_call_parameters

from ..errors import (
    ArtifactNotFoundError,
    PayloadChangedError,
    PayloadLoadError,
    PayloadMissingError,
    UntrustedPayloadError,
)
from ..models import Artifact
from ..parameters import PARAMETER_VALUES, parameter_record
from ..provenance import check_hashing_requirements, code_hash, identity_of, record_loaded
from ..serializers import auto_choices
from ..storage import validate_key
from ..store import CacheStore
from ._ambiguity import TargetKeys, check_calls, check_collisions, check_rendered, target_keys
from ._assets import report_hit, report_write
from ._context import RunContext, Target, call_parameters, render_target, uses_inputs_hash
from ._lineage import Parent, StoredResult, identity_from, note_task_run, parents_of
from ._lock_manager import StoreLockManager
from ._result import XpersistResult, check_serializer_settings

__all__ = ["CACHED_STATE_NAME", "REFRESH_ENV", "XpersistTask", "xpersist_task"]

P = ParamSpec("P")
R = TypeVar("R")

#: Set to ``1`` to recompute (and overwrite) every xpersist task of a run.
REFRESH_ENV = "XPERSIST_SQL_REFRESH"
#: Name of the ``Completed`` state of a cache hit.
CACHED_STATE_NAME = "Cached"

_TRUE = {"1", "true", "yes", "on"}
#: Where an artifact's ``additional_metadata`` records the task's ``version`` and code hash.
VERSION_FIELD = "task_version"
CODE_HASH_FIELD = "code_hash"
_MODULE_LOGGER = logging.getLogger("xpersist_sql.prefect")

#: Prefect options that would cache or persist the value a second time, and what to use instead.
_CONFLICTING_OPTIONS = {
    "cache_policy": "target= (and isolation_level=)",
    "cache_key_fn": "target=",
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


def refresh_requested(refresh: bool = False, refresh_cache: bool | None = None) -> bool:
    """Return whether a task must recompute (and overwrite) its stored value.

    ``refresh=True`` always does. Otherwise Prefect's rule: the task's ``refresh_cache`` when it
    is set (``False`` included), else the setting ``PREFECT_TASKS_REFRESH_CACHE`` or the
    environment variable ``XPERSIST_SQL_REFRESH=1``.
    """
    if refresh:
        return True
    if refresh_cache is not None:
        return bool(refresh_cache)
    if os.environ.get(REFRESH_ENV, "").strip().lower() in _TRUE:
        return True
    return bool(get_current_settings().tasks.refresh_cache)


code_hash_of = code_hash  # the name the decorator's code_hash= argument does not shadow


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return _MODULE_LOGGER


@dataclass(frozen=True)
class _Spec:
    """What one xpersist task stores, where, and how."""

    fn: Callable[..., Any]
    result: XpersistResult
    target: Target
    serializer: str
    dump_kwargs: dict[str, Any] = field(default_factory=dict)
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    refresh: bool = False
    ttl: timedelta | float | str | None = None
    #: "READ_COMMITTED", "SERIALIZABLE", or None: the isolation level of the run's transaction
    isolation: str | None = None
    keys: TargetKeys = field(default_factory=lambda: TargetKeys("unique"))
    #: identifies the task (and its ``with_options`` copies) for the once-per-task warning
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    locks: StoreLockManager | None = field(default=None, compare=False)
    #: the task's ``version`` when declared (the task run's task is read first)
    version: str | None = None
    #: the hash of the body's source, with ``code_hash=True``
    code: str | None = None
    #: report stored results to Prefect (asset events and a link artifact)
    report_assets: bool = True

    @property
    def store(self) -> CacheStore:
        return self.result.store

    def lock_manager(self) -> StoreLockManager:
        return self.locks if self.locks is not None else StoreLockManager(self.store)

    def target_text(self) -> str:
        if callable(self.target):
            return getattr(self.target, "__qualname__", repr(self.target))
        return self.target


def _isolation_of(transaction: BaseTransaction | None) -> str | None:
    level = getattr(transaction, "isolation_level", None)
    return None if level is None else str(getattr(level, "value", level)).upper()


def _still_stored(store: CacheStore, parent: Parent) -> bool:
    """Whether a parent of this store is still stored (a parent of another store counts)."""
    if not parent.local:
        return True
    try:
        store.get_artifact(parent.identity.key)
    except ArtifactNotFoundError:
        return False
    return True


class _RemoveOnRollback:
    """A transaction's rollback hook: remove the value this task run stored (if still there)."""

    def __init__(self, store: CacheStore, artifact: Artifact) -> None:
        self.store = store
        self.artifact = artifact
        self.__name__ = f"remove {artifact.key!r} from the store"

    def __call__(self, transaction: BaseTransaction) -> None:
        key = self.artifact.key
        try:
            current = self.store.get_artifact(key)
        except ArtifactNotFoundError:
            return
        if current.created_at != self.artifact.created_at:
            return  # replaced since by another writer: theirs, not this transaction's
        try:
            self.store.delete(key)
        except ArtifactNotFoundError:
            return
        _logger().info(
            "removed %r from store %r: the transaction that stored it rolled back",
            key,
            self.store.path,
        )


@dataclass
class _Call:
    """One task run of an xpersist task: its context, key and the outcome of the lookup."""

    spec: _Spec
    context: RunContext
    key: str
    refresh: bool
    ttl: timedelta | float | str | None
    version: str | None = None
    broken: bool = False
    #: the stored artifact was written by another version (or code) of the task
    stale: bool = False

    @classmethod
    def begin(cls, spec: _Spec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call:
        """Capture the context and render the key (before the body runs)."""
        context = RunContext.capture(spec.fn, getattr(spec.fn, "__name__", "task"), args, kwargs)
        key = validate_key(render_target(spec.target, context), store=spec.store.path)
        task_ctx = TaskRunContext.get()
        task = task_ctx.task if task_ctx is not None else None
        expiration = getattr(task, "cache_expiration", None)
        version = getattr(task, "version", None)
        if spec.keys.kind == "dynamic":
            check_rendered(
                spec.token,
                context.task_name,
                cast(Callable[..., Any], spec.target),
                context.flow_run_id,
                key,
                context.parameters,
            )
        elif spec.keys.kind == "static" and spec.keys.parameters:
            check_collisions(
                spec.token,
                context.task_name,
                cast(str, spec.target),
                context.flow_run_id,
                key,
                {
                    name: context.parameters[name]
                    for name in spec.keys.parameters
                    if name in context.parameters
                },
            )
        return cls(
            spec=spec,
            context=context,
            key=key,
            refresh=refresh_requested(spec.refresh, getattr(task, "refresh_cache", None)),
            ttl=expiration if expiration is not None else spec.ttl,
            version=str(version) if version is not None else spec.version,
        )

    @property
    def location(self) -> str:
        """Where the payload lives: ``<store path>/<key>``."""
        return f"{self.spec.store.path.rstrip('/')}/{self.key}"

    def serializable(self) -> bool:
        """Whether this run computes a missing value under the store's lock on the key."""
        level = self.spec.isolation or _isolation_of(get_transaction())
        return level == "SERIALIZABLE"

    def lookup(self) -> tuple[bool, Any]:
        """Load the stored value: ``(True, value)`` on a valid hit, ``(False, None)`` else.

        A row whose payload is gone, unreadable or changed behind the index's back, or that was
        written with another serializer than the task declares (``"auto"``: one ``"auto"``
        cannot pick), or whose load would run code nobody trusts, is a miss (logged as a
        warning) that the next put overwrites. A missing package
        (:class:`~xpersist_sql.MissingDependencyError`) fails the task instead: recomputing
        would overwrite a value that is fine.
        """
        if self.refresh or self.outdated():
            return False, None
        store = self.spec.store
        declared = self.spec.serializer
        try:
            value = store.get(
                self.key,
                load_kwargs=self.spec.load_kwargs or None,
                accept=auto_choices() if declared == "auto" else (declared,),
            )
        except ArtifactNotFoundError:
            return False, None
        except (
            PayloadMissingError,
            PayloadLoadError,
            PayloadChangedError,
            UntrustedPayloadError,
        ) as exc:
            self.broken = True
            _logger().warning(
                "the artifact %r in store %r cannot be loaded, recomputing it: %s",
                self.key,
                store.path,
                exc,
            )
            return False, None
        return True, value

    def outdated(self) -> bool:
        """Whether the stored artifact was written by another version or code of the task.

        Only what the task declares is compared (``version=``, ``code_hash=True``): an artifact
        written without them (before they were declared) is then outdated, and a task that
        declares neither accepts any artifact. An outdated artifact is a miss, logged, that the
        next put overwrites.
        """
        spec = self.spec
        if self.version is None and spec.code is None:
            return False
        try:
            artifact = spec.store.get_artifact(self.key)
        except ArtifactNotFoundError:
            return False
        recorded = artifact.additional_metadata
        changes = []
        if self.version is not None and recorded.get(VERSION_FIELD) != self.version:
            changes.append(
                f"version {recorded.get(VERSION_FIELD)!r}, and the task is now version "
                f"{self.version!r}"
            )
        if spec.code is not None and recorded.get(CODE_HASH_FIELD) != spec.code:
            changes.append(
                f"code hash {recorded.get(CODE_HASH_FIELD)!r}, and the task's source now hashes "
                f"to {spec.code!r}"
            )
        if not changes:
            return False
        self.stale = True
        _logger().info(
            "the artifact %r in store %r was stored by task %r with %s: recomputing and "
            "overwriting it",
            self.key,
            spec.store.path,
            self.context.task_name,
            "; with ".join(changes),
        )
        return True

    def check_writable(self) -> None:
        """Fail before the body runs where the store would refuse to put its value at the key.

        An invalid or unsafe key, or one that contains a stored key or lies inside one. A
        readonly store computes and returns the value without storing it (:meth:`save`).
        """
        store = self.spec.store
        if not store.readonly:
            store.check_writable(self.key)

    def save(self, value: Any) -> Artifact | None:
        """Put the body's value under the key (overwriting on refresh or a broken hit).

        Returns the artifact when this run wrote it (not when the store kept another writer's).
        """
        spec = self.spec
        if spec.store.readonly:
            _logger().warning(
                "the store %r is readonly: the value of %r is returned but not stored",
                spec.store.path,
                self.key,
            )
            return None
        overwrite = self.refresh or self.broken or self.stale
        store = spec.result.overwriting_store() if overwrite else spec.store
        metadata = {**self.context.metadata(), "target": spec.target_text()}
        values = self.parameter_values()
        if values is not None:
            metadata[PARAMETER_VALUES] = values
        if self.version is not None:
            metadata[VERSION_FIELD] = self.version
        if spec.code is not None:
            metadata[CODE_HASH_FIELD] = spec.code
        parents = parents_of(
            spec.store, self.key, self.context.parameters, self.context.task_run_id
        )
        before = datetime.now(timezone.utc)
        put = functools.partial(
            store.put,
            self.key,
            value,
            serializer=spec.serializer,
            dump_kwargs=spec.dump_kwargs or None,
            load_kwargs=spec.load_kwargs or None,
            additional_metadata=metadata,
            ttl=self.ttl,
        )
        try:
            artifact = put(derived_from=[parent.identity for parent in parents])
        except ArtifactNotFoundError as exc:  # a parent deleted (or expired) since it was read
            kept = [parent for parent in parents if _still_stored(spec.store, parent)]
            _logger().warning(
                "storing %r: %s; its lineage records the %d of its %d parents still stored",
                self.key,
                exc,
                len(kept),
                len(parents),
            )
            parents = kept
            artifact = put(derived_from=[parent.identity for parent in parents])
        written = artifact.created_at >= before and (
            artifact.additional_metadata.get("task_run_id") == self.context.task_run_id
        )
        note_task_run(
            self.context.task_run_id,
            StoredResult(spec.store, artifact.key, identity_from(store, artifact)),
        )
        if written:
            _logger().info("stored result at %s", self.location)
            # downstream tasks of this run hash the value as the artifact, as they will on a hit
            record_loaded(value, store, artifact)
            if spec.report_assets:
                report_write(
                    url=spec.store.payload_url(self.key),
                    key=self.key,
                    store_path=spec.store.path,
                    serializer=artifact.serializer,
                    parents=parents,
                    task_run_id=self.context.task_run_id,
                    logger=_logger(),
                )
        return artifact if written else None

    def parameter_values(self) -> dict[str, Any] | None:
        """Return the bound arguments as recorded (``parameter_record``).

        A failure to record them is logged and stores the value without them.
        """
        try:
            return parameter_record(self.context.parameters)
        except Exception as exc:
            _logger().warning(
                "the parameter values of task %r are not recorded with %r: %s: %s",
                self.context.task_name,
                self.key,
                type(exc).__name__,
                exc,
            )
            return None

    def undo_on_rollback(self, artifact: Artifact | None) -> None:
        """Remove the stored value if the run's transaction (or one it is part of) rolls back."""
        transaction = get_transaction()
        if artifact is not None and transaction is not None:
            transaction.on_rollback_hooks.append(_RemoveOnRollback(self.spec.store, artifact))

    def hit(self, value: Any) -> Any:
        """Return what the wrapper returns on a hit: a ``Cached`` state inside a task run.

        The task run is noted as ending with the stored artifact (for the lineage of the tasks
        it feeds); a hit rewrites nothing in the store.
        """
        if not self.context.in_task_run:
            return value
        spec = self.spec
        note_task_run(
            self.context.task_run_id, StoredResult(spec.store, self.key, identity_of(value))
        )
        if spec.report_assets:
            report_hit(
                url=spec.store.payload_url(self.key),
                key=self.key,
                task_run_id=self.context.task_run_id,
                logger=_logger(),
            )
        message = f"loaded from cache at {self.location}"
        return Completed(name=CACHED_STATE_NAME, data=_unpersisted_record(value), message=message)


def _unpersisted_record(value: Any) -> ResultRecord[Any]:
    """Wrap a loaded value as the result record of a ``Cached`` state, as Prefect would.

    Prefect wraps a returned state's bare value with ``ResultStore.create_result_record``, which
    resolves a fresh storage path (a dozen ``lstat``) for a record nobody writes: the value
    lives in the store, and Prefect persists nothing for this task. This is that record (a
    random storage key, the run's result serializer), made without a system call: inside a
    task run each one hands the GIL to Prefect's event threads.
    """
    results = get_result_store()
    metadata = ResultRecordMetadata.model_construct(
        serializer=results.serializer,
        storage_key=f"{random.getrandbits(128):032x}",  # never written: any unique name
        storage_block_id=results.result_storage_block_id,
        expiration=None,
    )
    return ResultRecord.model_construct(result=value, metadata=metadata)


def _sync_wrapper(spec: _Spec) -> Callable[..., Any]:
    fn = spec.fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = _Call.begin(spec, args, kwargs)
        found, value = call.lookup()
        if found:
            return call.hit(value)
        locks = spec.lock_manager() if call.serializable() else None
        holder = uuid.uuid4().hex
        if locks is not None:
            locks.acquire_lock(call.key, holder)
        try:
            if locks is not None:
                # another run may have stored the value while this one waited for the lock
                found, value = call.lookup()
                if found:
                    return call.hit(value)
            call.check_writable()
            value = fn(*args, **kwargs)
            if not isinstance(value, State):
                call.undo_on_rollback(call.save(value))
            return value
        finally:
            if locks is not None:
                locks.release_lock(call.key, holder)

    return wrapper


def _async_wrapper(spec: _Spec) -> Callable[..., Coroutine[Any, Any, Any]]:
    fn = spec.fn

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = _Call.begin(spec, args, kwargs)
        found, value = await asyncio.to_thread(call.lookup)
        if found:
            return call.hit(value)
        locks = spec.lock_manager() if call.serializable() else None
        holder = uuid.uuid4().hex
        if locks is not None:
            await locks.aacquire_lock(call.key, holder)
        try:
            if locks is not None:
                found, value = await asyncio.to_thread(call.lookup)
                if found:
                    return call.hit(value)
            await asyncio.to_thread(call.check_writable)
            value = await fn(*args, **kwargs)
            if not isinstance(value, State):
                call.undo_on_rollback(await asyncio.to_thread(call.save, value))
            return value
        finally:
            if locks is not None:
                await asyncio.to_thread(locks.release_lock, call.key, holder)

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

    It behaves as a :class:`prefect.Task`: ``task.fn`` is the plain body (a unit test calls
    ``task.fn(x)`` without touching the store); calling the task, ``.submit()`` and ``.map()``
    run it with the cache. A direct call that hits the cache returns the stored value (not the
    ``Cached`` state), and :meth:`with_options` keeps it an ``XpersistTask``.
    """

    _xpersist_spec: _Spec
    _xpersist_wrapper: Callable[..., Any]

    def _caching_run(self) -> Task[..., Any]:
        """Return the task Prefect's engine runs: a copy whose function is the caching wrapper."""
        # copy.copy's shallow copy, made without its generic __reduce_ex__ path (on every call)
        run = cast("Task[..., Any]", object.__new__(Task))
        run.__dict__.update(self.__dict__)
        run.fn = self._xpersist_wrapper
        return run

    def _check_calls(self, calls: list[dict[str, Any]]) -> None:
        spec = self._xpersist_spec
        check_calls(
            spec.token,
            (self.name, tuple(sorted(self.tags))),
            self.name,
            spec.target,
            spec.keys,
            calls,
        )

    def _parameters(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        if self._xpersist_spec.keys.kind != "static":
            return []
        try:
            return [call_parameters(self.fn, args, kwargs)]
        except Exception:  # Prefect reports a bad call itself
            return []

    def __call__(  # type: ignore[override]
        self,
        *args: Any,
        return_state: bool = False,
        wait_for: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Run the task and return its value (or its final state with ``return_state=True``)."""
        self._check_calls(self._parameters(args, kwargs))
        run = self._caching_run()
        if return_state:
            return Task.__call__(run, *args, return_state=True, wait_for=wait_for, **kwargs)
        out: Any = Task.__call__(run, *args, wait_for=wait_for, **kwargs)
        if inspect.isawaitable(out):
            return _unwrap_async(out)
        return _unwrap(out)

    def submit(  # type: ignore[override]
        self,
        *args: Any,
        return_state: bool = False,
        wait_for: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Submit a run of the task to the flow's task runner (see :meth:`prefect.Task.submit`)."""
        self._check_calls(self._parameters(args, kwargs))
        run = self._caching_run()
        return Task.submit(run, *args, return_state=return_state, wait_for=wait_for, **kwargs)

    def map(
        self,
        *args: Any,
        return_state: bool = False,
        wait_for: Any = None,
        deferred: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Submit one run per element of the iterable arguments (see :meth:`prefect.Task.map`)."""
        if self._xpersist_spec.keys.kind == "static":
            try:
                parameters = get_call_parameters(self.fn, args, kwargs, apply_defaults=False)
                calls = expand_mapping_parameters(self.fn, parameters)
            except Exception:  # Prefect reports a bad map itself
                calls = []
            self._check_calls(calls)
        run = self._caching_run()
        return Task.map(
            run, *args, return_state=return_state, wait_for=wait_for, deferred=deferred, **kwargs
        )

    def with_options(self, **options: Any) -> XpersistTask[P, R]:
        """Return a copy with other Prefect options (e.g. ``tags``, ``retries``, ``name``).

        The store, target and serializer stay those given to :func:`xpersist_task`; Prefect's
        ``refresh_cache`` and ``cache_expiration`` may be changed here.
        """
        _check_options(options)
        _check_expiration(options.get("cache_expiration"), None)
        new = Task.with_options(cast("Task[P, R]", self), **options)
        new.__class__ = type(self)
        made = cast(XpersistTask[P, R], new)
        made._xpersist_spec = self._xpersist_spec
        made._xpersist_wrapper = self._xpersist_wrapper
        return made


def _check_expiration(cache_expiration: Any, ttl: Any) -> None:
    if cache_expiration is None:
        return
    if not isinstance(cache_expiration, timedelta):
        raise TypeError(
            f"cache_expiration must be a datetime.timedelta, got {cache_expiration!r} "
            "(ttl= also takes seconds or '7d'-style strings)"
        )
    if ttl is not None:
        raise TypeError(
            "give one of ttl= and cache_expiration= (they mean the same: how long the stored "
            f"value counts as present), not both; got ttl={ttl!r} and "
            f"cache_expiration={cache_expiration!r}"
        )


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
    ttl: timedelta | float | str | None = None,
    refresh_cache: bool | None = None,
    cache_expiration: timedelta | None = None,
    isolation_level: str | IsolationLevel | None = None,
    version: str | None = None,
    code_hash: bool = False,
    report_assets: bool = True,
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
    ttl: timedelta | float | str | None = None,
    refresh_cache: bool | None = None,
    cache_expiration: timedelta | None = None,
    isolation_level: str | IsolationLevel | None = None,
    version: str | None = None,
    code_hash: bool = False,
    report_assets: bool = True,
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
    ttl: timedelta | float | str | None = None,
    refresh_cache: bool | None = None,
    cache_expiration: timedelta | None = None,
    isolation_level: str | IsolationLevel | None = None,
    version: str | None = None,
    code_hash: bool = False,
    report_assets: bool = True,
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
        ``task_name``, ``task_run_id``, ``task_run_name``, ``task_tags``, ``parameters``,
        ``inputs_hash``), e.g. ``"{date:%A}-{flow_name}-{task_name}.zarr"``,
        ``"{parameters[i]}.zarr"`` or ``"{task_name}/{inputs_hash}.zarr"`` (a deterministic hash
        of the bound arguments, see :func:`xpersist_sql.provenance.hash_inputs`); or a callable
        receiving those values as a dict and returning the key.
    result : XpersistResult, optional
        The store and serializer settings. Either ``result`` or ``store`` is needed.
    store : CacheStore, optional
        The store, when no ``result`` is given.
    serializer : str, optional
        Overrides ``result.serializer`` (default ``"auto"``).
    dump_kwargs, load_kwargs : dict, optional
        Override ``result.serializer_dump_kwargs`` / ``serializer_load_kwargs``.
    refresh : bool
        Always run the body and overwrite the stored value.
    ttl : timedelta, float or str, optional
        Time to live of the stored value (a ``timedelta``, seconds, or ``"7d"``-style); an
        expired value is a miss.
    refresh_cache : bool, optional
        Prefect's option, with Prefect's meaning: ``True`` recomputes and overwrites the stored
        value; ``False`` uses it even when the setting ``PREFECT_TASKS_REFRESH_CACHE`` (or the
        environment variable ``XPERSIST_SQL_REFRESH=1``) asks every task of a run to refresh;
        ``None`` (default) follows them.
    cache_expiration : timedelta, optional
        Prefect's name for ``ttl`` (give one of the two).
    isolation_level : {"READ_COMMITTED", "SERIALIZABLE"} or IsolationLevel, optional
        ``"SERIALIZABLE"`` (or ``prefect.transactions.IsolationLevel.SERIALIZABLE``): on a miss,
        take the store's lock on the key (:class:`StoreLockManager`, shared by every process
        and machine using the index), look again, and only then compute: concurrent runs
        compute a missing target once, the others wait and load it. Hits never take the lock.
        ``None`` (default): the isolation level of the Prefect transaction the task runs in
        (``with transaction(isolation_level=...)``), else ``READ_COMMITTED``.
    version : str, optional
        Prefect's option (the task's version), recorded in each artifact's metadata
        (``task_version``): a stored artifact recorded with another version, or with none, is a
        miss that recomputes and overwrites it, and logs why (old and new version). Without it,
        any stored artifact is a hit.
    code_hash : bool
        Record a hash of the task body's source (``code_hash`` in the metadata; as Prefect's
        ``TaskSource`` policy, decorator lines left out) and treat an artifact recorded with
        another hash, or none, as a miss that recomputes and overwrites it (logged): editing
        the body recomputes this task's values, and only this task's.
    report_assets : bool
        Report each result the task stores to Prefect (default ``True``): the events Prefect
        emits for an asset materialization (``prefect.asset.materialization.succeeded``, the
        payload URL ``store.payload_url(key)`` as the asset key, a local path as a
        ``file://`` URL; the stored artifacts it was computed from as its upstream assets) and
        a link artifact on the task run (a link to the payload, keyed by the store key). A
        hit makes the stored result an upstream asset of Prefect's materializing tasks
        downstream. A failure to report is logged as a warning and never fails the task.
        ``False`` reports nothing.
    **task_options
        Any option of :func:`prefect.task` (``name``, ``tags``, ``retries``,
        ``task_run_name``...), except those that would cache or persist the value a second time
        (``cache_policy``, ``cache_key_fn``, ``result_storage``, ``persist_result=True``...).

    Returns
    -------
    XpersistTask
        A real Prefect task: call it, ``.submit()`` it, ``.map()`` it. ``task.fn`` is the plain
        body, which does not touch the store.

    Raises
    ------
    TypeError
        Neither or both of ``result`` and ``store``, a Prefect option that would cache the value
        a second time, or both ``ttl`` and ``cache_expiration``.
    SerializerNotFoundError, MissingDependencyError
        An unknown serializer, or one whose packages are not installed, or a target using
        ``{inputs_hash}`` without dask installed (the ``[dask]`` extra): checked here, before
        any body runs.
    ValueError
        An unknown ``isolation_level``, or serializer kwargs that do not survive a JSON round
        trip.

    Warns
    -----
    AmbiguousTargetWarning
        Once per task, when calls of one flow run (a ``.map``, or two calls) differ in a
        parameter the target does not use: they would share one key.

    Notes
    -----
    The target is rendered when the task run starts; an unknown template name
    (:class:`~xpersist_sql.prefect.TargetTemplateError`), an invalid key
    (:class:`~xpersist_sql.InvalidKeyError`) or, on a miss, a key the store would refuse to
    write (:meth:`CacheStore.check_writable <xpersist_sql.CacheStore.check_writable>`) fails
    the task before the body runs. A hit is
    validated: a row whose payload is missing or unreadable is a miss that logs a warning,
    recomputes and overwrites. A body that raises stores nothing. Two runs storing the same
    missing target at once follow the store's ``on_duplicate_key``. On a readonly store, hits
    are served and misses are computed but not stored (with a warning). A value stored inside
    a Prefect transaction (``with transaction():``) is removed if that transaction rolls back.

    Each stored artifact records the task's parameter values (``parameter_values``, queryable
    with ``store.query(parameters={...})``) and its lineage: the arguments loaded from a store
    and the stored results of the upstream task runs Prefect records as its inputs
    (``store.lineage(key)``). A hit rewrites neither.

    Examples
    --------
    >>> import tempfile
    >>> from xpersist_sql import CacheStore
    >>> store = CacheStore(f"{tempfile.mkdtemp()}/my-cache")
    >>> @xpersist_task(store=store, target="answer.json", serializer="json")
    ... def answer() -> dict:
    ...     return {"answer": 42}
    >>> answer.fn()  # the plain body: no task run, no cache
    {'answer': 42}
    >>> store.keys()
    []
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
    _check_expiration(cache_expiration, ttl)
    isolation = None
    if isolation_level is not None:
        isolation = str(getattr(isolation_level, "value", isolation_level)).upper()
        if isolation not in ("READ_COMMITTED", "SERIALIZABLE"):
            raise ValueError(
                "isolation_level must be 'READ_COMMITTED' or 'SERIALIZABLE' (or "
                f"prefect.transactions.IsolationLevel), got {isolation_level!r}"
            )
    chosen = serializer or result.serializer
    chosen_dump = dump_kwargs if dump_kwargs is not None else result.serializer_dump_kwargs
    chosen_load = load_kwargs if load_kwargs is not None else result.serializer_load_kwargs
    if version is not None and not isinstance(version, str):
        raise TypeError(f"version must be a str, got {type(version).__name__} {version!r}")
    if version is not None:
        task_options = {**task_options, "version": version}
    options: dict[str, Any] = {
        **task_options,
        "cache_policy": NO_CACHE,
        "persist_result": False,
        # kept on the task, as Prefect does: the engine-side wrapper reads them from the task
        # run's task, so that ``with_options(refresh_cache=...)`` works too
        "refresh_cache": refresh_cache,
        "cache_expiration": cache_expiration,
    }
    settings = result

    def decorate(body: Callable[P, R]) -> XpersistTask[P, R]:
        if isinstance(body, Task):
            raise TypeError(
                f"{body.name!r} is already a Prefect task; apply xpersist_task to the plain "
                "function instead of @task"
            )
        name = str(options.get("name") or getattr(body, "__name__", "task"))
        check_serializer_settings(chosen, chosen_dump, chosen_load, f"xpersist_task {name!r}")
        if uses_inputs_hash(target):
            check_hashing_requirements(f"xpersist_task {name!r}")
        spec = _Spec(
            fn=body,
            result=settings,
            target=target,
            serializer=chosen,
            dump_kwargs=dict(chosen_dump),
            load_kwargs=dict(chosen_load),
            refresh=bool(refresh),
            ttl=ttl,
            isolation=isolation,
            keys=target_keys(target),
            locks=StoreLockManager(settings.store),
            version=version,
            code=code_hash_of(body) if code_hash else None,
            report_assets=bool(report_assets),
        )
        made: XpersistTask[P, R] = XpersistTask(fn=body, **options)
        made._xpersist_spec = spec
        made._xpersist_wrapper = (
            _async_wrapper(spec) if inspect.iscoroutinefunction(body) else _sync_wrapper(spec)
        )
        return made

    if fn is None:
        return decorate
    return decorate(fn)
