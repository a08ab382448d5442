"""Loads are safe and honest: code-running formats load only where trusted, and a payload that
is not the one its row describes is an error, never a silent value (see xpersist_sql/trust.py).

A "co-writer" is another process writing the same store: its rows are not this process's, so
they get no trust from having been written here. Its payloads, when loaded, would create a
marker file: every refusal also asserts that no code ran and nothing moved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from xpersist_sql import (
    CacheStore,
    PayloadChangedError,
    SerializerMismatchError,
    SerializerNotFoundError,
    UntrustedPayloadError,
)

# Writes, in another process, a payload whose load creates the file MARKER.
_CO_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from xpersist_sql import CacheStore

    class Booby:
        def __init__(self, marker):
            self.marker = marker
        def __reduce__(self):  # unpickling this calls Path(marker).touch()
            return (Path.touch, (Path(self.marker),))

    path, database_url, key, serializer, marker = sys.argv[1:6]
    store = CacheStore(path, database_url=database_url or None, on_duplicate_key="overwrite")
    if serializer == "numpy.npy":
        value = np.array([Booby(marker)], dtype=object)
        store.put(key, value, serializer=serializer, dump_kwargs={"allow_pickle": True},
                  load_kwargs={"allow_pickle": True})
    else:
        store.put(key, Booby(marker), serializer=serializer)
    """
)


