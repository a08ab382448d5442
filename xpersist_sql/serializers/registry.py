"""The serializer registry: names -> :class:`Serializer` instances.

Built-in serializers register themselves when :mod:`xpersist_sql.serializers` is imported.
Third parties register theirs with :func:`register_serializer` or through the
``xpersist_sql.serializers`` entry-point group (the entry point's name is the serializer name and
its object a :class:`Serializer` subclass or instance)::

    [project.entry-points."xpersist_sql.serializers"]
    "geo.parquet" = "mypackage.serializers:GeoParquet"

Entry points are loaded once per process, the first time a name is not found, by
:func:`available_serializers` and by ``serializer="auto"``. A plugin that cannot be loaded (its
module fails to import, its object is not a serializer, its name is taken) does not stop the
others: it is reported by a :class:`SerializerPluginWarning` naming the entry point, the
distribution that declares it and the error, and left out of the registry.

A serializer takes part in ``"auto"`` by naming the types it writes in ``handles`` (see
:class:`Serializer` and :func:`xpersist_sql.serializers.pick_serializer`).
"""

from __future__ import annotations

import abc
import importlib
import importlib.metadata
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from fsspec import AbstractFileSystem

from ..errors import MissingDependencyError, SerializerNotFoundError

__all__ = [
    "ENTRY_POINT_GROUP",
    "Serializer",
    "SerializerPluginWarning",
    "available_serializers",
    "get_serializer",
    "register_serializer",
    "registered_serializers",
]

ENTRY_POINT_GROUP = "xpersist_sql.serializers"


