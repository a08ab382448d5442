"""Query and lookup latency against index size: 1e4, 1e6 (and 1e7 with ``--full``) artifacts.

For each size N it builds a store whose SQLite index holds N artifacts and times, against the
same question asked through a bare ``sqlite3`` connection to the same file (plain tuples, the
floor):

- ``store.get_artifact(key)`` - a point lookup on the ``(store_id, key)`` unique index;
- ``store.query(flow_name=..., since=..., limit=100)`` - newest first;
- ``store.query(tags=["nightly"], limit=100)`` - a tag on about 1 in 6 artifacts;
- ``store.query(tags=["rare"], limit=100)`` - a tag on 1 in 100 artifacts;
- ``store.put(key, small JSON)`` - a write (the overlap check with the stored keys, the staged
  payload renamed into place, the row), against its floor: the same file written and one
  bare ``INSERT`` committed on the same index.

Every query returns 100 rows at every size (the filters are chosen so), and before timing the
benchmark checks that the store and the raw SQL return the same keys in the same order. The
targets (issue 10): each ``store`` figure within 1.5x of its N=1e4 figure (flat), and at most
3x the raw SQL (the put's floor gives its scale only: no such target).

How the index is built: the store creates its schema through the library's own path (a first
``put``, which runs the Alembic migrations and records the store), then the rows are bulk-filled
in SQL: ``INSERT ... SELECT`` from a generated series (a recursive CTE), a million rows per
statement, with the secondary indexes dropped meanwhile and re-created afterwards from the very
DDL the migrations wrote (``sqlite_master``), then ``ANALYZE``. The rows are valid rows of the
current schema: the store's ``store_id``, Prefect-like ``additional_metadata`` (flow, task and
run ids, ``task_tags``) whose promoted columns and tags table agree with it, and some with a ttl
(5 %: expiring in 10 years, 1 %: already expired, which every query skips). Artifacts are
created in order over the year before today (a cache that grows with time), over 20 flows,
50 tasks and 5 serializers.

Run alone::

    python benchmarks/bench_query.py           # 1e4 and 1e6
    python benchmarks/bench_query.py --full    # 1e4, 1e6 and 1e7 (about 10 GB of disk)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from xpersist_sql import CacheStore

OURS = "xpersist_sql"
RAW = "raw sqlite3"
QUICK_SIZES = (10_000, 100_000)  # a 1e6 build takes about a minute of CPU: --full
FULL_SIZES = (10_000, 1_000_000, 10_000_000)
#: Rows per INSERT ... SELECT statement.
CHUNK = 1_000_000
FLOW = "flow-03"
SINCE_DAYS = 120  # at N=1e4 a flow has about 160 artifacts in that window: limit=100 is reached
LIMIT = 100
VERSIONS = json.dumps({"xpersist_sql": "0.1.0", "python": "3.11.7", "xarray": "2025.9.0"})
SERIALIZERS = ("xarray.zarr", "pandas.parquet", "numpy.npy", "joblib", "json")
EXTENSIONS = ("zarr", "parquet", "npy", "joblib", "json")
PUT = "put(key, small JSON)"
#: The value each timed put writes.
PUT_VALUE = {"threshold": 0.5, "members": list(range(20)), "name": "ctrl", "ok": True}
#: The floor of a put: the file written, one row inserted in its own transaction.
RAW_PUT = (
    "INSERT INTO xpersist_artifacts (store_id, key, serializer, load_kwargs, dump_kwargs, "
    "additional_metadata, created_at, size_bytes, versions) VALUES (?, ?, 'json', '{}', '{}', "
    "'{}', ?, ?, '{}')"
)


def _utc_day(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


#: The artifacts span the year before END (today, 00:00 UTC).
END = _utc_day(datetime.now(timezone.utc))
START = END - timedelta(days=365)


def _sqlite_time(moment: datetime) -> str:
    """The text SQLAlchemy stores for a datetime on SQLite (naive UTC, microseconds)."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def _ts(us: str) -> str:
    """SQL text of the datetime ``us`` microseconds after the epoch, as SQLAlchemy stores it."""
    return f"(datetime(({us}) / 1000000, 'unixepoch') || printf('.%06d', ({us}) % 1000000))"


def _case(index: str, values: Sequence[str]) -> str:
    whens = " ".join(f"WHEN {i} THEN '{v}'" for i, v in enumerate(values))
    return f"(CASE {index} {whens} END)"


