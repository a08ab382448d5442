"""The Prefect ``LockManager`` backed by the store, under Prefect's SERIALIZABLE transactions."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect.filesystems import LocalFileSystem
from prefect.locking.protocol import LockManager
from prefect.results import ResultStore
from prefect.transactions import IsolationLevel, transaction

from xpersist_sql import CacheStore
from xpersist_sql.prefect import StoreLockManager

MakeStore = Callable[..., CacheStore]
N_WORKERS = 6
KEY = "answer-transaction"


def _serializable_worker(args: tuple[CacheStore, str, str, Any]) -> tuple[str, Any]:
    """Prefect's own cache pattern: a SERIALIZABLE transaction on one key."""
    store, results_dir, counter, barrier = args
    result_store = ResultStore(
        result_storage=LocalFileSystem(basepath=results_dir),
        lock_manager=StoreLockManager(store),
    )
    barrier.wait(timeout=120)
    with transaction(
        key=KEY, store=result_store, isolation_level=IsolationLevel.SERIALIZABLE
    ) as txn:
        if txn.is_committed():
            record = txn.read()
            assert record is not None
            return "read", record.result
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # the other workers block in begin() meanwhile
        value = {"answer": 42, "by": os.getpid()}
        txn.stage(value)
        return "computed", value


def test_serializable_transactions_compute_once_across_processes(
    make_store: MakeStore, tmp_path: Path
) -> None:
    store = make_store()
    len(store)
    counter = tmp_path / "computations.txt"
    results_dir = str(tmp_path / "prefect-results")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(N_WORKERS)
        with ctx.Pool(N_WORKERS) as pool:
            outcomes = pool.map(
                _serializable_worker,
                [(store, results_dir, str(counter), barrier)] * N_WORKERS,
            )
    kinds = sorted(kind for kind, _ in outcomes)
    assert kinds == ["computed"] + ["read"] * (N_WORKERS - 1)
    assert len(counter.read_text().splitlines()) == 1
    assert len({value["by"] for _, value in outcomes}) == 1


def _hold(store: CacheStore, ready: Any) -> None:
    manager = StoreLockManager(store)
    assert manager.acquire_lock(KEY, holder="child")
    ready.send("held")
    time.sleep(600)


def test_protocol_across_processes(make_store: MakeStore) -> None:
    store = make_store()
    manager = StoreLockManager(store)
    assert isinstance(manager, LockManager)
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_hold, args=(store, sender))
    child.start()
    assert receiver.poll(60) and receiver.recv() == "held"
    assert manager.is_locked(KEY)
    assert not manager.is_lock_holder(KEY, "parent")
    assert manager.acquire_lock(KEY, holder="parent", acquire_timeout=0.2) is False
    assert manager.wait_for_lock(KEY, timeout=0.2) is False
    child.kill()  # SIGKILL: the lock dies with its holder
    child.join(30)
    assert manager.wait_for_lock(KEY, timeout=30)
    assert manager.acquire_lock(KEY, holder="parent", acquire_timeout=10)
    assert manager.is_lock_holder(KEY, "parent") and manager.is_locked(KEY)
    assert manager.acquire_lock(KEY, holder="parent", acquire_timeout=0)  # already held: True
    with pytest.raises(ValueError, match="No lock held by someone-else"):
        manager.release_lock(KEY, holder="someone-else")
    manager.release_lock(KEY, holder="parent")
    assert not manager.is_locked(KEY) and not manager.is_lock_holder(KEY, "parent")
    with pytest.raises(ValueError, match="No lock held by parent"):
        manager.release_lock(KEY, holder="parent")


def test_hold_timeout_releases_the_lock(make_store: MakeStore) -> None:
    manager = StoreLockManager(make_store())
    assert manager.acquire_lock(KEY, holder="a", hold_timeout=0.2)
    assert manager.wait_for_lock(KEY, timeout=30)  # freed by the hold timeout
    assert not manager.is_lock_holder(KEY, "a")
    assert manager.acquire_lock(KEY, holder="b", acquire_timeout=0)
    manager.release_lock(KEY, holder="b")


def test_async_methods(make_store: MakeStore) -> None:
    manager = StoreLockManager(make_store())

    async def scenario() -> None:
        assert await manager.aacquire_lock(KEY, holder="a", acquire_timeout=1)
        assert await manager.await_for_lock(KEY, timeout=0.1) is False
        manager.release_lock(KEY, holder="a")
        assert await manager.await_for_lock(KEY, timeout=1)

    asyncio.run(scenario())


def test_pickles_and_compares_by_store(make_store: MakeStore) -> None:
    store = make_store()
    manager = StoreLockManager(store)
    assert manager.acquire_lock(KEY, holder="a")
    clone = pickle.loads(pickle.dumps(manager))
    assert clone == manager and hash(clone) == hash(manager)
    assert not clone.is_lock_holder(KEY, "a")  # locks stay with the process that took them
    assert clone.is_locked(KEY)
    manager.release_lock(KEY, holder="a")
    other = StoreLockManager(make_store(store.path + "-other"))
    assert other != manager  # another store: another lock namespace
    assert "StoreLockManager(CacheStore(" in repr(manager)
