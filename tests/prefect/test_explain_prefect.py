"""``CacheStore.explain`` of what a real Prefect flow stored (SQLite and PostgreSQL indexes)."""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import flow

from xpersist_sql import Artifact, CacheStore
from xpersist_sql.prefect import xpersist_task
from xpersist_sql.provenance import code_hash, combine


def _pipeline(store: CacheStore) -> tuple[Any, Any, Any, Any]:
    target = "{task_name}/{inputs_hash}.npy"

    @xpersist_task(store=store, target=target, serializer="numpy.npy")
    def load(n: int) -> np.ndarray:
        return np.arange(float(n))

    @xpersist_task(store=store, target=target, serializer="numpy.npy")
    def regrid(data: np.ndarray, factor: int) -> np.ndarray:
        return data[::factor]

    @xpersist_task(store=store, target=target, serializer="numpy.npy", version="1", code_hash=True)
    def climatology(data: np.ndarray) -> np.ndarray:
        return np.asarray([data.mean()])

    @flow(name="explain-pipeline")
    def pipeline(n: int = 12, factor: int = 2) -> np.ndarray:
        return climatology(regrid(load(n), factor))

    return load, regrid, climatology, pipeline


def _only(store: CacheStore, task_name: str) -> Artifact:
    [artifact] = store.query(task_name=task_name)
    return artifact


def test_explain_shows_the_template_context_inputs_and_upstream(db_store: CacheStore) -> None:
    _, _, climatology, pipeline = _pipeline(db_store)
    np.testing.assert_array_equal(pipeline(), [5.0])
    clim, regrid = _only(db_store, "climatology"), _only(db_store, "regrid")

    found = db_store.explain(clim.key)
    assert found.ok and found.would_hit and not found.stale
    assert found.target == "{task_name}/{inputs_hash}.npy"
    assert found.context == {"task_name": "climatology", "inputs_hash": found.inputs_hash}
    assert clim.key == f"climatology/{found.inputs_hash}.npy"
    assert list(found.input_hashes) == ["data"]
    assert found.inputs_hash == combine(found.input_hashes)
    assert found.task_version == "1"
    assert found.code_hash == code_hash(climatology.fn)
    assert [(parent.key, parent.status) for parent in found.upstream] == [(regrid.key, "unchanged")]
    # the names stay a list of names; the values are recorded apart
    assert clim.additional_metadata["parameters"] == ["data"]
    regrid_found = db_store.explain(regrid.key)
    assert set(regrid_found.input_hashes) == {"data", "factor"}
    assert regrid_found.parameters["factor"] == 2
    text = str(found)
    assert "target     {task_name}/{inputs_hash}.npy" in text
    assert f"  inputs_hash  {found.inputs_hash}" in text
    assert f"{regrid.key}  unchanged" in text

    # the task itself: same code, same version
    same = db_store.explain(clim.key, fn=climatology)
    assert same.code_changed is False and same.task_version_now == "1" and same.ok


def test_explain_with_changed_code_says_code_changed(db_store: CacheStore) -> None:
    _, _, _, pipeline = _pipeline(db_store)
    pipeline()
    clim = _only(db_store, "climatology")

    @xpersist_task(
        store=db_store,
        target="{task_name}/{inputs_hash}.npy",
        serializer="numpy.npy",
        version="1",
        code_hash=True,
    )
    def climatology(data: np.ndarray) -> np.ndarray:
        return np.asarray([data.mean(), data.std()])  # an edited body

    found = db_store.explain(clim.key, fn=climatology)
    assert found.code_changed is True and not found.would_hit
    assert found.code_hash_now == code_hash(climatology.fn) != found.code_hash
    assert any(reason.startswith("code changed") for reason in found.reasons)


def test_an_upstream_recomputed_makes_the_downstream_stale(db_store: CacheStore) -> None:
    _, _, _, pipeline = _pipeline(db_store)
    pipeline()
    clim, regrid = _only(db_store, "climatology"), _only(db_store, "regrid")
    db_store.put(regrid.key, np.zeros(3), on_duplicate_key="overwrite")  # recomputed by hand
    found = db_store.explain(clim.key)
    assert found.stale and found.would_hit and not found.ok
    assert [parent.status for parent in found.upstream] == ["changed"]
    assert any(reason.startswith(f"stale: upstream {regrid.key!r}") for reason in found.reasons)
