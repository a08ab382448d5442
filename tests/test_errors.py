"""Errors that say what to do: every one names the key, the store and the remedy.

Also: out-of-range values are ``ValueError``s giving the valid range, secrets never appear in a
message or a repr, ``verify(refingerprint=True)`` after a legitimate copy, and the 2021 bases.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from tests.helpers import make_dataset
from xpersist_sql import (
    ArtifactNotFoundError,
    CacheStore,
    CollisionError,
    DuplicateKeyError,
    PayloadLoadError,
    PayloadMissingError,
    ReadonlyStoreError,
    SchemaVersionError,
    StoreMismatchError,
    StoreNotFoundError,
)
from xpersist_sql.db.engine import create_index_engine, redact_options, redact_url
from xpersist_sql.db.schema import VERSION_TABLE
from xpersist_sql.db.tables import ARTIFACTS
from xpersist_sql.errors import IndexUnavailableError, SerializationError, XpersistSQLError
from xpersist_sql.maintenance import verify as verify_module
from xpersist_sql.storage import HIDDEN_DIR

MakeStore = Callable[..., CacheStore]
SECRET = "s3cr3t-value"
#: No server listens on port 1 of the loopback interface: connections are refused at once.
UNREACHABLE = f"postgresql+psycopg://user:{SECRET}@127.0.0.1:1/cache?password={SECRET}"


def leftovers(store: CacheStore) -> list[str]:
    """Files in the store outside its marker and index: payloads, staging, trash."""
    root = Path(store.path)
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and not relative.startswith(f"{HIDDEN_DIR}/index.sqlite"):
            found.append(relative)
    return sorted(name for name in found if name != f"{HIDDEN_DIR}/store.json")


def with_secret_query(url: str) -> str:
    """``url`` with a password in its user part and in its query (PostgreSQL ignores both
    under the test server's trust authentication)."""
    parsed = sa.engine.make_url(url)
    parsed = parsed.set(password=SECRET).update_query_dict({"password": SECRET})
    return parsed.render_as_string(hide_password=False)


# -- a value the serializer cannot write ----------------------------------------------------------
def test_unwritable_value_names_key_store_serializer_and_one_that_can(store: CacheStore) -> None:
    with pytest.raises(SerializationError) as info:
        store.put("a.json", np.arange(3), serializer="json")
    message = str(info.value)
    assert "'a.json'" in message and store.path in message
    assert "serializer 'json' cannot write this numpy.ndarray" in message
    assert "not JSON serializable" in message  # the serializer's own words
    assert "Use serializer='numpy.npy' (what serializer='auto' picks" in message
    # the old except clauses still catch it, and the cause is kept
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    assert isinstance(info.value, XpersistSQLError)
    assert isinstance(info.value.__cause__, TypeError)
    # nothing left behind: no row, no payload, no staging
    assert store.keys() == [] and "a.json" not in store
    assert leftovers(store) == []
    # the suggestion works
    store.put("a.npy", np.arange(3), serializer="numpy.npy")
    assert store.get("a.npy").tolist() == [0, 1, 2]


def test_unwritable_value_of_the_auto_choice_says_what_to_check(store: CacheStore) -> None:
    with pytest.raises(SerializationError) as info:
        store.put("frame.parquet", {"not": "a frame"}, serializer="pandas.parquet")
    message = str(info.value)
    assert "'frame.parquet'" in message and "serializer 'pandas.parquet'" in message
    assert "serializer='joblib'" in message  # what "auto" picks for a dict

    with pytest.raises(SerializationError) as info:
        store.put("x.json", {"a": 1}, serializer="json", dump_kwargs={"bogus": True})
    message = str(info.value)
    assert "bogus" in message and "dump_kwargs" in message
    assert store.keys() == [] and leftovers(store) == []


def test_other_serializer_errors_propagate_with_a_note(store: CacheStore) -> None:
    class Unpicklable:
        def __reduce__(self) -> str:
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle") as info:
        store.put("bad.pkl", Unpicklable(), serializer="pickle")
    assert any("'bad.pkl'" in note for note in info.value.__notes__)
    assert store.keys() == [] and leftovers(store) == []


# -- on_duplicate_key -----------------------------------------------------------------------------
def test_unknown_duplicate_key_policy_lists_the_valid_values(store: CacheStore) -> None:
    valid = ("'skip'", "'overwrite'", "'check_collision'", "'raise_error'")
    with pytest.raises(ValueError, match="on_duplicate_key='replace'") as info:
        CacheStore(store.path, database_url=store.database_url, on_duplicate_key="replace")
    assert store.path in str(info.value)
    assert all(name in str(info.value) for name in valid)

    with pytest.raises(ValueError, match="on_duplicate_key='replace'") as info:
        store.put("k.json", 1, serializer="json", on_duplicate_key="replace")
    assert "'k.json'" in str(info.value) and store.path in str(info.value)
    assert all(name in str(info.value) for name in valid)
    assert store.keys() == []


# -- the database URL -----------------------------------------------------------------------------
def test_postgres_scheme_is_read_as_psycopg(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "s", database_url=f"postgres://me:{SECRET}@db.example/cache")
    assert store.database_url == f"postgresql+psycopg://me:{SECRET}@db.example/cache"
    assert SECRET not in repr(store)
    bare = CacheStore(tmp_path / "s", database_url="postgresql://db.example/cache")
    assert bare.database_url == "postgresql+psycopg://db.example/cache"  # the driver used


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"foo://me:{SECRET}@host/db", "unsupported index database 'foo://me:***@host/db'"),
        ("mysql://me@host/db", "unsupported index database"),
        ("sqlite+nodriver:///x.sqlite", "unknown database driver 'sqlite+nodriver'"),
        ("postgresql+asyncpg://host/db", "asyncio driver"),
        ("not a url", "cannot read 'not a url' as a database URL"),
    ],
)
def test_unusable_database_urls_name_the_supported_ones(
    tmp_path: Path, url: str, message: str
) -> None:
    with pytest.raises(ValueError, match="postgresql\\+psycopg://user@host") as info:
        CacheStore(tmp_path / "s", database_url=url)
    text = str(info.value)
    assert message in text and str(tmp_path / "s") in text and SECRET not in text
    assert not (tmp_path / "s").exists()


