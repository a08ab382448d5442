"""The Prefect tutorial as a script (``make demo``): a flow whose expensive task runs once.

Usage: ``python examples/demo.py [--keep]`` (``--keep`` keeps the temporary directory).

A store in a fresh temporary directory, the Prefect server Prefect starts by itself (an
ephemeral local server, in a temporary Prefect home so that nothing of the machine's own Prefect
set-up is used or changed). The flow runs twice: the first run computes and stores the dataset,
the second finds it in the cache (the task ends ``Cached``) and is much faster. Then the
artifact's Prefect context, a templated target, the keys, and a query.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from typing import Any

WORK = tempfile.mkdtemp(prefix="xpersist-sql-demo-")
KEEP = "--keep" in sys.argv[1:]
if not KEEP:
    # registered before prefect is imported, so it runs after Prefect has stopped its server
    atexit.register(shutil.rmtree, WORK, ignore_errors=True)

# A self-contained Prefect: its own home, no server configured (so Prefect starts a temporary
# local one), no analytics. Set before prefect is imported.
os.environ["PREFECT_HOME"] = os.path.join(WORK, "prefect-home")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_API_KEY", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
# Prefect's temporary server can take over 30 s to start on a loaded machine (its default limit
# is 20 s): give it a generous limit unless the user set one.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import xarray as xr  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings  # noqa: E402

from xpersist_sql import CacheStore  # noqa: E402
from xpersist_sql.prefect import XpersistResult, xpersist_task  # noqa: E402

COMPUTE_SECONDS = 3.0

store = CacheStore(os.path.join(WORK, "my-cache"))
result = XpersistResult(store, serializer="xarray.zarr", serializer_dump_kwargs={"mode": "w"})


@xpersist_task(result=result, target="bar.zarr")
def get_data() -> xr.Dataset:
    """Return the dataset after an expensive computation (a sleep here)."""
    ds = xr.DataArray(range(10), dims="x", name="bar").to_dataset()
    time.sleep(COMPUTE_SECONDS)
    return ds


@task
def total(ds: xr.Dataset) -> int:
    """Sum the dataset."""
    return int(ds.bar.sum())


@flow(name="my-flow")
def my_flow() -> dict[str, Any]:
    """Return each task's final state (``return_state=True`` only to show them)."""
    data = get_data(return_state=True)
    summed = total(data, return_state=True)
    return {"get_data": data, "total": summed}


@xpersist_task(result=result, target="{date:%A}-{flow_name}-{task_name}.zarr", retries=2)
def foo_task() -> xr.Dataset:
    """Return a small dataset, stored under a target rendered from the run context."""
    return xr.DataArray(range(5), dims="x", name="foo").to_dataset()


@flow(name="my-flow")
def templated_flow() -> xr.Dataset:
    """Run the templated task."""
    return foo_task()


def section(title: str) -> None:
    """Print a section title."""
    print(f"\n== {title}")


def run_flow(label: str) -> tuple[dict[str, Any], float]:
    """Run ``my_flow`` and print its tasks' final states and its wall time."""
    start = time.perf_counter()
    states = my_flow()
    elapsed = time.perf_counter() - start
    summary = ", ".join(f"{name}: {state.name}" for name, state in states.items())
    print(f"{label}: wall time {elapsed:6.3f} s   task states: {summary}")
    for name, state in states.items():
        if state.message:
            print(f"    {name}: {state.message}")
    return states, elapsed


def main() -> int:
    """Run the story; return a process exit code."""
    print(f"store: {store.path}")
    section("Prefect")
    start = time.perf_counter()
    with get_client(sync_client=True) as client:
        client.hello()  # Prefect starts its temporary local server on first use
    print(f"local Prefect server ready in {time.perf_counter() - start:.1f} s (not counted below)")

    section(f"my-flow: get_data computes for {COMPUTE_SECONDS:.0f} s, then comes from the cache")
    first, first_time = run_flow("run 1")
    second, second_time = run_flow("run 2")
    print(
        f"run 2 took {second_time * 1000:.0f} ms, {first_time / second_time:.0f}x faster than run 1"
    )

    section("store.keys()")
    print(store.keys())

    section("store.get_artifact('bar.zarr'): the Prefect context is in additional_metadata")
    artifact = store.get_artifact("bar.zarr")
    for field, value in artifact.model_dump().items():
        if field == "additional_metadata":
            print("additional_metadata:")
            for name, item in value.items():
                print(f"    {name}: {item!r}")
        else:
            print(f"{field}: {value!r}")

    section("a templated target: '{date:%A}-{flow_name}-{task_name}.zarr'")
    print(templated_flow())
    print(store.keys())

    section("store.query(flow_name='my-flow', since=timedelta(hours=1))")
    for found in store.query(flow_name="my-flow", since=timedelta(hours=1)):
        meta = found.additional_metadata
        print(
            f"{found.key:<36} task={meta['task_name']:<10} run={meta['flow_run_name']:<22} "
            f"{found.created_at:%Y-%m-%d %H:%M:%S} UTC  {found.size_bytes} bytes"
        )

    ok = (
        first["get_data"].name == "Completed"
        and second["get_data"].name == "Cached"
        and second_time < first_time
    )
    if not ok:
        print("\nunexpected: the second run was not a faster cache hit", file=sys.stderr)
    where = f"kept in {WORK}" if KEEP else "removed at exit; run with --keep to keep it"
    print(f"\n(the store and the Prefect home were in a temporary directory, {where})")
    store.close()
    return 0 if ok else 1


if __name__ == "__main__":
    # The flow-run heartbeat (crash detection for deployed flows) adds about a second to the end
    # of every sync flow run; this local demo does not need it.
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        sys.exit(main())
