"""xpersist_sql: cache workflow results as native payloads on fsspec, indexed by SQL.

>>> from xpersist_sql import CacheStore
>>> store = CacheStore("/tmp/my-cache")  # doctest: +SKIP
"""

from ._version import __version__
from .errors import (
    ArtifactNotFoundError,
    CollisionError,
    DuplicateKeyError,
    IndexUnavailableError,
    InvalidKeyError,
    LockTimeoutError,
    MissingDependencyError,
    OverlappingKeyError,
    PayloadLoadError,
    PayloadMissingError,
    ReadonlyStoreError,
    SchemaVersionError,
    SerializationError,
    SerializerNotFoundError,
    StoreMismatchError,
    StoreNotFoundError,
    UnsafePathError,
    XpersistSQLError,
)
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
    "InvalidKeyError",
    "LockTimeoutError",
    "MissingDependencyError",
    "OverlappingKeyError",
    "PayloadLoadError",
    "PayloadMissingError",
    "ReadonlyStoreError",
    "SchemaVersionError",
    "SerializationError",
    "Serializer",
    "SerializerNotFoundError",
    "StoreMismatchError",
    "StoreNotFoundError",
    "UnsafePathError",
    "XpersistSQLError",
    "__version__",
    "available_serializers",
    "import_legacy",
    "register_serializer",
]
