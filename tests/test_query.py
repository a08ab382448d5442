"""store.query(...): every filter, its validation, the DataFrame variant and the query plans."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from xpersist_sql import Artifact, CacheStore
from xpersist_sql.db.index import _compiled_conflict
from xpersist_sql.db.queries import build_select
from xpersist_sql.db.tables import ARTIFACTS, TAGS
from xpersist_sql.query import glob_to_regex, parse_query, parse_time

UTC = timezone.utc
T0 = datetime(2021, 12, 14, 8, 0, tzinfo=UTC)


def put(
    store: CacheStore,
    key: str,
    *,
    created_at: datetime | None = None,
    expires_at: datetime | None = None,
    serializer: str = "json",
    **metadata: Any,
) -> None:
    """Put a small JSON payload, then set its timestamps (in the row and its tag rows)."""
    store.put(key, {"key": key}, serializer=serializer, additional_metadata=metadata)
    set_times(store, key, created_at=created_at, expires_at=expires_at)


def set_times(
    store: CacheStore,
    key: str,
    *,
    created_at: datetime | None = None,
    expires_at: datetime | None = None,
) -> None:
    with store.engine.begin() as conn:
        artifact_id = conn.scalar(sa.select(ARTIFACTS.c.id).where(ARTIFACTS.c.key == key))
        if created_at is not None:
            conn.execute(
                sa.update(ARTIFACTS)
                .where(ARTIFACTS.c.id == artifact_id)
                .values(created_at=created_at)
            )
            conn.execute(
                sa.update(TAGS)
                .where(TAGS.c.artifact_id == artifact_id)
                .values(created_at=created_at)
            )
        if expires_at is not None:
            conn.execute(
                sa.update(ARTIFACTS)
                .where(ARTIFACTS.c.id == artifact_id)
                .values(expires_at=expires_at)
            )


def keys(artifacts: list[Artifact]) -> list[str]:
    return [artifact.key for artifact in artifacts]


@pytest.fixture
def filled(store: CacheStore) -> CacheStore:
    """Six artifacts from two flows, a day apart, newest last."""
    rows = [
        ("a/one.json", "flow-a", "get_data", ["nightly"], "x.zarr"),
        ("a/two.json", "flow-a", "clean", ["nightly", "big"], "xarray.zarr"),
        ("b/one.json", "flow-b", "get_data", [], "json"),
        ("a/three.json", "flow-a", "get_data", ["big"], "json"),
        ("b/two.json", "flow-b", "clean", ["nightly"], "json"),
        ("c.json", None, None, [], "json"),
    ]
    for day, (key, flow, task, tags, _kind) in enumerate(rows):
        metadata: dict[str, Any] = {"task_tags": tags, "experiment": "ctrl" if day % 2 else "exp"}
        if flow:
            metadata.update(flow_name=flow, flow_run_id=f"run-{flow}", task_run_id=f"t{day}")
        if task:
            metadata["task_name"] = task
        put(store, key, created_at=T0 + timedelta(days=day), **metadata)
    return store


# -- filters ---------------------------------------------------------------------------------
def test_no_filter_lists_everything_newest_first(filled: CacheStore) -> None:
    assert keys(filled.query()) == [
        "c.json",
        "b/two.json",
        "a/three.json",
        "b/one.json",
        "a/two.json",
        "a/one.json",
    ]
    assert keys(filled.query(order="oldest"))[0] == "a/one.json"


def test_promoted_columns(filled: CacheStore) -> None:
    assert keys(filled.query(flow_name="flow-a")) == ["a/three.json", "a/two.json", "a/one.json"]
    assert keys(filled.query(task_name="clean")) == ["b/two.json", "a/two.json"]
    assert keys(filled.query(flow_run_id="run-flow-b")) == ["b/two.json", "b/one.json"]
    assert keys(filled.query(task_run_id="t3")) == ["a/three.json"]
    assert keys(filled.query(flow_name="flow-a", task_name="get_data", order="oldest")) == [
        "a/one.json",
        "a/three.json",
    ]
    assert filled.query(flow_name="no-such-flow") == []


def test_run_ids_accept_uuids(store: CacheStore) -> None:
    run = uuid.uuid4()
    put(store, "r.json", flow_run_id=str(run))
    assert keys(store.query(flow_run_id=run)) == ["r.json"]
    assert keys(store.query(task_run_id=uuid.uuid4())) == []


def test_serializer(store: CacheStore) -> None:
    put(store, "j.json")
    store.put("p.pkl", [1, 2], serializer="pickle")
    assert keys(store.query(serializer="pickle")) == ["p.pkl"]
    assert keys(store.query(serializer="json")) == ["j.json"]


def test_tags_are_all_of(filled: CacheStore) -> None:
    assert keys(filled.query(tags=["nightly"])) == ["b/two.json", "a/two.json", "a/one.json"]
    assert keys(filled.query(tags=["nightly", "big"])) == ["a/two.json"]
    assert keys(filled.query(tags=["big", "nightly"], order="oldest")) == ["a/two.json"]
    assert keys(filled.query(tags="big")) == ["a/three.json", "a/two.json"]
    assert keys(filled.query(tags=["nightly", "nope"])) == []
    assert len(filled.query(tags=[])) == 6


def test_tags_with_other_filters(filled: CacheStore) -> None:
    got = filled.query(tags=["nightly"], flow_name="flow-a", since=T0 + timedelta(days=1))
    assert keys(got) == ["a/two.json"]
    got = filled.query(tags=["nightly"], until=T0 + timedelta(days=1), include_expired=True)
    assert keys(got) == ["a/one.json"]


def test_tags_from_tags_field_and_overwrite_replaces_them(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "s", on_duplicate_key="overwrite")
    store.put(
        "k.json", 1, serializer="json", additional_metadata={"tags": ["a"], "task_tags": ["b"]}
    )
    assert keys(store.query(tags=["a", "b"])) == ["k.json"]
    store.put("k.json", 2, serializer="json", additional_metadata={"task_tags": ["c"]})
    assert store.query(tags=["a"]) == []
    assert keys(store.query(tags=["c"])) == ["k.json"]
    store.delete("k.json")
    with store.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(TAGS)) == 0


def test_metadata_equality(filled: CacheStore) -> None:
    assert keys(filled.query(metadata={"experiment": "ctrl"})) == [
        "c.json",
        "a/three.json",
        "a/two.json",
    ]
    got = filled.query(metadata={"experiment": "ctrl", "flow_name": "flow-a"})
    assert keys(got) == ["a/three.json", "a/two.json"]
    assert filled.query(metadata={"experiment": "other"}) == []
    assert filled.query(metadata={"missing": "ctrl"}) == []


def test_metadata_is_json_type_strict(store: CacheStore) -> None:
    put(store, "int.json", n=1, flag=True, none=None, text="1")
    put(store, "float.json", n=1.5, flag=False, text="x")
    put(store, "other.json", n=2, flag=1)
    assert keys(store.query(metadata={"n": 1})) == ["int.json"]
    assert keys(store.query(metadata={"n": 1.0})) == ["int.json"]
    assert keys(store.query(metadata={"n": 1.5})) == ["float.json"]
    assert keys(store.query(metadata={"flag": True})) == ["int.json"]
    assert keys(store.query(metadata={"flag": False})) == ["float.json"]
    assert keys(store.query(metadata={"flag": 1})) == ["other.json"]
    assert keys(store.query(metadata={"none": None})) == ["int.json"]
    assert keys(store.query(metadata={"text": "1"})) == ["int.json"]
    assert store.query(metadata={"text": 1}) == []


@pytest.mark.parametrize(
    "name", ["é", "日本", "a\tb", "back\\slash", 'quo"te', "a.b c", "$.x", "line\nbreak"]
)
def test_metadata_names_of_any_text(store: CacheStore, name: str) -> None:
    # names the JSON text escapes are found on SQLite as on PostgreSQL
    store.put("hit.json", 1, serializer="json", additional_metadata={name: "v", "n": 1})
    store.put("other.json", 1, serializer="json", additional_metadata={name: "w", "ü2": 2})
    store.put("typed.json", 1, serializer="json", additional_metadata={name: 1})
    assert keys(store.query(metadata={name: "v"})) == ["hit.json"]
    assert keys(store.query(metadata={name: "v", "n": 1})) == ["hit.json"]
    assert keys(store.query(metadata={name: 1})) == ["typed.json"]
    assert store.query(metadata={name: "v", "ü2": 2}) == []
    assert keys(store.query(metadata={"ü2": 2, name: "w"})) == ["other.json"]
    assert store.query(metadata={name: None}) == []
    assert store.query(metadata={name + "x": "v"}) == []


def test_key_globs(store: CacheStore) -> None:
    for key in ["runs/2021/a.zarr", "runs/2022/b.zarr", "runs/x.json", "Runs/y.zarr", "r_1%.json",
                "ra1x.json", "[x].json"]:  # fmt: skip
        put(store, key)
    assert sorted(keys(store.query(key="runs/*.zarr"))) == ["runs/2021/a.zarr", "runs/2022/b.zarr"]
    assert sorted(keys(store.query(key="*.zarr"))) == [
        "Runs/y.zarr",
        "runs/2021/a.zarr",
        "runs/2022/b.zarr",
    ]
    assert keys(store.query(key="runs/202?/a.zarr")) == ["runs/2021/a.zarr"]
    assert keys(store.query(key="runs/x.json")) == ["runs/x.json"]
    assert keys(store.query(key="RUNS/*")) == []  # case-sensitive, like the keys themselves
    assert keys(store.query(key="r_1%.*")) == ["r_1%.json"]  # % and _ are literal
    assert keys(store.query(key="[x].*")) == ["[x].json"]  # [ is literal
    assert keys(store.query(key="runs/x.json?")) == []


def test_since_until_forms(filled: CacheStore) -> None:
    day2 = T0 + timedelta(days=2)
    forms: list[Any] = [
        day2,
        day2.replace(tzinfo=None),
        day2.astimezone(timezone(timedelta(hours=-5))),
        day2.isoformat(),
        "2021-12-16T08:00:00Z",
        "2021-12-16 08:00:00",
    ]
    for since in forms:
        assert keys(filled.query(since=since, order="oldest"))[0] == "b/one.json", since
        assert keys(filled.query(until=since))[0] == "a/two.json", since
    # a date (or a date string) is that day's midnight UTC
    assert keys(filled.query(since=date(2021, 12, 16), order="oldest"))[0] == "b/one.json"
    assert keys(filled.query(since="2021-12-16", until="2021-12-17")) == ["b/one.json"]
    assert keys(filled.query(since=day2, until=day2)) == []  # until is exclusive


def test_relative_times(store: CacheStore) -> None:
    now = datetime.now(UTC)
    put(store, "old.json", created_at=now - timedelta(days=10))
    put(store, "recent.json", created_at=now - timedelta(hours=2))
    for recent in (timedelta(days=1), "1d", "24h", "P1D", "PT3H"):
        assert keys(store.query(since=recent)) == ["recent.json"], recent
        assert keys(store.query(until=recent)) == ["old.json"], recent
    for wide in (timedelta(days=11), "2w", "30d"):
        assert keys(store.query(since=wide)) == ["recent.json", "old.json"], wide


def test_limit(filled: CacheStore) -> None:
    assert keys(filled.query(limit=2)) == ["c.json", "b/two.json"]
    assert keys(filled.query(limit=2, order="oldest")) == ["a/one.json", "a/two.json"]
    assert filled.query(limit=0) == []
    assert len(filled.query(limit=100)) == 6


def test_ties_are_broken_by_insertion_order(store: CacheStore) -> None:
    for key in ["t1.json", "t2.json", "t3.json"]:
        put(store, key, created_at=T0, task_tags=["same"])
    assert keys(store.query()) == ["t3.json", "t2.json", "t1.json"]
    assert keys(store.query(order="oldest", limit=2)) == ["t1.json", "t2.json"]
    assert keys(store.query(tags=["same"], limit=2)) == ["t3.json", "t2.json"]


def test_expired_artifacts(store: CacheStore) -> None:
    now = datetime.now(UTC)
    put(store, "gone.json", expires_at=now - timedelta(seconds=1), task_tags=["t"])
    put(store, "alive.json", expires_at=now + timedelta(days=1), task_tags=["t"])
    put(store, "forever.json", task_tags=["t"])
    assert sorted(keys(store.query())) == ["alive.json", "forever.json"]
    assert sorted(keys(store.query(tags=["t"]))) == ["alive.json", "forever.json"]
    assert sorted(keys(store.query(include_expired=True))) == [
        "alive.json",
        "forever.json",
        "gone.json",
    ]


def test_returned_artifacts_are_complete(store: CacheStore) -> None:
    stored = store.put(
        "full.json",
        {"v": 1},
        serializer="json",
        load_kwargs={"a": 1},
        additional_metadata={"flow_name": "f", "nested": {"x": [1, 2]}},
        ttl=3600,
    )
    (found,) = store.query(flow_name="f")
    assert found == stored
    assert found.model_dump() == store.get_artifact("full.json").model_dump()
    assert found.created_at.tzinfo is not None and found.created_at.utcoffset() == timedelta(0)
    # the fast construction gives a normal, validated-equal, mutable model
    assert Artifact.model_validate(found.model_dump()) == found
    assert found.model_copy(update={"key": "other"}).key == "other"
    found.additional_metadata["new"] = 1
    assert "new" not in store.query(flow_name="f")[0].additional_metadata
    with pytest.raises(ValueError, match="size_bytes"):
        found.size_bytes = "many"  # type: ignore[assignment]


def test_readonly_store_queries(filled: CacheStore) -> None:
    readonly = CacheStore(filled.path, database_url=filled.database_url, readonly=True)
    try:
        assert keys(readonly.query(flow_name="flow-b")) == ["b/two.json", "b/one.json"]
    finally:
        readonly.close()


# -- DataFrame -------------------------------------------------------------------------------
def test_query_df(filled: CacheStore) -> None:
    frame = filled.query_df(flow_name="flow-a")
    assert list(frame["key"]) == ["a/three.json", "a/two.json", "a/one.json"]
    assert list(frame["flow_name"]) == ["flow-a"] * 3
    assert list(frame["task_name"]) == ["get_data", "clean", "get_data"]
    assert isinstance(frame["created_at"].dtype, pd.DatetimeTZDtype)
    assert str(frame["created_at"].dt.tz) == "UTC"
    assert frame["created_at"].iloc[0] == pd.Timestamp(T0 + timedelta(days=3))
    assert str(frame["size_bytes"].dtype) == "Int64"
    assert {"serializer", "additional_metadata", "expires_at", "checksum"} <= set(frame.columns)


def test_query_df_empty_has_the_columns(filled: CacheStore) -> None:
    frame = filled.query_df(flow_name="nothing")
    assert len(frame) == 0
    assert list(frame.columns) == list(filled.query_df(limit=1).columns)


# -- validation ------------------------------------------------------------------------------
@pytest.fixture
def sqlite_store(tmp_path: Path) -> CacheStore:
    return CacheStore(tmp_path / "plain")


@pytest.mark.parametrize(
    ("filters", "error", "message"),
    [
        ({"since": "last tuesday"}, ValueError, "since='last tuesday' is not a date or time"),
        ({"until": "2021-13-45"}, ValueError, "until='2021-13-45' is not a date or time"),
        ({"since": ""}, ValueError, "is not a date or time"),
        ({"since": 1639641600}, TypeError, "since must be a datetime"),
        ({"since": True}, TypeError, "since must be a datetime"),
        ({"until": timedelta(days=-1)}, ValueError, "negative timedelta"),
        ({"since": "2021-12-17", "until": "2021-12-16"}, ValueError, "is after until"),
        ({"limit": -1}, ValueError, "limit must be >= 0"),
        ({"limit": 1.5}, TypeError, "limit must be an int"),
        ({"limit": True}, TypeError, "limit must be an int"),
        ({"limit": "10"}, TypeError, "limit must be an int"),
        ({"order": "random"}, ValueError, "order must be one of 'newest', 'oldest'"),
        ({"flow_name": 3}, TypeError, "flow_name must be a str"),
        ({"task_run_id": ["a"]}, TypeError, "task_run_id must be a str"),
        ({"serializer": None, "task_name": b"x"}, TypeError, "task_name must be a str"),
        ({"tags": [1]}, TypeError, "tags must be a list of str"),
        ({"tags": {"a": 1}}, TypeError, "tags must be a list of str"),
        ({"tags": 5}, TypeError, "tags must be a list of str"),
        ({"metadata": [("a", 1)]}, TypeError, "metadata must be a dict"),
        ({"metadata": {"a": [1]}}, TypeError, "must be a str, int, float, bool or None"),
        ({"metadata": {"a": {"b": 1}}}, TypeError, "must be a str, int, float, bool or None"),
        ({"metadata": {"a": math.nan}}, ValueError, "is not a JSON number"),
        ({"metadata": {1: "a"}}, TypeError, "metadata field names must be non-empty str"),
        ({"key": ""}, ValueError, "key must not be empty"),
        ({"key": 5}, TypeError, "key must be a str glob pattern"),
        ({"include_expired": "yes"}, TypeError, "include_expired must be a bool"),
    ],
)
def test_bad_filters(
    sqlite_store: CacheStore, filters: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        sqlite_store.query(**filters)
    assert message in str(info.value)
    with pytest.raises(error):
        sqlite_store.query_df(**filters)


def test_unknown_keyword(sqlite_store: CacheStore) -> None:
    with pytest.raises(TypeError, match="flw_name"):
        sqlite_store.query(flw_name="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="bogus"):
        sqlite_store.query_df(bogus=1)
    with pytest.raises(TypeError, match="positional"):
        sqlite_store.query("*.zarr")  # type: ignore[misc]


def test_parse_time() -> None:
    now = datetime(2021, 12, 16, 12, 0, tzinfo=UTC)
    assert parse_time("2021-12-16") == datetime(2021, 12, 16, tzinfo=UTC)
    assert parse_time("2021-12-16T10:00:00+02:00") == datetime(2021, 12, 16, 8, tzinfo=UTC)
    assert parse_time("2021-12-16T10:00:00z") == datetime(2021, 12, 16, 10, tzinfo=UTC)
    assert parse_time(" 2021-12-16T10:00 ") == datetime(2021, 12, 16, 10, tzinfo=UTC)
    assert parse_time(datetime(2021, 1, 1)) == datetime(2021, 1, 1, tzinfo=UTC)
    assert parse_time(date(2021, 1, 1)) == datetime(2021, 1, 1, tzinfo=UTC)
    assert parse_time(timedelta(hours=1), now=now) == now - timedelta(hours=1)
    assert parse_time(timedelta(0), now=now) == now
    cases = {
        "90s": timedelta(seconds=90),
        "30m": timedelta(minutes=30),
        "12h": timedelta(hours=12),
        "1.5d": timedelta(days=1.5),
        "2W": timedelta(weeks=2),
        "P7D": timedelta(days=7),
        "PT12H": timedelta(hours=12),
        "P1DT2H30M": timedelta(days=1, hours=2, minutes=30),
        "PT0.5S": timedelta(seconds=0.5),
    }
    for text, delta in cases.items():
        assert parse_time(text, now=now) == now - delta, text
    for bad in ("P", "PT", "7x", "-1d", "P1H"):
        with pytest.raises(ValueError, match="is not a date or time"):
            parse_time(bad, now=now)


def test_glob_to_regex() -> None:
    assert glob_to_regex("a/*.zarr").fullmatch("a/b/c.zarr")
    assert not glob_to_regex("a?").fullmatch("abc")
    assert glob_to_regex("[x]%_.+").fullmatch("[x]%_.+")


# -- query plans -----------------------------------------------------------------------------
PLAN_CASES: list[tuple[dict[str, Any], str]] = [
    ({"flow_name": "flow-a", "since": T0, "limit": 100}, "store_id_flow_name_created_at_id"),
    ({"flow_name": "flow-a"}, "store_id_flow_name_created_at_id"),
    ({"task_name": "get_data", "until": T0, "order": "oldest"}, "store_id_task_name_created_at_id"),
    ({"serializer": "json", "since": T0}, "store_id_serializer_created_at_id"),
    ({"flow_run_id": "run-flow-a"}, "store_id_flow_run_id_created_at_id"),
    ({"task_run_id": "t1"}, "store_id_task_run_id_created_at_id"),
    ({"since": T0, "until": T0 + timedelta(days=2)}, "store_id_created_at_id"),
    ({"since": "7d", "limit": 10}, "store_id_created_at_id"),
    ({"tags": ["nightly"], "limit": 100}, "tag_created_at_artifact_id"),
    ({"tags": ["nightly", "big"], "since": T0}, "tag_created_at_artifact_id"),
    ({"key": "a/one.json"}, "key"),
]


def _explain(conn: sa.Connection, filters: dict[str, Any]) -> str:
    stmt, params = build_select(parse_query(**filters), conn.dialect.name, 1)
    compiled = stmt.params(**params).compile(
        dialect=conn.dialect, compile_kwargs={"literal_binds": True}
    )
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
        return "\n".join(row[-1] for row in rows)
    return "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {compiled}").all())


@pytest.mark.parametrize(("filters", "index"), PLAN_CASES, ids=lambda x: str(x)[:60])
def test_query_plans_use_indexes(filled: CacheStore, filters: dict[str, Any], index: str) -> None:
    with filled.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # tiny tables: the planner prefers sequential scans unless told they cost a lot
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("ANALYZE xpersist_artifacts")
        plan = _explain(conn, filters)
    if filled.engine.dialect.name == "sqlite":
        assert not [line for line in plan.splitlines() if line.startswith("SCAN")], plan
    else:
        assert "Seq Scan" not in plan, plan
    if index == "key":
        assert (
            "sqlite_autoindex_xpersist_artifacts" in plan
            or "uq_xpersist_artifacts_store_id_key" in plan
        ), plan
    elif index.startswith("tag"):
        assert f"ix_xpersist_artifact_tags_{index}" in plan, plan
    else:
        assert f"ix_xpersist_artifacts_{index}" in plan, plan


def test_key_prefix_glob_is_an_index_range_on_sqlite(tmp_path: Path) -> None:
    # (PostgreSQL's LIKE uses a b-tree only under the "C" collation: not asserted there)
    store = CacheStore(tmp_path / "s")
    put(store, "a/one.json")
    with store.engine.connect() as conn:
        plan = _explain(conn, {"key": "a/*.json", "limit": 5})
    assert "sqlite_autoindex_xpersist_artifacts_1 (store_id=? AND key>? AND key<?)" in plan, plan


def test_overlap_check_of_a_put_seeks_the_key_index(store: CacheStore) -> None:
    # Each put asks whether a stored key contains the new one or lies inside it. Answered by
    # scanning every key of the store it made puts O(n); it must be point and range seeks.
    # Explained with bound parameters, as the put runs it, on enough rows for PostgreSQL's
    # planner to tell the indexes apart.
    for i in range(200):
        store.put(f"k/{i:03d}.json", i, serializer="json")
    compiled = _compiled_conflict(store.engine.dialect, 2)
    params = {"w_store_id": 1, "p0": "a", "p1": "a/b", "lo": "a/b/c.zarr/", "hi": "a/b/c.zarr0"}
    params.update(compiled.defaults)
    with store.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            assert compiled.names is not None
            bound = tuple(params[name] for name in compiled.names)
            plan = [
                row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled.sql}", bound)
            ]
            seeks = [line.split("(", 1)[1] for line in plan if line.startswith("SEARCH")]
            assert not [line for line in plan if line.startswith("SCAN")], plan
            assert seeks == ["store_id=? AND key=?)", "store_id=? AND key>? AND key<?)"], plan
        else:
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("ANALYZE xpersist_artifacts")
            plan = [row[0] for row in conn.exec_driver_sql(f"EXPLAIN {compiled.sql}", params)]
            text = "\n".join(plan)
            assert "Seq Scan" not in text, text
            conditions = [line for line in plan if "Index Cond" in line]
            assert len(conditions) == 2, text
            assert all("store_id" in line and "key" in line for line in conditions), text


@pytest.mark.parametrize(
    "filters", [{"flow_name": "flow-a", "since": T0, "limit": 100}, {"tags": ["x"], "limit": 100}]
)
def test_newest_first_needs_no_sort(filled: CacheStore, filters: dict[str, Any]) -> None:
    with filled.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")
        plan = _explain(conn, filters)
    assert "TEMP B-TREE" not in plan and "Sort" not in plan.replace("Incremental Sort", ""), plan


def test_statements_are_shared_between_values(sqlite_store: CacheStore) -> None:
    first, _ = build_select(parse_query(flow_name="a", since="1d", limit=5), "sqlite", 1)
    second, params = build_select(parse_query(flow_name="b", since="2d", limit=7), "sqlite", 1)
    assert first is second
    assert params["flow_name"] == "b" and params["limit"] == 7


def test_filters_reject_sql(store: CacheStore) -> None:
    put(store, "safe.json", flow_name="f")
    hostile = "f' OR '1'='1"
    assert store.query(flow_name=hostile) == []
    assert store.query(key="*' OR '1'='1") == []
    assert store.query(metadata={"flow_name": hostile}) == []
    assert keys(store.query(flow_name="f")) == ["safe.json"]


def test_query_uses_one_connection_at_a_time(
    make_store: Callable[..., CacheStore],
) -> None:
    store = make_store()
    put(store, "a.json", flow_name="f")
    for _ in range(50):
        assert len(store.query(flow_name="f")) == 1
    assert store.engine.pool.checkedout() == 0
