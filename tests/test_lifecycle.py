"""Lifecycle: revision 0003, last access, max_size eviction, gc and verify, on both backends."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from xpersist_sql import CacheStore, ReadonlyStoreError
from xpersist_sql.db.access import AccessLog
from xpersist_sql.db.engine import create_index_engine
from xpersist_sql.db.schema import current_revision, head_revision, run_alembic, upgrade
from xpersist_sql.db.tables import ARTIFACTS
from xpersist_sql.storage import HIDDEN_DIR, key_tag

MakeStore = Callable[..., CacheStore]


def _store_size(store: CacheStore) -> tuple[int, int]:
    """Total bytes and number of artifacts, expired ones included."""
    rows = store.summarize("serializer", include_expired=True)
    return sum(r.size_bytes for r in rows), sum(r.count for r in rows)


def _value(nbytes: int) -> str:
    """A JSON string value whose payload is exactly ``nbytes`` bytes."""
    return "a" * (nbytes - 2)


def _last_access(store: CacheStore, key: str) -> datetime | None:
    with store.engine.connect() as conn:
        value: datetime | None = conn.scalar(
            sa.select(ARTIFACTS.c.last_accessed_at).where(ARTIFACTS.c.key == key)
        )
    return value


def _set_last_access(store: CacheStore, key: str, when: datetime) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(ARTIFACTS).where(ARTIFACTS.c.key == key).values(last_accessed_at=when)
        )


# -- revision 0003 -------------------------------------------------------------------------------
def _index_url(path: Path, database_url: str | None) -> str:
    return database_url or f"sqlite:///{path}/.xpersist_sql/index.sqlite"


def test_revision_0003_upgrade_and_downgrade_keep_rows(
    tmp_path: Path, database_url: str | None
) -> None:
    path = tmp_path / "s"
    store = CacheStore(path, database_url=database_url)
    store.put("a.json", {"a": 1}, serializer="json", additional_metadata={"flow_name": "f"})
    store.put("b.json", {"b": 2}, serializer="json", ttl=timedelta(days=1))
    store.get("a.json")  # the first read of a process is recorded at once
    assert _last_access(store, "a.json") is not None
    store.close()
    assert head_revision() == "0006"

    engine = create_index_engine(_index_url(path, database_url))
    try:
        run_alembic(engine, "downgrade", "0002")
        with engine.connect() as conn:
            assert current_revision(conn) == "0002"
            inspector = sa.inspect(conn)
            columns = {c["name"] for c in inspector.get_columns("xpersist_artifacts")}
            indexes = {i["name"] for i in inspector.get_indexes("xpersist_artifacts")}
            rows = conn.execute(
                sa.text("SELECT key, flow_name FROM xpersist_artifacts ORDER BY key")
            ).all()
        assert "last_accessed_at" not in columns
        assert "ix_xpersist_artifacts_last_accessed_at" not in indexes
        assert [tuple(r) for r in rows] == [("a.json", "f"), ("b.json", None)]

        run_alembic(engine, "upgrade", "0003")
        with engine.connect() as conn:
            assert current_revision(conn) == "0003"
            inspector = sa.inspect(conn)
            columns = {c["name"]: c for c in inspector.get_columns("xpersist_artifacts")}
            indexes = {i["name"]: i for i in inspector.get_indexes("xpersist_artifacts")}
            accessed = conn.execute(
                sa.text("SELECT last_accessed_at FROM xpersist_artifacts")
            ).all()
        assert columns["last_accessed_at"]["nullable"] is True
        assert indexes["ix_xpersist_artifacts_last_accessed_at"]["column_names"] == [
            "last_accessed_at"
        ]
        assert [tuple(r) for r in accessed] == [(None,), (None,)]
    finally:
        engine.dispose()
    # revision 0004 gives the rows to the store they belong to
    upgrade(_index_url(path, database_url), "head", store_root=str(path))

    reopened = CacheStore(path, database_url=database_url)
    assert reopened.keys() == ["a.json", "b.json"]
    assert reopened.get("b.json") == {"b": 2}
    assert reopened.get_artifact("b.json").expires_at is not None
    assert reopened.query(flow_name="f")[0].key == "a.json"
    reopened.close()


def test_tables_match_the_migrations(store: CacheStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from xpersist_sql.db.tables import METADATA

    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = [d for d in compare_metadata(context, METADATA) if d[0] != "remove_table"]
    assert diff == []


# -- max_size option -------------------------------------------------------------------------------
def test_max_size_in_repr_and_pickle(make_store: MakeStore) -> None:
    store = make_store(max_size="50GB")
    assert store.max_size == 50 * 10**9
    assert "max_size=50000000000" in repr(store)
    clone = pickle.loads(pickle.dumps(store))
    assert clone.max_size == store.max_size
    assert "max_size=" not in repr(make_store())
    with pytest.raises(ValueError, match="cannot read 'lots' as a size"):
        make_store(max_size="lots")


# -- last access -----------------------------------------------------------------------------------
def test_get_records_last_access_throttled_and_batched(make_store: MakeStore) -> None:
    store = make_store()
    for name in ("a", "b", "c"):
        store.put(f"{name}.json", name, serializer="json")
    assert _last_access(store, "a.json") is None  # a put is not a read
    before = datetime.now(timezone.utc)
    store.get("a.json")  # first read of the process: written at once
    first = _last_access(store, "a.json")
    assert first is not None and first >= before - timedelta(seconds=1)

    store.get("a.json")  # within the resolution: not written again
    assert _last_access(store, "a.json") == first
    store.get("b.json")  # batched: waits for the next flush
    assert _last_access(store, "b.json") is None
    assert store._backend._access.pending == 1
    store.close()  # close() writes what is pending
    assert _last_access(store, "b.json") is not None
    assert _last_access(store, "c.json") is None


def test_access_log_flushes_after_interval_and_never_moves_back(make_store: MakeStore) -> None:
    store = make_store()
    store.put("a.json", 1, serializer="json")
    store.put("b.json", 2, serializer="json")
    log = AccessLog(store._rows().store_id, resolution=0.0, flush_interval=0.0)
    log.record("a.json", lambda: store.engine)
    stamp = _last_access(store, "a.json")
    assert stamp is not None
    future = datetime.now(timezone.utc) + timedelta(days=1)
    _set_last_access(store, "b.json", future)
    log.record("b.json", lambda: store.engine)  # an older time never overwrites a newer one
    assert _last_access(store, "b.json") == future
    log.record("missing.json", lambda: store.engine)  # unknown keys are ignored
    assert log.pending == 0


def test_readonly_store_records_nothing(make_store: MakeStore) -> None:
    make_store().put("a.json", 1, serializer="json")
    reader = make_store(readonly=True)
    assert reader.get("a.json") == 1
    reader.close()
    assert _last_access(make_store(), "a.json") is None


# -- eviction --------------------------------------------------------------------------------------
def test_max_size_evicts_least_recently_used(make_store: MakeStore) -> None:
    store = make_store(max_size=3500)
    for name in ("a", "b", "c"):
        store.put(f"{name}.json", _value(1000), serializer="json")
    store.get("a.json")  # read after b and c were written: b is the least recently used
    store.put("d.json", _value(1000), serializer="json")
    assert store.keys() == ["a.json", "c.json", "d.json"]
    assert not (Path(store.path) / "b.json").exists()
    assert _store_size(store) == (3000, 3)


def test_max_size_evicts_expired_first_and_down_to_low_water(make_store: MakeStore) -> None:
    store = make_store(max_size=4500)
    store.put("old.json", _value(1000), serializer="json")
    store.put("soon.json", _value(1000), serializer="json", ttl=0.05)
    store.put("x.json", _value(1000), serializer="json")
    store.put("y.json", _value(1000), serializer="json")
    time.sleep(0.1)
    store.put("z.json", _value(1000), serializer="json")  # 5000 > 4500: down to 4050
    assert store.keys() == ["old.json", "x.json", "y.json", "z.json"]
    assert _store_size(store)[0] == 4000
    assert store.query(include_expired=True, key="soon.json") == []


def test_an_artifact_larger_than_max_size_is_kept_with_a_warning(make_store: MakeStore) -> None:
    store = make_store(max_size=1500)
    store.put("small.json", _value(1000), serializer="json")
    with pytest.warns(UserWarning, match="raise max_size") as record:
        store.put("big.json", _value(2000), serializer="json")
    assert "'big.json'" in str(record[0].message)
    assert store.keys() == ["big.json"]


def test_evict_function_dry_run_and_keep(store: CacheStore) -> None:
    now = datetime.now(timezone.utc)
    for i, name in enumerate(["a", "b", "c", "d"]):
        store.put(f"{name}.json", _value(1000), serializer="json")
        _set_last_access(store, f"{name}.json", now - timedelta(hours=10 - i))

    preview = store.evict("2.5kB", dry_run=True)
    assert [item.key for item in preview.evicted] == ["a.json", "b.json"]
    assert (preview.size_before, preview.size_after, preview.freed_bytes) == (4000, 2000, 2000)
    assert len(store) == 4

    done = store.evict(2500, keep={"a.json"})
    assert [item.key for item in done.evicted] == ["b.json", "c.json"]
    assert done.size_after == 2000
    assert store.keys() == ["a.json", "d.json"]
    assert store.evict(2500).evicted == []  # fits: nothing to do


def test_evict_to_zero_empties_the_store_but_what_is_kept(store: CacheStore) -> None:
    for name in ["a", "b", "c"]:
        store.put(f"{name}.json", _value(1000), serializer="json")
    outside = Path(store.path).parent / "beside.txt"
    outside.write_text("not the store's")
    report = store.evict(0, keep={"b.json"})
    assert sorted(item.key for item in report.evicted) == ["a.json", "c.json"]
    assert store.keys() == ["b.json"] and report.size_after == 1000
    assert not Path(store.path, "a.json").exists() and Path(store.path, "b.json").exists()
    assert outside.read_text() == "not the store's"
    assert [item.key for item in store.evict("0B").evicted] == ["b.json"]
    assert store.keys() == []
    with pytest.raises(ValueError, match="0 or more"):
        store.evict(-1)


def test_evict_skips_an_artifact_rewritten_meanwhile(make_store: MakeStore) -> None:
    store = make_store()
    writer = make_store(on_duplicate_key="overwrite")
    now = datetime.now(timezone.utc)
    for i, name in enumerate(["a", "b", "c"]):
        store.put(f"{name}.json", _value(1000), serializer="json")
        _set_last_access(store, f"{name}.json", now - timedelta(hours=10 - i))

    def rewrite_b(phase: str, done: int, total: int) -> None:
        if done == 1000:  # after the first removal, another writer replaces b
            writer.put("b.json", _value(1000), serializer="json")

    report = store.evict(1500, progress=rewrite_b)
    assert [item.key for item in report.evicted] == ["a.json"]
    assert "b.json" in store and store.get("b.json") == _value(1000)
    assert report.size_after == 2000


def test_evict_never_removes_what_is_committed_after_it_began(make_store: MakeStore) -> None:
    store = make_store()
    writer = make_store()
    store.put("a.json", _value(1000), serializer="json")
    store.put("b.json", _value(1000), serializer="json")

    def late_put(phase: str, done: int, total: int) -> None:
        writer.put(f"late-{done}.json", _value(1000), serializer="json")

    store.evict(10, progress=late_put)
    assert store.keys() == ["late-1000.json", "late-2000.json"]


def test_readonly_store_refuses_evict_gc_repair(make_store: MakeStore) -> None:
    make_store().put("a.json", _value(1000), serializer="json")
    reader = make_store(readonly=True)
    for call in (
        lambda: reader.evict(10),
        lambda: reader.gc(),
        lambda: reader.repair(["a.json"]),
    ):
        with pytest.raises(ReadonlyStoreError, match="readonly") as info:
            call()
        assert reader.path in str(info.value)
    assert [i.key for i in reader.evict(10, dry_run=True).evicted] == ["a.json"]
    assert reader.gc(dry_run=True).items == []


# -- gc --------------------------------------------------------------------------------------------
def _make_leftovers(root: Path) -> dict[str, Path]:
    staging = root / HIDDEN_DIR / "staging" / f"{key_tag('crashed.zarr')}-0123abcd"
    (staging / "crashed.zarr" / "var").mkdir(parents=True)
    (staging / "crashed.zarr" / "var" / "0").write_bytes(b"x" * 100)
    trash = root / HIDDEN_DIR / "trash" / f"{key_tag('gone.json')}-4567ef01"
    trash.parent.mkdir(parents=True, exist_ok=True)
    trash.write_bytes(b"y" * 50)
    orphan_file = root / "orphan.json"
    orphan_file.write_bytes(b"z" * 10)
    orphan_dir = root / "results" / "lost.zarr"
    orphan_dir.mkdir(parents=True)
    (orphan_dir / "chunk").write_bytes(b"w" * 20)
    return {"staging": staging, "trash": trash, "orphan": orphan_file, "orphan_dir": orphan_dir}


def test_gc_removes_expired_orphans_and_leftovers(store: CacheStore) -> None:
    root = Path(store.path)
    store.put("keep.json", _value(100), serializer="json")
    store.put("results/2024/kept.json", _value(100), serializer="json")
    store.put("ds.zarr/part.json", _value(100), serializer="json")  # a key inside a directory
    store.put("expired.json", _value(300), serializer="json", ttl=0.01)
    (root / "results" / "2024" / "stray.txt").write_text("stray")
    legacy_sidecar = root / "xpersist_metadata_store" / "old.artifact.json"
    legacy_sidecar.parent.mkdir()
    legacy_sidecar.write_text("{}")
    leftovers = _make_leftovers(root)
    time.sleep(0.05)

    preview = store.gc(older_than=0, dry_run=True)
    found = {(item.kind, item.path): item.size_bytes for item in preview.items}
    assert found == {
        ("expired", "expired.json"): 300,
        ("orphan", "orphan.json"): 10,
        ("orphan", "results/2024/stray.txt"): 5,
        ("orphan", "results/lost.zarr"): 20,
        ("staging", f"{HIDDEN_DIR}/staging/{leftovers['staging'].name}"): 100,
        ("trash", f"{HIDDEN_DIR}/trash/{leftovers['trash'].name}"): 50,
    }
    assert preview.total_bytes == 485 and preview.dry_run
    assert all(path.exists() for path in leftovers.values())
    assert store.query(include_expired=True, key="expired.json") != []

    report = store.gc(older_than=0)
    assert sorted((i.kind, i.path) for i in report.items) == sorted(found)
    assert report.count("orphan") == 3 and report.skipped == []
    assert not any(path.exists() for path in leftovers.values())
    assert not (root / "expired.json").exists()
    assert store.query(include_expired=True, key="expired.json") == []
    assert legacy_sidecar.exists()  # the 2021 sidecars are not orphans
    assert sorted(store.keys()) == ["ds.zarr/part.json", "keep.json", "results/2024/kept.json"]
    assert store.get("results/2024/kept.json") == _value(100)
    assert store.gc(older_than=0).items == []


def test_gc_grace_period_keeps_recent_files(store: CacheStore) -> None:
    root = Path(store.path)
    store._rows(create=True)  # the directory is a store (gc refuses any other)
    leftovers = _make_leftovers(root)
    report = store.gc()  # default grace: one hour
    assert report.items == []
    assert all(path.exists() for path in leftovers.values())

    # Status-change times cannot be set back: the clock given to gc moves forward instead.
    time.sleep(0.05)
    between = datetime.now(timezone.utc)
    time.sleep(0.05)
    recent_staging = root / HIDDEN_DIR / "staging" / "recent-writer"
    recent_staging.mkdir()
    (recent_staging / "payload").write_text("still being written")
    (root / "recent.json").write_text("recent")
    report = store.gc(older_than="1h", now=between + timedelta(hours=1))
    assert {item.kind for item in report.items} == {"staging", "trash", "orphan"}
    assert not any(path.exists() for path in leftovers.values())
    assert (recent_staging / "payload").exists() and (root / "recent.json").exists()


def test_gc_never_removes_what_is_written_after_the_scan_started(make_store: MakeStore) -> None:
    store = make_store()
    writer = make_store()
    root = Path(store.path)
    store._rows(create=True)  # the directory is a store (gc refuses any other)
    (root / "old-orphan.json").write_text("old")
    time.sleep(0.02)
    written: list[str] = []

    def write_during_scan(phase: str, done: int, total: int) -> None:
        if not written:
            (root / "new-orphan.json").write_text("new")
            staging = root / HIDDEN_DIR / "staging" / "live-writer"
            staging.mkdir(parents=True)
            (staging / "payload").write_text("in progress")
            writer.put("fresh.json", 1, serializer="json", ttl=0.001)
            written.append(phase)

    report = store.gc(older_than=0, progress=write_during_scan)
    assert written
    assert [(i.kind, i.path) for i in report.items] == [("orphan", "old-orphan.json")]
    assert (root / "new-orphan.json").exists()
    assert (root / HIDDEN_DIR / "staging" / "live-writer" / "payload").exists()
    assert (root / "fresh.json").exists()


def test_gc_keeps_a_payload_a_killed_writer_moved_to_the_trash(store: CacheStore) -> None:
    root = Path(store.path)
    store.put("d.json", {"d": 1}, serializer="json")
    trash = root / HIDDEN_DIR / "trash" / f"{key_tag('d.json')}-89abcdef"
    trash.parent.mkdir(parents=True, exist_ok=True)
    os.replace(root / "d.json", trash)  # killed between moving the payload away and committing
    time.sleep(0.02)
    report = store.gc(older_than=0)
    assert [(i.kind, i.path) for i in report.skipped] == [
        ("trash", f"{HIDDEN_DIR}/trash/{trash.name}")
    ]
    assert trash.exists()
    assert "d.json" in store


# -- verify ----------------------------------------------------------------------------------------
def test_verify_reports_missing_and_modified(store: CacheStore) -> None:
    root = Path(store.path)
    store.put("ok.json", {"ok": 1}, serializer="json")
    store.put("gone.json", {"g": 1}, serializer="json")
    store.put("grown.json", {"x": 1}, serializer="json")
    store.put("dir.zarr/a.json", 1, serializer="json")
    assert store.verify().ok

    (root / "gone.json").unlink()
    with open(root / "grown.json", "a") as f:
        f.write("   ")
    report = store.verify()
    assert report.checked == 4 and not report.ok
    assert report.missing == ["gone.json"]
    assert report.damaged == ["grown.json"]
    problem = {p.key: p for p in report.problems}["grown.json"]
    assert problem.problem == "modified" and "bytes" in problem.detail

    assert store.repair([*report.missing, "ok.json", "unknown.json"]) == ["gone.json"]
    assert "gone.json" not in store
    assert store.verify().missing == []
    assert store.get("ok.json") == {"ok": 1}


def test_verify_checksums_decide(make_store: MakeStore) -> None:
    store = make_store(checksum=True)
    root = Path(store.path)
    store.put("same.json", {"v": 1}, serializer="json")
    store.put("flipped.json", {"v": 1}, serializer="json")
    # touched: new modification time, same content -> the checksum proves it intact
    os.utime(root / "same.json", (time.time() + 5, time.time() + 5))
    # same size, other content: only the checksum sees it
    content = (root / "flipped.json").read_bytes()
    (root / "flipped.json").write_bytes(content.replace(b"1", b"2"))
    report = store.verify()
    assert [(p.key, p.problem) for p in report.problems] == [("flipped.json", "corrupt")]
    assert "checksum" in report.problems[0].detail


def test_verify_after_legacy_style_removal_of_a_directory_payload(store: CacheStore) -> None:
    store.put("a/b.json", 1, serializer="json")
    shutil.rmtree(Path(store.path) / "a")
    assert store.verify().missing == ["a/b.json"]


# -- command line (real subprocesses) ------------------------------------------------------------
def _cli(*args: str, database_url: str | None, stdin: str | None = None) -> Any:
    command = [sys.executable, "-m", "xpersist_sql", *args]
    if database_url is not None:
        command += ["--db", database_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPERSIST_SQL_")}
    return subprocess.run(
        command, capture_output=True, text=True, input=stdin or "", env=env, timeout=120
    )


def test_cli_gc(store: CacheStore, database_url: str | None) -> None:
    root = Path(store.path)
    store.put("keep.json", 1, serializer="json")
    store.put("old.json", _value(40), serializer="json", ttl=0.01)
    (root / "orphan.bin").write_bytes(b"o" * 7)
    time.sleep(0.05)

    dry = _cli(
        "gc", "--store", store.path, "--dry-run", "--older-than", "0", database_url=database_url
    )
    assert dry.returncode == 0, dry.stderr
    assert "expired" in dry.stdout and "old.json" in dry.stdout and "orphan.bin" in dry.stdout
    assert "would remove 2 items (47 B): 1 expired, 1 orphan" in dry.stderr
    assert (root / "orphan.bin").exists() and (root / "old.json").exists()

    done = _cli(
        "gc", "--store", store.path, "--older-than", "0", "--json", database_url=database_url
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["total_bytes"] == 47
    assert sorted(item["path"] for item in result["items"]) == ["old.json", "orphan.bin"]
    assert not (root / "orphan.bin").exists() and not (root / "old.json").exists()
    assert store.keys() == ["keep.json"]

    bad = _cli("gc", "--store", store.path, "--older-than", "soon", database_url=database_url)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: --older-than 'soon': cannot read 'soon' as a duration; write seconds ('30'), "
        "a number with a unit s, m, h, d or w ('30s', '30m', '12h', '7d', '2w') or an ISO-8601 "
        "duration ('P7D', 'PT12H', 'P1W')"
    ]


def test_cli_verify(store: CacheStore, database_url: str | None) -> None:
    root = Path(store.path)
    store.put("ok.json", 1, serializer="json")
    store.put("gone.json", 2, serializer="json")
    ok = _cli("verify", "--store", store.path, database_url=database_url)
    assert ok.returncode == 0, ok.stderr
    assert "checked 2 artifacts: 0 missing, 0 modified or corrupt" in ok.stderr

    (root / "gone.json").unlink()
    found = _cli("verify", "--store", store.path, "--json", database_url=database_url)
    assert found.returncode == 1
    result = json.loads(found.stdout)
    assert result["checked"] == 2
    assert [(p["key"], p["problem"]) for p in result["problems"]] == [("gone.json", "missing")]
    table = _cli("verify", "--store", store.path, database_url=database_url)
    assert table.returncode == 1 and "gone.json" in table.stdout and "missing" in table.stdout
    assert "verify --repair" in table.stderr

    declined = _cli(
        "verify", "--store", store.path, "--repair", database_url=database_url, stdin="n\n"
    )
    assert declined.returncode == 1 and "nothing repaired" in declined.stderr
    assert store.query(key="gone.json") != []

    repaired = _cli("verify", "--store", store.path, "--repair", "--yes", database_url=database_url)
    assert repaired.returncode == 0, repaired.stderr
    assert "1 rows dropped" in repaired.stderr
    assert store.keys() == ["ok.json"]


def test_cli_evict(store: CacheStore, database_url: str | None) -> None:
    now = datetime.now(timezone.utc)
    for i, name in enumerate(["a", "b", "c"]):
        store.put(f"{name}.json", _value(1000), serializer="json")
        _set_last_access(store, f"{name}.json", now - timedelta(hours=5 - i))
    preview = _cli(
        "evict", "--store", store.path, "--max-size", "2kB", "--dry-run", database_url=database_url
    )
    assert preview.returncode == 0, preview.stderr
    assert "a.json" in preview.stdout and "b.json" not in preview.stdout
    assert "would evict 1 artifacts (1.0 kB): 3.0 kB -> 2.0 kB (max 2.0 kB)" in preview.stderr
    assert len(store) == 3

    done = _cli(
        "evict", "--store", store.path, "--max-size", "1500", "--json", database_url=database_url
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [item["key"] for item in result["evicted"]] == ["a.json", "b.json"]
    assert (result["size_before"], result["size_after"]) == (3000, 1000)
    assert store.keys() == ["c.json"]

    bad = _cli("evict", "--store", store.path, "--max-size", "lots", database_url=database_url)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: --max-size 'lots': cannot read 'lots' as a size")
    missing = _cli("evict", "--store", store.path, database_url=database_url)
    assert missing.returncode != 0 and "--max-size" in missing.stderr


def test_a_failed_access_write_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'not-an-index.sqlite'}")
    log = AccessLog(1)
    log.record("a.json", lambda: engine)  # no artifacts table there: the write fails
    assert log.pending == 0
    assert "could not record the last access of 1 artifacts" in caplog.text
    assert "no such table" in caplog.text
    engine.dispose()


WRITER = """
import sys
from xpersist_sql import ArtifactNotFoundError, CacheStore
path, url = sys.argv[1], (sys.argv[2] or None)
store = CacheStore(path, database_url=url, max_size=8000)
for i in range(40):
    store.put(f"w{i:02d}.json", "x" * 998, serializer="json")
    try:
        assert store.get(f"w{i // 2:02d}.json") == "x" * 998
    except ArtifactNotFoundError:  # evicted meanwhile: absent, never half there
        pass
