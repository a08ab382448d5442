"""xpersist_task on real Prefect 3 flows: hits, misses, runners, async, options, failures."""

from __future__ import annotations

import asyncio
import logging
import pickle
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import sqlalchemy as sa
import xarray as xr
from prefect import flow, task
from prefect.settings import PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner

from xpersist_sql import CacheStore, DuplicateKeyError
from xpersist_sql.db.tables import ARTIFACTS, TAGS
from xpersist_sql.prefect import (
    REFRESH_ENV,
    XpersistResult,
    XpersistTask,
    xpersist_task,
)


def _row(store: CacheStore, key: str) -> Any:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(ARTIFACTS).where(ARTIFACTS.c.key == key)).one()


def _tags(store: CacheStore, key: str) -> list[str]:
    stmt = (
        sa.select(TAGS.c.tag)
        .join(ARTIFACTS, ARTIFACTS.c.id == TAGS.c.artifact_id)
        .where(ARTIFACTS.c.key == key)
        .order_by(TAGS.c.tag)
    )
    with store.engine.connect() as conn:
        return list(conn.scalars(stmt))


def _files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


# -- the seed story ------------------------------------------------------------------------------


def test_seed_story_first_run_computes_second_is_cached(pstore: CacheStore, task_logs: Any) -> None:
    calls: list[int] = []
    result = XpersistResult(pstore, serializer="xarray.zarr", serializer_dump_kwargs={"mode": "w"})

    @xpersist_task(result=result, target="bar.zarr")
    def get_data() -> xr.Dataset:
        calls.append(1)
        return xr.DataArray(range(10), dims="x", name="bar").to_dataset()

    @task
    def total(ds: xr.Dataset) -> int:
        return int(ds.bar.sum())

    @flow(name="my-flow")
    def my_flow() -> tuple[Any, int]:
        state = get_data(return_state=True)
        return state, total(state.result())

    first, first_total = my_flow()
    assert calls == [1]
    assert first.is_completed() and first.name == "Completed"
    assert first_total == 45
    assert pstore.keys() == ["bar.zarr"]

    second, second_total = my_flow()
    assert calls == [1], "a cache hit must not run the body"
    assert second.is_completed() and second.name == "Cached"
    assert second_total == 45
    expected_location = f"{pstore.path}/bar.zarr"
    assert second.message == f"loaded from cache at {expected_location}"
    # Prefect's own log of the final state carries the message
    finished = [m for m in task_logs.messages() if m.startswith("Finished in state Cached(")]
    assert len(finished) == 1
    assert f"loaded from cache at {expected_location}" in finished[0]
    xr.testing.assert_equal(second.result().load(), first.result())

    artifact = pstore.get_artifact("bar.zarr")
    assert artifact.serializer == "xarray.zarr"
    assert artifact.dump_kwargs == {"mode": "w"}
    meta = artifact.additional_metadata
    assert meta["flow_name"] == "my-flow"
    assert meta["task_name"] == "get_data"
    assert meta["flow_run_id"] == str(first.state_details.flow_run_id)
    assert meta["task_run_id"] == str(first.state_details.task_run_id)
    assert meta["task_run_name"].startswith("get_data-")
    assert meta["flow_run_name"]
    assert meta["task_tags"] == [] and meta["parameters"] == []
    for name in ("today", "yesterday", "tomorrow"):
        datetime.strptime(meta[name], "%Y-%m-%d")  # string dates
    assert "date" not in meta
    row = _row(pstore, "bar.zarr")
    assert (row.flow_name, row.task_name) == ("my-flow", "get_data")
    assert (row.flow_run_id, row.task_run_id) == (meta["flow_run_id"], meta["task_run_id"])

    # what the flow produced is found again through the query layer
    since = artifact.created_at - timedelta(minutes=1)
    assert [a.key for a in pstore.query(flow_name="my-flow", since=since)] == ["bar.zarr"]
    assert [a.key for a in pstore.query(task_name="get_data", flow_run_id=meta["flow_run_id"])] == [
        "bar.zarr"
    ]
    assert pstore.query(flow_name="other-flow") == []


