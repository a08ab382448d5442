"""One of two processes racing to compute the same targets in a Prefect flow run.

Usage: ``python race_worker.py STORE_PATH BARRIER_DIR NAME [DATABASE_URL]``. For each
duplicate-key policy the task body waits until both processes are inside it, so both miss and
both put. Prints one JSON line per policy: the task's final state and the value it returned or
the error it raised.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow

from xpersist_sql import CacheStore
from xpersist_sql.prefect import xpersist_task

POLICIES = ("skip", "raise_error")


def wait_for_both(barrier: Path, name: str) -> None:
    barrier.mkdir(parents=True, exist_ok=True)
    (barrier / name).touch()
    deadline = time.monotonic() + 120
    while len(list(barrier.iterdir())) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other racer never reached {barrier}")
        time.sleep(0.01)


def main(store_path: str, barrier_dir: str, name: str, database_url: str | None = None) -> None:
    tasks = {}
    for policy in POLICIES:
        store = CacheStore(store_path, database_url=database_url, on_duplicate_key=policy)

        def body(policy: str = policy) -> dict[str, str]:
            wait_for_both(Path(barrier_dir) / policy, name)
            return {"writer": name}

        body.__name__ = f"compute_{policy}"
        tasks[policy] = xpersist_task(
            body, store=store, target=f"race-{policy}.json", serializer="json"
        )

    @flow(name="race-flow")
    def race_flow() -> list[dict[str, Any]]:
        out = []
        for policy, task in tasks.items():
            state = task(return_state=True)
            value = state.result(raise_on_failure=False)
            out.append(
                {
                    "policy": policy,
                    "state": state.name,
                    "failed": state.is_failed(),
                    "value": value if not isinstance(value, BaseException) else None,
                    "error": f"{type(value).__name__}: {value}"
                    if isinstance(value, BaseException)
                    else None,
                }
            )
        return out

    for line in race_flow():
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