_YEAR_US = 365 * 86_400 * 1_000_000
#: One statement fills rows :lo..:hi. ``h`` is a 32-bit hash of ``i`` (three rounds of multiply
#: by an odd constant < 2**31 and swap the 16-bit halves: integers below 2**63 only, so SQLite
#: stays exact) from which every attribute is drawn, so the rows are the same in every run.
INSERT_ARTIFACTS = f"""
INSERT INTO xpersist_artifacts (
    id, store_id, key, serializer, load_kwargs, dump_kwargs, additional_metadata, created_at,
    size_bytes, checksum, fingerprint, expires_at, versions, flow_name, task_name, flow_run_id,
    task_run_id, last_accessed_at)
WITH RECURSIVE
s(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM s WHERE i < :hi),
a AS (SELECT i, (i * 1640531527) % 4294967296 AS h1 FROM s),
b AS (SELECT i, ((h1 / 65536 + (h1 % 65536) * 65536) * 1597334677) % 4294967296 AS h2 FROM a),
c AS (SELECT i, ((h2 / 65536 + (h2 % 65536) * 65536) * 1274126177) % 4294967296 AS h3 FROM b),
e AS MATERIALIZED (
    SELECT i, h3 / 65536 + (h3 % 65536) * 65536 AS h, :start_us + i * :step_us AS us FROM c),
d AS MATERIALIZED (
    SELECT i, h, us,
        printf('flow-%02d', h % 20) AS flow,
        printf('task_%02d', (h / 20) % 50) AS task,
        (h / 1000) % 5 AS ser,
        {_ts("us")} AS created,
        printf('%016x%016x', ((i / 50) * 2654435761) % 4294967296, i / 50) AS flow_run,
        printf('%016x%016x', h, i) AS task_run,
        '[' || rtrim(
            iif((h / 5000) % 6 = 0, '"nightly",', '')
            || iif((h / 30000) % 24 < 12, printf('"tag-%d",', (h / 30000) % 24), '')
            || iif(i % 100 = 0, '"rare",', ''),
            ',') || ']' AS tags,
        (h / 720000) % 100 AS ttl
    FROM e)
SELECT
    i + :id_offset, :store_id,
    printf('%s/%s/%s/%08d.%s', substr(created, 1, 10), flow, task, i, {_case("ser", EXTENSIONS)}),
    {_case("ser", SERIALIZERS)},
    '{{}}', '{{}}',
    json_object('flow_name', flow, 'task_name', task, 'flow_run_id', flow_run,
                'task_run_id', task_run, 'flow_run_name', 'bench-run', 'task_tags', json(tags),
                'map_index', -1, 'parameters', json_object('member', i % 10)),
    created,
    1000 + h % 10000000,
    NULL,
    printf('size=%d;mtime=%d', 1000 + h % 10000000, us / 1000000),
    CASE WHEN ttl < 5 THEN {_ts(f"us + 10 * {_YEAR_US}")}
         WHEN ttl = 5 THEN {_ts("us + 3600000000")} END,
    :versions, flow, task, flow_run, task_run, NULL
FROM d
"""
INSERT_TAGS = """
INSERT INTO xpersist_artifact_tags (artifact_id, tag, created_at)
SELECT a.id, j.value, a.created_at
FROM xpersist_artifacts a, json_each(a.additional_metadata, '$.task_tags') j
WHERE a.id BETWEEN ? AND ?
"""


def _secondary_indexes(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """``(name, DDL)`` of the indexes the migrations created on the artifacts and tags tables."""
    return conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        "AND tbl_name IN ('xpersist_artifacts', 'xpersist_artifact_tags') ORDER BY name"
    ).fetchall()