def test_tags_with_options_and_no_pickled_copy(
    pstore: CacheStore, prefect_home: Path, tmp_path: Path
) -> None:
    calls: list[int] = []

    @xpersist_task(store=pstore, target="{task_name}/{task_tags}.npy", tags=["nightly"])
    def make_array() -> np.ndarray:
        calls.append(1)
        return np.arange(131_072, dtype="float64")  # 1 MB

    renamed = make_array.with_options(name="renamed", tags=["nightly", "ctrl"], retries=1)
    assert isinstance(renamed, XpersistTask)
    assert renamed.retries == 1

    @flow(name="tag-flow", persist_result=False)
    def tag_flow() -> list[np.ndarray]:
        return [make_array(), renamed(), renamed()]

    storage = prefect_home / "storage"
    before = _files(storage)
    with temporary_settings(updates={PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}):
        values = tag_flow()
    assert _files(storage) == before, "Prefect wrote its own copy of the result"
    assert calls == [1, 1]
    for value in values:
        np.testing.assert_array_equal(value, np.arange(131_072, dtype="float64"))
    assert pstore.keys() == ["make_array/nightly.npy", "renamed/ctrl-nightly.npy"]
    assert _tags(pstore, "renamed/ctrl-nightly.npy") == ["ctrl", "nightly"]
    assert _row(pstore, "renamed/ctrl-nightly.npy").task_name == "renamed"
    assert pstore.get_artifact("make_array/nightly.npy").serializer == "numpy.npy"

    # the task and its result pickle (Prefect and Dask ship tasks to other processes)
    clone = cloudpickle.loads(cloudpickle.dumps(make_array))
    np.testing.assert_array_equal(clone(), values[0])
    assert calls == [1, 1]
    result = pickle.loads(pickle.dumps(XpersistResult(pstore, serializer="json")))
    assert result.store.path == pstore.path and result.serializer == "json"


# -- runners, map, async -------------------------------------------------------------------------


def test_submit_and_map_on_default_and_thread_pool_runners(pstore: CacheStore) -> None:
    calls: list[int] = []

    @xpersist_task(store=pstore, target="squares/{parameters[i]}.json", serializer="json")
    def square(i: int) -> int:
        calls.append(i)
        return i * i

    @flow(name="default-runner")
    def default_runner() -> tuple[list[Any], Any]:
        futures = square.map(i=[1, 2, 3])
        single = square.submit(4)
        return [future.wait() or future.state for future in futures], single.result()

    states, single = default_runner()
    assert sorted(calls) == [1, 2, 3, 4]
    assert [state.name for state in states] == ["Completed"] * 3
    assert single == 16
    assert pstore.keys() == [f"squares/{i}.json" for i in (1, 2, 3, 4)]

    @flow(name="thread-pool", task_runner=ThreadPoolTaskRunner(max_workers=3))
    def thread_pool() -> list[Any]:
        futures = square.map(i=[1, 2, 3, 4])
        return [future.wait() or future.state for future in futures]

    states = thread_pool()
    assert sorted(calls) == [1, 2, 3, 4], "mapped hits must not run the body"
    assert [state.name for state in states] == ["Cached"] * 4
    assert [state.result() for state in states] == [1, 4, 9, 16]
    assert pstore.get_artifact("squares/2.json").additional_metadata["parameters"] == ["i"]


def test_async_task_in_async_flow(pstore: CacheStore) -> None:
    calls: list[str] = []

    @xpersist_task(store=pstore, target="async/{parameters[name]}.json", serializer="json")
    async def fetch(name: str) -> dict[str, str]:
        await asyncio.sleep(0)
        calls.append(name)
        return {"name": name}

    @flow(name="async-flow")
    async def async_flow() -> tuple[Any, dict[str, str]]:
        state = await fetch("a", return_state=True)
        value = await fetch("a")
        return state, value

    first, value = asyncio.run(async_flow())
    assert calls == ["a"]
    assert first.name == "Completed" and value == {"name": "a"}
    second, value = asyncio.run(async_flow())
    assert calls == ["a"]
    assert second.name == "Cached" and value == {"name": "a"}
    assert pstore.get_artifact("async/a.json").additional_metadata["flow_name"] == "async-flow"


# -- outside a flow ------------------------------------------------------------------------------


def test_direct_calls_outside_a_flow_still_cache(pstore: CacheStore) -> None:
    calls: list[int] = []

    @xpersist_task(store=pstore, target="{task_name}-{parameters[x]}.json", serializer="json")
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    assert double(3) == 6
    assert double(3) == 6  # a hit returns the value, not the Cached state
    state = double(3, return_state=True)
    assert state.name == "Cached" and state.result() == 6
    assert calls == [3]
    assert double.fn(3) == 6  # the plain body: it runs, and does not touch the store
    assert double.fn(5) == 10
    assert calls == [3, 3, 5]
    assert pstore.keys() == ["double-3.json"]
    meta = pstore.get_artifact("double-3.json").additional_metadata
    assert meta["task_name"] == "double" and "flow_name" not in meta and meta["task_run_id"]
    assert _row(pstore, "double-3.json").flow_name is None


# -- options: refresh, ttl -----------------------------------------------------------------------


