"""Put/get/query latency with the index in PostgreSQL against the embedded SQLite index.

Same store code, same local payload directory kind, same operations; only the index differs.
The PostgreSQL rows carry ``ratio`` = PostgreSQL median / SQLite median (so ``1.5`` means the
PostgreSQL index makes that operation 1.5 times slower on this machine; it pays a network round
trip per statement where SQLite reads a local file).

PostgreSQL is taken from ``$XPERSIST_SQL_TEST_POSTGRES_URL`` (a server where the user may
``CREATE DATABASE``): the benchmark creates a scratch database there and drops it afterwards.
Without that variable only the SQLite rows are measured, and a note says so.

Operations:

- ``put small json``: a new key each time (``skip`` policy: one insert);
- ``overwrite small json``: the same key again (``overwrite``: row lock, update, payload swap);
- ``get small json``: read row, open payload, check fingerprint;
- ``get_artifact``: the row alone;
- ``query flow_name``: ``store.query(flow_name=..., limit=50)`` over a few thousand rows;
- ``lock + unlock``: ``with store.lock(key)`` (advisory lock vs file lock).

With ``moto[server]`` and ``s3fs`` installed, S3 rows too (a moto server on loopback, the index
in SQLite): a lazy hit of a zarr of 400 chunks against ``xr.open_zarr`` of the same URL, with the
number of S3 requests each makes (counted by a botocore event hook, in the row's ``requests``),
and a put of that zarr against ``to_zarr`` straight to the bucket.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from run import add_ratios, row, timings

from xpersist_sql import CacheStore

POSTGRES_ENV = "XPERSIST_SQL_TEST_POSTGRES_URL"
SQLITE = "SQLite index"
POSTGRES = "PostgreSQL index (ratio: PG / SQLite)"
VALUE = {"threshold": 0.5, "members": list(range(20)), "name": "ctrl", "ok": True}


@contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str]:
    """A new PostgreSQL database for the benchmark, dropped afterwards."""
    import sqlalchemy as sa

    name = f"xpersist_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(admin_url).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def measure(case: str, root: Path, database_url: str | None, quick: bool) -> list[dict[str, Any]]:
    """All operations on one index backend."""
    repeats = 20 if quick else 100
    n_rows = 300 if quick else 3000
    store = CacheStore(root / "store", database_url=database_url)
    overwriting = CacheStore(
        root / "store", database_url=database_url, on_duplicate_key="overwrite"
    )
    for i in range(n_rows):  # rows for the query to sift through
        store.put(
            f"filler/{i}.json",
            i,
            serializer="json",
            additional_metadata={"flow_name": f"flow-{i % 20}", "task_name": f"t{i % 7}"},
        )
    store.put("read-me.json", VALUE, serializer="json")
    rows = [
        row(
            "backends: put small json",
            case,
            timings(lambda i: store.put(f"put/{i}.json", VALUE, serializer="json"), repeats),
        ),
        row(
            "backends: overwrite small json",
            case,
            timings(lambda i: overwriting.put("over.json", VALUE, serializer="json"), repeats),
        ),
        row(
            "backends: get small json", case, timings(lambda i: store.get("read-me.json"), repeats)
        ),
        row(
            "backends: get_artifact",
            case,
            timings(lambda i: store.get_artifact("read-me.json"), repeats),
        ),
        row(
            f"backends: query flow_name ({n_rows} rows)",
            case,
            timings(lambda i: store.query(flow_name="flow-3", limit=50), repeats),
        ),
        row("backends: lock + unlock", case, timings(lambda i: _lock(store), repeats)),
    ]
    store.close()
    overwriting.close()
    return rows


def _lock(store: CacheStore) -> None:
    with store.lock("locked.json"):
        pass


S3_OURS = "xpersist_sql on S3 (moto), SQLite index"
S3_PEER = "xarray straight to/from the bucket"


class _RequestCounter:
    """Count the HTTP requests every s3fs client of this process sends.

    xarray/zarr open their own s3fs filesystem (asynchronous) from ``storage_options``, so the
    count is taken where every aiobotocore client sends: ``AioEndpoint._send``.
    """

    def __init__(self) -> None:
        from aiobotocore.endpoint import AioEndpoint  # type: ignore[import-untyped]

        self.count = 0
        original = AioEndpoint._send
        counter = self

        async def counted(endpoint: Any, request: Any) -> Any:
            counter.count += 1
            return await original(endpoint, request)

        AioEndpoint._send = counted

    def measure(self, fn: Any) -> int:
        before = self.count
        fn()
        return self.count - before


def measure_s3(root: Path, quick: bool) -> list[dict[str, Any]]:
    """Hit and put of a zarr of 400 chunks on the moto server: ours against xarray alone."""
    import sys
    import warnings

    import numpy as np
    import xarray as xr

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    try:
        import s3fs

        from tests.s3 import start_moto_server
    except ImportError:
        print("  note: S3 rows skipped; pip install 'moto[server]' s3fs")
        return []
    warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
    proc, endpoint = start_moto_server()
    try:
        options = {
            "endpoint_url": endpoint,
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "us-east-1"},
        }
        fs = s3fs.S3FileSystem(**options)
        fs.call_s3("create_bucket", Bucket="bench")
        counter = _RequestCounter()
        values = np.random.default_rng(0).normal(size=(400, 32, 32))
        ds = xr.Dataset({"v": (("t", "y", "x"), values)})
        ds["v"].encoding["chunks"] = (1, 32, 32)
        store = CacheStore(
            "s3://bench/cache",
            database_url=f"sqlite:///{root / 's3-index.sqlite'}",
            storage_options=options,
        )
        store.put("ds.zarr", ds)
        ds.to_zarr(fs.get_mapper("bench/plain/ds.zarr"))
        repeats = 5 if quick else 20
        hit = "S3: lazy get, zarr of 400 chunks"

        def plain_open(i: int) -> Any:
            fs.invalidate_cache()
            return xr.open_zarr("s3://bench/plain/ds.zarr", storage_options=options, chunks=None)

        ours_hit = row(hit, S3_OURS, timings(lambda i: store.get("ds.zarr"), repeats))
        peer_hit = row(hit, S3_PEER, timings(plain_open, repeats))
        ours_hit["requests"] = counter.measure(lambda: store.get("ds.zarr"))
        peer_hit["requests"] = counter.measure(lambda: plain_open(0))
        put = "S3: put, zarr of 400 chunks"
        put_repeats = 2 if quick else 5
        rows = [
            ours_hit,
            peer_hit,
            row(
                put,
                S3_OURS,
                timings(lambda i: store.put(f"put/{i}.zarr", ds), put_repeats),
            ),
            row(
                put,
                S3_PEER,
                timings(lambda i: ds.to_zarr(fs.get_mapper(f"bench/plain/{i}.zarr")), put_repeats),
            ),
        ]
        rows[2]["requests"] = counter.measure(lambda: store.put("count/ours.zarr", ds))
        rows[3]["requests"] = counter.measure(
            lambda: ds.to_zarr(fs.get_mapper("bench/plain/count.zarr"))
        )
        store.close()
        return add_ratios(rows, S3_OURS)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every operation on SQLite and, when configured, PostgreSQL (and on S3)."""
    root = Path(tempfile.mkdtemp(prefix="xpersist-bench-backends-"))
    try:
        rows = measure(SQLITE, root / "sqlite", None, quick)
        s3_rows = measure_s3(root, quick)
        admin_url = os.environ.get(POSTGRES_ENV)
        if not admin_url:
            print(
                f"  note: PostgreSQL rows skipped; set {POSTGRES_ENV}="
                "postgresql+psycopg://postgres@127.0.0.1:5432/test to measure them"
            )
            return rows + s3_rows
        with scratch_postgres(admin_url) as url:
            pg_rows = measure(POSTGRES, root / "postgres", url, quick)
        sqlite_median = {r["benchmark"]: r["median_ms"] for r in rows}
        for r in pg_rows:
            base = sqlite_median.get(r["benchmark"])
            r["ratio"] = r["median_ms"] / base if base else None
        merged: list[dict[str, Any]] = []
        for sqlite_row, pg_row in zip(rows, pg_rows, strict=True):
            merged += [sqlite_row, pg_row]
        return merged + s3_rows
    finally:
        shutil.rmtree(root, ignore_errors=True)
