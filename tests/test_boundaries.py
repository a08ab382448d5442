"""A store owns exactly its own data (issue 9): each case proves nothing else is touched.

1. gc / evict on a directory that is not a store refuse to run.
2. Stores sharing one database see only their own rows; moved and copied stores keep working.
3. Keys never overlap (``a`` vs ``a/b``), also between racing processes.
4. Index rows with keys outside the root are never acted on.
5. gc never removes a nested store.
6. Symbolic links inside a store are never followed.
7. Reading creates nothing: a readonly store in a directory the reader cannot write.
8. Concurrent ``db upgrade`` of an empty database.

Every case snapshots the directory trees around the store (paths and file contents) and, where a
database is shared, the rows of the other store, and compares them after the operation.
"""

from __future__ import annotations

import grp
import hashlib
import json
import multiprocessing
import os
import pwd
import queue
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import xarray as xr
from typer.testing import CliRunner

from tests.boundary_worker import race_puts
from tests.helpers import make_dataset, make_frame
from xpersist_sql import (
    ArtifactNotFoundError,
    CacheStore,
    InvalidKeyError,
    OverlappingKeyError,
    PayloadMissingError,
    ReadonlyStoreError,
    StoreMismatchError,
    StoreNotFoundError,
    UnsafePathError,
)
from xpersist_sql.cli import app
from xpersist_sql.db.schema import head_revision
from xpersist_sql.db.tables import ARTIFACTS
from xpersist_sql.marker import HIDDEN_DIR, MARKER_NAME

MakeStore = Callable[..., CacheStore]
LATER = timedelta(hours=2)  # gc's clock: everything on disk is older than the grace period
ENV_VARS = ("XPERSIST_SQL_STORE", "XPERSIST_SQL_DATABASE_URL")
WORKER = Path(__file__).with_name("boundary_worker.py")
REPO = Path(__file__).resolve().parent.parent


def later() -> datetime:
    return datetime.now(timezone.utc) + LATER


# -- snapshots -------------------------------------------------------------------------------------
def snapshot(root: Path, *, skip: Path | None = None, mtimes: bool = False) -> dict[str, str]:
    """Map every path under ``root`` (root included) to what it is: dir, link target, file hash.

    Symlinks are recorded as links and never followed; ``skip`` (a path under ``root``) is left
    out with everything below it.
    """
    tree: dict[str, str] = {}
    if not os.path.lexists(root):
        return tree

    def describe(path: Path) -> str:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            return f"link -> {os.readlink(path)}"
        if stat.S_ISDIR(info.st_mode):
            what = "dir"
        else:
            what = "file " + hashlib.sha256(path.read_bytes()).hexdigest()
        if mtimes:
            what += f" mode={oct(info.st_mode)} mtime={info.st_mtime_ns}"
        return what

    tree["."] = describe(root)
    for current, dirs, files in os.walk(root, followlinks=False):
        here = Path(current)
        if skip is not None and (here == skip or skip in here.parents):
            dirs[:] = []
            continue
        for name in [*dirs, *files]:
            path = here / name
            if skip is not None and path == skip:
                continue
            tree[str(path.relative_to(root))] = describe(path)
    return tree


