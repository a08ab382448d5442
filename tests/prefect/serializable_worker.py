"""A flow run whose SERIALIZABLE xpersist task may race other processes for one target.

Usage: ``python serializable_worker.py STORE_PATH CALLS_FILE NAME [DATABASE_URL]``. The body
appends NAME to CALLS_FILE and sleeps, so that concurrent runs overlap; prints the task's final
state name and returned value as one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

from prefect import flow

from xpersist_sql import CacheStore
from xpersist_sql.prefect import xpersist_task


def main(store_path: str, calls_file: str, name: str, database_url: str | None = None) -> None:
    store = CacheStore(store_path, database_url=database_url)

    @xpersist_task(
        store=store, target="once.json", serializer="json", isolation_level="SERIALIZABLE"
    )
    def expensive() -> dict[str, str]:
        with open(calls_file, "a") as f:
            f.write(name + "\n")
        time.sleep(1.5)
        return {"writer": name}

    @flow(name="serializable-flow")
    def serializable_flow() -> tuple[str, object]:
        state = expensive(return_state=True)
        return str(state.name), state.result()

    state_name, value = serializable_flow()
    print(json.dumps({"name": name, "state": state_name, "value": value}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
