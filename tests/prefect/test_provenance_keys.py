"""Keys from inputs (``{inputs_hash}``) and from code (``version=``, ``code_hash=True``).

Real Prefect flows on SQLite and PostgreSQL stores; the hash itself in subprocesses with other
``PYTHONHASHSEED`` values.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from prefect import flow

from xpersist_sql import CacheStore, MissingDependencyError
from xpersist_sql.prefect import AmbiguousTargetWarning, xpersist_task
from xpersist_sql.provenance import (
    InputsHashError,
    forget,
    hash_inputs,
    hash_value,
    identity_of,
    register_artifact,
)

ROOT = Path(__file__).resolve().parents[2]

#: Computes the hash of the same arguments in a fresh interpreter (run with other hash seeds).
HASH_SCRIPT = """
import json, sys
import numpy as np, pandas as pd, xarray as xr
from xpersist_sql.provenance import hash_inputs

args = {
    "config": {"region": "europe", "levels": [850, 500], "nested": {"b": 1, "a": 2.5}},
    "name": "member-003",
    "tags": {"x", "y", "z", "w"},
    "array": np.arange(12.0).reshape(3, 4),
    "frame": pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}, index=[10, 20, 30]),
    "dataset": xr.Dataset(
        {"t": (("time", "x"), np.arange(6.0).reshape(2, 3))},
        coords={"x": [1, 2, 3], "time": pd.date_range("2021-01-01", periods=2)},
        attrs={"source": "model"},
    ),
}
print(json.dumps({"all": hash_inputs(args), **{k: hash_inputs({k: v}) for k, v in args.items()}}))
"""


def _hash_in_subprocess(seed: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", HASH_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# -- the hash ------------------------------------------------------------------------------------
def test_same_inputs_same_hash_across_processes_and_hash_seeds() -> None:
    first = _hash_in_subprocess("1")
    second = _hash_in_subprocess("4242")
    assert first == second
    namespace: dict[str, Any] = {}
    exec(HASH_SCRIPT.replace("print(", "result = ("), namespace)
    assert json.loads(namespace["result"]) == first  # this process agrees too
    assert len(set(first.values())) == len(first)  # and every argument counts


def test_a_changed_element_changes_the_hash() -> None:
    array = np.arange(1000.0)
    before = hash_inputs({"x": array})
    changed = array.copy()
    changed[517] += 1e-9
    assert hash_inputs({"x": changed}) != before
    assert hash_inputs({"x": array.copy()}) == before
    ds = xr.Dataset({"v": ("i", array)})
    ds2 = ds.copy(deep=True)
    ds2["v"][3] = -1.0
    assert hash_inputs({"x": ds}) != hash_inputs({"x": ds2})
    frame = pd.DataFrame({"a": [1, 2, 3]})
    assert hash_inputs({"x": frame}) != hash_inputs({"x": frame.assign(a=[1, 2, 4])})


def test_names_order_and_types_of_inputs() -> None:
    assert hash_inputs({"a": 1, "b": 2}) == hash_inputs({"b": 2, "a": 1})
    assert hash_inputs({"a": 1}) != hash_inputs({"b": 1})
    assert hash_value([1, 2]) != hash_value((1, 2))
    assert hash_value(1) != hash_value("1") != hash_value(1.0)
    assert hash_value(True) != hash_value(1)
    assert hash_value({"a": 1, "b": 2}) == hash_value({"b": 2, "a": 1})
    assert hash_value(float("nan")) == hash_value(float("nan"))
    assert hash_value(np.arange(3)) != hash_value([0, 1, 2])
    tree = xr.DataTree.from_dict({"/a": xr.Dataset({"v": ("x", [1, 2])}), "/b": xr.Dataset()})
    other = xr.DataTree.from_dict({"/a": xr.Dataset({"v": ("x", [1, 3])}), "/b": xr.Dataset()})
    assert hash_value(tree) == hash_value(tree.copy(deep=True))
    assert hash_value(tree) != hash_value(other)


def test_what_cannot_be_hashed_deterministically_names_the_parameter() -> None:
    with pytest.raises(InputsHashError, match=r"'client'.*__dask_tokenize__"):
        hash_inputs({"member": 1, "client": object()})
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(InputsHashError, match=r"'looped'.*contains itself"):
        hash_inputs({"looped": looped})


def test_a_dask_backed_dataset_is_not_computed() -> None:
    def boom(block: np.ndarray) -> np.ndarray:
        raise AssertionError("the dask graph was computed while hashing")

    lazy = da.zeros((400, 300), chunks=(100, 100)).map_blocks(boom, dtype=float)
    ds = xr.Dataset({"v": (("t", "x"), lazy)}, coords={"x": np.arange(300)})
    first = hash_inputs({"ds": ds, "arr": lazy, "da": ds["v"]})
    assert first == hash_inputs({"ds": ds, "arr": lazy, "da": ds["v"]})
    other = da.ones((400, 300), chunks=(100, 100)).map_blocks(boom, dtype=float)
    assert hash_inputs({"ds": ds.assign(v=(("t", "x"), other))}) != hash_inputs({"ds": ds})


def test_a_virtual_1gb_dataset_from_the_store_hashes_by_identity(pstore: CacheStore) -> None:
    big = xr.Dataset({"v": (("t", "x"), da.zeros((25_000, 5_000), chunks=(5_000, 5_000)))})
    assert big["v"].nbytes == 1_000_000_000
    # metadata only: the array says 1 GB, no chunk is written
    pstore.put("big.zarr", big, serializer="xarray.zarr", dump_kwargs={"compute": False})
    loaded = pstore.get("big.zarr")
    artifact = pstore.get_artifact("big.zarr")
    found = identity_of(loaded)
    assert found is not None and found.key == "big.zarr"
    assert found.created_at == artifact.created_at.isoformat()

    reads: list[Any] = []
    wrapper = xr.backends.zarr.ZarrArrayWrapper
    originals = {name: getattr(wrapper, name) for name in ("_getitem", "_oindex", "_vindex")}

    def counting(name: str) -> Any:
        def read(self: Any, key: Any) -> Any:
            reads.append(key)
            return originals[name](self, key)

        return read

    mp = pytest.MonkeyPatch()
    for name in originals:
        mp.setattr(wrapper, name, counting(name))
    try:
        by_identity = hash_inputs({"ds": loaded})
        assert reads == []  # no chunk was read: the identity was hashed
        # the same artifact loaded again is the same input
        assert hash_inputs({"ds": pstore.get("big.zarr")}) == by_identity
        assert hash_inputs({"ds": [loaded, 3]}) == hash_inputs({"ds": [pstore.get("big.zarr"), 3]})
        small = loaded.isel(t=slice(0, 2), x=slice(0, 2))  # a derived value hashes by its data
        forget(loaded)
        assert identity_of(loaded) is None
        assert hash_inputs({"ds": small}) != by_identity and reads  # (its data was read)
    finally:
        mp.undo()
    # a new version of the artifact is another input
    register_artifact(loaded, pstore, "big.zarr")
    assert hash_inputs({"ds": loaded}) == by_identity
    pstore.put(
        "big.zarr",
        big,
        serializer="xarray.zarr",
        dump_kwargs={"compute": False, "mode": "w"},
        on_duplicate_key="overwrite",
    )
    assert hash_inputs({"ds": pstore.get("big.zarr")}) != by_identity


def test_register_artifact_needs_a_weakly_referenced_value(pstore: CacheStore) -> None:
    pstore.put("a.json", {"a": 1}, serializer="json")
    with pytest.raises(TypeError, match="weak references"):
        register_artifact({"a": 1}, pstore, "a.json")
    assert identity_of(pstore.get("a.json")) is None  # a dict hashes by value


# -- {inputs_hash} in tasks ----------------------------------------------------------------------
def test_inputs_hash_targets_in_a_flow(db_store: CacheStore) -> None:
    calls: list[str] = []

    @xpersist_task(store=db_store, target="raw/{parameters[region]}.zarr")
    def load(region: str) -> xr.Dataset:
        calls.append(f"load {region}")
        return xr.Dataset({"v": ("x", np.arange(4.0))}, attrs={"region": region})

    @xpersist_task(store=db_store, target="{task_name}/{inputs_hash}.zarr")
    def scale(ds: xr.Dataset, factor: float = 2.0) -> xr.Dataset:
        calls.append(f"scale {ds.attrs['region']} {factor}")
        return ds * factor

    @xpersist_task(
        store=db_store,
        target=lambda ctx: f"{ctx['task_name']}/{ctx['inputs_hash'][:16]}.json",
        serializer="json",
    )
    def total(ds: xr.Dataset) -> float:
        calls.append("total")
        return float(ds["v"].sum())

    @flow(name="inputs-hash")
    def pipeline(region: str, factor: float) -> float:
        return total(scale(load(region), factor))

    assert pipeline("europe", 2.0) == 12.0
    first_keys = sorted(db_store.keys())
    assert calls == ["load europe", "scale europe 2.0", "total"]
    # the second run hits everything: the loaded dataset hashes as the artifact, as the value
    # the first run computed (noted when it was stored) did
    assert pipeline("europe", 2.0) == 12.0
    assert calls == ["load europe", "scale europe 2.0", "total"]
    assert sorted(db_store.keys()) == first_keys
    # another factor: another scale key; total's input changed too
    assert pipeline("europe", 3.0) == 18.0
    assert calls[3:] == ["scale europe 3.0", "total"]
    (scaled,) = [key for key in first_keys if key.startswith("scale/")]
    meta = db_store.get_artifact(scaled).additional_metadata
    assert scaled == f"scale/{meta['inputs_hash']}.zarr"


def test_inputs_hash_targets_are_never_ambiguous(pstore: CacheStore) -> None:
    @xpersist_task(store=pstore, target="squares/{inputs_hash:.12}.json", serializer="json")
    def square(x: int) -> int:
        return x * x

    @flow(name="squares-by-inputs")
    def squares() -> list[int]:
        return [square(2), square(3), *square.map([4, 5]).result()]

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", AmbiguousTargetWarning)
        assert squares() == [4, 9, 16, 25]
    assert len(pstore.keys()) == 4
    assert all(len(key) == len("squares/123456789012.json") for key in pstore.keys())  # noqa: SIM118


def test_the_ambiguity_warning_suggests_inputs_hash(pstore: CacheStore) -> None:
    @xpersist_task(store=pstore, target="out/result.json", serializer="json")
    def double(x: int) -> int:
        return 2 * x

    @flow(name="ambiguous-double")
    def twice() -> list[int]:
        return [double(1), double(2)]

    with pytest.warns(AmbiguousTargetWarning, match=r"out/result-\{inputs_hash\}\.json"):
        twice()


def test_inputs_hash_without_dask_fails_at_decoration(
    pstore: CacheStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "dask.base", None)  # import dask.base -> ImportError

    def body(x: int) -> int:
        return x

    with pytest.raises(MissingDependencyError, match=r"xpersist_task 'body'.*xpersist_sql\[dask\]"):
        xpersist_task(body, store=pstore, target="{inputs_hash}.json", serializer="json")
    # a target without it does not need dask
    xpersist_task(body, store=pstore, target="{parameters[x]}.json", serializer="json")


def test_unhashable_argument_fails_the_task_naming_it(pstore: CacheStore) -> None:
    calls: list[int] = []

    @xpersist_task(store=pstore, target="{inputs_hash}.json", serializer="json")
    def uses(handle: object, x: int) -> int:
        calls.append(x)
        return x

    @flow(name="unhashable")
    def run() -> str:
        state = uses(object(), 1, return_state=True)
        assert state.is_failed()
        with pytest.raises(InputsHashError, match=r"task 'uses'.*'handle'") as raised:
            state.result()
        return str(raised.value)

    assert "__dask_tokenize__" in run()
    assert calls == []


# -- versions and code -----------------------------------------------------------------------------
def _version_task(store: CacheStore, calls: list[str], version: str | None) -> Any:
    @xpersist_task(store=store, target="versioned.json", serializer="json", version=version)
    def versioned() -> dict[str, Any]:
        calls.append(str(version))
        return {"version": version}

    return versioned


def test_a_new_version_recomputes_and_overwrites(db_store: CacheStore, task_logs: Any) -> None:
    calls: list[str] = []

    @flow(name="versions")
    def run(task: Any) -> Any:
        return task()

    assert run(_version_task(db_store, calls, "1")) == {"version": "1"}
    assert run(_version_task(db_store, calls, "1")) == {"version": "1"}  # a hit
    assert calls == ["1"]
    meta = db_store.get_artifact("versioned.json").additional_metadata
    assert meta["task_version"] == "1"
    assert run(_version_task(db_store, calls, "2")) == {"version": "2"}
    assert calls == ["1", "2"]
    assert db_store.get_artifact("versioned.json").additional_metadata["task_version"] == "2"
    (why,) = [m for m in task_logs.messages(logging.INFO) if "recomputing and overwriting" in m]
    assert "version '1'" in why and "version '2'" in why and "'versioned.json'" in why
    assert run(_version_task(db_store, calls, "2")) == {"version": "2"}
    assert calls == ["1", "2"]


def test_artifacts_without_a_version_stay_hits(db_store: CacheStore) -> None:
    calls: list[str] = []

    @flow(name="unversioned")
    def run(task: Any) -> Any:
        return task()

    db_store.put("versioned.json", {"version": "old"}, serializer="json")  # written before
    assert run(_version_task(db_store, calls, None)) == {"version": "old"}
    assert calls == []
    # a task declaring a version recomputes what has none recorded
    assert run(_version_task(db_store, calls, "1")) == {"version": "1"}
    # and a task declaring none accepts whatever version is stored
    assert run(_version_task(db_store, calls, None)) == {"version": "1"}
    assert calls == ["1"]


PIPELINE_V1 = """
import os
from xpersist_sql import CacheStore
from xpersist_sql.prefect import xpersist_task

