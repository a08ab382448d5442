"""The exceptions raised by xpersist_sql.

Every error derives from :class:`XpersistSQLError` and carries a message that names the key, the
store and what to do about it::

    XpersistSQLError
    ├── ArtifactNotFoundError (KeyError)       no artifact under that key
    ├── DuplicateKeyError                      on_duplicate_key="raise_error" and the key exists
    │   └── CollisionError                     on_duplicate_key="check_collision", other content
    ├── ReadonlyStoreError (PermissionError)   a write on a store opened with readonly=True
    ├── SerializerNotFoundError (ValueError)   an unknown serializer name
    ├── InvalidKeyError (ValueError)           a key that would escape the store root
    │   ├── OverlappingKeyError                a key inside, or containing, a stored key
    │   └── UnsafePathError                    a path through a symlink or into another store
    ├── StoreNotFoundError (FileNotFoundError) no store at that path (reading creates none)
    ├── StoreMismatchError                     the store's marker and its index disagree
    ├── PayloadMissingError (FileNotFoundError) the row exists, its payload is gone
    ├── PayloadLoadError                       the payload exists but cannot be read
    ├── SchemaVersionError (RuntimeError)      the index is older or newer than this package
    ├── LockTimeoutError (TimeoutError)        store.lock(key, timeout=...) waited in vain
    └── MissingDependencyError (ImportError)   an optional dependency is not installed
"""

from __future__ import annotations

__all__ = [
    "ArtifactNotFoundError",
    "CollisionError",
    "DuplicateKeyError",
    "InvalidKeyError",
    "LockTimeoutError",
    "MissingDependencyError",
    "OverlappingKeyError",
    "PayloadLoadError",
    "PayloadMissingError",
    "ReadonlyStoreError",
    "SchemaVersionError",
    "SerializerNotFoundError",
    "StoreMismatchError",
    "StoreNotFoundError",
    "UnsafePathError",
    "XpersistSQLError",
]


class XpersistSQLError(Exception):
    """Base class of every error raised by xpersist_sql."""

    def __str__(self) -> str:
        # KeyError quotes its message; keep every message readable as written.
        return str(self.args[0]) if self.args else ""


class ArtifactNotFoundError(XpersistSQLError, KeyError):
    """No (unexpired) artifact is stored under the key."""


class DuplicateKeyError(XpersistSQLError):
    """The key exists and the store's policy is ``on_duplicate_key="raise_error"``."""


class CollisionError(DuplicateKeyError):
    """The key exists with different content (``on_duplicate_key="check_collision"``)."""


class ReadonlyStoreError(XpersistSQLError, PermissionError):
    """A write was attempted on a store opened with ``readonly=True``."""


class SerializerNotFoundError(XpersistSQLError, ValueError):
    """The serializer name is not registered."""


class InvalidKeyError(XpersistSQLError, ValueError):
    """The key is empty, absolute, contains ``..`` or points into the hidden index directory."""


class OverlappingKeyError(InvalidKeyError):
    """The key lies inside a stored key, or a stored key lies inside it (``a`` vs ``a/b``)."""


class UnsafePathError(InvalidKeyError):
    """The path passes through a symbolic link, or holds another store: it is not the store's."""


class StoreNotFoundError(XpersistSQLError, FileNotFoundError):
    """No xpersist_sql store at the path (a read, or a command that creates none)."""


class StoreMismatchError(XpersistSQLError):
    """The store's marker names a store that its index does not know, or the reverse."""


class PayloadMissingError(XpersistSQLError, FileNotFoundError):
    """The index has a row for the key but its payload is gone from storage."""


class PayloadLoadError(XpersistSQLError):
    """The payload exists but its serializer failed to read it."""


class SchemaVersionError(XpersistSQLError, RuntimeError):
    """The index database is at another schema revision than this package expects."""


class LockTimeoutError(XpersistSQLError, TimeoutError):
    """Another worker held the key's lock for longer than ``store.lock``'s ``timeout``."""


class MissingDependencyError(XpersistSQLError, ImportError):
    """An optional dependency needed by a serializer or backend is not installed."""
