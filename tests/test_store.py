"""CacheStore behaviour from DESIGN.md, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import xarray as xr

from tests.helpers import make_dataset
from xpersist_sql import (
    Artifact,
    ArtifactNotFoundError,
    CacheStore,
    CollisionError,
    DuplicateKeyEnum,
    DuplicateKeyError,
    InvalidKeyError,
    PayloadLoadError,
    PayloadMissingError,
    ReadonlyStoreError,
    SerializerNotFoundError,
)
from xpersist_sql.db.tables import ARTIFACTS, TAGS
from xpersist_sql.serializers import Serializer, registry
from xpersist_sql.storage import HIDDEN_DIR

MakeStore = Callable[..., CacheStore]


def staging_leftovers(store: CacheStore) -> list[str]:
    staging = Path(store.path, HIDDEN_DIR, "staging")
    return sorted(os.listdir(staging)) if staging.exists() else []


# -- the seed's first steps -----------------------------------------------------------------------
def test_seed_first_steps(store: CacheStore) -> None:
    ds = make_dataset()
    artifact = store.put("bar.zarr", ds, serializer="xarray.zarr", dump_kwargs={"mode": "w"})
    assert isinstance(artifact, Artifact)

    dumped = store.get_artifact("bar.zarr").model_dump()
    for field in ("key", "serializer", "load_kwargs", "dump_kwargs", "additional_metadata"):
        assert field in dumped
    assert dumped["key"] == "bar.zarr"
    assert dumped["serializer"] == "xarray.zarr"
    assert dumped["dump_kwargs"] == {"mode": "w"}
    assert dumped["created_at"].tzinfo is not None
    assert dumped["created_at"].utcoffset() == timedelta(0)
    assert dumped["size_bytes"] > 0
    assert dumped["expires_at"] is None
    assert "checksum" in dumped
    assert {"xpersist_sql", "xarray", "zarr"} <= set(dumped["versions"])

    # the payload is a plain zarr store that xarray opens without this library
    xr.testing.assert_identical(xr.open_zarr(f"{store.path}/bar.zarr").load(), ds)
    assert store.payload_url("bar.zarr") == f"{store.path}/bar.zarr"

    loaded = store.get("bar.zarr")
    assert not loaded["tas"].variable._in_memory  # lazy
    xr.testing.assert_identical(loaded.load(), ds)


def test_repr_shows_the_constructor_fields(tmp_path: Path) -> None:
    store = CacheStore(str(tmp_path / "my-cache"))
    text = repr(store)
    assert text.startswith(
        f"CacheStore(path='{tmp_path}/my-cache', readonly=False, "
        "on_duplicate_key=<DuplicateKeyEnum.skip: 'skip'>, storage_options={}, "
    )
    assert "database_url='sqlite:///" in text


def test_repr_hides_database_password(tmp_path: Path) -> None:
    store = CacheStore(tmp_path, database_url="postgresql+psycopg://u:secret@localhost/db")
    assert "secret" not in repr(store)


def test_default_path_is_in_the_user_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    store = CacheStore()
    assert store.path == str(tmp_path / "xpersist_sql")
    store.put("x.json", [1], serializer="json")
    assert (tmp_path / "xpersist_sql" / "x.json").is_file()


def test_default_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XPERSIST_SQL_STORE", str(tmp_path / "team-cache"))
    store = CacheStore()
    assert store.path == str(tmp_path / "team-cache")
    store.put("x.json", [1], serializer="json")
    assert (tmp_path / "team-cache" / "x.json").is_file()
    assert not (tmp_path / "cache").exists()


def test_embedded_index_lives_in_the_hidden_directory(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "s")
    store.put("a.json", {"a": 1})
    assert (tmp_path / "s" / HIDDEN_DIR / "index.sqlite").is_file()
    assert store.keys() == ["a.json"]
    # a store is one folder: copy it and open the copy
    shutil.copytree(tmp_path / "s", tmp_path / "copy")
    copy = CacheStore(tmp_path / "copy")
    assert copy.keys() == ["a.json"]
    assert copy.get("a.json") == {"a": 1}


def test_environment_variable_overrides_the_default_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite'}"
    monkeypatch.setenv("XPERSIST_SQL_DATABASE_URL", url)
    store = CacheStore(tmp_path / "s")
    store.put("a.json", 1, serializer="json")
    assert store.database_url == url
    assert (tmp_path / "elsewhere.sqlite").is_file()
    assert not (tmp_path / "s" / HIDDEN_DIR / "index.sqlite").exists()


def test_remote_path_without_database_url_is_an_error() -> None:
    with pytest.raises(ValueError, match="database_url") as info:
        CacheStore("memory://no-db-here")
    assert "memory://no-db-here" in str(info.value)
    assert "XPERSIST_SQL_DATABASE_URL" in str(info.value)


# -- mapping behaviour ----------------------------------------------------------------------------
def test_mapping_protocol(store: CacheStore) -> None:
    assert len(store) == 0
    assert store.keys() == []
    store["b.json"] = {"b": 2}
    store.put("a/nested/c.npy", np.arange(3))
    assert store.keys() == ["a/nested/c.npy", "b.json"]
    assert list(store) == store.keys()
    assert len(store) == 2
    assert "b.json" in store
    assert "missing" not in store
    assert 3 not in store  # type: ignore[operator]
    assert store["b.json"] == {"b": 2}
    np.testing.assert_array_equal(store["a/nested/c.npy"], np.arange(3))
    assert Path(store.path, "a", "nested", "c.npy").is_file()
    del store["b.json"]
    assert store.keys() == ["a/nested/c.npy"]
    with pytest.raises(KeyError):
        store["b.json"]


def test_put_returns_the_artifact_with_size_and_fingerprint(store: CacheStore) -> None:
    artifact = store.put("v.json", {"x": list(range(100))}, serializer="json")
    assert artifact.key == "v.json"
    assert artifact.size_bytes == Path(store.path, "v.json").stat().st_size
    assert artifact.fingerprint and artifact.fingerprint.startswith("files=1;")
    assert artifact.checksum is None
    assert store.get_artifact("v.json") == artifact


def test_checksum_is_opt_in(make_store: MakeStore) -> None:
    plain = make_store()
    assert plain.put("a.json", [1], serializer="json").checksum is None
    assert plain.put("b.json", [1], serializer="json", checksum=True).checksum.startswith("sha256:")
    hashing = make_store(checksum=True)
    artifact = hashing.put("c.zarr", make_dataset())
    assert artifact.checksum is not None and artifact.checksum.startswith("sha256:")
    assert hashing.get_artifact("c.zarr").checksum == artifact.checksum


def test_directory_payload_fingerprint_counts_files(store: CacheStore) -> None:
    artifact = store.put("d.zarr", make_dataset())
    n_files = sum(len(files) for _, _, files in os.walk(Path(store.path, "d.zarr")))
    assert artifact.fingerprint is not None
    assert artifact.fingerprint.startswith(f"files={n_files};")
    assert artifact.size_bytes == sum(
        p.stat().st_size for p in Path(store.path, "d.zarr").rglob("*") if p.is_file()
    )


def test_additional_metadata_fills_the_query_columns(store: CacheStore) -> None:
    metadata = {
        "flow_name": "my-flow",
        "task_name": "get_data",
        "flow_run_id": "f-1",
        "task_run_id": "t-1",
        "task_tags": ["nightly", "ocean"],
        "when": datetime(2021, 12, 16, tzinfo=timezone.utc),
    }
    artifact = store.put("m.json", 1, serializer="json", additional_metadata=metadata)
    assert artifact.additional_metadata["when"] == "2021-12-16T00:00:00Z"
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(ARTIFACTS).where(ARTIFACTS.c.key == "m.json")).one()
        tags = conn.scalars(sa.select(TAGS.c.tag).where(TAGS.c.artifact_id == row.id)).all()
    assert (row.flow_name, row.task_name, row.flow_run_id, row.task_run_id) == (
        "my-flow",
        "get_data",
        "f-1",
        "t-1",
    )
    assert sorted(tags) == ["nightly", "ocean"]


# -- delete ---------------------------------------------------------------------------------------
def test_delete_removes_row_then_payload(store: CacheStore) -> None:
    store.put("x.zarr", make_dataset())
    deleted = store.delete("x.zarr")
    assert deleted.key == "x.zarr"
    assert "x.zarr" not in store
    assert not Path(store.path, "x.zarr").exists()
    assert not any(Path(store.path, HIDDEN_DIR, "trash").iterdir())


def test_delete_dry_run_changes_nothing(store: CacheStore) -> None:
    store.put("x.json", 1)
    artifact = store.delete("x.json", dry_run=True)
    assert artifact.key == "x.json"
    assert store.get("x.json") == 1


def test_delete_missing_key(store: CacheStore) -> None:
    with pytest.raises(ArtifactNotFoundError, match="'nope'") as info:
        store.delete("nope")
    assert isinstance(info.value, KeyError)
    assert store.path in str(info.value)


# -- duplicate keys -------------------------------------------------------------------------------
def test_skip_keeps_the_stored_artifact(make_store: MakeStore) -> None:
    store = make_store(on_duplicate_key="skip")
    first = store.put("k.json", {"v": 1})
    second = store.put("k.json", {"v": 2})
    assert second == first
    assert store.get("k.json") == {"v": 1}
    assert staging_leftovers(store) == []


def test_skip_answers_before_writing_the_value(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    dumps: list[str] = []

    class Counting(Serializer):
        name = "tests.counting"

        def dump(self, value: str, fs: object, path: str, **kwargs: object) -> None:
            dumps.append(value)
            with open(path, "w", encoding="utf-8") as f:
                f.write(value)

        def load(self, fs: object, path: str, **kwargs: object) -> str:
            with open(path, encoding="utf-8") as f:
                return f.read()

    monkeypatch.setitem(registry._REGISTRY, Counting.name, Counting())
    store = make_store(on_duplicate_key="skip")
    first = store.put("k.txt", "one", serializer=Counting.name)
    assert store.put("k.txt", "two", serializer=Counting.name) == first
    assert dumps == ["one"]  # the stored key was found before the value was written


@pytest.mark.parametrize("policy", ["skip", "raise_error"])
def test_duplicate_policy_holds_for_a_payload_lost_behind_the_index(
    make_store: MakeStore, policy: str
) -> None:
    # no payload at the key: the early lookup is skipped, the transaction still finds the row
    store = make_store(on_duplicate_key=policy)
    first = store.put("d/k.json", {"v": 1}, serializer="json")
    payload = Path(store.path, "d", "k.json")
    payload.unlink()
    if policy == "skip":
        assert store.put("d/k.json", {"v": 2}, serializer="json") == first
    else:
        with pytest.raises(DuplicateKeyError, match=r"'d/k\.json'"):
            store.put("d/k.json", {"v": 2}, serializer="json")
    assert not payload.exists()  # nothing was published over the stored row
    assert store.get_artifact("d/k.json") == first
    assert staging_leftovers(store) == []
    with pytest.raises(PayloadMissingError):
        store.get("d/k.json")


def test_overwrite_replaces_payload_and_metadata(make_store: MakeStore) -> None:
    store = make_store(on_duplicate_key=DuplicateKeyEnum.overwrite)
    store.put("k.zarr", make_dataset(seed=1), additional_metadata={"task_tags": ["old"]})
    new = make_dataset(n=7, seed=2)
    artifact = store.put("k.zarr", new, additional_metadata={"task_tags": ["new"]})
    assert artifact.additional_metadata == {"task_tags": ["new"]}
    xr.testing.assert_identical(store.get("k.zarr").load(), new)
    assert len(store) == 1
    with store.engine.connect() as conn:
        assert conn.scalars(sa.select(TAGS.c.tag)).all() == ["new"]
    assert not any(Path(store.path, HIDDEN_DIR, "trash").iterdir())
    assert staging_leftovers(store) == []


def test_check_collision(make_store: MakeStore) -> None:
    store = make_store(on_duplicate_key="check_collision")
    first = store.put("k.json", {"v": 1}, serializer="json")
    assert first.checksum is not None
    assert store.put("k.json", {"v": 1}, serializer="json") == first
    with pytest.raises(CollisionError, match="different content") as info:
        store.put("k.json", {"v": 2}, serializer="json")
    assert "'k.json'" in str(info.value) and store.path in str(info.value)
    assert store.get("k.json") == {"v": 1}
    assert staging_leftovers(store) == []


def test_check_collision_against_an_artifact_stored_without_checksum(
    make_store: MakeStore,
) -> None:
    make_store().put("k.json", {"v": 1}, serializer="json")
    store = make_store(on_duplicate_key="check_collision")
    assert store.put("k.json", {"v": 1}, serializer="json").checksum is None
    with pytest.raises(CollisionError):
        store.put("k.json", {"v": 3}, serializer="json")


def test_raise_error(make_store: MakeStore) -> None:
    store = make_store(on_duplicate_key="raise_error")
    store.put("k.json", 1)
    with pytest.raises(DuplicateKeyError, match="already exists") as info:
        store.put("k.json", 2)
    assert "'k.json'" in str(info.value) and "on_duplicate_key" in str(info.value)
    assert store.get("k.json") == 1


def test_invalid_policy_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sometimes"):
        CacheStore(tmp_path, on_duplicate_key="sometimes")


# -- bad input ------------------------------------------------------------------------------------
def test_missing_key(store: CacheStore) -> None:
    with pytest.raises(ArtifactNotFoundError) as info:
        store.get("nothing.zarr")
    message = str(info.value)
    assert "'nothing.zarr'" in message and store.path in message and "keys()" in message
    with pytest.raises(ArtifactNotFoundError):
        store.get_artifact("nothing.zarr")


def test_unknown_serializer_lists_the_known_ones_and_writes_nothing(store: CacheStore) -> None:
    with pytest.raises(SerializerNotFoundError) as info:
        store.put("x.bin", 1, serializer="nope")
    message = str(info.value)
    assert "'nope'" in message
    assert "'x.bin'" in message and repr(store.path) in message
    for name in ("xarray.zarr", "json", "joblib", "pandas.parquet"):
        assert name in message
    assert store.keys() == []
    assert not Path(store.path, "x.bin").exists()
    assert staging_leftovers(store) == []


def test_unknown_serializer_on_get(store: CacheStore) -> None:
    store.put("x.json", 1, serializer="json")
    with pytest.raises(SerializerNotFoundError) as info:
        store.get("x.json", serializer="nope")
    message = str(info.value)
    assert "'nope'" in message and "'x.json'" in message and repr(store.path) in message
    assert "register_serializer" in message  # the remedy
    assert store.get("x.json") == 1


def test_readonly_store_refuses_writes_and_reads(make_store: MakeStore) -> None:
    make_store().put("x.json", 1, serializer="json")
    readonly = make_store(readonly=True)
    with pytest.raises(ReadonlyStoreError, match="readonly") as info:
        readonly.put("y.json", 2)
    assert "'y.json'" in str(info.value) and readonly.path in str(info.value)
    with pytest.raises(ReadonlyStoreError):
        readonly.delete("x.json")
    with pytest.raises(ReadonlyStoreError):
        readonly["z.json"] = 3
    assert readonly.get("x.json") == 1
    assert readonly.keys() == ["x.json"]
    assert readonly.delete("x.json", dry_run=True).key == "x.json"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside",
        "a/../../outside",
        "a//b",
        "./a",
        "a/./b",
        "trailing/",
        ".xpersist_sql/index.sqlite",
        ".xpersist_sql",
        "back\\slash",
        "s3://bucket/key",
        "C:/windows",
    ],
)
def test_keys_escaping_the_root_are_refused(store: CacheStore, key: str) -> None:
    with pytest.raises(InvalidKeyError, match="invalid key") as info:
        store.put(key, 1)
    assert store.path in str(info.value)
    with pytest.raises(InvalidKeyError):
        store.get(key)
    with pytest.raises(InvalidKeyError):
        store.delete(key)
    assert store.keys() == []


def test_non_string_key(store: CacheStore) -> None:
    with pytest.raises(InvalidKeyError, match="must be a str"):
        store.put(42, 1)  # type: ignore[arg-type]


def test_payload_deleted_behind_the_index(store: CacheStore) -> None:
    store.put("gone.zarr", make_dataset())
    shutil.rmtree(Path(store.path, "gone.zarr"))
    with pytest.raises(PayloadMissingError) as info:
        store.get("gone.zarr")
    message = str(info.value)
    assert "'gone.zarr'" in message and store.path in message and "delete" in message
    assert isinstance(info.value, FileNotFoundError)
    # the row is still there, and can be removed
    assert "gone.zarr" in store
    store.delete("gone.zarr")
    assert store.keys() == []


def test_unreadable_payload_names_the_versions(store: CacheStore) -> None:
    store.put("broken.json", {"a": 1}, serializer="json")
    Path(store.path, "broken.json").write_text("{not json")
    with pytest.raises(PayloadLoadError) as info:
        store.get("broken.json")
    message = str(info.value)
    assert "'broken.json'" in message and "json" in message and "versions" in message


def test_failing_serializer_leaves_nothing(store: CacheStore) -> None:
    class Unpicklable:
        def __reduce__(self) -> str:
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        store.put("bad.pkl", Unpicklable(), serializer="pickle")
    assert store.keys() == []
    assert not Path(store.path, "bad.pkl").exists()
    assert staging_leftovers(store) == []


def test_non_json_metadata_type_error(store: CacheStore) -> None:
    with pytest.raises(TypeError, match="additional_metadata must be a dict"):
        store.put("a.json", 1, additional_metadata=["not", "a", "dict"])  # type: ignore[arg-type]


# -- expiry ---------------------------------------------------------------------------------------
def test_ttl_expired_artifacts_count_as_absent(make_store: MakeStore) -> None:
    store = make_store(on_duplicate_key="raise_error")
    artifact = store.put("t.json", 1, ttl=timedelta(hours=1))
    assert artifact.expires_at is not None
    assert artifact.expires_at - artifact.created_at == timedelta(hours=1)
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(ARTIFACTS).values(expires_at=datetime.now(timezone.utc) - timedelta(1))
        )
    assert "t.json" not in store
    assert store.keys() == []
    assert len(store) == 0
    with pytest.raises(ArtifactNotFoundError, match="expired"):
        store.get("t.json")
    # an expired key is free again, whatever the policy
    store.put("t.json", 2)
    assert store.get("t.json") == 2


def test_bad_ttl(store: CacheStore) -> None:
    with pytest.raises(ValueError, match="positive"):
        store.put("a.json", 1, ttl=-5)
    with pytest.raises(ValueError, match="ttl"):
        store.put("a.json", 1, ttl="soon")
    with pytest.raises(TypeError, match="ttl"):
        store.put("a.json", 1, ttl=[1])  # type: ignore[arg-type]


def test_default_ttl(make_store: MakeStore) -> None:
    store = make_store(default_ttl=60)
    artifact = store.put("a.json", 1)
    assert artifact.expires_at is not None
    assert artifact.expires_at - artifact.created_at == timedelta(seconds=60)


# -- processes and pickling -----------------------------------------------------------------------
def test_pickled_store_works(store: CacheStore) -> None:
    store.put("a.json", {"a": 1})
    clone = pickle.loads(pickle.dumps(store))
    assert repr(clone) == repr(store)
    assert clone.get("a.json") == {"a": 1}
    clone.put("b.json", 2)
    assert store.get("b.json") == 2
