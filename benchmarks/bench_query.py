"""Query latency of ``CacheStore.query`` on a large SQLite index, against raw ``sqlite3``.

Builds a store whose index holds N artifacts (1,000,000 by default, 10,000 with ``--quick``)
spread over flows, tasks, tags and a year of timestamps. The schema is the real one (the store
creates it); the rows are inserted with ``executemany`` for speed. Then it times

- ``store.query(flow_name=..., since=..., limit=100)`` (newest first), and
- ``store.query(tags=[...], limit=100)``

against the same questions asked through a bare ``sqlite3`` connection to the same file (returning
plain tuples), and prints min/median/max and the ratio store/raw.

Run it standalone::

    python benchmarks/bench_query.py            # 1,000,000 artifacts
    python benchmarks/bench_query.py --quick    # 10,000 artifacts
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from xpersist_sql import Artifact, CacheStore

FLOWS = [f"flow-{i:02d}" for i in range(20)]
TASKS = [f"task_{i:02d}" for i in range(50)]
TAGS = [f"tag-{i}" for i in range(12)] + ["nightly", "rare"]
SERIALIZERS = ["xarray.zarr", "pandas.parquet", "numpy.npy", "joblib", "json"]
END = datetime(2026, 1, 1, tzinfo=timezone.utc)
START = END - timedelta(days=365)
REPEATS = 200
VERSIONS = json.dumps({"xpersist_sql": "0.1.0", "python": "3.11.7", "xarray": "2025.1.0"})


def _sqlite_time(moment: datetime) -> str:
    """The text SQLAlchemy stores for a (naive UTC) datetime on SQLite."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def build_index(root: str, n: int, seed: int = 0) -> CacheStore:
    """Create a store at ``root`` with ``n`` artifact rows (and their tags) in its index."""
    store = CacheStore(root)
    rows_of_store = store._rows(create=True)  # the marker, the schema (real migrations), the row
    assert rows_of_store is not None
    store_id = rows_of_store.store_id
    db_file = store.database_url.removeprefix("sqlite:///")
    store.close()
    rng = random.Random(seed)
    span = (END - START).total_seconds()
    conn = sqlite3.connect(db_file)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    rows: list[tuple[Any, ...]] = []
    tag_rows: list[tuple[int, str, str]] = []

    def flush() -> None:
        conn.executemany(
            "INSERT INTO xpersist_artifacts (id, store_id, key, serializer, load_kwargs, "
            "dump_kwargs, additional_metadata, created_at, size_bytes, checksum, fingerprint, "
            "expires_at, versions, flow_name, task_name, flow_run_id, task_run_id) "
            "VALUES (?, ?, ?, ?, '{}', '{}', ?, ?, ?, NULL, ?, NULL, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO xpersist_artifact_tags (artifact_id, tag, created_at) VALUES (?, ?, ?)",
            tag_rows,
        )
        rows.clear()
        tag_rows.clear()

    with conn:
        for i in range(1, n + 1):
            flow = FLOWS[int(rng.paretovariate(1.2)) % len(FLOWS)]
            task = rng.choice(TASKS)
            tags = rng.sample(TAGS[:-1], rng.randint(0, 2))
            if i % 50_000 == 0:
                tags.append("rare")
            flow_run = f"{rng.getrandbits(128):032x}"
            task_run = f"{rng.getrandbits(128):032x}"
            metadata = {
                "flow_name": flow,
                "task_name": task,
                "flow_run_id": flow_run,
                "task_run_id": task_run,
                "task_tags": tags,
                "flow_run_name": "bench-run",
                "map_index": -1,
            }
            created = _sqlite_time(START + timedelta(seconds=rng.random() * span))
            rows.append(
                (
                    i,
                    store_id,
                    f"{flow}/{task}/{i:07d}.zarr",
                    rng.choice(SERIALIZERS),
                    json.dumps(metadata),
                    created,
                    rng.randint(1_000, 10_000_000),
                    f"size={i};mtime={created}",
                    VERSIONS,
                    flow,
                    task,
                    flow_run,
                    task_run,
                )
            )
            tag_rows.extend((i, tag, created) for tag in tags)
            if len(rows) >= 50_000:
                flush()
        flush()
    conn.execute("ANALYZE")
    conn.close()
    return CacheStore(root)


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up: caches, compiled statements, page cache
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _row(case: str, samples: list[float], baseline: list[float] | None) -> dict[str, Any]:
    median = statistics.median(samples)
    ratio = median / statistics.median(baseline) if baseline else 1.0
    return {
        "benchmark": "query",
        "case": case,
        "min_ms": round(min(samples), 4),
        "median_ms": round(median, 4),
        "max_ms": round(max(samples), 4),
        "ratio": round(ratio, 2),
    }