def co_write(store: CacheStore, key: str, serializer: str, marker: Path) -> None:
    """Store, from another process, a payload of ``serializer`` that creates ``marker``."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            _CO_WRITER,
            store.path,
            store.database_url,
            key,
            serializer,
            str(marker),
        ],
        check=True,
        timeout=300,
    )


def snapshot(store: CacheStore) -> dict[str, tuple[int, int]]:
    """Every payload file (hidden directory aside): relative name -> (size, mtime_ns)."""
    root = Path(store.path)
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".xpersist_sql" not in p.parts
    }


@pytest.mark.parametrize("serializer", ["pickle", "numpy.npy"])
def test_a_co_writers_code_running_row_is_refused_and_runs_nothing(
    store: CacheStore, tmp_path: Path, serializer: str
) -> None:
    marker = tmp_path / "code-ran"
    co_write(store, "v", serializer, marker)
    artifact, files = store.get_artifact("v"), snapshot(store)
    with pytest.raises(UntrustedPayloadError, match="trusted_serializers") as info:
        store.get("v")
    assert f"serializer={serializer!r}" in str(info.value)
    assert not marker.exists()  # no code ran
    assert store.get_artifact("v") == artifact and snapshot(store) == files  # nothing moved


def test_naming_a_pickle_serializer_or_trusting_it_loads_the_row(
    make_store: Callable[..., CacheStore], tmp_path: Path
) -> None:
    store = make_store()
    marker = tmp_path / "code-ran"
    co_write(store, "v", "pickle", marker)
    store.get("v", serializer="pickle")  # the caller asks for it: it trusts who wrote it
    assert marker.exists()
    marker.unlink()
    make_store(trusted_serializers=["pickle"]).get("v")
    assert marker.exists()


def test_a_row_asking_for_allow_pickle_needs_the_caller_to_ask_too(
    make_store: Callable[..., CacheStore], tmp_path: Path
) -> None:
    store = make_store()
    marker = tmp_path / "code-ran"
    co_write(store, "v.npy", "numpy.npy", marker)
    with pytest.raises(UntrustedPayloadError, match="allow_pickle"):
        store.get("v.npy", serializer="numpy.npy")  # naming the format is not enough
    assert not marker.exists()
    store.get("v.npy", serializer="numpy.npy", load_kwargs={"allow_pickle": True})
    assert marker.exists()
    marker.unlink()
    make_store(trusted_serializers=["numpy.npy"]).get("v.npy")
    assert marker.exists()


def test_joblib_is_trusted_by_default_and_can_be_distrusted(
    make_store: Callable[..., CacheStore], tmp_path: Path
) -> None:
    store = make_store()
    marker = tmp_path / "code-ran"
    co_write(store, "v", "joblib", marker)
    with pytest.raises(UntrustedPayloadError, match="'joblib' files are pickles"):
        make_store(trusted_serializers=[]).get("v")
    assert not marker.exists()
    store.get("v")  # the default: joblib is what "auto" writes for plain objects
    assert marker.exists()


def test_what_this_process_wrote_loads_without_trust(store: CacheStore) -> None:
    strict = CacheStore(store.path, database_url=store.database_url, trusted_serializers=[])
    strict.put("p", {"a": 1}, serializer="pickle")
    assert strict.get("p") == {"a": 1}
    strict.close()


def test_accept_refuses_a_row_of_another_serializer(store: CacheStore, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    co_write(store, "v.json", "pickle", marker)
    with pytest.raises(SerializerMismatchError, match=r"written with serializer 'pickle'"):
        store.get("v.json", accept=["json"])
    assert not marker.exists()
    store.put("w.json", {"a": 1}, serializer="json")
    assert store.get("w.json", accept=["json"]) == {"a": 1}


def test_trusted_serializers_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SerializerNotFoundError):
        CacheStore(tmp_path / "s", trusted_serializers=["pikle"])
    with pytest.raises(TypeError, match=r"trusted_serializers=\['pickle'\]"):
        CacheStore(tmp_path / "s", trusted_serializers="pickle")  # type: ignore[arg-type]


# -- a payload that is not its row's is an error ------------------------------------------------
def test_a_hand_edited_json_of_the_same_size_is_an_error(store: CacheStore) -> None:
    store.put("cfg.json", {"threshold": 1}, serializer="json")
    path = Path(store.path) / "cfg.json"
    text = path.read_text()
    path.write_text(text.replace("1", "9"))  # same size, other value
    assert len(path.read_text()) == len(text)
    with pytest.raises(PayloadChangedError, match="verify --refingerprint"):
        store.get("cfg.json")
    assert json.loads(path.read_text()) == {"threshold": 9}  # nothing was moved or removed
    assert store.get_artifact("cfg.json").key == "cfg.json"
    store.put("cfg.json", {"threshold": 1}, serializer="json", on_duplicate_key="overwrite")
    assert store.get("cfg.json") == {"threshold": 1}  # the remedy the message gives


def dataset() -> xr.Dataset:
    return xr.Dataset(
        {"t": (("time", "x"), np.arange(40.0).reshape(4, 10))},
        coords={"time": np.arange(4)},
    )


def put_chunked(store: CacheStore, key: str, **kwargs: object) -> Path:
    store.put(key, dataset(), dump_kwargs={"encoding": {"t": {"chunks": (1, 10)}}}, **kwargs)
    chunks = sorted((Path(store.path) / key / "t" / "c").rglob("*"))
    return next(p for p in chunks if p.is_file())


def test_a_deleted_chunk_is_found_by_verify(store: CacheStore) -> None:
    chunk = put_chunked(store, "ds.zarr")
    chunk.unlink()  # deep inside the directory: the O(1) identity check does not see it
    loaded = store.get("ds.zarr")  # documented: deep edits are verify's job
    assert np.isnan(loaded["t"].values).any()
    with pytest.raises(PayloadChangedError, match="files"):
        store.get("ds.zarr", verify=True)
    strict = CacheStore(store.path, database_url=store.database_url, checksum=True)
    with pytest.raises(PayloadChangedError):
        strict.get("ds.zarr")  # a store opened with checksum=True verifies every get
    strict.close()


def test_a_chunk_rewritten_in_place_is_found_by_the_checksum(store: CacheStore) -> None:
    chunk = put_chunked(store, "ds.zarr", checksum=True)
    before = chunk.stat()
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))  # same size, and the same times put back
    os.utime(chunk, ns=(before.st_atime_ns, before.st_mtime_ns))
    store.get("ds.zarr")  # identity and file listing are unchanged
    with pytest.raises(PayloadChangedError, match="checksum"):
        store.get("ds.zarr", verify=True)
    assert store.get("ds.zarr", verify=False) is not None  # verify=False overrides


def test_verify_passes_on_an_intact_payload(store: CacheStore) -> None:
    put_chunked(store, "ds.zarr", checksum=True)
    put_chunked(store, "plain.zarr")
    xr.testing.assert_identical(store.get("ds.zarr", verify=True).load(), dataset())
    xr.testing.assert_identical(store.get("plain.zarr", verify=True).load(), dataset())
