"""The exceptions raised by xpersist_sql.

Every error derives from :class:`XpersistSQLError` and carries a message that names the key, the
store and what to do about it::

    XpersistSQLError
    ├── ArtifactNotFoundError (KeyError)                     no artifact under that key
    ├── DuplicateKeyError (ValueError)                       raise_error policy and the key exists
    │   └── CollisionError                                   check_collision policy, other content
    ├── ReadonlyStoreError (PermissionError)                 a write on a readonly=True store
    ├── SerializerNotFoundError (ValueError)                 an unknown serializer name
    ├── SerializationError (TypeError, ValueError)           the serializer cannot write the value
    ├── InvalidKeyError (ValueError)                         a key that would escape the store root
    │   ├── OverlappingKeyError                              a key inside or around a stored key
    │   └── UnsafePathError                                  through a symlink or into another store
    ├── StoreNotFoundError (FileNotFoundError)               no store there (reading creates none)
    ├── StoreMismatchError                                   the store's marker and index disagree
    ├── PayloadMissingError (FileNotFoundError, ValueError)  the row exists, the payload is gone
    ├── PayloadLoadError (ValueError)                        the payload exists but cannot be read
    ├── PayloadChangedError (ValueError)                     the payload is not its row's
    ├── UntrustedPayloadError (PermissionError)              a load would run code nobody trusted
    │   └── SerializerMismatchError                          the row names a serializer not accepted
    ├── SchemaVersionError (RuntimeError)                    the index is at another schema revision
    ├── IndexUnavailableError (ConnectionError)              the index database cannot be reached
    ├── InputsHashError (TypeError)                          an input {inputs_hash} cannot hash
    ├── LockTimeoutError (TimeoutError)                      store.lock(key, timeout) waited in vain
    └── MissingDependencyError (ImportError)                 an optional dependency is not installed

The built-in bases keep code written for xpersist 2021 working: it raised ``KeyError`` for a
missing key and ``ValueError`` for a duplicate key under ``raise_error`` and for a value it could
not load, so ``except KeyError`` / ``except ValueError`` still catch those cases here.
"""

from __future__ import annotations

__all__ = [
    "ArtifactNotFoundError",
    "CollisionError",
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
    "SerializerMismatchError",
    "SerializerNotFoundError",
    "StoreMismatchError",
    "StoreNotFoundError",
    "UnsafePathError",
    "UntrustedPayloadError",
    "XpersistSQLError",
]


class XpersistSQLError(Exception):
    """Base class of every error raised by xpersist_sql."""

    def __str__(self) -> str:
        # KeyError quotes its message; keep every message readable as written.
        return str(self.args[0]) if self.args else ""


class ArtifactNotFoundError(XpersistSQLError, KeyError):
    """No (unexpired) artifact is stored under the key."""


class DuplicateKeyError(XpersistSQLError, ValueError):
    """The key exists and the store's policy is ``on_duplicate_key="raise_error"``.

    A ``ValueError``, as xpersist 2021 raised for a duplicate key.
    """


class CollisionError(DuplicateKeyError):
    """The key exists with different content (``on_duplicate_key="check_collision"``)."""


class ReadonlyStoreError(XpersistSQLError, PermissionError):
    """A write was attempted on a store opened with ``readonly=True``."""


class SerializerNotFoundError(XpersistSQLError, ValueError):
    """The serializer name is not registered."""


class SerializationError(XpersistSQLError, TypeError, ValueError):
    """The serializer could not write the value (a type it does not handle, bad ``dump_kwargs``).

    Both a ``TypeError`` and a ``ValueError``, the errors serializers raise for such values, so
    code catching either keeps working. The message names the key, the store, the serializer and
    one that can write the value's type; the serializer's own error is the ``__cause__``.
    """


class InvalidKeyError(XpersistSQLError, ValueError):
    """The key is empty, absolute, contains ``..`` or points into the hidden index directory."""


class OverlappingKeyError(InvalidKeyError):
    """The key lies inside a stored key, or a stored key lies inside it (``a`` vs ``a/b``)."""


class UnsafePathError(InvalidKeyError):
    """The path passes through a symbolic link, is a pipe or device, or holds another store."""


class StoreNotFoundError(XpersistSQLError, FileNotFoundError):
    """No xpersist_sql store at the path (a read, or a command that creates none)."""


class StoreMismatchError(XpersistSQLError):
    """The store's marker names a store that its index does not know, or the reverse."""


class PayloadMissingError(XpersistSQLError, FileNotFoundError, ValueError):
    """The index has a row for the key but its payload is gone from storage.

    Also a ``ValueError``, which xpersist 2021 raised for any value it could not load.
    """


class PayloadLoadError(XpersistSQLError, ValueError):
    """The payload exists but its serializer failed to read it.

    A ``ValueError``, as xpersist 2021 raised for a value it could not load.
    """


class PayloadChangedError(XpersistSQLError, ValueError):
    """The payload at the key is not the one its row describes (changed behind the index's back).

    Raised by ``get`` when the payload's identity still differs once concurrent writers are
    waited out, and, with ``get(key, verify=True)`` (or a store opened with ``checksum=True``),
    when its recorded checksum or file listing no longer matches.
    """


class UntrustedPayloadError(XpersistSQLError, PermissionError):
    """Loading the payload would run code it holds (pickle, joblib, ``allow_pickle``) untrusted.

    Such a row loads only where the caller asks for that serializer (``get(key,
    serializer=...)``, a task declaring it), the store trusts it
    (``CacheStore(..., trusted_serializers=[...])``), or this process wrote it.
    """


class SerializerMismatchError(UntrustedPayloadError):
    """The row was written with a serializer the caller does not accept (``get(key, accept=)``)."""


class SchemaVersionError(XpersistSQLError, RuntimeError):
    """The index database is at another schema revision than this package expects."""


class IndexUnavailableError(XpersistSQLError, ConnectionError):
    """The index database cannot be reached or opened (server down, wrong host, credentials...).

    The message names the database URL (password hidden) and what to check; the driver's error
    is the ``__cause__``.
    """


class InputsHashError(XpersistSQLError, TypeError):
    """A task's input cannot be hashed deterministically for ``{inputs_hash}``.

    The message names the task and the parameter, and how to make it hashable (a
    ``__dask_tokenize__`` method) or to keep it out of the target.
    """


class LockTimeoutError(XpersistSQLError, TimeoutError):
    """Another worker held the key's lock for longer than ``store.lock``'s ``timeout``."""


class MissingDependencyError(XpersistSQLError, ImportError):
    """An optional dependency needed by a serializer or backend is not installed."""