def build_index(root: str, n: int, *, log: Callable[[str], None] = print) -> CacheStore:
    """Create a store at ``root`` whose index holds ``n`` generated artifacts (plus one seed).

    The schema is made by the store itself (a first ``put``: Alembic migrations, store row);
    the rows are bulk-inserted in SQL, the secondary indexes re-created from their own DDL.
    """
    store = CacheStore(root)
    store.put("seed.json", {"seed": True}, serializer="json")
    db_file = store.database_url.removeprefix("sqlite:///")
    store.close()
    conn = sqlite3.connect(db_file, isolation_level=None)
    try:
        store_id, id_offset = conn.execute(
            "SELECT store_id, max(id) FROM xpersist_artifacts GROUP BY store_id"
        ).fetchone()
        indexes = _secondary_indexes(conn)
        assert indexes, "the migrations created no index?"
        conn.execute("PRAGMA journal_mode = OFF")  # no WAL of a bulk load; back to WAL below
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1000000")  # 1 GB: the unique key index fills fast
        conn.execute("PRAGMA temp_store = MEMORY")  # CREATE INDEX sorts in memory
        conn.execute("BEGIN")
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        started = time.perf_counter()
        params: dict[str, Any] = {
            "start_us": int(START.timestamp() * 1_000_000),
            "step_us": _YEAR_US // n,
            "id_offset": id_offset,
            "store_id": store_id,
            "versions": VERSIONS,
        }
        for lo in range(1, n + 1, CHUNK):
            hi = min(lo + CHUNK - 1, n)
            conn.execute(INSERT_ARTIFACTS, {**params, "lo": lo, "hi": hi})
            conn.execute(INSERT_TAGS, (lo + id_offset, hi + id_offset))
            log(f"  {hi:,} / {n:,} rows, {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        for _, ddl in indexes:
            conn.execute(ddl)
        conn.execute("COMMIT")
        log(f"  indexes re-created in {time.perf_counter() - started:.1f} s")
        assert _secondary_indexes(conn) == indexes
        started = time.perf_counter()
        conn.execute("ANALYZE")
        conn.execute("PRAGMA journal_mode = WAL")
        log(f"  ANALYZE in {time.perf_counter() - started:.1f} s")
    finally:
        conn.close()
    return CacheStore(root)


# -- the questions, asked through the store and through raw SQL -----------------------------------
RAW_GET = "SELECT * FROM xpersist_artifacts WHERE store_id = ? AND key = ?"
RAW_FLOW = (
    "SELECT * FROM xpersist_artifacts WHERE store_id = ? AND flow_name = ? AND created_at >= ? "
    "AND (expires_at IS NULL OR expires_at > ?) ORDER BY created_at DESC, id DESC LIMIT ?"
)
#: Walk the tags index (tag, created_at, artifact_id) newest first, one primary-key lookup each.
RAW_TAG = (
    "SELECT a.* FROM xpersist_artifact_tags t JOIN xpersist_artifacts a ON a.id = t.artifact_id "
    "WHERE t.tag = ? AND a.store_id = ? AND (a.expires_at IS NULL OR a.expires_at > ?) "
    "ORDER BY t.created_at DESC, t.artifact_id DESC LIMIT ?"
)


def _alternating(
    ours: Callable[[int], object], raw: Callable[[int], object], repeats: int
) -> tuple[list[float], list[float]]:
    """Time ``raw(i)`` then ``ours(i)`` in turn (same conditions for both); ms per call."""
    mine: list[float] = []
    base: list[float] = []
    for i in range(-3, repeats):  # three warm-up rounds
        start = time.perf_counter()
        raw(i)
        middle = time.perf_counter()
        ours(i)
        end = time.perf_counter()
        if i >= 0:
            base.append((middle - start) * 1000.0)
            mine.append((end - middle) * 1000.0)
    return mine, base


def _result(
    op: str, impl: str, n: int, samples: list[float], ratio: float | None
) -> dict[str, Any]:
    extra = {"vs_raw_target": False} if op == PUT else {}
    return {
        **extra,
        "benchmark": f"{op}, n={n:.0e}".replace("e+0", "e"),
        "case": f"{OURS} CacheStore" if impl == OURS else f"{RAW} (same rows, tuples)",
        "min_ms": min(samples),
        "median_ms": statistics.median(samples),
        "max_ms": max(samples),
        "ratio": ratio,
        # for the scaling summary and the plot (run.py)
        "op": op,
        "impl": impl,
        "n": n,
    }


def _puts(
    store: CacheStore, writer: sqlite3.Connection, store_id: int
) -> tuple[Callable[[int], Any], Callable[[int], Any]]:
    """``(ours, raw)``: a small JSON put through the store, and its floor on the same index.

    The floor writes the same file under the store's root and inserts its row with a bare
    ``sqlite3`` connection in its own ``BEGIN IMMEDIATE`` transaction: no overlap check, no
    staging, no seal. Each call writes a new key; the index grows by two rows per round.
    """
    raw_dir = Path(store.path) / "raw-put"
    raw_dir.mkdir(exist_ok=True)
    created = _sqlite_time(datetime.now(timezone.utc))

    def raw(i: int) -> None:
        text = json.dumps(PUT_VALUE)
        with open(raw_dir / f"{i + 10}.json", "w", encoding="utf-8") as f:
            f.write(text)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(RAW_PUT, (store_id, f"raw-put/{i + 10}.json", created, len(text)))
        writer.execute("COMMIT")

    def ours(i: int) -> Any:
        return store.put(f"put/{i + 10}.json", PUT_VALUE, serializer="json")

    return ours, raw


def measure(store: CacheStore, n: int, repeats: int) -> list[dict[str, Any]]:
    """Time every operation on ``store`` (``n`` artifacts) against raw SQL on the same file."""
    db_file = store.database_url.removeprefix("sqlite:///")
    raw = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, check_same_thread=False)
    writer = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA busy_timeout = 10000")
    writer.execute("PRAGMA synchronous = NORMAL")  # as the store's connections
    try:
        (store_id,) = raw.execute("SELECT store_id FROM xpersist_artifacts LIMIT 1").fetchone()
        now = _sqlite_time(datetime.now(timezone.utc))
        since = END - timedelta(days=SINCE_DAYS)
        since_text = _sqlite_time(since)
        step = max(1, n // 997)
        keys = [
            key
            for (key,) in raw.execute(
                "SELECT key FROM xpersist_artifacts WHERE id % ? = 0 AND expires_at IS NULL "
                "LIMIT 500",
                (step,),
            )
        ]
        cases: list[tuple[str, Callable[[int], Any], Callable[[int], Any]]] = [
            (
                "get_artifact(key)",
                lambda i: store.get_artifact(keys[i % len(keys)]),
                lambda i: raw.execute(RAW_GET, (store_id, keys[i % len(keys)])).fetchone(),
            ),
            (
                f"query(flow_name, since, limit={LIMIT})",
                lambda i: store.query(flow_name=FLOW, since=since, limit=LIMIT),
                lambda i: raw.execute(
                    RAW_FLOW, (store_id, FLOW, since_text, now, LIMIT)
                ).fetchall(),
            ),
        ]
        for tag in ("nightly", "rare"):
            cases.append(
                (
                    f"query(tags=['{tag}'], limit={LIMIT})",
                    lambda i, tag=tag: store.query(tags=[tag], limit=LIMIT),
                    lambda i, tag=tag: raw.execute(RAW_TAG, (tag, store_id, now, LIMIT)).fetchall(),
                )
            )
        cases.append((PUT, *_puts(store, writer, store_id)))
        key_at = [c[0] for c in raw.execute(RAW_GET, (store_id, keys[0])).description].index("key")
        results: list[dict[str, Any]] = []
        for op, ours, baseline in cases:
            if op.startswith("query"):  # the same rows, in the same order, and 100 of them
                expected = [row[key_at] for row in baseline(0)]
                got = [a.key for a in ours(0)]
                assert got == expected, f"{op}: store and raw SQL disagree at n={n}"
                assert len(got) == LIMIT, f"{op}: {len(got)} rows at n={n}, expected {LIMIT}"
            elif op != PUT:
                assert ours(0).key == baseline(0)[key_at]
            mine, base = _alternating(ours, baseline, repeats)
            results.append(
                _result(op, RAW, n, base, statistics.median(mine) / statistics.median(base))
            )
            results.append(_result(op, OURS, n, mine, None))
        return results
    finally:
        raw.close()
        writer.close()


def run(quick: bool) -> list[dict[str, Any]]:
    """Build each index size in turn, time the operations; one row per (operation, size, impl).

    The peer rows carry ``ratio`` = xpersist_sql median / raw median; every row also has ``op``,
    ``impl`` and ``n`` (the size), which ``run.py`` uses for the scaling summary and its plot.
    """
    sizes = QUICK_SIZES if quick else FULL_SIZES
    repeats = 200 if quick else 300
    results: list[dict[str, Any]] = []
    for n in sizes:
        workdir = tempfile.mkdtemp(prefix="xpersist-bench-query-")
        try:
            started = time.perf_counter()
            store = build_index(os.path.join(workdir, "store"), n)
            built = time.perf_counter() - started
            size_mb = Path(store.database_url.removeprefix("sqlite:///")).stat().st_size / 1e6
            print(f"  n={n:,}: index built in {built:.1f} s ({size_mb:,.0f} MB)", file=sys.stderr)
            try:
                results.extend(measure(store, n, repeats))
            finally:
                store.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> None:
    """Run this benchmark alone (``run.py --only query`` does the same inside the full table)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also 1e7 artifacts")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as runner

    sys.exit(runner.main(["--only", "query", *(["--full"] if args.full else [])]))


if __name__ == "__main__":
    main()
