"""xpersist tasks on task runners whose workers are other processes.

Prefect 3's ``ProcessPoolTaskRunner`` and prefect-dask's ``DaskTaskRunner`` on a local cluster of
worker processes: a ``SERIALIZABLE`` task submitted several times at once is computed once
across the workers (the others end ``Cached``), and ``.map`` stores one value per element.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.task_runners import ProcessPoolTaskRunner

from xpersist_sql import CacheStore
from xpersist_sql.prefect import xpersist_task

MakeStore = Callable[..., CacheStore]
N_SUBMITS = 3


def _runner(kind: str) -> Any:
    if kind == "process":
        return ProcessPoolTaskRunner(max_workers=2)
    prefect_dask = pytest.importorskip("prefect_dask")
    return prefect_dask.DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 2,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["process", "dask"])
def test_serializable_task_computed_once_across_worker_processes(
    kind: str, make_store: MakeStore, tmp_path: Path
) -> None:
    store = make_store()
    len(store)  # the index exists before the workers race
    calls_file = str(tmp_path / "calls.txt")

    @xpersist_task(
        store=store, target="once.json", serializer="json", isolation_level="SERIALIZABLE"
    )
    def expensive() -> dict[str, int]:
        with open(calls_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough for the other submissions to arrive meanwhile
        return {"pid": os.getpid()}

    @xpersist_task(store=store, target="squares/{parameters[i]}.json", serializer="json")
    def square(i: int) -> dict[str, int]:
        return {"square": i * i, "pid": os.getpid()}

    @flow(name=f"{kind}-runner-flow", task_runner=_runner(kind))
    def runner_flow() -> tuple[list[Any], list[Any]]:
        once = [expensive.submit() for _ in range(N_SUBMITS)]
        mapped = square.map(i=[1, 2, 3])
        return [f.wait() or f.state for f in once], [f.wait() or f.state for f in mapped]

    once, mapped = runner_flow()
    writers = Path(calls_file).read_text().split()
    assert len(writers) == 1, f"the SERIALIZABLE body ran {len(writers)} times: {writers}"
    assert sorted(s.name for s in once) == ["Cached"] * (N_SUBMITS - 1) + ["Completed"]
    assert all(s.result() == {"pid": int(writers[0])} for s in once)
    assert int(writers[0]) != os.getpid(), "the body ran in a worker process"
    assert [s.name for s in mapped] == ["Completed"] * 3
    assert [s.result()["square"] for s in mapped] == [1, 4, 9]
    assert store.keys() == ["once.json", "squares/1.json", "squares/2.json", "squares/3.json"]
    assert store.get_artifact("squares/2.json").additional_metadata["flow_name"] == (
        f"{kind}-runner-flow"
    )
    # a later call in this process is a hit on what the workers stored
    assert square(2, return_state=True).name == "Cached"
