"""Every serializer round-trips on the local filesystem and on fsspec's memory filesystem."""

from __future__ import annotations

import importlib
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests.helpers import make_dataset, make_frame
from xpersist_sql import (
    CacheStore,
    MissingDependencyError,
    PayloadLoadError,
    Serializer,
    SerializerNotFoundError,
    available_serializers,
    register_serializer,
)
from xpersist_sql.serializers import (
    SerializerPluginWarning,
    get_serializer,
    pick_serializer,
    registry,
)
from xpersist_sql.serializers._local import read_bytes, write_bytes

BUILT_INS = [
    "json",
    "joblib",
    "numpy.npy",
    "pandas.csv",
    "pandas.parquet",
    "pickle",
    "xarray.netcdf",
    "xarray.zarr",
]


def _assert_same(name: str, expected: Any, actual: Any) -> None:
    if name.startswith("xarray"):
        xr.testing.assert_identical(actual.load(), expected)
    elif name.startswith("pandas"):
        pd.testing.assert_frame_equal(actual, expected, check_index_type="equiv")
    elif name == "numpy.npy":
        np.testing.assert_array_equal(actual, expected)
        assert actual.dtype == expected.dtype
    else:
        assert actual == expected


SAMPLES: dict[str, Any] = {
    "json": {"a": [1, 2.5, "x"], "b": None},
    "joblib": {"array": np.arange(5).tolist(), "tuple": (1, 2)},
    "pickle": {"set": {1, 2}, "bytes": b"\x00\x01"},
    "numpy.npy": np.arange(12, dtype="float32").reshape(3, 4),
    "pandas.csv": make_frame(),
    "pandas.parquet": make_frame(),
    "xarray.netcdf": make_dataset(),
    "xarray.zarr": make_dataset(),
}


@pytest.fixture(params=["local", "memory"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CacheStore]:
    if request.param == "local":
        store = CacheStore(tmp_path / "store")
    else:
        root = f"memory://xpersist-tests-{uuid.uuid4().hex}"
        store = CacheStore(root, database_url=f"sqlite:///{tmp_path / 'index.sqlite'}")
    yield store
    store.close()


def test_built_ins_are_registered() -> None:
    assert set(BUILT_INS) <= set(available_serializers())


@pytest.mark.parametrize("name", BUILT_INS)
def test_round_trip(any_store: CacheStore, name: str) -> None:
    value = SAMPLES[name]
    key = f"dir/sample-{name}"
    artifact = any_store.put(key, value, serializer=name)
    assert artifact.serializer == name
    assert artifact.size_bytes and artifact.size_bytes > 0
    _assert_same(name, value, any_store.get(key))
    # the payload is at <path>/<key> on the store's filesystem
    assert any_store._storage.fs.exists(f"{any_store._storage.root}/{key}")


@pytest.mark.parametrize("name", ["xarray.zarr", "xarray.netcdf"])
def test_dataarray_comes_back_as_a_dataarray(any_store: CacheStore, name: str) -> None:
    da = make_dataset()["tas"]
    any_store.put("da", da, serializer=name)
    loaded = any_store.get("da")
    assert isinstance(loaded, xr.DataArray)
    xr.testing.assert_identical(loaded.load(), da)


def test_xarray_payloads_open_without_the_library(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "s")
    ds = make_dataset()
    store.put("a.zarr", ds)
    store.put("b.nc", ds, serializer="xarray.netcdf")
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "s" / "a.zarr").load(), ds)
    with xr.open_dataset(tmp_path / "s" / "b.nc") as opened:
        xr.testing.assert_identical(opened.load(), ds)


def make_tree() -> Any:
    ds = make_dataset()
    return xr.DataTree.from_dict(
        {"/": ds, "/monthly": ds.mean("x"), "/monthly/clim": ds.mean("time")}
    )


