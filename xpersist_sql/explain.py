"""Why a key exists, and whether it would be a hit now: :meth:`CacheStore.explain`.

An :class:`Explanation` gathers, for one stored key, without loading its value:

- the row (serializer, ``created_at``, expiry, size, checksum) and whether the payload is present
  and is the one the row describes (its recorded identity or fingerprint);
- how the key was made, as an ``xpersist_task`` records it: the target template (or the
  callable's qualified name), the context values the template used, the inputs hash and its
  per-argument components, the task version and the code hash recorded, and, given the
  function (``fn=``), its code hash now;
- the upstream artifacts recorded at derivation (``put(..., derived_from=...)``, or the task's
  inputs loaded from the store) and whether each is still stored and unchanged since;
- a verdict: :attr:`Explanation.would_hit` (a lookup would return the stored value) and
  :attr:`Explanation.stale` (it was computed from an upstream artifact that changed since), with
  the reasons (an upstream artifact deleted since is one too).

This module is free of Prefect: a Prefect task passed as ``fn`` is read through its ``fn``
attribute (the plain body) and its ``version``.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

from .errors import ArtifactNotFoundError
from .lineage import parents_of
from .models import Artifact
from .parameters import PARAMETER_VALUES
from .provenance import ArtifactIdentity, code_hash, store_id
from .storage import split_fingerprint, validate_key

__all__ = ["CONTEXT_NAMES", "Explanation", "Upstream", "UpstreamStatus", "explain"]

#: The run-context names an ``xpersist_task`` records in ``additional_metadata`` (``date`` is
#: recorded as ``today``).
CONTEXT_NAMES = (
    "today",
    "yesterday",
    "tomorrow",
    "flow_name",
    "flow_run_id",
    "flow_run_name",
    "task_name",
    "task_run_id",
    "task_run_name",
    "task_tags",
)
#: ``"unchanged"``: stored as it was when the artifact was derived from it; ``"changed"``:
#: overwritten since; ``"missing"``: deleted (or expired) since; ``"elsewhere"``: recorded in
#: another store, not checked.
UpstreamStatus = Literal["unchanged", "changed", "missing", "elsewhere"]
_TARGET, _INPUTS_HASH, _INPUT_HASHES = "target", "inputs_hash", "input_hashes"
_VERSION, _CODE_HASH = "task_version", "code_hash"


class _Index(Protocol):
    def get(self, key: str) -> Artifact | None: ...


class _Backend(Protocol):
    def payload_matches(self, artifact: Artifact, *, repair: bool = False) -> bool: ...


class _Storage(Protocol):
    def exists(self, key: str) -> bool: ...

    def url(self, key: str | None = None) -> str: ...


class _Store(Protocol):
    @property
    def path(self) -> str: ...

    @property
    def _backend(self) -> _Backend: ...

    @property
    def _storage(self) -> _Storage: ...

    def _rows(self, *, create: bool = False) -> _Index | None: ...

    def get_artifact(self, key: str) -> Artifact: ...

    def lineage(
        self, key: str, direction: str = "upstream", depth: int | None = None
    ) -> list[Artifact]: ...


@dataclass(frozen=True)
class Upstream:
    """One artifact a value was computed from, as recorded then and as stored now.

    Attributes
    ----------
    key : str
        The parent's key.
    status : {"unchanged", "changed", "missing", "elsewhere"}
        See :data:`UpstreamStatus`.
    recorded_created_at : str
        When the version the child was computed from was stored (ISO 8601, UTC).
    current_created_at : str or None
        When the version stored now was stored (``None``: missing, or in another store).
    store_id : str
        The parent's store (the id in its marker).
    """

    key: str
    status: UpstreamStatus
    recorded_created_at: str
    current_created_at: str | None
    store_id: str

    def describe(self) -> str:
        """Return one line: the key, its status and when."""
        then = _iso_when(self.recorded_created_at)
        if self.status == "changed":
            now = _iso_when(self.current_created_at)
            return f"{self.key}  changed (computed from its version of {then}; stored now: {now})"
        if self.status == "missing":
            return f"{self.key}  missing (no longer stored; computed from its version of {then})"
        if self.status == "elsewhere":
            return f"{self.key}  in store {self.store_id} (not checked)"
        return f"{self.key}  unchanged (stored {then})"


@dataclass(frozen=True)
class Explanation:
    """Why a key exists, and whether it would be a hit now (:meth:`CacheStore.explain`).

    Attributes
    ----------
    key, store : str
        The key and the store's path.
    serializer : str
        The serializer that wrote the payload.
    created_at : datetime
        When it was stored (UTC).
    expires_at : datetime or None
        When it expires (``None``: never).
    expired : bool
        Whether it has expired (it is then absent to ``get`` and to tasks).
    size_bytes : int or None
        The payload's size, where recorded.
    checksum : str or None
        The payload's checksum, where computed.
    payload_url : str
        Where the payload lives.
    payload_present : bool
        Whether something is stored at the payload's location.
    payload_matches : bool
        Whether that payload is the one the row describes (its identity or fingerprint).
    target : str or None
        The target template (or the callable target's qualified name) the key was rendered
        from, when an ``xpersist_task`` stored it.
    context : dict
        The recorded context values the target used (all recorded context for a callable
        target); ``date`` appears as ``today``, ``{parameters[x]}`` as ``parameters[x]``.
    inputs_hash : str or None
        The hash of the task's bound arguments, when it was computed (``{inputs_hash}``).
    input_hashes : dict of str to str
        Its per-argument components.
    parameters : dict
        The recorded parameter values (large or non-JSON ones by their hash).
    task_version : str or None
        The task's ``version`` recorded.
    task_version_now : str or None
        The version of the task given as ``fn`` (``None``: not given, or it has none).
    code_hash : str or None
        The code hash recorded (``code_hash=True``).
    code_hash_now : str or None
        The code hash of ``fn`` now (``None``: no ``fn`` given).
    upstream : tuple of Upstream
        The artifacts it was computed from, as recorded, each with its status now.
    would_hit : bool
        Whether a lookup would return the stored value now: stored, not expired, its payload
        present and unchanged, and (given ``fn``) written by this version and code of it.
    stale : bool
        Whether an upstream artifact changed since it was computed from it (one deleted since
        is a reason, not staleness: it cannot be checked).
    reasons : tuple of str
        Each problem, in words (empty when :attr:`ok`).
    """

    key: str
    store: str
    serializer: str
    created_at: datetime
    expires_at: datetime | None
    expired: bool
    size_bytes: int | None
    checksum: str | None
    payload_url: str
    payload_present: bool
    payload_matches: bool
    target: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    inputs_hash: str | None = None
    input_hashes: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    task_version: str | None = None
    task_version_now: str | None = None
    code_hash: str | None = None
    code_hash_now: str | None = None
    upstream: tuple[Upstream, ...] = ()
    would_hit: bool = True
    stale: bool = False
    reasons: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether it would hit and is not stale (no reasons)."""
        return not self.reasons

    @property
    def code_changed(self) -> bool | None:
        """Whether ``fn``'s code hash differs from the recorded one.

        ``None`` when it cannot tell: no ``fn`` given, or no code hash recorded.
        """
        if self.code_hash_now is None or self.code_hash is None:
            return None
        return self.code_hash_now != self.code_hash

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (datetimes as ISO 8601 text), with ``ok`` and ``code_changed``.

        Returns
        -------
        dict
        """
        document = asdict(self)
        for name in ("created_at", "expires_at"):
            value = document[name]
            document[name] = None if value is None else value.isoformat()
        document["upstream"] = [asdict(parent) for parent in self.upstream]
        document["reasons"] = list(self.reasons)
        document["ok"] = self.ok
        document["code_changed"] = self.code_changed
        return document

    def to_json(self, indent: int | None = 2) -> str:
        """Return :meth:`to_dict` as JSON text.

        Parameters
        ----------
        indent : int, optional
            As :func:`json.dumps`.

        Returns
        -------
        str
        """
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, default=str)

    def verdict(self) -> str:
        """Return the verdict in a few words (``"would hit"``, ``"would hit, but stale"``...)."""
        if not self.would_hit:
            return "would not hit"
        return "would hit, but stale" if self.stale else "would hit"

    def __str__(self) -> str:
        lines = [f"{self.key}: {self.verdict()}"]
        lines.extend(f"  - {reason}" for reason in self.reasons)
        expiry = "never expires"
        if self.expires_at is not None:
            state = "expired" if self.expired else "expires"
            expiry = f"{state} {_when(self.expires_at)}"
        size = "size unknown" if self.size_bytes is None else f"{self.size_bytes} bytes"
        lines.append(f"stored     {_when(self.created_at)} by {self.serializer}, {size}, {expiry}")
        if self.checksum is not None:
            lines.append(f"checksum   {self.checksum}")
        if not self.payload_present:
            payload = "missing"
        elif self.payload_matches:
            payload = "present, matches its row"
        else:
            payload = "present, changed since it was stored"
        lines.append(f"payload    {self.payload_url} ({payload})")
        if self.target is not None:
            lines.append(f"target     {self.target}")
            width = max((len(name) for name in self.context), default=0)
            lines.extend(
                f"  {name.ljust(width)}  {_short(value)}" for name, value in self.context.items()
            )
        if self.inputs_hash is not None:
            lines.append(f"inputs     {self.inputs_hash}")
            width = max((len(name) for name in self.input_hashes), default=0)
            lines.extend(
                f"  {name.ljust(width)}  {part}" for name, part in self.input_hashes.items()
            )
        if self.parameters:
            shown = ", ".join(f"{name}={_short(value)}" for name, value in self.parameters.items())
            lines.append(f"parameters {shown}")
        if self.task_version is not None or self.task_version_now is not None:
            now = "" if self.task_version_now is None else f" (task now: {self.task_version_now})"
            lines.append(f"version    {self.task_version or 'not recorded'}{now}")
        if self.code_hash is not None or self.code_hash_now is not None:
            now = ""
            if self.code_hash_now is not None:
                now = " (unchanged)" if not self.code_changed else f" (now {self.code_hash_now})"
            lines.append(f"code hash  {self.code_hash or 'not recorded'}{now}")
        if self.upstream:
            lines.append("upstream")
            lines.extend(f"  {parent.describe()}" for parent in self.upstream)
        else:
            lines.append("upstream   none recorded")
        return "\n".join(lines)


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso_when(text: str | None) -> str:
    if not text:
        return "unknown"
    try:
        moment = datetime.fromisoformat(text).astimezone(timezone.utc)
    except ValueError:
        return text
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"  # milliseconds: versions differ


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _template_fields(target: str) -> list[tuple[str, str | None]]:
    """Return the ``(name, index)`` fields of a template, in order, once each."""
    try:
        parsed = list(string.Formatter().parse(target))
    except ValueError:
        return []
    found: list[tuple[str, str | None]] = []
    for _, field_name, _, _ in parsed:
        if not field_name:
            continue
        name, _, rest = field_name.partition("[")
        index = rest[:-1] if rest.endswith("]") else None
        if (name, index) not in found:
            found.append((name, index))
    return found


def _context(metadata: Mapping[str, Any], target: str | None) -> dict[str, Any]:
    """Return the recorded values the target used (all recorded context when unknown)."""
    values: dict[str, Any] = {}
    recorded_values = metadata.get(PARAMETER_VALUES)
    parameters = recorded_values if isinstance(recorded_values, Mapping) else {}
    fields = _template_fields(target) if target is not None else []
    if not fields:  # a callable target (or none): every context name recorded
        return {name: metadata[name] for name in CONTEXT_NAMES if name in metadata}
    for name, index in fields:
        if name == "date":
            if "today" in metadata:
                values["today"] = metadata["today"]
        elif name == "parameters" and index is not None:
            values[f"parameters[{index}]"] = parameters.get(index)
        elif name == "task_tags" and index is not None and index.isdigit():
            tags = metadata.get("task_tags")
            position = int(index)
            if isinstance(tags, list) and position < len(tags):
                values[f"task_tags[{index}]"] = tags[position]
        elif name in metadata:
            values[name] = metadata[name]
    return values


def _fingerprint_walk(fingerprint: str | None) -> str | None:
    return split_fingerprint(fingerprint)[0]


def _upstream_status(recorded: ArtifactIdentity, current: Artifact | None, here: str) -> Upstream:
    if recorded.store_id != here:
        return Upstream(recorded.key, "elsewhere", recorded.created_at, None, recorded.store_id)
    if current is None:
        return Upstream(recorded.key, "missing", recorded.created_at, None, recorded.store_id)
    now = current.created_at.isoformat()
    changed = now != recorded.created_at
    if recorded.checksum is not None and current.checksum is not None:
        changed = changed or recorded.checksum != current.checksum
    walk_then, walk_now = (
        _fingerprint_walk(recorded.fingerprint),
        _fingerprint_walk(current.fingerprint),
    )
    if walk_then is not None and walk_now is not None:
        changed = changed or walk_then != walk_now
    status: UpstreamStatus = "changed" if changed else "unchanged"
    return Upstream(recorded.key, status, recorded.created_at, now, recorded.store_id)


def _payload_state(store: _Store, artifact: Artifact) -> tuple[bool, bool]:
    """Return ``(present, matches)`` for the artifact's payload, without loading it."""
    try:
        present = store._storage.exists(artifact.key)
    except OSError:
        present = False
    if not present:
        return False, False
    return True, store._backend.payload_matches(artifact)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def explain(store: _Store, key: str, fn: Callable[..., Any] | None = None) -> Explanation:
    """Explain why ``key`` exists in ``store`` and whether it would be a hit now.

    See :meth:`CacheStore.explain <xpersist_sql.CacheStore.explain>`, which calls this.

    Parameters
    ----------
    store : CacheStore
        The store.
    key : str
        The key.
    fn : callable, optional
        The function (or Prefect task) that computes the value: its code hash now is compared
        with the recorded one; a task's ``version`` with the recorded version.

    Returns
    -------
    Explanation

    Raises
    ------
    ArtifactNotFoundError
        Nothing (not even an expired row) is stored under ``key``.
    """
    key = validate_key(key, store=store.path)
    rows = store._rows()
    artifact = None if rows is None else rows.get(key)
    if artifact is None:
        store.get_artifact(key)  # raises the store's ArtifactNotFoundError (key, store, remedy)
        raise ArtifactNotFoundError(f"key {key!r} is not in store {store.path!r}")
    metadata = artifact.additional_metadata
    expired = artifact.is_expired()
    present, matches = _payload_state(store, artifact)
    reasons: list[str] = []
    if expired:
        assert artifact.expires_at is not None
        reasons.append(f"expired at {_when(artifact.expires_at)}: it counts as absent")
    if not present:
        reasons.append(f"payload missing: nothing at {store._storage.url(key)}")
    elif not matches:
        reasons.append(
            "payload changed: what lies at its location is not the payload its row describes "
            "(`xpersist-sql verify` reports it)"
        )

    version, recorded_code = _text(metadata.get(_VERSION)), _text(metadata.get(_CODE_HASH))
    version_now = code_now = None
    if fn is not None:
        body = getattr(fn, "fn", fn)
        code_now = code_hash(body)
        if body is not fn:
            declared = getattr(fn, "version", None)
            version_now = str(declared) if declared is not None else None
        name = getattr(body, "__qualname__", repr(body))
        if recorded_code is not None and code_now != recorded_code:
            reasons.append(
                f"code changed: recorded code hash {recorded_code}, {name!r} now hashes to "
                f"{code_now}"
            )
        elif recorded_code is None and getattr(getattr(fn, "_xpersist_spec", None), "code", None):
            reasons.append(
                f"code unknown: no code hash recorded, and the task {name!r} compares one "
                "(code_hash=True): it recomputes the value"
            )
        if version_now is not None and version_now != version:
            reasons.append(
                f"version changed: recorded {version!r}, the task is now {version_now!r}"
            )
    would_hit = not reasons

    here = store_id(store)
    try:
        by_key = {parent.key: parent for parent in store.lineage(key, "upstream", depth=1)}
    except ArtifactNotFoundError:  # expired (or deleted meanwhile): look the parents up one by one
        by_key = {}
    upstream: list[Upstream] = []
    for recorded in parents_of(artifact):
        current = by_key.get(recorded.key)
        if current is None and recorded.store_id == here:
            try:
                current = store.get_artifact(recorded.key)
            except ArtifactNotFoundError:
                current = None
        upstream.append(_upstream_status(recorded, current, here))
    stale = False
    for parent in upstream:
        if parent.status == "changed":
            stale = True
            reasons.append(
                f"stale: upstream {parent.key!r} changed since (computed from its version of "
                f"{_iso_when(parent.recorded_created_at)}; stored now: "
                f"{_iso_when(parent.current_created_at)})"
            )
        elif parent.status == "missing":
            reasons.append(
                f"upstream {parent.key!r} is no longer stored: what it was computed from "
                "cannot be checked"
            )

    target = _text(metadata.get(_TARGET))
    hashes = metadata.get(_INPUT_HASHES)
    values = metadata.get(PARAMETER_VALUES)
    return Explanation(
        key=artifact.key,
        store=store.path,
        serializer=artifact.serializer,
        created_at=artifact.created_at,
        expires_at=artifact.expires_at,
        expired=expired,
        size_bytes=artifact.size_bytes,
        checksum=artifact.checksum,
        payload_url=store._storage.url(key),
        payload_present=present,
        payload_matches=matches,
        target=target,
        context=_context(metadata, target) if target is not None else {},
        inputs_hash=_text(metadata.get(_INPUTS_HASH)),
        input_hashes=(
            {str(name): str(part) for name, part in hashes.items()}
            if isinstance(hashes, Mapping)
            else {}
        ),
        parameters=dict(values) if isinstance(values, Mapping) else {},
        task_version=version,
        task_version_now=version_now,
        code_hash=recorded_code,
        code_hash_now=code_now,
        upstream=tuple(upstream),
        would_hit=would_hit,
        stale=stale,
        reasons=tuple(reasons),
    )
