"""Payload storage on an fsspec filesystem: key validation, staging, atomic moves, fingerprints.

Layout of a store rooted at ``<path>``::

    <path>/<key>                       the payloads, in their native formats
    <path>/.xpersist_sql/index.sqlite  the embedded index (local stores without database_url)
    <path>/.xpersist_sql/staging/      payloads being written (leftovers of crashed writers)
    <path>/.xpersist_sql/trash/        payloads being replaced or deleted
    <path>/.xpersist_sql/commits/      commit tokens of directory payloads (object stores)
    <path>/.xpersist_sql/locks/        file locks

A payload has two fingerprints, recorded together in its row (``<walk>;i=<identity>``):

- the **walk** fingerprint (file names, sizes, modification times or ETags of every file), for
  ``verify`` and for finding a payload a killed writer moved away;
- the **identity**, checked by every ``get`` at the cost of one ``lstat`` (local disk) or one
  ``HEAD`` (object stores), whatever the payload's size: see :meth:`PayloadStorage.identity`.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import posixpath
import random
import shutil
import stat as stat_module
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from .errors import InvalidKeyError, UnsafePathError
from .marker import HIDDEN_DIR, MARKER_NAME, check_real_dir

__all__ = [
    "COMMIT_TOKEN",
    "HIDDEN_DIR",
    "TOKEN_SUFFIX",
    "PayloadStat",
    "PayloadStorage",
    "exchange_paths",
    "join_fingerprint",
    "key_tag",
    "sealed_by_token",
    "split_fingerprint",
    "validate_key",
]

#: On object stores, the hidden sub-directory holding each directory payload's commit token: an
#: object its writer writes last, with a fresh random content, so that its ETag names one write.
#: Readers trust the payload only while its token is the one the row recorded (one HEAD). The
#: token lives outside the payload (:meth:`PayloadStorage.token_path`): a payload holds only
#: what its serializer wrote, so zarr, xarray and any other reader see nothing foreign in it.
COMMIT_TOKEN = "commits"
#: Suffix of a commit token's name (``commits/<payload path>.commit``).
TOKEN_SUFFIX = ".commit"
#: Separates the walk fingerprint from the identity in the recorded fingerprint.
IDENTITY_FIELD = ";i="

MAX_KEY_LENGTH = 1024
#: Longest path segment in bytes (UTF-8) that common filesystems accept.
MAX_SEGMENT_BYTES = 255


def validate_key(key: Any, *, store: str = "") -> str:
    r"""Return ``key`` if it names a path inside the store root, else raise InvalidKeyError.

    A key is a relative POSIX path: not empty, not absolute, no ``\\``, no empty, ``.`` or ``..``
    segment, no segment named like the hidden directory (``.xpersist_sql``), no segment over 255
    bytes, at most 1024 characters. The verdict on a key is cached: checking a key seen recently
    costs a dictionary lookup.
    """
    if not isinstance(key, str):
        where = f" in store {store!r}" if store else ""
        raise InvalidKeyError(f"a key must be a str, got {type(key).__name__} {key!r}{where}")
    if len(key) > MAX_KEY_LENGTH:  # not cached: any length may come
        problem: str | None = f"it is longer than {MAX_KEY_LENGTH} characters"
    else:
        problem = _key_problem(key)
    if problem:
        where = f" in store {store!r}" if store else ""
        raise InvalidKeyError(
            f"invalid key {key!r}{where}: {problem}. Use a relative path such as "
            "'results/2024/ds.zarr'"
        )
    return key


@functools.lru_cache(maxsize=4096)
def _key_problem(key: str) -> str | None:
    """Return what makes ``key`` invalid, or None (cached: keys are read again and again)."""
    segments = key.split("/")
    if not key:
        return "it is empty"
    if "\x00" in key or "\\" in key:
        return "it contains a NUL byte or a backslash"
    if key.startswith("/") or "://" in key or (len(key) > 1 and key[1] == ":"):
        return "it is absolute; keys are paths relative to the store root"
    if any(segment in ("", ".", "..") for segment in segments):
        return "it has an empty, '.' or '..' path segment"
    if HIDDEN_DIR in segments:
        return f"{HIDDEN_DIR!r} is the name of a store's hidden directory"
    if any(
        len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES for segment in segments
    ):
        return f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def key_tag(key: str) -> str:
    """Return a short hash of ``key`` naming its staging and trash entries (``<tag>-<uuid>``)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None