@pytest.mark.parametrize("name", ["xarray.zarr", "xarray.netcdf"])
def test_datatree_comes_back_as_a_datatree_with_its_groups(
    any_store: CacheStore, name: str
) -> None:
    tree = make_tree()
    any_store.put("tree", tree, serializer=name)
    loaded = any_store.get("tree")
    assert isinstance(loaded, xr.DataTree)
    assert set(loaded.groups) == {"/", "/monthly", "/monthly/clim"}
    xr.testing.assert_identical(loaded.load(), tree)


def test_datatree_payload_opens_without_the_library(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "s")
    tree = make_tree()
    store.put("tree.zarr", tree)
    xr.testing.assert_identical(xr.open_datatree(tmp_path / "s" / "tree.zarr").load(), tree)


def test_dask_backed_values_are_written_chunk_by_chunk(tmp_path: Path) -> None:
    """The dask chunks become the zarr chunks: dask writes them, nothing is loaded first."""
    pytest.importorskip("dask.array", reason="the [dask] extra")
    zarr = pytest.importorskip("zarr")
    store = CacheStore(tmp_path / "s")
    ds = make_dataset().chunk({"time": 1})
    assert ds["tas"].chunks is not None
    store.put("chunked.zarr", ds, load_kwargs={"chunks": {}})
    array = zarr.open_group(store.payload_url("chunked.zarr"), mode="r")["tas"]
    assert array.chunks[0] == 1 and array.nchunks == ds.sizes["time"]
    loaded = store.get("chunked.zarr")
    assert loaded["tas"].chunks == ds["tas"].chunks  # recorded chunks={}: dask-backed again
    xr.testing.assert_identical(loaded.load(), ds.load())


@pytest.mark.parametrize("name", ["xarray.zarr", "xarray.netcdf"])
def test_chunked_load_without_dask_is_a_missing_dependency_not_a_bad_payload(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CacheStore(tmp_path / "s")
    store.put("a", make_dataset(), serializer=name, load_kwargs={"chunks": {}})
    before = sorted(p.name for p in (tmp_path / "s").iterdir())
    # make `import dask` fail as it does where the extra is not installed
    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(MissingDependencyError, match=r"xpersist_sql\[dask\]") as caught:
        store.get("a")
    assert not isinstance(caught.value, PayloadLoadError)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before
    xr.testing.assert_identical(store.get("a", load_kwargs={"chunks": None}).load(), make_dataset())


@pytest.mark.parametrize(
    ("dump_kwargs", "fmt", "consolidated"),
    [({}, 3, True), ({"zarr_format": 2}, 2, True), ({"consolidated": False}, 3, False)],
)
def test_zarr_is_written_and_read_without_warnings(
    any_store: CacheStore, dump_kwargs: dict[str, Any], fmt: int, consolidated: bool
) -> None:
    """Format 3 with consolidated metadata by default (docs/serializers.md), the zarr
    warning about consolidated metadata silenced; other choices through dump_kwargs, each
    read back (by the store, and by plain xarray where its default reads it) warning-free."""
    zarr = pytest.importorskip("zarr")
    ds = make_dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        any_store.put("w.zarr", ds, serializer="xarray.zarr", dump_kwargs=dump_kwargs)
        xr.testing.assert_identical(any_store.get("w.zarr").load(), ds)
        path = any_store.payload_url("w.zarr")
        group = zarr.open_group(path, mode="r")
        assert group.metadata.zarr_format == fmt
        assert (group.metadata.consolidated_metadata is not None) is consolidated or fmt == 2
        if consolidated:
            xr.testing.assert_identical(xr.open_zarr(path).load(), ds)
    recorded = any_store.get_artifact("w.zarr").load_kwargs
    assert recorded == ({} if consolidated else {"consolidated": False})


@pytest.mark.parametrize("name", ["xarray.zarr", "xarray.netcdf"])
def test_chunks_load_lazily_with_the_dask_extra(any_store: CacheStore, name: str) -> None:
    dask_array = pytest.importorskip("dask.array", reason="the [dask] extra")
    ds = make_dataset()
    any_store.put("chunked", ds, serializer=name)
    loaded = any_store.get("chunked", load_kwargs={"chunks": {}})
    assert all(isinstance(var.data, dask_array.Array) for var in loaded.data_vars.values())
    xr.testing.assert_identical(loaded.load(), ds)


def test_parquet_and_csv_payloads_open_with_pandas(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "s")
    df = make_frame()
    store.put("a.parquet", df)
    store.put("b.csv", df, serializer="pandas.csv")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "s" / "a.parquet"), df)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "s" / "b.csv", index_col=0), df)


