"""Stored results reported to Prefect: asset events and link artifacts, read back from the
session's Prefect server through its API."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import numpy as np
import xarray as xr
from prefect import flow
from prefect.assets import materialize
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from xpersist_sql import CacheStore
from xpersist_sql.prefect import xpersist_task
from xpersist_sql.prefect._assets import (
    MATERIALIZATION_EVENT,
    REFERENCE_EVENT,
    asset_key,
    file_url,
    link_artifact_key,
    report_write,
)

#: How long to wait for the server to have persisted the events (they are sent asynchronously).
EVENTS_WAIT = 120.0


def _link_artifacts(store: CacheStore, key: str) -> list[Any]:
    artifact_key = link_artifact_key(store.path, key)
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key]))
        )


def _events(name: str, resource: str, until: Callable[[list[Any]], bool]) -> list[Any]:
    """Read the events named ``name`` about ``resource`` until ``until`` holds (or give up)."""
    event_filter = EventFilter(
        event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[resource])
    )
    deadline = time.monotonic() + EVENTS_WAIT
    while True:
        with get_client(sync_client=True) as client:
            events = list(client.read_events(filter=event_filter, limit=50).events)
        if until(events) or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def _related(event: Any, role: str) -> list[str]:
    return sorted(
        related["prefect.resource.id"]
        for related in event.related
        if related["prefect.resource.role"] == role
    )


def _pipeline(store: CacheStore, **options: Any) -> Any:
    @xpersist_task(store=store, target="load.zarr", **options)
    def load() -> xr.Dataset:
        return xr.Dataset({"t": ("x", np.arange(6.0))})

    @xpersist_task(store=store, target="stats.json", serializer="json", **options)
    def stats(ds: xr.Dataset) -> dict:
        return {"mean": float(ds["t"].mean())}

    @flow(name="reported")
    def pipeline() -> dict:
        return stats(load())

    return pipeline


def test_asset_key_of_payload_urls() -> None:
    assert asset_key("/tmp/cache/bar.zarr") == "file:///tmp/cache/bar.zarr"
    assert asset_key("s3://bucket/cache/bar.zarr") == "s3://bucket/cache/bar.zarr"
    assert asset_key("/tmp/my cache/bar.zarr") is None  # Prefect refuses spaces
    assert asset_key("/tmp/" + "x" * 600) is None  # and keys over 512 characters
    assert file_url("/tmp/my cache/bar.zarr") == "file:///tmp/my cache/bar.zarr"
    key = link_artifact_key("/tmp/cache", "regrid/Europe_2.zarr")
    assert key.startswith("xpersist-regrid-europe-2-zarr-")
    assert key != link_artifact_key("/tmp/other", "regrid/Europe_2.zarr")
    assert all(c.islower() or c.isdigit() or c == "-" for c in key)


def test_a_stored_result_is_a_link_artifact_of_its_task_run(pstore: CacheStore) -> None:
    pipeline = _pipeline(pstore)
    pipeline()
    stored = pstore.get_artifact("stats.json")
    (artifact,) = _link_artifacts(pstore, "stats.json")
    assert artifact.task_run_id == UUID(stored.additional_metadata["task_run_id"])
    assert artifact.flow_run_id == UUID(stored.additional_metadata["flow_run_id"])
    assert file_url(pstore.payload_url("stats.json")) in str(artifact.data)
    assert "`stats.json`" in str(artifact.description)
    assert "`json`" in str(artifact.description)
    assert "`load.zarr`" in str(artifact.description)  # its parent
    # a hit produces nothing new: still one artifact per write
    pipeline()
    assert len(_link_artifacts(pstore, "stats.json")) == 1
    assert len(_link_artifacts(pstore, "load.zarr")) == 1


def test_a_stored_result_is_a_prefect_asset_with_its_upstream_assets(pstore: CacheStore) -> None:
    load_asset = asset_key(pstore.payload_url("load.zarr"))
    stats_asset = asset_key(pstore.payload_url("stats.json"))
    assert load_asset is not None and stats_asset is not None
    report_asset = f"{file_url(pstore.path)}-external/report.csv"

    @materialize(report_asset)
    def report(summary: dict) -> dict:  # Prefect's own materializing task downstream
        return summary

    inner = _pipeline(pstore)

    @flow(name="reported-with-materialize")
    def pipeline() -> dict:
        return report(inner.fn())

    pipeline()
    stored = pstore.get_artifact("stats.json")
    (materialized,) = _events(MATERIALIZATION_EVENT, stats_asset, lambda found: len(found) >= 1)
    assert materialized.resource["prefect.resource.name"] == "stats.json"
    assert _related(materialized, "asset") == [load_asset]
    assert _related(materialized, "asset-materialized-by") == ["xpersist_sql"]
    assert _related(materialized, "task-run") == [
        f"prefect.task-run.{stored.additional_metadata['task_run_id']}"
    ]
    assert materialized.payload["parents"] == ["load.zarr"]
    assert materialized.payload["serializer"] == "json"
    # the upstream asset is referenced by the task that consumed it
    referenced = _events(REFERENCE_EVENT, load_asset, lambda found: len(found) >= 1)
    assert {_related(event, "task-run")[0] for event in referenced} == {
        f"prefect.task-run.{stored.additional_metadata['task_run_id']}"
    }
    # and Prefect's own materializing task downstream has the stored result as upstream asset
    (downstream,) = _events(MATERIALIZATION_EVENT, report_asset, lambda found: len(found) >= 1)
    assert _related(downstream, "asset") == [stats_asset]


def test_report_assets_false_reports_nothing(pstore: CacheStore) -> None:
    pipeline = _pipeline(pstore, report_assets=False)
    pipeline()
    assert sorted(pstore.keys()) == ["load.zarr", "stats.json"]
    assert _link_artifacts(pstore, "stats.json") == []
    assert _link_artifacts(pstore, "load.zarr") == []


def test_a_failure_to_report_is_a_warning(caplog: Any) -> None:
    logger = logging.getLogger("tests.prefect.assets")
    with caplog.at_level(logging.WARNING, logger="tests.prefect.assets"):
        report_write(
            url=None,  # type: ignore[arg-type]  # what no store returns: reporting fails
            key="x.json",
            store_path="/tmp/cache",
            serializer="json",
            parents=[],
            task_run_id=None,
            logger=logger,
        )
    (record,) = caplog.records
    assert "could not report the stored result 'x.json' to Prefect" in record.getMessage()