if sys.platform.startswith("linux"):  # pragma: no branch
    try:
        _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
        _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
        _renameat2.restype = ctypes.c_int
    except (AttributeError, OSError):  # glibc < 2.28
        _renameat2 = None


def exchange_paths(first: str, second: str) -> bool:
    """Swap two existing local paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, having changed nothing, where the platform or the filesystem cannot do it.
    """
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE):
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
            return False
        raise OSError(code, os.strerror(code), first, None, second)
    return True


@dataclass(frozen=True)
class PayloadStat:
    """Size and fingerprints of a payload, from the filesystem's own metadata.

    Attributes
    ----------
    size_bytes : int
        Total size of its files.
    fingerprint : str
        The walk fingerprint: ``files=N;size=N;<sha1 of names, sizes, mtimes or ETags>``.
    identity : str or None
        The O(1) identity (:meth:`PayloadStorage.identity`), where it was taken.
    """

    size_bytes: int
    fingerprint: str
    identity: str | None = None

    @property
    def recorded(self) -> str:
        """What the index records: the walk fingerprint and the identity, joined."""
        return join_fingerprint(self.fingerprint, self.identity)


def join_fingerprint(walk: str, identity: str | None) -> str:
    """Return the recorded fingerprint ``<walk>;i=<identity>`` (the walk alone without one)."""
    return walk if identity is None else f"{walk}{IDENTITY_FIELD}{identity}"


#: How the identity of a directory payload on an object store (its commit token's ETag) begins.
TREE_IDENTITY = "o:d:"


def sealed_by_token(identity: str | None) -> bool:
    """Whether an identity is a commit token's: a directory payload written in place."""
    return identity is not None and identity.startswith(TREE_IDENTITY)


def split_fingerprint(recorded: str | None) -> tuple[str | None, str | None]:
    """Split a recorded fingerprint into ``(walk, identity)``.

    Rows written before identities were recorded (and imported 2021 payloads) have the walk
    fingerprint alone: their identity is None.
    """
    if recorded is None:
        return None, None
    walk, found, identity = recorded.partition(IDENTITY_FIELD)
    return walk, (identity if found else None)


