"""Lazy imports: the payload libraries load only when a serializer first needs them.

Each test runs its code in a fresh interpreter (nothing imported yet) and reports which of the
heavy libraries ended up in ``sys.modules``. No timing is asserted here; ``make bench`` and
``python -X importtime -c "import xpersist_sql"`` measure the import time itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import CLI_ENV_VARS, make_dataset, make_frame

#: Libraries that only a serializer (or a DataFrame-returning call) may import, or an extra.
HEAVY = (
    "xarray",
    "pandas",
    "zarr",
    "numpy",
    "joblib",
    "dask",
    "pyarrow",
    "h5netcdf",
    "s3fs",
    "prefect",
)

_REPORT = textwrap.dedent(
    f"""
    import json as _json, sys as _sys
    _heavy = sorted({{m.split(".")[0] for m in _sys.modules}} & set({HEAVY!r}))
    print("@@" + _json.dumps({{"heavy": _heavy, "modules": sorted(_sys.modules)}}))
    """
)


def run_fresh(code: str, cwd: Path) -> dict[str, list[str]]:
    """Run ``code`` in a new interpreter; return ``{"heavy": [...], "modules": [...]}`` after it."""
    env = {k: v for k, v in os.environ.items() if k not in CLI_ENV_VARS}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + _REPORT],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("@@"))
    report: dict[str, list[str]] = json.loads(line[2:])
    return report


def test_import_loads_no_payload_library(tmp_path: Path) -> None:
    report = run_fresh("import xpersist_sql", tmp_path)
    assert report["heavy"] == []
    # the bare package import is the exception classes only; the store loads on first access
    assert "sqlalchemy" not in report["modules"]
    assert "xpersist_sql.store" not in report["modules"]


def test_public_names_load_no_payload_library(tmp_path: Path) -> None:
    report = run_fresh(
        """
        import xpersist_sql
        from xpersist_sql import *  # noqa: F403
        for name in xpersist_sql.__all__:
            getattr(xpersist_sql, name)
        import xpersist_sql.serializers, xpersist_sql.query, xpersist_sql.units
        import xpersist_sql.maintenance, xpersist_sql.legacy
        """,
        tmp_path,
    )
    assert report["heavy"] == []


def test_lazy_names_are_the_defining_modules_objects() -> None:
    import xpersist_sql
    from xpersist_sql import models, serializers, store

    assert xpersist_sql.CacheStore is store.CacheStore
    assert xpersist_sql.import_legacy is store.import_legacy
    assert xpersist_sql.Artifact is models.Artifact
    assert xpersist_sql.DuplicateKeyEnum is models.DuplicateKeyEnum
    assert xpersist_sql.register_serializer is serializers.register_serializer
    assert isinstance(xpersist_sql.__version__, str)
    assert set(xpersist_sql.__all__) <= set(dir(xpersist_sql))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        xpersist_sql.NoSuchName  # noqa: B018


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["ls", "--help"], ["db", "--help"], ["--version"]],
    ids=lambda argv: " ".join(argv),
)
def test_cli_help_loads_no_payload_library(tmp_path: Path, argv: list[str]) -> None:
    report = run_fresh(
        f"""
        import runpy, sys
        sys.argv = ["xpersist-sql", *{argv!r}]
        try:
            runpy.run_module("xpersist_sql", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        """,
        tmp_path,
    )
    assert report["heavy"] == []


def test_json_values_load_no_payload_library(tmp_path: Path) -> None:
    store = tmp_path / "store"
    report = run_fresh(
        f"""
        from xpersist_sql import CacheStore
        store = CacheStore({str(store)!r})
        store.put("a.json", {{"x": [1, 2]}}, serializer="json")
        store.put("b.json", [1, 2, 3], serializer="json", additional_metadata={{"flow_name": "f"}})
        assert store.get("a.json") == {{"x": [1, 2]}}
        assert store["b.json"] == [1, 2, 3]
        assert "a.json" in store and len(store) == 2
        assert sorted(store.keys()) == ["a.json", "b.json"]
        assert store.get_artifact("a.json").serializer == "json"
        assert [a.key for a in store.query(flow_name="f", limit=10)] == ["b.json"]
        store.delete("a.json")
        store.verify()
        store.close()
        store = CacheStore({str(store)!r}, readonly=True)
        assert store.get("b.json") == [1, 2, 3]
        """,
        tmp_path,
    )
    assert report["heavy"] == []


def test_cli_commands_on_json_values_load_no_payload_library(tmp_path: Path) -> None:
    store = tmp_path / "store"
    report = run_fresh(
        f"""
        import runpy, sys
        from xpersist_sql import CacheStore
        CacheStore({str(store)!r}).put("a.json", {{"x": 1}}, serializer="json")
        for argv in (["ls", "--json"], ["show", "a.json"], ["stats"], ["verify"]):
            sys.argv = ["xpersist-sql", *argv, "--store", {str(store)!r}]
            try:
                runpy.run_module("xpersist_sql", run_name="__main__", alter_sys=True)
            except SystemExit as exc:
                assert exc.code in (0, None), (argv, exc.code)
        """,
        tmp_path,
    )
    assert report["heavy"] == []


def test_auto_choice_does_not_import_to_check_a_type(tmp_path: Path) -> None:
    report = run_fresh(
        """
        from xpersist_sql.serializers import pick_serializer
        assert pick_serializer({"a": 1}) == "joblib"
        assert pick_serializer([1, 2]) == "joblib"
        """,
        tmp_path,
    )
    assert report["heavy"] == []


def test_put_and_get_of_an_xarray_dataset_import_on_demand(tmp_path: Path) -> None:
    store = tmp_path / "store"
    report = run_fresh(
        f"""
        import sys
        from xpersist_sql import CacheStore
        from tests.helpers import make_dataset
        ds = make_dataset()
        store = CacheStore({str(store)!r})
        store.put("ds.zarr", ds)  # "auto": xarray.zarr, zarr imported now
        assert store.get_artifact("ds.zarr").serializer == "xarray.zarr"
        assert store.get("ds.zarr").load().identical(ds)
        assert "zarr" in sys.modules
        """,
        Path(__file__).resolve().parent.parent,
    )
    assert {"xarray", "zarr", "numpy"} <= set(report["heavy"])


def test_get_imports_the_payload_library_on_demand(tmp_path: Path) -> None:
    from xpersist_sql import CacheStore

    store = CacheStore(tmp_path / "store")
    ds = make_dataset()
    frame = make_frame()
    store.put("ds.zarr", ds)
    store.put("frame.csv", frame, serializer="pandas.csv")
    store.put("a.json", {"x": 1}, serializer="json")
    store.close()
    report = run_fresh(
        f"""
        import sys
        import xpersist_sql
        store = xpersist_sql.CacheStore({str(tmp_path / "store")!r}, readonly=True)
        assert store.get("a.json") == {{"x": 1}}
        assert "xarray" not in sys.modules and "pandas" not in sys.modules
        ds = store.get("ds.zarr")
        assert type(ds).__module__.startswith("xarray"), type(ds)
        assert "pandas" in sys.modules  # xarray needs it, so it is loaded with xarray
        frame = store.get("frame.csv")
        assert list(frame.columns) == ["a", "b", "c"]
        assert len(store.query_df()) == 3
        """,
        tmp_path,
    )
    assert {"xarray", "zarr", "pandas", "numpy"} <= set(report["heavy"])
    assert "prefect" not in report["heavy"]  # (xarray itself may load dask, its chunk manager)