class Serializer(abc.ABC):
    """Writes a value to, and reads it back from, a path on an fsspec filesystem.

    Subclasses implement :meth:`dump` and :meth:`load` and declare the import names they need in
    ``requires`` (their versions are recorded with every artifact) and the pip extra that provides
    them in ``extra``.

    A serializer takes part in ``serializer="auto"`` by listing the types it writes in
    ``handles``: classes, or ``"module.QualifiedName"`` strings (matched only once that module is
    imported, so declaring a type never imports its library). ``"auto"`` picks the serializer
    whose declared type comes first in the value's MRO, so a serializer for a subclass of
    ``pandas.DataFrame`` wins over ``pandas.parquet`` for that subclass; for the exact types the
    built-in rules name (xarray objects, DataFrames, numpy arrays) the built-in choice stays. See
    :func:`xpersist_sql.serializers.pick_serializer`.

    Examples
    --------
    >>> class GeoParquet(Serializer):  # doctest: +SKIP
    ...     handles = ("geopandas.GeoDataFrame",)
    ...     requires = ("geopandas",)
    ...     def dump(self, value, fs, path, **kwargs):
    ...         with fs.open(path, "wb") as f:
    ...             value.to_parquet(f, **kwargs)
    ...     def load(self, fs, path, **kwargs):
    ...         import geopandas
    ...         with fs.open(path, "rb") as f:
    ...             return geopandas.read_parquet(f, **kwargs)
    """

    name: str = ""
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None
    #: The types ``serializer="auto"`` picks this serializer for (classes or dotted names).
    handles: ClassVar[tuple[type | str, ...]] = ()
    #: Whether loading a payload can run code it holds (pickle, joblib): such payloads load
    #: only where the caller or the store trusts them (see :meth:`runs_code`).
    runs_code_on_load: ClassVar[bool] = False

    @abc.abstractmethod
    def dump(
        self, value: Any, fs: AbstractFileSystem, path: str, **kwargs: Any
    ) -> dict[str, Any] | None:
        """Write ``value`` at ``path`` on ``fs``.

        Returns
        -------
        dict or None
            Load keyword arguments needed to read the payload back (merged into the artifact's
            ``load_kwargs``), or ``None``.
        """

    @abc.abstractmethod
    def load(self, fs: AbstractFileSystem, path: str, **kwargs: Any) -> Any:
        """Read the value stored at ``path`` on ``fs``."""

    def runs_code(self, load_kwargs: Mapping[str, Any]) -> bool:
        """Whether loading with ``load_kwargs`` can run code the payload holds.

        ``runs_code_on_load`` by default; a serializer whose loads run code only with some
        option (``numpy.npy`` with ``allow_pickle=True``) overrides this.
        """
        return self.runs_code_on_load

    def check_requirements(self) -> None:
        """Raise :class:`MissingDependencyError` naming the extra if a requirement is missing."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                hint = (
                    f"pip install 'xpersist_sql[{self.extra}]'"
                    if self.extra
                    else f"pip install {module}"
                )
                raise MissingDependencyError(
                    f"serializer {self.name!r} needs the package {module!r}, which is not "
                    f"installed: {hint}"
                ) from exc

    def versions(self) -> dict[str, str]:
        """Return the installed versions of the packages this serializer relies on."""
        return package_versions(self.requires)


def package_versions(modules: tuple[str, ...]) -> dict[str, str]:
    """Return ``{name: version}`` for the installed distributions among ``modules``."""
    found: dict[str, str] = {}
    for module in modules:
        try:
            found[module] = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


class SerializerPluginWarning(UserWarning):
    """A serializer declared in the ``xpersist_sql.serializers`` entry-point group was not loaded.

    The message names the entry point, the distribution declaring it and the error; the other
    serializers are loaded as usual.
    """


_REGISTRY: dict[str, Serializer] = {}
_LOCK = threading.Lock()
# Held while the entry points load (re-entrant: a plugin module may itself look up a serializer).
_ENTRY_POINTS_LOCK = threading.RLock()
_entry_points_loaded = False
_entry_points_loading = False

S = TypeVar("S", bound=type[Serializer])


def register_serializer(name: str, *, overwrite: bool = False) -> Callable[[S], S]:
    """Class decorator registering a :class:`Serializer` subclass under ``name``.

    Parameters
    ----------
    name : str
        The name users pass as ``serializer=``, e.g. ``"mypkg.format"``.
    overwrite : bool
        Replace an existing serializer of that name instead of raising ``ValueError``.

    Examples
    --------
    >>> from xpersist_sql.serializers import Serializer, register_serializer
    >>> @register_serializer("text.upper", overwrite=True)
    ... class Upper(Serializer):
    ...     def dump(self, value, fs, path, **kwargs):
    ...         with fs.open(path, "w") as f:
    ...             f.write(value.upper())
    ...     def load(self, fs, path, **kwargs):
    ...         with fs.open(path, "r") as f:
    ...             return f.read()
    """

    def decorator(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, Serializer)):
            raise TypeError(f"@register_serializer expects a Serializer subclass, got {cls!r}")
        cls.name = name
        _add(name, cls(), overwrite=overwrite)
        return cls

    return decorator


def _add(name: str, serializer: Serializer, *, overwrite: bool) -> None:
    with _LOCK:
        if name in _REGISTRY and not overwrite:
            raise ValueError(
                f"a serializer named {name!r} is already registered; pass overwrite=True "
                "to replace it"
            )
        _REGISTRY[name] = serializer


def _load_entry_points() -> None:
    global _entry_points_loaded, _entry_points_loading
    if _entry_points_loaded:
        return
    with _ENTRY_POINTS_LOCK:  # other threads wait here until every plugin is loaded
        # done, or a plugin module of this very thread looks a serializer up while it loads
        if _entry_points_loaded or _entry_points_loading:
            return
        _entry_points_loading = True
        try:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                try:
                    _load_entry_point(ep)
                except Exception as exc:
                    _warn_plugin_failed(ep, exc)
        finally:
            _entry_points_loading = False
            _entry_points_loaded = True


def _warn_plugin_failed(ep: importlib.metadata.EntryPoint, exc: Exception) -> None:
    dist = getattr(ep, "dist", None)
    origin = f" (distribution {dist.name} {dist.version})" if dist is not None else ""
    warnings.warn(
        f"serializer plugin {ep.name!r} = {ep.value!r}{origin} from the {ENTRY_POINT_GROUP!r} "
        f"entry-point group could not be loaded and is not available: {type(exc).__name__}: "
        f"{exc}. The other serializers are; fix or uninstall that distribution to silence this "
        "warning",
        SerializerPluginWarning,
        stacklevel=4,
    )


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> None:
    with _LOCK:
        existing = _REGISTRY.get(ep.name)
    if existing is not None:
        if type(existing).__module__ == ep.module:  # its module was imported and registered it
            return
        raise ValueError(
            f"a serializer named {ep.name!r} is already registered "
            f"({type(existing).__module__}.{type(existing).__qualname__})"
        )
    obj = ep.load()
    instance = obj() if isinstance(obj, type) else obj
    if not isinstance(instance, Serializer):
        raise TypeError(f"the entry point must name a Serializer subclass or instance, got {obj!r}")
    with _LOCK:
        existing = _REGISTRY.get(ep.name)
        if existing is not None:
            if type(existing) is type(instance):  # its module registered it while loading
                return
            raise ValueError(
                f"a serializer named {ep.name!r} is already registered "
                f"({type(existing).__module__}.{type(existing).__qualname__})"
            )
        instance.name = ep.name
        _REGISTRY[ep.name] = instance


def available_serializers() -> list[str]:
    """Return the sorted names of every registered serializer (entry points included)."""
    _load_entry_points()
    return sorted(_REGISTRY)


def registered_serializers() -> dict[str, Serializer]:
    """Return a snapshot ``{name: serializer}`` of the registry, entry points included."""
    _load_entry_points()
    with _LOCK:
        return dict(_REGISTRY)


def get_serializer(name: str, *, where: str = "") -> Serializer:
    """Return the serializer registered under ``name``.

    Parameters
    ----------
    name : str
        A registered serializer name.
    where : str
        What asked, to begin the error's message with (e.g. ``"put of key 'a' in store
        '/data': "``).

    Raises
    ------
    SerializerNotFoundError
        If no serializer has that name; the message lists the known ones.
    """
    if name not in _REGISTRY:
        _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise SerializerNotFoundError(
            f"{where}unknown serializer {name!r}; known serializers: {known}. Register a new one "
            "with @xpersist_sql.serializers.register_serializer or the "
            f"{ENTRY_POINT_GROUP!r} entry-point group"
        ) from None
