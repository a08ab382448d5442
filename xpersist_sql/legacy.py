"""Index a store written by xpersist 2021 in place: payloads stay, sidecars become rows.

The 2021 format (xpersist 2021.12.17) is::

    <PATH>/<key>                                            the payload
    <PATH>/xpersist_metadata_store/<key>.artifact.json      its pydantic v1 model, as JSON

with the fields ``key, serializer, load_kwargs, dump_kwargs, additional_metadata, created_at``
(``created_at`` a naive UTC ISO string). :func:`import_legacy` reads every sidecar and records a
row for it in the store's index, keeping ``created_at`` and the metadata (the Prefect context in
``additional_metadata`` fills the indexed query columns) and computing each payload's size and
fingerprint. Nothing is moved, rewritten or deleted, and running it again changes nothing: keys
already in the index are left as they are. Afterwards ``CacheStore(PATH)`` serves the store.

Sidecars that cannot be imported are reported, and the rest still imports:

- ``broken``: not JSON, not an object, or a field of the wrong type;
- ``missing_payload``: the payload ``<PATH>/<key>`` is gone;
- ``invalid_key``: the key would not be a valid key of this package (absolute, ``..``...);
- ``overlapping_key``: the key contains, or lies inside, another imported key.

Artifacts whose serializer has no equivalent here (the 2021 ``xcollection``) are imported, so
that their payloads stay indexed and are never taken for orphans by ``gc``, and reported as
``unsupported_serializer``: reading them with ``get`` raises
:class:`~xpersist_sql.SerializerNotFoundError` until a serializer of that name is registered.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .errors import InvalidKeyError
from .models import Artifact
from .serializers import available_serializers
from .storage import PayloadStorage, validate_key

if TYPE_CHECKING:
    from .backend import StoreBackend

__all__ = [
    "LEGACY_METADATA_DIR",
    "LEGACY_SUFFIX",
    "LegacyImportReport",
    "LegacyIssue",
    "import_legacy_into",
    "sidecars",
]

#: Directory of the 2021 sidecars, under the store root.
LEGACY_METADATA_DIR = "xpersist_metadata_store"
#: Suffix of a 2021 sidecar after the key.
LEGACY_SUFFIX = ".artifact.json"

#: 2021 serializers without an equivalent here, and what their payloads are.
UNSUPPORTED_SERIALIZERS = {
    "xcollection": "an xcollection.Collection: a directory holding one zarr store per dataset, "
    "readable with xcollection or with xarray.open_zarr on each member",
}

_CHUNK = 500


@dataclass(frozen=True)
class LegacyIssue:
    """A sidecar that was skipped, or imported with a caveat.

    Attributes
    ----------
    sidecar : str
        Path of the sidecar relative to the store root.
    key : str or None
        The key it describes, when readable.
    problem : str
        What is wrong: ``"broken"``, ``"missing_payload"``, ``"invalid_key"``,
        ``"overlapping_key"`` or ``"unsupported_serializer"``.
    detail : str
        A sentence saying what and what to do.
    """

    sidecar: str
    key: str | None
    problem: str
    detail: str


@dataclass
class LegacyImportReport:
    """What :func:`import_legacy` did.

    Attributes
    ----------
    path : str
        The store root.
    sidecars : int
        Number of sidecar files found.
    imported : list of str
        Keys recorded by this run.
    already_indexed : list of str
        Keys that were in the index before (left unchanged).
    unsupported : list of LegacyIssue
        Imported artifacts whose serializer this package cannot load.
    skipped : list of LegacyIssue
        Sidecars not imported (broken, payload missing, invalid key).
    """

    path: str
    sidecars: int = 0
    imported: list[str] = field(default_factory=list)
    already_indexed: list[str] = field(default_factory=list)
    unsupported: list[LegacyIssue] = field(default_factory=list)
    skipped: list[LegacyIssue] = field(default_factory=list)


class _Skip(Exception):
    def __init__(self, problem: str, detail: str, key: str | None = None) -> None:
        super().__init__(detail)
        self.problem = problem
        self.detail = detail
        self.key = key


def _created_at(value: Any) -> datetime:
    if not isinstance(value, str):
        raise _Skip("broken", f"created_at is {value!r}, not an ISO date string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _Skip("broken", f"created_at {value!r} is not an ISO date") from None
    # naive means UTC, as the 2021 package wrote datetime.utcnow()
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


def _mapping(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Skip("broken", f"{name} is {type(value).__name__}, not an object")
    return value


def _read_sidecar(
    storage: PayloadStorage, sidecar: str, relative: str
) -> tuple[str, dict[str, Any]]:
    """Return the key and the row fields of a sidecar (no payload access yet)."""
    try:
        document = json.loads(storage.fs.cat_file(sidecar))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Skip("broken", f"not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise _Skip("broken", f"the JSON is a {type(document).__name__}, not an object")
    expected = relative[len(LEGACY_METADATA_DIR) + 1 : -len(LEGACY_SUFFIX)]
    key = document.get("key", expected)
    serializer = document.get("serializer")
    if not isinstance(key, str) or not isinstance(serializer, str) or not serializer:
        raise _Skip("broken", "the key or serializer field is missing or not a string")
    if key != expected:
        raise _Skip(
            "broken", f"it describes key {key!r} but its file name says {expected!r}", key=key
        )
    try:
        validate_key(key)
    except InvalidKeyError as exc:
        raise _Skip("invalid_key", str(exc), key=key) from None
    try:
        fields = {
            "key": key,
            "serializer": serializer,
            "load_kwargs": _mapping(document, "load_kwargs"),
            "dump_kwargs": _mapping(document, "dump_kwargs"),
            "additional_metadata": _mapping(document, "additional_metadata"),
            "created_at": _created_at(document.get("created_at")),
        }
    except _Skip as skip:
        skip.key = key
        raise
    return key, fields


def sidecars(storage: PayloadStorage) -> list[str]:
    """Return the paths of the 2021 sidecars under the store root.

    Raises
    ------
    FileNotFoundError
        If the root has no ``xpersist_metadata_store`` directory.
    """
    meta_dir = storage.path(LEGACY_METADATA_DIR)
    if not storage.fs.isdir(meta_dir):
        raise FileNotFoundError(
            f"{storage.url()} is not a store written by xpersist 2021: it has no "
            f"{LEGACY_METADATA_DIR}/ directory of <key>{LEGACY_SUFFIX} sidecars"
        )
    found = storage.fs.find(meta_dir)
    return sorted(path for path in found if path.endswith(LEGACY_SUFFIX))


def import_legacy_into(
    backend: StoreBackend,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    chunk_size: int = _CHUNK,
) -> LegacyImportReport:
    """Index the 2021 sidecars under the store root into the store's rows (see the module).

    Parameters
    ----------
    backend : StoreBackend
        A writable store whose root is the 2021 store (it becomes a store if it is not one).
    progress : callable, optional
        ``progress("importing", done, total)``.
    chunk_size : int
        Rows recorded per transaction.

    Returns
    -------
    LegacyImportReport
    """
    storage = backend.storage
    report = LegacyImportReport(path=storage.url())
    found = sidecars(storage)
    report.sidecars = len(found)
    index = backend.index(create=True)
    assert index is not None
    existing = index.all_keys()
    known = set(available_serializers())
    pending: list[Artifact] = []
    unsupported: dict[str, LegacyIssue] = {}

    def flush() -> None:
        if not pending:
            return
        with index.write() as conn:
            for artifact in pending:
                overlap = index.conflicting_key(conn, artifact.key)
                if overlap is not None:
                    report.skipped.append(
                        LegacyIssue(
                            f"{LEGACY_METADATA_DIR}/{artifact.key}{LEGACY_SUFFIX}",
                            artifact.key,
                            "overlapping_key",
                            f"the key contains or lies inside the key {overlap!r}; keys of a "
                            "store may not overlap, so it was not imported",
                        )
                    )
                    unsupported.pop(artifact.key, None)
                elif index.insert_if_absent(conn, artifact) is None:
                    report.already_indexed.append(artifact.key)
                    unsupported.pop(artifact.key, None)
                else:
                    report.imported.append(artifact.key)
        pending.clear()

    for done, sidecar in enumerate(found, 1):
        relative = posixpath.relpath(sidecar, storage.root)
        try:
            key, fields = _read_sidecar(storage, sidecar, relative)
            if key in existing:
                report.already_indexed.append(key)
            else:
                try:
                    stat = storage.stat(storage.path(key))
                except FileNotFoundError:
                    raise _Skip(
                        "missing_payload",
                        f"its payload {storage.url(key)} is gone; delete the sidecar or restore "
                        "the payload, then import again",
                        key=key,
                    ) from None
                serializer = fields["serializer"]
                if serializer not in known:
                    what = UNSUPPORTED_SERIALIZERS.get(serializer, "a format of another package")
                    unsupported[key] = LegacyIssue(
                        relative,
                        key,
                        "unsupported_serializer",
                        f"imported, but there is no {serializer!r} serializer here (the payload is "
                        f"{what}); store.get raises SerializerNotFoundError until one is "
                        "registered under that name, store.payload_url(key) gives its location",
                    )
                pending.append(
                    Artifact(
                        **fields,
                        size_bytes=stat.size_bytes,
                        fingerprint=stat.fingerprint,
                    )
                )
                existing.add(key)
        except _Skip as skip:
            report.skipped.append(LegacyIssue(relative, skip.key, skip.problem, skip.detail))
        except (OSError, ValueError) as exc:
            report.skipped.append(
                LegacyIssue(
                    relative, None, "broken", f"cannot read it: {type(exc).__name__}: {exc}"
                )
            )
        if len(pending) >= chunk_size:
            flush()
        if progress is not None:
            progress("importing", done, len(found))
    flush()
    report.unsupported = [unsupported[key] for key in sorted(unsupported)]
    return report
