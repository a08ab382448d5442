"""MkDocs hook: render the Sphinx roles of the package's docstrings, linking other libraries.

The docstrings use ``:class:`X``` and friends (readable in ``help()`` and IDEs); mkdocstrings
leaves the role's prefix in the page. This strips it, shows ``~pkg.mod.X`` as ``X`` like Sphinx
does, and turns a role naming an object of xarray, pandas, numpy, zarr, fsspec, SQLAlchemy,
Prefect, joblib or the standard library into a link to that library's documentation.

Sphinx inventories (``objects.inv``), which mkdocstrings can load, are fetched over the network
at build time; the documentation is built offline (CI has no network), so the links come from
the URL scheme of each library's API pages instead, in :data:`EXTERNAL`.
"""

from __future__ import annotations

import html
import re
from typing import Any

_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|mod|attr|exc|data|obj|const):<code>(?P<tilde>~?)(?P<target>[^<]*)</code>"
)

_PYTHON = "https://docs.python.org/3/library/{module}.html#{target}"
#: Top-level package -> URL of an object's page; ``{target}`` is the dotted name, ``{module}``
#: its top-level package, ``{name}`` its last part.
EXTERNAL: dict[str, str] = {
    "xarray": "https://docs.xarray.dev/en/stable/generated/{target}.html",
    "pandas": "https://pandas.pydata.org/docs/reference/api/{target}.html",
    "numpy": "https://numpy.org/doc/stable/reference/generated/{target}.html",
    "zarr": "https://zarr.readthedocs.io/en/stable/api/zarr/index.html#{target}",
    "fsspec": "https://filesystem-spec.readthedocs.io/en/latest/api.html#{target}",
    "sqlalchemy": "https://docs.sqlalchemy.org/en/20/core/connections.html#{target}",
    "prefect": "https://docs.prefect.io/v3/api-ref/python/prefect-{module_tail}",
    "joblib": "https://joblib.readthedocs.io/en/stable/generated/{target}.html",
    "filelock": "https://py-filelock.readthedocs.io/en/latest/api.html#{target}",
    "alembic": "https://alembic.sqlalchemy.org/en/latest/api/index.html#{target}",
    "dask": "https://docs.dask.org/en/stable/generated/{target}.html",
    "datetime": _PYTHON,
    "json": _PYTHON,
    "pickle": _PYTHON,
    "os": _PYTHON,
    "inspect": _PYTHON,
    "warnings": _PYTHON,
}
#: Objects whose page does not follow their package's scheme.
EXACT: dict[str, str] = {
    "sqlalchemy.engine.URL": "https://docs.sqlalchemy.org/en/20/core/engines.html#sqlalchemy.engine.URL",
    "sqlalchemy.create_engine": "https://docs.sqlalchemy.org/en/20/core/engines.html#sqlalchemy.create_engine",
    "fsspec.spec.AbstractFileSystem": "https://filesystem-spec.readthedocs.io/en/latest/api.html#fsspec.spec.AbstractFileSystem",
    "prefect.task": "https://docs.prefect.io/v3/api-ref/python/prefect-tasks#task",
    "prefect.Task": "https://docs.prefect.io/v3/api-ref/python/prefect-tasks#task",
    "dask.base.tokenize": "https://docs.dask.org/en/stable/generated/dask.base.tokenize.html",
    "prefect.flow": "https://docs.prefect.io/v3/api-ref/python/prefect-flows#flow",
}


def external_url(target: str) -> str | None:
    """Return the documentation URL of ``target`` (a dotted name) in its library, or None."""
    if target in EXACT:
        return EXACT[target]
    module = target.split(".", 1)[0]
    scheme = EXTERNAL.get(module)
    if scheme is None:
        return None
    parts = target.split(".")
    tail = "-".join(parts[1:-1]) or parts[-1]
    return scheme.format(target=target, module=module, name=parts[-1], module_tail=tail)


def _code(match: re.Match[str]) -> str:
    target = html.unescape(match["target"])
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    code = f"<code>{html.escape(shown)}</code>"
    url = external_url(target)
    return code if url is None else f'<a href="{html.escape(url)}">{code}</a>'


def on_page_content(html_text: str, **kwargs: Any) -> str:
    """Replace ``:role:<code>target</code>`` with the code, linked when it is another library's."""
    return _ROLE.sub(_code, html_text)
