"""Prefect's caching vocabulary on xpersist tasks, through real flows, on SQLite and PostgreSQL.

``refresh_cache``, ``PREFECT_TASKS_REFRESH_CACHE``, ``cache_expiration``, transactions (a value
stored inside one that rolls back is removed), ``task.fn`` as the plain body, async, retries and
``.map``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prefect import flow, task
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings
from prefect.transactions import IsolationLevel, transaction

from xpersist_sql import CacheStore
from xpersist_sql.db.tables import ARTIFACTS
from xpersist_sql.prefect import xpersist_task

MakeStore = Callable[..., CacheStore]


def _expire_all(store: CacheStore) -> None:
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    with store.engine.begin() as conn:
        conn.execute(sa.update(ARTIFACTS).values(expires_at=past.replace(tzinfo=None)))


def _counter(store: CacheStore, target: str = "count.json", **options: Any) -> tuple[Any, list]:
    calls: list[int] = []

    def count() -> int:
        calls.append(1)
        return len(calls)

    return xpersist_task(count, store=store, target=target, serializer="json", **options), calls


# -- refresh_cache and PREFECT_TASKS_REFRESH_CACHE -------------------------------------------------


def test_refresh_cache_recomputes_and_overwrites(make_store: MakeStore) -> None:
    store = make_store(on_duplicate_key="raise_error")
    count, calls = _counter(store)
    refreshing = count.with_options(refresh_cache=True)
    assert refreshing.refresh_cache is True and count.refresh_cache is None

    @flow(name="refresh-cache-flow")
    def refresh_flow() -> list[Any]:
        return [count(return_state=True), count(return_state=True), refreshing(return_state=True)]

    states = refresh_flow()
    assert [s.name for s in states] == ["Completed", "Cached", "Completed"]
    assert [s.result() for s in states] == [1, 1, 2]
    assert store.get("count.json") == 2, "refresh_cache=True overwrites, whatever the policy"
    assert calls == [1, 1]

    declared, declared_calls = _counter(store, "declared.json", refresh_cache=True)
    assert declared.refresh_cache is True
    assert (declared(), declared()) == (1, 2)
    assert store.get("declared.json") == 2 and declared_calls == [1, 1]


def test_prefect_tasks_refresh_cache_setting_recomputes(make_store: MakeStore) -> None:
    store = make_store()
    count, calls = _counter(store)
    pinned = count.with_options(refresh_cache=False)

    @flow(name="setting-flow")
    def setting_flow() -> list[Any]:
        return [count(return_state=True), pinned(return_state=True)]

    assert count() == 1
    with temporary_settings(updates={PREFECT_TASKS_REFRESH_CACHE: True}):
        states = setting_flow()
    # the setting refreshes every task that does not say otherwise; refresh_cache=False wins
    assert [s.name for s in states] == ["Completed", "Cached"]
    assert [s.result() for s in states] == [2, 2]
    assert store.get("count.json") == 2
    states = setting_flow()  # the setting is off again: hits
    assert [s.name for s in states] == ["Cached", "Cached"] and calls == [1, 1]


# -- cache_expiration ----------------------------------------------------------------------------


def test_cache_expiration_expires(make_store: MakeStore) -> None:
    store = make_store()
    count, calls = _counter(store, cache_expiration=timedelta(hours=1))
    assert count.cache_expiration == timedelta(hours=1)

    @flow(name="expiration-flow")
    def expiration_flow() -> str:
        return str(count(return_state=True).name)

    assert expiration_flow() == "Completed"
    artifact = store.get_artifact("count.json")
    assert artifact.expires_at is not None
    assert timedelta(minutes=59) < artifact.expires_at - artifact.created_at <= timedelta(hours=1)
    assert expiration_flow() == "Cached"
    _expire_all(store)
    assert "count.json" not in store
    assert expiration_flow() == "Completed", "an expired value is recomputed"
    assert calls == [1, 1] and store.get("count.json") == 2

    # with_options changes it, as on any Prefect task
    shorter = count.with_options(cache_expiration=timedelta(minutes=5), refresh_cache=True)
    assert shorter() == 3
    artifact = store.get_artifact("count.json")
    assert artifact.expires_at is not None
    assert artifact.expires_at - artifact.created_at <= timedelta(minutes=5)


# -- transactions --------------------------------------------------------------------------------


def test_transaction_rollback_removes_the_value_and_commit_keeps_it(
    make_store: MakeStore, task_logs: Any
) -> None:
    store = make_store()
    calls: list[int] = []

    @xpersist_task(store=store, target="txn/{parameters[n]}.json", serializer="json")
    def value(n: int) -> int:
        calls.append(n)
        return n * 10

    @task
    def fails() -> None:
        raise RuntimeError("a later step of the transaction failed")

    @flow(name="rollback-flow")
    def rollback_flow() -> list[str]:
        value(0)  # before the transaction: not part of it
        try:
            with transaction():
                value(1)
                value(0)  # a hit inside the transaction: it wrote nothing, keeps nothing
                fails()
        except RuntimeError:
            pass
        with transaction():
            value(2)
        return store.keys()

    assert rollback_flow() == ["txn/0.json", "txn/2.json"]
    assert calls == [0, 1, 2]
    assert "txn/1.json" not in store
    assert not Path(store.path, "txn", "1.json").exists()
    assert any("removed 'txn/1.json'" in m and "rolled back" in m for m in task_logs.messages())

    # as a native cached task: the next run recomputes what was rolled back
    assert value(1) == 10 and calls == [0, 1, 2, 1]
    assert value(2) == 20 and calls == [0, 1, 2, 1]


def test_a_transaction_that_rolls_back_keeps_what_another_run_rewrote(
    make_store: MakeStore,
) -> None:
    store = make_store()
    calls: list[int] = []

    @xpersist_task(store=store, target="shared.json", serializer="json")
    def shared() -> int:
        calls.append(1)
        return len(calls)

    @flow(name="rewritten-flow")
    def rewritten_flow() -> None:
        with transaction() as txn:
            shared()
            store.put("shared.json", 99, serializer="json", on_duplicate_key="overwrite")
            txn.rollback()

    rewritten_flow()
    assert store.get("shared.json") == 99, "a value the transaction did not write stays"


def test_isolation_level_of_the_enclosing_transaction_is_honoured(make_store: MakeStore) -> None:
    store = make_store()
    locked: list[bool] = []

    def body() -> int:
        locked.append(store.key_lock("iso.json").locked())
        return 1

    inherits = xpersist_task(body, store=store, target="iso.json", serializer="json")
    explicit = xpersist_task(
        body,
        store=store,
        target="iso.json",
        serializer="json",
        isolation_level=IsolationLevel.SERIALIZABLE,
        refresh_cache=True,
    )

    @flow(name="isolation-flow")
    def isolation_flow() -> None:
        with transaction(isolation_level=IsolationLevel.SERIALIZABLE):
            inherits()
        explicit()
        inherits.with_options(refresh_cache=True)()  # READ_COMMITTED: no lock

    isolation_flow()
    assert locked == [True, True, False]
    assert not store.key_lock("iso.json").locked(), "the lock is released after the run"


# -- the plain body ------------------------------------------------------------------------------


def test_fn_is_the_plain_body(make_store: MakeStore) -> None:
    store = make_store()
    calls: list[int] = []

    @xpersist_task(store=store, target="plain/{parameters[x]}.json", serializer="json")
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    @xpersist_task(store=store, target="plain/async-{parameters[x]}.json", serializer="json")
    async def adouble(x: int) -> int:
        calls.append(-x)
        return 2 * x

    assert double.fn(3) == 6 and double.fn(3) == 6
    assert asyncio.run(adouble.fn(4)) == 8
    assert calls == [3, 3, -4]
    assert store.keys() == [], "task.fn must not touch the store"
    assert double.fn.__name__ == "double" and not hasattr(double.fn, "__wrapped__")
    assert double(3) == 6 and store.keys() == ["plain/3.json"]  # the task itself caches


# -- async, retries, map -------------------------------------------------------------------------


def test_async_task_with_prefect_options(make_store: MakeStore) -> None:
    store = make_store()
    calls: list[str] = []

    @xpersist_task(
        store=store,
        target="async/{parameters[name]}.json",
        serializer="json",
        cache_expiration=timedelta(hours=1),
    )
    async def fetch(name: str) -> dict[str, Any]:
        await asyncio.sleep(0)
        calls.append(name)
        return {"name": name, "n": len(calls)}

    refreshing = fetch.with_options(refresh_cache=True)

    @flow(name="async-options")
    async def async_flow() -> list[Any]:
        first = await fetch("a", return_state=True)
        second = await fetch("a", return_state=True)
        third = await refreshing("a", return_state=True)
        try:
            with transaction():
                await fetch("b")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        return [first, second, third]

    states = asyncio.run(async_flow())
    assert [s.name for s in states] == ["Completed", "Cached", "Completed"]
    assert [s.result()["n"] for s in states] == [1, 1, 2]
    assert calls == ["a", "a", "b"]
    assert store.keys() == ["async/a.json"], "the rolled-back async value was removed"
    assert store.get_artifact("async/a.json").expires_at is not None


def test_retries_and_map_on_each_backend(make_store: MakeStore) -> None:
    store = make_store(on_duplicate_key="raise_error")
    attempts: list[int] = []

    @xpersist_task(store=store, target="map/{parameters[i]}.json", serializer="json", retries=2)
    def flaky_square(i: int) -> int:
        attempts.append(i)
        if attempts.count(i) < 2:
            raise RuntimeError("transient")
        return i * i

    @flow(name="retry-map-flow")
    def retry_map_flow() -> list[Any]:
        return flaky_square.map(i=[1, 2, 3], return_state=True)

    states = retry_map_flow()
    assert [s.name for s in states] == ["Completed"] * 3
    assert [s.result() for s in states] == [1, 4, 9]
    assert sorted(attempts) == [1, 1, 2, 2, 3, 3], "each element failed once, then stored once"
    states = retry_map_flow()
    assert [s.name for s in states] == ["Cached"] * 3
    assert len(attempts) == 6
    assert store.keys() == ["map/1.json", "map/2.json", "map/3.json"]