print("done")
"""


def test_eviction_and_gc_while_another_process_writes(
    make_store: MakeStore, database_url: str | None
) -> None:
    store = make_store()
    store.put("seed.json", _value(1000), serializer="json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPERSIST_SQL_")}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, store.path, database_url or ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    rounds = 0
    while writer.poll() is None or rounds < 3:
        store.evict(5000)
        # a grace period shorter than the writer's life, longer than one of its puts
        store.gc(older_than="2s")
        rounds += 1
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert out.strip() == "done"
    # every row has its intact payload, and no payload lies around without a row
    report = store.verify()
    assert report.ok, report.problems
    assert store.gc(older_than=0, dry_run=True).items == []
    assert _store_size(store)[0] <= 8000


def test_access_write_gives_up_on_a_row_a_writer_holds(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = CacheStore(tmp_path / "s", database_url=postgres_url)
    store.put("a.json", 1, serializer="json")
    with store.engine.connect() as holder:
        holder.execute(sa.update(ARTIFACTS).values(size_bytes=2))  # row locked, not committed
        store._backend._access.record("a.json", lambda: store.engine)  # first read: written at once
        assert store._backend._access.pending == 0
        holder.rollback()
    assert "could not record the last access of 1 artifacts" in caplog.text
    assert "lock timeout" in caplog.text  # gave up instead of waiting for the writer
    assert _last_access(store, "a.json") is None
    assert store.get("a.json") == 1
    store.close()
