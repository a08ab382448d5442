"""Payloads on S3 (the moto server over HTTP), indexed by SQLite or PostgreSQL.

Every payload written through the store is also opened directly from the bucket with
xarray/pandas/fsspec, without xpersist_sql, as a user of the bucket would.
"""

from __future__ import annotations

import json
import multiprocessing
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import xarray as xr

from tests.helpers import make_dataset, make_frame
from xpersist_sql import (
    ArtifactNotFoundError,
    CacheStore,
    CollisionError,
    DuplicateKeyError,
    PayloadMissingError,
    UnsafePathError,
)

S3Store = Callable[..., CacheStore]


def bucket_fs(options: dict[str, Any]) -> Any:
    fs = fsspec.filesystem("s3", **options)
    fs.invalidate_cache()
    return fs


def objects_under(options: dict[str, Any], url: str) -> list[str]:
    fs = bucket_fs(options)
    return sorted(fs.find(url)) if fs.exists(url) else []


# -- round trips -------------------------------------------------------------------------------
def test_zarr_round_trip_and_direct_open(
    s3_store: S3Store, s3_storage_options: dict[str, Any], s3_bucket: str
) -> None:
    store = s3_store()
    ds = make_dataset()
    artifact = store.put("runs/ds.zarr", ds)
    assert artifact.serializer == "xarray.zarr" and artifact.size_bytes > 0
    url = store.payload_url("runs/ds.zarr")
    assert url == f"s3://{s3_bucket}/cache/runs/ds.zarr"
    xr.testing.assert_identical(store.get("runs/ds.zarr").load(), ds)
    # straight from the bucket, no xpersist_sql involved
    direct = xr.open_zarr(url, storage_options=s3_storage_options)
    xr.testing.assert_identical(direct.load(), ds)
    # a DataArray comes back as a DataArray
    da = ds["tas"]
    store.put("da.zarr", da)
    xr.testing.assert_identical(store.get("da.zarr").load(), da)


def test_netcdf_round_trip_and_direct_open(
    s3_store: S3Store, s3_storage_options: dict[str, Any]
) -> None:
    store = s3_store()
    ds = make_dataset()
    store.put("ds.nc", ds, serializer="xarray.netcdf")
    xr.testing.assert_identical(store.get("ds.nc").load(), ds)
    with fsspec.open(store.payload_url("ds.nc"), "rb", **s3_storage_options) as f:
        direct = xr.open_dataset(f, engine="h5netcdf").load()
    xr.testing.assert_identical(direct, ds)


def test_parquet_round_trip_and_direct_open(
    s3_store: S3Store, s3_storage_options: dict[str, Any]
) -> None:
    store = s3_store()
    frame = make_frame()
    assert store.put("table.parquet", frame).serializer == "pandas.parquet"
    pd.testing.assert_frame_equal(store.get("table.parquet"), frame)
    direct = pd.read_parquet(store.payload_url("table.parquet"), storage_options=s3_storage_options)
    pd.testing.assert_frame_equal(direct, frame)


def test_json_joblib_and_other_round_trips(
    s3_store: S3Store, s3_storage_options: dict[str, Any]
) -> None:
    store = s3_store()
    value = {"answer": 42, "members": [1, 2, 3], "name": "ctrl"}
    store.put("meta/v.json", value, serializer="json")
    assert store.get("meta/v.json") == value
    with fsspec.open(store.payload_url("meta/v.json"), "r", **s3_storage_options) as f:
        assert json.load(f) == value

    model = {"weights": np.arange(1000.0), "bias": 0.5}
    assert store.put("model.joblib", model).serializer == "joblib"
    loaded = store.get("model.joblib")
    assert loaded["bias"] == 0.5 and np.array_equal(loaded["weights"], model["weights"])

    array = np.linspace(0, 1, 50)
    store.put("a.npy", array)
    assert np.array_equal(store.get("a.npy"), array)
    with fsspec.open(store.payload_url("a.npy"), "rb", **s3_storage_options) as f:
        assert np.array_equal(np.load(f), array)

    frame = make_frame()
    store.put("t.csv", frame, serializer="pandas.csv")
    pd.testing.assert_frame_equal(store.get("t.csv"), frame)
    store.put("p.pickle", {"x": {1, 2}}, serializer="pickle")
    assert store.get("p.pickle") == {"x": {1, 2}}

    assert store.keys() == sorted(["meta/v.json", "model.joblib", "a.npy", "t.csv", "p.pickle"])
    assert len(store) == 5 and "a.npy" in store