def test_load_kwargs_are_recorded_and_overridable(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "s")
    store.put("a.npy", np.arange(4), load_kwargs={"mmap_mode": "r"})
    assert store.get_artifact("a.npy").load_kwargs == {"mmap_mode": "r"}
    assert isinstance(store.get("a.npy"), np.memmap)
    assert not isinstance(store.get("a.npy", load_kwargs={"mmap_mode": None}), np.memmap)


def test_get_with_another_serializer(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "s")
    store.put("a.json", {"x": 1}, serializer="json")
    with pytest.raises(Exception, match="could not load"):
        store.get("a.json", serializer="pickle")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (make_dataset(), "xarray.zarr"),
        (make_dataset()["tas"], "xarray.zarr"),
        (xr.DataTree.from_dict({"/": make_dataset()}), "xarray.zarr"),
        (make_frame(), "pandas.parquet"),
        (np.arange(3), "numpy.npy"),
        (np.array([object(), 1], dtype=object), "joblib"),
        ({"a": 1}, "joblib"),
        ([1, 2, 3], "joblib"),
    ],
)
def test_auto(value: Any, expected: str, tmp_path: Path) -> None:
    assert pick_serializer(value) == expected
    store = CacheStore(tmp_path / "s")
    assert store.put("v", value).serializer == expected


def test_register_with_the_decorator(tmp_path: Path) -> None:
    name = f"test.upper-{uuid.uuid4().hex[:6]}"

    @register_serializer(name)
    class Upper(Serializer):
        def dump(self, value: Any, fs: Any, path: str, **kwargs: Any) -> None:
            with fs.open(path, "w") as f:
                f.write(value.upper())

        def load(self, fs: Any, path: str, **kwargs: Any) -> Any:
            with fs.open(path, "r") as f:
                return f.read()

    assert name in available_serializers()
    store = CacheStore(tmp_path / "s")
    store.put("word.txt", "hello", serializer=name)
    assert store.get("word.txt") == "HELLO"
    with pytest.raises(ValueError, match="already registered"):
        register_serializer(name)(Upper)
    with pytest.raises(TypeError, match="Serializer subclass"):
        register_serializer("test.bad")(object)  # type: ignore[type-var]


ENTRY_POINT_MODULE = """
from xpersist_sql.serializers import Serializer

class Reversed(Serializer):
    def dump(self, value, fs, path, **kwargs):
        with fs.open(path, "w") as f:
            f.write(value[::-1])

    def load(self, fs, path, **kwargs):
        with fs.open(path, "r") as f:
            return f.read()[::-1]
"""


def test_register_through_an_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a real installed distribution on sys.path, declaring the entry point
    site = tmp_path / "site"
    site.mkdir()
    (site / "reversed_plugin.py").write_text(ENTRY_POINT_MODULE)
    dist = site / "reversed_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: reversed-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[xpersist_sql.serializers]\ntext.reversed = reversed_plugin:Reversed\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    assert "text.reversed" in available_serializers()
    store = CacheStore(tmp_path / "s")
    store.put("r.txt", "abc", serializer="text.reversed")
    assert (tmp_path / "s" / "r.txt").read_text() == "cba"
    assert store.get("r.txt") == "abc"
    assert get_serializer("text.reversed").name == "text.reversed"


