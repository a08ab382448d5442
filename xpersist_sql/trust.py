"""Which payloads a ``get`` may load, and the deep check of ``get(key, verify=True)``.

Loading a pickle or a joblib file (or a ``.npy`` file with ``allow_pickle=True``) runs code the
file holds: whoever can write the store, or its index, could run code in every reader. A row
names its own serializer and load options, so a ``get`` that simply followed the row would load
whatever a co-writer (or a crafted row) chose. The rules, checked before anything is read:

1. ``get(key, accept=[...])`` (what :func:`~xpersist_sql.prefect.xpersist_task` passes: its
   declared serializer, or every serializer ``"auto"`` can pick) refuses a row written with
   another serializer: :class:`~xpersist_sql.errors.SerializerMismatchError`.
2. A load that runs code (:meth:`Serializer.runs_code
   <xpersist_sql.serializers.Serializer.runs_code>`) happens only when
   - the caller asked for it: named the serializer (``serializer=`` or in ``accept``) and, for a
     load that runs code only with some option (``allow_pickle``), passed that option itself;
   - or the store trusts the serializer (``CacheStore(..., trusted_serializers=[...])``; by
     default :data:`DEFAULT_TRUSTED`, ``joblib`` alone: what ``serializer="auto"`` writes for
     any other Python object, so that a store reads back its own default writes in every
     process; ``trusted_serializers=[]`` trusts none);
   - or this process wrote that very row (same store, key and ``created_at``).

   Anything else is an :class:`~xpersist_sql.errors.UntrustedPayloadError` that says which of
   these to do. Formats that run no code (zarr, netCDF, parquet, CSV, JSON, ``.npy`` without
   pickles) always load.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from .errors import PayloadChangedError, SerializerMismatchError, UntrustedPayloadError
from .models import Artifact
from .serializers import Serializer, get_serializer
from .storage import PayloadStorage, split_fingerprint

__all__ = [
    "DEFAULT_TRUSTED",
    "check_accepted",
    "check_trusted",
    "trusted_names",
    "verify_payload",
    "written_here",
    "wrote",
]

#: What a store trusts without ``trusted_serializers``: the fallback format of ``"auto"``.
#: Never ``pickle``, and never ``numpy.npy`` (whose rows could ask for ``allow_pickle``).
DEFAULT_TRUSTED: frozenset[str] = frozenset({"joblib"})

#: How many rows written by this process are remembered as trusted (oldest forgotten first).
WRITTEN_LIMIT = 100_000

_WRITTEN: OrderedDict[tuple[str, str, str], None] = OrderedDict()
_LOCK = threading.Lock()


def trusted_names(names: Iterable[str] | None, where: str) -> frozenset[str]:
    """Validate a store's ``trusted_serializers``: registered serializer names.

    Raises
    ------
    TypeError
        If ``names`` is a single string or holds something else than strings.
    SerializerNotFoundError
        For an unknown name (the message lists the known ones).
    """
    if names is None:
        return DEFAULT_TRUSTED
    if isinstance(names, str):
        raise TypeError(
            f"{where}trusted_serializers must be a list of serializer names, got the string "
            f"{names!r}; write trusted_serializers=[{names!r}]"
        )
    found = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{where}trusted_serializers holds {name!r}, not a serializer name")
        found.append(get_serializer(name).name or name)
    return frozenset(found)


def _row_id(store: str, artifact: Artifact) -> tuple[str, str, str]:
    return (store, artifact.key, artifact.created_at.isoformat())


def wrote(store: str, artifact: Artifact) -> None:
    """Note that this process wrote ``artifact`` in the store at ``store`` (its URL)."""
    row = _row_id(store, artifact)
    with _LOCK:
        _WRITTEN[row] = None
        _WRITTEN.move_to_end(row)
        while len(_WRITTEN) > WRITTEN_LIMIT:
            _WRITTEN.popitem(last=False)


def written_here(store: str, artifact: Artifact) -> bool:
    """Whether this process wrote this very row (same store, key and ``created_at``)."""
    with _LOCK:
        return _row_id(store, artifact) in _WRITTEN


def check_accepted(artifact: Artifact, accept: Collection[str] | None, store: str) -> None:
    """Raise :class:`SerializerMismatchError` if the row's serializer is not in ``accept``."""
    if accept is None or artifact.serializer in accept:
        return
    raise SerializerMismatchError(
        f"key {artifact.key!r} in store {store!r} was written with serializer "
        f"{artifact.serializer!r}, and this read accepts only {sorted(accept)}: it is not "
        "loaded. Overwrite it with the serializer you expect, or read it naming its serializer "
        "if you trust who wrote it"
    )


