"""Writers killed with SIGKILL mid-put: the index never points at a partial payload.

Each writer is a real process (forked from the test, so it starts in milliseconds) that
overwrites one large zarr payload; the test kills it with SIGKILL after a random delay, or the
writer kills itself at a precise step of the publish protocol. After every kill a reader, through
the store, must get the old or the new complete dataset (never a mix of chunks, never a partial
payload), and what the killed writers leave behind must be reclaimable.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from tests.helpers import run_until_killed
from xpersist_sql import ArtifactNotFoundError, CacheStore
from xpersist_sql import storage as storage_module
from xpersist_sql.storage import HIDDEN_DIR, PayloadStorage

MakeStore = Callable[..., CacheStore]
KEY = "runs/big.zarr"
SHAPE = (240, 100, 100)  # 240 chunks of 80 kB: about 19 MB per payload
RANDOM_KILLS = 20
CTX = multiprocessing.get_context("fork")


def dataset(version: int) -> xr.Dataset:
    values = np.random.default_rng(version).normal(size=SHAPE)
    return xr.Dataset({"v": (("t", "y", "x"), values)}, attrs={"version": version})


def put_big(store: CacheStore, key: str, version: int) -> None:
    store.put(
        key,
        dataset(version),
        dump_kwargs={"encoding": {"v": {"chunks": (1, SHAPE[1], SHAPE[2])}}},
        additional_metadata={"version": version},
    )


def version_of(value: xr.Dataset) -> int:
    """The version whose every chunk ``value`` holds; fails on a mix or a partial payload."""
    version = int(value.attrs["version"])
    loaded = value["v"].values
    expected = dataset(version)["v"].values
    assert np.array_equal(loaded, expected), f"payload mixes or lacks chunks of v{version}"
    return version


# -- the writer processes -----------------------------------------------------------------------
def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _inject(step: str) -> None:
    """Make this (child) process kill itself at ``step`` of the put/delete protocol."""
    if step == "after-exchange":
        original = storage_module.exchange_paths

        def exchange_then_die(first: str, second: str) -> bool:
            done = original(first, second)
            _kill_self()
            return done

        storage_module.exchange_paths = exchange_then_die  # type: ignore[assignment]
    elif step in ("after-publish", "after-take"):
        name = "publish" if step == "after-publish" else "take"
        original_method = getattr(PayloadStorage, name)

        def method_then_die(self: PayloadStorage, *args: Any) -> Any:
            original_method(self, *args)
            _kill_self()

        setattr(PayloadStorage, name, method_then_die)
    elif step == "after-commit":

        def die_instead_of_purging(self: PayloadStorage, path: str | None) -> None:
            _kill_self()

        PayloadStorage.purge = die_instead_of_purging  # type: ignore[method-assign]
    else:  # pragma: no cover
        raise ValueError(step)


def _writer(store: CacheStore, version: int, step: str | None, ready: Any) -> None:
    if step is not None:
        _inject(step)
    ready.send("go")
    if step == "after-take":
        store.delete(KEY)
    else:
        put_big(store, KEY, version)
    ready.send("done")
    time.sleep(600)  # wait for the SIGKILL, so that every writer ends the same way


def run_writer(
    store: CacheStore, version: int, *, step: str | None = None, delay: float = 0
) -> float:
    """Run one writer; SIGKILL it ``delay`` seconds after it starts (``step``: it kills itself)."""
    return run_until_killed(
        CTX,
        _writer,
        (store, version, step),
        kills_itself=step is not None,
        delay=delay,
        timeout=60,
    )


# -- checks ------------------------------------------------------------------------------------
def check_raw_state(store: CacheStore, allowed: set[int]) -> None:
    """Without the store's repair: the row's payload is complete, at the key or moved away."""
    artifact = store.get_artifact(KEY)
    storage = store._storage
    if store._backend.payload_matches(artifact):
        payload = storage.path(KEY)
    else:
        assert artifact.fingerprint is not None
        found = storage.find_displaced(KEY, artifact.fingerprint)
        assert found is not None, "the row points at a payload that is nowhere"
        payload = found
    assert version_of(xr.open_zarr(payload, chunks=None)) == artifact.additional_metadata["version"]
    if Path(storage.path(KEY)).exists():  # whatever lies at the key is complete too
        assert version_of(xr.open_zarr(storage.path(KEY), chunks=None)) in allowed


def check_reader(store: CacheStore, old: int, new: int) -> int:
    """A reader through the store gets the old or the new complete value; returns which."""
    value = store.get(KEY)
    got = version_of(value)
    assert got in (old, new)
    artifact = store.get_artifact(KEY)
    assert artifact.additional_metadata["version"] == got
    assert store._backend.payload_matches(artifact)  # row and payload agree again
    return got


def leftovers(store: CacheStore) -> list[Path]:
    hidden = Path(store.path, HIDDEN_DIR)
    return sorted(
        p
        for sub in ("staging", "trash")
        if (hidden / sub).exists()
        for p in (hidden / sub).iterdir()
    )


def reclaim(store: CacheStore) -> list[str]:
    """Reclaim the killed writers' leftovers with gc: ``dry_run`` lists exactly what it removes."""
    planned = store.gc(older_than=0, dry_run=True)
    removed = store.gc(older_than=0)
    assert {(i.kind, i.path) for i in removed.items} == {(i.kind, i.path) for i in planned.items}
    assert removed.skipped == []
    return [item.path for item in removed.items]