RAW_FLOW = (
    "SELECT * FROM xpersist_artifacts WHERE store_id = 1 AND flow_name = ? AND created_at >= ? "
    "AND (expires_at IS NULL OR expires_at > ?) ORDER BY created_at DESC, id DESC LIMIT 100"
)
#: The tag query on the same index as store.query uses it: walk (tag, created_at, artifact_id).
RAW_TAG = (
    "SELECT a.* FROM xpersist_artifact_tags t JOIN xpersist_artifacts a ON a.id = t.artifact_id "
    "WHERE t.tag = ? AND a.store_id = 1 AND (a.expires_at IS NULL OR a.expires_at > ?) "
    "ORDER BY t.created_at DESC, t.artifact_id DESC LIMIT 100"
)
#: The obvious way to write it, for scale: SQLite collects every tagged id, then sorts them.
RAW_TAG_NAIVE = (
    "SELECT * FROM xpersist_artifacts WHERE id IN "
    "(SELECT artifact_id FROM xpersist_artifact_tags WHERE tag = ?) "
    "AND (expires_at IS NULL OR expires_at > ?) ORDER BY created_at DESC, id DESC LIMIT 100"
)


def run(quick: bool) -> list[dict[str, Any]]:
    """Build the index, time the queries; return one row per case (ratio = store / raw)."""
    n = 10_000 if quick else 1_000_000
    repeats = 50 if quick else REPEATS
    workdir = tempfile.mkdtemp(prefix="xpersist-bench-query-")
    try:
        started = time.perf_counter()
        store = build_index(os.path.join(workdir, "store"), n)
        build_s = time.perf_counter() - started
        print(f"built an index of {n:,} artifacts in {build_s:.1f} s", file=sys.stderr)
        db_file = store.database_url.removeprefix("sqlite:///")
        raw = sqlite3.connect(db_file, check_same_thread=False)
        since = END - timedelta(days=30)
        flow = FLOWS[3]
        now = _sqlite_time(datetime.now(timezone.utc))
        cases: list[tuple[str, Callable[[], list[Artifact]], Callable[[], list[Any]]]] = [
            (
                f"flow_name+since+limit=100 (n={n:,})",
                lambda: store.query(flow_name=flow, since=since, limit=100),
                lambda: raw.execute(RAW_FLOW, (flow, _sqlite_time(since), now)).fetchall(),
            ),
            (
                f"tags=['nightly']+limit=100 (n={n:,})",
                lambda: store.query(tags=["nightly"], limit=100),
                lambda: raw.execute(RAW_TAG, ("nightly", now)).fetchall(),
            ),
            (
                f"tags=['rare']+limit=100 (n={n:,})",
                lambda: store.query(tags=["rare"], limit=100),
                lambda: raw.execute(RAW_TAG, ("rare", now)).fetchall(),
            ),
        ]
        results = []
        for case, ours, baseline in cases:
            expected = [row[1] for row in baseline()]
            assert [a.key for a in ours()] == expected, case
            base = _time(baseline, repeats)
            mine = _time(ours, repeats)
            results.append(_row(f"raw sqlite3: {case}", base, None))
            results.append(_row(f"store.query: {case}", mine, base))
        naive = _time(lambda: raw.execute(RAW_TAG_NAIVE, ("nightly", now)).fetchall(), 5)
        results.append(
            _row(f"raw sqlite3, id IN (...) + sort: tags=['nightly'] (n={n:,})", naive, None)
        )
        raw.close()
        store.close()
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print the result rows as a plain text table."""
    header = f"{'case':<66} {'min ms':>9} {'median ms':>10} {'max ms':>9} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['case']:<66} {row['min_ms']:>9.4f} {row['median_ms']:>10.4f} "
            f"{row['max_ms']:>9.4f} {row['ratio']:>7.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 artifacts instead of 1e6")
    args = parser.parse_args(argv)
    print_table(run(quick=args.quick))


if __name__ == "__main__":
    main()
