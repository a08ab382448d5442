"""The package's metadata tells the truth: Python and dependency bounds, extras, version, license.

- ``requires-python`` matches what zarr 3 needs and what ruff, mypy and the Makefile target;
- prefect is the ``[prefect]`` extra: nothing outside ``xpersist_sql.prefect`` imports it, and
  the package, its store and its command line run where importing prefect fails;
- every third-party module the package imports is declared (core dependencies for imports that
  run when the package is imported, an extra for the lazy ones);
- the version comes from git tags (hatch-vcs), with a fallback where there is no git metadata,
  and reaches ``xpersist_sql.__version__`` in an installed wheel;
- LICENSE holds the Apache-2.0 text the metadata names, CHANGELOG.md follows Keep a Changelog;
- under ``make test-lowest`` (``XPERSIST_SQL_TEST_LOWEST`` set), every direct dependency resolved
  to exactly its declared lower bound, so the bounds are the versions tested.
"""

from __future__ import annotations

import ast
import email
import functools
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers import install_wheel_in_fresh_venv

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xpersist_sql"
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT: dict[str, Any] = PYPROJECT["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
#: The extras users install for a feature (the others are for developing xpersist_sql).
USER_EXTRAS = ("prefect", "postgres", "s3", "gcs", "azure", "dask", "parquet", "netcdf")
LOWEST_ENV = "XPERSIST_SQL_TEST_LOWEST"
PREFECT_HINT = "pip install 'xpersist_sql[prefect]'"


def _requirements(group: str) -> list[Requirement]:
    """The requirements of ``core`` (the dependencies) or of an extra, self-references left out."""
    lines = PROJECT["dependencies"] if group == "core" else EXTRAS[group]
    reqs = [Requirement(line) for line in lines]
    return [r for r in reqs if canonicalize_name(r.name) != canonicalize_name(PROJECT["name"])]


def _names(group: str) -> set[str]:
    return {canonicalize_name(r.name) for r in _requirements(group)}


def _lower_bound(req: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in req.specifier if s.operator == ">="]
    return max(bounds) if bounds else None


# -- Python version ------------------------------------------------------------------------------
def test_python_floor_is_the_one_zarr_3_needs_everywhere() -> None:
    assert PROJECT["requires-python"] == ">=3.11"
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py311"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == "3.11"
    makefile = (ROOT / "Makefile").read_text()
    assert "sys.version_info < (3, 11)" in makefile
    assert "Python 3.10" not in makefile


def test_every_dependency_has_a_lower_bound() -> None:
    for group in ("core", *USER_EXTRAS):
        for req in _requirements(group):
            assert _lower_bound(req) is not None, f"{group}: {req} has no lower bound"


def test_known_floors() -> None:
    core = {canonicalize_name(r.name): r for r in _requirements("core")}
    # zarr 3.0.0 to 3.0.7 were yanked (zarr.load() could delete data); 3.0.10 opens fsspec
    # mappers, which the xarray.zarr serializer passes for remote stores
    zarr_floor = _lower_bound(core["zarr"])
    assert zarr_floor is not None and zarr_floor >= Version("3.0.10")
    assert all(v not in core["zarr"].specifier for v in ("2.18.7", "4.0.0"))
    numpy_floor = _lower_bound(core["numpy"])
    assert numpy_floor is not None and numpy_floor >= Version("1.25")  # zarr 3's own floor
    sqlalchemy_floor = _lower_bound(core["sqlalchemy"])
    assert sqlalchemy_floor is not None and sqlalchemy_floor >= Version("2")
    pydantic_floor = _lower_bound(core["pydantic"])
    assert pydantic_floor is not None and pydantic_floor >= Version("2")
    # used by the store (default location) and by the Prefect tasks (filelock's thread_local)
    assert {"platformdirs", "filelock"} <= set(core)


# -- extras --------------------------------------------------------------------------------------
def test_prefect_is_an_extra() -> None:
    assert "prefect" not in _names("core")
    assert "prefect" in _names("prefect")
    for extra in USER_EXTRAS:
        assert extra in EXTRAS, f"no [{extra}] extra"
    assert "gcsfs" in _names("gcs")
    assert "adlfs" in _names("azure")
    assert "s3fs" in _names("s3")
    assert "dask" in _names("dask")
    (everything,) = EXTRAS["all"]
    assert set(Requirement(everything).extras) == set(USER_EXTRAS)
    # what the test suite imports
    test_extras = set(Requirement(EXTRAS["test"][0]).extras)
    assert {"prefect", "postgres", "s3", "parquet", "netcdf", "dask"} <= test_extras
    assert {"pytest", "moto", "hatch-vcs", "hatchling", "build", "uv"} <= _names("test")
    assert "import-linter" in _names("dev")


EAGER, LAZY, GUARDED = "eager", "lazy", "guarded"


def _imports(path: Path) -> Iterator[tuple[str, str]]:
    """Yield ``(top-level module, kind)`` for each absolute import in a source file.

    ``eager`` imports run when the module is imported (module or class level); ``lazy`` ones in
    a function body or under ``if TYPE_CHECKING:``; ``guarded`` ones in a ``try`` that handles
    ImportError (an optional speed-up with a fallback).
    """
    tree = ast.parse(path.read_text(), filename=str(path))

    def visit(node: ast.AST, kind: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], kind
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], kind
        for child in ast.iter_child_nodes(node):
            child_kind = kind
            in_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            type_checking = isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            if (in_function or type_checking) and kind == EAGER:
                child_kind = LAZY
            elif isinstance(node, ast.Try) and child in node.body:
                handled = " ".join(ast.unparse(h.type) for h in node.handlers if h.type)
                if "ImportError" in handled or "ModuleNotFoundError" in handled:
                    child_kind = GUARDED
            yield from visit(child, child_kind)

    yield from visit(tree, EAGER)


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _in_prefect_package(path: Path) -> bool:
    return path.relative_to(PACKAGE).parts[0] == "prefect"