# -- plugins: real entry points of a distribution on sys.path ------------------------------------
PLUGIN_MODULE = """
import collections.abc

import pandas as pd

from xpersist_sql.serializers import Serializer


class Temperature(float):
    pass


class GeoFrame(pd.DataFrame):
    pass


class _Text(Serializer):
    def dump(self, value, fs, path, **kwargs):
        with fs.open(path, "w") as f:
            f.write(repr(value))

    def load(self, fs, path, **kwargs):
        with fs.open(path, "r") as f:
            return f.read()


class TemperatureText(_Text):
    handles = ("{module}.Temperature",)  # a dotted name: matched once the module is imported

    def load(self, fs, path, **kwargs):
        return Temperature(float(super().load(fs, path)))


class GeoText(_Text):
    handles = (GeoFrame,)  # a subclass of DataFrame: more specific than the built-in rule


class FrameText(_Text):
    handles = ("pandas.DataFrame",)  # the built-in rule's own type: the built-in keeps it


class Everything(_Text):
    handles = (object,)  # would claim every value: not consulted


class SetText(_Text):
    handles = (collections.abc.Set,)  # an ABC: sets are not in its MRO, isinstance says yes


class Exploding(Serializer):
    def __init__(self):
        raise RuntimeError("no licence for the format")

    def dump(self, value, fs, path, **kwargs): ...

    def load(self, fs, path, **kwargs): ...


NOT_A_SERIALIZER = object()
"""

BROKEN_MODULE = """
raise ImportError("the plugin needs libfoo, which is missing")
"""


