"""MkDocs hook: render the Sphinx roles of the package's docstrings as inline code.

The docstrings use ``:class:`X``` and friends (readable in ``help()`` and IDEs); mkdocstrings
leaves the role's prefix in the page. This strips it, and shows ``~pkg.mod.X`` as ``X`` like
Sphinx does.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|mod|attr|exc|data|obj|const):<code>(?P<tilde>~?)(?P<target>[^<]*)</code>"
)


def _code(match: re.Match[str]) -> str:
    target = match["target"]
    if match["tilde"]:
        target = target.rsplit(".", 1)[-1]
    return f"<code>{target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    """Replace ``:role:<code>target</code>`` with ``<code>target</code>``."""
    return _ROLE.sub(_code, html)
