"""SERIALIZABLE xpersist tasks: concurrent flow runs in separate processes compute once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xpersist_sql import CacheStore
from xpersist_sql.prefect import xpersist_task

WORKER = Path(__file__).with_name("serializable_worker.py")
N_RUNS = 3


def test_concurrent_runs_compute_a_missing_target_once(
    tmp_path: Path, prefect_server: str, prefect_home: Path, database_url: str | None
) -> None:
    store_path = tmp_path / "cache"
    CacheStore(store_path, database_url=database_url).close()
    calls = tmp_path / "calls.txt"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("XPERSIST_SQL_REFRESH", None)
    extra = [database_url] if database_url else []
    runs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(store_path), str(calls), f"run{i}", *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(N_RUNS)
    ]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=240)
        assert run.returncode == 0, err[-3000:]
        results.extend(json.loads(line) for line in out.splitlines() if line.startswith("{"))

    writers = calls.read_text().split()
    assert len(writers) == 1, f"the body ran {len(writers)} times: {writers}"
    (writer,) = writers
    assert sorted(r["state"] for r in results) == ["Cached"] * (N_RUNS - 1) + ["Completed"]
    assert all(r["value"] == {"writer": writer} for r in results)
    assert CacheStore(store_path, database_url=database_url).get("once.json") == {"writer": writer}


def test_isolation_level_is_checked(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "cache")
    with pytest.raises(ValueError, match="SERIALIZABLE"):
        xpersist_task(lambda: 1, store=store, target="x.json", isolation_level="SNAPSHOT")
    from prefect.transactions import IsolationLevel

    task = xpersist_task(
        lambda: 1, store=store, target="x.json", isolation_level=IsolationLevel.SERIALIZABLE
    )
    assert task.name
