"""Writers of an S3 store (the moto server) killed with SIGKILL mid-put.

On an object store a payload is written in place, at its key, under the key's write lock, and
sealed by a commit token written last (see the write protocol in docs/design.md). Each writer
here is a real process (spawned: s3fs does not survive a fork) that overwrites one zarr
payload; the test kills it after a random delay, or the writer kills itself at a precise step of
the protocol. After every kill a reader, through the store, gets the old or the new complete
dataset, never a mix of chunks, and ``gc`` reclaims what the killed writers left.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

import fsspec
import numpy as np
import pytest
import xarray as xr

from tests.helpers import run_until_killed
from xpersist_sql import ArtifactNotFoundError, CacheStore, PayloadMissingError
from xpersist_sql.storage import PayloadStorage

KEY = "runs/big.zarr"
SHAPE = (40, 50, 50)  # 40 chunks of 20 kB
RANDOM_KILLS = 6
CTX = multiprocessing.get_context("spawn")

S3Store = Callable[..., CacheStore]


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
    assert np.array_equal(value["v"].values, dataset(version)["v"].values), (
        f"payload mixes or lacks chunks of v{version}"
    )
    return version


# -- the writer processes -----------------------------------------------------------------------
def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _inject(step: str) -> None:
    """Make this (child) process kill itself at ``step`` of the in-place write protocol."""
    if step in ("after-take", "after-seal"):
        name = "take" if step == "after-take" else "seal"
        original = getattr(PayloadStorage, name)

        def method_then_die(self: PayloadStorage, *args: Any) -> Any:
            original(self, *args)
            _kill_self()

        setattr(PayloadStorage, name, method_then_die)
    elif step == "mid-dump":
        original_pipe = PayloadStorage.seal

        def die_before_seal(self: PayloadStorage, path: str) -> Any:
            # half the chunks gone from the new payload: a partial write, no token
            fs = self.fs
            chunks = sorted(name for name in fs.find(path) if "/v/c/" in name)
            fs.rm(chunks[: len(chunks) // 2])
            _kill_self()
            return original_pipe(self, path)  # pragma: no cover

        PayloadStorage.seal = die_before_seal  # type: ignore[method-assign]
    elif step == "after-commit":

        def die_instead_of_purging(self: PayloadStorage, path: str | None) -> None:
            if path:
                _kill_self()

        PayloadStorage.purge = die_instead_of_purging  # type: ignore[method-assign]
    else:  # pragma: no cover
        raise ValueError(step)


def _writer(store: CacheStore, version: int, step: str | None, ready: Any) -> None:
    if step is not None:
        _inject(step)
    ready.send("go")
    put_big(store, KEY, version)
    ready.send("done")
    time.sleep(600)  # wait for the SIGKILL, so that every writer ends the same way


def run_writer(
    store: CacheStore, version: int, *, step: str | None = None, delay: float = 0
) -> float:
    """Run one writer; SIGKILL it ``delay`` s after it starts (``step``: it kills itself)."""
    return run_until_killed(
        CTX,
        _writer,
        (store, version, step),
        kills_itself=step is not None,
        delay=delay,
        timeout=120,
    )


# -- checks ------------------------------------------------------------------------------------
def check_reader(store: CacheStore, old: int, new: int) -> int:
    """A reader through the store gets the old or the new complete value; returns which."""
    got = version_of(store.get(KEY))
    assert got in (old, new)
    artifact = store.get_artifact(KEY)
    assert artifact.additional_metadata["version"] == got
    assert store._backend.payload_matches(artifact)  # row and payload agree again
    return got


def internal_objects(store: CacheStore, options: dict[str, Any]) -> list[str]:
    fs = fsspec.filesystem("s3", **options)
    fs.invalidate_cache()
    found: list[str] = []
    for sub in ("staging", "trash"):
        url = f"{store.path}/.xpersist_sql/{sub}"
        found += fs.find(url) if fs.exists(url) else []
    return sorted(found)


def reclaim(store: CacheStore) -> list[str]:
    """Reclaim the killed writers' leftovers: ``dry_run`` lists exactly what gc removes."""
    planned = store.gc(older_than=0, dry_run=True)
    removed = store.gc(older_than=0)
    assert {(i.kind, i.path) for i in removed.items} == {(i.kind, i.path) for i in planned.items}
    assert removed.skipped == []
    return [item.path for item in removed.items]


