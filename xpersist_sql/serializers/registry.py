"""The serializer registry: names -> :class:`Serializer` instances.

Built-in serializers register themselves when :mod:`xpersist_sql.serializers` is imported.
Third parties register theirs with :func:`register_serializer` or through the
``xpersist_sql.serializers`` entry-point group (the entry point's name is the serializer name and
its object a :class:`Serializer` subclass or instance).
"""

from __future__ import annotations

import abc
import importlib
import importlib.metadata
import threading
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from fsspec import AbstractFileSystem

from ..errors import MissingDependencyError, SerializerNotFoundError

__all__ = [
    "ENTRY_POINT_GROUP",
    "Serializer",
    "available_serializers",
    "get_serializer",
    "register_serializer",
]

ENTRY_POINT_GROUP = "xpersist_sql.serializers"


class Serializer(abc.ABC):
    """Writes a value to, and reads it back from, a path on an fsspec filesystem.

    Subclasses implement :meth:`dump` and :meth:`load` and declare the import names they need in
    ``requires`` (their versions are recorded with every artifact) and the pip extra that provides
    them in ``extra``.
    """

    name: str = ""
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None

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


_REGISTRY: dict[str, Serializer] = {}
_LOCK = threading.Lock()
_entry_points_loaded = False

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
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        obj = ep.load()
        instance = obj() if isinstance(obj, type) else obj
        if not isinstance(instance, Serializer):
            raise TypeError(
                f"entry point {ep.name!r} in group {ENTRY_POINT_GROUP!r} must name a Serializer "
                f"subclass or instance, got {obj!r}"
            )
        instance.name = ep.name
        _add(ep.name, instance, overwrite=False)


def available_serializers() -> list[str]:
    """Return the sorted names of every registered serializer (entry points included)."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get_serializer(name: str) -> Serializer:
    """Return the serializer registered under ``name``.

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
            f"unknown serializer {name!r}; known serializers: {known}. Register a new one with "
            "@xpersist_sql.serializers.register_serializer or the "
            f"{ENTRY_POINT_GROUP!r} entry-point group"
        ) from None
