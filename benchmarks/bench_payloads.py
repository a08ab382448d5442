"""What a payload costs on local disk: lazy hits of a zarr of many chunks, zarr puts, small JSON.

The peers do the same work on the same disk, in the same run:

- ``xr.open_zarr`` of the same path: the floor of a lazy zarr hit. A hit through the store adds
  the row lookup and one ``lstat`` (the payload's identity), whatever the chunk count; the rows
  at 400 and 4,000 chunks show it does not grow with it;
- ``ds.to_zarr`` to a new path: the floor of a zarr put (the store adds a staging rename, the
  walk fingerprint and one transaction);
- the 2021 scheme for a small JSON value: the payload file and a JSON sidecar, both written with
  fsspec; and the floor of the store's own small put: the same file and SQL steps (staging file,
  duplicate lookup, overlap check, full-row ``INSERT``, rename, ``COMMIT``) with ``os`` and
  ``sqlite3`` alone, so the table shows what the store's Python adds and what the protocol costs;
- a small JSON get against the raw lookup of the row (``sqlite3``) plus reading the file.
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

import fsspec
import numpy as np
import xarray as xr
from run import add_ratios, interleaved, row, timings

from xpersist_sql import CacheStore

OURS = "xpersist_sql CacheStore, SQLite index"
OPEN_ZARR = "xr.open_zarr(chunks=None) of the same path"
TO_ZARR = "ds.to_zarr to a new path"
SCHEME_2021 = "2021 scheme: payload + JSON sidecar (fsspec)"
RAW = "raw sqlite3 lookup + read the file"
FLOOR = "floor: the same file + SQL steps, raw (os, sqlite3)"
VALUE = {"threshold": 0.5, "members": list(range(20)), "name": "ctrl", "ok": True}

warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)


def chunked_dataset(chunks: int) -> xr.Dataset:
    """A dataset of ``chunks`` chunks of 8 kB (float64) along time."""
    values = np.random.default_rng(0).normal(size=(chunks, 32, 32))
    ds = xr.Dataset({"v": (("t", "y", "x"), values)})
    ds["v"].encoding["chunks"] = (1, 32, 32)
    return ds


def _store(path: Path) -> CacheStore:
    return CacheStore(path, database_url=f"sqlite:///{path / '.xpersist_sql' / 'index.sqlite'}")


def bench_zarr(root: Path, chunks: int, repeats: int) -> list[dict[str, Any]]:
    """Lazy get and put of a zarr of ``chunks`` chunks."""
    ds = chunked_dataset(chunks)
    store = _store(root / f"store-{chunks}")
    plain = root / f"plain-{chunks}"
    plain.mkdir()
    store.put("ds.zarr", ds)
    ds.to_zarr(plain / "ds.zarr")
    get = f"payloads: lazy get, zarr of {chunks} chunks"
    rows = [
        row(get, OURS, timings(lambda i: store.get("ds.zarr"), repeats * 5)),
        row(
            get,
            OPEN_ZARR,
            timings(lambda i: xr.open_zarr(plain / "ds.zarr", chunks=None), repeats * 5),
        ),
    ]
    put = f"payloads: put, zarr of {chunks} chunks"
    rows += [
        row(
            put,
            OURS,
            timings(
                lambda i: store.put(f"put/{i}.zarr", ds),
                repeats,
                teardown=lambda i: store.delete(f"put/{i}.zarr"),
            ),
        ),
        row(
            put,
            TO_ZARR,
            timings(
                lambda i: ds.to_zarr(plain / f"{i}.zarr"),
                repeats,
                teardown=lambda i: shutil.rmtree(plain / f"{i}.zarr"),
            ),
        ),
    ]
    store.close()
    return rows


def _floor_put(root: Path) -> Callable[[int], None]:
    """A small put as the store does it, with nothing but the system calls and raw SQL.

    The early duplicate lookup, then one transaction: ``BEGIN IMMEDIATE``, the overlap check,
    the ``INSERT`` of a full row, the rename of the payload written to a staging file, ``COMMIT``.
    What is left above it in the store's put is Python: the checks, the artifact, the binding.
    """
    db = sqlite3.connect(str(root / ".xpersist_sql" / "index.sqlite"), isolation_level=None)
    db.execute("PRAGMA synchronous = NORMAL")
    staging = root / ".xpersist_sql" / "staging"
    (root / "floor").mkdir()
    store_id = db.execute("SELECT id FROM xpersist_stores").fetchone()[0]
    text = json.dumps(VALUE).encode()
    versions = json.dumps({"xpersist_sql": "floor"})

    def put(i: int) -> None:
        key = f"floor/{i}.json"
        db.execute(_FLOOR_LOOKUP, (store_id, key)).fetchall()
        staged = staging / f"floor-{uuid.uuid4().hex}-{i}.json"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        os.write(fd, text)
        os.close(fd)
        db.execute("BEGIN IMMEDIATE")
        db.execute(_FLOOR_OVERLAP, (store_id, "floor", store_id, key + "/", key + "0")).fetchall()
        created = datetime.now(timezone.utc).isoformat(" ", "microseconds")[:-6]
        db.execute(_FLOOR_INSERT, (store_id, key, created, len(text), versions)).fetchall()
        os.replace(staged, root / key)
        db.execute("COMMIT")

    return put


_FLOOR_LOOKUP = (
    "SELECT key, serializer, load_kwargs, dump_kwargs, additional_metadata, created_at, "
    "size_bytes, checksum, fingerprint, expires_at, versions FROM xpersist_artifacts "
    "WHERE store_id = ? AND key = ?"
)
_FLOOR_OVERLAP = (
    "SELECT key FROM xpersist_artifacts WHERE store_id = ? AND key IN (?) UNION ALL "
    "SELECT key FROM xpersist_artifacts WHERE store_id = ? AND key >= ? AND key < ? LIMIT 1"
)
_FLOOR_INSERT = (
    "INSERT INTO xpersist_artifacts (store_id, key, serializer, load_kwargs, dump_kwargs, "
    "additional_metadata, created_at, size_bytes, fingerprint, versions) "
    "VALUES (?, ?, 'json', '{}', '{}', '{}', ?, ?, 'floor', ?) "
    "ON CONFLICT (store_id, key) DO NOTHING RETURNING id"
)


def bench_small_json(root: Path, repeats: int) -> list[dict[str, Any]]:
    """Small JSON put and get against the 2021 scheme, the raw floor and the raw lookup.

    The cases of one operation run in alternating batches (:func:`run.interleaved`), each put
    to a new key named by its index (no key generation in the timing).
    """
    store = _store(root / "store-json")
    fs = fsspec.filesystem("file")
    legacy = root / "legacy"
    (legacy / "xpersist_metadata_store").mkdir(parents=True)

    def put_2021(i: int) -> None:
        with fs.open(str(legacy / f"{i}.json"), "w") as f:
            json.dump(VALUE, f)
        sidecar = legacy / "xpersist_metadata_store" / f"{i}.json.artifact.json"
        with fs.open(str(sidecar), "w") as f:
            json.dump({"key": f"{i}.json", "serializer": "json", "load_kwargs": {}}, f)

    store.put("value.json", VALUE, serializer="json")
    put, get = "payloads: put small JSON", "payloads: get small JSON"
    puts = interleaved(
        {
            OURS: lambda i: store.put(f"json/{i}.json", VALUE, serializer="json"),
            SCHEME_2021: put_2021,
            FLOOR: _floor_put(root / "store-json"),
        },
        repeats,
    )
    db = sqlite3.connect(str(root / "store-json" / ".xpersist_sql" / "index.sqlite"))
    payload = root / "store-json" / "value.json"

    def raw_get(i: int) -> Any:
        db.execute(
            "SELECT * FROM xpersist_artifacts WHERE store_id = 1 AND key = ?", ("value.json",)
        ).fetchone()
        with open(payload, encoding="utf-8") as f:
            return json.load(f)

    gets = interleaved({OURS: lambda i: store.get("value.json"), RAW: raw_get}, repeats)
    db.close()
    store.close()
    return [row(put, case, durations) for case, durations in puts.items()] + [
        row(get, case, durations) for case, durations in gets.items()
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure the payload rows; ``quick`` uses fewer repeats."""
    repeats = 5 if quick else 20
    root = Path(tempfile.mkdtemp(prefix="xpersist-bench-payloads-"))
    try:
        rows = bench_small_json(root, repeats * 40)
        for chunks in (400, 4000):
            rows += bench_zarr(root, chunks, repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return add_ratios(rows, OURS)


if __name__ == "__main__":
    for result in run(quick=True):
        print(result)
