"""Parameter values: recorded in additional_metadata, indexed, queryable (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from xpersist_sql import Artifact, CacheStore
from xpersist_sql.cli import app
from xpersist_sql.db.queries import build_select
from xpersist_sql.db.tables import PARAMETERS
from xpersist_sql.parameters import (
    HASH_FIELD,
    PARAMETER_VALUES,
    canonical_json,
    parameter_record,
)
from xpersist_sql.provenance import hash_value
from xpersist_sql.query import parse_query


def keys(artifacts: list[Artifact]) -> list[str]:
    return [artifact.key for artifact in artifacts]


def put(store: CacheStore, key: str, values: dict[str, Any], **metadata: Any) -> Artifact:
    metadata[PARAMETER_VALUES] = parameter_record(values)
    metadata.setdefault("parameters", sorted(values))
    return store.put(key, {"key": key}, serializer="json", additional_metadata=metadata)


@pytest.fixture
def members(store: CacheStore) -> CacheStore:
    """A mapped task's five results (member 0..4), two flows, oldest first."""
    for member in range(5):
        flow = "flow-a" if member % 2 else "flow-b"
        put(
            store,
            f"run/member-{member}.json",
            {"member": member, "region": "europe"},
            flow_name=flow,
            task_name="simulate",
            task_tags=["nightly"] if member < 3 else [],
        )
    return store


# -- the record ------------------------------------------------------------------------------
def test_parameter_record_keeps_small_json_values() -> None:
    values = {"member": 2, "region": "europe", "levels": (850, 500), "when": np.int64(3)}
    assert parameter_record(values) == {
        "member": 2,
        "region": "europe",
        "levels": [850, 500],
        "when": 3,
    }


def test_parameter_record_hashes_large_and_non_json_values() -> None:
    big = list(range(1000))
    array = np.arange(4)
    record = parameter_record({"big": big, "array": array, "small": [1, 2]}, max_bytes=64)
    assert record["big"] == {HASH_FIELD: hash_value(big, "big")}
    assert set(record["array"]) == {HASH_FIELD} and len(record["array"][HASH_FIELD]) == 32
    assert record["small"] == [1, 2]
    assert parameter_record({"text": "x" * 10}, max_bytes=5)["text"] == {
        HASH_FIELD: hash_value("x" * 10, "text")
    }
    with pytest.raises(ValueError, match="max_bytes"):
        parameter_record({}, max_bytes=-1)


def test_parameter_record_of_an_unhashable_value() -> None:
    record = parameter_record({"thing": object()})
    assert list(record["thing"]) == ["__unhashable__"]
    assert record["thing"]["__unhashable__"] == "builtins.object"


def test_canonical_json_compares_numbers_as_numbers() -> None:
    assert canonical_json(2) == canonical_json(2.0) == "2"
    assert canonical_json("2") == '"2"'
    assert canonical_json(True) == "true"
    assert canonical_json(2.5) == "2.5"
    assert canonical_json({"b": 1, "a": [1.0]}) == canonical_json({"a": [1], "b": 1.0})


# -- queries ---------------------------------------------------------------------------------
def test_query_finds_a_mapped_element(members: CacheStore) -> None:
    assert keys(members.query(parameters={"member": 2})) == ["run/member-2.json"]
    assert keys(members.query(parameters={"member": 7})) == []
    assert len(members.query(parameters={"region": "europe"})) == 5
    assert keys(members.query(parameters={"member": 2, "region": "europe"})) == [
        "run/member-2.json"
    ]
    assert keys(members.query(parameters={"member": 2, "region": "asia"})) == []


def test_parameters_combine_with_other_filters(members: CacheStore) -> None:
    assert keys(members.query(parameters={"region": "europe"}, flow_name="flow-a")) == [
        "run/member-3.json",
        "run/member-1.json",
    ]
    assert keys(members.query(parameters={"region": "europe"}, tags=["nightly"])) == [
        "run/member-2.json",
        "run/member-1.json",
        "run/member-0.json",
    ]
    assert keys(members.query(parameters={"member": 3}, tags=["nightly"])) == []
    found = members.query(
        parameters={"region": "europe"}, task_name="simulate", limit=2, order="oldest"
    )
    assert keys(found) == ["run/member-0.json", "run/member-1.json"]
    assert keys(members.query(parameters={"member": 4}, key="run/*")) == ["run/member-4.json"]
    assert keys(members.query(parameters={"member": 4}, key="other/*")) == []


def test_equality_is_on_json_values(store: CacheStore) -> None:
    put(store, "int.json", {"x": 2})
    put(store, "float.json", {"x": 2.0})
    put(store, "text.json", {"x": "2"})
    put(store, "bool.json", {"x": True})
    put(store, "one.json", {"x": 1})
    put(store, "list.json", {"x": [1, 2]})
    put(store, "dict.json", {"x": {"b": 1, "a": 2}})
    put(store, "none.json", {"x": None})
    assert sorted(keys(store.query(parameters={"x": 2}))) == ["float.json", "int.json"]
    assert sorted(keys(store.query(parameters={"x": 2.0}))) == ["float.json", "int.json"]
    assert keys(store.query(parameters={"x": "2"})) == ["text.json"]
    assert keys(store.query(parameters={"x": True})) == ["bool.json"]
    assert keys(store.query(parameters={"x": 1})) == ["one.json"]
    assert keys(store.query(parameters={"x": (1, 2)})) == ["list.json"]
    assert keys(store.query(parameters={"x": {"a": 2, "b": 1}})) == ["dict.json"]
    assert keys(store.query(parameters={"x": None})) == ["none.json"]


