"""Integrity checks: every row of the store has its payload, and the payload is what was stored.

Rows whose key is not a valid key are reported (``invalid key``) and never read or acted on.

Every payload is walked (all its files are listed): the walk fingerprint recorded at put time
is what ``verify`` compares, and it sees edits deep inside a directory payload (a chunk
rewritten in place) that the O(1) identity a ``get`` checks cannot see.

``refingerprint=True`` re-records the fingerprint (sizes, modification times or ETags) of
payloads whose files were rewritten by a legitimate copy (``cp -r``, ``rsync`` without
``--times``, a restore from backup): where a sha256 checksum was recorded, only if the content
still matches it; without one, the caller vouches for the content.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..backend import StoreBackend
from ..db.index import ArtifactIndex
from ..errors import InvalidKeyError
from ..models import Artifact
from ..storage import PayloadStat, PayloadStorage, split_fingerprint

__all__ = ["VerifyProblem", "VerifyReport", "repair_missing", "verify"]

Progress = Callable[[str, int, int], None]


def _noop(phase: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class VerifyProblem:
    """A row whose payload is gone or no longer what was stored.

    Attributes
    ----------
    key : str
        The artifact's key.
    problem : {"missing", "modified", "corrupt", "invalid key"}
        ``missing``: no payload; ``modified``: its size / files / modification times differ from
        the recorded fingerprint (and no checksum proves the content unchanged); ``corrupt``: its
        content no longer matches the recorded sha256 checksum; ``invalid key``: the row's key
        would lie outside the store (``../x``, an absolute path...), so its payload is never
        read or removed.
    detail : str
        What differs.
    """

    key: str
    problem: str
    detail: str


@dataclass
class VerifyReport:
    """What :func:`verify` checked and found.

    Attributes
    ----------
    checked : int
        Number of rows checked.
    problems : list of VerifyProblem
        Missing, modified and corrupt payloads and invalid keys, by key.
    repaired : list of str
        Keys whose rows were dropped (``verify(repair=True)``).
    refingerprinted : list of str
        Keys whose fingerprint and size were re-recorded (``verify(refingerprint=True)``):
        their payload's files had changed on disk but not their content (by checksum, where
        one was recorded).
    """

    checked: int = 0
    problems: list[VerifyProblem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    refingerprinted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every payload is present and intact."""
        return not self.problems

    @property
    def missing(self) -> list[str]:
        """Keys whose payload is gone."""
        return [p.key for p in self.problems if p.problem == "missing"]

    @property
    def damaged(self) -> list[str]:
        """Keys whose payload changed (modified or corrupt)."""
        return [p.key for p in self.problems if p.problem in ("modified", "corrupt")]

    @property
    def invalid(self) -> list[str]:
        """Keys of rows that are not valid keys (never acted on)."""
        return [p.key for p in self.problems if p.problem == "invalid key"]


def _describe_change(recorded: str, current: str) -> str:
    def size(fingerprint: str) -> str:
        fields = dict(part.split("=", 1) for part in fingerprint.split(";") if "=" in part)
        return f"{fields.get('files', '?')} files, {fields.get('size', '?')} bytes"

    was, now = size(recorded), size(current)
    if was != now:
        return f"payload changed since it was stored: {was} -> {now}"
    return f"payload files were rewritten since it was stored ({now}, other modification times)"


@dataclass(frozen=True)
class _Checked:
    """What one row's check found: a problem, and the stat a re-fingerprint would record."""

    problem: VerifyProblem | None = None
    stale: PayloadStat | None = None  # the fingerprint changed, the content did not (or unknown)


def _check_row(storage: PayloadStorage, artifact: Artifact, checksums: bool) -> _Checked:
    key = artifact.key
    try:
        path = storage.check_path(key)
    except InvalidKeyError as exc:
        return _Checked(VerifyProblem(key, "invalid key", str(exc)))
    missing = _Checked(VerifyProblem(key, "missing", f"no payload at {storage.url(key)}"))
    if not storage.exists(key):
        return missing
    try:
        stat = storage.stat(path)
    except FileNotFoundError:
        return missing
    walk = split_fingerprint(artifact.fingerprint)[0]
    fingerprint_ok = walk is None or stat.fingerprint == walk
    stale = None if fingerprint_ok else stat
    if artifact.checksum and (checksums or not fingerprint_ok):
        digest = storage.checksum(path)
        if digest != artifact.checksum:
            detail = f"checksum {digest} differs from the recorded {artifact.checksum}"
            return _Checked(VerifyProblem(key, "corrupt", detail))
        return _Checked(stale=stale)  # same content: a stale fingerprint is not a problem
    if stale is not None:
        detail = _describe_change(walk or "", stale.fingerprint)
        return _Checked(VerifyProblem(key, "modified", detail), stale)
    return _Checked()


