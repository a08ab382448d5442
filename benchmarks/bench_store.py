"""Put/get through ``CacheStore`` (embedded SQLite index) against peers, in the same run.

Operations: a small JSON value, and an xarray dataset written as zarr (about 100 MB, 10 MB with
``--quick``). Peers, each doing the same work on the same local disk:

- plain: ``json.dump``/``json.load`` to a file; ``ds.to_zarr``/``xr.open_zarr(...)`` - no index,
  no metadata at all, the floor;
- 2021-style: the payload at ``<root>/<key>`` plus a JSON sidecar written from a pydantic model
  (``<root>/xpersist_metadata_store/<key>.artifact.json``), with an existence check before the
  put and the sidecar parsed before the get, as the 2021 xpersist did;
- diskcache (when installed): ``Cache.set``/``Cache.get`` (values pickled; no lazy reads, so it
  only appears in the eager dataset read).

Every put writes a new key (the payload is removed after the timing); every get reads the same
key again, so both peers and xpersist_sql read from a warm page cache.

Metadata hot paths, on an index of 20,000 rows (inserted in bulk): ``store.get_artifact(key)``
against a raw ``sqlite3`` point lookup on the same table, ``key in store`` against diskcache's
``get``; with ``$XPERSIST_SQL_TEST_POSTGRES_URL`` set, both on PostgreSQL (a temporary database)
against a raw psycopg lookup. Each sample is the mean of a batch of calls.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import uuid
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydantic
import xarray as xr
from run import add_ratios, row, timings

from xpersist_sql import CacheStore

OURS = "xpersist_sql CacheStore, SQLite index"
PLAIN_JSON = "plain json.dump / json.load"
PLAIN_ZARR = "plain to_zarr / open_zarr"
LEGACY = "2021-style: payload + pydantic JSON sidecar"
DISKCACHE = "diskcache Cache.set/get (pickle)"

SMALL_VALUE = {"threshold": 0.5, "members": list(range(20)), "name": "ctrl", "ok": True}

warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)


def make_dataset(megabytes: float) -> xr.Dataset:
    """An air-temperature-like dataset of about ``megabytes`` MB (float64, 180 x 360 grid)."""
    nlat, nlon = 180, 360
    ntime = max(1, round(megabytes * 1e6 / (nlat * nlon * 8)))
    rng = np.random.default_rng(0)
    lat = np.linspace(-89.5, 89.5, nlat)
    lon = np.linspace(0.5, 359.5, nlon)
    climate = 288.0 - 30.0 * np.abs(np.sin(np.deg2rad(lat)))[:, None] + np.zeros(nlon)
    air = climate[None] + rng.standard_normal((ntime, nlat, nlon))
    return xr.Dataset(
        {"air": (("time", "lat", "lon"), air, {"units": "K"})},
        coords={
            "time": pd.date_range("2020-01-01", periods=ntime, freq="D"),
            "lat": lat,
            "lon": lon,
        },
        attrs={"title": "synthetic air temperature"},
    )


# -- the 2021-style store, reimplemented in a few lines --------------------------------------------
class LegacyArtifact(pydantic.BaseModel):
    """The 2021 artifact: a pydantic model dumped to a JSON sidecar next to the payloads."""

    key: str
    serializer: str
    load_kwargs: dict[str, Any] = pydantic.Field(default_factory=dict)
    dump_kwargs: dict[str, Any] = pydantic.Field(default_factory=dict)
    additional_metadata: dict[str, Any] = pydantic.Field(default_factory=dict)
    created_at: datetime = pydantic.Field(default_factory=lambda: datetime.now(timezone.utc))


class LegacyStore:
    """Payload at ``<root>/<key>``, metadata in ``xpersist_metadata_store/<key>.artifact.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta = root / "xpersist_metadata_store"
        self.meta.mkdir(parents=True, exist_ok=True)

    def _sidecar(self, key: str) -> Path:
        return self.meta / f"{key}.artifact.json"

    def put(self, key: str, value: Any, serializer: str, dump_kwargs: dict[str, Any]) -> None:
        if self._sidecar(key).exists():  # on_duplicate_key="skip": check, then write
            return
        artifact = LegacyArtifact(key=key, serializer=serializer, dump_kwargs=dump_kwargs)
        path = self.root / key
        if serializer == "json":
            with open(path, "w", encoding="utf-8") as f:
                json.dump(value, f, **dump_kwargs)
        else:
            value.to_zarr(path, **dump_kwargs)
        self._sidecar(key).write_text(artifact.model_dump_json(indent=2), encoding="utf-8")

    def get(self, key: str) -> Any:
        sidecar = self._sidecar(key)
        if not sidecar.exists():
            raise KeyError(key)
        artifact = LegacyArtifact.model_validate_json(sidecar.read_bytes())
        path = self.root / artifact.key
        if artifact.serializer == "json":
            with open(path, encoding="utf-8") as f:
                return json.load(f, **artifact.load_kwargs)
        return xr.open_zarr(path, **artifact.load_kwargs)

    def delete(self, key: str) -> None:
        self._sidecar(key).unlink()
        payload = self.root / key
        if payload.is_dir():
            shutil.rmtree(payload)
        else:
            payload.unlink()


