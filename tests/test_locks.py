"""Key locks across processes: compute once, released when the holder dies, clear timeouts."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from xpersist_sql import CacheStore, InvalidKeyError, LockTimeoutError
from xpersist_sql.db.locks import (
    AdvisoryLock,
    FileKeyLock,
    advisory_lock_id,
    key_lock,
    lock_filename,
    wait_until_free,
)
from xpersist_sql.storage import HIDDEN_DIR

MakeStore = Callable[..., CacheStore]
N_WORKERS = 8
KEY = "results/expensive.json"


def _compute_once(args: tuple[CacheStore, str, Any]) -> tuple[str, Any]:
    """A worker: take the lock; compute and put if the key is missing, else read it."""
    store, counter, barrier = args
    barrier.wait(timeout=120)
    with store.lock(KEY, timeout=120):
        if KEY in store:
            return "read", store.get(KEY)
        with open(counter, "a") as f:  # one line per computation
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # the others arrive meanwhile and wait
        value = {"answer": 42, "by": os.getpid()}
        store.put(KEY, value, serializer="json")
        return "computed", value


def test_workers_asking_for_a_missing_key_compute_it_once(
    make_store: MakeStore, tmp_path: Path
) -> None:
    store = make_store()
    len(store)  # create the index first
    counter = tmp_path / "computations.txt"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(N_WORKERS)
        with ctx.Pool(N_WORKERS) as pool:
            outcomes = pool.map(_compute_once, [(store, str(counter), barrier)] * N_WORKERS)
    kinds = [kind for kind, _ in outcomes]
    assert kinds.count("computed") == 1 and kinds.count("read") == N_WORKERS - 1
    assert len(counter.read_text().splitlines()) == 1
    values = [value for _, value in outcomes]
    assert all(value == values[0] for value in values)
    assert store.get(KEY) == values[0]


def _hold_until_killed(store: CacheStore, key: str, ready: Any) -> None:
    with store.lock(key):
        ready.send("locked")
        time.sleep(600)


def test_lock_of_a_killed_holder_is_released(make_store: MakeStore) -> None:
    store = make_store()
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    holder = ctx.Process(target=_hold_until_killed, args=(store, KEY, sender))
    holder.start()
    assert receiver.poll(60) and receiver.recv() == "locked"
    assert store.key_lock(KEY).locked()
    with pytest.raises(LockTimeoutError) as info, store.lock(KEY, timeout=0.2):
        pass
    message = str(info.value)
    assert repr(KEY) in message and store.path in message and "timeout=None" in message
    assert isinstance(info.value, TimeoutError)
    with pytest.raises(LockTimeoutError), store.lock(KEY, timeout=0):
        pass
    holder.kill()  # SIGKILL
    holder.join(30)
    assert holder.exitcode == -signal.SIGKILL
    with store.lock(KEY, timeout=30):  # freed by the holder's death, not by a timeout
        assert store.key_lock(KEY).locked()
    assert not store.key_lock(KEY).locked()


def _try_lock(store: CacheStore, key: str, queue: Any) -> None:
    try:
        with store.lock(key, timeout=0):
            queue.put("acquired")
    except LockTimeoutError:
        queue.put("busy")


def _other_process_can_lock(store: CacheStore, key: str) -> bool:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_try_lock, args=(store, key, queue))
    proc.start()
    answer = queue.get(timeout=60)
    proc.join(30)
    return bool(answer == "acquired")


def test_keys_lock_independently(make_store: MakeStore) -> None:
    store = make_store()
    with store.lock("a.zarr"):
        assert not _other_process_can_lock(store, "a.zarr")
        # same stem, other suffix; nested keys; a prefix of the key: all independent
        for other in ("a.nc", "a", "runs/2024/a.zarr", "a.zarr/x"):
            assert _other_process_can_lock(store, other), other
    assert _other_process_can_lock(store, "a.zarr")


def test_lock_is_not_reentrant_across_lock_objects(make_store: MakeStore) -> None:
    store = make_store()
    with store.lock(KEY), pytest.raises(LockTimeoutError), store.lock(KEY, timeout=0.1):
        pass
    first = store.key_lock(KEY)
    first.acquire()
    with pytest.raises(RuntimeError, match="already held by this object"):
        first.acquire()
    assert first.held
    first.release()
    first.release()  # releasing twice is harmless
    assert not first.held and not first.locked()


def test_sqlite_lock_files_are_hashed_next_to_the_index(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "store")
    keys = ["a.zarr", "a.nc", "runs/2024/a.zarr"]
    names = {lock_filename(key) for key in keys}
    assert len(names) == 3 and all("/" not in name and "zarr" not in name for name in names)
    locks_dir = tmp_path / "store" / HIDDEN_DIR / "locks"
    for key in keys:
        lock = store.key_lock(key)
        assert isinstance(lock, FileKeyLock)
        with store.lock(key):
            assert lock.path == locks_dir / lock_filename(key) and lock.path.is_file()
    # an index elsewhere keeps its locks next to itself
    other = CacheStore(
        tmp_path / "payloads", database_url=f"sqlite:///{tmp_path / 'db' / 'index.sqlite'}"
    )
    lock = other.key_lock("x.json")
    assert isinstance(lock, FileKeyLock) and lock.path.parent == tmp_path / "db" / "locks"


def test_postgres_locks_are_advisory(postgres_url: str, tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "store", database_url=postgres_url)
    lock = store.key_lock(KEY)
    assert isinstance(lock, AdvisoryLock) and lock.lock_id == advisory_lock_id(KEY)
    assert -(2**63) <= lock.lock_id < 2**63
    with store.lock(KEY), store.engine.connect() as conn:
        held = conn.scalar(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid::bigint = :high AND objid::bigint = :low AND objsubid = 1"
            ),
            {"high": (lock.lock_id >> 32) & 0xFFFFFFFF, "low": lock.lock_id & 0xFFFFFFFF},
        )
        assert held == 1
    assert not lock.locked()
    store.close()


def test_wait_until_free(make_store: MakeStore) -> None:
    store = make_store()
    lock = store.key_lock(KEY)
    assert wait_until_free(lock, timeout=0)
    with store.lock(KEY):
        assert not wait_until_free(store.key_lock(KEY), timeout=0.2)


def test_lock_errors(make_store: MakeStore) -> None:
    store = make_store()
    with pytest.raises(InvalidKeyError, match="relative"), store.lock("/etc/passwd"):
        pass
    engine = sa.create_engine("sqlite://")
    with pytest.raises(ValueError, match="neither PostgreSQL nor a SQLite file"):
        key_lock(engine, "k", store="mem")
    engine.dispose()
