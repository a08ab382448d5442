"""Lifecycle costs: last-access recording on ``get``, and importing a 2021 xpersist store.

1. ``get`` of small JSON artifacts, 200 distinct keys per timing (every one a first read, the
   case where an access has to be recorded), on one store with its embedded SQLite index:

   - readonly store: records nothing - the floor;
   - default store: accesses throttled per key (60 s) and written in batches (every 5 s);
   - store with ``max_size``: the same recording (the size check runs on ``put``, not ``get``);
   - unthrottled: one ``UPDATE`` transaction per ``get`` - what batching avoids.

   ``ratio`` is the median divided by the readonly store's median (1.0: recording is free).

2. ``import-legacy`` of a 2021 store of 10,000 sidecars (1,000 with ``--quick``), payloads small
   joblib files, into a fresh embedded SQLite index; and the idempotent re-run over the same
   store. The peer is what reading the same metadata cost in 2021: listing
   ``xpersist_metadata_store/`` and parsing every sidecar with its pydantic model.
   ``ratio`` = import median / peer median.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
import typing
from pathlib import Path
from typing import Any

import joblib
import pydantic.v1 as pydantic_v1
from run import row, timings

from xpersist_sql import CacheStore, import_legacy

GETS = 200


class LegacyArtifact(pydantic_v1.BaseModel):
    """The 2021 ``xpersist.cache.Artifact`` (pydantic v1)."""

    key: str
    serializer: str
    load_kwargs: typing.Optional[typing.Dict] = pydantic_v1.Field(default_factory=dict)  # noqa: UP006, UP045
    dump_kwargs: typing.Optional[typing.Dict] = pydantic_v1.Field(default_factory=dict)  # noqa: UP006, UP045
    additional_metadata: typing.Optional[typing.Dict] = pydantic_v1.Field(default_factory=dict)  # noqa: UP006, UP045
    created_at: typing.Optional[datetime.datetime] = pydantic_v1.Field(  # noqa: UP045
        default_factory=datetime.datetime.utcnow
    )


def _store(path: Path, **kwargs: Any) -> CacheStore:
    index = path / ".xpersist_sql" / "index.sqlite"
    return CacheStore(path, database_url=f"sqlite:///{index}", **kwargs)


def _get_rows(workdir: Path, repeats: int) -> list[dict[str, Any]]:
    path = workdir / "gets"
    writer = _store(path)
    keys = [f"k{i:04d}.json" for i in range(GETS)]
    for key in keys:
        writer.put(key, {"key": key, "values": list(range(10))}, serializer="json")
    writer.close()

    stores = {
        "get x200, readonly store (no recording)": _store(path, readonly=True),
        "get x200, throttled + batched recording": _store(path),
        "get x200, with max_size (same recording)": _store(path, max_size="50GB"),
        "get x200, unthrottled (1 UPDATE per get)": _store(path),
    }
    rows = []
    for case, store in stores.items():
        unthrottled = "unthrottled" in case

        def reset(i: int, store: CacheStore = store, unthrottled: bool = unthrottled) -> None:
            # a fresh log: every key is a first read again
            if unthrottled:
                store._backend.reset_access_log(resolution=0.0, flush_interval=0.0)
            else:
                store._backend.reset_access_log()

        def gets(i: int, store: CacheStore = store) -> None:
            for key in keys:
                store.get(key)

        rows.append(row("lifecycle: get + last access", case, timings(gets, repeats, setup=reset)))
        store.close()
    base = rows[0]["median_ms"]
    for r in rows[1:]:
        r["ratio"] = r["median_ms"] / base if base else None
    return rows


def build_legacy_store(root: Path, n: int) -> None:
    """A 2021 store of ``n`` joblib payloads with their sidecars, some with Prefect context."""
    meta = root / "xpersist_metadata_store"
    meta.mkdir(parents=True)
    for i in range(n):
        key = f"run-{i % 50:02d}/result-{i:05d}.joblib"
        (root / key).parent.mkdir(exist_ok=True)
        (meta / key).parent.mkdir(exist_ok=True)
        joblib.dump({"i": i}, root / key)
        context = (
            {"flow_name": f"flow-{i % 7}", "task_name": "compute", "task_tags": ["nightly"]}
            if i % 2
            else {}
        )
        artifact = LegacyArtifact(key=key, serializer="joblib", additional_metadata=context)
        (meta / f"{key}.artifact.json").write_text(artifact.json(indent=2))


def _legacy_rows(workdir: Path, n: int, repeats: int) -> list[dict[str, Any]]:
    root = workdir / "legacy"
    build_legacy_store(root, n)
    hidden = root / ".xpersist_sql"

    def fresh(i: int) -> None:
        shutil.rmtree(hidden, ignore_errors=True)

    def import_once(i: int) -> None:
        report = import_legacy(root)
        assert len(report.imported) == n, report.skipped[:3]

    def reimport(i: int) -> None:
        report = import_legacy(root)
        assert len(report.already_indexed) == n

    def read_sidecars_2021(i: int) -> None:
        meta = root / "xpersist_metadata_store"
        parsed = [
            LegacyArtifact.parse_raw(path.read_bytes()) for path in meta.rglob("*.artifact.json")
        ]
        assert len(parsed) == n

    benchmark = f"lifecycle: import-legacy of {n:,} sidecars"
    rows = [
        row(
            benchmark,
            "xpersist_sql import_legacy (fresh SQLite index)",
            timings(import_once, repeats, setup=fresh, warmup=0),
        ),
        row(
            benchmark,
            "xpersist_sql import_legacy, re-run (idempotent)",
            timings(reimport, repeats, warmup=0),
        ),
        row(
            benchmark,
            "2021 xpersist: list + parse every sidecar",
            timings(read_sidecars_2021, repeats),
        ),
    ]
    peer = rows[2]["median_ms"]
    for r in rows[:2]:
        r["ratio"] = r["median_ms"] / peer if peer else None
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Time last-access recording on get and the legacy import; one row per case."""
    workdir = Path(tempfile.mkdtemp(prefix="xpersist-bench-lifecycle-"))
    try:
        rows = _get_rows(workdir, repeats=5 if quick else 15)
        rows += _legacy_rows(workdir, n=1_000 if quick else 10_000, repeats=2 if quick else 3)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows
