"""Parameter values and lineage recorded by xpersist tasks, through real Prefect flows.

On SQLite and PostgreSQL (``database_url`` is parametrised; PostgreSQL runs when
``XPERSIST_SQL_TEST_POSTGRES_URL`` is set).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import xarray as xr
from prefect import flow, task, unmapped

from xpersist_sql import CacheStore
from xpersist_sql.prefect import xpersist_task


def _created(store: CacheStore) -> dict[str, Any]:
    return {key: store.get_artifact(key).created_at for key in store.keys()}  # noqa: SIM118


def _keys(artifacts: list[Any]) -> list[str]:
    return [artifact.key for artifact in artifacts]


# -- parameter values ----------------------------------------------------------------------------
def test_mapped_members_are_found_by_their_parameter_value(db_store: CacheStore) -> None:
    @xpersist_task(store=db_store, target="m{parameters[member]}.json", serializer="json")
    def member_stats(member: int, region: str = "europe", weights: Any = None) -> dict:
        return {"member": member, "mean": member * 0.5}

    @flow(name="ensemble-parameters")
    def ensemble() -> list:
        return member_stats.map(member=[0, 1, 2, 3], weights=unmapped(list(range(500)))).result()

    ensemble()
    found = db_store.query(parameters={"member": 2})
    assert _keys(found) == ["m2.json"]
    assert _keys(db_store.query(parameters={"member": 2, "region": "europe"})) == ["m2.json"]
    assert db_store.query(parameters={"member": 2, "region": "asia"}) == []
    assert sorted(_keys(db_store.query(parameters={"region": "europe"}))) == [
        "m0.json",
        "m1.json",
        "m2.json",
        "m3.json",
    ]
    metadata = found[0].additional_metadata
    assert metadata["parameters"] == ["member", "region", "weights"]  # the names, as before
    values = metadata["parameter_values"]
    assert values["member"] == 2
    assert values["region"] == "europe"
    assert list(values["weights"]) == ["__hash__"]  # too large: recorded by its hash
    # a query with the large value matches the hash it was recorded as
    assert len(db_store.query(parameters={"weights": list(range(500))})) == 4


def test_parameter_values_of_a_dataset_argument_are_its_hash(db_store: CacheStore) -> None:
    @xpersist_task(store=db_store, target="mean-{parameters[scale]}.json", serializer="json")
    def mean(ds: xr.Dataset, scale: float) -> float:
        return float(ds["t"].mean()) * scale

    ds = xr.Dataset({"t": ("x", np.arange(4.0))})

    @flow(name="dataset-parameter")
    def run() -> float:
        return mean(ds, 1.5)

    assert run() == 2.25
    values = db_store.get_artifact("mean-1.5.json").additional_metadata["parameter_values"]
    assert values["scale"] == 1.5
    assert list(values["ds"]) == ["__hash__"]


# -- lineage -------------------------------------------------------------------------------------
def _pipeline(store: CacheStore, calls: list[str]) -> tuple[Any, Any, Any]:
    @xpersist_task(store=store, target="load.zarr")
    def load() -> xr.Dataset:
        calls.append("load")
        return xr.Dataset({"t": (("time", "x"), np.arange(12.0).reshape(4, 3))})

    @xpersist_task(store=store, target="regrid.zarr")
    def regrid(ds: xr.Dataset) -> xr.Dataset:
        calls.append("regrid")
        return ds.coarsen(x=3).mean()

    @xpersist_task(store=store, target="climatology.zarr")
    def climatology(ds: xr.Dataset) -> xr.Dataset:
        calls.append("climatology")
        return ds.mean("time")

    return load, regrid, climatology


def _check_three_task_lineage(store: CacheStore, last: str = "climatology.zarr") -> None:
    assert _keys(store.lineage(last, "upstream")) == ["regrid.zarr", "load.zarr"]
    assert _keys(store.lineage(last, "upstream", depth=1)) == ["regrid.zarr"]
    assert sorted(_keys(store.lineage("load.zarr", "downstream"))) == sorted(["regrid.zarr", last])
    assert _keys(store.lineage("load.zarr", "downstream", depth=1)) == ["regrid.zarr"]
    assert store.lineage("load.zarr", "upstream") == []
    assert store.lineage(last, "downstream") == []


def test_lineage_of_a_three_task_flow(db_store: CacheStore) -> None:
    calls: list[str] = []
    load, regrid, climatology = _pipeline(db_store, calls)

    @flow(name="three-tasks")
    def pipeline() -> xr.Dataset:
        return climatology(regrid(load()))

    pipeline()
    assert calls == ["load", "regrid", "climatology"]
    _check_three_task_lineage(db_store)
    stored = _created(db_store)
    # a second run hits every task: nothing is rewritten, the lineage is the same
    pipeline()
    assert calls == ["load", "regrid", "climatology"]
    assert _created(db_store) == stored
    _check_three_task_lineage(db_store)


def test_lineage_recorded_from_hits_when_only_the_last_task_recomputes(
    db_store: CacheStore,
) -> None:
    calls: list[str] = []
    load, regrid, climatology = _pipeline(db_store, calls)

    @flow(name="three-tasks-refresh")
    def pipeline(refresh: bool) -> xr.Dataset:
        last = climatology.with_options(refresh_cache=True) if refresh else climatology
        return last(regrid(load()))

    pipeline(False)
    pipeline(True)  # load and regrid hit (loaded lazily from the store), climatology rewrites
    assert calls == ["load", "regrid", "climatology", "climatology"]
    _check_three_task_lineage(db_store)


def test_lineage_through_a_json_task_and_submitted_futures(db_store: CacheStore) -> None:
    calls: list[str] = []
    load, regrid, _ = _pipeline(db_store, calls)

    @xpersist_task(store=db_store, target="stats.json", serializer="json")
    def stats(ds: xr.Dataset) -> dict:  # a dict: cannot be weakly referenced
        calls.append("stats")
        return {"mean": float(ds["t"].mean()), "n": int(ds["t"].size)}

    @xpersist_task(store=db_store, target="report.json", serializer="json")
    def report(summary: dict, label: str) -> dict:
        calls.append("report")
        return {"label": label, **summary}

    @flow(name="submitted")
    def pipeline(refresh: bool) -> dict:
        last = report.with_options(refresh_cache=True) if refresh else report
        loaded = load.submit()
        regridded = regrid.submit(loaded)
        summary = stats.submit(regridded)
        return last.submit(summary, "europe").result()

    assert pipeline(False)["label"] == "europe"
    assert calls == ["load", "regrid", "stats", "report"]
    assert _keys(db_store.lineage("report.json", "upstream")) == [
        "stats.json",
        "regrid.zarr",
        "load.zarr",
    ]
    assert _keys(db_store.lineage("stats.json", "downstream")) == ["report.json"]
    # the dict of a hit is linked through its task run too
    pipeline(True)
    assert calls[4:] == ["report"]
    assert _keys(db_store.lineage("report.json", "upstream", depth=1)) == ["stats.json"]


def test_lineage_through_a_plain_dict_call_and_a_value_loaded_by_the_flow(
    db_store: CacheStore,
) -> None:
    db_store.put("external.zarr", xr.Dataset({"w": ("x", np.ones(3))}))

    @xpersist_task(store=db_store, target="config.json", serializer="json")
    def config() -> dict:
        return {"factor": 3}

    @task
    def plain(cfg: dict) -> dict:  # a plain Prefect task in between: not stored, no edge
        return {"factor": cfg["factor"] + 1}

    @xpersist_task(store=db_store, target="weighted.zarr")
    def weighted(weights: xr.Dataset, cfg: dict, extra: dict) -> xr.Dataset:
        return weights * cfg["factor"] * extra["factor"]

    @flow(name="mixed")
    def pipeline() -> xr.Dataset:
        cfg = config()
        weights = db_store.get("external.zarr")  # loaded by the flow itself
        return weighted(weights, cfg, plain(cfg))

    pipeline()
    assert sorted(_keys(db_store.lineage("weighted.zarr", "upstream"))) == [
        "config.json",
        "external.zarr",
    ]


def test_lineage_of_json_values_loaded_by_the_flow(db_store: CacheStore) -> None:
    # dicts and lists take no weak reference: the last ones loaded are remembered for lineage
    db_store.put("settings.json", {"a": 1}, serializer="json")
    db_store.put("members.json", [1, 2, 3], serializer="json")
    db_store.put("scale.json", 2, serializer="json")

    @xpersist_task(store=db_store, target="derived/{inputs_hash}.json", serializer="json")
    def derived(settings: dict, members: list, scale: int) -> list:
        return [m * settings["a"] * scale for m in members]

    @flow(name="json-inputs")
    def pipeline() -> list:
        settings = db_store.get("settings.json")
        members = db_store.get("members.json")
        return derived(settings, members, db_store.get("scale.json"))

    assert pipeline() == [2, 4, 6]
    (key,) = [k for k in db_store.keys() if k.startswith("derived/")]  # noqa: SIM118
    # a number shares its object with any other 2: it cannot name the artifact it came from
    assert sorted(_keys(db_store.lineage(key, "upstream"))) == ["members.json", "settings.json"]

    # they still hash by their data: the same data again is the same key, a hit
    db_store.put("settings.json", {"a": 1}, serializer="json", on_duplicate_key="overwrite")
    assert pipeline() == [2, 4, 6]
    assert [k for k in db_store.keys() if k.startswith("derived/")] == [key]  # noqa: SIM118
    # a dict changed after its load hashes as what it now is, not as the artifact
    settings = db_store.get("settings.json")
    settings["a"] = 5

    @flow(name="json-changed")
    def changed() -> list:
        return derived(settings, [1], 1)

    assert changed() == [5]
    assert len([k for k in db_store.keys() if k.startswith("derived/")]) == 2  # noqa: SIM118


def test_lineage_of_async_tasks(db_store: CacheStore) -> None:
    @xpersist_task(store=db_store, target="a.json", serializer="json")
    async def first() -> dict:
        return {"n": 1}

    @xpersist_task(store=db_store, target="b.json", serializer="json")
    async def second(a: dict) -> dict:
        return {"n": a["n"] + 1}

    @flow(name="async-lineage")
    async def pipeline() -> dict:
        return await second(await first())

    assert asyncio.run(pipeline()) == {"n": 2}
    assert _keys(db_store.lineage("b.json", "upstream")) == ["a.json"]