# -- the tests ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_overwriting_writer_killed_at_random_points(make_store: MakeStore) -> None:
    store = make_store(on_duplicate_key="overwrite")
    put_big(store, KEY, 0)
    current = 0
    full = run_writer(store, 1, delay=120)  # calibration: a put that completes
    current = check_reader(store, current, 1)
    assert current == 1
    rng = random.Random(5)
    outcomes: dict[str, int] = {"old": 0, "new": 0}
    for repetition in range(RANDOM_KILLS):
        version = repetition + 2
        delay = rng.uniform(0, full * 1.1)
        run_writer(store, version, delay=delay)
        check_raw_state(store, {current, version})
        got = check_reader(store, current, version)
        outcomes["new" if got == version else "old"] += 1
        current = got
    print(
        f"\nkill test ({store.database_url.split(':')[0]}): {RANDOM_KILLS} SIGKILLs over "
        f"0-{full * 1.1:.2f} s of a {full:.2f} s put; reader got old={outcomes['old']} "
        f"new={outcomes['new']}, leftovers={len(leftovers(store))}"
    )
    assert outcomes["old"] > 0  # some kills landed before the commit
    before = leftovers(store)
    reclaimed = reclaim(store)  # gc lists (dry run), then removes, every leftover
    assert {Path(store.path, path) for path in reclaimed} >= set(before)
    assert leftovers(store) == []
    assert check_reader(store, current, current) == current
    assert store.keys() == [KEY]


@pytest.mark.parametrize("step", ["after-exchange", "after-publish", "after-commit"])
def test_overwriting_writer_killed_at_each_publish_step(make_store: MakeStore, step: str) -> None:
    store = make_store(on_duplicate_key="overwrite")
    put_big(store, KEY, 0)
    run_writer(store, 1, step=step)
    check_raw_state(store, {0, 1})
    expected = 1 if step == "after-commit" else 0
    assert check_reader(store, 0, 1) == expected
    # a second reader, through another store object, agrees
    assert version_of(make_store().get(KEY)) == expected
    if step != "after-commit":
        # the read that put the old payload back swapped it with the killed writer's new one,
        # then removed that: nothing is left over
        assert leftovers(store) == []
    else:
        assert leftovers(store)  # the killed writer's staging or trash entry is left ...
    reclaim(store)  # ... and reclaimable
    assert leftovers(store) == []
    assert check_reader(store, expected, expected) == expected
    # and the store keeps working
    put_big(store, KEY, 2)
    assert check_reader(store, expected, 2) == 2


def test_deleting_writer_killed_before_commit(make_store: MakeStore) -> None:
    store = make_store()
    put_big(store, KEY, 0)
    run_writer(store, 0, step="after-take")
    # the row survived (the delete rolled back); a reader gets the whole value back
    assert check_reader(store, 0, 0) == 0
    store.delete(KEY)
    with pytest.raises(ArtifactNotFoundError, match=r"runs/big\.zarr"):
        store.get(KEY)


def test_new_key_writer_killed_at_random_points(make_store: MakeStore) -> None:
    store = make_store()
    store._rows(create=True)  # a store even if every writer is killed before its first put
    rng = random.Random(7)
    written = 0
    for repetition in range(8):
        if KEY in store:
            store.delete(KEY)
        run_writer(store, repetition, delay=rng.uniform(0, 0.4))
        if KEY in store:
            written += 1
            assert check_reader(store, repetition, repetition) == repetition
        else:  # no row: whatever is at the key is unindexed garbage, never served
            with pytest.raises(ArtifactNotFoundError):
                store.get(KEY)
    reclaim(store)
    assert leftovers(store) == []
    assert written <= 8
