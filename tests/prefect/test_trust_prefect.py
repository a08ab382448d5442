"""Loads are safe and honest inside xpersist_task, through real Prefect flows.

- a row written with another serializer than the task declares is a miss (recompute, overwrite,
  warning), and its payload is never loaded: a pickle a co-writer stored under a JSON task's key
  runs nothing;
- a payload changed behind the index's back is a miss with a warning, never a silent value;
- a missing package fails the task without recomputing or overwriting anything.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from prefect import flow

from tests.test_trust import co_write
from xpersist_sql import CacheStore, MissingDependencyError
from xpersist_sql.prefect import xpersist_task


@pytest.mark.parametrize("declared", ["json", "auto"])
def test_a_co_writers_pickle_under_the_tasks_key_is_a_miss_and_runs_nothing(
    db_store: CacheStore, tmp_path: Path, task_logs: Any, declared: str
) -> None:
    marker = tmp_path / "code-ran"
    co_write(db_store, "answer.json", "pickle", marker)
    calls: list[int] = []

    @xpersist_task(store=db_store, target="answer.json", serializer=declared)
    def answer() -> dict[str, int]:
        calls.append(1)
        return {"answer": 42}

    @flow
    def run() -> dict[str, int]:
        return answer()

    assert run() == {"answer": 42}
    assert calls == [1]  # recomputed
    assert not marker.exists()  # the pickle was never loaded
    artifact = db_store.get_artifact("answer.json")
    expected = "json" if declared == "json" else "joblib"
    assert artifact.serializer == expected  # overwritten with the task's own serializer
    warnings = task_logs.messages(logging.WARNING)
    assert any("'answer.json'" in m and "'pickle'" in m for m in warnings), warnings
    assert run() == {"answer": 42} and calls == [1]  # and now a hit


def test_a_payload_changed_behind_the_index_is_a_miss_with_a_warning(
    db_store: CacheStore, task_logs: Any
) -> None:
    calls: list[int] = []

    @xpersist_task(store=db_store, target="cfg.json", serializer="json")
    def config() -> dict[str, int]:
        calls.append(1)
        return {"threshold": 1}

    @flow
    def run() -> dict[str, int]:
        return config()

    assert run() == {"threshold": 1}
    path = Path(db_store.path) / "cfg.json"
    path.write_text(path.read_text().replace("1", "9"))  # same size, another value
    assert run() == {"threshold": 1}  # never the edited value
    assert calls == [1, 1]
    warnings = task_logs.messages(logging.WARNING)
    assert any("'cfg.json'" in m and "not the one its row describes" in m for m in warnings)
    assert db_store.get("cfg.json") == {"threshold": 1}


def test_a_missing_package_fails_the_task_and_recomputes_nothing(
    db_store: CacheStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    @xpersist_task(store=db_store, target="t.zarr", load_kwargs={"chunks": {}})
    def temperatures() -> xr.Dataset:
        calls.append(1)
        return xr.Dataset({"t": ("x", np.arange(4.0))})

    @flow
    def run() -> float:
        return float(temperatures()["t"].sum())

    assert run() == 6.0
    before = db_store.get_artifact("t.zarr")
    monkeypatch.setitem(sys.modules, "dask", None)  # as where the [dask] extra is not installed
    with pytest.raises(MissingDependencyError, match=r"xpersist_sql\[dask\]"):
        run()
    monkeypatch.undo()
    assert calls == [1]  # the body did not run again
    assert db_store.get_artifact("t.zarr") == before  # nothing was overwritten
    assert run() == 6.0 and calls == [1]
