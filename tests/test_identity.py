"""The O(1) identity a ``get`` checks, and staging without a per-write directory.

A hit never lists a directory payload: one ``lstat`` on local disk (one ``HEAD`` on S3, see
``test_s3_crash.py``). The full walk is ``verify``'s, and what the O(1) check cannot see (an
edit deep inside a directory payload) is reported by ``verify``.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import xarray as xr

from tests.helpers import make_dataset
from xpersist_sql import CacheStore
from xpersist_sql.db.tables import ARTIFACTS
from xpersist_sql.storage import HIDDEN_DIR, PayloadStorage, _local_identity, split_fingerprint


def recorded(store: CacheStore, key: str) -> str:
    with store.engine.connect() as conn:
        value = conn.scalar(sa.select(ARTIFACTS.c.fingerprint).where(ARTIFACTS.c.key == key))
    assert value is not None
    return str(value)


def set_recorded(store: CacheStore, key: str, fingerprint: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(ARTIFACTS).where(ARTIFACTS.c.key == key).values(fingerprint=fingerprint)
        )


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under the store (the index aside): size and mtime."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and "index.sqlite" not in p.name
    }


def decode(text: str) -> int:
    """The number an identity field holds (unpadded URL-safe base64, big-endian)."""
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def test_the_row_records_walk_and_identity(store: CacheStore) -> None:
    artifact = store.put("ds.zarr", make_dataset())
    walk, identity = split_fingerprint(artifact.fingerprint)
    assert walk is not None and walk.startswith("files=")
    assert identity is not None
    info = os.lstat(Path(store.path, "ds.zarr"))
    ino, mtime = identity.split(":")
    assert (decode(ino), decode(mtime)) == (info.st_ino, info.st_mtime_ns)
    file_artifact = store.put("v.json", {"v": 1}, serializer="json")
    assert split_fingerprint(file_artifact.fingerprint)[1] is not None
    assert recorded(store, "v.json") == file_artifact.fingerprint


def test_a_hit_never_walks_the_payload(store: CacheStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_dataset()
    store.put("ds.zarr", ds)
    store.put("v.json", {"v": 1}, serializer="json")

    def no_walk(self: PayloadStorage, path: str) -> Any:
        raise AssertionError(f"a hit listed {path}")

    monkeypatch.setattr(PayloadStorage, "_files", no_walk)
    xr.testing.assert_identical(store.get("ds.zarr").load(), ds)
    assert store.get("v.json") == {"v": 1}


def test_a_single_file_put_stages_no_directory(
    store: CacheStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    original = PayloadStorage.seal

    def spy(self: PayloadStorage, path: str) -> Any:
        seen.append(path)
        return original(self, path)

    monkeypatch.setattr(PayloadStorage, "seal", spy)
    store.put("runs/a.json", {"a": 1}, serializer="json")
    staging = Path(store.path, HIDDEN_DIR, "staging")
    (staged,) = seen
    assert Path(staged).parent == staging  # a temporary file, no per-write directory
    assert Path(staged).name.endswith("-a.json")
    assert list(staging.iterdir()) == []
    assert store.get("runs/a.json") == {"a": 1}


def test_a_very_long_name_is_staged_in_its_own_directory(store: CacheStore) -> None:
    key = "x" * 240 + ".json"
    store.put(key, {"long": True}, serializer="json")
    assert store.get(key) == {"long": True}
    assert list(Path(store.path, HIDDEN_DIR, "staging").iterdir()) == []


def test_a_copied_payload_is_read_by_walk_and_its_identity_recorded_again(
    store: CacheStore,
) -> None:
    ds = make_dataset()
    before = store.put("ds.zarr", ds).fingerprint
    payload = Path(store.path, "ds.zarr")
    copy = Path(store.path, HIDDEN_DIR, "copy")
    shutil.copytree(payload, copy)  # same files, sizes and mtimes: another inode
    shutil.rmtree(payload)
    os.replace(copy, payload)
    assert split_fingerprint(before)[1] != store._storage.identity(str(payload))
    xr.testing.assert_identical(store.get("ds.zarr").load(), ds)
    after = recorded(store, "ds.zarr")
    assert split_fingerprint(after)[0] == split_fingerprint(before)[0]  # same walk
    assert after != before  # the new identity is recorded: the next hit is O(1) again
    assert split_fingerprint(after)[1] == store._storage.identity(str(payload))
    assert store.verify().ok


def test_a_row_without_identity_is_read_by_walk_then_gets_one(store: CacheStore) -> None:
    artifact = store.put("v.json", {"v": 1}, serializer="json")
    walk = split_fingerprint(artifact.fingerprint)[0]
    assert walk is not None
    set_recorded(store, "v.json", walk)  # a row of an older version, or imported
    reader = CacheStore(store.path, database_url=store.database_url, readonly=True)
    assert reader.get("v.json") == {"v": 1}  # readonly: read by walk, nothing written
    assert recorded(store, "v.json") == walk
    reader.close()
    assert store.get("v.json") == {"v": 1}
    assert recorded(store, "v.json") == artifact.fingerprint


def test_an_edit_deep_inside_a_directory_payload_is_verifys_job(store: CacheStore) -> None:
    store.put("ds.zarr", make_dataset())
    chunk = next(
        p for p in Path(store.path, "ds.zarr").rglob("*") if p.is_file() and "/c/" in str(p)
    )
    others = {k: v for k, v in snapshot(Path(store.path)).items() if not k.endswith(chunk.name)}
    chunk.write_bytes(chunk.read_bytes())  # rewritten in place: same size, new mtime
    # the O(1) check does not see it: the root of the payload did not change
    assert store._backend.payload_matches(store.get_artifact("ds.zarr"))
    report = store.verify()
    assert report.damaged == ["ds.zarr"]
    assert {k: v for k, v in snapshot(Path(store.path)).items() if not k.endswith(chunk.name)} == (
        others
    )


def test_a_swapped_file_is_seen_by_one_lstat(store: CacheStore) -> None:
    store.put("v.json", {"v": 1}, serializer="json")
    artifact = store.get_artifact("v.json")
    path = Path(store.path, "v.json")
    other = path.with_name("other")
    other.write_text('{"v": 2}')
    os.replace(other, path)  # another inode at the key, behind the index's back
    assert not store._backend.payload_matches(artifact)


def test_gc_removes_a_killed_writers_staged_file_and_nothing_else(store: CacheStore) -> None:
    store.put("keep.json", {"k": 1}, serializer="json")
    staged = store._storage.staging_path("lost.json")
    Path(staged).write_text("{}")  # a writer killed before its publish
    before = {k: v for k, v in snapshot(Path(store.path)).items() if "staging" not in k}
    report = store.gc(older_than=0)
    assert [(item.kind, Path(item.path).name) for item in report.items] == [
        ("staging", Path(staged).name)
    ]
    assert not Path(staged).exists()
    assert {k: v for k, v in snapshot(Path(store.path)).items() if "staging" not in k} == before
    assert store.get("keep.json") == {"k": 1}


def test_gc_keeps_a_displaced_payload_in_a_staging_file(store: CacheStore) -> None:
    store.put("v.json", {"v": 1}, serializer="json")
    staged = store._storage.staging_path("v.json")
    os.replace(Path(store.path, "v.json"), staged)  # a writer killed after the exchange
    Path(store.path, "v.json").write_text('{"v": 2}')
    report = store.gc(older_than=0)
    assert report.items == [] and [item.kind for item in report.skipped] == ["staging"]
    assert store.get("v.json") == {"v": 1}  # the read put it back
    assert np.array_equal(sorted(Path(store.path, HIDDEN_DIR, "staging").iterdir()), [])


def test_payload_paths_and_identities_are_computed_as_recorded(tmp_path: Path) -> None:
    """The fast paths of a hit (a key appended to the root, a cached identity) change nothing."""
    storage = PayloadStorage(str(tmp_path))
    assert storage.path("a/b.json") == os.path.join(os.path.realpath(tmp_path), "a", "b.json")
    assert PayloadStorage("/").path("a/b.json") == "/a/b.json"
    (tmp_path / "f").write_text("x")
    info = os.lstat(tmp_path / "f")

    def short(number: int) -> str:
        raw = number.to_bytes((number.bit_length() + 7) // 8 or 1, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    expected = f"{short(info.st_ino)}:{short(info.st_mtime_ns)}"
    assert _local_identity(info) == expected
    assert _local_identity(info) == expected  # the cached answer is the same
