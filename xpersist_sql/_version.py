"""The installed version of xpersist_sql.

The version is single-sourced from git tags: hatch-vcs writes it into the distribution's metadata
when the package is built or installed (``v0.2.0`` -> ``0.2.0``; commits after the last tag ->
``0.2.1.devN+g<hash>``; a clone without tags -> ``0.1.1.devN+g<hash>``, after the fallback
``0.1.0``; no git at all -> ``0.1.0``). It is read back here from that metadata, so an editable
install reports the version it was installed at.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__: str = version("xpersist_sql")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
