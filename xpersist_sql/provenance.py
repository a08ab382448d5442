"""Where a value came from, and a deterministic hash of a call's inputs.

Two things live here, both free of Prefect (the store imports this module):

- **The artifacts loaded values are.** :meth:`CacheStore.get <xpersist_sql.CacheStore.get>`
  notes every value it returns (when the value can be weakly referenced: arrays, data frames,
  xarray objects; not dicts or lists) as the artifact it was loaded from: its store, key and the
  version it was stored as (``created_at``, payload fingerprint and checksum).
  :func:`identity_of` answers for a value; :func:`register_artifact` notes one explicitly. The
  record is weak: it never keeps a value alive and lives in this process only (a value pickled
  to another process arrives without it).
- **A hash of inputs.** :func:`hash_inputs` hashes a mapping of named values (a task's bound
  arguments) into a hex digest that is the same in every process, on every machine and under
  every ``PYTHONHASHSEED``. A value loaded from a store hashes as that artifact's identity (so a
  100 GB lazily opened dataset costs nothing to hash); JSON-like values (``None``, ``bool``,
  ``int``, ``float``, ``str`` and lists, tuples and dicts of them) by their canonical JSON
  text; anything else (numpy arrays, pandas objects, xarray objects, dask collections, dataclasses)
  by :func:`dask.base.tokenize` in deterministic mode (dask collections, and dask-backed xarray
  objects, by their graph's name: nothing is computed). Needs the ``[dask]`` extra for those.
  :func:`components` gives the per-value hashes that :func:`combine` makes into that digest.
- **A hash of code.** :func:`code_hash` hashes a function's source (what ``xpersist_task(...,
  code_hash=True)`` records and ``CacheStore.explain(key, fn=...)`` compares).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import inspect
import json
import marshal
import math
import textwrap
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import InputsHashError, MissingDependencyError
from .models import Artifact

__all__ = [
    "HASH_SCHEME",
    "ArtifactIdentity",
    "InputsHashError",
    "check_hashing_requirements",
    "code_hash",
    "combine",
    "components",
    "forget",
    "hash_inputs",
    "hash_value",
    "identity_of",
    "lineage_of",
    "record_loaded",
    "register_artifact",
    "store_id",
]

#: Part of every hash: a change of how values are hashed changes every hash (and so every key).
HASH_SCHEME = "xpersist-inputs-1"
#: Length of the hex digests :func:`hash_inputs` returns (128 bits of a sha256).
DIGEST_LENGTH = 32


class _Store(Protocol):
    path: str

    def get_artifact(self, key: str) -> Artifact: ...


@dataclass(frozen=True)
class ArtifactIdentity:
    """The stored artifact a value was loaded from: which store, which key, which version.

    Attributes
    ----------
    store_id : str
        The store's identity (the id in its marker), or its path when the marker cannot be read.
    key : str
        The artifact's key.
    created_at : str
        When that version of the artifact was stored (ISO 8601, UTC).
    fingerprint, checksum : str or None
        The payload's fingerprint and checksum, where the store recorded them.
    """

    store_id: str
    key: str
    created_at: str
    fingerprint: str | None = None
    checksum: str | None = None

    def token(self) -> list[Any]:
        """Return the JSON-able form :func:`hash_inputs` hashes."""
        return [self.store_id, self.key, self.created_at, self.fingerprint, self.checksum]


@dataclass(frozen=True)
class _Loaded:
    """What the registry holds for a value: the store (for its id, read lazily) and the row."""

    store: Any
    artifact: Artifact

    def identity(self) -> ArtifactIdentity:
        return ArtifactIdentity(
            store_id=store_id(self.store),
            key=self.artifact.key,
            created_at=self.artifact.created_at.isoformat(),
            fingerprint=self.artifact.fingerprint,
            checksum=self.artifact.checksum,
        )


_LOCK = threading.Lock()
#: id(value) -> (weak reference to the value, what it was loaded as)
_LOADED: dict[int, tuple[weakref.ref[Any], _Loaded]] = {}
#: How many loaded dicts and lists (no weak references) :func:`lineage_of` remembers.
LOADED_CONTAINERS = 32
#: id(value) -> (the value, kept alive so that its id names it, what it was loaded as)
_CONTAINERS: OrderedDict[int, tuple[Any, _Loaded]] = OrderedDict()
#: store object -> its id (one marker read per store object and process)
_STORE_IDS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def store_id(store: Any) -> str:
    """Return the identity of ``store`` that artifact identities carry.

    The id in the store's marker (read once per store object and process), or, while the store
    has no marker yet (nothing was ever written to it) or its marker cannot be read, its path:
    that answer is not remembered, so the id is used as soon as the first write creates it.
    """
    try:
        return _STORE_IDS[store]
    except (KeyError, TypeError):
        pass
    try:
        marker = store._backend.marker()  # the store's identity, as recorded in the index
    except Exception:  # an unreadable marker: the path still names the store
        marker = None
    if marker is None:
        return str(getattr(store, "path", store))
    found = str(marker.store_id)
    with contextlib.suppress(TypeError):  # a store that cannot be weakly referenced
        _STORE_IDS[store] = found
    return found


def _forget(object_id: int, ref: weakref.ref[Any]) -> None:
    with _LOCK:
        held = _LOADED.get(object_id)
        if held is not None and held[0] is ref:
            del _LOADED[object_id]


def record_loaded(value: Any, store: Any, artifact: Artifact) -> None:
    """Note that ``value`` was loaded from ``artifact`` of ``store`` (called by ``get``).

    Values that cannot be weakly referenced (dicts, lists, str, numbers) hash by value and
    have no :func:`identity_of`. The last :data:`LOADED_CONTAINERS` dicts and lists loaded are
    kept (alive, so that their ids name them) for :func:`lineage_of` alone; str and numbers,
    which other code may share (``1`` is one object everywhere), are not noted. Never raises.

    Parameters
    ----------
    value : object
        The loaded value.
    store : CacheStore
        The store it was loaded from.
    artifact : Artifact
        The row it was loaded as.
    """
    try:
        ref = weakref.ref(value)
    except TypeError:
        if type(value) in (dict, list):  # one object: a load's, or the value just stored
            with _LOCK:
                _CONTAINERS[id(value)] = (value, _Loaded(store, artifact))
                _CONTAINERS.move_to_end(id(value))
                while len(_CONTAINERS) > LOADED_CONTAINERS:
                    _CONTAINERS.popitem(last=False)
        return
    loaded = _Loaded(store, artifact)
    with _LOCK:
        held = _LOADED.get(id(value))
        _LOADED[id(value)] = (ref, loaded)
        fresh = held is None or held[0] is not ref
    if fresh:
        # removes the entry when the value dies, before its id can be reused
        weakref.finalize(value, _forget, id(value), ref)


def register_artifact(value: Any, store: _Store, key: str) -> ArtifactIdentity:
    """Note that ``value`` is the artifact stored under ``key`` in ``store``, as it is now.

    :meth:`CacheStore.get <xpersist_sql.CacheStore.get>` does this by itself; call it for a
    value obtained otherwise (e.g. opened from ``store.payload_url(key)`` with other tools) so
    that :func:`hash_inputs` hashes it by that identity instead of its data.

    Parameters
    ----------
    value : object
        The value; it must support weak references (xarray, pandas and numpy objects do).
    store : CacheStore
        The store holding the artifact.
    key : str
        The artifact's key.

    Returns
    -------
    ArtifactIdentity
        The identity ``value`` now hashes as.

    Raises
    ------
    TypeError
        ``value`` cannot be weakly referenced (a dict, a list: those hash by value anyway).
    ArtifactNotFoundError
        Nothing is stored under ``key``.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from xpersist_sql import CacheStore
    >>> store = CacheStore(f"{tempfile.mkdtemp()}/my-cache")
    >>> _ = store.put("a.npy", np.arange(3))
    >>> value = np.load(store.payload_url("a.npy"))
    >>> register_artifact(value, store, "a.npy").key
    'a.npy'
    """
    try:
        weakref.ref(value)
    except TypeError:
        raise TypeError(
            f"cannot register a {type(value).__name__} as an artifact: it does not support weak "
            "references (dicts, lists and scalars hash by value)"
        ) from None
    record_loaded(value, store, store.get_artifact(key))
    found = identity_of(value)
    assert found is not None
    return found


def forget(value: Any) -> None:
    """Forget what ``value`` was loaded as: it hashes by its data from now on."""
    with _LOCK:
        held = _LOADED.get(id(value))
        if held is not None and held[0]() is value:
            del _LOADED[id(value)]
        kept = _CONTAINERS.get(id(value))
        if kept is not None and kept[0] is value:
            del _CONTAINERS[id(value)]


def identity_of(value: Any) -> ArtifactIdentity | None:
    """Return the artifact ``value`` was loaded from in this process, or ``None``.

    Parameters
    ----------
    value : object
        Any value.

    Returns
    -------
    ArtifactIdentity or None
        ``None`` for a value not returned by ``CacheStore.get`` (a value derived from one, such
        as ``ds.sel(...)``, is a new object and is not an artifact).
    """
    with _LOCK:
        held = _LOADED.get(id(value))
    if held is None or held[0]() is not value:
        return None
    return held[1].identity()


def lineage_of(value: Any) -> ArtifactIdentity | None:
    """Return the artifact ``value`` was loaded from, for lineage, or ``None``.

    :func:`identity_of`, and also for one of the last :data:`LOADED_CONTAINERS` dicts and lists
    returned by ``CacheStore.get`` (a JSON payload's value). Those still hash by their data
    (:func:`hash_inputs`): a dict changed after its load would otherwise hash as the artifact
    it no longer is, while "computed from that artifact" stays true of it.

    Parameters
    ----------
    value : object
        Any value.

    Returns
    -------
    ArtifactIdentity or None
        The artifact it was loaded as, where this process knows it.
    """
    found = identity_of(value)
    if found is not None or type(value) not in (dict, list):
        return found
    with _LOCK:
        kept = _CONTAINERS.get(id(value))
    if kept is None or kept[0] is not value:
        return None
    return kept[1].identity()


# -- hashing -------------------------------------------------------------------------------------
def check_hashing_requirements(where: str = "") -> None:
    """Raise :class:`~xpersist_sql.MissingDependencyError` unless dask is installed.

    Parameters
    ----------
    where : str
        What needs it, for the message (``"xpersist_task 'regrid'"``).
    """
    try:
        import dask.base  # noqa: F401
    except ImportError as exc:
        prefix = f"{where}: " if where else ""
        raise MissingDependencyError(
            f"{prefix}hashing inputs ({{inputs_hash}}) needs dask, which is not installed: "
            "pip install 'xpersist_sql[dask]'"
        ) from exc


def _type_name(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _is_datatree(value: Any) -> bool:
    kind = type(value)
    return kind.__name__ == "DataTree" and kind.__module__.startswith("xarray")


def _is_xarray(value: Any, name: str) -> bool:
    kind = type(value)
    return kind.__name__ == name and kind.__module__.startswith("xarray")


def _dask_token(value: Any) -> str:
    try:
        from dask.base import tokenize
    except ImportError:
        check_hashing_requirements()
        raise
    return str(tokenize(value, ensure_deterministic=True))


class _Hasher:
    def __init__(self, name: str) -> None:
        self.name = name
        self.path: set[int] = set()

    def fail(self, value: Any, why: str) -> InputsHashError:
        return InputsHashError(
            f"cannot hash the argument {self.name!r} ({_type_name(value)}) deterministically: "
            f"{why.rstrip('.')}. Give its class a __dask_tokenize__ method (or register it with "
            "dask.base.normalize_token.register), pass something that hashes (its defining "
            "parameters), or leave {inputs_hash} out of the target"
        )

    def token(self, value: Any) -> Any:
        found = identity_of(value)
        if found is not None:
            return ["artifact", found.token()]
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int) and type(value) is int:
            return value
        if type(value) is float:
            return value if math.isfinite(value) else ["float", repr(value)]
        if type(value) in (list, tuple, dict):
            if id(value) in self.path:
                raise self.fail(value, "it contains itself")
            self.path.add(id(value))
            try:
                return self.container(value)
            finally:
                self.path.discard(id(value))
        if _is_datatree(value):
            nodes = sorted(value.subtree, key=lambda node: node.path)
            return [
                "datatree",
                [[node.path, self.token(node.to_dataset(inherit=False))] for node in nodes],
            ]
        if _is_xarray(value, "Dataset") or _is_xarray(value, "DataArray"):
            return self.xarray(value)
        try:
            return ["dask", _type_name(value), _dask_token(value)]
        except (MissingDependencyError, RecursionError):
            raise
        except Exception as exc:  # dask's TokenizationError, or what a __dask_tokenize__ raised
            raise self.fail(value, f"{type(exc).__name__}: {exc}") from exc

    def xarray(self, value: Any) -> Any:
        """Hash a Dataset or DataArray from its variables, in name order.

        Not through xarray's own ``__dask_tokenize__``, which includes sets (the coordinate
        names) that some dask versions normalise in hash-seed order.
        """
        if _is_xarray(value, "DataArray"):
            coords = sorted(
                [str(name), self.variable(coord.variable)] for name, coord in value.coords.items()
            )
            return ["dataarray", str(value.name), self.variable(value.variable), coords]
        coord_names = {str(name) for name in value.coords}
        variables = sorted(
            [str(name), str(name) in coord_names, self.variable(variable)]
            for name, variable in value.variables.items()
        )
        return ["dataset", variables, self.token(dict(value.attrs))]

    def variable(self, variable: Any) -> Any:
        data = variable.data  # a numpy or dask array (a dask array is hashed by its name)
        return [
            [str(dim) for dim in variable.dims],
            self.token(dict(variable.attrs)),
            ["dask", _type_name(data), _dask_token(data)],
        ]

    def container(self, value: list[Any] | tuple[Any, ...] | dict[Any, Any]) -> Any:
        if isinstance(value, dict):
            if all(type(key) is str for key in value):
                return ["dict", {key: self.token(item) for key, item in value.items()}]
            items = [[self.token(key), self.token(item)] for key, item in value.items()]
            items.sort(key=lambda pair: json.dumps(pair, sort_keys=True))
            return ["mapping", items]
        return [type(value).__name__, [self.token(item) for item in value]]


def _digest(document: Any) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:DIGEST_LENGTH]


def hash_value(value: Any, name: str = "value") -> str:
    """Return the deterministic hash of one value (see :func:`hash_inputs`).

    Parameters
    ----------
    value : object
        The value.
    name : str
        Its name, for error messages.

    Returns
    -------
    str
        A hex digest of :data:`DIGEST_LENGTH` characters.
    """
    return _digest([HASH_SCHEME, _Hasher(name).token(value)])


def components(parameters: Mapping[str, Any]) -> dict[str, str]:
    """Return the hash of each named value (what :func:`hash_inputs` combines).

    Parameters
    ----------
    parameters : mapping of str to object
        The named values.

    Returns
    -------
    dict of str to str
        ``{name: hash_value(value, name)}``.
    """
    return {name: hash_value(value, name) for name, value in parameters.items()}


def combine(parts: Mapping[str, str]) -> str:
    """Return the inputs hash of per-value hashes (``hash_inputs(p) == combine(components(p))``).

    Parameters
    ----------
    parts : mapping of str to str
        The :func:`components` of the named values.

    Returns
    -------
    str
        A hex digest of :data:`DIGEST_LENGTH` characters.
    """
    return _digest([HASH_SCHEME, dict(parts)])


def hash_inputs(
    parameters: Mapping[str, Any], *, on_component: Callable[[str, str], None] | None = None
) -> str:
    """Return a deterministic hash of named values (a task's bound arguments).

    The same names and values give the same digest in every process, on every machine and
    under every ``PYTHONHASHSEED``; a change of any value (one array element) changes it.
    Nothing depends on Python's ``hash()``.

    - A value returned by ``CacheStore.get`` (or noted with :func:`register_artifact`) hashes as
      the artifact it was loaded from: store id, key, ``created_at``, fingerprint and checksum
      of the stored version; its data is not read.
    - ``None``, ``bool``, ``int``, ``float``, ``str``, and lists, tuples and dicts of hashable
      values (recursively, so a list of loaded datasets hashes by their identities) hash by
      their canonical JSON text (a list and a tuple differ; dict order does not matter).
    - ``xarray.DataTree``: by its nodes' paths and datasets.
    - Anything else by :func:`dask.base.tokenize` with ``ensure_deterministic=True``: numpy
      arrays by their bytes, dtype and shape; pandas objects by their values and index; xarray
      objects by their variables, coordinates and attributes; a dask collection (and a
      dask-backed xarray variable) by its graph's name, without computing it; a dataclass by
      its fields; other objects by their pickle, when two pickles of it are equal. What dask
      cannot tokenize deterministically raises :class:`InputsHashError` naming the parameter.

    Parameters
    ----------
    parameters : mapping of str to object
        The named values.
    on_component : callable, optional
        Called with each ``(name, component hash)``.

    Returns
    -------
    str
        A hex digest of :data:`DIGEST_LENGTH` characters.

    Raises
    ------
    InputsHashError
        A value that cannot be hashed deterministically (an ``object()``, a value whose pickle
        changes between two calls, a container that contains itself).
    MissingDependencyError
        A value that needs dask to be hashed, and dask is not installed.

    Notes
    -----
    An xarray object opened lazily from a file outside the store without dask (no ``chunks=``)
    hashes by its data, which reads it; open it with ``chunks=`` to hash its graph instead. A
    token computed by dask may change with a dask release that changes how it normalizes a
    type (the JSON-like values and artifact identities do not depend on dask).

    Examples
    --------
    >>> hash_inputs({"member": 3, "region": "europe"}) == hash_inputs(
    ...     {"region": "europe", "member": 3})
    True
    >>> len(hash_inputs({"member": 3}))
    32
    """
    parts = components(parameters)
    if on_component is not None:
        for name, part in parts.items():
            on_component(name, part)
    return combine(parts)


# -- code ----------------------------------------------------------------------------------------
def _normalize_code_location(code: types.CodeType) -> types.CodeType:
    """Remove where a code object was compiled (as Prefect's ``TaskSource`` policy does)."""
    return code.replace(
        co_filename="",
        co_firstlineno=1,
        co_linetable=b"",
        co_consts=tuple(
            _normalize_code_location(const) if isinstance(const, types.CodeType) else const
            for const in code.co_consts
        ),
    )


def _without_decorators(source: str) -> str:
    """Return a function's source from its ``def`` line on (its decorators left out)."""
    source = textwrap.dedent(source)
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a lambda's line, a fragment: hash the lines as they are
        return source
    first = tree.body[0] if tree.body else None
    if isinstance(first, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return "\n".join(source.splitlines()[first.lineno - 1 :]) + "\n"
    return source


def code_hash(fn: Callable[..., Any]) -> str:
    """Return the hash of a task body's source (what ``code_hash=True`` records and compares).

    As Prefect 3's ``TaskSource`` cache policy: the function's source text
    (:func:`inspect.getsource`), here without its decorator lines (so changing ``retries=`` or
    ``tags=`` does not count as a change of code); when the source cannot be read (a function
    made by ``exec``), its code object without compilation locations. Functions it calls are not
    included: only the body's own lines count.

    Parameters
    ----------
    fn : callable
        The task body.

    Returns
    -------
    str
        A hex sha256 digest, 32 characters long.
    """
    try:
        source = _without_decorators(inspect.getsource(fn))
        data = source.encode("utf-8")
    except (OSError, TypeError):
        code = getattr(inspect.unwrap(fn), "__code__", None)
        if code is None:
            raise TypeError(
                f"code_hash=True needs the source or the code of the task body, and "
                f"{fn!r} has neither"
            ) from None
        data = marshal.dumps(_normalize_code_location(code))
    return hashlib.sha256(data).hexdigest()[:32]
