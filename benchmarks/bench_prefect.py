"""A cache hit of an ``xpersist_task`` against a hit of Prefect 3's own result cache.

Both tasks run in the same flow run, on the same machine, against the same temporary Prefect
server (``prefect_test_harness``; the flow-run heartbeat off):

- ours: ``xpersist_task`` with a fixed target in a ``CacheStore`` (embedded SQLite index); the
  payload is in its native format (JSON, ``.npy``, zarr);
- native: ``@task(persist_result=True, cache_key_fn=<fixed key>)`` with Prefect's default local
  result storage (a pickled result in a JSON record, base64-encoded).

Each timed call is one task run that hits the cache (first call untimed: it computes and stores;
every timed call asserts its state is ``Cached``). Values: a small dict, a 1 MB float64 ndarray,
and an 8 MB xarray dataset (timed with ``.load()``, so both return it in memory; ours is lazy
otherwise). A 20 ms pause separates calls so the server's event writes settle (steady state).

``ratio`` = ours / native (below 1: xpersist_sql is faster).

Run alone with ``python benchmarks/bench_prefect.py [--quick]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import add_ratios, row

OURS = "xpersist_task hit (CacheStore, native format)"
NATIVE = "Prefect 3 native cache hit (persist_result, fixed key, local storage)"
PAUSE_S = 0.02

warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)


def _dataset(megabytes: float) -> xr.Dataset:
    nlat, nlon = 180, 360
    ntime = max(1, round(megabytes * 1e6 / (nlat * nlon * 8)))
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {"air": (("time", "lat", "lon"), rng.standard_normal((ntime, nlat, nlon)))},
        coords={
            "time": pd.date_range("2020-01-01", periods=ntime, freq="D"),
            "lat": np.linspace(-89.5, 89.5, nlat),
            "lon": np.linspace(0.5, 359.5, nlon),
        },
    )


def _cases() -> list[tuple[str, Any, str, bool]]:
    """``(benchmark name, value, serializer, load)``."""
    return [
        ("prefect hit: small dict", {"threshold": 0.5, "members": list(range(20))}, "json", False),
        ("prefect hit: 1 MB ndarray", np.arange(131_072, dtype="float64"), "numpy.npy", False),
        ("prefect hit: 8 MB dataset, .load()", _dataset(8), "xarray.zarr", True),
    ]


def _measure(quick: bool, workdir: Path) -> list[dict[str, Any]]:
    from prefect import flow, task

    from xpersist_sql import CacheStore
    from xpersist_sql.prefect import xpersist_task

    # the small hit differs from the native one by a fraction of a task run's noise: many calls
    repeats = 30 if quick else 100
    store = CacheStore(workdir / "cache")
    rows: list[dict[str, Any]] = []

    def make_tasks(index: int, value: Any, serializer: str) -> tuple[Any, Any]:
        def ours_body() -> Any:
            return value

        def native_body() -> Any:
            return value

        ours_body.__name__ = f"ours_{index}"
        native_body.__name__ = f"native_{index}"
        ours = xpersist_task(
            ours_body, store=store, target=f"bench/{index}-{serializer}", serializer=serializer
        )
        native = task(
            native_body, persist_result=True, cache_key_fn=lambda *_: f"bench-fixed-{index}"
        )
        return ours, native

    @flow(name="bench-prefect-hits")
    def bench_flow() -> None:
        for index, (name, value, serializer, load) in enumerate(_cases()):
            ours, native = make_tasks(index, value, serializer)
            durations: dict[str, list[float]] = {OURS: [], NATIVE: []}
            for made in (ours, native):
                made()  # computes and stores: untimed
            # interleaved, so that both see the same server load
            for i in range(-2, repeats):
                for case, made in ((OURS, ours), (NATIVE, native)):
                    time.sleep(PAUSE_S)
                    start = time.perf_counter()
                    state = made(return_state=True)
                    result = state.result()
                    if load:
                        result.load()
                    elapsed = (time.perf_counter() - start) * 1000.0
                    assert state.name == "Cached", f"{made.name}: {state.name}, not a hit"
                    if i >= 0:
                        durations[case].append(elapsed)
            rows.extend(row(name, case, durations[case]) for case in (OURS, NATIVE))

    bench_flow()
    store.close()
    return add_ratios(rows, OURS)


def run(quick: bool) -> list[dict[str, Any]]:
    """Time cache hits of ours and of Prefect's native cache; one row per (value, case)."""
    with tempfile.TemporaryDirectory(prefix="xpersist-bench-prefect-") as tmp:
        workdir = Path(tmp)
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
            PREFECT_HOME,
            PREFECT_LOGGING_LEVEL,
            PREFECT_RESULTS_LOCAL_STORAGE_PATH,
            PREFECT_SERVER_ANALYTICS_ENABLED,
            temporary_settings,
        )
        from prefect.testing.utilities import prefect_test_harness

        settings = temporary_settings(
            updates={
                PREFECT_HOME: str(workdir / "prefect-home"),
                PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(workdir / "prefect-storage"),
                PREFECT_SERVER_ANALYTICS_ENABLED: False,
                PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                PREFECT_LOGGING_LEVEL: "WARNING",
            },
            restore_defaults={PREFECT_API_URL},
        )
        # a loaded machine has needed over 30 s (the default) to start the server
        with settings, prefect_test_harness(server_startup_timeout=180):
            return _measure(quick, workdir)


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    rows = run(quick)
    width = max(len(r["case"]) for r in rows)
    for r in rows:
        ratio = "" if r["ratio"] is None else f"  ratio ours/native {r['ratio']:.2f}"
        print(
            f"{r['benchmark']:<36} {r['case']:<{width}}  median {r['median_ms']:8.2f} ms  "
            f"(min {r['min_ms']:.2f}, max {r['max_ms']:.2f}){ratio}"
        )


if __name__ == "__main__":
    main()