def _diskcache(root: Path) -> Any | None:
    try:
        import diskcache
    except ImportError:
        return None
    return diskcache.Cache(str(root))


def _store(path: Path) -> CacheStore:
    """A store with its embedded SQLite index, whatever $XPERSIST_SQL_DATABASE_URL says."""
    index = path / ".xpersist_sql" / "index.sqlite"
    return CacheStore(path, database_url=f"sqlite:///{index}")


def _rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# -- benchmarks ----------------------------------------------------------------------------------
def bench_json(root: Path, repeats: int) -> list[dict[str, Any]]:
    store = _store(root / "store")
    legacy = LegacyStore(root / "legacy")
    plain = root / "plain"
    plain.mkdir()
    cache = _diskcache(root / "diskcache")
    put, get = "put small JSON", "get small JSON"
    rows = []

    rows.append(
        row(
            put,
            OURS,
            timings(
                lambda i: store.put(f"json/{i}.json", SMALL_VALUE, serializer="json"),
                repeats,
                teardown=lambda i: store.delete(f"json/{i}.json"),
            ),
        )
    )

    def plain_put(i: int) -> None:
        with open(plain / f"{i}.json", "w", encoding="utf-8") as f:
            json.dump(SMALL_VALUE, f)

    rows.append(
        row(
            put,
            PLAIN_JSON,
            timings(plain_put, repeats, teardown=lambda i: _rm(plain / f"{i}.json")),
        )
    )
    rows.append(
        row(
            put,
            LEGACY,
            timings(
                lambda i: legacy.put(f"{i}.json", SMALL_VALUE, "json", {}),
                repeats,
                teardown=lambda i: legacy.delete(f"{i}.json"),
            ),
        )
    )
    if cache is not None:
        rows.append(
            row(
                put,
                DISKCACHE,
                timings(
                    lambda i: cache.set(f"{i}.json", SMALL_VALUE),
                    repeats,
                    teardown=lambda i: cache.delete(f"{i}.json"),
                ),
            )
        )

    store.put("value.json", SMALL_VALUE, serializer="json")
    plain_put(-100)
    legacy.put("value.json", SMALL_VALUE, "json", {})

    def plain_get(i: int) -> Any:
        with open(plain / "-100.json", encoding="utf-8") as f:
            return json.load(f)

    rows.append(row(get, OURS, timings(lambda i: store.get("value.json"), repeats)))
    rows.append(row(get, PLAIN_JSON, timings(plain_get, repeats)))
    rows.append(row(get, LEGACY, timings(lambda i: legacy.get("value.json"), repeats)))
    if cache is not None:
        cache.set("value.json", SMALL_VALUE)
        rows.append(row(get, DISKCACHE, timings(lambda i: cache.get("value.json"), repeats)))
        cache.close()
    assert store.get("value.json") == SMALL_VALUE
    store.close()
    return rows


