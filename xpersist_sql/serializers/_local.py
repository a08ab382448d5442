"""Helpers for serializers whose libraries want a local path or a file object."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem


def is_local(fs: AbstractFileSystem) -> bool:
    """Return whether ``fs`` is the local filesystem."""
    return isinstance(fs, LocalFileSystem)


@contextlib.contextmanager
def local_target(fs: AbstractFileSystem, path: str, suffix: str = "") -> Iterator[str]:
    """Yield a local file path whose content ends up at ``path`` on ``fs``.

    On the local filesystem that is ``path`` itself; elsewhere a temporary file that is uploaded
    when the block exits without error.
    """
    if is_local(fs):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        yield path
        return
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        fs.put_file(tmp, path)
    finally:
        os.unlink(tmp)
