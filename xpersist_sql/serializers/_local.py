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


def read_bytes(path: str) -> bytes:
    """Return the content of a local file, read without a buffered file object around it.

    Four system calls for a small file (open, fstat, one read, close) where ``open(path,
    "rb").read()`` makes nine; fewer calls also mean fewer times this thread gives up the GIL
    to others (a Prefect task run has several busy threads).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size + 1)
        if len(data) == size:  # asked for one byte more than there is: all of it
            return data
        chunks = [data]
        while chunk := os.read(fd, 1 << 24):  # it changed meanwhile, or a read was capped
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` as the content of a local file (created or truncated, as ``open("wb")``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


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