store = CacheStore(os.environ["XPERSIST_TEST_STORE"])
CALLS = []


@xpersist_task(store=store, target="prep.json", serializer="json", code_hash=True)
def prep(x: int) -> int:
    CALLS.append("prep")
    return x + 1


@xpersist_task(store=store, target="other.json", serializer="json", code_hash=True)
def other(x: int) -> int:
    CALLS.append("other")
    return x * 10
"""


def test_editing_a_task_source_recomputes_it_and_only_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task_logs: Any
) -> None:
    monkeypatch.setenv("XPERSIST_TEST_STORE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(tmp_path))
    module_file = tmp_path / "xp_code_hash_pipeline.py"
    module_file.write_text(textwrap.dedent(PIPELINE_V1))

    def run() -> tuple[Any, list[str]]:
        importlib.invalidate_caches()
        sys.modules.pop("xp_code_hash_pipeline", None)
        module = importlib.import_module("xp_code_hash_pipeline")

        @flow(name="code-hash")
        def pipeline() -> tuple[int, int]:
            return module.prep(1), module.other(1)

        return pipeline(), module.CALLS

    assert run() == ((2, 10), ["prep", "other"])
    assert run() == ((2, 10), [])  # unchanged source: hits
    store = CacheStore(tmp_path / "cache")
    before = store.get_artifact("prep.json").additional_metadata["code_hash"]
    # a decorator change (retries, tags) is not a code change
    module_file.write_text(
        PIPELINE_V1.replace(
            'serializer="json", code_hash=True)\ndef prep',
            'serializer="json", code_hash=True, retries=1)\ndef prep',
        )
    )
    assert run() == ((2, 10), [])
    module_file.write_text(PIPELINE_V1.replace("return x + 1", "return x + 2"))
    assert run() == ((3, 10), ["prep"])
    after = store.get_artifact("prep.json").additional_metadata["code_hash"]
    assert after != before
    (why,) = [m for m in task_logs.messages(logging.INFO) if "recomputing and overwriting" in m]
    assert "'prep.json'" in why and before in why and after in why
    assert run() == ((3, 10), [])
    store.close()


def test_code_hash_of_two_bodies_with_one_name(pstore: CacheStore) -> None:
    calls: list[str] = []

    def make(body: int) -> Any:
        if body == 1:

            def step() -> int:
                calls.append("one")
                return 1

        else:

            def step() -> int:
                calls.append("two")
                return 2

        return xpersist_task(
            step, store=pstore, target="step.json", serializer="json", code_hash=True
        )

    @flow(name="two-bodies")
    def run(task: Any) -> Any:
        return task()

    assert run(make(1)) == 1
    assert run(make(1)) == 1
    assert run(make(2)) == 2
    assert run(make(2)) == 2
    assert calls == ["one", "two"]