def test_only_xpersist_sql_prefect_imports_prefect() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in _sources()
        if not _in_prefect_package(path)
        for module, _ in _imports(path)
        if module == "prefect"
    ]
    assert offenders == [], "prefect is the [prefect] extra: only xpersist_sql.prefect imports it"


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


#: Modules that come with a declared dependency, which pins their version exactly.
PROVIDED_BY = {"pydantic_core": "pydantic"}


def _distribution_names(module: str) -> set[str]:
    """The (canonical) names of the distributions providing an import name."""
    if module in PROVIDED_BY:
        return {PROVIDED_BY[module]}
    provided = _packages_distributions().get(module)
    return {canonicalize_name(name) for name in provided} if provided else {module}


def test_every_imported_third_party_module_is_declared() -> None:
    core = _names("core")
    prefect = _names("prefect")
    any_extra = set().union(*(_names(extra) for extra in USER_EXTRAS))
    problems = []
    for path in _sources():
        allowed_eager = core | prefect if _in_prefect_package(path) else core
        for module, kind in _imports(path):
            if kind == GUARDED or module in sys.stdlib_module_names or module == "xpersist_sql":
                continue
            dists = _distribution_names(module)
            allowed = allowed_eager if kind == EAGER else core | any_extra
            if not dists & allowed:
                where = "a core dependency" if allowed is core else "declared"
                problems.append(f"{path.relative_to(ROOT)} imports {module} ({where}? no)")
    assert problems == []


NO_PREFECT_SCRIPT = """
import json, runpy, sys

sys.modules["prefect"] = None  # as where prefect is not installed: `import prefect` fails

import xpersist_sql
from xpersist_sql import CacheStore

store = CacheStore(sys.argv[1])
store.put("a.json", {"a": 1}, serializer="json")
store.put("b", [1, 2])  # "auto", the plugins' entry points included
assert store.get("a.json") == {"a": 1}
store.close()

sys.argv = ["xpersist-sql", "ls", "--store", sys.argv[1], "--json"]
try:
    runpy.run_module("xpersist_sql", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
loaded = sorted(m for m, mod in sys.modules.items() if m.split(".")[0] == "prefect" and mod)
print("PREFECT-MODULES", json.dumps(loaded))
try:
    import xpersist_sql.prefect
except ImportError as exc:
    print("PREFECT-IMPORT-ERROR", exc)
else:
    print("PREFECT-IMPORTED")
"""


