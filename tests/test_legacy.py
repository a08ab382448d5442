"""Import of stores written by xpersist 2021.12.17, built here exactly in that format."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import joblib
import numpy as np
import pydantic.v1 as pydantic_v1
import pytest
import sqlalchemy as sa
import xarray as xr

from tests.helpers import make_dataset
from xpersist_sql import CacheStore, SerializerNotFoundError, import_legacy
from xpersist_sql.db.tables import ARTIFACTS, TAGS

# The timestamps the 2021 package wrote: datetime.utcnow(), naive.
CREATED = {
    "air.zarr": datetime.datetime(2021, 12, 16, 9, 30, 1, 123456),
    "air.nc": datetime.datetime(2021, 12, 16, 10, 0, 0),
    "models/rf.joblib": datetime.datetime(2021, 12, 17, 8, 15, 42, 5),
    "members.zarr": datetime.datetime(2021, 12, 17, 11, 0, 0, 1),
}
PREFECT_CONTEXT = {
    "flow_name": "climatology",
    "flow_run_id": "8e6f2a4c-2b0e-4d44-9a53-5d4f7e1c0a11",
    "flow_run_name": "silly-otter",
    "task_name": "get_data",
    "task_run_id": "0c1d2e3f-4a5b-4c6d-8e9f-a0b1c2d3e4f5",
    "task_run_name": "get_data-0",
    "task_tags": ["nightly", "cmip6"],
    "map_index": None,
    "today": "2021-12-16",
    "yesterday": "2021-12-15",
    "tomorrow": "2021-12-17",
    "parameters": ["member"],
}


class LegacyArtifact(pydantic_v1.BaseModel):
    """The 2021 ``xpersist.cache.Artifact``, a pydantic v1 model."""

    key: str
    serializer: str
    load_kwargs: typing.Optional[typing.Dict] = pydantic_v1.Field(default_factory=dict)  # noqa: UP006, UP045
    dump_kwargs: typing.Optional[typing.Dict] = pydantic_v1.Field(default_factory=dict)  # noqa: UP006, UP045
    additional_metadata: typing.Optional[typing.Dict] = pydantic_v1.Field(default_factory=dict)  # noqa: UP006, UP045
    created_at: typing.Optional[datetime.datetime] = pydantic_v1.Field(  # noqa: UP045
        default_factory=datetime.datetime.utcnow
    )

    class Config:
        validate_assignment = True


def write_sidecar(root: Path, artifact: LegacyArtifact) -> Path:
    """Write the sidecar as the 2021 ``CacheStore._put_overwrite`` did."""
    sidecar = root / "xpersist_metadata_store" / f"{artifact.key}.artifact.json"
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    sidecar.write_text(artifact.json(indent=2))
    return sidecar


def build_legacy_store(root: Path) -> dict[str, object]:
    """A 2021 store: zarr, netCDF, joblib, xcollection, a broken and a payload-less sidecar."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "xpersist_metadata_store").mkdir()
    ds = make_dataset()
    ds.to_zarr(root / "air.zarr", zarr_format=2, consolidated=True, mode="w")
    write_sidecar(
        root,
        LegacyArtifact(
            key="air.zarr",
            serializer="xarray.zarr",
            dump_kwargs={"mode": "w"},
            additional_metadata=PREFECT_CONTEXT,
            created_at=CREATED["air.zarr"],
        ),
    )
    ds.to_netcdf(root / "air.nc")
    write_sidecar(
        root,
        LegacyArtifact(
            key="air.nc",
            serializer="xarray.netcdf",
            additional_metadata={"flow_name": "climatology", "task_name": "regrid"},
            created_at=CREATED["air.nc"],
        ),
    )
    model = {"weights": np.arange(5.0), "name": "rf"}
    (root / "models").mkdir()
    joblib.dump(model, root / "models" / "rf.joblib")
    write_sidecar(
        root,
        LegacyArtifact(
            key="models/rf.joblib", serializer="joblib", created_at=CREATED["models/rf.joblib"]
        ),
    )
    # an xcollection.Collection.to_zarr payload: one zarr store per member
    for member in ("r1", "r2"):
        ds.to_zarr(root / "members.zarr" / member, zarr_format=2, mode="w")
    write_sidecar(
        root,
        LegacyArtifact(
            key="members.zarr", serializer="xcollection", created_at=CREATED["members.zarr"]
        ),
    )
    # a sidecar whose JSON is broken (its payload is there)
    (root / "broken.joblib").write_bytes(b"payload")
    broken = root / "xpersist_metadata_store" / "broken.joblib.artifact.json"
    broken.write_text('{"key": "broken.joblib", "serializer": "job')
    # a sidecar whose payload is gone
    write_sidecar(root, LegacyArtifact(key="lost.nc", serializer="xarray.netcdf"))
    return {"dataset": ds, "model": model}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``root`` (the new index excluded) with its size and mtime."""
    found = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            relative = str(path.relative_to(root))
            if not relative.startswith(".xpersist_sql"):
                stat = path.stat()
                found[relative] = (stat.st_size, stat.st_mtime_ns)
    return found


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_import_indexes_a_2021_store_in_place(tmp_path: Path, database_url: str | None) -> None:
    root = tmp_path / "old-cache"
    values = build_legacy_store(root)
    before = _tree(root)
    calls: list[tuple[str, int, int]] = []

    report = import_legacy(
        root, database_url=database_url, progress=lambda *args: calls.append(args)
    )

    assert report.sidecars == 6
    assert sorted(report.imported) == sorted(CREATED)
    assert report.already_indexed == []
    assert [(i.key, i.problem) for i in report.unsupported] == [
        ("members.zarr", "unsupported_serializer")
    ]
    assert "xcollection" in report.unsupported[0].detail
    skipped = {i.sidecar: (i.key, i.problem) for i in report.skipped}
    assert skipped == {
        "xpersist_metadata_store/broken.joblib.artifact.json": (None, "broken"),
        "xpersist_metadata_store/lost.nc.artifact.json": ("lost.nc", "missing_payload"),
    }
    assert "not valid JSON" in report.skipped[0].detail
    assert "lost.nc" in report.skipped[1].detail and "is gone" in report.skipped[1].detail
    assert calls[-1] == ("importing", 6, 6)
    assert _tree(root) == before  # not a byte moved or rewritten

    store = CacheStore(root, database_url=database_url)
    assert store.keys() == sorted(CREATED)
    for key, created in CREATED.items():
        artifact = store.get_artifact(key)
        assert artifact.created_at == created.replace(tzinfo=datetime.timezone.utc)
        assert artifact.size_bytes == _du(root / key)
        assert artifact.fingerprint
    xr.testing.assert_identical(store.get("air.zarr").load(), values["dataset"])
    xr.testing.assert_identical(store.get("air.nc").load(), values["dataset"])
    model = store.get("models/rf.joblib")
    np.testing.assert_array_equal(model["weights"], np.arange(5.0))
    zarr_artifact = store.get_artifact("air.zarr")
    assert zarr_artifact.additional_metadata == PREFECT_CONTEXT
    assert zarr_artifact.dump_kwargs == {"mode": "w"}
    with pytest.raises(SerializerNotFoundError, match="'xcollection'"):
        store.get("members.zarr")

    # the Prefect context fills the indexed columns and the tags
    assert [a.key for a in store.query(flow_name="climatology")] == ["air.nc", "air.zarr"]
    assert [a.key for a in store.query(task_name="get_data", tags=["nightly"])] == ["air.zarr"]
    assert [a.key for a in store.query(until="2021-12-16T09:45")] == ["air.zarr"]
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(ARTIFACTS.c.flow_run_id, ARTIFACTS.c.task_run_id).where(
                ARTIFACTS.c.key == "air.zarr"
            )
        ).one()
        tags = set(conn.scalars(sa.select(TAGS.c.tag)))
    assert tuple(row) == (PREFECT_CONTEXT["flow_run_id"], PREFECT_CONTEXT["task_run_id"])
    assert tags == {"nightly", "cmip6"}
    store.close()


def test_import_is_idempotent(tmp_path: Path, database_url: str | None) -> None:
    root = tmp_path / "old-cache"
    build_legacy_store(root)
    import_legacy(root, database_url=database_url)
    store = CacheStore(root, database_url=database_url)
    first = [a.model_dump() for a in store.query(order="oldest")]

    again = import_legacy(root, database_url=database_url)
    assert again.imported == []
    assert sorted(again.already_indexed) == sorted(CREATED)
    assert [(i.key, i.problem) for i in again.skipped] == [
        (None, "broken"),
        ("lost.nc", "missing_payload"),
    ]
    assert [a.model_dump() for a in store.query(order="oldest")] == first
    store.close()


def test_the_store_imports_its_own_root(tmp_path: Path, database_url: str | None) -> None:
    root = tmp_path / "old-cache"
    build_legacy_store(root)
    store = CacheStore(root, database_url=database_url)
    report = store.import_legacy(str(root) + "/")  # its own path, as the contract spells it
    assert sorted(report.imported) == sorted(CREATED)
    assert store.import_legacy().imported == []  # the default path: the same root, nothing new
    assert sorted(store.keys()) == sorted(CREATED)

    elsewhere = tmp_path / "other-cache"
    build_legacy_store(elsewhere)
    before = _tree(elsewhere)
    with pytest.raises(ValueError, match="indexed in place") as info:
        store.import_legacy(elsewhere)
    assert str(elsewhere) in str(info.value) and store.path in str(info.value)
    assert "xpersist_sql.import_legacy(" in str(info.value)  # the remedy
    assert _tree(elsewhere) == before  # nothing moved
    assert not (elsewhere / ".xpersist_sql").exists()  # and no index was created there
    assert sorted(store.keys()) == sorted(CREATED)
    store.close()


def test_keys_already_in_the_index_are_left_alone(tmp_path: Path, database_url: str | None) -> None:
    root = tmp_path / "old-cache"
    root.mkdir()
    joblib.dump([1, 2], root / "a.joblib")
    write_sidecar(root, LegacyArtifact(key="a.joblib", serializer="joblib"))
    store = CacheStore(root, database_url=database_url, on_duplicate_key="overwrite")
    store.put("a.joblib", [3, 4], serializer="joblib", additional_metadata={"new": True})

    report = import_legacy(root, database_url=database_url)
    assert report.already_indexed == ["a.joblib"] and report.imported == []
    assert store.get("a.joblib") == [3, 4]
    assert store.get_artifact("a.joblib").additional_metadata == {"new": True}
    store.close()


def test_sidecars_with_wrong_content_are_reported(tmp_path: Path, database_url: str | None) -> None:
    root = tmp_path / "old-cache"
    (root / "xpersist_metadata_store").mkdir(parents=True)
    for name in ("list.joblib", "renamed.joblib", "nodate.joblib", "good.joblib"):
        joblib.dump(name, root / name)
    sidecars = root / "xpersist_metadata_store"
    (sidecars / "list.joblib.artifact.json").write_text(
        json.dumps({"key": "list.joblib", "serializer": "joblib", "load_kwargs": [1]})
    )
    (sidecars / "renamed.joblib.artifact.json").write_text(
        json.dumps({"key": "other.joblib", "serializer": "joblib"})
    )
    (sidecars / "nodate.joblib.artifact.json").write_text(
        json.dumps({"key": "nodate.joblib", "serializer": "joblib", "created_at": "yesterday"})
    )
    (sidecars / "array.artifact.json").write_text("[1, 2]")
    write_sidecar(root, LegacyArtifact(key="good.joblib", serializer="joblib"))

    report = import_legacy(root, database_url=database_url)
    assert report.imported == ["good.joblib"]
    problems = {i.sidecar.rsplit("/", 1)[-1]: i.detail for i in report.skipped}
    assert "load_kwargs is list" in problems["list.joblib.artifact.json"]
    assert "describes key 'other.joblib'" in problems["renamed.joblib.artifact.json"]
    assert "'yesterday' is not an ISO date" in problems["nodate.joblib.artifact.json"]
    assert "not an object" in problems["array.artifact.json"]
    assert {i.problem for i in report.skipped} == {"broken"}


def test_a_key_this_package_refuses_is_reported(tmp_path: Path, database_url: str | None) -> None:
    root = tmp_path / "old-cache"
    (root / "xpersist_metadata_store").mkdir(parents=True)
    write_sidecar(root, LegacyArtifact(key=".xpersist_sql/x.joblib", serializer="joblib"))
    write_sidecar(root, LegacyArtifact(key="back\\slash.joblib", serializer="joblib"))
    report = import_legacy(root, database_url=database_url)
    assert sorted((i.key, i.problem) for i in report.skipped) == [
        (".xpersist_sql/x.joblib", "invalid_key"),
        ("back\\slash.joblib", "invalid_key"),
    ]
    assert any("hidden directory" in i.detail for i in report.skipped)


def test_not_a_legacy_store(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        import_legacy(tmp_path / "plain")
    assert "xpersist_metadata_store" in str(info.value) and "plain" in str(info.value)
    assert not (tmp_path / "plain" / ".xpersist_sql").exists()  # no index was created


def test_gc_after_import_keeps_legacy_payloads(tmp_path: Path, database_url: str | None) -> None:
    root = tmp_path / "old-cache"
    build_legacy_store(root)
    import_legacy(root, database_url=database_url)
    (root / "stray.bin").write_bytes(b"stray")
    store = CacheStore(root, database_url=database_url)
    report = store.gc(older_than=0)
    # the broken sidecar's payload is not an orphan: its sidecar still names it
    assert [(i.kind, i.path) for i in report.items] == [("orphan", "stray.bin")]
    assert (root / "broken.joblib").exists()
    assert (root / "members.zarr").exists()
    assert (root / "xpersist_metadata_store" / "broken.joblib.artifact.json").exists()
    store.close()


def test_cli_import_legacy(tmp_path: Path, database_url: str | None) -> None:
    root = tmp_path / "old-cache"
    build_legacy_store(root)
    command = [sys.executable, "-m", "xpersist_sql", "import-legacy", str(root)]
    if database_url is not None:
        command += ["--db", database_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPERSIST_SQL_")}

    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert (
        "6 sidecars: imported 4, 0 already indexed, 2 skipped, 1 with an unsupported serializer"
        in first.stderr
    )
    assert "missing_payload" in first.stdout and "unsupported_serializer" in first.stdout

    again = subprocess.run(
        [*command, "--json", "--strict"], capture_output=True, text=True, env=env, timeout=120
    )
    assert again.returncode == 1  # --strict: two sidecars were skipped
    result = json.loads(again.stdout)
    assert result["imported"] == [] and sorted(result["already_indexed"]) == sorted(CREATED)

    store = CacheStore(root, database_url=database_url)
    assert store.keys() == sorted(CREATED)
    assert store.get_artifact("air.nc").created_at == CREATED["air.nc"].replace(
        tzinfo=datetime.timezone.utc
    )
    store.close()

    plain = tmp_path / "plain"
    plain.mkdir()
    failed = subprocess.run(
        [sys.executable, "-m", "xpersist_sql", "import-legacy", str(plain)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: ") and "xpersist_metadata_store" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert list(plain.iterdir()) == []  # nothing created in a directory that is not a 2021 store
