"""Two flow runs in separate processes race to compute the same target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from xpersist_sql import CacheStore

WORKER = Path(__file__).with_name("race_worker.py")


def test_two_processes_race_for_one_target(
    tmp_path: Path, prefect_server: str, prefect_home: Path, database_url: str | None
) -> None:
    store_path = tmp_path / "cache"
    CacheStore(store_path, database_url=database_url).close()  # the index exists before the race
    extra = [database_url] if database_url else []
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("XPERSIST_SQL_REFRESH", None)
    racers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(store_path), str(tmp_path / "barrier"), name, *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    outputs = []
    for racer in racers:
        out, err = racer.communicate(timeout=240)
        assert racer.returncode == 0, err[-3000:]
        outputs.append([json.loads(line) for line in out.splitlines() if line.startswith("{")])

    by_policy = {
        policy: [o for lines in outputs for o in lines if o["policy"] == policy]
        for policy in ("skip", "raise_error")
    }
    store = CacheStore(store_path, database_url=database_url)
    # skip: both runs complete with their own value; the first put wins and stays stored
    skip = by_policy["skip"]
    assert [o["state"] for o in skip] == ["Completed", "Completed"]
    stored = store.get("race-skip.json")
    assert stored in ({"writer": "first"}, {"writer": "second"})
    # raise_error: exactly one run stores, the other fails with DuplicateKeyError
    raised = by_policy["raise_error"]
    assert sorted(o["failed"] for o in raised) == [False, True]
    (loser,) = [o for o in raised if o["failed"]]
    (winner,) = [o for o in raised if not o["failed"]]
    assert loser["error"].startswith(
        "DuplicateKeyError: key 'race-raise_error.json' already exists"
    )
    assert store.get("race-raise_error.json") == winner["value"]
    assert store.keys() == ["race-raise_error.json", "race-skip.json"]
    assert store.get_artifact("race-skip.json").additional_metadata["flow_name"] == "race-flow"
    store.close()