def store_rows(engine: sa.Engine, store_id: int) -> list[tuple[Any, ...]]:
    """Every column of every row of one store, in key order."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(ARTIFACTS).where(ARTIFACTS.c.store_id == store_id).order_by(ARTIFACTS.c.key)
        ).all()
    return [tuple(row) for row in rows]


def store_id(store: CacheStore) -> int:
    rows = store._rows()
    assert rows is not None, f"{store.path} is not a store"
    return rows.store_id


def user_files(directory: Path) -> None:
    """A directory a user cares about, which is not a store."""
    (directory / "projects").mkdir(parents=True)
    (directory / "notes.txt").write_text("my notes\n")
    (directory / "projects" / "x.txt").write_text("project x\n")
    (directory / "projects" / "data.json").write_text('{"keep": true}\n')


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def invoke(runner: CliRunner, *args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False, env=env)


def db_options(database_url: str | None) -> list[str]:
    return [] if database_url is None else ["--db", database_url]


def assert_no_store_error(result: Any) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "no xpersist_sql store at" in result.stderr, result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# == 1. gc / evict on a directory that is not a store ===========================================
def test_gc_cli_on_a_directory_that_is_not_a_store(
    runner: CliRunner, tmp_path: Path, database_url: str | None
) -> None:
    target = tmp_path / "documents"
    user_files(target)
    before = snapshot(tmp_path)
    for _ in range(2):  # the second run (cron, an hour later) used to delete the "orphans"
        assert_no_store_error(
            invoke(runner, "gc", "--store", str(target), *db_options(database_url))
        )
        assert_no_store_error(
            invoke(
                runner,
                "gc",
                "--store",
                str(target),
                "--older-than",
                "0",
                *db_options(database_url),
            )
        )
        assert_no_store_error(
            invoke(runner, "gc", "--dry-run", "--store", str(target), *db_options(database_url))
        )
        assert_no_store_error(
            invoke(
                runner,
                "evict",
                "--max-size",
                "1",
                "--store",
                str(target),
                *db_options(database_url),
            )
        )
        for command in (
            ["verify", "--repair", "--yes"],
            ["rm", "notes.txt", "--yes"],
            ["rm", "projects/x.txt"],
        ):
            assert_no_store_error(
                invoke(runner, *command, "--store", str(target), *db_options(database_url))
            )
        assert snapshot(tmp_path) == before
    assert not (target / HIDDEN_DIR).exists()
    assert (target / "notes.txt").read_text() == "my notes\n"
    assert (target / "projects" / "x.txt").read_text() == "project x\n"


def test_gc_and_evict_api_on_a_directory_that_is_not_a_store(
    tmp_path: Path, database_url: str | None
) -> None:
    target = tmp_path / "documents"
    user_files(target)
    before = snapshot(tmp_path)
    store = CacheStore(target, database_url=database_url)
    try:
        for _ in range(2):
            with pytest.raises(StoreNotFoundError):
                store.gc()
            with pytest.raises(StoreNotFoundError):
                store.gc(older_than=0, now=later())
            with pytest.raises(StoreNotFoundError):
                store.gc(dry_run=True, now=later())
            with pytest.raises(StoreNotFoundError):
                store.evict(1)
            with pytest.raises(StoreNotFoundError):
                store.evict(1, now=later())
            assert snapshot(tmp_path) == before
        assert not (target / HIDDEN_DIR).exists()
        assert store.keys() == [] and len(store) == 0
    finally:
        store.close()
    with pytest.raises(StoreNotFoundError, match="no xpersist_sql store at"):
        CacheStore(target, database_url=database_url, create=False)
    with pytest.raises(StoreNotFoundError, match="no xpersist_sql store at"):
        CacheStore(target, database_url=database_url, readonly=True)
    with pytest.raises(StoreNotFoundError):
        CacheStore(tmp_path / "no-such-dir", database_url=database_url, create=False)
    assert snapshot(tmp_path) == before


# == 2. stores sharing one database =============================================================
@pytest.fixture(params=["postgresql", "postgresql-env", "sqlite-shared"])
def shared(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Callable[[Path], CacheStore]]]:
    """(database URL, factory of stores on it): explicit PostgreSQL, via the env var, SQLite."""
    mode = str(request.param)
    if mode == "sqlite-shared":
        url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    opened: list[CacheStore] = []

    def make(path: Path) -> CacheStore:
        if mode == "postgresql-env":
            monkeypatch.setenv("XPERSIST_SQL_DATABASE_URL", url)
            store = CacheStore(path)
        else:
            store = CacheStore(path, database_url=url)
        assert store.database_url == url
        opened.append(store)
        return store

    yield url, make
    for store in opened:
        store.close()


def _fill_pair(make: Callable[[Path], CacheStore], tmp_path: Path) -> tuple[CacheStore, CacheStore]:
    a = make(tmp_path / "team-a")
    b = make(tmp_path / "team-b")
    a.put("a.json", {"owner": "a"}, serializer="json", additional_metadata={"flow_name": "fa"})
    a.put("common.json", {"owner": "a"}, serializer="json", additional_metadata={"flow_name": "f"})
    a.put("runs/x.json", [1, 2, 3], serializer="json")
    a.put("frame.parquet", make_frame())
    b.put("b.json", {"owner": "b"}, serializer="json", additional_metadata={"flow_name": "fb"})
    b.put("common.json", {"owner": "b"}, serializer="json", additional_metadata={"flow_name": "f"})
    return a, b


def test_stores_sharing_a_database_see_only_their_own_keys(
    shared: tuple[str, Callable[[Path], CacheStore]], tmp_path: Path
) -> None:
    url, make = shared
    a, b = _fill_pair(make, tmp_path)
    assert store_id(a) != store_id(b)

    assert a.keys() == ["a.json", "common.json", "frame.parquet", "runs/x.json"]
    assert b.keys() == ["b.json", "common.json"]
    assert (len(a), len(b)) == (4, 2)
    assert "a.json" in a and "a.json" not in b and "runs/x.json" not in b
    assert "b.json" in b and "b.json" not in a
    assert a.get("common.json") == {"owner": "a"}
    assert b.get("common.json") == {"owner": "b"}
    assert a["common.json"] == {"owner": "a"}
    assert sorted(x.key for x in a.query()) == a.keys()
    assert [x.key for x in b.query(flow_name="f")] == ["common.json"]
    assert [x.key for x in a.query(flow_name="fb")] == []
    assert sorted(x.key for x in b.query(key="*.json")) == ["b.json", "common.json"]
    assert {(r.value, r.count) for r in b.summarize("flow_name")} == {("fb", 1), ("f", 1)}
    assert sum(r.count for r in a.summarize("serializer")) == 4

    for key in ("a.json", "runs/x.json", "frame.parquet"):
        with pytest.raises(ArtifactNotFoundError) as info:
            b.get(key)
        assert not isinstance(info.value, PayloadMissingError)
        assert isinstance(info.value, KeyError)
        with pytest.raises(ArtifactNotFoundError):
            b.get_artifact(key)
        with pytest.raises(ArtifactNotFoundError):
            b.delete(key)
    report = b.verify()
    assert report.ok and report.checked == 2, report

    # the command line of B sees B only
    runner = CliRunner()
    opts = ["--store", b.path, "--db", url]
    listed = runner.invoke(app, ["ls", "--json", *opts])
    assert listed.exit_code == 0, listed.stderr
    assert sorted(x["key"] for x in json.loads(listed.stdout)) == ["b.json", "common.json"]
    shown = runner.invoke(app, ["show", "a.json", *opts])
    assert shown.exit_code == 2 and "a.json" in shown.stderr, shown.stderr
    removed = runner.invoke(app, ["rm", "a.json", "runs/x.json", *opts])
    assert removed.exit_code != 0, removed.stdout
    assert a.keys() == ["a.json", "common.json", "frame.parquet", "runs/x.json"]

    rows_a = store_rows(a.engine, store_id(a))
    files_a = snapshot(Path(a.path))
    # B's maintenance touches nothing of A (A's files are not even under B's root, but its rows
    # share the tables)
    assert b.gc(older_than=0, now=later()).items == []
    assert b.verify(repair=True).repaired == []
    evicted = b.evict(1, now=later())
    assert sorted(item.key for item in evicted.evicted) == ["b.json", "common.json"]
    assert b.keys() == [] and len(b) == 0
    assert store_rows(a.engine, store_id(a)) == rows_a
    assert snapshot(Path(a.path)) == files_a
    assert a.get("common.json") == {"owner": "a"}

    # the same key again in B, then deleted from B only
    b.put("common.json", {"owner": "b", "again": True}, serializer="json")
    b.delete("common.json")
    assert a.get("common.json") == {"owner": "a"}
    assert store_rows(a.engine, store_id(a)) == rows_a
    assert snapshot(Path(a.path)) == files_a

    # A's own maintenance is still A's to do
    assert a.verify().ok
    assert a.gc(older_than=0, now=later()).items == []
    assert url == a.database_url == b.database_url


def test_expired_rows_of_another_store_are_not_collected(
    shared: tuple[str, Callable[[Path], CacheStore]], tmp_path: Path
) -> None:
    _, make = shared
    a, b = _fill_pair(make, tmp_path)
    a.put("short.json", "soon gone", serializer="json", ttl="1h")
    rows_a = store_rows(a.engine, store_id(a))
    files_a = snapshot(Path(a.path))
    report = b.gc(older_than=0, now=later())
    assert report.items == [] and report.skipped == []
    assert store_rows(a.engine, store_id(a)) == rows_a
    assert snapshot(Path(a.path)) == files_a
    own = a.gc(older_than=0, now=later())
    assert [(item.kind, item.path) for item in own.items] == [("expired", "short.json")]
    assert not (Path(a.path) / "short.json").exists()
    assert b.keys() == ["b.json", "common.json"]


def test_verify_repair_of_an_empty_directory_keeps_the_other_stores_rows(
    shared: tuple[str, Callable[[Path], CacheStore]], tmp_path: Path, runner: CliRunner
) -> None:
    url, make = shared
    a, b = _fill_pair(make, tmp_path)
    # a payload of A is gone: A's own `verify --repair` would drop its row, nobody else's may
    os.remove(Path(a.path) / "a.json")
    rows_a = store_rows(a.engine, store_id(a))
    rows_b = store_rows(b.engine, store_id(b))
    empty = tmp_path / "new-empty-dir"
    empty.mkdir()
    before = snapshot(tmp_path, skip=tmp_path / "shared.sqlite")

    for args, env in (
        (["--store", str(empty), "--db", url], None),
        (["--store", str(empty)], {"XPERSIST_SQL_DATABASE_URL": url}),
        (["--store", str(tmp_path / "mistyped"), "--db", url], None),
    ):
        assert_no_store_error(invoke(runner, "verify", *args, "--repair", "--yes", env=env))
        assert_no_store_error(invoke(runner, "verify", *args, env=env))
        assert store_rows(a.engine, store_id(a)) == rows_a
        assert snapshot(tmp_path, skip=tmp_path / "shared.sqlite") == before

    # B, a real store, repairs only itself
    result = invoke(runner, "verify", "--store", b.path, "--db", url, "--repair", "--yes")
    assert result.exit_code == 0, result.stderr
    assert b.verify(repair=True).repaired == []
    assert store_rows(a.engine, store_id(a)) == rows_a
    assert store_rows(b.engine, store_id(b)) == rows_b
    assert a.verify().missing == ["a.json"]
    with pytest.raises(PayloadMissingError):
        a.get("a.json")


def test_a_moved_store_on_a_shared_database_and_a_new_store_at_its_old_path(
    shared: tuple[str, Callable[[Path], CacheStore]], tmp_path: Path
) -> None:
    _, make = shared
    a, b = _fill_pair(make, tmp_path)
    a.close()
    rows_b = store_rows(b.engine, store_id(b))
    os.rename(tmp_path / "team-a", tmp_path / "moved-a")
    moved = make(tmp_path / "moved-a")
    assert moved.keys() == ["a.json", "common.json", "frame.parquet", "runs/x.json"]
    assert moved.get("common.json") == {"owner": "a"}
    assert moved.verify().ok
    rows_a = store_rows(moved.engine, store_id(moved))
    fresh = make(tmp_path / "team-a")  # the old path, now empty: a new store, not A
    assert fresh.keys() == [] and "a.json" not in fresh
    with pytest.raises(ArtifactNotFoundError):
        fresh.get("a.json")
    fresh.put("a.json", "new store", serializer="json")
    assert store_id(fresh) not in (store_id(moved), store_id(b))
    assert fresh.get("a.json") == "new store"
    assert moved.get("a.json") == {"owner": "a"}
    assert store_rows(moved.engine, store_id(moved)) == rows_a
    assert store_rows(b.engine, store_id(b)) == rows_b


def test_a_moved_store_keeps_working(tmp_path: Path) -> None:
    old = tmp_path / "old" / "cache"
    store = CacheStore(old)
    store.put("a.json", {"a": 1}, serializer="json")
    store.put("ds.zarr", make_dataset())
    store.put("runs/b.json", "b", serializer="json")
    store.close()
    neighbours = snapshot(tmp_path, skip=old)

    new = tmp_path / "new" / "place"
    new.parent.mkdir()
    os.rename(old, new)
    moved = CacheStore(new)
    try:
        assert moved.keys() == ["a.json", "ds.zarr", "runs/b.json"]
        assert moved.get("a.json") == {"a": 1}
        xr.testing.assert_identical(moved.get("ds.zarr").load(), make_dataset())
        assert moved.verify().ok
        moved.put("c.json", 3, serializer="json")
        moved.delete("runs/b.json")
        swept = moved.gc(older_than=0, now=later()).items
        assert [(i.kind, i.path, i.size_bytes) for i in swept] in ([], [("orphan", "runs", 0)])
        assert moved.keys() == ["a.json", "c.json", "ds.zarr"]
        assert moved.payload_url("c.json") == str(new / "c.json")
    finally:
        moved.close()
    assert not old.exists()
    assert snapshot(tmp_path, skip=new) == {**neighbours, "new": "dir"}


def test_a_copied_store_is_independent(tmp_path: Path) -> None:
    original_path = tmp_path / "original"
    original = CacheStore(original_path)
    original.put("a.json", {"a": 1}, serializer="json")
    original.put("frame.parquet", make_frame())
    original.close()
    copy_path = tmp_path / "copy"
    shutil.copytree(original_path, copy_path, symlinks=True)
    files_original = snapshot(original_path)

    copy = CacheStore(copy_path)
    try:
        assert copy.keys() == ["a.json", "frame.parquet"]
        assert copy.get("a.json") == {"a": 1}
        copy.put("new.json", "only in the copy", serializer="json")
        copy["a.json"] = {"a": "changed in the copy"}
        copy.delete("frame.parquet")
        assert copy.gc(older_than=0, now=later()).items == []
        assert copy.verify().ok
        assert copy.keys() == ["a.json", "new.json"]
    finally:
        copy.close()
    assert snapshot(original_path) == files_original
    reopened = CacheStore(original_path)
    try:
        assert reopened.keys() == ["a.json", "frame.parquet"]
        assert reopened.get("a.json") == {"a": 1}
        assert reopened.verify().ok
        # and the copy still works after the original was used again
        again = CacheStore(copy_path)
        assert again.get("a.json") == {"a": "changed in the copy"}
        again.close()
    finally:
        reopened.close()


def test_a_copy_of_a_store_on_a_shared_database_is_refused(
    tmp_path: Path, postgres_url: str
) -> None:
    original = CacheStore(tmp_path / "a", database_url=postgres_url)
    original.put("x.json", 1, serializer="json")
    original.close()
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    rows = store_rows(original.engine, store_id(original))
    copy = CacheStore(tmp_path / "b", database_url=postgres_url)
    with pytest.raises(StoreMismatchError, match="is a copy") as info:
        copy.put("only-b.json", 2, serializer="json")
    assert str(tmp_path / "a") in str(info.value) and "store.json" in str(info.value)
    assert not (tmp_path / "b" / "only-b.json").exists()
    reopened = CacheStore(tmp_path / "a", database_url=postgres_url)
    assert reopened.keys() == ["x.json"] and reopened.verify().ok
    assert store_rows(reopened.engine, store_id(reopened)) == rows
    # the remedy the message gives: the copy without its marker is a new, empty store
    (tmp_path / "b" / HIDDEN_DIR / MARKER_NAME).unlink()
    fresh = CacheStore(tmp_path / "b", database_url=postgres_url)
    fresh.put("only-b.json", 2, serializer="json")
    assert fresh.keys() == ["only-b.json"] and reopened.keys() == ["x.json"]
    for store in (copy, reopened, fresh):
        store.close()


# == 3. keys never overlap ======================================================================
def test_a_key_containing_a_stored_key_is_refused(store: CacheStore) -> None:
    root = Path(store.path)
    store.put("runs/2024/a.json", {"nested": True}, serializer="json")
    store.put("runs/2024/b.json", {"nested": 2}, serializer="json")
    rows = store_rows(store.engine, store_id(store))
    files = snapshot(root)
    for attempt in (
        lambda: store.put("runs", {"flat": True}, serializer="json"),
        lambda: store.put("runs", {"flat": True}, serializer="json", on_duplicate_key="overwrite"),
        lambda: store.__setitem__("runs", [1]),
        lambda: store.put("runs/2024", "x", serializer="json"),
    ):
        with pytest.raises(OverlappingKeyError) as info:
            attempt()
        assert isinstance(info.value, InvalidKeyError) and isinstance(info.value, ValueError)
        assert "'runs/2024/a.json'" in str(info.value) or "'runs/2024/b.json'" in str(info.value)
        assert store_rows(store.engine, store_id(store)) == rows
        assert snapshot(root) == files
    assert store.get("runs/2024/a.json") == {"nested": True}
    assert store.get("runs/2024/b.json") == {"nested": 2}
    assert store.keys() == ["runs/2024/a.json", "runs/2024/b.json"]
    assert store.verify().ok
    # a path-prefix, not a string prefix: neighbours are fine
    for neighbour in ("run", "runs2", "runs.json", "runs-old/a.json", "runs/2024/a.json.bak"):
        store.put(neighbour, neighbour, serializer="json")
        assert store.get(neighbour) == neighbour


def test_a_key_inside_a_stored_key_is_refused(store: CacheStore) -> None:
    root = Path(store.path)
    store.put("runs", {"flat": True}, serializer="json")
    rows = store_rows(store.engine, store_id(store))
    files = snapshot(root)
    for key in ("runs/2024/a.json", "runs/x"):
        with pytest.raises(OverlappingKeyError, match="'runs'"):
            store.put(key, 1, serializer="json")
        with pytest.raises(OverlappingKeyError, match="'runs'"):
            store.put(key, 1, serializer="json", on_duplicate_key="overwrite")
        assert store_rows(store.engine, store_id(store)) == rows
        assert snapshot(root) == files
    assert store.get("runs") == {"flat": True}


def test_a_key_inside_a_zarr_payload_is_refused(store: CacheStore) -> None:
    root = Path(store.path)
    ds = make_dataset()
    store.put("ds.zarr", ds)
    rows = store_rows(store.engine, store_id(store))
    files = snapshot(root)
    for key in ("ds.zarr/notes.json", "ds.zarr/tas/extra.json"):
        with pytest.raises(OverlappingKeyError, match=re.escape("'ds.zarr'")):
            store.put(key, {"note": 1}, serializer="json")
        assert store_rows(store.engine, store_id(store)) == rows
        assert snapshot(root) == files
    xr.testing.assert_identical(store.get("ds.zarr").load(), ds)
    assert store.verify().ok
    # overwriting or deleting the dataset still works and leaves no foreign file behind
    store["ds.zarr"] = make_dataset(seed=1)
    xr.testing.assert_identical(store.get("ds.zarr").load(), make_dataset(seed=1))
    store.delete("ds.zarr")
    assert not (root / "ds.zarr").exists()


def test_a_zarr_payload_containing_a_stored_key_is_refused(store: CacheStore) -> None:
    root = Path(store.path)
    store.put("ds.zarr/notes.json", {"note": 1}, serializer="json")
    rows = store_rows(store.engine, store_id(store))
    files = snapshot(root)
    with pytest.raises(OverlappingKeyError, match=re.escape("'ds.zarr/notes.json'")):
        store.put("ds.zarr", make_dataset())
    with pytest.raises(OverlappingKeyError, match=re.escape("'ds.zarr/notes.json'")):
        store.put("ds.zarr", make_dataset(), on_duplicate_key="overwrite")
    assert store_rows(store.engine, store_id(store)) == rows
    assert snapshot(root) == files
    assert store.get("ds.zarr/notes.json") == {"note": 1}


def test_overlapping_puts_racing_in_processes(make_store: MakeStore) -> None:
    store = make_store()
    store.put("warmup.json", 0, serializer="json")  # the store exists before the race
    rounds = 10
    parents = [f"r{i}-{uuid.uuid4().hex[:6]}" for i in range(rounds)]
    children = [f"{key}/b" for key in parents]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=race_puts, args=(store, parents, barrier, results, "parent")),
        ctx.Process(target=race_puts, args=(store, children, barrier, results, "child")),
    ]
    for proc in procs:
        proc.start()
    outcomes: dict[int, dict[str, tuple[str, str]]] = {}
    try:
        for _ in range(2 * rounds):
            round_no, role, outcome, detail = results.get(timeout=240)
            outcomes.setdefault(round_no, {})[role] = (outcome, detail)
    except queue.Empty:
        pytest.fail(f"the racing processes stopped answering; so far {outcomes}")
    finally:
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]

    root = Path(store.path)
    keys = set(store.keys())
    for round_no in range(rounds):
        got = outcomes[round_no]
        kinds = sorted(outcome for outcome, _ in got.values())
        assert kinds == ["ok", "overlap"], (round_no, got)
        parent, child = parents[round_no], children[round_no]
        winner = parent if got["parent"][0] == "ok" else child
        loser = child if winner == parent else parent
        loser_message = got["child" if winner == parent else "parent"][1]
        assert repr(winner) in loser_message, loser_message
        assert winner in keys and loser not in keys
        assert store.get(winner)["round"] == round_no
        if winner == parent:
            assert (root / parent).is_file()
        else:
            assert sorted(p.name for p in (root / parent).iterdir()) == ["b"]
    assert store.verify().ok
    assert len(store) == rounds + 1


@pytest.mark.parametrize(
    "key",
    ["x" * 256, "a/" + "y" * 256 + ".json", "é" * 128, "b/" + "€" * 86],
    ids=["256-ascii", "nested-260", "256-bytes-2byte-chars", "258-bytes-3byte-chars"],
)
def test_an_over_long_path_segment_is_an_invalid_key(store: CacheStore, key: str) -> None:
    store.put("existing.json", 1, serializer="json")
    root = Path(store.path)
    files = snapshot(root)
    with pytest.raises(InvalidKeyError) as info:
        store.put(key, {"v": 1}, serializer="json")
    assert not isinstance(info.value, OSError)
    assert "255" in str(info.value) or "long" in str(info.value)
    assert snapshot(root) == files
    assert store.keys() == ["existing.json"]


def test_a_255_byte_path_segment_is_fine(store: CacheStore) -> None:
    key = "d/" + "z" * 250 + ".json"  # 255 bytes
    store.put(key, {"long": True}, serializer="json")
    assert store.get(key) == {"long": True}
    store[key] = {"long": "again"}  # overwrite: the trash name must fit too
    assert store.get(key) == {"long": "again"}
    store.delete(key)
    assert store.keys() == []


# == 4. rows whose key lies outside the root ====================================================
def _insert_crafted(store: CacheStore, model_key: str, keys: list[str]) -> None:
    """Insert rows copied from ``model_key``'s, with ``keys``, expired and huge."""
    sid = store_id(store)
    past = datetime.now(timezone.utc) - timedelta(days=3)
    with store.engine.begin() as conn:
        model = conn.execute(
            sa.select(ARTIFACTS).where(ARTIFACTS.c.store_id == sid, ARTIFACTS.c.key == model_key)
        ).one()
        values = {k: v for k, v in model._mapping.items() if k != "id"}
        for key in keys:
            conn.execute(
                sa.insert(ARTIFACTS).values(
                    {
                        **values,
                        "key": key,
                        "created_at": past,
                        "expires_at": past + timedelta(hours=1),
                        "size_bytes": 10**12,
                        "last_accessed_at": None,
                    }
                )
            )


