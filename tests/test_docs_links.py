"""The API reference links other libraries' objects to their documentation (docs/hooks.py).

Every Sphinx role in the package's docstrings that names an object of another library must
become a link, so that a docstring citing, say, ``:func:`xarray.open_zarr``` sends the reader
to xarray's page for it.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|exc|data|obj|const):`~?([\w.]+)`")


@pytest.fixture(scope="module")
def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def external_targets() -> set[str]:
    """Role targets in the package's sources that name another library's object."""
    found: set[str] = set()
    for source in (ROOT / "xpersist_sql").rglob("*.py"):
        for target in _ROLE.findall(source.read_text(encoding="utf-8")):
            top = target.split(".", 1)[0]
            if not top or top == "xpersist_sql":
                continue
            if top in sys.stdlib_module_names or importlib.util.find_spec(top) is not None:
                found.add(target)
    return found


def test_the_docstrings_cite_the_libraries_underneath() -> None:
    cited = {target.split(".", 1)[0] for target in external_targets()}
    assert {"xarray", "pandas", "numpy", "fsspec", "sqlalchemy", "prefect"} <= cited


def test_every_cited_object_of_another_library_is_linked(hooks: ModuleType) -> None:
    unlinked = sorted(t for t in external_targets() if hooks.external_url(t) is None)
    assert not unlinked, f"add these libraries to docs/hooks.py EXTERNAL: {unlinked}"


@pytest.mark.parametrize(
    ("role", "shown", "url"),
    [
        (
            ":class:<code>xarray.Dataset</code>",
            "<code>xarray.Dataset</code>",
            "https://docs.xarray.dev/en/stable/generated/xarray.Dataset.html",
        ),
        (
            ":meth:<code>~pandas.DataFrame.to_parquet</code>",
            "<code>to_parquet</code>",
            "https://pandas.pydata.org/docs/reference/api/pandas.DataFrame.to_parquet.html",
        ),
        (
            ":func:<code>sqlalchemy.create_engine</code>",
            "<code>sqlalchemy.create_engine</code>",
            "https://docs.sqlalchemy.org/en/20/core/engines.html#sqlalchemy.create_engine",
        ),
        (
            ":func:<code>prefect.task</code>",
            "<code>prefect.task</code>",
            "https://docs.prefect.io/v3/api-ref/python/prefect-tasks#task",
        ),
        (
            ":mod:<code>pickle</code>",
            "<code>pickle</code>",
            "https://docs.python.org/3/library/pickle.html#pickle",
        ),
    ],
)
def test_roles_render_as_links(hooks: ModuleType, role: str, shown: str, url: str) -> None:
    rendered = hooks.on_page_content(f"<p>see {role}.</p>")
    assert rendered == f'<p>see <a href="{url}">{shown}</a>.</p>'


def test_roles_of_the_package_render_as_code(hooks: ModuleType) -> None:
    rendered = hooks.on_page_content("<p>:class:<code>~xpersist_sql.store.CacheStore</code></p>")
    assert rendered == "<p><code>CacheStore</code></p>"
