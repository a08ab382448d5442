"""Metadata that round-trips (xpersist_sql/metadata.py), on SQLite and PostgreSQL.

What ``put`` records reads back the same, or ``put`` refuses it with a ``ValueError`` naming
the field, before anything is written: NaN, infinities, lone surrogates, non-string keys and
objects that are not JSON. Datetimes and numpy scalars are converted explicitly.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from xpersist_sql import CacheStore
from xpersist_sql.metadata import json_metadata


class Kind(str, enum.Enum):
    daily = "daily"


def listing(root: str) -> list[str]:
    """Every path below ``root`` (the store's hidden directory included), sorted."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, n), root) for n in dirs + files]
    return sorted(p for p in found if not p.endswith(("-wal", "-shm", ".lock")))


@pytest.mark.parametrize(
    ("field", "value", "fragments"),
    [
        ("additional_metadata", {"x": float("nan")}, ["additional_metadata['x'] = nan"]),
        ("additional_metadata", {"x": [1.0, float("inf")]}, ["additional_metadata['x'][1]"]),
        ("load_kwargs", {"fill": -float("inf")}, ["load_kwargs['fill'] = -inf", "finite"]),
        ("additional_metadata", {"who": "a\udc80b"}, ["additional_metadata['who']", "surrogate"]),
        ("additional_metadata", {"a\ud800": 1}, ["additional_metadata key", "surrogate"]),
        ("additional_metadata", {"m": {1: "x"}}, ["additional_metadata['m'][1]", "int key"]),
        ("load_kwargs", {"cls": object}, ["load_kwargs['cls']", "builtins.type", "not a JSON"]),
        ("dump_kwargs", {"path": Path("/tmp/x")}, ["dump_kwargs['path']", "PosixPath"]),
        ("dump_kwargs", {"n": 2**64}, ["dump_kwargs['n'] = 18446744073709551616", "64 bits"]),
    ],
)
def test_put_refuses_what_would_not_read_back(
    store: CacheStore, field: str, value: dict[str, Any], fragments: list[str]
) -> None:
    store.put("before.json", 0, serializer="json")
    before = listing(store.path)
    with pytest.raises(ValueError) as caught:
        store.put("m.json", [1, 2], serializer="json", **{field: value})
    message = str(caught.value)
    assert "put of key 'm.json' in store" in message
    for fragment in fragments:
        assert fragment in message, message
    assert store.keys() == ["before.json"]
    assert listing(store.path) == before  # nothing was written, nothing left behind


def test_conversions_are_explicit_and_stable() -> None:
    aware = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc)
    converted = json_metadata(
        {
            "when": aware,
            "stamp": pd.Timestamp("2024-05-01T12:30:00+00:00"),
            "day": dt.date(2024, 5, 1),
            "at": dt.time(6, 0),
            "np_time": np.datetime64("2024-05-01T12:30"),
            "member": np.int64(3),
            "scale": np.float32(0.5),
            "flag": np.bool_(True),
            "dtype": np.dtype("float32"),
            "type": np.int16,
            "pair": (1, "a"),
            "run": uuid.UUID("12345678-1234-5678-1234-567812345678"),
            "kind": Kind.daily,
            "nested": {"deep": [np.int8(1), (2.5,)]},
        },
        "additional_metadata",
    )
    assert converted == {
        "when": "2024-05-01T12:30:00Z",
        "stamp": "2024-05-01T12:30:00Z",
        "day": "2024-05-01",
        "at": "06:00:00",
        "np_time": "2024-05-01T12:30",
        "member": 3,
        "scale": 0.5,
        "flag": True,
        "dtype": "float32",
        "type": "int16",
        "pair": [1, "a"],
        "run": "12345678-1234-5678-1234-567812345678",
        "kind": "daily",
        "nested": {"deep": [1, [2.5]]},
    }
    assert type(converted["member"]) is int and type(converted["flag"]) is bool
    with pytest.raises(ValueError, match=r"additional_metadata\['x'\] = nan"):
        json_metadata({"x": np.float64("nan")}, "additional_metadata")
    with pytest.raises(TypeError, match="must be a dict"):
        json_metadata([1], "additional_metadata")  # type: ignore[arg-type]


def test_converted_metadata_reads_back_and_is_found(store: CacheStore) -> None:
    stamp = pd.Timestamp("2024-05-01T12:30:00+00:00")
    store.put(
        "m.json",
        1,
        serializer="json",
        additional_metadata={"stamp": stamp, "member": np.int64(2), "pair": (1, 2)},
        load_kwargs={},
        dump_kwargs={"indent": np.int32(2)},
    )
    artifact = store.get_artifact("m.json")
    assert artifact.additional_metadata == {
        "stamp": "2024-05-01T12:30:00Z",
        "member": 2,
        "pair": [1, 2],
    }
    assert artifact.dump_kwargs == {"indent": 2}
    # query filters are converted the same way, so the value put in finds its artifact
    assert [a.key for a in store.query(metadata={"stamp": stamp})] == ["m.json"]
    assert [a.key for a in store.query(metadata={"member": np.int64(2)})] == ["m.json"]
    with pytest.raises(ValueError, match=r"metadata\['x'\] = nan"):
        store.query(metadata={"x": float("nan")})


@pytest.mark.parametrize(
    "name",
    ["Jürgen", "température", "气温", "tab\there", "back\\slash", 'quote"d', "per%cent_under"],
)
def test_metadata_filters_find_every_name(store: CacheStore, name: str) -> None:
    """SQLite finds names with non-ASCII, tab, backslash, quotes, LIKE characters, as
    PostgreSQL does."""
    store.put("hit.json", 1, serializer="json", additional_metadata={"who": name})
    store.put("miss.json", 1, serializer="json", additional_metadata={"who": name + "x"})
    assert [a.key for a in store.query(metadata={"who": name})] == ["hit.json"]


@pytest.mark.parametrize("extra", [0, 1, 600, 5000])
def test_long_names_and_tags_are_matched_exactly(store: CacheStore, extra: int) -> None:
    """Names longer than their indexed column are found by an exact filter, and never match
    another name sharing their beginning."""
    flow = "f" * (500 + extra)
    tag = "t" * (250 + extra)
    store.put(
        "long.json",
        1,
        serializer="json",
        additional_metadata={"flow_name": flow, "task_name": flow, "task_tags": [tag]},
    )
    store.put(
        "other.json",
        1,
        serializer="json",
        additional_metadata={
            "flow_name": flow + "x",
            "task_name": flow + "x",
            "task_tags": [tag + "x"],
        },
    )
    assert [a.key for a in store.query(flow_name=flow)] == ["long.json"]
    assert [a.key for a in store.query(task_name=flow + "x")] == ["other.json"]
    assert [a.key for a in store.query(tags=[tag])] == ["long.json"]
    assert [a.key for a in store.query(tags=[tag + "x"], flow_name=flow + "x")] == ["other.json"]
    assert store.get_artifact("long.json").additional_metadata["flow_name"] == flow
