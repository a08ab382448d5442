"""The store marker: the file in a store's hidden directory that gives the store its identity.

A directory is an xpersist_sql store when it holds ``.xpersist_sql/store.json``::

    {"format": 1, "store_id": "5f0c...", "created_at": "2026-11-27T16:00:00+00:00"}

``store_id`` is recorded in the index (the ``xpersist_stores`` table) and owns the store's rows:
several stores may share one database and each sees only its own artifacts. The identity is the
id, not the path: a store folder moved or copied whole keeps working. The marker is written once,
on a store's first write, so that two processes creating the same store agree on one id: on
local disk with an exclusive create, on an object store (no portable exclusive create) under
the index's lock on the store root (``StoreBackend._marker_lock``). Nothing ever rewrites or
removes it.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from .errors import UnsafePathError

__all__ = [
    "HIDDEN_DIR",
    "MARKER_NAME",
    "StoreMarker",
    "check_real_dir",
    "create_marker",
    "marker_path",
    "read_marker",
    "store_root_url",
]

#: The hidden directory of a store: marker, embedded index, staging, trash, locks.
HIDDEN_DIR = ".xpersist_sql"
#: The marker's file name inside :data:`HIDDEN_DIR`.
MARKER_NAME = "store.json"
_FORMAT = 1


@dataclass(frozen=True)
class StoreMarker:
    """The content of a store marker.

    ``store_id`` is the store's identity (a UUID in hex); ``created_at`` says when the store was
    created (ISO 8601, UTC).
    """

    store_id: str
    created_at: str


def store_root_url(fs: AbstractFileSystem, root: str) -> str:
    """Return how a store root is recorded in the index: a real local path, or a URL."""
    if isinstance(fs, LocalFileSystem):
        return os.path.realpath(root)
    return str(fs.unstrip_protocol(root.rstrip("/")))


def marker_path(root: str) -> str:
    """Return the path of the marker of the store rooted at ``root`` (a filesystem path)."""
    return posixpath.join(root.rstrip("/") or "/", HIDDEN_DIR, MARKER_NAME)


def _parse(raw: bytes, where: str) -> StoreMarker:
    try:
        document = json.loads(raw)
        store_id = document["store_id"]
        created_at = document.get("created_at", "")
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(
            f"the store marker {where} is damaged ({type(exc).__name__}: {exc}); it must hold "
            '{"format": 1, "store_id": "<hex id>"}. Restore it from a backup of the store'
        ) from None
    if not isinstance(store_id, str) or len(store_id) != 32:
        raise ValueError(f"the store marker {where} has an invalid store_id {store_id!r}")
    return StoreMarker(store_id=store_id, created_at=str(created_at))


def check_real_dir(path: str, what: str) -> bool:
    """Return whether a local directory of a store exists; raise if it is a link or a file.

    A store's hidden directory and the directories in it (``staging``, ``trash``, ``locks``)
    are its own: reached through a symbolic link, a store would read, write and remove the
    files of whatever the link points at.

    Raises
    ------
    UnsafePathError
        If ``path`` is a symbolic link, or something other than a directory.
    """
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    if stat.S_ISDIR(mode):
        return True
    kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a directory"
    raise UnsafePathError(
        f"the store's {what} {path!r} is {kind}: xpersist_sql never follows links inside a "
        "store, nor reads, writes or removes what one points at. Replace it with a directory "
        "of its own (or remove it: the store makes it again)"
    )


def read_marker(fs: AbstractFileSystem, root: str) -> StoreMarker | None:
    """Return the marker of the store at ``root``, or None when ``root`` holds none.

    Raises
    ------
    ValueError
        If a marker exists but cannot be read as one.
    """
    path = marker_path(root)
    if isinstance(fs, LocalFileSystem):
        check_real_dir(posixpath.dirname(path), "hidden directory")
    else:
        fs.invalidate_cache(path)
    try:
        raw = fs.cat_file(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return _parse(raw, path)


def create_marker(fs: AbstractFileSystem, root: str) -> StoreMarker:
    """Write a new marker at ``root`` unless one exists; return the marker that is there.

    On a local filesystem the marker is published with ``link()``, which fails if the file
    exists, so that of two processes creating one store exactly one id wins.
    """
    existing = read_marker(fs, root)
    if existing is not None:
        return existing
    marker = StoreMarker(uuid.uuid4().hex, datetime.now(timezone.utc).isoformat())
    content = json.dumps(
        {"format": _FORMAT, "store_id": marker.store_id, "created_at": marker.created_at}
    ).encode()
    path = marker_path(root)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    else:
        fs.pipe_file(path, content)
    found = read_marker(fs, root)
    assert found is not None
    return found