def _short(number: int) -> str:
    """Return ``number`` (non-negative) as unpadded URL-safe base64 of its big-endian bytes.

    Short (identities stay readable in ``show``) and computed in C.
    """
    raw = number.to_bytes((number.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _local_identity(info: os.stat_result) -> str:
    """Return the identity of a local payload from its ``lstat``: ``<inode>:<mtime_ns>``."""
    return _encode_identity(info.st_ino, info.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _encode_identity(inode: int, mtime_ns: int) -> str:
    """``<inode>:<mtime_ns>`` as :func:`_local_identity` records it (cached: a hit re-reads it)."""
    return f"{_short(inode)}:{_short(mtime_ns)}"


def _special_kind(mode: int) -> str:
    """Name what an ``lstat`` mode that is no file, directory or link is."""
    if stat_module.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat_module.S_ISSOCK(mode):
        return "a socket"
    if stat_module.S_ISCHR(mode) or stat_module.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _nonce_ns() -> int:
    """Return a modification time of now with random nanoseconds, unique to one write.

    Unique, not secret: the module's generator (reseeded in a forked child) needs no system
    call, where ``secrets`` reads the kernel's on every write.
    """
    return time.time_ns() // 1000 * 1000 + random.randrange(1000)


def _file_marker(info: dict[str, Any]) -> str:
    for field in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified", "created"):
        if info.get(field) is not None:
            return str(info[field])
    return ""


def _scan(directory: str, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(relative name, {size, mtime})`` for every file below a local directory.

    What ``LocalFileSystem.find(detail=True)`` reports (a symbolic link counts as a file, with
    its target's size), read with ``os.scandir`` alone: a fraction of the cost.
    """
    with os.scandir(directory) as entries:
        for entry in entries:
            name = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                yield from _scan(entry.path, f"{name}/")
                continue
            info = entry.stat(follow_symlinks=False)
            size = info.st_size
            if entry.is_symlink():
                try:
                    size = os.stat(entry.path).st_size
                except OSError:
                    size = 0
            yield name, {"size": size, "mtime": info.st_mtime}


class PayloadStorage:
    """Payload files of one store on an fsspec filesystem.

    Every removal or replacement of a file goes through :meth:`take` (a payload out of its key,
    into the trash) and :meth:`purge` (a path inside the hidden ``staging``/``trash``
    directories): they validate the key, refuse symbolic links on the way and any tree holding a
    store's hidden directory (another store nested here), and never leave the root.

    Parameters
    ----------
    path : str
        Store root: a local path or an fsspec URL (``s3://bucket/prefix``, ``memory://x``).
    storage_options : dict, optional
        Passed to the fsspec filesystem.
    """

    def __init__(self, path: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs: AbstractFileSystem
        self.fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            # symlinks above the root (/tmp -> /private/tmp) are the user's; below it, refused
            root = os.path.realpath(os.path.expanduser(root))
        self.root: str = root.rstrip("/") or "/"
        # what a key is appended to: "<root>/" (a validated key is never absolute)
        self._prefix = self.root if self.root == "/" else self.root + "/"
        self._staging = self.internal_dir("staging").rstrip("/")

    # -- paths -----------------------------------------------------------------------------------
    def _join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def path(self, key: str) -> str:
        """Return the filesystem path (no protocol) of the payload of ``key``."""
        return self._prefix + key

    def url(self, key: str | None = None) -> str:
        """Return a URL of the payload (or of the root) that fsspec/xarray open directly."""
        path = self.root if key is None else self.path(key)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    @property
    def hidden_dir(self) -> str:
        """Path of the hidden ``.xpersist_sql`` directory."""
        return self._join(HIDDEN_DIR)

    def internal_dir(self, name: str) -> str:
        """Path of a sub-directory of the hidden directory (``staging``, ``trash``, ``locks``)."""
        return self._join(HIDDEN_DIR, name)

    def check_internal_dir(self, name: str) -> bool:
        """Return whether ``internal_dir(name)`` exists, checking it is the store's own.

        On local disk neither it nor the hidden directory may be a symbolic link (the store
        would write and remove files wherever it points); object stores have no links.

        Raises
        ------
        UnsafePathError
            If either is a symbolic link or not a directory.
        """
        if not self.is_local:
            return True
        if not check_real_dir(self.hidden_dir, "hidden directory"):
            return False
        return check_real_dir(self.internal_dir(name), f"{name} directory")

    def _make_internal_dir(self, name: str) -> str:
        directory = self.internal_dir(name)
        if self.is_local:
            if not check_real_dir(directory, f"{name} directory"):  # one lstat once it exists
                check_real_dir(self.hidden_dir, "hidden directory")
                os.makedirs(directory, exist_ok=True)
                self.check_internal_dir(name)  # nothing swapped a link in meanwhile
        else:
            self.fs.makedirs(directory, exist_ok=True)
        return directory

    # -- guards ----------------------------------------------------------------------------------
    def check_path(self, key: str, *, final: bool = True) -> str:
        """Return the path of ``key`` after checking that no component of it is a symlink.

        On object stores (no symlinks) this only validates the key. ``final=False`` checks
        the parent directories only.

        Raises
        ------
        InvalidKeyError
            For an invalid key.
        UnsafePathError
            If a directory on the way (or, with ``final``, the payload itself) is a symbolic
            link, or a directory on the way holds another store.
        """
        return self._checked(key, final=final)[0]

    def locate(self, key: str) -> tuple[str, bool]:
        """Return ``(path, present)`` of ``key``, checked as :meth:`check_path` checks it.

        ``present`` comes from the same ``lstat`` that checks the payload is no symbolic link
        (local disk); on object stores it is True without a request (a load says otherwise).
        """
        path, present, _parents = self._checked(key, final=True)
        return path, present

    def _checked(self, key: str, *, final: bool) -> tuple[str, bool, bool]:
        """``(path, present, parents)``: ``parents`` when every directory on the way exists.

        ``parents`` is whether the walk reached the key's last segment (every directory before
        it is one); ``present`` whether something lies there (from the same ``lstat``).
        """
        validate_key(key, store=self.url())
        if not self.is_local:
            return self.path(key), True, True
        present = False
        parts = key.split("/")
        parents = False
        current = self._prefix[:-1]  # "" for the root "/"
        for depth, part in enumerate(parts, 1):
            current = f"{current}/{part}"
            last = depth == len(parts)
            if last:
                parents = True
                if not final:
                    break
            try:
                mode = os.lstat(current).st_mode
            except (FileNotFoundError, NotADirectoryError):  # nothing there, or a file on the way
                break
            present = last
            if stat_module.S_ISLNK(mode):
                raise UnsafePathError(
                    f"key {key!r} of store {self.url()!r} passes through the symbolic link "
                    f"{current!r}: xpersist_sql never follows links inside a store. Remove the "
                    "link or use another key"
                )
            if last and not (stat_module.S_ISREG(mode) or stat_module.S_ISDIR(mode)):
                # a FIFO would block the load forever, a device read without end
                raise UnsafePathError(
                    f"key {key!r} of store {self.url()!r} is {_special_kind(mode)} "
                    f"({current!r}), not a file or directory a store writes: xpersist_sql never "
                    f"opens it. Remove it (store.delete({key!r}) does) or use another key"
                )
            if not last and not stat_module.S_ISDIR(mode):
                break  # a file in the way: the write fails, or the index names the key
            if not last and os.path.lexists(os.path.join(current, HIDDEN_DIR)):
                raise UnsafePathError(
                    f"key {key!r} of store {self.url()!r} lies inside {current!r}, which holds "
                    f"another store ({HIDDEN_DIR!r}): a store never reads or writes another "
                    "store's files. Use another key, or open that store itself"
                )
        return self.path(key), present, parents

    def _holds_store(self, path: str) -> bool:
        """Whether the tree at ``path`` contains a store's hidden directory (a nested store)."""
        if self.is_local:
            if not os.path.isdir(path) or os.path.islink(path):
                return False
            for _current, dirs, files in os.walk(path, followlinks=False):
                if HIDDEN_DIR in dirs or HIDDEN_DIR in files:
                    return True
            return False
        self._refresh(path)
        try:
            names = self.fs.find(path, withdirs=True)
        except FileNotFoundError:
            return False
        return any(f"/{HIDDEN_DIR}/" in f"/{name}/" for name in names)

    def _inside_internal(self, path: str) -> str | None:
        """Return the internal directory ``path`` lies in (``staging``, ``trash``...), or None."""
        normal = posixpath.normpath(path)
        if ".." in normal.split("/"):
            return None
        for name in ("staging", "trash", COMMIT_TOKEN):
            if normal.startswith(self.internal_dir(name).rstrip("/") + "/"):
                return name
        return None

    # -- writing ---------------------------------------------------------------------------------
    def staging_path(self, key: str) -> str:
        """Return a fresh staging path for a new payload of ``key``.

        Usually ``staging/<key_tag(key)>-<uuid>-<name>`` (``<name>``: the key's last segment,
        kept so that serializers see the suffix): one temporary file or directory, no
        per-write directory, on the same filesystem as the key so that publishing it is one
        rename. When that name would be too long for the filesystem, the payload is staged as
        ``staging/<key_tag(key)>-<uuid>/<name>`` instead. Either way the leftovers of a killed
        writer can be told apart by key (:meth:`staged_payload`).
        """
        staging = self._staging
        if not self.is_local or not check_real_dir(staging, "staging directory"):
            self._make_internal_dir("staging")  # on local disk one lstat once it exists
        entry = f"{key_tag(key)}-{os.urandom(16).hex()}"  # as uuid4().hex: 32 random hex digits
        name = posixpath.basename(key)
        flat = f"{entry}-{name}"
        if len(flat.encode("utf-8", "surrogatepass")) <= MAX_SEGMENT_BYTES:
            return posixpath.join(staging, flat)
        parent = posixpath.join(staging, entry)
        self.fs.makedirs(parent, exist_ok=True)
        return posixpath.join(parent, name)

    def staged_payload(self, entry: str, key: str | None = None) -> str | None:
        """Return the payload path of a staging entry (a path directly under ``staging/``).

        ``<tag>-<uuid>-<name>`` is the payload itself; ``<tag>-<uuid>`` holds it as its one
        entry. With ``key``, None unless the entry is one of that key's.
        """
        name = posixpath.basename(entry.rstrip("/"))
        tag, _, rest = name.partition("-")
        if key is not None and tag != key_tag(key):
            return None
        if len(rest) > 32 and rest[32] == "-":
            return entry
        if key is not None:
            return posixpath.join(entry, posixpath.basename(key))
        try:
            inner = self.fs.ls(entry, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return inner[0].rstrip("/") if len(inner) == 1 else None

    def discard_staging(self, staged: str, *, published: bool = False) -> None:
        """Remove a staging path (and its per-write directory, where it has one).

        ``published``: :meth:`publish` moved the payload to its key (on local disk, a rename:
        a flat staging path left nothing behind).
        """
        parent = posixpath.dirname(staged)
        if parent == self._staging:
            if self.is_local and (published or not os.path.lexists(staged)):
                return  # published (renamed away): nothing left to remove
            self.purge(staged)
        else:
            self.purge(parent)

    def seal(self, path: str) -> PayloadStat:
        """Mark a freshly written payload as one write, and return its size and fingerprints.

        On local disk its modification time (of the file, or of a directory payload's root) is
        set to now with random nanoseconds (its access time too), so that ``(inode, size,
        mtime_ns)`` names this write alone and survives the rename that publishes it. On object
        stores a directory payload gets its :data:`COMMIT_TOKEN`, written last.
        """
        if self.is_local:
            nonce = _nonce_ns()  # the access time too: no lstat to keep the old one
            os.utime(path, ns=(nonce, nonce), follow_symlinks=False)
            after = os.lstat(path)
            if stat_module.S_ISREG(after.st_mode):
                # one file: its stat and identity from this one lstat (as stat/identity read it)
                stat = self._walk({"": {"size": after.st_size, "mtime": after.st_mtime}})
                identity = _local_identity(after)
                return PayloadStat(stat.size_bytes, stat.fingerprint, identity)
            stat = self.stat(path)
            return PayloadStat(stat.size_bytes, stat.fingerprint, self.identity(path))
        self._refresh(path)
        files = self._files(path)
        stat = self._walk(files)
        if list(files) == [""]:
            meta = files[""]
            identity = f"o:f:{_file_marker(meta).strip(chr(34))}:{int(meta.get('size') or 0)}"
        else:
            token = self.token_path(path)
            self.fs.makedirs(posixpath.dirname(token), exist_ok=True)
            self.fs.pipe_file(token, uuid.uuid4().hex.encode())
            self._refresh(token)
            identity = f"{TREE_IDENTITY}{_file_marker(self.fs.info(token)).strip(chr(34))}"
        return PayloadStat(stat.size_bytes, stat.fingerprint, identity)

    def token_path(self, path: str) -> str:
        """Return where the commit token of the directory payload at ``path`` lives.

        ``<root>/.xpersist_sql/commits/<path relative to the root>.commit``: outside the payload,
        one per payload path (a key, or the trash entry a payload was moved to). :meth:`_move`
        moves a tree's tokens with it (copied last, removed first) and :meth:`purge` removes
        them with it.
        """
        relative = posixpath.relpath(path, self.root)
        return self._join(HIDDEN_DIR, COMMIT_TOKEN, f"{relative}{TOKEN_SUFFIX}")

    def _tokens(self, path: str) -> dict[str, str]:
        """Map payload name relative to ``path`` (``""``: the tree's own) -> its token's path.

        A tree holds more than its own token only when it holds several payloads (a killed
        writer's leftover directory that gc removes as one orphan).
        """
        own = self.token_path(path)
        base = own[: -len(TOKEN_SUFFIX)]
        self._refresh(own)
        self._refresh(base)
        found = {"": own} if self.fs.exists(own) else {}
        try:
            below = self.fs.find(base)
        except FileNotFoundError:  # pragma: no cover - find answers [] on most filesystems
            below = []
        for name in below:
            if name.endswith(TOKEN_SUFFIX) and name.startswith(base + "/"):
                found[name[len(base) + 1 : -len(TOKEN_SUFFIX)]] = name
        return found

    def identity(self, path: str, like: str | None = None) -> str:
        """Return the O(1) identity of the payload at ``path``: what a ``get`` checks.

        - local disk, one ``lstat``: ``<inode>:<mtime_ns>`` (each in unpadded URL-safe
          base64) of the file, or of a directory payload's root. :meth:`seal` made the
          modification time unique to the write; a rename keeps it, any rewrite of the file or
          any entry added to or removed from the directory's root changes it, and a payload
          swapped in has another inode.
        - object stores, one ``HEAD``: ``o:f:<ETag>:<size>`` of the file, or ``o:d:<ETag>`` of
          a directory payload's :data:`COMMIT_TOKEN`.

        Changes deeper inside a directory payload (a chunk rewritten in place) are not seen
        here: that is ``verify``'s job (the walk fingerprint). ``like`` is the recorded
        identity, which tells a file from a directory without a listing.

        Raises
        ------
        FileNotFoundError
            If nothing (or, for a directory on an object store, no token) is there.
        """
        if self.is_local:
            info = os.lstat(path)
            return _local_identity(info)
        if like is None:
            self._refresh(path)
            kind = "d" if self.fs.isdir(path) else "f"
        else:
            kind = "d" if sealed_by_token(like) else "f"
        target = self.token_path(path) if kind == "d" else path
        self._refresh(target)
        meta = self.fs.info(target)
        if meta.get("type") == "directory":
            raise FileNotFoundError(target)
        marker = _file_marker(meta).strip('"')
        if kind == "d":
            return f"{TREE_IDENTITY}{marker}"
        return f"o:f:{marker}:{int(meta.get('size') or 0)}"

    def publish(self, staged: str, key: str) -> str | None:
        """Move a staged payload to ``<root>/<key>``.

        On the local filesystem a new payload is renamed in; a replaced payload is swapped with
        the staged one in one atomic step (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere a
        file is replaced atomically and a directory is first renamed away), so a reader finds
        either the old or the new payload at the key, never none and never a mix. The replaced
        payload then goes to the trash as ``trash/<key_tag>-<uuid>``. Returns its trash path, to
        be removed with :meth:`purge` once the index row is committed (or put back with
        :meth:`restore` if it is not), or ``None``. A writer killed in between leaves the old
        payload in its staging directory or the trash, where :meth:`find_displaced` finds it.

        Raises
        ------
        UnsafePathError
            If the key passes through a symlink, or what lies at the key holds another store.
        """
        final, present, parents = self._checked(key, final=True)
        trash: str | None = None
        if self.is_local:
            # the check found no link on the way, and every directory of it (or not)
            if not parents:
                try:
                    os.makedirs(os.path.dirname(final), exist_ok=True)
                except (FileExistsError, NotADirectoryError):
                    raise UnsafePathError(
                        f"cannot write key {key!r} in store {self.url()!r}: a file that is not "
                        "a stored payload lies on its path; remove it or use another key"
                    ) from None
                # nothing swapped a link in while they were made
                final, present, _parents = self._checked(key, final=True)
            if present:
                self._refuse_store(key, final)
                trash = self._trash_path(key)
                if exchange_paths(staged, final):
                    os.replace(staged, trash)
                elif os.path.isdir(final):
                    os.replace(final, trash)
                    os.replace(staged, final)
                else:
                    os.replace(staged, final)
                    trash = None
            else:
                os.replace(staged, final)
        else:
            self.refuse_inside_store(key)
            if self.exists(key):
                self._refuse_store(key, final)
                trash = self._trash_path(key)
                self._move(final, trash)
            self._move(staged, final)
        return trash

    def refuse_inside_store(self, key: str) -> None:
        """Object stores: refuse a key whose folders hold another store (its marker).

        On local disk the walk of :meth:`check_path` checks each directory on the way; an
        object store has no directories to walk, so each folder of the key is asked for a
        marker (one request per level of the key, on writes and removals only).
        """
        if self.is_local:
            return
        folder = ""
        for part in key.split("/")[:-1]:
            folder = f"{folder}{part}/"
            marker = self._join(folder, HIDDEN_DIR, MARKER_NAME)
            self._refresh(marker)
            if self.fs.exists(marker):
                raise UnsafePathError(
                    f"key {key!r} of store {self.url()!r} lies inside {self.url(folder)!r}, "
                    f"which holds another store ({HIDDEN_DIR!r}): a store never reads or writes "
                    "another store's files. Use another key, or open that store itself"
                )

    def _refuse_store(self, key: str, path: str) -> None:
        if self._holds_store(path):
            raise UnsafePathError(
                f"refusing to replace or remove {self.url(key)!r}: it holds another store's "
                f"{HIDDEN_DIR!r} directory. Move that store elsewhere, or use another key"
            )

    def restore(self, trash: str, key: str) -> None:
        """Put a payload moved to the trash by :meth:`publish` back at ``key``."""
        final = self.check_path(key)
        if self.is_local and os.path.lexists(final) and exchange_paths(trash, final):
            self.purge(trash)
            return
        if self.is_local:
            if os.path.lexists(final):
                moved = self.take(key)
                self.purge(moved)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(trash, final)
            return
        if self.fs.exists(final):
            self.purge(self.take(key))
        self._move(trash, final)

    def _move(self, source: str, target: str) -> None:
        """Move a file or a directory tree, file by file (object stores have no directories).

        ``fs.mv(recursive=True)`` on s3fs also tries to copy the directory entries themselves,
        which are not objects, and fails half-way.
        """
        if self.is_local:
            os.replace(source, target)
            return
        files = self._files(source)
        if list(files) == [""]:
            self.fs.copy(source, target)
            self.fs.rm(source)
        else:
            # The commit tokens are copied last and removed first: a reader trusts a payload
            # only while its token is the recorded one, so it never trusts a half-copied or
            # half-removed tree. A copy keeps a token's content, and so its ETag.
            tokens = self._tokens(source)
            names = list(files)
            sources = [posixpath.join(source, name) for name in names]
            self.fs.copy(sources, [posixpath.join(target, name) for name in names])
            if tokens:
                moved = [
                    self.token_path(posixpath.join(target, name) if name else target)
                    for name in tokens
                ]
                self.fs.copy(list(tokens.values()), moved)
                self.fs.rm(list(tokens.values()))
                for token in [*tokens.values(), *moved]:
                    self._refresh(token)
            if "" not in tokens:
                self._drop_token(target)  # a killed writer's token names no payload there
            self.fs.rm(sources)
        self._refresh(source)
        self._refresh(target)

    def _trash_path(self, key: str) -> str:
        trash_dir = self._make_internal_dir("trash")
        return posixpath.join(trash_dir, f"{key_tag(key)}-{uuid.uuid4().hex}")

    def find_displaced(self, key: str, fingerprint: str) -> str | None:
        """Find the payload of ``key`` with ``fingerprint`` that a killed writer moved away.

        Looks in the key's staging and trash entries (named by :func:`key_tag`), comparing
        walk fingerprints (``fingerprint`` may be a recorded one, identity included). Returns
        its path, or None.
        """
        walk = split_fingerprint(fingerprint)[0]
        tag = key_tag(key)
        candidates: list[str] = []
        for sub in ("staging", "trash"):
            if not self.check_internal_dir(sub):  # never looks through a link
                continue
            base = self.internal_dir(sub)
            self._refresh(base)
            try:
                entries = self.fs.ls(base, detail=False)
            except FileNotFoundError:
                continue
            for entry in entries:
                entry = entry.rstrip("/")
                if not posixpath.basename(entry).startswith(f"{tag}-"):
                    continue
                found = entry if sub == "trash" else self.staged_payload(entry, key)
                if found is not None:
                    candidates.append(found)
        identity = split_fingerprint(fingerprint)[1]
        matching: list[str] = []
        for candidate in candidates:
            try:
                if self.stat(candidate).fingerprint != walk:
                    continue
                # A killed mover may have left a complete copy without its commit token
                # beside the sealed one: the one that still has the recorded identity wins.
                if identity is None or self.identity(candidate, identity) == identity:
                    return candidate
            except (FileNotFoundError, NotADirectoryError):
                continue
            matching.append(candidate)
        return matching[0] if matching else None

    def take(self, key: str) -> str | None:
        """Move the payload of ``key`` into the trash: the one guarded way a payload leaves.

        The key is validated as ``put`` does it, no component of it may be a symlink (a payload
        that *is* a symlink is moved as the link itself, never its target) and the payload may
        not hold a store's hidden directory. Returns the trash path (to :meth:`purge` once the
        removal is committed, or :meth:`restore`), or None if nothing lies at the key.

        Raises
        ------
        InvalidKeyError, UnsafePathError
            When the key or what lies at it is outside what the store owns.
        """
        final = self.check_path(key, final=False)
        self.refuse_inside_store(key)  # object stores (a new key too: a put writes there next)
        if self.is_local:
            if not os.path.lexists(final):
                return None
        elif not self.exists(key):
            return None
        self._refuse_store(key, final)
        trash = self._trash_path(key)
        self._move(final, trash)
        return trash

    def purge(self, path: str | None) -> None:
        """Remove a path inside the hidden ``staging``/``trash`` directories, if it exists.

        Symbolic links are removed as links, never followed.

        Raises
        ------
        UnsafePathError
            For a path outside those directories.
        """
        if not path:
            return
        inside = self._inside_internal(path)
        if inside is None:
            raise UnsafePathError(
                f"refusing to remove {path!r}: only the store's staging and trash entries are "
                "removed directly"
            )
        if self.is_local:
            if not self.check_internal_dir(inside):
                return  # no such directory: nothing in it to remove
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                return
            if stat_module.S_ISDIR(mode):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            return
        self._refresh(path)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        if not path.startswith(self.internal_dir(COMMIT_TOKEN).rstrip("/") + "/"):
            tokens = self._tokens(path)
            if tokens:
                self.fs.rm(list(tokens.values()))
                for token in tokens.values():
                    self._refresh(token)

    def _drop_token(self, path: str) -> None:
        """Remove the commit token of the payload path ``path``, if it has one."""
        token = self.token_path(path)
        self._refresh(token)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(token)
        self._refresh(token)

    def is_symlink(self, key: str) -> bool:
        """Whether the payload of ``key`` is a symbolic link (local stores only)."""
        return self.is_local and os.path.islink(self.path(key))

    def holds_store(self, key: str) -> bool:
        """Whether what lies at ``key`` contains a store's hidden directory."""
        return self._holds_store(self.path(key))

    # -- reading ---------------------------------------------------------------------------------
    def _refresh(self, path: str) -> None:
        # Another process or machine may have changed ``path`` since this process listed it:
        # object-store filesystems (s3fs...) cache listings, which would answer from the past.
        if not self.is_local:
            self.fs.invalidate_cache(path)

    def exists(self, key: str) -> bool:
        """Return whether the payload of ``key`` is present."""
        path = self.path(key)
        self._refresh(path)
        return bool(self.fs.exists(path))

    def _files(self, path: str) -> dict[str, dict[str, Any]]:
        """Map relative name -> info for the file at ``path`` or every file below it."""
        if self.is_local:
            local = os.lstat(path)
            if stat_module.S_ISREG(local.st_mode):  # what fs.info says, without its overhead
                return {"": {"size": local.st_size, "mtime": local.st_mtime}}
            if stat_module.S_ISDIR(local.st_mode):
                return dict(sorted(_scan(path, "")))
        self._refresh(path)
        info = self.fs.info(path)
        if info.get("type") != "directory":
            return {"": info}
        found = self.fs.find(path, detail=True)
        prefix = path.rstrip("/") + "/"
        return {name[len(prefix) :]: meta for name, meta in sorted(found.items())}

    def stat(self, path: str) -> PayloadStat:
        """Size and walk fingerprint of the payload at ``path`` (a file or a directory).

        Lists every file of a directory payload: for ``verify``, ``put`` and the slow path of a
        ``get`` whose row has no identity, never for a hit (:meth:`identity`).
        """
        return self._walk(self._files(path))

    @staticmethod
    def _walk(files: dict[str, dict[str, Any]]) -> PayloadStat:
        digest = hashlib.sha1(usedforsecurity=False)
        total = 0
        for name, meta in files.items():
            size = int(meta.get("size") or 0)
            total += size
            digest.update(f"{name}\0{size}\0{_file_marker(meta)}\n".encode())
        return PayloadStat(
            size_bytes=total, fingerprint=f"files={len(files)};size={total};{digest.hexdigest()}"
        )

    def checksum(self, path: str) -> str:
        """Return ``sha256:<hex>`` over the relative names and contents of the payload's files."""
        digest = hashlib.sha256()
        for name in self._files(path):
            digest.update(name.encode() + b"\0")
            with self.fs.open(posixpath.join(path, name) if name else path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        return f"sha256:{digest.hexdigest()}"
