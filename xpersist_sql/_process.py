"""The id of this process, known without a system call.

Connections, write locks and batched access records belong to the process that made them;
the code checks it on every call, which ``os.getpid()`` would make one system call each (glibc
does not cache it). The id is read once and again in a child after ``os.fork()``.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def current_pid() -> int:
    """Return ``os.getpid()``, kept up to date across ``os.fork()``."""
    return _pid


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)