def bench_dataset(root: Path, ds: xr.Dataset, repeats: int) -> list[dict[str, Any]]:
    store = _store(root / "store")
    legacy = LegacyStore(root / "legacy")
    plain = root / "plain"
    plain.mkdir()
    cache = _diskcache(root / "diskcache")
    size = f"{ds.nbytes / 1e6:.0f} MB"
    put = f"put dataset {size} (zarr)"
    open_lazy = f"get dataset {size}: open (lazy)"
    load = f"get dataset {size}: open + .load()"
    dump_kwargs = {"mode": "w"}
    rows = []

    rows.append(
        row(
            put,
            OURS,
            timings(
                lambda i: store.put(
                    f"ds/{i}.zarr", ds, serializer="xarray.zarr", dump_kwargs=dump_kwargs
                ),
                repeats,
                teardown=lambda i: store.delete(f"ds/{i}.zarr"),
            ),
        )
    )
    rows.append(
        row(
            put,
            PLAIN_ZARR,
            timings(
                lambda i: ds.to_zarr(plain / f"{i}.zarr", **dump_kwargs),
                repeats,
                teardown=lambda i: _rm(plain / f"{i}.zarr"),
            ),
        )
    )
    rows.append(
        row(
            put,
            LEGACY,
            timings(
                lambda i: legacy.put(f"{i}.zarr", ds, "xarray.zarr", dump_kwargs),
                repeats,
                teardown=lambda i: legacy.delete(f"{i}.zarr"),
            ),
        )
    )
    if cache is not None:
        rows.append(
            row(
                put,
                DISKCACHE,
                timings(
                    lambda i: cache.set(f"{i}.ds", ds),
                    repeats,
                    teardown=lambda i: cache.delete(f"{i}.ds"),
                ),
            )
        )

    store.put("bar.zarr", ds, serializer="xarray.zarr", dump_kwargs=dump_kwargs)
    ds.to_zarr(plain / "bar.zarr", **dump_kwargs)
    legacy.put("bar.zarr", ds, "xarray.zarr", dump_kwargs)

    rows.append(row(open_lazy, OURS, timings(lambda i: store.get("bar.zarr"), repeats)))
    rows.append(
        row(open_lazy, PLAIN_ZARR, timings(lambda i: xr.open_zarr(plain / "bar.zarr"), repeats))
    )
    rows.append(row(open_lazy, LEGACY, timings(lambda i: legacy.get("bar.zarr"), repeats)))

    rows.append(row(load, OURS, timings(lambda i: store.get("bar.zarr").load(), repeats)))
    rows.append(
        row(load, PLAIN_ZARR, timings(lambda i: xr.open_zarr(plain / "bar.zarr").load(), repeats))
    )
    rows.append(row(load, LEGACY, timings(lambda i: legacy.get("bar.zarr").load(), repeats)))
    if cache is not None:
        cache.set("bar.ds", ds)
        rows.append(row(load, DISKCACHE, timings(lambda i: cache.get("bar.ds"), repeats)))
        cache.close()

    xr.testing.assert_identical(store.get("bar.zarr").load(), ds)
    store.close()
    return rows


# -- metadata hot paths: get_artifact, `in`, against the floor ------------------------------------
OURS_PG = "xpersist_sql CacheStore, PostgreSQL index"
RAW_SQLITE = "raw sqlite3 point lookup, same table"
RAW_PSYCOPG = "raw psycopg point lookup, same table"
POSTGRES_ENV = "XPERSIST_SQL_TEST_POSTGRES_URL"
_COLUMNS = (
    "store_id, key, serializer, load_kwargs, dump_kwargs, additional_metadata, created_at, "
    "size_bytes, fingerprint, versions, flow_name, task_name"
)
_LOOKUP = "SELECT * FROM xpersist_artifacts WHERE store_id = {p} AND key = {p}"


def _fill(store: CacheStore, n: int, execute_many: Callable[[str, list[Any]], Any], p: str) -> int:
    """Add ``n`` rows to the store's index in bulk (not a put per row); return its store id."""
    rows_of_store = store._rows(create=True)
    assert rows_of_store is not None
    store_id = rows_of_store.store_id
    metadata = json.dumps({"flow_name": "bench-flow", "task_name": "bench-task", "map_index": -1})
    versions = json.dumps({"xpersist_sql": "0.1.0", "python": "3.11"})
    created = datetime(2025, 1, 1, tzinfo=timezone.utc)
    rows = [
        (
            store_id,
            f"meta/{i:07d}.json",
            "json",
            "{}",
            "{}",
            metadata,
            created if p == "%s" else created.strftime("%Y-%m-%d %H:%M:%S.%f"),
            1000 + i,
            f"size={1000 + i}",
            versions,
            "bench-flow",
            "bench-task",
        )
        for i in range(n)
    ]
    sql = f"INSERT INTO xpersist_artifacts ({_COLUMNS}) VALUES ({', '.join([p] * 12)})"
    execute_many(sql, rows)
    return store_id


def _paired(
    benchmark: str,
    cases: dict[str, Callable[[], Any]],
    repeats: int,
    batch: int = 200,
) -> list[dict[str, Any]]:
    """One row per case; each sample is the mean of a batch of calls (microsecond calls).

    The cases' batches alternate (ours, peer, ours, peer...), so that a change of load on the
    machine weighs on both alike.
    """

    def many(fn: Callable[[], Any]) -> Callable[[int], None]:
        def run_batch(_: int) -> None:
            for _ in range(batch):
                fn()

        return run_batch

    samples: dict[str, list[float]] = {case: [] for case in cases}
    for fn in cases.values():
        timings(many(fn), 0, warmup=2)
    for _ in range(repeats):
        for case, fn in cases.items():
            samples[case] += [ms / batch for ms in timings(many(fn), 1, warmup=0)]
    return [row(benchmark, case, durations) for case, durations in samples.items()]