def _without_prefect(tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPERSIST_SQL")}
    done = subprocess.run(
        [sys.executable, "-c", NO_PREFECT_SCRIPT, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_store_and_cli_work_without_prefect(tmp_path: Path) -> None:
    out = _without_prefect(tmp_path)
    assert '"a.json"' in out  # the `ls --json` listing
    assert "PREFECT-MODULES []" in out
    assert "PREFECT-IMPORTED" not in out


def test_xpersist_sql_prefect_without_prefect_names_the_extra(tmp_path: Path) -> None:
    out = _without_prefect(tmp_path)
    (line,) = [line for line in out.splitlines() if line.startswith("PREFECT-IMPORT-ERROR")]
    assert PREFECT_HINT in line


# -- version -------------------------------------------------------------------------------------
def test_version_is_single_sourced_from_git_tags() -> None:
    import xpersist_sql

    assert PROJECT["dynamic"] == ["version"]
    assert "version" not in PROJECT
    assert PYPROJECT["tool"]["hatch"]["version"]["source"] == "vcs"
    assert PYPROJECT["tool"]["hatch"]["version"]["fallback-version"] == "0.1.0"
    assert "hatch-vcs" in {canonicalize_name(Requirement(r).name) for r in _build_requires()}
    assert xpersist_sql.__version__ == importlib.metadata.version("xpersist_sql")
    Version(xpersist_sql.__version__)  # a valid PEP 440 version
    hard_coded = re.search(
        r"__version__\s*=\s*['\"]\d+\.\d+", (PACKAGE / "_version.py").read_text()
    )
    assert hard_coded is None


def _build_requires() -> list[str]:
    return list(PYPROJECT["build-system"]["requires"])


def _copy_project(dest: Path) -> Path:
    """The files a build needs, copied into ``dest`` (no git metadata)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("xpersist_sql", "migrations"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def _git(repo: Path, *args: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def _build_env() -> dict[str, str]:
    # a version forced through the environment would hide what the tags say
    return {k: v for k, v in os.environ.items() if "SETUPTOOLS_SCM" not in k}


def _hatch_version(project: Path) -> Version:
    done = subprocess.run(
        [sys.executable, "-m", "hatchling", "version"],
        cwd=project,
        env=_build_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return Version(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    if (
        importlib.util.find_spec("hatchling") is None
        or importlib.util.find_spec("hatch_vcs") is None
    ):
        pytest.skip("needs hatchling and hatch-vcs (the test extra)")
    if shutil.which("git") is None:
        pytest.skip("needs git")
    return _copy_project(tmp_path / "project")


def test_version_follows_the_git_tag(repo: Path) -> None:
    # without any git metadata (an archive of the tree): the fallback
    assert _hatch_version(repo) == Version("0.1.0")
    # a fresh clone without tags: a development version after the fallback
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first")
    untagged = _hatch_version(repo)
    assert untagged.is_devrelease and untagged.local and untagged.local.startswith("g"), untagged
    # a release tag
    _git(repo, "tag", "v9.8.7")
    assert _hatch_version(repo) == Version("9.8.7")
    # a commit after it: the next development version
    (repo / "CHANGELOG.md").write_text((repo / "CHANGELOG.md").read_text() + "\n")
    _git(repo, "commit", "-q", "-am", "after the release")
    after = _hatch_version(repo)
    assert after.is_devrelease and after.release == (9, 8, 8), after


@pytest.mark.slow
def test_wheel_and_sdist_carry_the_tag_version_license_and_extras(
    repo: Path, tmp_path: Path
) -> None:
    if importlib.util.find_spec("build") is None:
        pytest.skip("needs build (the test extra)")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "release")
    _git(repo, "tag", "v9.8.7")
    dist = tmp_path / "dist"
    # the sdist first, then the wheel from the unpacked sdist (no git there: PKG-INFO's version)
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(repo)],
        check=True,
        capture_output=True,
        env=_build_env(),
    )
    (sdist,) = dist.glob("xpersist_sql-*.tar.gz")
    (wheel,) = dist.glob("xpersist_sql-*.whl")
    assert sdist.name == "xpersist_sql-9.8.7.tar.gz"
    assert wheel.name == "xpersist_sql-9.8.7-py3-none-any.whl"

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = email.message_from_bytes(zf.read("xpersist_sql-9.8.7.dist-info/METADATA"))
    assert metadata["Version"] == "9.8.7"
    assert metadata["Requires-Python"] == ">=3.11"
    assert "Apache-2.0" in (metadata["License-Expression"] or metadata["License"] or "")
    assert any(
        n.startswith("xpersist_sql-9.8.7.dist-info/") and n.endswith("LICENSE") for n in names
    )
    requires = metadata.get_all("Requires-Dist") or []
    prefect_reqs = [
        req for req in map(Requirement, requires) if canonicalize_name(req.name) == "prefect"
    ]
    # only ever through an extra, [prefect] among them
    assert prefect_reqs, requires
    assert not any(r.marker is None or r.marker.evaluate({"extra": ""}) for r in prefect_reqs)
    assert any(r.marker and r.marker.evaluate({"extra": "prefect"}) for r in prefect_reqs)
    assert set(metadata.get_all("Provides-Extra") or []) >= {*USER_EXTRAS, "all"}

    # installed in a fresh venv (its dependencies from this one, not the editable install)
    python, site = install_wheel_in_fresh_venv(wheel, tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XPERSIST_SQL"))}
    found = subprocess.run(
        [str(python), "-c", "import xpersist_sql as x; print(x.__file__); print(x.__version__)"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert found[0].startswith(site), found
    assert found[1] == "9.8.7"


# -- license and changelog -----------------------------------------------------------------------
def test_license_is_the_apache_2_text() -> None:
    assert PROJECT["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    for phrase in (
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
        "http://www.apache.org/licenses/LICENSE-2.0",
    ):
        assert phrase in text
    assert len(text.splitlines()) > 190  # the full text, not a notice


def test_changelog_follows_keep_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog")
    assert "https://keepachangelog.com/en/1.1.0/" in text
    assert "https://semver.org/" in text
    releases = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.MULTILINE)
    names = [name for name, _ in releases]
    assert names[0] == "Unreleased"
    assert "0.1.0" in names
    sections = set(re.findall(r"^### (\w+)$", text, re.MULTILINE))
    assert sections and sections <= {
        "Added",
        "Changed",
        "Deprecated",
        "Removed",
        "Fixed",
        "Security",
    }
    # newest first, every release dated
    dated = [Version(name) for name, day in releases if name != "Unreleased" and day]
    assert len(dated) == len(names) - 1
    assert dated == sorted(dated, reverse=True)


# -- the lowest versions (make test-lowest) ------------------------------------------------------
@pytest.mark.skipif(
    not os.environ.get(LOWEST_ENV),
    reason=f"runs under `make test-lowest` ({LOWEST_ENV}=core,<extras> names what it installed)",
)
def test_lowest_resolution_installed_the_declared_bounds() -> None:
    mismatches = []
    for group in os.environ[LOWEST_ENV].split(","):
        for req in _requirements(group.strip()):
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            bound = _lower_bound(req)
            installed = Version(importlib.metadata.version(req.name))
            # a post-release (2.0.5.post1 for a yanked 2.0.5) is the release of the bound
            if Version(installed.base_version) != bound:
                mismatches.append(f"[{group}] {req}: {installed} installed")
    assert mismatches == [], (
        f"{'; '.join(mismatches)}. A declared lower bound is not the version `uv pip install "
        "--resolution lowest-direct` installs (another requirement raises it): raise the bound "
        "to the version installed, so that the bound is the version tested"
    )