def test_unusable_database_url_from_the_environment_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XPERSIST_SQL_DATABASE_URL", "foo://host/db")
    with pytest.raises(ValueError, match=r"\(from \$XPERSIST_SQL_DATABASE_URL\)"):
        CacheStore(tmp_path / "s")


def test_unreachable_database_names_the_redacted_url_and_what_to_check(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "s", database_url=UNREACHABLE)
    with pytest.raises(IndexUnavailableError) as info:
        store.put("a.json", 1, serializer="json")
    message = str(info.value)
    assert isinstance(info.value, ConnectionError)
    assert "cannot connect to the index database postgresql+psycopg://user:***@127.0.0.1:1/" in (
        message
    )
    assert "Connection refused" in message and "reachable at 127.0.0.1:1" in message
    assert "XPERSIST_SQL_DATABASE_URL" in message and SECRET not in message
    assert not (tmp_path / "s" / HIDDEN_DIR).exists()  # nothing was created
    for read in (store.keys, lambda: len(store)):
        with pytest.raises(IndexUnavailableError):
            read()


def test_unopenable_sqlite_index_is_unavailable(tmp_path: Path) -> None:
    engine = create_index_engine(f"sqlite:///{tmp_path / 'absent' / 'index.sqlite'}", readonly=True)
    with pytest.raises(IndexUnavailableError, match=r"cannot connect to the SQLite index .*absent"):
        engine.connect()
    engine.dispose()