def _victim(path: Path) -> Path:
    (path / "deep").mkdir(parents=True)
    (path / "precious.txt").write_text("do not delete\n")
    (path / "deep" / "thesis.tex").write_text("\\documentclass{article}\n")
    return path


def test_rows_with_keys_outside_the_root_are_never_acted_on(
    tmp_path: Path, make_store: MakeStore, database_url: str | None, runner: CliRunner
) -> None:
    root = tmp_path / "store"
    store = make_store(root)
    store.put("real.json", {"real": True}, serializer="json")
    store.put("keep/me.json", {"keep": True}, serializer="json")
    _victim(tmp_path / "victim")
    _victim(tmp_path / "absolute-victim")
    crafted = [
        "../victim",
        str(tmp_path / "absolute-victim"),
        "sub/../../victim",
        HIDDEN_DIR,
        f"{HIDDEN_DIR}/{MARKER_NAME}",
        "",
    ]
    _insert_crafted(store, "real.json", crafted)
    outside = snapshot(tmp_path, skip=root)
    marker = (root / HIDDEN_DIR / MARKER_NAME).read_bytes()

    def crafted_rows() -> list[str]:
        with store.engine.connect() as conn:
            keys = conn.scalars(
                sa.select(ARTIFACTS.c.key).where(ARTIFACTS.c.store_id == store_id(store))
            ).all()
        return sorted(k for k in keys if k in crafted)

    def untouched() -> None:
        assert snapshot(tmp_path, skip=root) == outside
        assert (root / HIDDEN_DIR / MARKER_NAME).read_bytes() == marker
        assert crafted_rows() == sorted(crafted)

    report = store.verify()
    assert sorted(report.invalid) == sorted(crafted), report.problems
    assert {p.problem for p in report.problems} == {"invalid key"}
    untouched()
    assert store.verify(repair=True).repaired == []
    untouched()

    for dry_run in (True, False):
        gc = store.gc(older_than=0, now=later(), dry_run=dry_run)
        invalid = sorted(item.path for item in gc.skipped if item.kind == "invalid")
        assert invalid == sorted(crafted), gc
        assert not [item for item in gc.items if item.path in crafted], gc.items
        untouched()
    assert store.get("real.json") == {"real": True}

    result = invoke(
        runner, "gc", "--store", str(root), "--older-than", "0", *db_options(database_url)
    )
    assert result.exit_code == 0, result.stderr
    untouched()

    for key in crafted:
        with pytest.raises(InvalidKeyError):
            store.delete(key)
    untouched()

    evicted = store.evict(1, dry_run=True, now=later())
    assert sorted(item.key for item in evicted.skipped) == sorted(crafted)
    assert not [item for item in evicted.evicted if item.key in crafted]
    untouched()
    evicted = store.evict(1, keep={"keep/me.json"}, now=later())
    assert sorted(item.key for item in evicted.skipped) == sorted(crafted)
    assert [item.key for item in evicted.evicted] == ["real.json"]
    untouched()
    assert store.get("keep/me.json") == {"keep": True}

    # the implicit eviction of a bounded store, after a put
    bounded = make_store(root, max_size=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # still over max_size: the crafted sizes
        bounded.put("after.json", {"x": 1}, serializer="json")
        bounded.put("after2.json", {"x": 2}, serializer="json")
    untouched()
    assert bounded.get("after2.json") == {"x": 2}
    assert sorted(store.verify().invalid) == sorted(crafted)


# == 5. nested stores ===========================================================================
def test_gc_never_removes_a_nested_store(tmp_path: Path, make_store: MakeStore) -> None:
    root = tmp_path / "outer"
    outer = make_store(root)
    outer.put("a.json", {"outer": True}, serializer="json")
    inner = make_store(root / "inner")
    inner.put("b.json", {"inner": True}, serializer="json")
    inner.put("ds.zarr", make_dataset())
    deep = make_store(root / "projects" / "2024" / "deep")
    deep.put("c.json", {"deep": True}, serializer="json")
    inner.close()
    deep.close()
    (root / "junk.txt").write_text("an orphan: no row covers it\n")
    nested = {
        "inner": snapshot(root / "inner"),
        "deep": snapshot(root / "projects"),
    }
    assert (root / "inner" / HIDDEN_DIR / MARKER_NAME).exists()
    outside = snapshot(tmp_path, skip=root)

    assert outer.keys() == ["a.json"]
    report = outer.gc(older_than=0, now=later())
    assert [(i.kind, i.path) for i in report.items] == [("orphan", "junk.txt")], report
    assert snapshot(root / "inner") == nested["inner"]
    assert snapshot(root / "projects") == nested["deep"]
    assert snapshot(tmp_path, skip=root) == outside
    assert outer.evict(1, now=later()).evicted[0].key == "a.json"
    assert snapshot(root / "inner") == nested["inner"]

    # the outer store may not write into or over the inner one
    with pytest.raises(UnsafePathError):
        outer.put(
            "inner", {"over": "the inner store"}, serializer="json", on_duplicate_key="overwrite"
        )
    with pytest.raises(UnsafePathError):
        outer.put("projects", 1, serializer="json", on_duplicate_key="overwrite")
    assert snapshot(root / "inner") == nested["inner"]
    assert snapshot(root / "projects") == nested["deep"]

    again = make_store(root / "inner")
    assert again.get("b.json") == {"inner": True}
    xr.testing.assert_identical(again.get("ds.zarr").load(), make_dataset())
    again.put("more.json", 1, serializer="json")
    assert again.keys() == ["b.json", "ds.zarr", "more.json"]
    assert again.verify().ok
    assert make_store(root / "projects" / "2024" / "deep").get("c.json") == {"deep": True}


def test_a_key_of_the_outer_store_inside_a_nested_store_is_refused(
    tmp_path: Path, make_store: MakeStore
) -> None:
    """Accepted, such a payload would be an orphan to the inner store's gc (and removed)."""
    root = tmp_path / "outer"
    outer = make_store(root)
    outer.put("a.json", 1, serializer="json")
    inner = make_store(root / "inner")
    inner.put("b.json", 2, serializer="json")
    deep = make_store(root / "projects" / "deep")
    deep.put("c.json", 3, serializer="json")
    inner_rows = store_rows(inner.engine, store_id(inner))
    inner.close()
    deep.close()
    trees = (snapshot(root / "inner"), snapshot(root / "projects"))
    outer_rows = store_rows(outer.engine, store_id(outer))
    with pytest.raises(InvalidKeyError):  # the hidden directory is never a key segment
        outer.put(f"inner/{HIDDEN_DIR}/new.json", 3, serializer="json")
    for key in ("inner/new.json", "inner/sub/new.json", "projects/deep/x.json"):
        for policy in ("skip", "overwrite"):
            with pytest.raises(UnsafePathError, match="another store"):
                outer.put(key, {"outer's": "value"}, serializer="json", on_duplicate_key=policy)
    with pytest.raises(UnsafePathError):
        outer.put("inner/ds.zarr", make_dataset())
    assert (snapshot(root / "inner"), snapshot(root / "projects")) == trees
    assert store_rows(outer.engine, store_id(outer)) == outer_rows
    again = make_store(root / "inner")
    again.gc(older_than=0, now=later())
    assert store_rows(again.engine, store_id(again)) == inner_rows
    assert again.get("b.json") == 2
    # a sibling of the nested store is an ordinary key
    outer.put("projects/other.json", 4, serializer="json")
    assert outer.get("projects/other.json") == 4


# == 6. symbolic links ==========================================================================
def test_a_symlinked_directory_is_never_written_through(
    tmp_path: Path, make_store: MakeStore
) -> None:
    store = make_store(tmp_path / "store")
    store["a.json"] = 1
    root = Path(store.path)
    outside_dir = tmp_path / "outside"
    _victim(outside_dir)
    os.symlink(outside_dir, root / "link")
    outside = snapshot(tmp_path, skip=root)
    files = snapshot(root)
    for key in ("link/new.json", "link/deep/new.json", "link/precious.txt"):
        for policy in ("skip", "overwrite"):
            with pytest.raises(UnsafePathError):
                store.put(key, {"x": 1}, serializer="json", on_duplicate_key=policy)
    with pytest.raises(UnsafePathError):
        store.put("link/ds.zarr", make_dataset())
    assert snapshot(tmp_path, skip=root) == outside
    assert snapshot(root) == files
    assert store.keys() == ["a.json"]
    for key in ("link/precious.txt", "link"):
        with pytest.raises((UnsafePathError, ArtifactNotFoundError)):
            store.get(key)
        with pytest.raises((UnsafePathError, ArtifactNotFoundError)):
            store.delete(key)
    assert snapshot(tmp_path, skip=root) == outside


def test_a_payload_replaced_by_a_symlink(tmp_path: Path, make_store: MakeStore) -> None:
    root = tmp_path / "store"
    store = make_store(root)
    store.put("p.json", {"mine": True}, serializer="json")
    store.put("other.json", {"other": True}, serializer="json")
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": "outside the store"}')
    os.remove(root / "p.json")
    os.symlink(secret, root / "p.json")
    outside = snapshot(tmp_path, skip=root)

    with pytest.raises(UnsafePathError):
        store.get("p.json")
    report = store.verify()
    assert [p.key for p in report.problems] == ["p.json"], report
    assert store.gc(older_than=0, now=later()).items == []
    assert snapshot(tmp_path, skip=root) == outside
    assert os.path.islink(root / "p.json")

    store.delete("p.json")
    assert not os.path.lexists(root / "p.json")
    assert secret.read_text() == '{"secret": "outside the store"}'
    assert snapshot(tmp_path, skip=root) == outside
    assert store.keys() == ["other.json"]
    assert store.get("other.json") == {"other": True}


@pytest.mark.timeout(120)
def test_a_payload_replaced_by_a_named_pipe_is_never_opened(
    tmp_path: Path, make_store: MakeStore
) -> None:
    """A FIFO planted at a key would block a load forever: every path refuses it at once."""
    root = tmp_path / "store"
    store = make_store(root)
    store.put("p.json", {"mine": True}, serializer="json")
    store.put("other.json", {"other": True}, serializer="json")
    os.remove(root / "p.json")
    os.mkfifo(root / "p.json")
    os.mkfifo(root / "stray.pipe")  # and one that no row names
    for call in (
        lambda: store.get("p.json"),
        lambda: store.get("p.json", verify=True),
        lambda: store.put("p.json", 1, serializer="json", on_duplicate_key="overwrite"),
    ):
        with pytest.raises(UnsafePathError, match="named pipe"):
            call()
    assert [p.key for p in store.verify().problems] == ["p.json"]
    report = store.gc(older_than=0, now=later())
    assert [(i.kind, i.path) for i in report.items] == [("orphan", "stray.pipe")]
    assert not os.path.lexists(root / "stray.pipe")  # removed, never opened
    assert stat.S_ISFIFO(os.lstat(root / "p.json").st_mode)  # a row's path: left to delete
    store.delete("p.json")
    assert not os.path.lexists(root / "p.json")
    assert store.keys() == ["other.json"]
    assert store.get("other.json") == {"other": True}


def test_a_parent_directory_replaced_by_a_symlink(tmp_path: Path, make_store: MakeStore) -> None:
    root = tmp_path / "store"
    store = make_store(root)
    store.put("runs/b.json", {"mine": True}, serializer="json")
    store.put("runs/ds.zarr", make_dataset())
    outside_dir = _victim(tmp_path / "outside")
    (outside_dir / "b.json").write_text('{"theirs": true}')
    shutil.move(str(root / "runs"), str(tmp_path / "stolen-runs"))
    os.symlink(outside_dir, root / "runs")
    outside = snapshot(tmp_path, skip=root)
    for key in ("runs/b.json", "runs/ds.zarr"):
        with pytest.raises(UnsafePathError):
            store.get(key)
        with pytest.raises(UnsafePathError):
            store.delete(key)
        with pytest.raises(UnsafePathError):
            store.put(key, {"x": 1}, serializer="json", on_duplicate_key="overwrite")
    with pytest.raises(UnsafePathError):
        store.put("runs/new.json", 1, serializer="json")
    store.gc(older_than=0, now=later())
    store.verify()
    assert snapshot(tmp_path, skip=root) == outside
    assert (outside_dir / "b.json").read_text() == '{"theirs": true}'
    assert store.keys() == ["runs/b.json", "runs/ds.zarr"]  # nothing half-done
    os.unlink(root / "runs")
    shutil.move(str(tmp_path / "stolen-runs"), str(root / "runs"))
    assert store.get("runs/b.json") == {"mine": True}
    assert store.verify().ok


def test_a_zarr_payload_with_a_symlink_inside(tmp_path: Path, make_store: MakeStore) -> None:
    """A link planted inside a directory payload: delete removes the link, not its target."""
    root = tmp_path / "store"
    store = make_store(root)
    store.put("ds.zarr", make_dataset())
    outside_dir = _victim(tmp_path / "outside")
    os.symlink(outside_dir, root / "ds.zarr" / "planted")
    outside = snapshot(tmp_path, skip=root)
    store.gc(older_than=0, now=later())
    assert snapshot(tmp_path, skip=root) == outside
    store.delete("ds.zarr")
    assert not os.path.lexists(root / "ds.zarr")
    store.gc(older_than=0, now=later())
    assert snapshot(tmp_path, skip=root) == outside


def test_gc_never_follows_links(tmp_path: Path, make_store: MakeStore) -> None:
    root = tmp_path / "store"
    store = make_store(root)
    store.put("a.json", 1, serializer="json")
    store.put("runs/b.json", 2, serializer="json")
    outside_dir = _victim(tmp_path / "outside")
    (tmp_path / "file.txt").write_text("outside file\n")
    os.symlink(outside_dir, root / "dir-link")  # orphan links, no row covers them
    os.symlink(tmp_path / "file.txt", root / "file-link")
    os.symlink(outside_dir, root / "runs" / "nested-link")
    os.symlink(outside_dir, root / HIDDEN_DIR / "trash-link")
    (root / HIDDEN_DIR / "staging").mkdir(exist_ok=True)
    os.symlink(outside_dir, root / HIDDEN_DIR / "staging" / "staged-link")
    outside = snapshot(tmp_path, skip=root)
    for dry_run in (True, False):
        store.gc(older_than=0, now=later(), dry_run=dry_run)
        assert snapshot(tmp_path, skip=root) == outside
    assert store.get("runs/b.json") == 2
    assert store.verify().ok


@pytest.mark.parametrize("name", ["staging", "trash"])
def test_an_internal_directory_replaced_by_a_symlink(
    tmp_path: Path, make_store: MakeStore, name: str
) -> None:
    # gc, put, overwrite, delete and the repair of a read never list, write or remove through it
    root = tmp_path / "store"
    store = make_store(root, on_duplicate_key="overwrite")
    store.put("a.json", 1, serializer="json")
    victim = _victim(tmp_path / "outside")
    shutil.rmtree(root / HIDDEN_DIR / name, ignore_errors=True)
    os.symlink(victim, root / HIDDEN_DIR / name)
    outside = snapshot(tmp_path, skip=root)
    rows = store_rows(store.engine, store_id(store))
    for dry_run in (True, False):
        with pytest.raises(UnsafePathError, match=rf"{name} directory .* is a symbolic link"):
            store.gc(older_than=0, now=later(), dry_run=dry_run)
    result = CliRunner().invoke(
        app, ["gc", "--store", str(root), "--db", store.database_url, "--older-than", "0"]
    )
    assert result.exit_code == 2 and "symbolic link" in result.output
    with pytest.raises(UnsafePathError, match="symbolic link"):
        if name == "staging":
            store.put("b.json", 2, serializer="json")
        else:
            store.put("a.json", 3, serializer="json")  # the old payload would go to the trash
    with pytest.raises(UnsafePathError, match="symbolic link"):
        if name == "staging":
            store.put("a.json", 3, serializer="json")
        else:
            store.delete("a.json")
    assert snapshot(tmp_path, skip=root) == outside
    assert store_rows(store.engine, store_id(store)) == rows
    assert store.get("a.json") == 1
    # a read of a lost payload looks for it in staging and the trash: never through the link
    (root / "a.json").unlink()
    with pytest.raises(UnsafePathError, match=rf"{name} directory .* is a symbolic link"):
        store.get("a.json")
    assert snapshot(tmp_path, skip=root) == outside


def test_a_hidden_directory_linked_to_another_store(tmp_path: Path, make_store: MakeStore) -> None:
    # the link would make the second folder pass for the first store: gc would take its files
    first = make_store(tmp_path / "first")
    first.put("x.json", 1, serializer="json")
    first_id = store_id(first)
    second = tmp_path / "second"
    user_files(second)
    os.symlink(tmp_path / "first" / HIDDEN_DIR, second / HIDDEN_DIR)
    with first.engine.connect() as conn:
        stores = conn.execute(sa.text("SELECT * FROM xpersist_stores")).all()
    before = without_wal(snapshot(tmp_path))
    for call in (
        lambda: CacheStore(second).keys(),
        lambda: CacheStore(second).put("y.json", 2, serializer="json"),
        lambda: CacheStore(second).gc(older_than=0, now=later()),
        lambda: CacheStore(second, readonly=True).keys(),
    ):
        with pytest.raises(UnsafePathError, match=r"hidden directory .* is a symbolic link"):
            call()
    result = CliRunner().invoke(app, ["gc", "--store", str(second), "--older-than", "0"])
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert without_wal(snapshot(tmp_path)) == before
    with first.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT * FROM xpersist_stores")).all() == stores
    assert store_id(first) == first_id and first.get("x.json") == 1


def test_a_locks_directory_replaced_by_a_symlink(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = CacheStore(root)
    store.put("a.json", 1, serializer="json")
    victim = _victim(tmp_path / "outside")
    shutil.rmtree(root / HIDDEN_DIR / "locks", ignore_errors=True)
    os.symlink(victim, root / HIDDEN_DIR / "locks")
    outside = snapshot(tmp_path, skip=root)
    with (
        pytest.raises(UnsafePathError, match=r"locks directory .* is a symbolic link"),
        store.lock("a.json"),
    ):
        pass
    assert snapshot(tmp_path, skip=root) == outside


# == 7. reading creates nothing =================================================================
def _as_reader() -> list[str]:
    """The command prefix that runs a process as a user who cannot write the test's files."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop to another user")
    pwd.getpwnam("nobody")
    group = "nogroup"
    try:
        grp.getgrnam(group)
    except KeyError:
        group = "nobody"
    return ["setpriv", "--reuid=nobody", f"--regid={group}", "--clear-groups"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A fresh directory directly in /tmp that other users may read (pytest's is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="xpersist-boundary-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        for current, dirs, _files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(current, name), 0o755)
        os.chmod(path, 0o755)
        shutil.rmtree(path)


def _read_only_tree(path: Path) -> None:
    for current, dirs, files in os.walk(path):
        os.chmod(current, 0o755)
        for name in files:
            os.chmod(os.path.join(current, name), 0o644)
        for name in dirs:
            os.chmod(os.path.join(current, name), 0o755)
    if os.geteuid() != 0:  # the owner himself: take the write bits away
        for current, dirs, files in os.walk(path):
            for name in files:
                os.chmod(os.path.join(current, name), 0o444)
            for name in dirs:
                os.chmod(os.path.join(current, name), 0o555)
        os.chmod(path, 0o555)


def test_a_readonly_store_in_a_directory_the_reader_cannot_write(
    shared_dir: Path, database_url: str | None
) -> None:
    path = shared_dir / "team-cache"
    writer = CacheStore(path, database_url=database_url)
    writer.put("a.json", {"a": 1}, serializer="json")
    writer.put("runs/b.json", [1, 2], serializer="json")
    writer.put("table.parquet", make_frame())
    writer.put("ds.zarr", make_dataset())
    writer.close()
    _read_only_tree(shared_dir)
    leftovers = sorted(p.name for p in (path / HIDDEN_DIR).iterdir())
    before = snapshot(shared_dir, mtimes=True)

    env = {
        "PATH": os.environ["PATH"],
        "HOME": "/nonexistent",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
    }
    result = subprocess.run(
        [
            *_as_reader(),
            sys.executable,
            str(WORKER),
            "readonly-reader",
            str(path),
            database_url or "",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=240,
    )
    assert result.returncode == 0, (leftovers, result.stdout, result.stderr)
    seen = json.loads(result.stdout)
    assert seen["can_write"] is False and (os.geteuid() != 0 or seen["euid"] != 0), seen
    assert seen["keys"] == ["a.json", "ds.zarr", "runs/b.json", "table.parquet"]
    assert seen["len"] == 4 and seen["contains"] is True
    assert seen["get"] == {"a": 1} and seen["get_nested"] == [1, 2]
    assert seen["frame_rows"] == len(make_frame())
    assert seen["query"] == ["runs/b.json"]
    assert seen["artifact"] == "a.json"
    assert sum(count for _, count in seen["summarize"]) == 4
    assert seen["verify"] == {"checked": 4, "problems": []}
    for write in ("put", "delete", "gc", "evict", "setitem"):
        assert seen[write].get("error") == "ReadonlyStoreError", (write, seen[write])
    assert snapshot(shared_dir, mtimes=True) == before


READ_COMMANDS = [
    ["ls"],
    ["ls", "--json"],
    ["query", "--flow", "f"],
    ["show", "a.json"],
    ["stats"],
    ["db", "current"],
    ["db", "history"],
    ["gc", "--dry-run"],
    ["evict", "--max-size", "1", "--dry-run"],
    ["verify"],
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=[" ".join(c) for c in READ_COMMANDS])
def test_read_commands_on_a_mistyped_path_create_nothing(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "empty-dir").mkdir()
    user_files(tmp_path / "documents")
    before = snapshot(tmp_path)
    for target in ("no-such-store", "empty-dir", "documents", "no/such/deep/store"):
        result = invoke(runner, *command, "--store", str(tmp_path / target))
        assert_no_store_error(result)
        assert snapshot(tmp_path) == before, (command, target)


def test_read_commands_on_a_mistyped_path_with_a_database(
    runner: CliRunner, tmp_path: Path, postgres_url: str
) -> None:
    real = CacheStore(tmp_path / "real", database_url=postgres_url)
    real.put("a.json", 1, serializer="json")
    engine = real.engine
    rows = store_rows(engine, store_id(real))
    with engine.connect() as conn:
        stores_before = conn.execute(sa.text("SELECT * FROM xpersist_stores ORDER BY id")).all()
    before = snapshot(tmp_path)
    for command in READ_COMMANDS:
        if command[0] == "db":
            continue  # with --db the db commands read the database itself
        result = invoke(runner, *command, "--store", str(tmp_path / "typo"), "--db", postgres_url)
        assert_no_store_error(result)
    assert snapshot(tmp_path) == before
    assert store_rows(engine, store_id(real)) == rows
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT * FROM xpersist_stores ORDER BY id")).all() == (
            stores_before
        )
    real.close()


def test_a_bare_ls_creates_nothing(tmp_path: Path) -> None:
    cache_home = tmp_path / "xdg-cache"
    temp = tmp_path / "tmp"
    cache_home.mkdir()
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(XDG_CACHE_HOME=str(cache_home), TMPDIR=str(temp), HOME=str(tmp_path / "home"))
    before = snapshot(tmp_path)
    for command in (["ls"], ["stats"], ["gc", "--dry-run"], ["verify"], ["db", "current"]):
        result = subprocess.run(
            [sys.executable, "-m", "xpersist_sql", *command],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "no xpersist_sql store at" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert snapshot(tmp_path) == before, command


# -- readonly stores refuse writes -------------------------------------------------------------
def test_a_readonly_store_refuses_writes(make_store: MakeStore) -> None:
    writer = make_store()
    writer.put("a.json", {"a": 1}, serializer="json")
    writer.put("old.json", 1, serializer="json", ttl="1h")
    writer.close()
    root = Path(writer.path)
    files = snapshot(root)
    reader = make_store(readonly=True)
    rows = store_rows(reader.engine, store_id(reader))
    with pytest.raises(ReadonlyStoreError, match="readonly"):
        reader.put("b.json", 2, serializer="json")
    with pytest.raises(ReadonlyStoreError):
        reader.put("a.json", 2, serializer="json", on_duplicate_key="overwrite")
    with pytest.raises(ReadonlyStoreError):
        reader["a.json"] = 3
    with pytest.raises(ReadonlyStoreError):
        reader.delete("a.json")
    with pytest.raises(ReadonlyStoreError):
        del reader["a.json"]
    with pytest.raises(ReadonlyStoreError):
        reader.gc()
    with pytest.raises(ReadonlyStoreError):
        reader.gc(older_than=0, now=later())
    with pytest.raises(ReadonlyStoreError):
        reader.evict(1)
    with pytest.raises(ReadonlyStoreError):
        reader.repair(["a.json"])
    assert isinstance(ReadonlyStoreError("x"), PermissionError)
    dry = reader.gc(dry_run=True, older_than=0, now=later())
    assert [(i.kind, i.path) for i in dry.items] == [("expired", "old.json")]
    assert [i.key for i in reader.evict(1, dry_run=True, now=later()).evicted]
    assert reader.delete("a.json", dry_run=True).key == "a.json"
    assert reader.get("a.json") == {"a": 1}
    assert store_rows(reader.engine, store_id(reader)) == rows
    reader.close()
    # SQLite's own -wal/-shm of a read-only connection: see the next test
    assert without_wal(snapshot(root)) == without_wal(files)


def without_wal(tree: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tree.items() if not k.endswith(("-wal", "-shm"))}


def test_a_readonly_reader_leaves_no_files_in_a_writable_store(tmp_path: Path) -> None:
    writer = CacheStore(tmp_path / "s")
    writer.put("a.json", 1, serializer="json")
    writer.close()
    files = snapshot(tmp_path)
    reader = CacheStore(tmp_path / "s", readonly=True)
    assert reader.get("a.json") == 1
    reader.close()
    assert snapshot(tmp_path) == files


# == 8. concurrent db upgrade ===================================================================
@pytest.fixture
def fresh_database(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[[], str]:
    """Factory of URLs of fresh, empty databases on the parametrised backend."""
    count = iter(range(1000))

    def make() -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'upgrade-{next(count)}.sqlite'}"
        admin_url = str(request.getfixturevalue("postgres_admin_url"))
        name = f"xpersist_test_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()

        def drop() -> None:
            dropper = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
            with dropper.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            dropper.dispose()

        request.addfinalizer(drop)
        return (
            sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        )

    return make


def test_concurrent_db_upgrades_of_an_empty_database(fresh_database: Callable[[], str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    for _round in range(3):
        url = fresh_database()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "xpersist_sql", "db", "upgrade", "--db", url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=REPO,
            )
            for _ in range(3)
        ]
        outputs = [proc.communicate(timeout=240) for proc in procs]
        codes = [proc.returncode for proc in procs]
        assert codes == [0, 0, 0], list(zip(codes, outputs, strict=True))
        current = subprocess.run(
            [sys.executable, "-m", "xpersist_sql", "db", "current", "--db", url, "--json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=120,
        )
        assert current.returncode == 0, current.stderr
        state = json.loads(current.stdout)
        assert state["current"] == state["head"] == head_revision()
        # the index is usable by a store afterwards
        with tempfile.TemporaryDirectory() as directory:
            store = CacheStore(Path(directory) / "s", database_url=url)
            store.put("a.json", 1, serializer="json")
            assert store.get("a.json") == 1
            store.close()
