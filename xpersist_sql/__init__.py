"""xpersist_sql: cache workflow results as native payloads on fsspec, indexed by SQL.

>>> from xpersist_sql import CacheStore
>>> store = CacheStore("/tmp/my-cache")  # doctest: +SKIP

Importing the package is cheap: the exception classes load with it, every other public name
(:class:`CacheStore`, :class:`Artifact`, the serializer registry, ``__version__``) on first
access (:pep:`562`), and the libraries of the payload formats (xarray, zarr, numpy, pandas,
joblib) only when a serializer first needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ArtifactNotFoundError,
    CollisionError,
    DuplicateKeyError,
    IndexUnavailableError,
    InputsHashError,
    InvalidKeyError,
    LockTimeoutError,
    MissingDependencyError,
    OverlappingKeyError,
    PayloadChangedError,
    PayloadLoadError,
    PayloadMissingError,
    ReadonlyStoreError,
    SchemaVersionError,
    SerializationError,
    SerializerMismatchError,
    SerializerNotFoundError,
    StoreMismatchError,
    StoreNotFoundError,
    UnsafePathError,
    UntrustedPayloadError,
    XpersistSQLError,
)

if TYPE_CHECKING:
    from ._version import __version__
    from .models import Artifact, DuplicateKeyEnum
    from .serializers import Serializer, available_serializers, register_serializer
    from .store import CacheStore, import_legacy

__all__ = [
    "Artifact",
    "ArtifactNotFoundError",
    "CacheStore",
    "CollisionError",
    "DuplicateKeyEnum",
    "DuplicateKeyError",
    "IndexUnavailableError",
    "InputsHashError",
    "InvalidKeyError",
    "LockTimeoutError",
    "MissingDependencyError",
    "OverlappingKeyError",
    "PayloadChangedError",
    "PayloadLoadError",
    "PayloadMissingError",
    "ReadonlyStoreError",
    "SchemaVersionError",
    "SerializationError",
    "Serializer",
    "SerializerMismatchError",
    "SerializerNotFoundError",
    "StoreMismatchError",
    "StoreNotFoundError",
    "UnsafePathError",
    "UntrustedPayloadError",
    "XpersistSQLError",
    "__version__",
    "available_serializers",
    "import_legacy",
    "register_serializer",
]

#: The public names loaded on first access, and the module defining each.
_LAZY: dict[str, str] = {
    "__version__": "._version",
    "Artifact": ".models",
    "DuplicateKeyEnum": ".models",
    "Serializer": ".serializers",
    "available_serializers": ".serializers",
    "register_serializer": ".serializers",
    "CacheStore": ".store",
    "import_legacy": ".store",
}


def __getattr__(name: str) -> Any:
    """Import the module defining the public ``name`` on first access (:pep:`562`)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
