"""The documentation's code runs: every ```python block of docs/*.md and README.md.

Each page is one test. Its blocks run in order in one namespace (a later block uses the names an
earlier one defined), in a fresh temporary working directory, with ``tempfile.gettempdir()``
pointing at a fresh temporary directory so that the pages' ``f"{tempfile.gettempdir()}/..."``
stores never collide between runs or pages. A page fails if any block raises.

Code meant to be shown but not run here (it needs S3, a remote PostgreSQL...) is fenced as
```` ```py ```` instead of ```` ```python ````; output is shown in ```` ```text ```` blocks.
"""

from __future__ import annotations

import re
import tempfile
import textwrap
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Return ``(first line number, code)`` of every fenced block whose language is ``python``."""
    blocks: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        info = match["info"].strip()
        language = info.split()[0].lstrip(".{").rstrip("}") if info else ""
        start = i + 1
        end = start
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if language == "python":
            body = [
                line[len(indent) :] if line.startswith(indent) else line
                for line in lines[start:end]
            ]
            blocks.append((start + 1, textwrap.dedent("\n".join(body))))
        i = end + 1
    return blocks


#: Pages with at least one ```python block (a page of prose only has nothing to run).
PAGES_WITH_CODE = [page for page in PAGES if python_blocks(page.read_text(encoding="utf-8"))]


def test_python_blocks_parser() -> None:
    text = textwrap.dedent(
        """\
        # Title
        ```python
        a = 1
        ```
        ```py
        not_run()
        ```
        !!! note
            ```python
            b = a + 1
            ```
        ````python
        c = "```"
        ````
        ```text
        ```python
        ```
        """
    )
    blocks = python_blocks(text)
    assert [code for _, code in blocks] == ["a = 1", "b = a + 1", 'c = "```"']
    assert [line for line, _ in blocks] == [3, 10, 13]


@pytest.fixture
def isolated_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh working directory and TMPDIR / tempfile.tempdir for one page."""
    work = tmp_path / "work"
    tmp = tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(work)
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(name, str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.delenv("XPERSIST_SQL_DATABASE_URL", raising=False)
    yield tmp


@pytest.fixture
def restore_global_state() -> Iterator[None]:
    """Undo what a page registers globally: serializers and in-memory fsspec files."""
    from fsspec.implementations.memory import MemoryFileSystem

    from xpersist_sql.serializers import registry

    serializers = dict(registry._REGISTRY)
    memory_files = set(MemoryFileSystem.store)
    memory_dirs = set(MemoryFileSystem.pseudo_dirs)
    yield
    with registry._LOCK:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(serializers)
    for name in set(MemoryFileSystem.store) - memory_files:
        MemoryFileSystem.store.pop(name, None)
    MemoryFileSystem.pseudo_dirs[:] = [d for d in MemoryFileSystem.pseudo_dirs if d in memory_dirs]


@pytest.mark.parametrize(
    "page", PAGES_WITH_CODE, ids=[str(p.relative_to(ROOT)) for p in PAGES_WITH_CODE]
)
def test_page_code_runs(
    page: Path, isolated_tmp: Path, restore_global_state: None, request: pytest.FixtureRequest
) -> None:
    name = str(page.relative_to(ROOT))
    if "prefect" in page.read_text(encoding="utf-8"):
        request.getfixturevalue("prefect_server")  # flows run against the test server
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    try:
        for line, code in python_blocks(page.read_text(encoding="utf-8")):
            try:
                exec(compile(code, f"{name}:{line}", "exec"), namespace)
            except Exception as exc:
                pytest.fail(
                    f"the ```python block of {name} starting at line {line} raised "
                    f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}",
                    pytrace=False,
                )
    finally:
        _close_stores(namespace)


def test_pages_with_code_are_found() -> None:
    names = {page.name for page in PAGES_WITH_CODE}
    assert {"getting-started.md", "serializers.md", "index.md", "README.md"} <= names


def _close_stores(namespace: dict[str, object]) -> None:
    """Release the index connections of the stores a page created (their files are removed)."""
    from xpersist_sql import CacheStore

    for value in namespace.values():
        if isinstance(value, CacheStore):
            value.close()