def test_a_dropped_connection_is_not_an_unavailable_index(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection idle for a while is pinged at checkout: found dead, it is replaced.

    (Reads of a store also retry once on a connection dropped while in steady use:
    tests/test_hot_paths.py.)
    """
    import xpersist_sql.db.engine as engine_module

    monkeypatch.setattr(engine_module, "PG_IDLE_PING_SECONDS", 0.0)
    engine = create_index_engine(postgres_url)
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() != pid
    finally:
        engine.dispose()
        admin.dispose()


def test_postgres_scheme_works_end_to_end(postgres_url: str, tmp_path: Path) -> None:
    url = postgres_url.replace("postgresql+psycopg://", "postgres://", 1)
    store = CacheStore(tmp_path / "s", database_url=url)
    try:
        store.put("a.json", {"a": 1}, serializer="json")
        assert store.get("a.json") == {"a": 1}
    finally:
        store.close()


# -- PayloadLoadError: advice that fits the case --------------------------------------------------
def _load_error(store: CacheStore, versions: dict[str, str] | None = None) -> str:
    """The message of loading a damaged payload whose row records ``versions``."""
    store.put("broken.json", {"a": 1}, serializer="json")
    if versions is not None:
        with store.engine.begin() as conn:
            where = ARTIFACTS.c.key == "broken.json"
            conn.execute(sa.update(ARTIFACTS).where(where).values(versions=versions))
    Path(store.path, "broken.json").write_text("{not json")
    with pytest.raises(PayloadLoadError) as info:
        store.get("broken.json")
    assert isinstance(info.value, ValueError)  # as xpersist 2021's load failure
    message = str(info.value)
    assert "'broken.json'" in message and store.path in message and "'json'" in message
    return message


def test_load_error_with_the_same_versions_points_at_the_payload(store: CacheStore) -> None:
    message = _load_error(store)
    assert "versions are the ones that wrote it" in message and "store.verify()" in message
    assert "store.put('broken.json', value, on_duplicate_key='overwrite')" in message
    assert "environment with those versions" not in message


def test_load_error_with_other_versions_names_them(store: CacheStore) -> None:
    message = _load_error(store, {"xpersist_sql": "0.0.1", "python": "3.0.0"})
    assert "'xpersist_sql': '0.0.1 -> " in message and "'python': '3.0.0 -> " in message
    assert "environment with those versions" in message and "on_duplicate_key=" in message


def test_load_error_without_recorded_versions_says_so(store: CacheStore) -> None:
    assert "versions that wrote it were not recorded" in _load_error(store, {})


def test_load_error_with_another_serializer_names_the_writer(store: CacheStore) -> None:
    store.put("a.json", {"a": 1}, serializer="json")
    with pytest.raises(PayloadLoadError) as info:
        store.get("a.json", serializer="numpy.npy", load_kwargs={"mmap_mode": "r"})
    message = str(info.value)
    assert "It was written by serializer 'json'" in message and "without serializer=" in message
    assert "load_kwargs given to get (mmap_mode)" in message


# -- out-of-range values --------------------------------------------------------------------------
@pytest.mark.parametrize("ttl", [float("nan"), float("inf"), 1e12, "99999999d", timedelta.max])
def test_ttl_out_of_range(store: CacheStore, ttl: Any) -> None:
    with pytest.raises(ValueError, match="at most 365000 days") as info:
        store.put("t.json", 1, serializer="json", ttl=ttl)
    assert "'t.json'" in str(info.value) and store.path in str(info.value)
    assert store.keys() == []
    with pytest.raises(ValueError, match=r"default_ttl=.*at most 365000 days"):
        CacheStore(store.path, database_url=store.database_url, default_ttl=ttl)


def test_longest_ttl_is_accepted(store: CacheStore) -> None:
    artifact = store.put("t.json", 1, serializer="json", ttl=timedelta(days=365_000))
    assert artifact.expires_at is not None and "t.json" in store


@pytest.mark.parametrize("limit", [2**63, -1, -(2**63) - 1])
def test_limit_out_of_range(store: CacheStore, limit: int) -> None:
    with pytest.raises(ValueError, match=r"limit must be >= 0 and <= 9223372036854775807"):
        store.query(limit=limit)


def test_largest_limit_is_accepted(store: CacheStore) -> None:
    store.put("a.json", 1, serializer="json")
    assert [a.key for a in store.query(limit=2**63 - 1)] == ["a.json"]


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"n": 2**70}, "additional_metadata['n'] = 1180591620717411303424"),
        ({"n": 2**63}, "additional_metadata['n'] = 9223372036854775808"),
        ({"n": -(2**63) - 1}, "additional_metadata['n'] = -9223372036854775809"),
        ({"runs": [{"seed": 2**64}]}, "additional_metadata['runs'][0]['seed']"),
        ({"x": float("nan")}, "additional_metadata['x'] = nan is not a JSON number"),
    ],
)
def test_metadata_numbers_out_of_range(
    store: CacheStore, metadata: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError) as info:
        store.put("m.json", 1, serializer="json", additional_metadata=metadata)
    message = str(info.value)
    assert field in message and "'m.json'" in message and store.path in message
    assert store.keys() == [] and leftovers(store) == []


def test_64_bit_metadata_is_stored_and_queried_exactly(store: CacheStore) -> None:
    for n in (2**63 - 1, -(2**63)):
        store.put(f"{n}.json", 1, serializer="json", additional_metadata={"n": n})
        assert store.get_artifact(f"{n}.json").additional_metadata == {"n": n}
        assert [a.key for a in store.query(metadata={"n": n})] == [f"{n}.json"]
    with pytest.raises(ValueError, match=r"metadata\['n'\] = 1180591620717411303424 is out"):
        store.query(metadata={"n": 2**70})


@pytest.mark.parametrize("name", ["since", "until"])
@pytest.mark.parametrize("value", [timedelta.max, "99999999d", timedelta(days=800_000)])
def test_time_bound_out_of_range(store: CacheStore, name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"{name}=.* is out of range: .* at most \d+ days"):
        store.query(**{name: value})
    with pytest.raises(ValueError, match="is out of range"):
        store.summarize("flow_name", **{name: value})


def test_time_bounds_in_range_still_work(store: CacheStore) -> None:
    store.put("a.json", 1, serializer="json")
    assert [a.key for a in store.query(since="1d", until=timedelta(0))] == ["a.json"]
    assert [a.key for a in store.query(until="1d")] == []
    assert [a.key for a in store.query(since=timedelta(days=700_000))] == ["a.json"]
    with pytest.raises(ValueError, match="is not a date or time"):
        store.query(since="yesterday-ish")


# -- secrets --------------------------------------------------------------------------------------
def test_redact_url_hides_passwords_in_the_query_too() -> None:
    shown = redact_url(f"postgresql+psycopg://me:{SECRET}@db/c?password={SECRET}&sslmode=require")
    assert shown == "postgresql+psycopg://me:***@db/c?password=***&sslmode=require"
    shown = redact_url(f"postgresql+psycopg://db/c?sslpassword={SECRET}&application_name=x")
    assert SECRET not in shown and "application_name=x" in shown
    assert SECRET not in redact_url(f"not parseable://me:{SECRET}@x")


def test_storage_options_secrets_are_hidden_in_the_repr(tmp_path: Path) -> None:
    options = {
        "key": "AKIAEXAMPLE",
        "secret": SECRET,
        "token": SECRET,
        "password": SECRET,
        "anon": False,
        "client_kwargs": {
            "endpoint_url": f"http://minio:{SECRET}@localhost:9000",
            "region_name": "eu-west-1",
            "aws_secret_access_key": SECRET,
            "aws_session_token": SECRET,
        },
        "headers": {"Authorization": f"Bearer {SECRET}"},
    }
    store = CacheStore(
        tmp_path / "s",
        storage_options=options,
        database_url=f"postgresql+psycopg://me:{SECRET}@db/c?password={SECRET}",
    )
    text = repr(store)
    assert SECRET not in text and "AKIAEXAMPLE" not in text
    assert "'key': '***'" in text and "'anon': False" in text
    assert "'region_name': 'eu-west-1'" in text and "localhost:9000" in text
    assert store.storage_options == options  # only what is shown is redacted
    assert redact_options({"nested": [{"api_key": SECRET}]}) == {"nested": [{"api_key": "***"}]}


def test_messages_never_show_the_database_secrets(postgres_url: str, tmp_path: Path) -> None:
    url = with_secret_query(postgres_url)
    # StoreNotFoundError: a readonly open of a path that is no store
    with pytest.raises(StoreNotFoundError) as not_found:
        CacheStore(tmp_path / "nothing", database_url=url, readonly=True)
    # StoreMismatchError: a store opened with another database than its own
    local = CacheStore(tmp_path / "local")
    local.put("a.json", 1, serializer="json")
    local.close()
    with pytest.raises(StoreMismatchError) as mismatch:
        CacheStore(tmp_path / "local", database_url=url).keys()
    # SchemaVersionError: an index at a revision this version does not know
    store = CacheStore(tmp_path / "s", database_url=url)
    store.put("a.json", 1, serializer="json")
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'ffffffffffff'"))
    store.close()
    with pytest.raises(SchemaVersionError) as schema:
        CacheStore(tmp_path / "s", database_url=url).keys()
    for info in (not_found, mismatch, schema):
        message = str(info.value)
        assert SECRET not in message, message
        assert "password=***" in message or "postgresql+psycopg://" not in message, message
    assert SECRET not in repr(store)


# -- verify(refingerprint=True) after a legitimate copy -------------------------------------------
def _touch_all(store: CacheStore, key: str, when: float = 1_000_000_000.0) -> None:
    """Give every file of the payload other modification times, as ``cp -r`` does."""
    root = Path(store.path, key)
    for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
        os.utime(path, (when, when))


def _recorded_fingerprint(store: CacheStore, key: str) -> str | None:
    with store.engine.connect() as conn:
        return conn.scalar(sa.select(ARTIFACTS.c.fingerprint).where(ARTIFACTS.c.key == key))


def test_refingerprint_after_a_copy_without_checksums(make_store: MakeStore) -> None:
    store = make_store()
    store.put("a.json", {"a": 1}, serializer="json")
    store.put("ds.zarr", make_dataset())
    before = _recorded_fingerprint(store, "ds.zarr")
    for key in ("a.json", "ds.zarr"):
        _touch_all(store, key)
    report = store.verify()
    assert sorted(report.damaged) == ["a.json", "ds.zarr"] and report.refingerprinted == []

    report = store.verify(refingerprint=True)
    assert report.ok and report.refingerprinted == ["a.json", "ds.zarr"]
    assert _recorded_fingerprint(store, "ds.zarr") != before
    assert store.verify().ok and store.verify(refingerprint=True).refingerprinted == []
    assert store.get("a.json") == {"a": 1}


def test_refingerprint_checks_the_content_against_the_checksum(make_store: MakeStore) -> None:
    store = make_store(checksum=True)
    store.put("same.json", {"a": 1}, serializer="json")
    store.put("changed.json", {"a": 1}, serializer="json")
    _touch_all(store, "same.json")
    Path(store.path, "changed.json").write_text('{"a": 2}')  # same size, other content
    changed_before = _recorded_fingerprint(store, "changed.json")

    report = store.verify(refingerprint=True)
    assert report.refingerprinted == ["same.json"]
    assert [(p.key, p.problem) for p in report.problems] == [("changed.json", "corrupt")]
    assert _recorded_fingerprint(store, "changed.json") == changed_before
    assert store.verify(checksums=False).damaged == ["changed.json"]


def test_refingerprint_skips_a_row_that_changed_meanwhile(store: CacheStore) -> None:
    store.put("a.json", {"a": 1}, serializer="json")
    _touch_all(store, "a.json")
    index = store._backend.index()
    assert index is not None
    seen = store.get_artifact("a.json")
    stat = store._backend.storage.stat(store._backend.storage.path("a.json"))
    store.put("a.json", {"a": 2}, serializer="json", on_duplicate_key="overwrite")
    assert not verify_module._refingerprint(index, store._backend.storage, seen, stat)
    assert store.get("a.json") == {"a": 2} and store.verify().ok


def test_refingerprint_is_refused_on_a_readonly_store(make_store: MakeStore) -> None:
    store = make_store()
    store.put("a.json", 1, serializer="json")
    _touch_all(store, "a.json")
    reader = make_store(readonly=True)
    with pytest.raises(ReadonlyStoreError, match="re-record fingerprints") as info:
        reader.verify(refingerprint=True)
    assert store.path in str(info.value)
    assert reader.verify().damaged == ["a.json"]  # checking alone is fine


# -- xpersist 2021's error types ------------------------------------------------------------------
def test_2021_error_types_still_catch(make_store: MakeStore) -> None:
    store = make_store(on_duplicate_key="raise_error")
    store.put("k.json", 1, serializer="json")
    with pytest.raises(ValueError, match="already exists") as duplicate:  # 2021: ValueError
        store.put("k.json", 2, serializer="json")
    assert isinstance(duplicate.value, DuplicateKeyError)
    collide = make_store(on_duplicate_key="check_collision")
    with pytest.raises(ValueError) as collision:
        collide.put("k.json", 3, serializer="json")
    assert isinstance(collision.value, CollisionError)
    with pytest.raises(KeyError):  # 2021: KeyError
        store.get("absent.json")
    assert issubclass(ArtifactNotFoundError, KeyError)
    shutil.rmtree(Path(store.path, "k.json"), ignore_errors=True)
    Path(store.path, "k.json").unlink(missing_ok=True)
    with pytest.raises(ValueError):  # 2021 wrapped any load failure in a ValueError
        store.get("k.json")
    assert issubclass(PayloadMissingError, FileNotFoundError)