def bench_metadata(root: Path, n: int, repeats: int) -> list[dict[str, Any]]:
    """``get_artifact`` and ``key in store`` against a raw point lookup and diskcache's get."""
    store = _store(root / "store")
    store.put("meta/first.json", SMALL_VALUE, serializer="json")
    db_file = store.database_url.removeprefix("sqlite:///")
    raw = sqlite3.connect(db_file, check_same_thread=False)
    with raw:
        store_id = _fill(store, n, raw.executemany, "?")
    key = f"meta/{n // 2:07d}.json"
    lookup = _LOOKUP.format(p="?")
    assert store.get_artifact(key).key == key and key in store
    assert raw.execute(lookup, (store_id, key)).fetchone() is not None
    rows = _paired(
        f"get_artifact ({n:,} rows)",
        {
            OURS: lambda: store.get_artifact(key),
            RAW_SQLITE: lambda: raw.execute(lookup, (store_id, key)).fetchone(),
        },
        repeats,
    )
    cache = _diskcache(root / "diskcache")
    contains: dict[str, Callable[[], Any]] = {OURS: lambda: key in store}
    if cache is not None:
        cache.set(key, SMALL_VALUE)
        contains[DISKCACHE] = lambda: cache.get(key)
    rows += _paired(f"key in store ({n:,} rows)", contains, repeats)
    if cache is not None:
        cache.close()
    raw.close()
    store.close()
    url = os.environ.get(POSTGRES_ENV)
    if url:
        rows += _bench_metadata_postgres(root / "pg-store", url, n, repeats)
    return rows


def _bench_metadata_postgres(
    root: Path, admin_url: str, n: int, repeats: int
) -> list[dict[str, Any]]:
    """The same on PostgreSQL (a temporary database), against a raw psycopg lookup."""
    import psycopg
    import sqlalchemy as sa

    name = f"xpersist_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin_url).set(database=name)
    try:
        store = CacheStore(root, database_url=url.render_as_string(hide_password=False))
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        raw = psycopg.connect(dsn, autocommit=True)
        with raw.cursor() as cursor:
            store_id = _fill(store, n, cursor.executemany, "%s")
        raw.execute("ANALYZE xpersist_artifacts")
        key = f"meta/{n // 2:07d}.json"
        lookup = _LOOKUP.format(p="%s")
        assert store.get_artifact(key).key == key and key in store
        unexpired = lookup.replace("SELECT *", "SELECT id") + (
            " AND (expires_at IS NULL OR expires_at > %s)"
        )
        rows = _paired(
            f"get_artifact, PostgreSQL ({n:,} rows)",
            {
                OURS_PG: lambda: store.get_artifact(key),
                RAW_PSYCOPG: lambda: raw.execute(lookup, (store_id, key)).fetchone(),
            },
            repeats,
            batch=50,
        )
        rows += _paired(
            f"key in store, PostgreSQL ({n:,} rows)",
            {
                OURS_PG: lambda: key in store,
                RAW_PSYCOPG: lambda: raw.execute(
                    unexpired, (store_id, key, datetime.now(timezone.utc))
                ).fetchone(),
            },
            repeats,
            batch=50,
        )
        raw.close()
        store.close()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return add_ratios(rows, OURS_PG)


def run(quick: bool) -> list[dict[str, Any]]:
    """Run the store benchmarks; ``quick`` uses a 10 MB dataset and fewer repeats."""
    json_repeats, ds_repeats, megabytes = (20, 3, 10.0) if quick else (100, 5, 100.0)
    ds = make_dataset(megabytes)
    base = Path(tempfile.mkdtemp(prefix="xpersist-sql-bench-"))
    try:
        (base / "json").mkdir()
        (base / "dataset").mkdir()
        (base / "metadata").mkdir()
        rows = bench_metadata(base / "metadata", 20_000, 7 if quick else 21)
        rows += bench_json(base / "json", json_repeats)
        rows += bench_dataset(base / "dataset", ds, ds_repeats)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return add_ratios(rows, OURS)


if __name__ == "__main__":
    for result in run(quick=True):
        print(result)
