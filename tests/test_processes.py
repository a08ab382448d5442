"""Stores shared between processes: spawn (pickled), fork, and the first open of a new index."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from xpersist_sql import CacheStore, DuplicateKeyError
from xpersist_sql.storage import HIDDEN_DIR

MakeStore = Callable[..., CacheStore]
N_PROCESSES = 8


def _open_and_put(args: tuple[str, str | None, int, Any]) -> str:
    path, url, i, barrier = args
    barrier.wait(timeout=60)
    store = CacheStore(path, database_url=url)
    store.put(f"k{i}.json", {"i": i}, serializer="json")
    return ",".join(store.keys())


def test_eight_processes_open_a_brand_new_store_at_once(
    tmp_path: Path, database_url: str | None
) -> None:
    ctx = multiprocessing.get_context("spawn")
    path = str(tmp_path / "brand-new")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(N_PROCESSES)
        with ctx.Pool(N_PROCESSES) as pool:
            results = pool.map(
                _open_and_put, [(path, database_url, i, barrier) for i in range(N_PROCESSES)]
            )
    assert len(results) == N_PROCESSES  # no process raised
    store = CacheStore(path, database_url=database_url)
    assert store.keys() == sorted(f"k{i}.json" for i in range(N_PROCESSES))


def _read_in_child(store: CacheStore, key: str, queue: Any) -> None:
    try:
        value = store.get(key)
        store.put(f"from-{os.getpid()}.json", {"child": True}, serializer="json")
        queue.put(("ok", value))
    except BaseException as exc:  # report, do not hang the parent
        queue.put(("error", repr(exc)))


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_store_used_from_another_process(store: CacheStore, method: str) -> None:
    store.put("shared.json", {"v": 1}, serializer="json")
    assert len(store) == 1  # the parent's engine exists before the child starts
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(store, "shared.json", queue))
    child.start()
    status, value = queue.get(timeout=120)
    child.join(timeout=60)
    assert (status, value) == ("ok", {"v": 1})
    if method == "spawn":
        # A forked child inherits the threads of whatever else runs in the test process (the
        # session's Prefect server): its exit code says more about them than about the store.
        assert child.exitcode == 0
    # the parent's connections still work after the child exited
    assert len(store) == 2
    assert store.get(f"from-{child.pid}.json") == {"child": True}


def _put_same_key(args: tuple[str, str | None, str, int, Any]) -> str:
    path, url, policy, i, barrier = args
    store = CacheStore(path, database_url=url, on_duplicate_key=policy)
    barrier.wait(timeout=60)
    try:
        store.put("race.json", {"writer": i}, serializer="json")
    except DuplicateKeyError:
        return "duplicate"
    return "written"


@pytest.mark.parametrize("policy", ["raise_error", "skip"])
def test_racing_writers_are_decided_by_the_database(
    make_store: MakeStore, database_url: str | None, policy: str
) -> None:
    store = make_store(on_duplicate_key=policy)
    len(store)  # create the schema first
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(N_PROCESSES)
        with ctx.Pool(N_PROCESSES) as pool:
            outcomes = pool.map(
                _put_same_key,
                [(store.path, database_url, policy, i, barrier) for i in range(N_PROCESSES)],
            )
    if policy == "raise_error":
        assert sorted(outcomes).count("written") == 1
        assert outcomes.count("duplicate") == N_PROCESSES - 1
    else:
        assert outcomes == ["written"] * N_PROCESSES
    assert store.keys() == ["race.json"]
    assert store.get("race.json")["writer"] in range(N_PROCESSES)
    assert not any(Path(store.path, HIDDEN_DIR, "staging").iterdir())


CRASHING_WRITER = textwrap.dedent(
    """
    import sys, time
    from xpersist_sql import CacheStore
    from xpersist_sql.serializers import Serializer, register_serializer

    @register_serializer("slow.bytes")
    class Slow(Serializer):
        def dump(self, value, fs, path, **kwargs):
            with fs.open(path, "wb") as f:
                f.write(b"partial")
                f.flush()
                print("writing", flush=True)
                time.sleep(60)
                f.write(value)
        def load(self, fs, path, **kwargs):
            with fs.open(path, "rb") as f:
                return f.read()

    store = CacheStore(sys.argv[1], database_url=sys.argv[2] or None)
    store.put("victim.bin", b"complete", serializer="slow.bytes")
    """
)


def test_writer_killed_mid_put_leaves_no_row(store: CacheStore, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(CRASHING_WRITER)
    url = "" if store.database_url.startswith("sqlite") else store.database_url
    proc = subprocess.Popen(
        [sys.executable, str(script), store.path, url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert store.keys() == []
    assert "victim.bin" not in store
    assert not Path(store.path, "victim.bin").exists()
    # the partial payload stays in staging, out of the key space, for gc
    staged = list(Path(store.path, HIDDEN_DIR, "staging").rglob("*victim.bin"))
    assert len(staged) == 1 and staged[0].read_bytes() == b"partial"
    # and the store is fully usable afterwards
    store.put("victim.bin", b"ok", serializer="pickle")
    assert store.get("victim.bin") == b"ok"


def test_one_store_shared_by_threads(store: CacheStore) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store.put("shared.json", {"shared": True}, serializer="json")

    def work(worker: int) -> list[int]:
        seen = []
        for i in range(15):
            store.put(f"t{worker}/{i}.json", {"w": worker, "i": i}, serializer="json")
            seen.append(store.get(f"t{worker}/{i}.json")["i"])
            assert store.get("shared.json") == {"shared": True}
        return seen

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert results == [list(range(15))] * 8
    assert len(store) == 8 * 15 + 1


def test_the_process_id_is_known_again_in_a_forked_child() -> None:
    # connections and locks are tied to current_pid(), read without a system call
    from xpersist_sql._process import current_pid

    assert current_pid() == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write, f"{current_pid()} {os.getpid()}".encode())
        os._exit(0)
    os.close(write)
    reported = os.read(read, 100).decode().split()
    os.close(read)
    os.waitpid(child, 0)
    assert reported[0] == reported[1] == str(child)
    assert current_pid() == os.getpid() != child