# -- the same store from other processes ("other machines") ---------------------------------------
def _read_and_write(store: CacheStore) -> Any:
    value = store.get("shared.json")
    store.put("from-child.json", {"child": True}, serializer="json")
    return value


def test_other_processes_share_the_s3_store(s3_store: S3Store) -> None:
    store = s3_store()
    store.put("shared.json", {"v": 1}, serializer="json")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.storage_options == store.storage_options and clone.path == store.path
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        assert pool.map(_read_and_write, [store, store]) == [{"v": 1}, {"v": 1}]
    assert store.get("from-child.json") == {"child": True}
    assert store.keys() == ["from-child.json", "shared.json"]


# -- overwrite, delete, missing payloads -------------------------------------------------------
def test_overwrite_on_s3(s3_store: S3Store, s3_storage_options: dict[str, Any]) -> None:
    store = s3_store(on_duplicate_key="overwrite")
    store.put("k.zarr", make_dataset(seed=1))
    new = make_dataset(n=7, seed=2)
    artifact = store.put("k.zarr", new)
    xr.testing.assert_identical(store.get("k.zarr").load(), new)
    assert store.get_artifact("k.zarr") == artifact
    assert len(store) == 1
    # the old payload left nothing behind: no mix of old and new chunks, no trash, no staging
    direct = xr.open_zarr(store.payload_url("k.zarr"), storage_options=s3_storage_options)
    xr.testing.assert_identical(direct.load(), new)
    hidden = f"{store.path}/.xpersist_sql"
    assert objects_under(s3_storage_options, f"{hidden}/trash") == []
    assert objects_under(s3_storage_options, f"{hidden}/staging") == []
    # a file payload replaced by another
    store.put("v.json", {"v": 1}, serializer="json")
    store.put("v.json", {"v": 2}, serializer="json")
    assert store.get("v.json") == {"v": 2}


def test_policies_on_s3(s3_store: S3Store) -> None:
    skip = s3_store()
    first = skip.put("k.json", {"v": 1}, serializer="json")
    assert skip.put("k.json", {"v": 2}, serializer="json") == first
    assert skip.get("k.json") == {"v": 1}
    with pytest.raises(DuplicateKeyError, match="already exists"):
        s3_store(on_duplicate_key="raise_error").put("k.json", {"v": 3}, serializer="json")
    collision = s3_store(on_duplicate_key="check_collision")
    assert collision.put("k.json", {"v": 1}, serializer="json") == first
    with pytest.raises(CollisionError, match="different content"):
        collision.put("k.json", {"v": 2}, serializer="json")


def test_delete_on_s3(s3_store: S3Store, s3_storage_options: dict[str, Any]) -> None:
    store = s3_store()
    store.put("x.zarr", make_dataset())
    url = store.payload_url("x.zarr")
    assert objects_under(s3_storage_options, url)
    deleted = store.delete("x.zarr")
    assert deleted.key == "x.zarr" and "x.zarr" not in store
    assert objects_under(s3_storage_options, url) == []
    assert objects_under(s3_storage_options, f"{store.path}/.xpersist_sql/trash") == []
    with pytest.raises(ArtifactNotFoundError, match=r"x\.zarr"):
        store.get("x.zarr")