def _refingerprint(
    index: ArtifactIndex, storage: PayloadStorage, artifact: Artifact, checked: PayloadStat
) -> bool:
    """Record ``checked`` as the fingerprint of ``artifact``'s row if nothing moved meanwhile.

    In one write transaction the row is read again: it must still be the row that was checked
    (same ``created_at``, fingerprint and checksum), and the payload must still have the
    fingerprint it had when it was checked (so the content that was hashed is the content now
    recorded). A put or delete of the key waits for the transaction, or was seen.
    """
    key = artifact.key
    with index.write() as conn:
        found = index.fetch(conn, key, for_update=True)
        if found is None:
            return False
        row_id, current = found
        if (current.created_at, current.fingerprint, current.checksum) != (
            artifact.created_at,
            artifact.fingerprint,
            artifact.checksum,
        ):
            return False
        path = storage.path(key)
        try:
            identity = storage.identity(path)
            now = storage.stat(path)
        except FileNotFoundError:
            return False
        if (now.size_bytes, now.fingerprint) != (checked.size_bytes, checked.fingerprint):
            return False
        recorded = PayloadStat(now.size_bytes, now.fingerprint, identity).recorded
        index.update_stat(conn, row_id, size_bytes=now.size_bytes, fingerprint=recorded)
    return True


def verify(
    backend: StoreBackend,
    *,
    checksums: bool = True,
    refingerprint: bool = False,
    progress: Progress | None = None,
    batch_size: int = 500,
) -> VerifyReport:
    """Check that every row has its payload and that the payload is what was stored.

    Each payload's fingerprint (file names, sizes, modification times or ETags) is compared
    with the one recorded at put time; where a sha256 checksum was recorded (``checksum=True``)
    the content is hashed and compared too, and decides. A problem is confirmed against a fresh
    read of the row, so a payload replaced by a concurrent put is not reported.

    Parameters
    ----------
    backend : StoreBackend
        The store to check (readonly stores too, unless ``refingerprint``).
    checksums : bool
        Hash the content of payloads that have a recorded checksum (a full read of each).
    refingerprint : bool
        Re-record the fingerprint and size of payloads whose fingerprint changed but whose
        content did not: it still matches the recorded checksum or, without one, is taken as
        unchanged (a ``modified`` payload is then no longer a problem). A ``corrupt`` payload
        is never re-recorded. The keys go to :attr:`VerifyReport.refingerprinted`.
    progress : callable, optional
        ``progress("verifying", done, total)``.
    batch_size : int
        Rows read from the index at a time.

    Returns
    -------
    VerifyReport
    """
    report = progress or _noop
    backend.require_store()
    index, storage = backend.index(), backend.storage
    result = VerifyReport()
    if index is None:
        return result
    last_id, total = index.id_range()
    after = -1
    while last_id is not None and after < last_id:
        rows = index.batch_after(after, last_id, batch_size)
        if not rows:
            break
        after = rows[-1][0]
        for _row_id, artifact in rows:
            checked = _check_row(storage, artifact, checksums)
            problem = checked.problem
            if problem is not None and problem.problem != "invalid key":
                # a concurrent put or delete may have been swapping it: look again
                fresh = index.get(artifact.key)
                if fresh is None or fresh.created_at != artifact.created_at:
                    checked = _Checked()
                else:
                    artifact = fresh
                    checked = _check_row(storage, fresh, checksums)
            stale = checked.stale if refingerprint else None
            if stale is not None and _refingerprint(index, storage, artifact, stale):
                result.refingerprinted.append(artifact.key)
            elif checked.problem is not None:
                result.problems.append(checked.problem)
            result.checked += 1
            report("verifying", result.checked, int(total))
    result.problems.sort(key=lambda p: p.key)
    result.refingerprinted.sort()
    return result


def repair_missing(
    backend: StoreBackend, keys: Iterable[str], *, progress: Progress | None = None
) -> list[str]:
    """Drop the store's rows of ``keys`` whose payload is (still) gone; return the keys dropped.

    Each row is re-checked in the removing transaction: a key whose payload came back, or that
    was stored again meanwhile, is kept. Rows with invalid keys are never dropped.
    """
    report = progress or _noop
    wanted = sorted(set(keys))
    dropped: list[str] = []
    for done, key in enumerate(wanted, 1):
        if backend.drop_if_missing(key):
            dropped.append(key)
        report("repairing", done, len(wanted))
    return dropped