def test_a_hashed_value_is_found_by_the_value(store: CacheStore) -> None:
    big = list(range(1000))
    put(store, "big.json", {"data": big})
    put(store, "array.json", {"data": np.arange(5)})
    assert keys(store.query(parameters={"data": big})) == ["big.json"]
    assert keys(store.query(parameters={"data": np.arange(5)})) == ["array.json"]
    assert keys(store.query(parameters={"data": np.arange(6)})) == []


def test_long_names_and_values_are_told_apart(store: CacheStore) -> None:
    name = "n" * 300
    first, second = "v" * 500 + "1", "v" * 500 + "2"
    put(store, "first.json", {name: first})
    put(store, "second.json", {name: second})
    assert keys(store.query(parameters={name: first})) == ["first.json"]
    assert keys(store.query(parameters={name: second})) == ["second.json"]


def test_overwrite_replaces_and_delete_removes_parameter_rows(store: CacheStore) -> None:
    put(store, "k.json", {"member": 1})
    assert keys(store.query(parameters={"member": 1})) == ["k.json"]
    store.put(
        "k.json",
        {"v": 2},
        serializer="json",
        additional_metadata={PARAMETER_VALUES: {"member": 2}},
        on_duplicate_key="overwrite",
    )
    assert keys(store.query(parameters={"member": 1})) == []
    assert keys(store.query(parameters={"member": 2})) == ["k.json"]
    store.put("k.json", {"v": 3}, serializer="json", on_duplicate_key="overwrite")
    assert keys(store.query(parameters={"member": 2})) == []
    put(store, "k.json", {"member": 5}, on_duplicate_key="overwrite")
    store.delete("k.json")
    with store.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(PARAMETERS)) == 0


def test_a_skipped_put_keeps_the_stored_parameters(store: CacheStore) -> None:
    put(store, "k.json", {"member": 1})
    put(store, "k.json", {"member": 2})  # on_duplicate_key="skip"
    assert keys(store.query(parameters={"member": 1})) == ["k.json"]
    assert keys(store.query(parameters={"member": 2})) == []


def test_stores_sharing_a_database_see_their_own_parameters(
    make_store: Any, tmp_path: Path, database_url: str | None
) -> None:
    url = database_url or f"sqlite:///{tmp_path}/shared.sqlite"  # one database for both
    first = make_store(tmp_path / "one", database_url=url)
    second = make_store(tmp_path / "two", database_url=url)
    put(first, "a.json", {"member": 1})
    put(second, "b.json", {"member": 1})
    assert keys(first.query(parameters={"member": 1})) == ["a.json"]
    assert keys(second.query(parameters={"member": 1})) == ["b.json"]


def test_query_df_and_summarize_take_parameters(members: CacheStore) -> None:
    frame = members.query_df(parameters={"member": 2})
    assert list(frame["key"]) == ["run/member-2.json"]
    rows = members.summarize("flow_name", parameters={"region": "europe"})
    assert {(row.value, row.count) for row in rows} == {("flow-a", 2), ("flow-b", 3)}
    rows = members.summarize("flow_name", parameters={"member": 1})
    assert [(row.value, row.count) for row in rows] == [("flow-a", 1)]


def test_bad_parameter_filters(store: CacheStore) -> None:
    with pytest.raises(TypeError, match="parameters must be a dict"):
        store.query(parameters=[("member", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="parameter names"):
        store.query(parameters={1: 2})  # type: ignore[dict-item]


def test_parameter_query_plan_uses_the_parameter_index(members: CacheStore) -> None:
    with members.engine.connect() as conn:
        stmt, params = build_select(
            parse_query(parameters={"member": 2}, limit=10), conn.dialect.name, 1
        )
        compiled = stmt.params(**params).compile(
            dialect=conn.dialect, compile_kwargs={"literal_binds": True}
        )
        if conn.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
            plan = "\n".join(row[-1] for row in rows)
            assert not [line for line in plan.splitlines() if line.startswith("SCAN")], plan
        else:
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("ANALYZE xpersist_artifact_parameters")
            rows = conn.exec_driver_sql(f"EXPLAIN {compiled}").all()
            plan = "\n".join(row[0] for row in rows)
            assert "Seq Scan" not in plan, plan
    assert "ix_xpersist_artifact_parameters_name_value_created_at" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


# -- command line ----------------------------------------------------------------------------
def test_cli_param_filter(runner: CliRunner, members: CacheStore) -> None:
    where = ["--store", members.path]
    if members.engine.dialect.name != "sqlite":
        where += ["--db", members.database_url]
    result = runner.invoke(app, ["ls", "--param", "member=2", "--json", *where])
    assert result.exit_code == 0, result.output
    assert [row["key"] for row in json.loads(result.stdout)] == ["run/member-2.json"]
    result = runner.invoke(
        app, ["query", "--param", "region=europe", "--flow", "flow-a", "--json", *where]
    )
    assert [row["key"] for row in json.loads(result.stdout)] == [
        "run/member-3.json",
        "run/member-1.json",
    ]
    # text that is not JSON is text; quoted JSON text too
    assert json.loads(
        runner.invoke(app, ["ls", "--param", "region=europe", "--json", *where]).stdout
    )
    quoted = runner.invoke(app, ["ls", "--param", 'member="2"', "--json", *where])
    assert json.loads(quoted.stdout) == []
    bad = runner.invoke(app, ["ls", "--param", "member", *where])
    assert bad.exit_code == 2
    assert "--param 'member' is not NAME=VALUE" in bad.stderr
    stats = runner.invoke(app, ["stats", "--param", "member=2", "--json", *where])
    assert json.loads(stats.stdout)["total"]["count"] == 1