def _install_plugin(
    site: Path, monkeypatch: pytest.MonkeyPatch, entry_points: list[tuple[str, str]]
) -> str:
    """Write a distribution with these entry points to ``site`` and put it on sys.path."""
    suffix = uuid.uuid4().hex[:8]
    module = f"xpt_plugin_{suffix}"
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(PLUGIN_MODULE.replace("{module}", module))
    (site / f"{module}_broken.py").write_text(BROKEN_MODULE)
    dist = site / f"xpt_plugin_{suffix}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: xpt-plugin-{suffix}\nVersion: 1.0\n"
    )
    lines = [f"{name} = {target.format(module=module)}" for name, target in entry_points]
    (dist / "entry_points.txt").write_text("[xpersist_sql.serializers]\n" + "\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return module


@pytest.fixture
def plugin_modules() -> Iterator[None]:
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("xpt_plugin_"):
            del sys.modules[name]


@pytest.mark.usefixtures("plugin_modules")
def test_a_broken_plugin_is_reported_and_the_others_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _install_plugin(
        tmp_path / "site",
        monkeypatch,
        [  # the broken ones first: they must not hide the ones after them
            ("test.missing-lib", "{module}_broken:Anything"),
            ("test.exploding", "{module}:Exploding"),
            ("test.not-a-serializer", "{module}:NOT_A_SERIALIZER"),
            ("json", "{module}:TemperatureText"),  # a name that is taken
            ("test.temperature", "{module}:TemperatureText"),
            ("test.geo", "{module}:GeoText"),
        ],
    )
    with pytest.warns(SerializerPluginWarning) as caught:
        names = available_serializers()
    assert {"test.temperature", "test.geo"} <= set(names)
    assert not {"test.missing-lib", "test.exploding", "test.not-a-serializer"} & set(names)
    assert type(get_serializer("json")).__module__ != module  # the built-in stays

    messages = [str(w.message) for w in caught]
    assert len(messages) == 4, messages
    by_name = {name: m for name in ("test.missing-lib", "test.exploding", "test.not-a-serializer",
               "json") for m in messages if f"plugin {name!r}" in m}  # fmt: skip
    assert set(by_name) == {"test.missing-lib", "test.exploding", "test.not-a-serializer", "json"}
    assert "ImportError: the plugin needs libfoo" in by_name["test.missing-lib"]
    assert f"{module}_broken:Anything" in by_name["test.missing-lib"]
    assert "RuntimeError: no licence for the format" in by_name["test.exploding"]
    assert "Serializer subclass or instance" in by_name["test.not-a-serializer"]
    assert "already registered" in by_name["json"]
    for message in messages:  # the distribution that declares it, and that the rest is there
        assert f"xpt-plugin-{module.removeprefix('xpt_plugin_')} 1.0" in message
        assert "The other serializers are" in message

    # reported once per process, not on every lookup
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "test.geo" in available_serializers()
        get_serializer("test.geo")


@pytest.mark.usefixtures("plugin_modules")
def test_plugins_take_part_in_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _install_plugin(
        tmp_path / "site",
        monkeypatch,
        [
            ("test.temperature", "{module}:TemperatureText"),
            ("test.geo", "{module}:GeoText"),
            ("test.frame", "{module}:FrameText"),
            ("test.everything", "{module}:Everything"),
            ("test.sets", "{module}:SetText"),
        ],
    )
    plugin = importlib.import_module(module)
    # a type only the plugin names, instead of the joblib fallback
    assert pick_serializer(plugin.Temperature(21.5)) == "test.temperature"
    # a subclass of DataFrame: the plugin's more specific type wins over the built-in rule
    assert pick_serializer(plugin.GeoFrame({"a": [1]})) == "test.geo"
    # the built-in rules keep their exact types, and the fallback stays the fallback
    assert pick_serializer(make_frame()) == "pandas.parquet"
    assert pick_serializer(np.arange(3)) == "numpy.npy"
    assert pick_serializer(make_dataset()) == "xarray.zarr"
    assert pick_serializer({"a": 1}) == "joblib"
    assert pick_serializer(np.array([object()], dtype=object)) == "joblib"
    # an abstract base class, through isinstance
    assert pick_serializer(frozenset({1, 2})) == "test.sets"

    store = CacheStore(tmp_path / "s")
    artifact = store.put("t.txt", plugin.Temperature(21.5))
    assert artifact.serializer == "test.temperature"
    assert store.get("t.txt") == 21.5
    assert isinstance(store.get("t.txt"), plugin.Temperature)
    store.close()


def test_a_dotted_name_never_imports_its_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"test.lazy-{uuid.uuid4().hex[:6]}"
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_serializer(name)
    class Lazy(Serializer):
        handles = ("xpt_not_imported_anywhere.Thing",)

        def dump(self, value: Any, fs: Any, path: str, **kwargs: Any) -> None: ...

        def load(self, fs: Any, path: str, **kwargs: Any) -> Any: ...

    assert pick_serializer(object()) == "joblib"
    assert "xpt_not_imported_anywhere" not in sys.modules


def test_unknown_serializer_name() -> None:
    with pytest.raises(SerializerNotFoundError, match=r"known serializers: .*json"):
        get_serializer("does.not.exist")


def test_missing_optional_dependency_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # make `import pyarrow` fail as it does where the extra is not installed
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    store = CacheStore(tmp_path / "s")
    with pytest.raises(MissingDependencyError, match=r"xpersist_sql\[parquet\]") as info:
        store.put("a.parquet", make_frame())
    assert isinstance(info.value, ImportError)
    assert store.keys() == []


def test_missing_netcdf_engine_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("netCDF4", "h5netcdf", "scipy") else real(name, *a),
    )
    with pytest.raises(MissingDependencyError, match=r"xpersist_sql\[netcdf\]"):
        get_serializer("xarray.netcdf").check_requirements()


def test_local_bytes_round_trip_and_truncate(tmp_path: Path) -> None:
    path = str(tmp_path / "f.bin")
    write_bytes(path, b"x" * 100_000)
    write_bytes(path, b"short")  # created or truncated, as open("wb")
    assert read_bytes(path) == b"short"
    write_bytes(path, b"")
    assert read_bytes(path) == b""


def test_read_bytes_reads_past_a_size_that_is_wrong() -> None:
    # /proc files report size 0 and have content: the first read returns more than the size
    # said, and the rest is read to the end (as for a file that grew after its fstat)
    with open("/proc/self/status", "rb") as f:
        expected_start = f.read(5)
    data = read_bytes("/proc/self/status")
    assert data.startswith(expected_start) and b"\nPid:" in data and len(data) > 100
