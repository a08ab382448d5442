"""Which stored artifacts a task run's value was computed from (its lineage parents).

Two sources, both read when an xpersist task stores a value:

- **Arguments loaded from a store.** A bound argument (or an element of a list, tuple, set or
  dict argument) that :func:`xpersist_sql.provenance.lineage_of` knows: a value returned by
  ``CacheStore.get`` (an upstream xpersist task's hit, or the user's own ``store.get``; of
  dicts and lists, the last ones loaded), or the value an upstream xpersist task of this
  process has just stored. A number or a string is no such argument: it shares its object with
  every equal one.
- **Upstream task runs whose results are stored.** Prefect records, for each argument that was
  a future, a state or the result of another task run, the upstream task run's id in the task
  run's ``task_inputs``. Every xpersist task run that ends with a stored artifact (a write or a
  hit) notes ``task_run_id -> artifact`` in a process-local, thread-safe registry
  (:func:`note_task_run`), so the value of an upstream task that cannot be weakly referenced (a
  dict, a number) is linked too.

The registry lives in the process that ran the upstream task: with a process or Dask task
runner, a task run in another process is linked through the arguments' identities only (which
do not travel with a pickled value either).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prefect.context import TaskRunContext

from ..errors import ArtifactNotFoundError
from ..models import Artifact
from ..provenance import ArtifactIdentity, lineage_of
from ..provenance import store_id as provenance_store_id
from ..store import CacheStore

__all__ = [
    "Parent",
    "StoredResult",
    "forget_task_runs",
    "note_task_run",
    "parents_of",
    "stored_result_of",
]

#: How many task runs the registry remembers (the oldest are forgotten first).
MAX_TASK_RUNS = 100_000
#: How many elements of one container argument are looked at for loaded values.
MAX_ELEMENTS = 10_000
#: ``task_inputs`` entries that are not data dependencies.
_NOT_DATA = frozenset({"__parents__", "wait_for"})


def identity_from(store: CacheStore, artifact: Artifact) -> ArtifactIdentity:
    """Return the identity of ``artifact`` of ``store`` (as ``lineage_of`` would).

    Only for a store that holds an artifact (its id is read from its marker, and remembered).
    """
    return ArtifactIdentity(
        store_id=provenance_store_id(store),
        key=artifact.key,
        created_at=artifact.created_at.isoformat(),
        fingerprint=artifact.fingerprint,
        checksum=artifact.checksum,
    )


@dataclass(frozen=True)
class StoredResult:
    """The artifact a task run ended with: its store, key and (when known) identity.

    A hit whose value cannot be weakly referenced (a dict) is noted without its identity, which
    is read from the index only when a downstream task asks for it.
    """

    store: CacheStore
    key: str
    known: ArtifactIdentity | None = None

    def identity(self) -> ArtifactIdentity | None:
        """Return the identity (read from the index when not known), or ``None`` if gone."""
        if self.known is not None:
            return self.known
        try:
            return identity_from(self.store, self.store.get_artifact(self.key))
        except ArtifactNotFoundError:
            return None

    def url(self) -> str:
        """Where the payload lives (``store.payload_url(key)``)."""
        return self.store.payload_url(self.key)


@dataclass(frozen=True)
class Parent:
    """An artifact a value was computed from.

    Attributes
    ----------
    identity : ArtifactIdentity
        Which artifact, and the version of it that was read.
    url : str or None
        Its payload URL, when its store is known.
    local : bool
        Whether it is an artifact of the store the value goes to.
    """

    identity: ArtifactIdentity
    url: str | None = None
    local: bool = False


_LOCK = threading.Lock()
_TASK_RUNS: OrderedDict[str, StoredResult] = OrderedDict()


def note_task_run(task_run_id: str | None, stored: StoredResult) -> None:
    """Note that the task run ``task_run_id`` ended with the artifact ``stored``."""
    if task_run_id is None:
        return
    with _LOCK:
        _TASK_RUNS[task_run_id] = stored
        _TASK_RUNS.move_to_end(task_run_id)
        while len(_TASK_RUNS) > MAX_TASK_RUNS:
            _TASK_RUNS.popitem(last=False)


def stored_result_of(task_run_id: str) -> StoredResult | None:
    """Return the artifact the task run ``task_run_id`` ended with in this process, if any."""
    with _LOCK:
        return _TASK_RUNS.get(task_run_id)


def forget_task_runs() -> None:
    """Forget every noted task run (for tests)."""
    with _LOCK:
        _TASK_RUNS.clear()


def _values(value: Any, depth: int = 0) -> Iterator[Any]:
    """Yield ``value`` and the elements of plain containers in it (two levels down)."""
    yield value
    if depth >= 2 or type(value) not in (list, tuple, set, frozenset, dict):
        return
    items = value.values() if isinstance(value, dict) else value
    for count, item in enumerate(items):
        if count >= MAX_ELEMENTS:
            return
        yield from _values(item, depth + 1)


def _holds(store: CacheStore, identity: ArtifactIdentity) -> bool:
    """Whether ``store`` holds the artifact ``identity`` names, in the version it names.

    Compared by key and version rather than by store id: the id of a store not written yet is
    not known.
    """
    try:
        artifact = store.get_artifact(identity.key)
    except ArtifactNotFoundError:
        return False
    return (
        artifact.created_at.isoformat() == identity.created_at
        and artifact.fingerprint == identity.fingerprint
    )


def _upstream_task_runs() -> list[str]:
    """Return the ids of the upstream task runs the current task run's arguments came from."""
    task_ctx = TaskRunContext.get()
    if task_ctx is None:
        return []
    inputs = getattr(task_ctx.task_run, "task_inputs", None) or {}
    found: list[str] = []
    for name, references in inputs.items():
        if name in _NOT_DATA:
            continue
        for reference in references:
            if getattr(reference, "input_type", None) != "task_run":
                continue
            run_id = str(reference.id)
            if run_id not in found:
                found.append(run_id)
    return found


def parents_of(
    store: CacheStore, key: str, parameters: Mapping[str, Any], task_run_id: str | None = None
) -> list[Parent]:
    """Return the stored artifacts a task run's value was computed from, without duplicates.

    Parameters
    ----------
    store : CacheStore
        The store the value goes to (for the payload URL of parents it holds).
    key : str
        The key the value goes to (never its own parent).
    parameters : mapping
        The task's bound arguments.
    task_run_id : str, optional
        The current task run (its upstream task runs are read from Prefect's ``task_inputs``).

    Returns
    -------
    list of Parent
        Upstream task runs' artifacts first (in Prefect's order of ``task_inputs``), then
        the other arguments loaded from a store (in argument order).
    """
    found: dict[tuple[str, str, str], Parent] = {}

    def add(identity: ArtifactIdentity | None, source: CacheStore | None) -> None:
        if identity is None:
            return
        if (identity.store_id, identity.key, identity.created_at) in found:
            return
        if source is not None:
            local = source.path == store.path
            url: str | None = source.payload_url(identity.key)
        else:
            local = _holds(store, identity)
            url = store.payload_url(identity.key) if local else None
        if local and identity.key == key:
            return  # the previous version of the key itself (an incremental update)
        found.setdefault(
            (identity.store_id, identity.key, identity.created_at), Parent(identity, url, local)
        )

    if task_run_id is not None:
        for run_id in _upstream_task_runs():
            stored = stored_result_of(run_id)
            if stored is not None:
                add(stored.identity(), stored.store)
    for value in parameters.values():
        for item in _values(value):
            add(lineage_of(item), None)
    return list(found.values())