def test_payload_missing_on_s3(s3_store: S3Store, s3_storage_options: dict[str, Any]) -> None:
    store = s3_store()
    store.put("gone.json", {"v": 1}, serializer="json")
    url = store.payload_url("gone.json")
    bucket_fs(s3_storage_options).rm(url)  # behind the index's back
    with pytest.raises(PayloadMissingError) as info:
        store.get("gone.json")
    message = str(info.value)
    assert "'gone.json'" in message and url in message and "store.delete" in message
    store.delete("gone.json")
    assert store.keys() == []


def test_a_half_written_tree_at_the_key_is_never_opened(
    s3_store: S3Store, s3_storage_options: dict[str, Any]
) -> None:
    """What a writer killed while replacing a zarr leaves (the old tree in the trash, a new
    tree without its commit token at the key) is never opened: the reader sees no token, moves
    the old payload back and loads it, without zarr's warnings about the stray tree."""
    store = s3_store(on_duplicate_key="overwrite")
    store.put("k.zarr", make_dataset(seed=1))
    storage = store._backend.storage
    trash = storage.take("k.zarr")  # as the writer does first: token first, then the tree
    assert trash is not None
    stray = make_dataset(seed=2)
    # the stray tree's metadata is not consolidated yet, as a writer killed before the end
    stray.to_zarr(
        store.payload_url("k.zarr"), storage_options=s3_storage_options, consolidated=False
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = store.get("k.zarr").load()
    xr.testing.assert_identical(value, make_dataset(seed=1))
    assert [str(w.message) for w in caught if "onsolidated" in str(w.message)] == []
    assert store._backend.payload_matches(store.get_artifact("k.zarr"))


def test_remote_path_without_database_url_is_an_error(
    s3_bucket: str, s3_storage_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XPERSIST_SQL_DATABASE_URL", raising=False)
    with pytest.raises(ValueError, match="database_url") as info:
        CacheStore(f"s3://{s3_bucket}/cache", storage_options=s3_storage_options)
    message = str(info.value)
    assert f"s3://{s3_bucket}/cache" in message and "postgresql" in message
    assert "XPERSIST_SQL_DATABASE_URL" in message


def _first_put(
    url: str, index: str, options: dict[str, Any], n: int, start: Any, results: Any
) -> None:
    store = CacheStore(url, database_url=index, storage_options=options)
    start.wait()
    try:
        store.put(f"first-{n}.json", {"writer": n}, serializer="json")
    except Exception as exc:  # reported to the test, which names it
        results.put((n, f"{type(exc).__name__}: {exc}"))
    else:
        results.put((n, "ok"))
    finally:
        store.close()


def test_processes_making_one_new_store_agree_on_its_marker(
    s3_bucket: str, slow_s3_storage_options: dict[str, Any], index_url: str
) -> None:
    """Writers that all make the same new S3 store at once end with one store: an object store
    has no exclusive create, so the marker is written under the index's lock. The bucket is
    reached with the latency of a remote one (uploads held up to 0.6 s): without the lock,
    writers each uploaded a marker, and all but one then failed with StoreMismatchError."""
    s3_storage_options = slow_s3_storage_options
    url = f"s3://{s3_bucket}/fresh"
    writers = 6
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(writers), ctx.Queue()
    processes = [
        ctx.Process(target=_first_put, args=(url, index_url, s3_storage_options, n, start, results))
        for n in range(writers)
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert outcomes == dict.fromkeys(range(writers), "ok")
    fs = bucket_fs(s3_storage_options)
    markers = [name for name in fs.find(url) if name.endswith(".xpersist_sql/store.json")]
    assert len(markers) == 1
    store = CacheStore(url, database_url=index_url, storage_options=s3_storage_options)
    try:
        assert store.keys() == [f"first-{n}.json" for n in range(writers)]
        assert [store.get(f"first-{n}.json") for n in range(writers)] == [
            {"writer": n} for n in range(writers)
        ]
    finally:
        store.close()


# -- gc of commit tokens -------------------------------------------------------------------------
def test_gc_removes_the_token_of_a_payload_removed_behind_the_stores_back(
    s3_store: S3Store, s3_storage_options: dict[str, Any]
) -> None:
    """A directory payload deleted from the bucket leaves its commit token: once ``repair``
    dropped the row, gc removes that token, and nothing else moves."""
    store = s3_store()
    store.put("gone.zarr", make_dataset(seed=1))
    store.put("kept.zarr", make_dataset(seed=2))
    token = f"{store.path}/.xpersist_sql/commits/gone.zarr.commit".removeprefix("s3://")
    fs = bucket_fs(s3_storage_options)
    assert fs.exists(token)
    fs.rm(f"{store.path}/gone.zarr", recursive=True)  # behind the store's back

    # the row still names the path: its token stays (verify reports the row)
    assert [i.kind for i in store.gc(older_than=0, dry_run=True).items] == []
    assert store.repair(["gone.zarr"]) == ["gone.zarr"]

    # younger than the grace period: kept
    assert store.gc().items == []
    before = objects_under(s3_storage_options, store.path)
    planned = store.gc(older_than=0, dry_run=True)
    assert [(i.kind, i.path) for i in planned.items] == [
        ("token", ".xpersist_sql/commits/gone.zarr.commit")
    ]
    assert objects_under(s3_storage_options, store.path) == before  # a dry run removes nothing
    report = store.gc(older_than=0)
    assert [(i.kind, i.path) for i in report.items] == [(i.kind, i.path) for i in planned.items]
    assert report.skipped == []
    after = objects_under(s3_storage_options, store.path)
    assert sorted(set(before) - set(after)) == [token]
    assert set(after) <= set(before)
    xr.testing.assert_identical(store.get("kept.zarr").load(), make_dataset(seed=2))
    assert store.gc(older_than=0).items == []


def test_a_store_nested_in_another_on_s3_is_never_written_or_removed_through(
    s3_store: S3Store, s3_storage_options: dict[str, Any], s3_bucket: str, index_url: str
) -> None:
    # on local disk the walk of the key's directories finds the nested store; on S3 each
    # folder of the key is asked for a marker before a write or a removal
    outer = s3_store(on_duplicate_key="overwrite")
    outer.put("own.json", 1, serializer="json")
    inner = CacheStore(
        f"s3://{s3_bucket}/cache/inner", database_url=index_url, storage_options=s3_storage_options
    )
    inner.put("i.json", 2, serializer="json")
    inner_url = f"s3://{s3_bucket}/cache/inner"
    fs = bucket_fs(s3_storage_options)
    before = {name: fs.cat_file(name) for name in objects_under(s3_storage_options, inner_url)}

    for key in ("inner/i.json", "inner/new.json", "inner/deep/x.json"):
        with pytest.raises(UnsafePathError, match="holds another store"):
            outer.put(key, 3, serializer="json")
        with pytest.raises(UnsafePathError, match="holds another store"):
            outer.check_writable(key)
    # a row of the outer store naming a file of the inner one (crafted in the shared index)
    with outer.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO xpersist_artifacts (store_id, key, serializer, load_kwargs, "
                "dump_kwargs, additional_metadata, created_at, size_bytes, versions) SELECT "
                "store_id, 'inner/i.json', serializer, load_kwargs, dump_kwargs, "
                "additional_metadata, created_at, size_bytes, versions FROM xpersist_artifacts "
                "WHERE key = 'own.json'"
            )
        )
    with pytest.raises(UnsafePathError, match="holds another store"):
        outer.delete("inner/i.json")
    outer.gc(older_than=0)
    outer.evict(0, keep={"own.json"})

    fs.invalidate_cache()
    after = {name: fs.cat_file(name) for name in objects_under(s3_storage_options, inner_url)}
    assert after == before
    assert inner.get("i.json") == 2
    inner.close()