def check_trusted(
    artifact: Artifact,
    ser: Serializer,
    *,
    asked: bool,
    load_kwargs: Mapping[str, Any] | None,
    trusted: Collection[str],
    store: str,
) -> None:
    """Raise :class:`UntrustedPayloadError` if loading would run code nobody trusted.

    Parameters
    ----------
    artifact : Artifact
        The row about to be loaded.
    ser : Serializer
        The serializer that would load it.
    asked : bool
        Whether the caller named that serializer (``serializer=`` or ``accept=``).
    load_kwargs : mapping, optional
        The caller's own load options (the row's are merged under them).
    trusted : collection of str
        The store's ``trusted_serializers``.
    store : str
        The store's URL, for the check of rows this process wrote and for the message.
    """
    merged = {**artifact.load_kwargs, **(load_kwargs or {})}
    if not ser.runs_code(merged):
        return
    if ser.name in trusted:
        return
    if asked and ser.runs_code(load_kwargs or {}):
        return  # the caller asked for exactly this code-running load
    if written_here(store, artifact):
        return
    why = (
        f"its load options {artifact.load_kwargs!r} make {ser.name!r} unpickle objects"
        if not ser.runs_code({})
        else f"{ser.name!r} files are pickles"
    )
    raise UntrustedPayloadError(
        f"not loading key {artifact.key!r} from store {store!r}: {why}, and loading one runs "
        "code it holds, so it loads only where that is trusted. If you trust every writer of "
        f"this store, open it with CacheStore(..., trusted_serializers=[{ser.name!r}]); to trust "
        f"this read, call get({artifact.key!r}, serializer={ser.name!r}"
        + (", load_kwargs={'allow_pickle': True}" if not ser.runs_code({}) else "")
        + ")"
    )


def verify_payload(storage: PayloadStorage, artifact: Artifact, store: str) -> None:
    """Check the whole payload against its row: the checksum if recorded, else every file.

    Reads every byte when the row has a checksum; otherwise lists every file (names, sizes,
    modification times or ETags), which finds a chunk deleted or rewritten deep inside a
    directory payload that the O(1) identity check cannot see.

    Raises
    ------
    PayloadChangedError
        If the payload differs from what the row recorded.
    """
    path = storage.path(artifact.key)
    try:
        if artifact.checksum is not None:
            found = storage.checksum(path)
            if found == artifact.checksum:
                return
            what = f"its checksum is {found}, the row recorded {artifact.checksum}"
        else:
            walk = split_fingerprint(artifact.fingerprint)[0]
            if walk is None:
                return  # nothing recorded to compare with (a row of a 2021 store, not verified)
            current = storage.stat(path).fingerprint
            if current == walk:
                return
            what = f"its files ({current}) differ from the recorded ones ({walk})"
    except (FileNotFoundError, NotADirectoryError):
        what = "it is gone"
    raise PayloadChangedError(
        f"the payload of key {artifact.key!r} in store {store!r} is not the one its row "
        f"describes: {what}. It was changed behind the index's back; recompute it with "
        f"store.put({artifact.key!r}, value, on_duplicate_key='overwrite'), or, if the change "
        "was deliberate, record it with `xpersist-sql verify --refingerprint`"
    )