def test_refresh_recomputes_overwrites_and_resets_expiry(pstore: CacheStore) -> None:
    counter: list[int] = []

    @xpersist_task(store=pstore, target="count.json", serializer="json", refresh=True, ttl=3600)
    def count() -> int:
        counter.append(1)
        return len(counter)

    assert count() == 1
    first = pstore.get_artifact("count.json")
    assert count() == 2
    second = pstore.get_artifact("count.json")
    assert pstore.get("count.json") == 2
    assert second.created_at > first.created_at
    assert second.expires_at is not None and first.expires_at is not None
    assert second.expires_at > first.expires_at


def test_refresh_environment_variable_applies_to_every_task_of_a_run(
    pstore: CacheStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    @xpersist_task(store=pstore, target="a.json", serializer="json")
    def a() -> int:
        calls.append("a")
        return calls.count("a")

    @xpersist_task(store=pstore, target="b.json", serializer="json")
    def b() -> int:
        calls.append("b")
        return calls.count("b")

    @flow(name="refresh-flow")
    def refresh_flow() -> list[Any]:
        return [a(return_state=True), b(return_state=True)]

    assert (a(), b()) == (1, 1)
    monkeypatch.setenv(REFRESH_ENV, "1")
    states = refresh_flow()
    assert [state.name for state in states] == ["Completed", "Completed"]
    assert calls == ["a", "b", "a", "b"]
    assert (pstore.get("a.json"), pstore.get("b.json")) == (2, 2)
    monkeypatch.setenv(REFRESH_ENV, "0")
    assert (a(), b()) == (2, 2)
    assert len(calls) == 4


def test_ttl_expired_artifact_is_a_miss(pstore: CacheStore) -> None:
    calls: list[int] = []

    @xpersist_task(store=pstore, target="ttl.json", serializer="json", ttl=timedelta(hours=1))
    def value() -> int:
        calls.append(1)
        return len(calls)

    assert value() == 1
    artifact = pstore.get_artifact("ttl.json")
    assert artifact.expires_at is not None
    assert timedelta(minutes=59) < artifact.expires_at - artifact.created_at <= timedelta(hours=1)
    assert value() == 1 and calls == [1]
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    with pstore.engine.begin() as conn:
        conn.execute(sa.update(ARTIFACTS).values(expires_at=past.replace(tzinfo=None)))
    assert "ttl.json" not in pstore
    assert value() == 2, "an expired artifact must be recomputed"
    assert pstore.get("ttl.json") == 2 and calls == [1, 1]


# -- damaged payloads, failing bodies ------------------------------------------------------------


def test_missing_or_unreadable_payload_is_a_miss_with_a_warning(
    pstore: CacheStore, task_logs: Any
) -> None:
    calls: list[int] = []

    @xpersist_task(
        result=XpersistResult(pstore, serializer="xarray.zarr"),
        target="damaged/{parameters[n]}.zarr",
    )
    def dataset(n: int) -> xr.Dataset:
        calls.append(n)
        return xr.Dataset({"v": ("x", np.arange(n))})

    @xpersist_task(store=pstore, target="damaged/value.json", serializer="json")
    def value() -> dict[str, int]:
        calls.append(0)
        return {"v": 1}

    assert dataset(3).sizes["x"] == 3 and value() == {"v": 1}
    shutil.rmtree(Path(pstore.path) / "damaged" / "3.zarr")  # gone behind the index's back
    (Path(pstore.path) / "damaged" / "value.json").write_text("{not json")  # unreadable
    state = dataset(3, return_state=True)
    assert state.name == "Completed", "a damaged hit is a miss"
    assert state.result().sizes["x"] == 3
    assert value() == {"v": 1}
    assert calls == [3, 0, 3, 0]
    warnings = task_logs.messages(logging.WARNING)
    assert any("'damaged/3.zarr'" in m and "recomputing" in m for m in warnings), warnings
    assert any("'damaged/value.json'" in m and "recomputing" in m for m in warnings), warnings
    # the recomputed values replaced the damaged rows: the next calls are hits
    assert dataset(3, return_state=True).name == "Cached"
    assert value(return_state=True).name == "Cached"
    assert calls == [3, 0, 3, 0]


def test_failing_body_writes_nothing_and_retries_store_once(pstore: CacheStore) -> None:
    attempts: list[int] = []

    @xpersist_task(store=pstore, target="fails.json", serializer="json")
    def fails() -> int:
        attempts.append(1)
        raise RuntimeError("boom")

    state = fails(return_state=True)
    assert state.is_failed()
    with pytest.raises(RuntimeError, match="boom"):
        state.result()
    assert pstore.keys() == []
    assert not (Path(pstore.path) / "fails.json").exists()
    staging = Path(pstore.path) / ".xpersist_sql" / "staging"
    assert _files(staging) == []

    @xpersist_task(store=pstore, target="flaky.json", serializer="json", retries=2)
    def flaky() -> int:
        attempts.append(2)
        if attempts.count(2) < 2:
            raise RuntimeError("transient")
        return 7

    @flow(name="retry-flow")
    def retry_flow() -> Any:
        return flaky(return_state=True)

    state = retry_flow()
    assert state.name == "Completed" and state.result() == 7
    assert attempts.count(2) == 2
    assert pstore.keys() == ["flaky.json"] and pstore.get("flaky.json") == 7


def test_duplicate_key_policy_is_respected(tmp_path: Path) -> None:
    raising = CacheStore(tmp_path / "cache", on_duplicate_key="raise_error")
    raising.put("taken.json", 1, serializer="json")

    @xpersist_task(store=raising, target="taken.json", serializer="json", refresh=True)
    def refreshed() -> int:
        return 2

    assert refreshed() == 2, "refresh overwrites whatever the store's policy"
    assert raising.get("taken.json") == 2

    # a row the task did not see at lookup time (a concurrent writer) meets the policy
    @xpersist_task(store=raising, target="late.json", serializer="json")
    def late() -> int:
        raising.put("late.json", 1, serializer="json")  # another run wins the race
        return 2

    state = late(return_state=True)
    assert state.is_failed()
    with pytest.raises(DuplicateKeyError, match=r"late\.json"):
        state.result()
    assert raising.get("late.json") == 1
    raising.close()


# -- other storage -------------------------------------------------------------------------------


def test_store_on_memory_filesystem(tmp_path: Path) -> None:
    store = CacheStore("memory://xpersist-prefect-test", database_url=f"sqlite:///{tmp_path}/i.db")
    calls: list[int] = []

    @xpersist_task(store=store, target="mem/{parameters[n]}.zarr", serializer="xarray.zarr")
    def dataset(n: int) -> xr.Dataset:
        calls.append(n)
        return xr.Dataset({"v": ("x", np.arange(n))})

    assert dataset(4).sizes["x"] == 4
    state = dataset(4, return_state=True)
    assert state.name == "Cached"
    assert state.message == "loaded from cache at memory://xpersist-prefect-test/mem/4.zarr"
    assert int(state.result().v.sum()) == 6
    assert calls == [4]
    store.delete("mem/4.zarr")
    store.close()


def test_the_session_runs_against_an_isolated_prefect(
    prefect_server: str, prefect_home: Path
) -> None:
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    assert settings.api.url == prefect_server and prefect_server.startswith("http://127.0.0.1:")
    assert Path(settings.home) == prefect_home
    assert settings.flows.heartbeat_frequency is None
    assert settings.server.analytics_enabled is False


def test_hits_refresh_and_columns_on_each_backend(make_store: Any) -> None:
    store = make_store(on_duplicate_key="raise_error")
    calls: list[int] = []

    @xpersist_task(
        store=store, target="backend/{parameters[n]}.json", serializer="json", tags=["t"]
    )
    def value(n: int) -> int:
        calls.append(n)
        return n + len(calls)

    assert value(1) == 2
    state = value(1, return_state=True)
    assert state.name == "Cached" and state.result() == 2
    refreshed = xpersist_task(
        value.fn,  # the same body
        store=store,
        target="backend/{parameters[n]}.json",
        serializer="json",
        refresh=True,
    )
    assert refreshed(1) == 3, "refresh overwrites even on a raise_error store"
    assert store.get("backend/1.json") == 3 and calls == [1, 1]
    row = _row(store, "backend/1.json")
    assert row.task_name == "value" and row.task_run_id and row.flow_name is None
    assert _tags(store, "backend/1.json") == []  # the refreshing task has no tags
    assert store.get_artifact("backend/1.json").additional_metadata["task_name"] == "value"


def test_readonly_store_serves_hits_and_does_not_store_misses(
    pstore: CacheStore, task_logs: Any
) -> None:
    pstore.put("ro/1.json", 10, serializer="json")
    readonly = CacheStore(pstore.path, readonly=True)
    calls: list[int] = []

    @xpersist_task(store=readonly, target="ro/{parameters[n]}.json", serializer="json")
    def value(n: int) -> int:
        calls.append(n)
        return n

    assert value(1) == 10 and calls == []
    assert value(2) == 2 and calls == [2]
    assert pstore.keys() == ["ro/1.json"]
    assert any(
        "is readonly" in m and "'ro/2.json'" in m for m in task_logs.messages(logging.WARNING)
    )
    readonly.close()