# -- the tests ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_s3_overwriting_writer_killed_at_random_points(
    s3_store: S3Store, s3_storage_options: dict[str, Any]
) -> None:
    store = s3_store(on_duplicate_key="overwrite")
    put_big(store, KEY, 0)
    full = run_writer(store, 1, delay=300)  # calibration: a put that completes
    current = check_reader(store, 0, 1)
    assert current == 1
    rng = random.Random(11)
    outcomes = {"old": 0, "new": 0}
    for repetition in range(RANDOM_KILLS):
        version = repetition + 2
        run_writer(store, version, delay=rng.uniform(0.2, full * 1.1))
        got = check_reader(store, current, version)
        outcomes["new" if got == version else "old"] += 1
        current = got
    print(
        f"\nS3 kill test: {RANDOM_KILLS} SIGKILLs over 0.2-{full * 1.1:.2f} s of a {full:.2f} s "
        f"put; reader got old={outcomes['old']} new={outcomes['new']}"
    )
    reclaim(store)
    assert internal_objects(store, s3_storage_options) == []
    assert check_reader(store, current, current) == current
    assert store.keys() == [KEY]


@pytest.mark.parametrize("step", ["after-take", "mid-dump", "after-seal", "after-commit"])
def test_s3_overwriting_writer_killed_at_each_step(
    s3_store: S3Store, s3_storage_options: dict[str, Any], step: str
) -> None:
    store = s3_store(on_duplicate_key="overwrite")
    put_big(store, KEY, 0)
    run_writer(store, 1, step=step)
    expected = 1 if step == "after-commit" else 0
    if step != "after-commit":
        # a readonly reader cannot move the old payload back: it refuses what lies at the key
        with pytest.raises(PayloadMissingError, match="killed"):
            s3_store(readonly=True).get(KEY)
    assert check_reader(store, 0, 1) == expected
    assert version_of(s3_store().get(KEY)) == expected  # another store object agrees
    assert version_of(s3_store(readonly=True).get(KEY)) == expected
    reclaim(store)
    assert internal_objects(store, s3_storage_options) == []
    assert check_reader(store, expected, expected) == expected
    put_big(store, KEY, 2)  # and the store keeps working
    assert check_reader(store, expected, 2) == 2
    assert store.keys() == [KEY]


def test_s3_new_key_writer_killed_leaves_no_row(
    s3_store: S3Store, s3_storage_options: dict[str, Any]
) -> None:
    store = s3_store()
    store.put("other.json", {"kept": True}, serializer="json")
    run_writer(store, 0, step="after-seal")  # the payload is complete and sealed, no row
    with pytest.raises(ArtifactNotFoundError):
        store.get(KEY)
    fs = fsspec.filesystem("s3", **s3_storage_options)
    fs.invalidate_cache()
    storage = PayloadStorage(store.path, s3_storage_options)
    token = storage.token_path(storage.path(KEY))
    assert fs.exists(token)  # sealed: its token is outside the payload, which holds zarr only
    assert not any(".xpersist" in name for name in fs.find(f"{store.path}/{KEY}"))
    assert reclaim(store) == ["runs"]  # the unindexed payload is an orphan
    fs.invalidate_cache()
    assert not fs.exists(f"{store.path}/{KEY}")
    assert not fs.exists(token)  # removed with it
    assert store.get("other.json") == {"kept": True}  # nothing else moved
    put_big(store, KEY, 3)
    assert check_reader(store, 3, 3) == 3
